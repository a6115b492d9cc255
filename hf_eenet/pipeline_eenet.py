"""Budgeted text classification: ``pipeline("text-classification", model=d)(texts, budget=0.5)``.

Each result carries the stock fields plus ``exit_layer`` (1-based encoder layer the text exited at) and ``cost``
(fraction of the full model's cost). Inside a batch (``batch_size=``) every row really stops at its own exit.

With ``import hf_eenet``, the stock ``"text-classification"`` task builds this class for hf_eenet early-exit models
only (:class:`TextClassificationDispatch`); every other model gets the implementation registered before (the stock
``TextClassificationPipeline`` itself), so its outputs and errors are unchanged -- except that ``budget=`` /
``exit_policy=`` / ``chunk_size=`` / ``cuda_graphs=``, which the stock class would silently drop, are refused by name. ``save_pretrained`` / ``push_to_hub`` of an EENet model write this file next to
the model code and ``custom_pipelines = {"text-classification": ...}`` into ``config.json``: without hf_eenet,
``pipeline("text-classification", model=d, trust_remote_code=True)`` (or ``pipeline(model=d, trust_remote_code=True)``)
then loads this class from the folder and honours ``budget=``.
"""

from __future__ import annotations

import functools
import importlib
import threading

import torch
from transformers import TextClassificationPipeline
from transformers.utils.hub import TRANSFORMERS_DYNAMIC_MODULE_NAME

from .configuration_eenet import max_input_tokens, pairing_mismatch
from .engine import ROW_KEYS, default_chunk_size
from .validation import check_bool, check_int, check_text, check_tokenizer_kwargs


def _check_list_entries(inputs: list) -> None:
    """The texts of a list given to the pipeline of an early-exit model, before any is classified: ``None``, a text
    that is not a string, and an empty or blank one (``validation.check_text``) are refused naming their position in
    the list (the check of each text alone cannot). Dict entries are checked the same way, key by key."""
    for i, entry in enumerate(inputs):
        if isinstance(entry, dict):
            for key in ("text", "text_pair"):
                if entry.get(key) is not None or key == "text":
                    EENetTextClassificationPipeline._check_text(entry.get(key), f"inputs[{i}][{key!r}]")
        elif not isinstance(entry, list):  # (a list entry: the stock legacy [["text", "pair"]] form, checked later)
            EENetTextClassificationPipeline._check_text(entry, f"inputs[{i}]")


