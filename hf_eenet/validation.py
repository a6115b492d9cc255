"""The one place for the input rules shared by policies, the EENet scheduler, evaluation, the models, the bank and
the trainer: exit probabilities, labels, cumulative exit costs, budgets and exit indices.

Numbers: a *number* is a Python ``int``/``float``, a NumPy integer/floating scalar (``np.float32``, ``np.int64``),
or a 0-d NumPy array / torch tensor of an integer or floating dtype. Booleans (``True``, ``np.bool_``, bool tensors),
strings, ``None``, complex values and anything with more than one element are not numbers. Every entry point that
takes a budget (model ``budget=``, ``get_exit_policy``, the pipeline, ``fit``/``calibrate``, ``fit_scheduler``) goes
through :func:`as_number`, so they accept and reject the same values.

Errors: a value of the wrong *type* raises :class:`ValidationTypeError`, which is both a ``TypeError`` and a
``ValueError`` (callers that catch either keep working); a value of the right type but out of range raises
``ValueError``. Every message names the argument and the offending value.

This module is copied next to the model code by ``save_pretrained`` (Hub remote code), so it only imports
numpy/torch and nothing else from hf_eenet.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch


class ValidationTypeError(TypeError, ValueError):
    """A value of the wrong type (also a ``ValueError``, so older ``except ValueError`` callers keep working)."""


def check_bool(value, name: str) -> bool:
    """A flag must be a Python bool (``1``, ``"yes"`` or a tensor are refused, not read as truthy)."""
    if not isinstance(value, bool):
        raise ValidationTypeError(f"{name} must be a bool, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------- numbers
def check_int(value, name: str, minimum: int = 0, what: str = "") -> int:
    """An integer setting (Python or NumPy int, not a bool) ``>= minimum``; returns it as an int. ``what`` is added to
    the message (e.g. ``"(0 = no depth waves)"``)."""
    tail = f" {what}" if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationTypeError(f"{name} must be an int >= {minimum}{tail}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{tail}, got {int(value)}")
    return int(value)


def is_number(x) -> bool:
    """True for real int/float scalars: Python, NumPy scalars, 0-d arrays/tensors; False for bools and the rest."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and x.dtype != torch.bool and not x.is_complex()
    if isinstance(x, np.ndarray):
        return x.ndim == 0 and (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating))
    return isinstance(x, (int, float, np.integer, np.floating))


def as_number(x, name: str = "value", what: str = "a number") -> float:
    """``x`` as a Python float if :func:`is_number`, else :class:`ValidationTypeError` naming ``name``."""
    if not is_number(x):
        raise ValidationTypeError(f"{name} must be {what}, got {type(x).__name__}: {x!r}")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float().numpy()[()] if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.item()
    elif isinstance(x, np.ndarray):
        x = x[()]
    if isinstance(x, (np.float16, np.float32)):
        # shortest decimal that round-trips in the input's precision: np.float32(0.8) -> 0.8, not 0.800000011920929
        return float(np.format_float_positional(x, unique=True, trim="0"))
    return float(x)


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``), as a float."""
    bound = ">= 0" if allow_zero else "> 0"
    x = as_number(value, name, f"a finite number {bound}")
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {bound}, got {x!r}")
    return x


def check_fraction(value, name: str) -> float:
    """A number in ``[0, 1]``, as a float."""
    x = as_number(value, name, "a number in [0, 1]")
    if not 0.0 <= x <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    return x


def check_budget_fraction(budget, name: str = "budget") -> float:
    """A budget as a fraction of the full model's cost: a finite number in (0, 1]. Returns it as a float."""
    b = as_number(budget, name, "a number (fraction of the full model's cost)")
    if math.isnan(b) or not (0 < b <= 1):
        raise ValueError(f"{name} must be a fraction of the full model's cost in (0, 1], got {b}")
    return b


def budget_reachable(budget: float, costs) -> bool:
    """``budget`` lies in ``[c_1, c_K]`` of cumulative ``costs`` up to a slack of about two float32 steps of the bound
    itself (absolute ``5e-10 * c_K`` where c_1 is tiny). The slack is below the bank's budget match (relative 1e-6,
    absolute 1e-9 of the full cost), so a budget accepted here and clipped to a bound is still the bank key it was
    asked for. The one test of reachability: :func:`check_budget` and the recipe's early refusal both use it."""
    lo, hi = float(costs[0]), float(costs[-1])
    return lo - max(2.4e-7 * lo, 5e-10 * hi) <= budget <= hi * (1 + 2.4e-7)


