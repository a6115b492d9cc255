"""Configurations of the multi-exit (early-exit) BERT and RoBERTa classifiers.

``EENetBertConfig`` / ``EENetRobertaConfig`` are the stock ``BertConfig`` / ``RobertaConfig`` plus the early-exit
fields below; they are the single source of truth that ``save_pretrained`` / ``from_pretrained`` round-trip.

Early-exit fields:
    exit_layers (`list[int]`): 1-based encoder layers followed by an exit head, strictly increasing, the last one
        equal to ``num_hidden_layers``. Default: every layer.
    exit_costs (`list[float]`): cumulative cost of running up to and including each exit, normalised so that the
        last exit costs 1.0 (so a budget of 0.5 = half the full model's cost). Default: the analytic FLOPs profile.
    exit_cost_profile (`str`): how ``exit_costs`` were obtained: ``"layers"``, ``"flops"`` or ``"latency"``.
    exit_cost_info (`dict`): free-form measurement details (device, batch size, sequence length, raw values, unit).
    scheduler_budgets (`list[float]`): budgets (fractions of the full cost) of the fitted EENet scheduler bank,
        one scheduler per budget, sorted ascending. Weights live in the model's safetensors file.
    scheduler_config (`dict`): constructor kwargs shared by the schedulers of the bank (num_exits, num_classes, ...).
    scheduler_bank (`list[dict]`): one record per ``scheduler_budgets`` entry saying what that scheduler was fitted
        for (budget, costs, exits, classes, validation-data fingerprint, scheduler config, tensor digest); see
        ``hf_eenet/bank.py``. The model verifies bank ↔ config on load, on ``add_scheduler``, on ``set_exit_costs``
        and before serving a budget.
    default_budget (`float`): budget used by the pipeline when a call gives none.
    max_seq_length (`int`): the input length in tokens the model was trained and its bank fitted at (the recipe's
        ``--max_seq_length``); the pipeline, ``early_exit_predict``, ``exit_probabilities`` and the CLI truncate to it
        by default (``max_input_tokens``), so a bank serves the inputs it was fitted on. ``None``: the position table.
    sentence_pairs (`bool`): whether the model was trained on sentence pairs (the recipe records it); the CLI refuses
        data of the other kind. ``None``: unknown.
    exit_pooling (`str`): what every exit (the last one included) classifies: ``"cls"`` (default) the first token,
        as the stock ``BertForSequenceClassification`` / ``RobertaForSequenceClassification`` do, or ``"mean"`` the
        average of the non-padding tokens, fed to the same pooler/classifier layers. ``"mean"`` suits backbones
        pretrained with mean pooling (sentence-transformers checkpoints such as all-MiniLM-L6-v2), whose early
        first-token states carry little.

Validation runs in ``__post_init__`` *and* after ``from_pretrained(..., exit_layers=..., exit_pooling=...)`` kwargs
(which transformers sets after construction). When ``exit_layers`` is overridden that way without ``exit_costs``,
analytic (``"flops"``/unset profile) costs are recomputed for the new exits; measured (``"latency"``/``"layers"``)
costs cannot be, so that is an error asking for ``exit_costs=`` or a new profile. ``exit_costs`` must always have one
entry per exit.

``custom_pipelines`` (written by ``save_pretrained`` so the Hub code serves ``budget=``) is dropped from configs loaded
by the *installed* hf_eenet: its registered pipeline serves the model without ``trust_remote_code``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import BertConfig, PreTrainedConfig, RobertaConfig

EXIT_POOLINGS = ("cls", "mean")

# True when this file runs as the installed hf_eenet package (not as Hub remote code copied next to a model).
_INSTALLED = __name__.split(".")[0] == "hf_eenet"


def validate_exit_layers(exit_layers, num_hidden_layers: int) -> list[int]:
    """Return ``exit_layers`` as a list of ints, or raise ``ValueError``/``TypeError`` naming the problem."""
    if exit_layers is None:
        return list(range(1, num_hidden_layers + 1))
    if isinstance(exit_layers, (str, bytes)) or not hasattr(exit_layers, "__iter__"):
        raise TypeError(f"exit_layers must be a list of ints, got {type(exit_layers).__name__}")
    layers = list(exit_layers)
    if not layers:
        raise ValueError("exit_layers is empty: give at least the last layer")
    for x in layers:
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"exit_layers must contain ints (1-based encoder layers), got {x!r}")
    bad = [x for x in layers if not 1 <= x <= num_hidden_layers]
    if bad:
        raise ValueError(
            f"exit_layers {layers} out of range: every exit layer must be in [1, num_hidden_layers={num_hidden_layers}]"
            f", got {bad}"
        )
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"exit_layers must be strictly increasing, got {layers}")
    if layers[-1] != num_hidden_layers:
        raise ValueError(
            f"the last exit layer must be the last encoder layer ({num_hidden_layers}), got exit_layers={layers}"
        )
    return layers


#: the stock model types each of our model types reads as its own family: the same modules under the same weight names
#: (XLM-RoBERTa and CamemBERT are RoBERTa models with other vocabularies)
FAMILY_MODEL_TYPES = {"eenet-bert": ("bert",), "eenet-roberta": ("roberta", "xlm-roberta", "camembert")}


def eenet_model_type(model_type) -> str | None:
    """Our model type (``"eenet-bert"`` / ``"eenet-roberta"``) for a model type of that family, ours or a stock one
    (``FAMILY_MODEL_TYPES``); None for any other model."""
    for ours, stock in FAMILY_MODEL_TYPES.items():
        if model_type == ours or model_type in stock:
            return ours
    return None


def unsupported_model_type(model_type, where: str) -> ValueError:
    """The error for a checkpoint that is neither a BERT nor a RoBERTa-family model."""
    known = ", ".join(repr(t) for stock in FAMILY_MODEL_TYPES.values() for t in stock)
    return ValueError(f"{where} is a {model_type!r} model: hf_eenet adds exits to BERT and RoBERTa-family encoders "
                      f"(model_type {known}, or one of ours) only; its weights would not load into either")


def max_input_tokens(config, tokenizer=None, recorded: bool = True) -> int:
    """Longest input a model of ``config`` takes: its position table (RoBERTa positions start after the padding
    index), capped by ``config.max_seq_length`` (the length it was trained and its bank fitted at; ``recorded=False``
    leaves it out) and by ``tokenizer.model_max_length`` when they are set. What the pipeline and
    ``early_exit_predict`` truncate to by default."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if eenet_model_type(getattr(config, "model_type", None)) == "eenet-roberta":
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    if recorded and getattr(config, "max_seq_length", None):  # what the model was trained and its bank fitted at
        limit = min(limit, int(config.max_seq_length))
    tok_limit = getattr(tokenizer, "model_max_length", None)
    return min(limit, tok_limit) if tok_limit and tok_limit < 10**6 else limit