class EENetTextClassificationPipeline(TextClassificationPipeline):
    """``TextClassificationPipeline`` + per-call ``budget`` / ``exit_policy`` and the exit taken per text.

    Call kwargs:
        budget (`float`): fraction of the full cost in (0, 1]; uses the model's fitted scheduler bank (default:
            ``config.default_budget`` when the model has a bank, else the full model).
        exit_policy (`ExitPolicy`): an explicit policy instead of a budget.
        chunk_size (`int`): texts per depth-wave chunk for many texts (see ``__call__``); ``0`` = the stock per-batch
            loop. Also accepted when the pipeline is built (``pipeline(..., chunk_size=256)``); a call's value wins.
        top_k, function_to_apply, batch_size, truncation, max_length: as in the stock pipeline. Over-long texts are
            truncated to the model's maximum length by default.
    """

    def _is_early_exit_model(self) -> bool:
        return is_early_exit_model(self.model)

    # ------------------------------------------------------------------ throughput path: depth waves
    #: default texts per depth-wave chunk with ``batch_size > 1``: ``None`` = ``engine.default_chunk_size(batch_size)``
    #: (32 micro-batches, at least 1024 and at most 4096 texts); a number here fixes it for every batch size
    default_chunk_size = None
    #: default chunk for a list of texts at ``batch_size=1`` (single-row micro-batches; memory stays small)
    default_chunk_size_single = 64

    def __call__(self, inputs, *args, chunk_size=None, **kwargs):
        """As ``TextClassificationPipeline.__call__``, plus ``chunk_size`` for many texts.

        When the pipeline gets a list, a ``KeyDataset`` / dataset or a generator of texts and runs an hf_eenet model
        with ``batch_size > 1``, it classifies them with *depth waves* (``hf_eenet/engine.py``): chunks of
        ``chunk_size`` texts (default: 32 micro-batches, at least 1024 and at most 4096 texts, fewer where they would hold
        more tokens than 1024 texts of 512 tokens) are length-sorted and re-packed into full micro-batches of
        ``batch_size`` rows before every layer, so the work follows the rows that have not exited yet. Results are
        the same as text by text, in input order; a generator / dataset yields them chunk by chunk.
        A list at ``batch_size=1`` (the stock default) runs depth waves of single-row micro-batches in chunks of 64
        texts: every layer call still holds one text (no padding), while each exit's head and decision run once for
        the chunk's rows at that exit, and the chunk is tokenized in one call. A generator or dataset at
        ``batch_size=1`` streams text by text through the per-request loop (a result per text as it comes).
        ``chunk_size=0`` keeps the stock per-batch loop; ``chunk_size=N`` sets the chunk for a list, dataset or
        generator (a single text always takes the per-request loop).
        Peak memory grows with ``chunk_size`` (hidden states of the whole chunk).
        ``cuda_graphs=True`` (a call argument like ``budget``; CUDA only, opt-in) replays each layer as a CUDA graph
        for full micro-batches and for single-text requests (``hf_eenet/engine.py``).
        """
        if chunk_size is not None:
            chunk_size = _check_chunk_size(chunk_size)
        if isinstance(inputs, list) and not inputs and self._is_early_exit_model():
            # a call's budget= etc. is checked all the same (the stock __call__'s own arguments are not the tokenizer's)
            self._sanitize_parameters(**{k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")})
            return []  # (the stock __call__ reads inputs[0]: an IndexError)
        if isinstance(inputs, list) and len(inputs) > 1 and self._is_early_exit_model():
            _check_list_entries(inputs)  # name the position of a bad text (per text, the error cannot)
        local = self._wave_local()
        previous, local.chunk_size = getattr(local, "chunk_size", None), chunk_size
        try:
            return super().__call__(inputs, *args, **kwargs)
        finally:
            local.chunk_size = previous

    def _wave_local(self):
        """Per-thread call settings (one pipeline may serve several threads at once)."""
        local = self.__dict__.get("_eenet_local")
        if local is None:
            local = self.__dict__.setdefault("_eenet_local", threading.local())
        return local

    def __getstate__(self):
        """Pickle / deepcopy without the per-thread call settings (a ``threading.local`` cannot be pickled)."""
        state = self.__dict__.copy()
        state.pop("_eenet_local", None)
        return state

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        chunk_size = getattr(self._wave_local(), "chunk_size", None)  # the call's, else the pipeline's
        if chunk_size is None:
            chunk_size = forward_params.get("chunk_size")
        engine_default = False  # the engine's default chunk (also bounded by tokens) rather than a given size
        if chunk_size is None:
            if batch_size > 1:
                chunk_size = self.default_chunk_size
                if chunk_size is None:  # other models take the stock path: their batch_size is the stock class's
                    engine_default = self._is_early_exit_model()
                    chunk_size = default_chunk_size(check_int(batch_size, "batch_size", 1)) if engine_default else 0
            else:  # a list is answered as a whole anyway; a stream at batch 1 keeps one result per text
                chunk_size = self.default_chunk_size_single if isinstance(inputs, list) else 0
        waves = (
            chunk_size > 0
            and self._is_early_exit_model()
            and not (set(forward_params) - {"budget", "exit_policy", "cuda_graphs", "chunk_size"})  # else stock path
        )
        if not waves:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        results = self._wave_iterator(inputs, batch_size, chunk_size, preprocess_params, forward_params,
                                      postprocess_params, engine_default=engine_default)
        return _WaveResults(results, len(inputs) if hasattr(inputs, "__len__") else None)

    def _wave_iterator(self, inputs, batch_size, chunk_size, preprocess_params, forward_params, postprocess_params,
                       engine_default: bool = False):
        from .engine import iter_chunks

        model = self.model
        depth_wave_forward = _engine_of(model).depth_wave_forward
        config = model.config
        batch_size = check_int(batch_size, "batch_size", 1)
        budget, exit_policy = forward_params.get("budget"), forward_params.get("exit_policy")
        if budget is None and exit_policy is None and config.scheduler_budgets:
            budget = config.default_budget if config.default_budget is not None else config.scheduler_budgets[-1]
        if budget is not None:
            exit_policy = model.get_exit_policy(budget)
        _check_exit_policy(model, exit_policy)
        layers = torch.tensor(config.exit_layers)
        costs = torch.tensor(config.exit_costs)
        for texts in iter_chunks(inputs, chunk_size):
            rows = self._chunk_rows(texts, preprocess_params)
            with self.device_placement(), self.get_inference_context()():
                logits, exit_index = depth_wave_forward(  # the engine's default: its token bound applies too
                    model, rows, exit_policy, micro_batch_size=batch_size,
                    chunk_size=None if engine_default else chunk_size,
                    **_opt_in(cuda_graphs=forward_params.get("cuda_graphs", False)),
                )
            logits, exit_index = logits.cpu(), exit_index.cpu()
            for i in range(len(rows)):
                out = {"logits": logits[i : i + 1], "exit_layer": layers[exit_index[i : i + 1]],
                       "exit_cost": costs[exit_index[i : i + 1]]}
                yield self.postprocess(out, **postprocess_params)

    def _sanitize_parameters(self, budget=None, exit_policy=None, cuda_graphs=None, chunk_size=None,
                             function_to_apply=None, top_k="", **tokenizer_kwargs):
        if self._is_early_exit_model():  # a misspelt budgets= would reach the tokenizer and be dropped
            check_tokenizer_kwargs(self.tokenizer, tokenizer_kwargs, "the pipeline")
        preprocess, forward, postprocess = super()._sanitize_parameters(
            function_to_apply=function_to_apply, top_k=top_k, **tokenizer_kwargs
        )
        if (budget is not None or exit_policy is not None) and not self._is_early_exit_model():
            raise ValueError(f"budget/exit_policy need an hf_eenet early-exit model, got {type(self.model).__name__}")
        if budget is not None and exit_policy is not None:
            raise ValueError("give either budget or exit_policy, not both")
        # a call's budget / exit_policy replaces whichever of the two the pipeline was built with (the stock
        # pipeline merges construction and call settings key by key, so the other key is reset explicitly)
        if budget is not None:
            # validates now: type, NaN, (0, 1], fitted range, a bank exists; the entry itself is checked by the
            # forward that serves it (model code saved before _bank_index existed: the whole get_exit_policy)
            getattr(self.model, "_bank_index", self.model.get_exit_policy)(budget)
            forward["budget"], forward["exit_policy"] = float(budget), None
        if exit_policy is not None:
            _check_exit_policy(self.model, exit_policy)
            forward["exit_policy"], forward["budget"] = exit_policy, None
        if chunk_size is not None:  # given when the pipeline is built (a call's own goes through __call__)
            forward["chunk_size"] = _check_chunk_size(chunk_size)
        if cuda_graphs is not None:
            if not self._is_early_exit_model():
                raise ValueError(f"cuda_graphs needs an hf_eenet early-exit model, got {type(self.model).__name__}")
            forward["cuda_graphs"] = check_bool(cuda_graphs, "cuda_graphs")
        return preprocess, forward, postprocess

    def preprocess(self, inputs, **tokenizer_kwargs):
        if not self._is_early_exit_model():  # exactly the stock behaviour
            return super().preprocess(inputs, **tokenizer_kwargs)
        if inputs is None:
            raise ValueError("the pipeline got None instead of a text")
        if isinstance(inputs, dict):
            texts = [inputs.get("text"), inputs.get("text_pair")]
        elif isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], list) and len(inputs[0]) == 2:
            texts = list(inputs[0])  # the stock pipeline's legacy [["text", "pair"]] form
        else:
            texts = [inputs]
        for t in texts:
            if t is None and isinstance(inputs, dict):
                continue
            self._check_text(t)
        self._check_pairing((len(texts) == 2 and texts[1] is not None) or "text_pair" in tokenizer_kwargs)
        return super().preprocess(inputs, **self._tokenizer_kwargs(tokenizer_kwargs))

    def _check_pairing(self, is_pair: bool) -> None:
        """ValueError when a model trained on sentence pairs gets one text, or the other way round
        (``config.sentence_pairs``, recorded by the recipe; unknown for older models: no check)."""
        trained_on = pairing_mismatch(self.model.config, is_pair)
        if trained_on is None:
            return
        if trained_on == "pairs":
            raise ValueError("this model was trained on sentence pairs: pass {'text': ..., 'text_pair': ...}")
        raise ValueError("this model was trained on single texts, not sentence pairs: pass one string per input")

    @staticmethod
    def _check_text(t, name: str = "the pipeline's text") -> None:
        if t is None:
            raise ValueError(f"{name} is None instead of a text")
        if not isinstance(t, str):
            raise TypeError(f"texts must be str (or a {{'text', 'text_pair'}} dict), got {type(t).__name__} for "
                            f"{name}: {t!r:.60}")
        check_text(t, name)  # the rule of every entry point (validation.check_text)

    def _tokenizer_kwargs(self, tokenizer_kwargs: dict) -> dict:
        """Truncation on by default, to what the model takes (``_max_tokens``)."""
        tokenizer_kwargs = dict(tokenizer_kwargs)
        tokenizer_kwargs.setdefault("truncation", True)
        if tokenizer_kwargs["truncation"] and "max_length" not in tokenizer_kwargs:
            tokenizer_kwargs["max_length"] = self._max_tokens()
        return tokenizer_kwargs

    def _chunk_rows(self, texts: list, preprocess_params: dict):
        """Token rows of a depth-wave chunk: one tokenizer call for a chunk of plain texts (the ids each text gets
        alone, without the per-text call's overhead), text by text for pairs / dict inputs."""
        from .engine import check_rows_per_text, rows_from_encodings

        if all(isinstance(t, str) for t in texts) and set(preprocess_params) <= self._ONE_CALL_KWARGS:
            for t in texts:
                self._check_text(t)
            self._check_pairing(False)
            rows = rows_from_encodings(self.tokenizer(list(texts), **self._tokenizer_kwargs(preprocess_params)))
        else:  # pairs, dicts, or tokenizer options whose batched output may differ from each text's (text_pair=,
            # padding=, overflowing tokens, ...): text by text, exactly as the per-text path tokenizes
            rows = rows_from_encodings([self.preprocess(t, **preprocess_params) for t in texts])
        check_rows_per_text(len(texts), rows, preprocess_params)
        return rows

    #: tokenizer options for which one call over a chunk gives each text the ids it gets alone
    _ONE_CALL_KWARGS = frozenset({"truncation", "max_length", "add_special_tokens"})

    def _max_tokens(self) -> int:
        """Longest input the model takes (``configuration_eenet.max_input_tokens``: position table, tokenizer cap)."""
        return max_input_tokens(self.model.config, self.tokenizer)

    def _forward(self, model_inputs, budget=None, exit_policy=None, cuda_graphs=False, chunk_size=None):
        if not self._is_early_exit_model():
            return super()._forward(model_inputs)
        config = self.model.config
        if budget is None and exit_policy is None and config.scheduler_budgets:
            budget = config.default_budget if config.default_budget is not None else config.scheduler_budgets[-1]
        # the token rows only: extra tokenizer outputs (special_tokens_mask, length, ...) are not model inputs, as
        # on the depth-wave path (engine.ROW_KEYS)
        model_inputs = {k: v for k, v in model_inputs.items() if k in ROW_KEYS}
        out = self.model(**model_inputs, budget=budget, exit_policy=exit_policy, return_dict=True,
                         **_opt_in(cuda_graphs=cuda_graphs))
        # batch-first tensors only: the pipeline unbatches every field along dim 0
        return {"logits": out.logits, "exit_layer": out.exit_layer, "exit_cost": out.exit_cost}

    def postprocess(self, model_outputs, function_to_apply=None, top_k=1, _legacy=True):
        result = super().postprocess(model_outputs, function_to_apply=function_to_apply, top_k=top_k, _legacy=_legacy)
        if "exit_layer" not in model_outputs:
            return result
        layer = int(model_outputs["exit_layer"].reshape(-1)[0])
        config = self.model.config  # the cost as the config holds it (a float32 tensor would round it, the CLI not)
        extra = {"exit_layer": layer, "cost": float(config.exit_costs[list(config.exit_layers).index(layer)])}
        if isinstance(result, dict):
            return {**result, **extra}
        return [{**r, **extra} for r in result]