def check_budget(budget, costs) -> float:
    """Validate a target *average* cost ``budget`` against cumulative ``costs`` and return it as a float.

    Raises ``ValueError`` if the budget is not a number, NaN/inf, ``<= 0``, or outside ``[c_1, c_K]`` (a slack of
    two float32 steps of the bound is tolerated and clipped, so ``1.0 * c_K`` computed in floating point, or a float32
    budget read off float32 costs -- which :func:`as_number` turns into its shortest decimal -- is accepted).
    """
    costs = [float(c) for c in costs]
    b = as_number(budget, "budget", "a number (target average cost, same unit as costs)")
    if not math.isfinite(b):
        raise ValueError(f"budget must be finite, got {b}")
    if b <= 0:
        raise ValueError(f"budget must be > 0, got {b}")
    lo, hi = costs[0], costs[-1]
    if not budget_reachable(b, costs):
        raise ValueError(
            f"budget {b:.10g} is outside the reachable range [c_1, c_K] = [{lo:.10g}, {hi:.10g}] "
            f"(as a fraction of c_K: [{lo / hi:.4g}, 1])"
        )
    return min(max(b, lo), hi)


# ------------------------------------------------------------------------------------------------------------- costs
def check_costs(costs, num_exits: int, name: str = "costs") -> list[float]:
    """Validate cumulative per-exit costs ``c_1 < ... < c_K`` (any unit) and return them as a list of floats.

    Raises ``ValueError`` unless ``costs`` is a 1-D sequence of ``num_exits`` finite, positive, strictly increasing
    numbers.
    """
    if isinstance(costs, (str, bytes)) or costs is None:
        raise ValidationTypeError(
            f"{name} must be a sequence of {num_exits} numbers (cumulative cost per exit), got {costs!r}")
    if isinstance(costs, (torch.Tensor, np.ndarray)):
        if costs.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one cumulative cost per exit), got shape {tuple(costs.shape)}")
        costs = costs.tolist()
    if not hasattr(costs, "__len__"):
        raise ValidationTypeError(f"{name} must be a sequence of {num_exits} numbers, got {type(costs).__name__}")
    if len(costs) != num_exits:
        raise ValueError(f"{name} must have one entry per exit: expected {num_exits}, got {len(costs)}")
    out = []
    for i, c in enumerate(costs):
        if not is_number(c):
            raise ValidationTypeError(f"{name}[{i}] must be a number, got {c!r}")
        c = float(c)
        if not math.isfinite(c) or c <= 0:
            raise ValueError(f"{name}[{i}] must be finite and > 0, got {c}")
        out.append(c)
    for i in range(1, len(out)):
        if not out[i] > out[i - 1]:
            raise ValueError(f"{name} must be cumulative and strictly increasing (c_1 < c_2 < ... < c_K), got {out}")
    return out