def pairing_mismatch(config, is_pair: bool) -> str | None:
    """What a model of ``config`` was trained on when the input is of the other kind: ``"pairs"`` (it got one text),
    ``"single texts"`` (it got a pair), else None (same kind, or ``config.sentence_pairs`` not recorded). The one
    check behind the CLI's and the pipeline's refusals."""
    trained = getattr(config, "sentence_pairs", None)
    if trained is None or trained == bool(is_pair):
        return None
    return "pairs" if trained else "single texts"


def flops_exit_costs(config, exit_layers, seq_len: int = 128, normalise: bool = True) -> list[float]:
    """Analytic cumulative FLOPs per exit (multiply-adds x2), normalised so the last exit costs 1 unless
    ``normalise=False``.

    Per encoder layer and token: 4 h^2 (QKV + output projections) + 2 h i (FFN) multiply-adds, plus 2 S h for the
    attention scores and their weighted sum. Every exit head costs h^2 + h C on the first token only.
    """
    h, i, c, s = config.hidden_size, config.intermediate_size, max(config.num_labels, 1), seq_len
    layer = 2 * s * (4 * h * h + 2 * h * i + 2 * s * h)
    head = 2 * (h * h + h * c)
    raw = [layer * ell + head * (k + 1) for k, ell in enumerate(exit_layers)]
    return [r / raw[-1] for r in raw] if normalise else [float(r) for r in raw]