class _WaveResults:
    """The results of depth waves over a dataset or generator, one per input, with ``len()`` where the input has one
    (as the stock pipeline's ``PipelineIterator`` over a sized dataset; a generator has none there either)."""

    def __init__(self, results, length):
        self._results, self._length = results, length

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._results)

    def __len__(self):
        if self._length is None:
            raise TypeError("these results come from a generator of texts, which has no len()")
        return self._length


def _opt_in(**flags) -> dict:
    """Only the opt-in flags that are on: a model whose code predates a flag (Hub remote code saved by an earlier
    hf_eenet) is called exactly as before when the flag is off."""
    return {name: True for name, on in flags.items() if on}


def _shipped(model, module: str, check):
    """The module ``module`` shipped with the model's own code: for a model whose class comes from Hub remote code
    (saved by another hf_eenet version; a user subclass of it too) that code's copy, for one of ours ``None``. The
    model code is found along the class's MRO (the class defined in a ``modeling_eenet`` module); ``check`` says
    whether a found module is the one wanted (a package saved before it existed is passed over)."""
    for cls in type(model).__mro__:
        package, _, name = cls.__module__.rpartition(".")
        if name != "modeling_eenet" or not package:  # a user's top-level modeling_eenet.py: look further up
            continue
        if package == __name__.rpartition(".")[0]:
            return None
        try:
            shipped = importlib.import_module(f"{package}.{module}")
        except ImportError:  # not a model-code package (or saved before that module existed): look further up
            continue
        if check(shipped):
            return shipped
    return None