def costs_match(a, b, rel_tol: float = 1e-6) -> bool:
    """Two cost lists describe the same exits (same length, equal up to ``rel_tol`` after normalising by c_K)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) != len(b) or not a:
        return False
    return all(math.isclose(x / a[-1], y / b[-1], rel_tol=rel_tol, abs_tol=1e-12) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------------ probabilities
def as_probs_tensor(exit_probs, name: str = "exit_probs") -> torch.Tensor:
    """Validate ``exit_probs`` of shape [N, K, C] (softmax outputs) and return a float tensor.

    Rounding noise is tolerated (entries down to -1e-6, rows summing to 1 within 1e-3, or 2 rounding steps of a
    lower-precision dtype: 0.016 for bfloat16; rows off by more than 1e-3 are then renormalised, each by its own
    sum); the tolerated negative
    entries are returned as 0, as a softmax gives them (features such as the entropy -sum p log p are undefined below
    0)."""
    if not isinstance(exit_probs, torch.Tensor):
        try:
            exit_probs = torch.as_tensor(exit_probs)
        except Exception as err:  # noqa: BLE001 - re-raised with a clear message
            raise ValidationTypeError(
                f"{name} must be a tensor or array of shape [N, K, C], got {type(exit_probs).__name__}") from err
    if exit_probs.dim() != 3:
        raise ValueError(f"{name} must have shape [N, K, C], got shape {tuple(exit_probs.shape)}")
    if exit_probs.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.is_floating_point(exit_probs):
        raise ValidationTypeError(f"{name} must be floating point probabilities, got dtype {exit_probs.dtype}")
    p = exit_probs.detach().double()
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (p < -1e-6).any():
        raise ValueError(f"{name} contains negative probabilities (min {p.min().item():.3g})")
    sums = p.sum(-1)
    dev = (sums - 1).abs()
    # softmax outputs stored in a low precision drift by their rounding: bfloat16 (8-bit mantissa) up to ~3e-3
    tol = max(1e-3, 2 * torch.finfo(exit_probs.dtype).eps)
    if dev.max().item() > tol:
        worst = sums.flatten()[dev.flatten().argmax()].item()
        raise ValueError(
            f"{name} rows must sum to 1 over the class dimension (softmax outputs); a row sums to {worst:.4g}. "
            "Pass probabilities, not logits."
        )
    off = dev > 1e-3  # low-precision rounding beyond float32's tolerance: those rows (each by its own sum, so a
    if off.any():     # row's values never depend on the rows passed with it) are renormalised
        p = torch.where(off.unsqueeze(-1), p.clamp_min(0.0) / sums.unsqueeze(-1), p)
        return p.float().clamp_min(0.0)
    return exit_probs.detach().float().clamp_min(0.0)


# ------------------------------------------------------------------------------------------------ labels and indices
def _as_int_vector(values, n: int, name: str, what: str) -> torch.Tensor:
    if values is None:
        raise ValueError(f"{name} are required: {what}, shape [{n}]")
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(np.asarray(values))
        except Exception as err:  # noqa: BLE001
            raise ValidationTypeError(f"{name} must be an integer array of shape [{n}], got {type(values).__name__}") from err
    values = values.detach().cpu()
    if values.dim() != 1 or values.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one per sample), got shape {tuple(values.shape)}")
    if values.dtype == torch.bool or values.is_complex():
        raise ValidationTypeError(f"{name} must hold integer {what}, got dtype {values.dtype}")
    if torch.is_floating_point(values):
        if not torch.isfinite(values).all() or (values != values.round()).any():
            raise ValueError(f"{name} must hold integer {what} (got non-integral values)")
    return values.long()


def check_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    """Validate class labels: shape ``[n]``, integer values in ``[0, num_classes)``. Returns a long tensor."""
    labels = _as_int_vector(labels, n, "labels", "class ids")
    if n > 0 and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (num_classes = {num_classes}); "
            f"got min {labels.min().item()}, max {labels.max().item()}"
        )
    return labels


def check_exit_index(exit_index, n: int, num_exits: int) -> torch.Tensor:
    """Validate the 0-based exit each row took: shape ``[n]``, integers in ``[0, num_exits)``. Returns a long tensor."""
    idx = _as_int_vector(exit_index, n, "exit_index", "exit ids (0-based)")
    if idx.min().item() < 0 or idx.max().item() >= num_exits:
        raise ValueError(
            f"exit_index values must lie in [0, {num_exits}) (0-based exits); "
            f"got min {idx.min().item()}, max {idx.max().item()}"
        )
    return idx


def check_thresholds(thresholds, name: str = "thresholds") -> list[float]:
    """One number per exit (``±inf`` allowed: never / always exit); NaN rejected. Returns floats."""
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__"):
        raise ValidationTypeError(
            f"{name} must be a sequence of numbers, one per exit, got {type(thresholds).__name__}")
    out = []
    for i, t in enumerate(thresholds):
        if not is_number(t):
            raise ValidationTypeError(f"{name}[{i}] must be a number, got {t!r}")
        t = float(t)
        if math.isnan(t):
            raise ValueError(f"{name}[{i}] is NaN")
        out.append(t)
    if not out:
        raise ValueError(f"{name} is empty: give one threshold per exit")
    return out


def check_text(text, name: str = "text") -> str:
    """One text to classify: a ``str`` with something besides whitespace (an empty text has no tokens to read but
    [CLS]/[SEP], so its exits and label say nothing about any input). The one rule of the pipeline,
    ``early_exit_predict``, ``exit_probabilities`` and the data loaders."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__} {text!r:.60}")
    if not text.strip():
        raise ValueError(f"{name} is an empty string; give non-empty text")
    return text


def check_texts(texts, name: str = "texts", pairs=None, pairs_name: str = "text_pair") -> None:
    """Every text of ``texts`` (and of ``pairs``, the second segments of sentence pairs: one per text) passes
    :func:`check_text`; errors name the first bad index."""
    for i, t in enumerate(texts):
        check_text(t, f"{name}[{i}]")
    if pairs is None:
        return
    if isinstance(pairs, str) or not hasattr(pairs, "__len__"):
        raise TypeError(f"{pairs_name} must be a list of strings, one per text, got {type(pairs).__name__}")
    if len(pairs) != len(texts):
        raise ValueError(f"{pairs_name} has {len(pairs)} entries for {len(texts)} texts (one per text)")
    for i, t in enumerate(pairs):
        check_text(t, f"{pairs_name}[{i}]")


#: keyword arguments users pass for another option: what to pass instead
_KWARG_HINTS = {"budgets": "budget=", "policy": "exit_policy=", "exit_policies": "exit_policy=",
                "return_all_scores": "top_k=None (return_all_scores was removed in transformers 5)",
                "chunksize": "chunk_size=", "batchsize": "batch_size="}


