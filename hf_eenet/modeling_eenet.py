"""Multi-exit BERT / RoBERTa sequence classifiers with real per-sample early exit inside a batch.

One exit loop (:class:`EENetModelMixin`) serves both backbones. It runs the encoder layer by layer; after an exit
layer it computes that exit's logits for the rows still running, asks the exit policy which rows stop, writes their
logits to the output, and *removes them from the batch* (hidden states and the 2-D padding mask, then trailing
all-padding columns) before the next layer, so a batch costs what its rows need. Without a policy the same loop
computes every exit for every row (the "all exits" forward used for training and scheduler fitting).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.models.roberta.modeling_roberta import (
    RobertaClassificationHead,
    RobertaModel,
    RobertaPreTrainedModel,
)
from transformers.utils import ModelOutput

from .bank import (
    EXIT_READS,
    BankIntegrityError,
    SchedulerBank,
    same_scheduler_config,
    scheduler_config_json,
    atomic_save_dir,
    bring_offloaded_bank_in,
    check_entry,
    check_loading_info,
    check_scheduler,
    data_fingerprint as _data_fingerprint,
    exit_reads,
    make_record,
    note_weight_change,
    seed_weights_check,
    stale_bank_reason,
    state_dict_for_save,
    verify_bank,
    weights_digest,
    without_inference_tensors,
)
from .configuration_eenet import (
    _INSTALLED,
    EENetBertConfig,
    EENetRobertaConfig,
    max_input_tokens,
    pairing_mismatch,
)
from .policies import ExitPolicy
from .validation import (as_probs_tensor, check_bool, check_budget_fraction, check_input_length, check_int,
                         check_single_label, check_tokenizer_kwargs)
from .weight_events import stepped_since


@dataclass
class EENetSequenceClassifierOutput(ModelOutput):
    """Output of the multi-exit classifiers.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`: Σ_k w_k · loss_k over all exits
            (all-exits forward, w_k ∝ k normalised) or the loss of the taken exits (early-exit forward).
        logits (`torch.FloatTensor` of shape `[B, C]`): each row's logits from the exit it took (the last exit in
            the all-exits forward).
        exit_logits (`torch.FloatTensor` of shape `[B, K, C]`, *optional*): logits of every exit; only in the
            all-exits forward (in the early-exit forward later exits are never computed for rows that left).
        exit_index (`torch.LongTensor` of shape `[B]`): 0-based index into `config.exit_layers` of the exit taken.
        exit_layer (`torch.LongTensor` of shape `[B]`): 1-based encoder layer of the exit taken.
        exit_cost (`torch.FloatTensor` of shape `[B]`): cost of the exit taken as a fraction of the full model
            (`config.exit_costs`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_logits: torch.FloatTensor | None = None
    exit_index: torch.LongTensor | None = None
    exit_layer: torch.LongTensor | None = None
    exit_cost: torch.FloatTensor | None = None


def _check_rows_have_tokens(attention_mask: torch.Tensor) -> None:
    if not attention_mask.bool().any(-1).all():
        raise ValueError("attention_mask has a row with no tokens (all zeros)")


#: sampling error of a re-matched realised cost, relative to the budget, above which ``rematch_budgets`` warns
REMATCH_ERROR_TOLERANCE = 0.03
#: fewer traffic rows than this give no usable error estimate: ``rematch_budgets`` warns
REMATCH_MIN_ROWS = 50


def _warn_if_rematch_is_noisy(info: dict, rows: int) -> None:
    """Warn when the traffic sample was too small for the thresholds it re-matched: fewer than
    ``REMATCH_MIN_ROWS`` rows, or a sampling error of the mean cost over ``REMATCH_ERROR_TOLERANCE`` of a budget."""
    worst = max(info, key=lambda b: info[b]["cost_standard_error"] / b)
    rel = info[worst]["cost_standard_error"] / worst
    if rows >= REMATCH_MIN_ROWS and rel <= REMATCH_ERROR_TOLERANCE:
        return
    need = max(REMATCH_MIN_ROWS, math.ceil(rows * (rel / REMATCH_ERROR_TOLERANCE) ** 2))
    warnings.warn(f"the bank was re-matched on {rows} traffic rows: the realised cost's sampling error on them is "
                  f"± {100 * rel:.1f} % of the budget {worst:g}"
                  + (" (too few rows to estimate it)" if rows < REMATCH_MIN_ROWS else "")
                  + f"; use more rows (about {need} for ± {100 * REMATCH_ERROR_TOLERANCE:.0f} %): the served cost can "
                  "miss the budget by more than that", stacklevel=3)


def _right_align(mask_host: torch.Tensor, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
    """Rotate every row left by its number of leading padding columns (``[B, S]`` host mask ``mask_host``), so a
    left-padded batch becomes the right-padded one.

    A left-padded batch (``padding_side="left"``) gives BERT/RoBERTa shifted absolute positions, a padding token at
    position 0 (the ``cls`` pooling token) and so other outputs than each text alone; right-aligned, every row gets
    what it gets alone (columns inside a row keep their order; given ``position_ids`` move with their tokens).
    Returns the inputs in the same order (``None`` stays ``None``) plus the new host mask."""
    width = mask_host.shape[1]
    lead = mask_host.to(torch.int8).argmax(1)  # first token's column (every row has one, checked before)
    order_host = (torch.arange(width).unsqueeze(0) + lead.unsqueeze(1)) % width
    order = order_host.to(attention_mask.device)

    def take(t):
        if t is None:
            return None
        if t.dim() == 3:  # inputs_embeds [B, S, h]
            return t.gather(1, order.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        if t.dim() == 1:  # position_ids [S] broadcast over the batch, as BERT takes them
            t = t.unsqueeze(0)
        return t.expand(order.shape[0], -1).gather(1, order)  # [1, S] broadcast ids: each row's own

    return (take(input_ids), take(attention_mask), take(token_type_ids), take(position_ids), take(inputs_embeds),
            mask_host.gather(1, order_host))


#: the packages of torch's quantised modules (``torch.ao.quantization.quantize_dynamic`` / ``convert``)
_TORCH_QUANTISED = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")
#: config keys a save changes and a caller does not pass to from_pretrained: they tell a config object read from
#: the config.json a finish replaced (below) from one read after it
_STRUCTURAL_CONFIG_KEYS = ("scheduler_bank", "scheduler_budgets", "exit_costs", "exit_layers", "num_labels",
                           "id2label", "architectures", "transformers_version", "max_seq_length")
#: a finish by another process this recent may have replaced config.json after a caller read it (DDP ranks load
#: one folder together, within seconds of each other)
_RACING_FINISH_S = 15.0


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _saved_config_reader(cls, path, kwargs: dict):
    """A reader of the checkpoint's saved config dict (``None`` where it cannot be read here: the stock load says
    what is wrong), read at most once per ``from_pretrained`` however many checks ask for it."""
    memo: list = []

    def read() -> dict | None:
        if not memo:
            hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            try:
                saved, _ = cls.config_class.get_config_dict(path, **hub)
            except Exception:  # noqa: BLE001 - not readable here
                saved = None
            memo.append(saved if isinstance(saved, dict) else None)
        return memo[0]

    return read


def _last_exit_loaded(model, info: dict) -> bool:
    """Whether ``from_pretrained`` read the last exit's weights (``classifier``; a BERT's ``bert.pooler`` too) from the
    checkpoint, rather than initialising them (missing from it: a backbone; or re-headed, ``ignore_mismatched_sizes``).
    """
    prefixes = tuple(f"{name}." for name in model._LAST_EXIT_MODULES)
    new = [k if isinstance(k, str) else k[0] for k in [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]]
    return not any(str(k).startswith(prefixes) for k in new)


def _warn_mean_pooled_stock_classifier(path, config, read_saved, last_exit_loaded: bool) -> None:
    """A plain fine-tuned classifier (a stock ``*ForSequenceClassification`` checkpoint: its head read the first
    token) loaded with ``exit_pooling="mean"`` feeds that head the token mean: the full model is no longer the
    checkpoint's (its logits change). Said once, at load; not when the head is new anyway (re-headed)."""
    if config.exit_pooling != "mean" or not last_exit_loaded:
        return
    saved = read_saved()
    if not saved or "exit_layers" in saved:  # not readable here, or one of ours (pooled as it was trained)
        return
    heads = [a for a in saved.get("architectures") or [] if str(a).endswith("ForSequenceClassification")]
    if heads:
        warnings.warn(f"{path} is a fine-tuned {heads[0]}, whose classifier reads the first token; with "
                      "exit_pooling='mean' it reads the token mean, so the last exit is no longer the checkpoint's "
                      "model (other logits) until it is trained again. Load with exit_pooling='cls' to keep it as "
                      "it is", UserWarning, stacklevel=3)


def _refuse_moved_exits(cls, path, kwargs: dict, read_saved) -> None:
    """ValueError, before any weight is read, when ``from_pretrained`` of a checkpoint of ours (its config has
    ``exit_layers``) is asked for exits that read otherwise (``exit_layers=`` / ``exit_pooling=``, or a ``config=``
    object or path saying so): the checkpoint's exit heads would load, by name, into exits after other layers or
    pooling otherwise - no shape error, no load report, other logits (the bank's cost check named only the costs). A
    checkpoint of the stock model (no ``exit_layers``) gets new heads wherever asked; a config that cannot be read
    here is left to the stock load."""
    from .configuration_eenet import EXIT_POOLINGS, validate_exit_layers

    config = kwargs.get("config")
    asked = {k: kwargs[k] for k in EXIT_READS if k in kwargs}
    if config is None and not asked:
        return  # the loaded config is the saved one
    saved = read_saved()
    if saved is None or saved.get("exit_layers") is None:
        return
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        depth = int(saved["num_hidden_layers"])
        theirs = {"exit_layers": validate_exit_layers(saved["exit_layers"], depth),
                  "exit_pooling": str(saved.get("exit_pooling") or "cls")}
        if isinstance(config, (str, os.PathLike)):  # config= a folder / repo id: the config read from there
            given, _ = cls.config_class.get_config_dict(config, **hub)
            ours = dict(theirs) if given.get("exit_layers") is None else {
                "exit_layers": validate_exit_layers(given["exit_layers"], depth),
                "exit_pooling": str(given.get("exit_pooling") or "cls")}
        elif config is not None and getattr(config, "exit_layers", None) is not None:
            ours = exit_reads(config)
        else:
            ours = dict(theirs)
        if "exit_layers" in asked:
            ours["exit_layers"] = validate_exit_layers(asked["exit_layers"], depth)
        if "exit_pooling" in asked:
            ours["exit_pooling"] = str(asked["exit_pooling"] or "cls")
    except Exception:  # noqa: BLE001 - not readable here: the stock load says what is wrong (an invalid value too)
        return
    if ours["exit_pooling"] not in EXIT_POOLINGS:
        return  # the config's own check names the values it takes
    differ = [k for k in EXIT_READS if ours[k] != theirs[k]]
    if differ:
        raise ValueError(f"{path}: the checkpoint's exit heads were trained at "
                         + ", ".join(f"{k} {theirs[k]}" for k in differ) + "; loading it with "
                         + ", ".join(f"{k} {ours[k]}" for k in differ) + " would put them into exits that read other "
                         "layers or pool otherwise (same names, so no shape error). Load it as saved (without "
                         "exit_layers= / exit_pooling=); exits elsewhere need new heads: build the model with them "
                         "from the backbone checkpoint it was trained from, and train it")


_NO_BANK = {"scheduler_budgets": None, "scheduler_bank": None, "default_budget": None}


def _static_policy_name() -> str:
    """Where a user imports ``StaticPolicy`` from: ``hf_eenet``, or without it (Hub remote code) the model's own
    code package (``transformers_modules....policies``)."""
    return "hf_eenet.StaticPolicy" if _INSTALLED else f"{ExitPolicy.__module__}.StaticPolicy"


def _drop_bank_for_other_classes(cls, path, kwargs: dict, read_saved) -> None:
    """``from_pretrained(ckpt, num_labels=... / id2label=..., ignore_mismatched_sizes=True)`` of a checkpoint of ours
    with a scheduler bank, asking for other classes (re-heading it for a new task): the bank was fitted on the old
    classes' probabilities and can serve no budget of the new model, so it is not loaded (the config's bank fields
    are cleared through the same kwargs, or on a copy of a ``config=`` object asking for other classes, as
    run_classification.py re-heads; the bank's tensors are left unread), with a warning. A caller who sets the bank
    fields themselves, or asks for the saved classes, loads as saved."""
    if any(k in kwargs for k in _NO_BANK) or not kwargs.get("ignore_mismatched_sizes"):
        return  # (without ignore_mismatched_sizes other classes fail the stock load's size check anyway)
    config = kwargs.get("config")
    given = config if config is not None and not isinstance(config, (str, os.PathLike)) else None
    asked = kwargs.get("num_labels")
    if asked is None and isinstance(kwargs.get("id2label"), dict):
        asked = len(kwargs["id2label"])
    if asked is None and given is not None and getattr(given, "scheduler_budgets", None):
        asked = getattr(given, "num_labels", None)  # run_classification's AutoConfig(d, num_labels=K), config=
    if asked is None:
        return
    saved = read_saved()
    if saved is None or not saved.get("scheduler_budgets"):
        return
    theirs = len(saved.get("id2label") or {}) or saved.get("num_labels")
    if theirs is None or int(asked) == int(theirs):
        return
    if given is not None:  # a copy: the caller's config object is left as it is
        given = copy.deepcopy(given)
        for key, value in _NO_BANK.items():
            setattr(given, key, value)
        kwargs["config"] = given
    else:
        kwargs.update(_NO_BANK)
    warnings.warn(f"{path}: its EENet scheduler bank (budgets {saved['scheduler_budgets']}) was fitted for {theirs} "
                  f"classes; the model is loaded with {asked}, so the bank is not loaded (it can serve no budget of "
                  "the new heads). Train the model, then fit a new bank (EENetTrainer.fit_scheduler)",
                  UserWarning, stacklevel=3)


def _other_layout_weights(folder, config, variant) -> tuple[list[str], str]:
    """The weight files of other variants in ``folder`` (``variant`` is the save's) where the folder's config.json
    describes other exits or classes than ``config``: the save replaces config.json, and those files would then load
    (``from_pretrained(..., variant=...)``, or a plain load beside a ``variant=`` save) as weights of this config,
    their exit heads at other exits. Returns ``(files, what differs)``; nothing where the folder has no config of ours."""
    import json

    from .bank import _weight_variant, exit_layout, saved_exit_layout

    try:
        old = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
        names = os.listdir(folder)
    except (OSError, ValueError):
        return [], ""
    if not isinstance(old, dict) or old.get("exit_layers") is None:
        return [], ""
    ours, theirs = exit_layout(config), saved_exit_layout(old)
    differ = [k for k in ours if theirs.get(k) is not None and theirs[k] != ours[k]]
    files = sorted(e for e in names if _weight_variant(e) not in (None, variant or ""))
    if not differ or not files:
        return [], ""
    return files, ", ".join(f"{k} {theirs[k]} -> {ours[k]}" for k in differ)


def _finish_interrupted_save_before_load(cls, path, kwargs: dict) -> None:
    """``finish_interrupted_save`` of a local model folder before it is loaded. ``AutoModel...from_pretrained``
    reads config.json first and passes the config object on: where a finish replaced config.json after that read,
    the object is brought up to date from the record the finish left (``bank.FINISHED_FILE``, used only while
    config.json is the one it installed): every value it still holds from the replaced file is set to the folder's,
    the caller's own changes (config kwargs) and private settings (the attention implementation) stay. It was read
    before the finish when this call found the save still to finish; or, a finish by another process within the
    last seconds (DDP ranks loading one folder), when it matches the replaced file on the keys a save changes and
    callers do not set (the bank, costs, exits, labels), or on every changed key if none of those changed. A config
    read later is never changed."""
    import json
    import os
    import time

    from .bank import COMMIT_FILE, finish_interrupted_save, read_finished_record

    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return
    pending = any(e.startswith(".saving-") and os.path.isfile(os.path.join(path, e, COMMIT_FILE))
                  for e in os.listdir(path))  # one listing when nothing was interrupted
    if pending:
        finish_interrupted_save(path)
    config = kwargs.get("config")
    if config is None or isinstance(config, (str, os.PathLike)) or not hasattr(config, "to_dict"):
        return
    record = read_finished_record(path)
    if record is None or not (pending or (not record[3] and time.time() - record[2] < _RACING_FINISH_S)):
        return  # nothing finished, or this process's own earlier finish (its later loads read the new file)
    try:
        old = type(config).from_dict(json.loads(record[0])).to_dict()
    except (ValueError, TypeError):
        return
    fresh = type(config).from_pretrained(path)
    new, mine, missing = fresh.to_dict(), config.to_dict(), object()
    changed = [k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing)]
    telling = [k for k in changed if k in _STRUCTURAL_CONFIG_KEYS] or changed
    if not pending and (not telling or any(mine.get(k, missing) != old.get(k, missing) for k in telling)):
        return  # read after the other process's finish
    for key in changed:
        if mine.get(key, missing) == old.get(key, missing) and key in new:  # still the replaced file's value
            setattr(config, key, getattr(fresh, key))


def pool_hidden(hidden_states: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[b, S, h]`` hidden states → ``[b, h]``: the first token (``"cls"``) or the mean over the tokens where the
    ``[b, S]`` ``attention_mask`` is non-zero (``"mean"``)."""
    if how == "cls":
        return hidden_states[:, 0]
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class EENetExitHead(nn.Module):
    """An early exit: pooler (Linear + tanh) and a linear classifier on a pooled ``[b, h]`` vector.

    ``roberta_style=False`` (BERT, docs/method.md §1): pooler → dropout → Linear(h, C).
    ``roberta_style=True`` mirrors ``RobertaClassificationHead``: dropout → dense → tanh → dropout → out_proj.
    Input ``[b, h]`` pooled states (see ``pool_hidden``), output ``[b, C]`` logits.
    """

    def __init__(self, config, roberta_style: bool = False):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.roberta_style = roberta_style
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled
        if self.roberta_style:
            x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


def exit_head_modules(model_or_config) -> list[str]:
    """The names of the modules that hold the exits' own weights, early exits first: ``["exit_heads.0", ...,
    "exit_heads.<K-2>", "classifier"]`` (the last exit is the stock ``classifier``; a BERT's last exit also reads the
    pretrained ``bert.pooler``, as ``BertForSequenceClassification`` does).

    For PEFT: ``LoraConfig(task_type="SEQ_CLS", modules_to_save=exit_head_modules(model))``. PEFT's ``SEQ_CLS`` trains
    and saves only modules named ``classifier`` / ``score``, so without this the early exits' heads stay frozen as
    they are (a new model's: random) and are not in the adapter; PEFT does not take the ``exit_heads`` ModuleList as a
    whole."""
    config = getattr(model_or_config, "config", model_or_config)
    return [f"exit_heads.{k}" for k in range(int(config.num_exits) - 1)] + ["classifier"]


def exit_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The exit probabilities every decision reads: float32 softmax over the classes (last dimension) of exit logits
    in any dtype. Serving (:meth:`EENetModelMixin.exit_step`, the depth-wave engine) and fitting
    (``EENetTrainer.collect_exit_predictions``, ``exit_probabilities``) all call this one function, so a threshold set
    on fitting rows sees the very scores the served rows get: near p = 1 another softmax (e.g. float64, then rounded)
    differs in the last bit for most rows, and tied blocks of saturated rows then cross a threshold together."""
    return torch.softmax(logits.float(), dim=-1)


def exit_loss_weights(num_exits: int) -> list[float]:
    """w_k ∝ k (deeper exits weigh more), normalised to sum to 1 (docs/method.md §2)."""
    total = num_exits * (num_exits + 1) / 2
    return [(k + 1) / total for k in range(num_exits)]


class EENetModelMixin:
    """The shared exit loop. Subclasses provide ``self.backbone`` (embeddings + encoder.layer) and
    ``self.exit_head(k, pooled [b, h]) -> logits [b, C]``."""

    accepts_loss_kwargs = False  # our loss is a per-batch mean: let Trainer scale it for gradient accumulation

    # ------------------------------------------------------------------ losses
    def problem_type(self, labels: torch.Tensor) -> str:
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        return self.config.problem_type

    def single_exit_loss(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Loss of one exit: CE (single label; ``label_smoothing`` as in ``F.cross_entropy``), MSE (regression,
        num_labels=1) or BCE-with-logits (multi-label)."""
        kind = self.problem_type(labels)
        if kind == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            return F.mse_loss(logits.float(), labels.float())
        if kind == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.config.num_labels).float(), labels.view(-1),
                                   label_smoothing=float(label_smoothing))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def multi_exit_loss(self, exit_logits: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
        """Σ_k w_k · loss(z_k, y), ``exit_logits`` ``[B, K, C]`` (``label_smoothing`` applies to every exit's CE)."""
        weights = exit_loss_weights(exit_logits.shape[1])
        return sum(w * self.single_exit_loss(exit_logits[:, k], labels, label_smoothing) for k, w in enumerate(weights))

    # ------------------------------------------------------------------ policies and budgets (the bank)
    def get_exit_policy(self, budget: float):
        """The fitted EENet scheduler of the bank for ``budget`` (a fraction of the full cost, in (0, 1]: a Python
        number, NumPy scalar or 0-d tensor; see ``hf_eenet.validation``).

        Rule between grid points: the largest fitted budget that does not exceed ``budget`` (so the realised cost
        never plans above what was asked); an exact grid point is used as is. Outside the fitted range → ValueError.
        The entry is checked against the config before it is returned (``check_entry``): a scheduler fitted
        for another budget, other costs or other exits, or with NaN state, raises ``BankIntegrityError``; so does a
        bank fitted for other weights than the model has now (``bank.stale_bank_reason``: trained or edited after the
        fit, e.g. with ``transformers.Trainer``).
        """
        idx = self._bank_index(budget)
        check_entry(self, idx)
        reason = stale_bank_reason(self)  # O(1) unless an optimizer step or a state-dict load happened since
        if reason:
            raise BankIntegrityError(f"EENet scheduler bank before serving: {reason}")
        return self.eenet_schedulers[idx]

    def _bank_index(self, budget) -> int:
        """The bank entry that serves ``budget`` by :meth:`get_exit_policy`'s rule, after the same checks of the
        budget and the bank's size, without the entry check (the pipeline validates a call's ``budget`` with it and
        leaves the entry check to the forward that serves it)."""
        budget = check_budget_fraction(budget)
        check_single_label(self.config)
        budgets = list(self.config.scheduler_budgets or [])
        if not budgets:
            raise ValueError(
                "this model has no fitted EENet scheduler, so it cannot take a budget. Fit one with "
                "`hf_eenet.EENetTrainer(...).fit_scheduler(budgets=[...])` or `model.add_scheduler(scheduler, budget)`, "
                "or pass an explicit `exit_policy=`."
            )
        eps = 1e-6
        if budget < budgets[0] - eps or budget > budgets[-1] + eps:
            k = self.config.num_exits
            raise ValueError(
                f"budget {budget} is outside the fitted range [{budgets[0]}, {budgets[-1]}] "
                f"(fitted budgets: {budgets}); refit the scheduler bank with this budget"
                + (f" (the full model, every row at the last exit: pass exit_policy={_static_policy_name()}({k - 1}, "
                   f"{k}) instead of a budget, Python API only)" if budget > budgets[-1] else "")
            )
        if len(budgets) != len(self.eenet_schedulers):
            verify_bank(self, where="before serving")  # raises, naming the mismatch
        return max(i for i, b in enumerate(budgets) if b <= budget + eps)

    def _build_scheduler_bank(self) -> None:
        """Empty schedulers, one per ``config.scheduler_budgets`` entry; ``from_pretrained`` fills their weights
        (and fails if any tensor is missing from the checkpoint)."""
        self.eenet_schedulers = SchedulerBank()
        if self.config.scheduler_budgets:
            from .scheduler import EENetScheduler

            cfg = dict(self.config.scheduler_config or {})
            cfg.setdefault("num_exits", self.config.num_exits)
            cfg.setdefault("num_classes", self.config.num_labels)
            self.eenet_schedulers.extend(EENetScheduler.from_config(cfg) for _ in self.config.scheduler_budgets)
            self.eenet_schedulers.frozen()

    def _bank_holds_nothing(self, state_dict=None) -> bool:
        """Whether the model has a bank none of whose schedulers is fitted, in the weights a save writes (the
        model's, or ``state_dict``'s where given: every entry's ``fitted`` flag there False); a flag on the meta
        device or missing from ``state_dict`` counts as unknown (not nothing)."""
        n = len(self.eenet_schedulers)
        if not (self.config.scheduler_budgets and n):
            return False
        flags = ([s.fitted for s in self.eenet_schedulers] if state_dict is None else
                 [state_dict.get(f"eenet_schedulers.{i}.fitted") for i in range(n)])
        return all(isinstance(f, torch.Tensor) and f.device.type != "meta" and f.numel() == 1 and not bool(f)
                   for f in flags)

    def _check_bank_candidate(self, scheduler, budget: float) -> None:
        from .scheduler import EENetScheduler

        if not isinstance(scheduler, EENetScheduler):
            raise TypeError(f"expected an EENetScheduler, got {type(scheduler).__name__}")
        check_single_label(self.config, "a scheduler bank")
        if not getattr(scheduler, "is_fitted", False):
            raise ValueError("the scheduler is not fitted: call scheduler.fit(...) first")
        scheduler.check_num_exits(self.config.num_exits)
        check_scheduler(scheduler, self.config, budget, where="add_scheduler")
        return without_inference_tensors(scheduler)

    def add_scheduler(self, scheduler, budget: float, *, data_fingerprint: str | None = None) -> None:
        """Put a fitted :class:`EENetScheduler` into the bank under ``budget`` (fraction of the full cost); replaces
        an entry with the same budget.

        The scheduler must have been fitted for this budget and for this model's ``config.exit_costs``, exits and
        classes, and share the bank's scheduler config; ``data_fingerprint`` (``data_fingerprint(probs,
        labels)`` of its validation data) must equal the other entries' when both are known. Else
        ``BankIntegrityError`` names what differs."""
        budget = check_budget_fraction(budget)
        scheduler = self._check_bank_candidate(scheduler, budget)
        records = verify_bank(self, where="add_scheduler") if self.config.scheduler_budgets else []
        cfg = scheduler_config_json(scheduler)
        entries = {r["budget"]: (s, r) for r, s in zip(records, self.eenet_schedulers)}
        others = {b: e for b, e in entries.items() if b != budget}
        if others:
            reason = stale_bank_reason(self, force=True)
            if reason:
                raise BankIntegrityError(f"add_scheduler: {reason} (the whole bank, fit_scheduler replaces it)")
            if any("rematched_on" in r for _, r in others.values()):
                raise BankIntegrityError(
                    "the bank's thresholds were re-matched on traffic (rematch_budgets): a scheduler matched on "
                    "validation data cannot join it; refit the whole bank (fit_scheduler replaces it), then call "
                    "rematch_budgets again")
            if self.config.scheduler_config and not same_scheduler_config(cfg, self.config.scheduler_config):
                raise BankIntegrityError(
                    f"all schedulers of a bank must share one configuration: the bank has {self.config.scheduler_config}"
                    f", the new scheduler {cfg}")
            prints = {r.get("data_fingerprint") for _, r in others.values() if r.get("data_fingerprint")}
            if data_fingerprint and prints and prints != {data_fingerprint}:
                raise BankIntegrityError(
                    "the new scheduler was fitted on other validation data (or the same data collected on another "
                    "device or in another precision) than the bank's other schedulers "
                    f"({data_fingerprint} vs {sorted(prints)}): refit the whole bank (fit_scheduler replaces it)")
        # the weights the bank is for: the other entries' (checked just above, so these very weights, perhaps cast
        # for serving since: a fresh digest of a cast model would differ from theirs), else the model's now
        recorded = next((r.get("weights_sha256") for _, r in others.values() if r.get("weights_sha256")), None)
        weights = recorded if recorded is not None else weights_digest(self)
        # records without the weights: saved before banks recorded them (no key), or fitted where the weights could
        # not be read (None: sharded ZeRO-3 / FSDP parameters, meta tensors)
        legacy = sorted(b for b, (_, r) in others.items() if "weights_sha256" not in r)
        unread = sorted(b for b, (_, r) in others.items() if "weights_sha256" in r and not r["weights_sha256"])
        if legacy or unread:
            why = []
            if legacy:
                why.append(f"budgets {legacy} were saved before banks recorded the weights they were fitted for (an "
                           "older hf_eenet)")
            if unread:
                why.append(f"budgets {unread} were fitted where the model's weights could not be read (sharded "
                           "ZeRO-3 / FSDP parameters, meta tensors)")
            warnings.warn(
                f"add_scheduler: the bank's schedulers for {' and '.join(why)}: the bank stays unchecked against its "
                "weights; refit it whole (fit_scheduler, set_scheduler_bank) where the weights can be read to have "
                "it checked", UserWarning, stacklevel=2)
        entries[budget] = (scheduler, make_record(scheduler, budget, data_fingerprint, weights,
                                                  exit_reads(self.config)))
        self._install_bank({b: e for b, e in entries.items()}, cfg)
        seed_weights_check(self, weights)

    def set_scheduler_bank(self, schedulers: dict, *, data_fingerprint: str | None = None) -> None:
        """Replace the whole bank with ``{budget: fitted scheduler}`` (all checked first; on error the old bank stays)."""
        if not isinstance(schedulers, dict) or not schedulers:
            raise ValueError("schedulers must be a non-empty {budget: EENetScheduler} dict")
        entries, cfgs = {}, []
        weights = weights_digest(self)  # the weights every scheduler of the new bank was fitted for: these
        for b, sched in schedulers.items():
            b = check_budget_fraction(b)
            sched = self._check_bank_candidate(sched, b)
            cfgs.append(scheduler_config_json(sched))
            entries[b] = (sched, make_record(sched, b, data_fingerprint, weights, exit_reads(self.config)))
        if any(c != cfgs[0] for c in cfgs):
            raise BankIntegrityError("all schedulers of a bank must share one configuration (scheduler_config)")
        self._install_bank(entries, cfgs[0])
        seed_weights_check(self, weights)

    def rematch_budgets(self, exit_probs) -> dict:
        """Re-match every bank entry's thresholds to its budget on *unlabelled* traffic (§6 only; the heads fitted on
        labelled validation data stay): use it when the inputs you serve are more or less confident than the
        validation rows, which moves the realised cost away from the budget (see
        :meth:`~hf_eenet.scheduler.EENetScheduler.rematch_budget`).

        Args:
            exit_probs: ``[N, K, C]`` all-exits softmax outputs on a sample of the traffic, e.g.
                ``hf_eenet.exit_probabilities(model, tokenizer, texts)`` (or ``EENetTrainer.rematch_budgets``).
        Returns:
            ``{budget: {"rows", "plan", "cost_before", "cost_after", "cost_standard_error", "budget"}}`` (costs on
            these rows, as fractions of ``config.exit_costs``). Each bank record gains ``rematched_on`` (rows and
            fingerprint); all entries are re-matched on copies first, so on error the old bank stays.
        """
        check_single_label(self.config, "re-matching a scheduler bank")
        records = verify_bank(self, where="rematch_budgets")
        if not records:
            raise ValueError("the model has no scheduler bank to re-match: fit one first (EENetTrainer.fit_scheduler)")
        reason = stale_bank_reason(self, force=True)
        if reason:  # re-matching moves thresholds, not the heads fitted on the old weights' outputs
            raise BankIntegrityError(f"rematch_budgets: {reason}")
        probs = as_probs_tensor(exit_probs).to("cpu")  # the shared check: [N, K, C] finite softmax outputs
        expected = (int(self.config.num_exits), int(self.config.num_labels))
        if tuple(probs.shape[1:]) != expected:
            raise ValueError(f"exit_probs must have shape [N, {expected[0]}, {expected[1]}] (rows, exits, classes), "
                             f"got {tuple(probs.shape)}")
        if any(not (s.fit_info or {}).get("plan") for s in self.eenet_schedulers):
            raise ValueError("this bank was saved before hf_eenet recorded each scheduler's share plan, which "
                             "re-matching re-runs: refit it (EENetTrainer.fit_scheduler / hf-eenet fit-scheduler), "
                             "then re-match")
        marker = {"rows": int(probs.shape[0]),
                  "fingerprint": _data_fingerprint(probs, torch.full((probs.shape[0],), -1, dtype=torch.long))}
        entries, out = {}, {}
        # outside inference mode (a caller's `with torch.inference_mode()` would make the new bank's tensors
        # inference tensors, which the per-request bank check and later saves cannot use)
        with torch.inference_mode(False), torch.no_grad():
            probs = probs.clone()
            for rec, sched in zip(records, self.eenet_schedulers):
                b = float(rec["budget"])
                entries[b] = (copy.deepcopy(sched).cpu().rematch_budget(probs), rec)
        for b, (new, rec) in list(entries.items()):
            record = make_record(new, b, rec.get("data_fingerprint"), rec.get("weights_sha256"),
                                 {k: rec[k] for k in EXIT_READS if k in rec})  # (checked: as the config's)
            record["rematched_on"] = dict(marker)
            entries[b] = (new, record)
            out[b] = dict(new.fit_info["rematch"])
        self._install_bank(entries, self.config.scheduler_config)
        seed_weights_check(self, records[0].get("weights_sha256"))
        _warn_if_rematch_is_noisy(out, int(probs.shape[0]))
        return out

    def clear_scheduler_bank(self) -> None:
        """Remove every scheduler (e.g. before changing ``exit_costs``); the model then serves no budget."""
        self.eenet_schedulers = SchedulerBank()
        self.config.scheduler_budgets = []
        self.config.scheduler_bank = None
        self.config.default_budget = None

    #: per-process caches kept in the model's ``__dict__`` (captured CUDA graphs with their lock and static buffers;
    #: bank entries already checked; the exit layer/cost tensors): ``copy.deepcopy`` / pickle leave them out, the copy
    #: rebuilds them on first use
    _EENET_CACHES = ("_eenet_layer_graphs", "_eenet_checked_entries", "_eenet_exit_tables", "_eenet_weights_check")

    def __getstate__(self):
        state = super().__getstate__()  # nn.Module's: a copy of __dict__
        for key in self._EENET_CACHES:
            state.pop(key, None)
        # parameter ids: a copy has new ones, recorded again on restore for a classifier that is a trained one (loaded
        # from the checkpoint, or stepped by an optimizer in this process: the copy's tensors are not the stepped ones)
        classifier = self._modules.get("classifier")
        state["_eenet_loaded_classifier"] = classifier is not None and (
            self._classifier_is_loaded() or stepped_since(classifier.parameters(), 0))
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.__dict__.get("_eenet_loaded_classifier") is True:  # (see __getstate__)
            self.__dict__["_eenet_loaded_classifier"] = tuple(id(p) for p in self.classifier.parameters())

    def _classifier_is_loaded(self) -> bool:
        """Whether ``classifier``'s parameters are those ``from_pretrained`` read from the checkpoint (their ids were
        recorded then; a copy of the model records its own for a classifier that was loaded or trained): a fine-tuned
        classifier kept as it was, not a new (random) one set on the model since; one re-initialised in place
        (``reset_parameters()``) is not told from it."""
        return tuple(id(p) for p in self.classifier.parameters()) == self.__dict__.get("_eenet_loaded_classifier")

    def release_cuda_graphs(self) -> int:
        """Drop the CUDA graphs captured by ``cuda_graphs=True`` (their static buffers hold device memory per
        captured layer and width); returns how many graphs were dropped. The next call with graphs recaptures."""
        caches = self.__dict__.pop("_eenet_layer_graphs", {})
        return sum(len(graphs.graphs) for graphs in caches.values())

    # ------------------------------------------------------------------ CPU kernels
    def use_fused_cpu_layers(self, enabled: bool = True):
        """Run the encoder layers with fused oneDNN kernels on the CPU (``hf_eenet/cpu_kernels.py``); returns ``self``.

        Applies to inference only (eval mode, no autograd, CPU, float32 weights, bfloat16 where the CPU has oneDNN's
        bfloat16 kernels, no autocast): every forward of this model then runs each stock layer as packed GEMMs with
        the residual adds and GELU fused in, the same function to the dtype's rounding; anything the fused layer
        cannot reproduce exactly runs the stock layer. Costs a second copy of the encoder's Linear weights while
        enabled; ``enabled=False`` frees it.
        Optimizer steps (fused ones and steps over master copies written back through ``.data`` included),
        ``model.train()`` / ``model.eval()`` and every forward with autograd on drop the packed weights by
        themselves; an edit through ``.data`` in eval mode with no optimizer step after it (it bypasses the version
        counter the packed weights are checked against) needs this called again: it repacks. Not saved with the model (a
        per-process choice, like ``torch.set_num_threads``).
        """
        check_bool(enabled, "enabled")
        if not enabled:
            self.__dict__.pop("_eenet_fused_cpu", None)
            return self
        from .cpu_kernels import FusedCPULayers, fused_kernels_available

        if not fused_kernels_available():
            raise RuntimeError(
                "use_fused_cpu_layers needs a PyTorch build with oneDNN (torch.backends.mkldnn.is_available() is "
                "False or its linear kernels are missing); the stock layers are used"
            )
        if self.device.type != "cpu":
            warnings.warn(f"use_fused_cpu_layers: this model is on {self.device}; the fused layers apply only while it "
                          "runs on the CPU (the setting stays for a later .to('cpu'))", UserWarning, stacklevel=2)
        self._eenet_fused_cpu = FusedCPULayers()  # a fresh cache: packs on the next forward
        return self

    def train(self, mode: bool = True):
        """``nn.Module.train``; also drops packed CPU weights, in both directions (``model.eval()`` after training
        the backbone alone, whose fused optimizer steps bypass the version counter), the next inference repacks."""
        fused = self.__dict__.get("_eenet_fused_cpu")
        if fused is not None:
            fused.clear()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        """``nn.Module.load_state_dict``; counted as a weight change, so the next request checks that the scheduler
        bank was fitted for the loaded weights (``bank.stale_bank_reason``)."""
        try:
            return super().load_state_dict(*args, **kwargs)
        finally:
            note_weight_change()

    @property
    def fused_cpu_layers(self) -> bool:
        """Whether :meth:`use_fused_cpu_layers` is on for this model."""
        return "_eenet_fused_cpu" in self.__dict__

    def _layer_calls(self, hidden: torch.Tensor):
        """What runs the encoder layers in this forward, iterated in layer order, each called as
        ``call(hidden, mask)``: the fused CPU layers where enabled and exact for these inputs, else the stock
        ``ModuleList``."""
        fused = self.__dict__.get("_eenet_fused_cpu")
        if fused is None:
            return self.backbone.encoder.layer
        return fused.layer_calls(self, hidden)

    def _install_bank(self, entries: dict, scheduler_config: dict) -> None:
        from .engine import input_device

        device = input_device(self)  # (not meta where a device_map offloaded the first weights)
        budgets = sorted(entries)
        self.eenet_schedulers = SchedulerBank([entries[b][0].to(device) for b in budgets]).frozen()
        self.config.scheduler_config = scheduler_config
        self.config.scheduler_budgets = budgets
        self.config.scheduler_bank = [entries[b][1] for b in budgets]
        old = self.config.default_budget
        if old is not None and not budgets[0] <= old <= budgets[-1] + 1e-6:  # not servable by the new bank
            self.config.default_budget = min(budgets, key=lambda b: (abs(b - old), b))
            warnings.warn(f"config.default_budget {old:g} is outside the new scheduler bank's budgets {budgets}; the "
                          f"pipeline's default budget is now {self.config.default_budget:g}, the nearest fitted one "
                          "(set config.default_budget to choose another)", stacklevel=3)

    def verify_scheduler_bank(self) -> list[dict]:
        """Check the bank against the config (see ``hf_eenet.verify_bank``) and the model's weights
        (``bank.stale_bank_reason``); returns the records."""
        records = verify_bank(self)
        reason = stale_bank_reason(self, force=True)
        if reason:
            raise BankIntegrityError(f"EENet scheduler bank check: {reason}")
        return records

    # ------------------------------------------------------------------ persistence
    def _apply(self, fn, *args, **kwargs):
        # ``model.to(dtype)`` / ``.half()`` cast every floating tensor; the scheduler bank keeps its dtypes (float32
        # thresholds, float64 costs and budget: ``SchedulerBank._apply`` restores them). A bank assigned as a plain
        # ModuleList is converted first. Packed CPU weights (use_fused_cpu_layers) are dropped: they copy the old
        # tensors (a move to a GPU would keep a second copy of the encoder in host memory); a CPU forward repacks.
        bank_modules = self._modules.get("eenet_schedulers")
        if bank_modules is not None and not isinstance(bank_modules, SchedulerBank):
            self._modules["eenet_schedulers"] = SchedulerBank(list(bank_modules))
        fused = self.__dict__.get("_eenet_fused_cpu")
        if fused is not None:
            fused.clear()
        before = [t.dtype for t in self.parameters()]
        out = super()._apply(fn, *args, **kwargs)
        if [t.dtype for t in self.parameters()] != before:
            # a cast of the model: the next request compares the weights with the bank's record again (cast twice,
            # e.g. float16 then bfloat16, they are other weights, as the same weights saved and loaded are). A
            # request sees a cast of a submodule by the tensors' dtypes (bank._still_current); this also sees casts
            # there and back between two requests, and new Parameters (torch.__future__'s overwrite on conversion)
            self.__dict__.pop("_eenet_weights_check", None)
        return out

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As ``PreTrainedModel.from_pretrained``, then: no scheduler tensor may be missing from (or left over in)
        the checkpoint, and the bank must match the config (``verify_bank``); else ``BankIntegrityError``. A
        checkpoint of ours asked for exits at other layers or pooled otherwise is refused first
        (:func:`_refuse_moved_exits`). A local folder whose last save was interrupted while its files moved in (a
        save into the working directory or a mount point) is first finished
        (``hf_eenet.bank.finish_interrupted_save``)."""
        want_info = kwargs.pop("output_loading_info", False)
        path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if isinstance(kwargs.get("config"), PretrainedConfig):  # config=AutoConfig.from_pretrained(plain_ckpt, ...)
            kwargs["config"] = cls.config_class.from_stock(kwargs["config"])
        _finish_interrupted_save_before_load(cls, path, kwargs)
        read_saved = _saved_config_reader(cls, path, kwargs)
        _refuse_moved_exits(cls, path, kwargs, read_saved)
        _drop_bank_for_other_classes(cls, path, kwargs, read_saved)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        bring_offloaded_bank_in(model)
        model.config._validate_eenet()
        loaded = _last_exit_loaded(model, info)
        # read by EENetTrainer: a frozen classifier is a kept fine-tuned one when these very parameters were loaded
        model.__dict__["_eenet_loaded_classifier"] = (tuple(id(p) for p in model.classifier.parameters())
                                                      if loaded else None)
        _warn_mean_pooled_stock_classifier(path, model.config, read_saved, loaded)
        check_loading_info(info, bank_expected=bool(model.config.scheduler_budgets or model.config.scheduler_bank))
        heads = sorted(k for k in info.get("unexpected_keys", []) if str(k).startswith("exit_heads."))
        if heads:  # more trained heads than the config places: config.json and the weights are of different saves
            raise ValueError(f"{path}: the weights hold exit heads the config does not place ({heads[:4]}; "
                             f"config.exit_layers {list(model.config.exit_layers)}): config.json and the weights file "
                             "come from different saves (e.g. a variant= save beside older plain weights: load with "
                             "that variant=), and the heads would sit at other exits")
        if model.config.scheduler_budgets or model.config.scheduler_bank:
            records = verify_bank(model, where="on load")
            if model.config.scheduler_bank is None:  # legacy checkpoint: records from the verified schedulers
                model.config.scheduler_bank = records
            for rec, sched in zip(records, model.eenet_schedulers):  # fit_info is not in the weights: the plan
                if rec.get("plan") and not (sched.fit_info or {}).get("plan"):  # comes back from the record
                    sched.fit_info = dict(sched.fit_info or {}, plan=rec["plan"])
            reason = stale_bank_reason(model, force=True)
            if reason:  # the model loads (to be refitted); serving a budget raises
                warnings.warn(f"{reason}. The model is loaded; serving a budget raises BankIntegrityError until the "
                              "bank is refitted", UserWarning, stacklevel=2)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As ``PreTrainedModel.save_pretrained``, but atomic and Hub-complete.

        The bank is verified first (an inconsistent bank is never written) and its records go to ``config.json``.
        Everything is written into a temporary folder beside ``save_directory`` that is then swapped in by rename,
        so an interrupted save leaves the old folder loading exactly as before. Files of the old folder the save
        does not produce (tokenizer, README, ...) are kept. The folder always gets the remote code (``auto_map``,
        the model/config code), the pipeline code and ``custom_pipelines``, so
        ``pipeline("text-classification", model=folder, trust_remote_code=True)`` serves ``budget=`` without
        hf_eenet installed. A results card in the folder that describes other weights or another bank is marked
        stale (:func:`~hf_eenet.model_card.mark_card_stale_in_save`, with a warning). ``state_dict=``: the bank's
        tensors it lacks are added from the model, and a bank not fitted for its weights is warned about.
        ``push_to_hub=True`` uploads what the save wrote and the card, as the stock save does (not the files the
        folder held already). A rank that does not write checkpoints (``should_save_on_this_rank``) writes nothing."""
        if getattr(self, "eenet_quantization", None) or any(
                type(m).__name__ == "Int8Linear" or type(m).__module__.startswith(_TORCH_QUANTISED)
                for m in self.modules()):  # also quantize_linears_int8 alone, or torch's quantize_dynamic
            raise ValueError("this model is int8-quantised (hf_eenet.quantization or torch.ao.quantization): save the "
                             "fp32 model and quantise after loading")
        # transformers writes on global rank 0 only (should_save_on_this_rank): another rank's save is the stock one,
        # which writes nothing (swapped in, a temporary folder holding no weights replaced the folder)
        is_main = kwargs.get("is_main_process", True)
        if hasattr(self, "should_save_on_this_rank"):
            is_main = self.should_save_on_this_rank(is_main)
        if not is_main:
            return super().save_pretrained(save_directory, *args, **kwargs)
        given = kwargs.get("state_dict")
        no_bank = self._bank_holds_nothing() and (given is None or self._bank_holds_nothing(given))
        if no_bank:
            # built from a config that names a bank (from_config, Model(config)) and never loaded or fitted: a new
            # model whose bank holds nothing (a stock Trainer's checkpoint of it must not fail); written without it
            # (the model and its config object, which the caller may share, are left as they are)
            warnings.warn(f"saving without the scheduler bank: none of its {len(self.eenet_schedulers)} schedulers "
                          f"(budgets {list(self.config.scheduler_budgets)}) is fitted (e.g. a model built from a "
                          "config that names a bank, with from_config); the folder gets no bank. Fit one with "
                          "EENetTrainer.fit_scheduler", UserWarning, stacklevel=2)
            kwargs["state_dict"] = {k: v for k, v in (given if given is not None else self.state_dict()).items()
                                    if not k.startswith("eenet_schedulers.")}
        elif self.config.scheduler_budgets or self.config.scheduler_bank:
            self.config.scheduler_bank = verify_bank(self, where="on save") or None
            if kwargs.get("state_dict") is not None:  # the weights written are these, not the model's
                kwargs["state_dict"], reason = state_dict_for_save(self, kwargs["state_dict"])
            else:
                reason = stale_bank_reason(self, force=True)
            if reason:  # saved as it is (a Trainer checkpoint must not fail): loads warn, serving raises
                warnings.warn(f"saving a stale bank: {reason}", UserWarning, stacklevel=2)
        # adapters added through transformers' PEFT integration (add_adapter / load_adapter): the stock save writes
        # the adapter only (no config.json, no model weights: no bank; the model's code is copied as for any model)
        adapter_only = bool(getattr(self, "_hf_peft_config_loaded", False))
        if adapter_only and self.config.scheduler_budgets:
            warnings.warn(f"{save_directory}: the model holds PEFT adapters, so its save holds the adapter only: its "
                          f"scheduler bank (budgets {list(self.config.scheduler_budgets)}) is not saved. To serve "
                          "budgets from a folder, merge the adapter into the weights (or save the model without "
                          "adapters), fit the bank on that model and save it", UserWarning, stacklevel=2)
        custom = {"text-classification": {"impl": "pipeline_eenet.EENetTextClassificationPipeline",
                                          "pt": ["AutoModelForSequenceClassification"], "type": "text"}}

        def write(tmp):
            had = self.config.__dict__.get("custom_pipelines", None)
            bank_fields = {k: getattr(self.config, k, None) for k in _NO_BANK} if no_bank else {}
            self.config.custom_pipelines = custom
            try:
                for key in bank_fields:  # (for the config.json written; restored below)
                    setattr(self.config, key, _NO_BANK[key])
                super(EENetModelMixin, self).save_pretrained(tmp, *args, **kwargs)
            finally:
                for key, value in bank_fields.items():
                    setattr(self.config, key, value)
                if had is None:
                    self.config.__dict__.pop("custom_pipelines", None)
                else:
                    self.config.custom_pipelines = had
            here = Path(__file__).parent
            for name in ("pipeline_eenet.py",):
                if (here / name).exists():
                    shutil.copy(here / name, Path(tmp, name))
            # a results card already in the folder that describes other weights or another bank goes in marked
            from .card_state import mark_card_stale_in_save

            if mark_card_stale_in_save(save_directory, tmp, self, kwargs.get("state_dict")) == "stale":
                warnings.warn(f"{Path(save_directory, 'README.md')} held results of another model (its results.json): "
                              "the card was marked stale (its model-index results removed); evaluate the model saved "
                              "now (hf-eenet evaluate, or the recipe with --do_eval) to write its own card",
                              UserWarning, stacklevel=4)

        # push_to_hub=True: the stock save would create the repo from the *temporary* folder's name and upload it
        # before the pipeline code is added; push the finished folder instead
        push = kwargs.pop("push_to_hub", False)
        hub = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "create_pr", "private") if key in kwargs}
        # what the folder held before (the entries a save carries over keep their times): only what this save
        # wrote is uploaded, as the stock push does - not a stock run's training_args.bin, checkpoints, old results
        stamps = self._get_files_timestamps(save_directory) if push and os.path.isdir(save_directory) else {}
        stamps.pop("README.md", None)  # the folder's card goes up with the model (marked above where stale)
        stale, what = _other_layout_weights(save_directory, self.config, kwargs.get("variant"))
        if stale:  # weights of another variant, for the config this save replaces: removed with it
            warnings.warn(f"{save_directory}: {stale} are weights of another variant for a model with other exits or "
                          f"classes ({what}); config.json now describes this model, so they are removed (they would "
                          "load their exit heads into this model's other exits)", UserWarning, stacklevel=2)
        atomic_save_dir(save_directory, write, drop=tuple(stale))
        if push:
            self._push_saved_folder(save_directory, token=kwargs.get("token"), stamps=stamps, **hub)

    def _push_saved_folder(self, folder, repo_id=None, commit_message=None, create_pr=False, private=None,
                           token=None, stamps=None):
        """Upload a folder written by :meth:`save_pretrained` as the stock ``push_to_hub=True`` does (repo id
        defaults to the folder's name; a stock model card is added only when the folder has no README.md): the
        entries that are new or changed since ``stamps`` (``_get_files_timestamps`` of the folder before the save)."""
        from transformers import modeling_utils

        repo_kw = {"private": private} if private is not None else {}
        repo_id = modeling_utils.hf_api().create_repo(
            repo_id or Path(folder).name, exist_ok=True, token=token, **repo_kw
        ).repo_id
        if not Path(folder, "README.md").exists():
            modeling_utils.create_and_tag_model_card(repo_id, self.model_tags, token=token).save(
                str(Path(folder, "README.md"))
            )
        self._upload_modified_files(str(folder), repo_id, stamps or {}, commit_message=commit_message, token=token,
                                    create_pr=create_pr)

    # ------------------------------------------------------------------ the exit loop
    def _warn_if_training(self) -> None:
        """Early exit served in training mode: dropout is on, so exits and predictions are random and differ from the
        eval-mode outputs the bank was fitted on (its realised cost drifts from the budget). A warning, not an error:
        the stock model runs in training mode too when asked, and MC-dropout experiments do it on purpose."""
        if self.training:
            warnings.warn(
                f"{type(self).__name__} is in training mode (dropout on) while serving early exit: exits and "
                "predictions are random and differ from the eval-mode outputs the scheduler bank was fitted on; "
                "call model.eval() first", UserWarning, stacklevel=2)

    def _check_encoder_depth(self) -> None:
        """ValueError when the encoder holds fewer layers than ``config.exit_layers`` reaches (layers removed after the
        model was built): the deepest exit would never run, and no output would exist for the rows that reach it."""
        depth, deepest = len(self.backbone.encoder.layer), self.config.exit_layers[-1]
        if depth < deepest:
            raise ValueError(
                f"the encoder has {depth} layers but config.exit_layers {list(self.config.exit_layers)} puts an exit "
                f"after layer {deepest}; restore the layers, or rebuild the model with exits at layers <= {depth}"
            )

    def _check_exit_policy(self, exit_policy) -> None:
        """``exit_policy`` is ``None`` or an hf_eenet :class:`ExitPolicy` (one check for every entry point)."""
        if exit_policy is not None and not isinstance(exit_policy, ExitPolicy):
            raise TypeError(f"exit_policy must be an hf_eenet ExitPolicy, got {type(exit_policy).__name__}")

    def _check_inputs(self, input_ids, attention_mask, inputs_embeds):
        """Shapes and types (metadata only); the rows' tokens are checked on the host copy of the mask."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        if not isinstance(ref, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(ref).__name__}")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if ref.shape[0] == 0 or ref.shape[1] == 0:
            raise ValueError(f"empty batch: input shape {tuple(ref.shape)}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
            if tuple(attention_mask.shape) != tuple(ref.shape[:2]):
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match input shape "
                    f"{tuple(ref.shape[:2])}"
                )

    def _mask(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask2d)

    def _layer_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor, has_padding: bool):
        """Attention mask for the encoder layers from the 2-D padding mask, without a device→host sync.

        ``has_padding`` is known on the host (the exit loops keep a host copy of the rows' lengths), so the check
        that ``create_bidirectional_mask`` makes with ``mask.all()`` (a host sync on a GPU) is not needed: eager and
        SDPA get ``None`` (no padding) or the same broadcast mask that function builds; other attention
        implementations go through it.
        """
        impl = self.config._attn_implementation
        if impl == "sdpa":
            return mask2d.bool()[:, None, None, :] if has_padding else None
        if impl == "eager":
            if not has_padding:
                return None
            keep = mask2d.bool()[:, None, None, :]
            zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
            return torch.where(keep, zero, torch.finfo(hidden.dtype).min)
        return self._mask(hidden, mask2d)

    def _exit_logits(self, k: int, hidden: torch.Tensor, mask2d: torch.Tensor) -> torch.Tensor:
        return self.exit_head(k, pool_hidden(hidden, mask2d, self.config.exit_pooling))

    def exit_step(self, k: int, hidden: torch.Tensor, mask2d: torch.Tensor, exit_policy, state):
        """The work done at exit ``k`` for the ``b`` running rows, in one place: pool → head → softmax → decision.

        Args:
            hidden (`[b, S, h]`), mask2d (`[b, S]`): the running rows after exit ``k``'s layer.
            exit_policy, state: the policy and its per-row state (``None`` policy: no decision).
        Returns:
            ``(logits [b, C], stop [b] bool | None)``, both on the device; nothing is read back to the host.
            ``stop`` is ``None`` at the last exit (it always accepts) and without a policy.
        """
        logits = self._exit_logits(k, hidden, mask2d)
        if exit_policy is None or k == self.config.num_exits - 1:
            return logits, None
        return logits, exit_policy.decide(k, exit_softmax(logits), state).to(torch.bool)

    def exit_forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        exit_policy: ExitPolicy | None = None,
        cuda_graphs: bool = False,
    ):
        """Run the encoder layer by layer. Returns ``(logits [B, C], exit_index [B], exit_logits [B, K, C] | None)``.

        The per-request loop (the batch shrinks as rows leave). Host syncs with a policy: one at the start (the
        attention mask read to the host: the rows' token extents and the empty-row check) and one per exit that a
        policy decides at (which rows stop); outputs of the rows that stop are written with one index built on the
        host (no boolean indexing, no further syncs). A left-padded batch (a row whose mask starts with 0) is
        right-aligned first (``_right_align``): every row gets what it gets alone, whatever the tokenizer's
        ``padding_side``. ``cuda_graphs`` (experimental, CUDA): with a policy and one
        text each layer replays a CUDA graph (``hf_eenet/engine.py``); other calls run eagerly, but the model must
        still be one graphs can serve (on a CUDA device, under ``torch.no_grad()`` / ``torch.inference_mode()``, in
        eval mode, SDPA/eager attention), else ValueError.
        """
        self._check_inputs(input_ids, attention_mask, inputs_embeds)
        self._check_encoder_depth()
        mask_host = None
        if attention_mask is not None:
            mask_host = attention_mask.detach().to("cpu", torch.bool)  # host sync 1 (once per call)
            _check_rows_have_tokens(mask_host)
        ref = input_ids if input_ids is not None else inputs_embeds
        tokens = None  # a RoBERTa's longest row: its ids that are not padding, as the stock embeddings number them
        # (ids on the host), else the host copy of the mask (no device read for this check)
        if self.config.model_type == "eenet-roberta":
            if input_ids is not None and input_ids.device.type == "cpu" and self.config.pad_token_id is not None:
                tokens = int((input_ids != self.config.pad_token_id).sum(1).max())
            elif mask_host is not None:
                tokens = int(mask_host.sum(1).max())
        check_input_length(self.config, ref.shape[1], tokens, embeds=inputs_embeds is not None,
                           own_positions=position_ids is not None)
        if attention_mask is not None:
            if not bool(mask_host[:, 0].all()):  # a row starts with padding: left padding
                input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, mask_host = _right_align(
                    mask_host, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        if cuda_graphs:
            from .engine import check_graphs_usable

            check_graphs_usable(self)
        backbone = self.backbone
        exit_layers = self.config.exit_layers
        num_exits = len(exit_layers)
        hidden = backbone.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        batch = hidden.shape[0]
        exit_at = {layer: k for k, layer in enumerate(exit_layers)}

        if exit_policy is None:  # all-exits forward
            mask2d = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
            mask = self._mask(hidden, mask2d)
            all_logits = []
            for i, layer in enumerate(self._layer_calls(hidden)):
                hidden = layer(hidden, mask)
                if i + 1 in exit_at:
                    all_logits.append(self._exit_logits(exit_at[i + 1], hidden, mask2d))
            exit_logits = torch.stack(all_logits, dim=1)
            exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=hidden.device)
            return exit_logits[:, -1], exit_index, exit_logits

        check_single_label(self.config)
        exit_policy.check_num_exits(num_exits)
        self._warn_if_training()
        device = hidden.device
        width = hidden.shape[1]
        if attention_mask is None:
            mask2d = torch.ones(hidden.shape[:2], dtype=torch.long, device=device)
            mask_host = torch.ones(hidden.shape[:2], dtype=torch.bool)
        else:
            mask2d = attention_mask
        graphs = None
        if cuda_graphs and batch == 1:
            from .engine import layer_graphs

            graphs = layer_graphs(self, 1)
        # with graphs, hidden is a view of a graph's static output between layers: hold the cache's lock throughout
        with graphs.lock if graphs is not None else contextlib.nullcontext():
            return self._policy_loop(hidden, mask2d, mask_host, width, exit_policy, graphs)

    def _policy_loop(self, hidden, mask2d, mask_host, width, exit_policy, graphs):
        """The layer loop of :meth:`exit_forward` with a policy (``hidden`` = embeddings ``[B, S, h]``)."""
        backbone = self.backbone
        num_exits = self.config.num_exits
        exit_at = {layer: k for k, layer in enumerate(self.config.exit_layers)}
        batch, device = hidden.shape[0], hidden.device
        mask = self._layer_mask(hidden, mask2d, not bool(mask_host.all()))
        state = exit_policy.init_state(batch, device)
        if batch == 1 and graphs is None:  # one text (a request): nothing leaves a batch, no rows to track
            return self._one_row_loop(hidden, mask2d, mask, exit_policy, state, exit_at)
        # per row, the column after its last token: trailing columns that are padding for every running row are
        # dropped after a shrink (host arithmetic, no sync)
        cols = torch.arange(1, width + 1)
        extent = (mask_host * cols).amax(1)
        rows = torch.arange(batch, device=device)  # original row of each running row
        logits_out = None
        exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=device)
        for i, layer in enumerate(backbone.encoder.layer if graphs is not None else self._layer_calls(hidden)):
            hidden = graphs.run(i, hidden, mask2d) if graphs is not None else layer(hidden, mask)
            k = exit_at.get(i + 1)
            if k is None:
                continue
            logits, stop = self.exit_step(k, hidden, mask2d, exit_policy, state)
            if logits_out is None:
                logits_out = logits.new_empty((batch, logits.shape[-1]))
            if stop is None:  # the last exit always accepts
                logits_out.index_copy_(0, rows, logits)
                exit_index.index_fill_(0, rows, k)
                break
            n_stop, keep_idx, keep_idx_host = self._record_exits(k, stop, rows, logits, logits_out, exit_index)
            if n_stop == 0:
                continue
            if keep_idx is None:  # every running row stopped
                break
            rows, hidden, mask2d = rows[keep_idx], hidden[keep_idx], mask2d[keep_idx]
            mask_host, extent = mask_host[keep_idx_host], extent[keep_idx_host]
            for key in list(state):
                state[key] = state[key][keep_idx.to(state[key].device)]
            # drop trailing columns that are padding for every remaining row
            length = int(extent.max())
            if length < mask2d.shape[1]:
                hidden, mask2d, mask_host = hidden[:, :length], mask2d[:, :length], mask_host[:, :length]
            mask = self._layer_mask(hidden, mask2d, not bool(mask_host.all()))
        return logits_out, exit_index, None

    def _one_row_loop(self, hidden, mask2d, mask, exit_policy, state, exit_at):
        """:meth:`_policy_loop` for a batch of one row: the same layer calls, exit steps and outputs, without the
        bookkeeping of rows leaving a batch (the row runs until an exit accepts it; one host read per exit decided,
        as in the batch loop). Returns ``(logits [1, C], exit_index [1], None)``."""
        last = self.config.num_exits - 1
        calls = self._layer_calls(hidden)
        # the stock ModuleList is indexed, not iterated: under torch.compile the host read below breaks the graph
        # inside this loop, and TorchDynamo cannot resume a loop over a module list's iterator ('NameError:
        # ___tuple_iterator_getitem'); the fused CPU layers come as a lazy iterator
        stock = isinstance(calls, nn.ModuleList)
        it = None if stock else iter(calls)
        for i in range(len(self.backbone.encoder.layer)):
            layer = calls[i] if stock else next(it)
            hidden = layer(hidden, mask)
            k = exit_at.get(i + 1)
            if k is None:
                continue
            logits, stop = self.exit_step(k, hidden, mask2d, exit_policy, state)
            if k == last or bool(stop[0]):  # host sync: does the row stop here
                return logits, torch.full((1,), k, dtype=torch.long, device=hidden.device), None
        raise RuntimeError("no exit accepted the row")  # unreachable: exit_forward checked the encoder's depth

    @staticmethod
    def _record_exits(k: int, stop: torch.Tensor, rows: torch.Tensor, logits: torch.Tensor,
                      logits_out: torch.Tensor, exit_index: torch.Tensor):
        """Write the outputs of the running rows that stop at exit ``k`` at their input positions ``rows`` [b].

        ``stop`` [b] bool (on the device) is read to the host once: the one sync the loop cannot run ahead of.
        Returns ``(n_stop, keep_idx, keep_idx_host)``: the survivors' positions among the running rows on the device
        and on the host (both ``None`` when every row stopped; ``n_stop == 0`` means nothing was written).
        Shared by the per-request loop and the depth-wave engine.
        """
        stop_host = stop.cpu()
        n_stop = int(stop_host.sum())
        if n_stop == 0:
            return 0, None, None
        if n_stop == stop_host.shape[0]:
            logits_out.index_copy_(0, rows, logits)
            exit_index.index_fill_(0, rows, k)
            return n_stop, None, None
        order_host = torch.cat([stop_host.nonzero().squeeze(1), (~stop_host).nonzero().squeeze(1)])
        order_dev = order_host.to(rows.device, non_blocking=True)
        stop_idx, keep_idx = order_dev[:n_stop], order_dev[n_stop:]
        leaving = rows.index_select(0, stop_idx)
        logits_out.index_copy_(0, leaving, logits.index_select(0, stop_idx))
        exit_index.index_fill_(0, leaving, k)
        return n_stop, keep_idx, order_host[n_stop:]

    @torch.no_grad()
    def early_exit_predict(
        self,
        inputs,
        *,
        budget: float | None = None,
        exit_policy: ExitPolicy | None = None,
        tokenizer=None,
        batch_size: int = 32,
        chunk_size: int | None = None,
        cuda_graphs: bool = False,
        **tokenizer_kwargs,
    ) -> EENetSequenceClassifierOutput:
        """Classify many texts with early exit through depth waves (the throughput path, ``hf_eenet/engine.py``).

        Rows are length-sorted within chunks of ``chunk_size`` texts and re-packed into full micro-batches of
        ``batch_size`` rows before every layer, so layer work follows the rows still running; decisions stay on the
        device (at most one host sync per exit layer per chunk). Predictions, exits and costs equal running each
        text alone.

        Args:
            inputs: texts (needs ``tokenizer``): a list, or any sequence of strings (a NumPy array, a ``datasets``
                column, a pandas Series); or tokenizer output (``BatchEncoding`` / dict with ``input_ids`` as a list
                of lists or a padded ``[N, S]`` tensor plus ``attention_mask``; one text's unbatched output, a flat
                list of ids or a 1-D tensor, is one row).
            budget (`float`): fraction of the full cost in (0, 1], served by the fitted bank (``get_exit_policy``).
                Default: ``config.default_budget`` (else the largest fitted budget) when there is a bank, else the
                full model.
            exit_policy (`ExitPolicy`): an explicit policy instead of a budget.
            tokenizer: used when ``inputs`` are texts (truncated by default to what the model takes,
                ``configuration_eenet.max_input_tokens``, as in the pipeline); ``tokenizer_kwargs`` go to it —
                for sentence pairs pass the second segments as ``text_pair=[...]`` (one per text).
            batch_size (`int`): rows per layer call (micro-batch).
            chunk_size (`int`, *optional*): texts whose hidden states are on the device at once (memory: about
                ``1.75 x chunk_size x longest x hidden_size`` activations, a re-pack included). Default: 32
                micro-batches, at least 1024 and at most 4096 texts (``engine.default_chunk_size``), ending earlier
                where a chunk would hold more tokens than 1024 texts of 512 tokens (``engine.DEFAULT_CHUNK_TOKENS``).
            cuda_graphs (`bool`): experimental, CUDA only: full micro-batches replay a CUDA graph per layer (see
                ``hf_eenet/engine.py``).
        Returns:
            [`EENetSequenceClassifierOutput`] with ``logits [N, C]``, ``exit_index``, ``exit_layer``, ``exit_cost``
            ``[N]``, in input order, on the model's device (``exit_logits`` and ``loss`` are ``None``).
        """
        from .engine import check_rows_per_text, check_text_list, depth_wave_forward, rows_from_encodings, texts_as_list

        batch_size = check_int(batch_size, "batch_size", 1)
        if chunk_size is not None:
            chunk_size = check_int(chunk_size, "chunk_size", 1)
        if exit_policy is not None and budget is not None:
            raise ValueError("give either exit_policy or budget, not both")
        if budget is None and exit_policy is None and self.config.scheduler_budgets:
            default = getattr(self.config, "default_budget", None)
            budget = default if default is not None else self.config.scheduler_budgets[-1]
        if budget is not None:
            exit_policy = self.get_exit_policy(budget)
        self._check_exit_policy(exit_policy)
        if isinstance(inputs, str):
            inputs = [inputs]
        inputs = texts_as_list(inputs)  # a NumPy array / datasets Column / pandas Series of texts: a list
        if "text_pair" in tokenizer_kwargs:
            tokenizer_kwargs["text_pair"] = texts_as_list(tokenizer_kwargs["text_pair"], "text_pair")
        n_texts = None
        if isinstance(inputs, (list, tuple)) and inputs and any(isinstance(t, (str, list, tuple)) for t in inputs):
            check_text_list(inputs, tokenizer_kwargs.get("text_pair"))
            if tokenizer is None:
                raise ValueError("early_exit_predict got texts: pass tokenizer= (or give tokenizer output)")
            trained_on = pairing_mismatch(self.config, tokenizer_kwargs.get("text_pair") is not None)
            if trained_on == "pairs":  # the pipeline's refusal, for the same inputs
                raise ValueError("this model was trained on sentence pairs: pass the second segments as "
                                 "text_pair=[...] (one per text)")
            if trained_on:
                raise ValueError("this model was trained on single texts, not sentence pairs: drop text_pair=")
            check_tokenizer_kwargs(tokenizer, tokenizer_kwargs, "early_exit_predict")
            tokenizer_kwargs.setdefault("truncation", True)
            if tokenizer_kwargs["truncation"] and "max_length" not in tokenizer_kwargs:
                tokenizer_kwargs["max_length"] = max_input_tokens(self.config, tokenizer)  # as the pipeline
            n_texts, inputs = len(inputs), tokenizer(list(inputs), **tokenizer_kwargs)
        elif tokenizer_kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(tokenizer_kwargs)} (tokenizer kwargs need texts)")
        rows = rows_from_encodings(inputs)
        if n_texts is not None:
            check_rows_per_text(n_texts, rows, tokenizer_kwargs)
        logits, exit_index = depth_wave_forward(
            self, rows, exit_policy, micro_batch_size=batch_size, chunk_size=chunk_size, cuda_graphs=cuda_graphs
        )
        layers, costs = self._exit_tables(exit_index.device)
        return EENetSequenceClassifierOutput(
            logits=logits, exit_index=exit_index, exit_layer=layers[exit_index], exit_cost=costs[exit_index]
        )

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        exit_policy=None,
        budget=None,
        return_dict=None,
        output_attentions=None,
        output_hidden_states=None,
        cuda_graphs=False,
        **kwargs,
    ):
        if output_attentions or output_hidden_states:
            raise NotImplementedError(
                "output_attentions / output_hidden_states are not supported by the EENet models: in the early-exit "
                "forward rows leave the batch at their exit, so per-layer tensors do not cover every row. Use "
                "model.backbone(...) (the stock BertModel/RobertaModel) for hidden states or attentions."
            )
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}.forward() got unexpected keyword arguments {sorted(kwargs)}; it takes "
                "input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, labels, exit_policy, budget, "
                "return_dict, cuda_graphs"
            )
        if exit_policy is not None and budget is not None:
            raise ValueError("give either exit_policy or budget, not both")
        if budget is not None:
            exit_policy = self.get_exit_policy(budget)
        self._check_exit_policy(exit_policy)
        check_bool(cuda_graphs, "cuda_graphs")
        logits, exit_index, exit_logits = self.exit_forward(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, exit_policy, cuda_graphs
        )
        loss = None
        if labels is not None:
            loss = self.multi_exit_loss(exit_logits, labels) if exit_logits is not None else self.single_exit_loss(logits, labels)
        layers, costs = self._exit_tables(exit_index.device)
        out = EENetSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            exit_logits=exit_logits,
            exit_index=exit_index,
            exit_layer=layers[exit_index],
            exit_cost=costs[exit_index],
        )
        if return_dict is False or (return_dict is None and getattr(self.config, "return_dict", True) is False):
            return out.to_tuple()  # (config.return_dict=False: a tuple, as the stock classifier returns)
        return out

    def _exit_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``config.exit_layers`` and ``config.exit_costs`` as tensors on ``device`` (the forward indexes them by each
        row's exit), kept between calls while the config's values stay the same."""
        cfg = self.config
        key = (tuple(cfg.exit_layers), tuple(cfg.exit_costs), device, torch.get_default_dtype())
        cached = self.__dict__.get("_eenet_exit_tables")
        if cached is None or cached[0] != key:
            with torch.inference_mode(False):  # plain tensors, usable by a later forward outside inference mode
                cached = (key, torch.tensor(key[0], device=device), torch.tensor(key[1], device=device))
            self.__dict__["_eenet_exit_tables"] = cached
        return cached[1], cached[2]

    forward.__doc__ = """
        Args:
            input_ids (`torch.LongTensor` of shape `[B, S]`), attention_mask (`[B, S]`), token_type_ids (`[B, S]`),
            position_ids (`[B, S]`), inputs_embeds (`[B, S, h]`): as in the stock model.
            labels (`torch.LongTensor` of shape `[B]`, or `[B]` floats for regression, `[B, C]` for multi-label).
            exit_policy (`ExitPolicy`, *optional*): early-exit forward driven by this policy (rows leave the batch
                at their exit). Without it (and without `budget`) every exit is computed for every row.
            budget (`float`, *optional*): fraction of the full cost in (0, 1]; uses the fitted scheduler bank
                (see `get_exit_policy`).
            cuda_graphs (`bool`, *optional*): experimental, CUDA only; with a policy/budget and a single text, each
                layer replays a CUDA graph instead of launching its kernels from Python (`hf_eenet/engine.py`).
        Returns: [`EENetSequenceClassifierOutput`].
    """


class EENetBertForSequenceClassification(EENetModelMixin, BertPreTrainedModel):
    """BERT with an exit head after each layer of ``config.exit_layers``.

    Early exits are :class:`EENetExitHead` (own pooler + classifier); the last exit reuses the pretrained pooler
    and ``classifier`` exactly like ``BertForSequenceClassification`` (a fine-tuned BERT classifier checkpoint
    loads into it unchanged).
    """

    config_class = EENetBertConfig
    config: EENetBertConfig
    _LAST_EXIT_MODULES = ("classifier", "bert.pooler")  # what the last exit reads besides the encoder
    _no_split_modules = ["BertEmbeddings", "BertLayer"]

    def __init__(self, config: EENetBertConfig):
        config = EENetBertConfig.from_stock(config)  # a stock config of a plain checkpoint: converted (else TypeError)
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        self.exit_heads = nn.ModuleList([EENetExitHead(config) for _ in config.exit_layers[:-1]])
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._build_scheduler_bank()
        self.post_init()

    @property
    def backbone(self):
        return self.bert

    def exit_head(self, k: int, pooled: torch.Tensor) -> torch.Tensor:
        if k < len(self.exit_heads):
            return self.exit_heads[k](pooled)
        return self.classifier(self.dropout(self.bert.pooler(pooled.unsqueeze(1))))  # BertPooler reads token 0


class EENetRobertaForSequenceClassification(EENetModelMixin, RobertaPreTrainedModel):
    """RoBERTa with an exit head after each layer of ``config.exit_layers``.

    Every exit mirrors ``RobertaClassificationHead`` on the ``<s>`` token (or the token mean, ``exit_pooling``); the last one *is* the stock
    ``classifier`` (a fine-tuned RoBERTa classifier checkpoint loads into it unchanged).
    """

    config_class = EENetRobertaConfig
    config: EENetRobertaConfig
    _LAST_EXIT_MODULES = ("classifier",)  # what the last exit reads besides the encoder
    _no_split_modules = ["RobertaEmbeddings", "RobertaLayer"]

    def __init__(self, config: EENetRobertaConfig):
        config = EENetRobertaConfig.from_stock(config)  # a stock config of a plain checkpoint: converted (else TypeError)
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.exit_heads = nn.ModuleList([EENetExitHead(config, roberta_style=True) for _ in config.exit_layers[:-1]])
        self.classifier = RobertaClassificationHead(config)
        self._build_scheduler_bank()
        self.post_init()

    @property
    def backbone(self):
        return self.roberta

    def exit_head(self, k: int, pooled: torch.Tensor) -> torch.Tensor:
        if k < len(self.exit_heads):
            return self.exit_heads[k](pooled)
        return self.classifier(pooled.unsqueeze(1))  # RobertaClassificationHead reads token 0


if not _INSTALLED:  # Hub remote code without hf_eenet: a pipeline built from this model object honours budget=
    from .pipeline_eenet import register_text_classification

    register_text_classification()

__all__ = [
    "EENetSequenceClassifierOutput",
    "EENetExitHead",
    "exit_head_modules",
    "EENetBertForSequenceClassification",
    "EENetRobertaForSequenceClassification",
    "exit_loss_weights",
    "pool_hidden",
]