def _engine_of(model):
    """The depth-wave engine shipped with the model's own code: a model from Hub remote code runs the engine written
    for its internals, one of ours runs ours (:func:`_shipped`)."""
    from . import engine

    shipped = _shipped(model, "engine", lambda m: callable(getattr(m, "depth_wave_forward", None)))
    return shipped or engine


def _pipeline_class_of(model):
    """The budgeted pipeline class that serves ``model``. The installed hf_eenet's serves every hf_eenet model (it
    passes older model code only the arguments it takes). A Hub remote-code copy (hf_eenet not installed) serves a
    model of its own code, and hands a model of another copy -- another folder, saved by another hf_eenet version --
    to the pipeline shipped with that model's code: a copy cannot know the other's keywords and checks."""
    if not __name__.startswith(TRANSFORMERS_DYNAMIC_MODULE_NAME + "."):  # the installed package (or a vendored copy)
        return EENetTextClassificationPipeline
    shipped = _shipped(model, "pipeline_eenet", lambda m: isinstance(
        getattr(m, "EENetTextClassificationPipeline", None), type)
        and issubclass(m.EENetTextClassificationPipeline, TextClassificationPipeline))
    return shipped.EENetTextClassificationPipeline if shipped is not None else EENetTextClassificationPipeline


def _check_chunk_size(chunk_size) -> int:
    return check_int(chunk_size, "chunk_size", 0, "(0 = no depth waves)")