@dataclass(repr=False, eq=False, kw_only=True)
class EENetConfigMixin:
    """The early-exit fields (declared once: transformers makes each config subclass a dataclass, which collects
    them from here) and their validation, shared by the BERT and RoBERTa configs."""

    exit_layers: list[int] | None = None
    exit_costs: list[float] | None = None
    exit_cost_profile: str | None = None
    exit_cost_info: dict | None = None
    scheduler_budgets: list[float] | None = None
    scheduler_config: dict | None = None
    default_budget: float | None = None
    exit_pooling: str = "cls"
    scheduler_bank: list[dict] | None = None
    max_seq_length: int | None = None
    sentence_pairs: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._validate_eenet()

    @classmethod
    def _stock_config_class(cls) -> type:
        """The stock config this one extends: ``BertConfig`` / ``RobertaConfig``."""
        return next(c for c in cls.__mro__[1:] if not issubclass(c, EENetConfigMixin) and getattr(c, "model_type", ""))

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        # A plain BERT/RoBERTa checkpoint is the intended starting point: adopt its config without the
        # "model of type bert to instantiate eenet-bert" warning and without keeping the old model_type (a CamemBERT
        # kept as "camembert" would be truncated as a BERT: RoBERTa positions start after the padding index). A
        # checkpoint of the other family, or of neither, is refused: its weights would load as missing and be
        # initialised at random, a model that says nothing is wrong.
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type and model_type != cls.model_type:
            family = eenet_model_type(model_type)
            where = f"{args[0]!s}" if args else "the checkpoint"
            if family is None:
                raise unsupported_model_type(model_type, where)
            if family != cls.model_type:
                other = "EENetRobertaForSequenceClassification" if family == "eenet-roberta" else \
                    "EENetBertForSequenceClassification"
                raise ValueError(f"{where} is a {model_type!r} model, not of the {cls.model_type} family: load it "
                                 f"with {other} (its weights would not load into this class)")
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @classmethod
    def from_stock(cls, config):
        """``config`` as this class: one of ours as it is; the stock config this class extends (a ``BertConfig`` for
        ``EENetBertConfig``: e.g. ``AutoConfig.from_pretrained(ckpt, num_labels=2)`` of a plain checkpoint, as
        ``run_classification.py`` builds it), or another config of its family (``FAMILY_MODEL_TYPES``: an
        ``XLMRobertaConfig`` for ``EENetRobertaConfig``), converted, every field kept (labels, dropout, attention
        implementation) and the default exits added, as a load of that checkpoint gives; anything else: TypeError."""
        if isinstance(config, cls):
            return config
        stock = cls._stock_config_class()
        if isinstance(config, EENetConfigMixin) or not isinstance(config, PreTrainedConfig) or \
                eenet_model_type(getattr(config, "model_type", None)) != cls.model_type:  # (ours from another copy
            # of this module, e.g. a remote-code one, is converted too)
            family = eenet_model_type(getattr(config, "model_type", None))
            if family is None and isinstance(config, PreTrainedConfig):
                hint = (f"a {getattr(config, 'model_type', None)!r} model's config: hf_eenet adds exits to BERT and "
                        "RoBERTa-family encoders only")
            elif family not in (None, cls.model_type):
                hint = (f"it is of the {family} family: use EENet{'Roberta' if family == 'eenet-roberta' else 'Bert'}"
                        "ForSequenceClassification / its config class")
            else:
                hint = f"build the config from the checkpoint with {cls.__name__}.from_pretrained(ckpt, ...)"
            raise TypeError(f"{cls.__name__} takes an {cls.__name__} (or a {stock.__name__} or another config of "
                            f"model_type {', '.join(FAMILY_MODEL_TYPES[cls.model_type])}, converted), got a "
                            f"{type(config).__name__}: {hint}")
        out = cls.from_dict({**config.to_dict(), "model_type": cls.model_type})
        impl = config.__dict__.get("_attn_implementation_internal")
        if impl is not None:  # (not in to_dict)
            out._attn_implementation = impl
        return out

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # transformers sets from_pretrained kwargs *after* __init__ (so __post_init__ never saw them): validate again.
        override_layers = "exit_layers" in kwargs and "exit_costs" not in kwargs
        out = super().from_dict(config_dict, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if override_layers and list(config.exit_layers or []) != list(config_dict.get("exit_layers") or []):
            profile = config.exit_cost_profile
            if profile not in (None, "flops"):
                raise ValueError(
                    f"exit_layers changed to {config.exit_layers} but exit_costs were measured ({profile!r}) for "
                    f"exit_layers {config_dict.get('exit_layers')}: for a config of new exits, pass exit_costs= for "
                    "them or re-profile them (hf_eenet.profile_exit_costs + set_exit_costs). A checkpoint of ours "
                    "does not load with other exit_layers either way: its exit heads were trained at exit_layers "
                    f"{config_dict.get('exit_layers')} and would sit at other exits; load it as saved, or build the "
                    "model with the new exits from the backbone checkpoint it was trained from, and train it"
                )
            config.exit_costs = None  # recomputed (analytic FLOPs) for the new exits by _validate_eenet
            config.exit_cost_profile = None
        config._validate_eenet()
        return out

    def _validate_eenet(self) -> None:
        self.exit_layers = validate_exit_layers(self.exit_layers, self.num_hidden_layers)
        k = len(self.exit_layers)
        if self.exit_costs is None:
            self.exit_costs = flops_exit_costs(self, self.exit_layers)
            self.exit_cost_profile = self.exit_cost_profile or "flops"
        costs = [float(c) for c in self.exit_costs]
        if len(costs) != k:
            raise ValueError(f"exit_costs has {len(costs)} entries but there are {k} exits (exit_layers={self.exit_layers})")
        if any(not math.isfinite(c) or c <= 0 for c in costs) or any(b <= a for a, b in zip(costs, costs[1:])):
            raise ValueError(f"exit_costs must be positive and strictly increasing, got {costs}")
        self.exit_costs = [c / costs[-1] for c in costs]
        budgets = [float(b) for b in (self.scheduler_budgets or [])]
        if budgets != sorted(budgets) or len(set(budgets)) != len(budgets):
            raise ValueError(f"scheduler_budgets must be sorted and unique, got {budgets}")
        self.scheduler_budgets = budgets
        if self.exit_pooling not in EXIT_POOLINGS:
            raise ValueError(f"exit_pooling must be one of {EXIT_POOLINGS}, got {self.exit_pooling!r}")
        if self.default_budget is not None:
            b = float(self.default_budget)
            if not (0 < b <= 1):
                raise ValueError(f"default_budget must be a fraction of the full cost in (0, 1], got {b}")
            self.default_budget = b
        if self.max_seq_length is not None:
            if isinstance(self.max_seq_length, bool) or not isinstance(self.max_seq_length, int) or \
                    self.max_seq_length < 1:
                raise ValueError(f"max_seq_length must be a positive int (tokens), got {self.max_seq_length!r}")
        if self.sentence_pairs is not None and not isinstance(self.sentence_pairs, bool):
            raise ValueError(f"sentence_pairs must be true, false or null, got {self.sentence_pairs!r}")
        if self.scheduler_bank is not None and not isinstance(self.scheduler_bank, list):
            raise ValueError(f"scheduler_bank must be a list of records, got {type(self.scheduler_bank).__name__}")
        if _INSTALLED:
            self.__dict__.pop("custom_pipelines", None)

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)


class EENetBertConfig(EENetConfigMixin, BertConfig):
    r"""[`BertConfig`] plus early-exit fields (see the module docstring)."""

    model_type = "eenet-bert"


class EENetRobertaConfig(EENetConfigMixin, RobertaConfig):
    r"""[`RobertaConfig`] plus early-exit fields (see the module docstring)."""

    model_type = "eenet-roberta"


__all__ = ["EENetBertConfig", "EENetRobertaConfig", "FAMILY_MODEL_TYPES", "eenet_model_type", "validate_exit_layers",
           "flops_exit_costs", "max_input_tokens", "pairing_mismatch"]