@functools.lru_cache(maxsize=64)
def _tokenizer_keywords(cls) -> frozenset | None:
    """The keyword arguments a tokenizer class's ``__call__`` (and ``_encode_plus``) name, read once per class (a
    signature costs ~0.1 ms, per request otherwise); ``None`` where that is not transformers' signature."""
    names = set()
    for fn in (getattr(cls, "__call__", None), getattr(cls, "_encode_plus", None)):
        if fn is None:
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return None
        names |= {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(names - {"self", "text"}) if "truncation" in names else None


def check_tokenizer_kwargs(tokenizer, kwargs: dict, where: str) -> None:
    """``TypeError`` naming every key of ``kwargs`` (what a call passes on to ``tokenizer``) that the tokenizer does
    not take: transformers' tokenizers drop unknown keywords without a word, so a misspelt ``budgets=0.4`` would
    serve the default budget. Tokenizers whose signature is not the standard one are not checked."""
    if not kwargs or tokenizer is None:
        return
    if kwargs.get("return_overflowing_tokens"):  # (the stock pipeline serves the first window, or mixes texts up)
        raise ValueError(f"{where} got return_overflowing_tokens=True: it splits a long text into several rows, and a "
                         "text is served as one row (its result is the text's): leave it out to truncate, or split "
                         "long texts yourself and combine their results")
    names = _tokenizer_keywords(type(tokenizer))
    if names is None:  # not transformers' tokenizer signature: nothing to check against
        return
    unknown = sorted(set(kwargs) - names)
    if unknown:
        hints = [f"{k}: pass {_KWARG_HINTS[k]}" for k in unknown if k in _KWARG_HINTS]
        raise TypeError(f"{where} got unexpected keyword argument(s) {unknown}: neither its own options nor the "
                        "tokenizer's (which would drop them silently)" + (f" ({'; '.join(hints)})" if hints else ""))


def check_input_length(config, width: int, tokens: int | None = None, *, embeds: bool = False,
                       own_positions: bool = False) -> None:
    """Inputs the model's position table can number, else ``ValueError`` naming the limit (the embeddings would fail
    with an ``IndexError`` on a buffer instead). Positions as the stock embeddings number them: a BERT ``0 ..
    width-1`` (``width``: tokens per row of the batch, padding included); a RoBERTa numbers each row's ids that are
    not padding after the padding index (``tokens``: the longest row's; None, unknown without a host read: not
    checked), but numbers ``inputs_embeds`` (``embeds=True``) across the whole width. ``own_positions``: the caller
    gave ``position_ids``, whose values are its own (not checked). The limit is ``max_input_tokens`` of the config,
    not the recorded ``max_seq_length`` (an explicit ``max_length=`` may go past that)."""
    from .configuration_eenet import eenet_model_type, max_input_tokens

    if own_positions or not getattr(config, "max_position_embeddings", None):
        return
    limit = max_input_tokens(config, recorded=False)
    if eenet_model_type(getattr(config, "model_type", None)) != "eenet-roberta" or embeds:
        n, what = width, f"inputs {width} tokens wide (padding included)"
    else:
        n, what = tokens, f"inputs of {tokens} tokens"
    if n is not None and n > limit:
        raise ValueError(f"{what} are longer than this model takes ({limit} tokens, max_position_embeddings="
                         f"{config.max_position_embeddings}): truncate them (truncation=True with max_length <= "
                         f"{limit}, what the pipeline and early_exit_predict do unless given max_length= or "
                         "truncation=False)")


def check_single_label(config, purpose: str = "early exit under a budget or an exit policy") -> None:
    """Every exit policy and the EENet scheduler read each exit's softmax over the classes: single-label
    classification with >= 2 classes only. A multi-label or regression model (``config.problem_type``), or one with
    one output, is refused by name, at every entry point (fitting, re-matching, adding a scheduler, serving)."""
    kind = getattr(config, "problem_type", None)
    num = getattr(config, "num_labels", None)
    if kind in ("multi_label_classification", "regression") or not isinstance(num, int) or num < 2:
        raise ValueError(f"{purpose} needs a single-label classifier (softmax over >= 2 classes); this model is "
                         f"{kind or 'a one-output model'} (num_labels={num}): its exits' outputs are not a softmax "
                         "over classes, which is what every exit decision reads")


def check_num_exits(expected: int, got: int, what: str = "policy") -> None:
    if int(expected) != int(got):
        raise ValueError(f"{what} was built for {expected} exits but the model has {got} exits (config.exit_layers)")


__all__ = [
    "check_text",
    "check_texts",
    "check_single_label",
    "ValidationTypeError",
    "check_int",
    "is_number",
    "as_number",
    "check_positive",
    "check_fraction",
    "check_budget_fraction",
    "budget_reachable",
    "check_budget",
    "check_costs",
    "costs_match",
    "as_probs_tensor",
    "check_labels",
    "check_exit_index",
    "check_thresholds",
    "check_num_exits",
]