def _check_exit_policy(model, exit_policy) -> None:
    """The model's own ``exit_policy`` check (a model saved by an older hf_eenet may not have one)."""
    check = getattr(model, "_check_exit_policy", None)
    if check is not None:
        check(exit_policy)


def is_early_exit_model(model) -> bool:
    """An hf_eenet early-exit classifier (installed package or its Hub remote-code copy)."""
    return hasattr(model, "exit_forward") and hasattr(model, "get_exit_policy")


class TextClassificationDispatch(TextClassificationPipeline):
    """What ``import hf_eenet`` registers as the ``"text-classification"`` implementation: constructing it returns an
    :class:`EENetTextClassificationPipeline` for early-exit models and, for every other model, the implementation
    registered before (the stock ``TextClassificationPipeline``, or one a user registered), so ``import hf_eenet``
    changes nothing for them."""

    #: the implementation registered for ``"text-classification"`` before this dispatcher
    fallback = TextClassificationPipeline
    #: version of the patches (:data:`_PATCH_VERSION`): an older copy's dispatcher is replaced, not kept
    _eenet_version = None  # set below

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        impl = _pipeline_class_of(model) if is_early_exit_model(model) else _resolve(cls.fallback)
        return impl(*args, **kwargs)


#: version of what this module patches into transformers (the dispatcher, the stock class's construction and
#: keyword refusal). Several copies of the code may run in one process (Hub remote code of models saved by different
#: hf_eenet versions, with or without the installed package): a copy keeps what another copy of the same or a newer
#: version registered, and replaces an older one's (which may lack a check this copy's pipelines rely on, e.g. the
#: per-model pipeline class of review 80, so a current model's misspelt ``budgets=`` was dropped). 1: before versions.
_PATCH_VERSION = 2
TextClassificationDispatch._eenet_version = _PATCH_VERSION


def _older(patched) -> bool:
    """Whether a patch another copy installed is of an older version than this copy's."""
    return (getattr(patched, "_eenet_version", None) or 1) < _PATCH_VERSION


def _resolve(impl):
    """A registry ``impl``: a class, or its dotted path (transformers 5 registers the stock ones as strings)."""
    if isinstance(impl, str):
        module, _, name = impl.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return impl


#: keywords only the budgeted pipeline serves; the stock class would hand them to the tokenizer, which drops them
_EARLY_EXIT_KEYWORDS = ("budget", "exit_policy", "chunk_size", "cuda_graphs")


def _refuse_early_exit_keywords(force: bool = False) -> None:
    """``budget=`` (and ``exit_policy`` / ``chunk_size`` / ``cuda_graphs``) given to a stock
    ``TextClassificationPipeline`` -- a model that is not an early-exit model, or an early-exit model in a user's own
    subclass of the stock class -- would reach the tokenizer as unknown keywords and be dropped: the full model would
    answer as if the budget had been served. The stock ``_sanitize_parameters`` refuses them by name instead; calls
    without them run exactly as before. :class:`EENetTextClassificationPipeline` has its own."""
    current = TextClassificationPipeline._sanitize_parameters
    if getattr(current, "_eenet_refuse", False):
        if not force and not _older(current):
            return
        current = current.__wrapped__
    stock_sanitize = current

    @functools.wraps(stock_sanitize)
    def _sanitize_parameters(self, *args, **kwargs):
        given = [k for k in _EARLY_EXIT_KEYWORDS if kwargs.get(k) is not None]
        if given:
            what = "=, ".join(given) + "="
            if is_early_exit_model(getattr(self, "model", None)):
                raise ValueError(
                    f"{what} would be ignored by {type(self).__name__}, a TextClassificationPipeline subclass that is "
                    "not hf_eenet's budgeted pipeline: build it with pipeline('text-classification', model=...) or "
                    "subclass hf_eenet.EENetTextClassificationPipeline")
            raise ValueError(f"{what} needs an hf_eenet early-exit model, got {type(self.model).__name__} (the "
                             "stock pipeline would ignore it and run the full model)")
        return stock_sanitize(self, *args, **kwargs)

    _sanitize_parameters._eenet_refuse = True
    _sanitize_parameters._eenet_version = _PATCH_VERSION
    TextClassificationPipeline._sanitize_parameters = _sanitize_parameters


def _route_stock_construction(force: bool = False) -> None:
    """``TextClassificationPipeline(model=<hf_eenet model>, ...)`` built directly, not through ``pipeline()``, would
    hand ``budget=`` to the tokenizer as an unknown keyword and serve the full model: construction of the stock class
    itself with an early-exit model returns the budgeted pipeline (a subclass, so ``isinstance`` checks still hold).
    Every other model, and every subclass of the stock class, is constructed as before (the next ``__new__`` in the
    MRO).
    """
    current = TextClassificationPipeline.__new__
    if not force and getattr(current, "_eenet_route", False) and not _older(current):
        return

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if cls is TextClassificationPipeline and is_early_exit_model(model):
            cls = _pipeline_class_of(model)
        # whatever comes next in the MRO (a user subclass's mixin may define its own __new__), as without the patch
        after = super(TextClassificationPipeline, cls).__new__
        return after(cls) if after is object.__new__ else after(cls, *args, **kwargs)

    __new__._eenet_route = True
    __new__._eenet_version = _PATCH_VERSION
    TextClassificationPipeline.__new__ = staticmethod(__new__)


def register_text_classification(force: bool = False) -> None:
    """Make ``pipeline("text-classification", ...)`` build :class:`TextClassificationDispatch`: the budgeted
    pipeline for hf_eenet models, the stock ``TextClassificationPipeline`` for every other model. ``import
    hf_eenet`` calls it; so does the model code when it runs as Hub remote code without hf_eenet installed (a
    pipeline built from a model *object* does not read ``custom_pipelines``). It also routes a directly constructed
    ``TextClassificationPipeline(model=<hf_eenet model>)`` to the budgeted pipeline (:func:`_route_stock_construction`).
    Remote code keeps a dispatcher that is already registered (the installed package's, or another folder's) unless
    it is of an older version (:data:`_PATCH_VERSION`); the installed package (``force``) replaces it."""
    from transformers.pipelines import PIPELINE_REGISTRY

    _route_stock_construction(force)
    _refuse_early_exit_keywords(force)
    stock = PIPELINE_REGISTRY.supported_tasks["text-classification"]
    registered = stock.get("impl")
    if getattr(registered, "__name__", "") == TextClassificationDispatch.__name__:
        if not force and not _older(registered):
            return
        registered = getattr(registered, "fallback", TextClassificationPipeline)  # another copy's: what it wraps
    if registered is not None:
        TextClassificationDispatch.fallback = registered
    PIPELINE_REGISTRY.supported_tasks["text-classification"] = {**stock, "impl": TextClassificationDispatch}


__all__ = ["EENetTextClassificationPipeline", "TextClassificationDispatch", "is_early_exit_model",
           "register_text_classification"]
