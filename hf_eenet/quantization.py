"""Supported reduced-precision serving: dynamic int8 quantisation of an EENet model, with its scheduler bank refitted
on the quantised model's own validation outputs.

Why a refit: quantisation shifts every exit's probabilities, so thresholds fitted on the fp32 model no longer meet
their budgets (on SST-2 the fp32 bank sends almost every row to exit 1 of the int8 model). A bank is only valid for
the outputs it was fitted on; :func:`quantize_dynamic_int8` therefore either refits it (``texts`` + ``labels`` of a
labelled validation split) or refuses (or, with ``refit=False``, drops it, so that ``budget=`` raises instead of
serving a budget the bank was not fitted for).

What is quantised: the backbone (``bert`` / ``roberta``), the exit heads and the final classifier — every
``nn.Linear`` there, with ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantised per batch).
The EENet schedulers stay as they are (float32 networks, float64 thresholds): they are tiny, and their decisions
must be exact. Quantising the whole model instead would turn the schedulers' Linear layers into packed modules and
break the budget path.

    from hf_eenet.quantization import quantize_dynamic_int8
    q = quantize_dynamic_int8(model, tokenizer=tok, texts=val_texts, labels=val_labels)   # CPU inference
    pipeline("text-classification", model=q, tokenizer=tok)(texts, budget=0.5)
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings

import numpy as np
import torch
from torch import nn

from .bank import data_fingerprint
from .validation import check_budget_fraction

QUANTIZED_PARTS = ("bert", "roberta", "exit_heads", "classifier")


@torch.inference_mode()
def exit_probabilities(model, tokenizer, texts, *, text_pairs=None, batch_size: int = 64, max_length: int | None = None,
                       autocast_dtype: torch.dtype | None = None, progress: bool = True) -> np.ndarray:
    """``[N, K, C]`` softmax outputs of every exit of ``model`` (all-exits forward) on ``texts`` (float32 numpy).

    Texts are truncated to ``max_length``, by default what the pipeline and ``early_exit_predict`` truncate to
    (``max_input_tokens``), so a bank fitted or re-matched on these outputs sees the inputs it will serve.

    Runs the model in eval mode (dropout off; its previous mode is restored), as it serves."""
    from tqdm.auto import tqdm

    if isinstance(texts, str) or not len(texts):
        raise ValueError("texts must be a non-empty list of strings")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"text_pairs has {len(text_pairs)} entries for {len(texts)} texts")
    if max_length is None:
        from .configuration_eenet import max_input_tokens

        max_length = max_input_tokens(model.config, tokenizer)
    device = next(model.parameters()).device
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    out = []
    starts = range(0, len(texts), batch_size)
    was_training = model.training
    model.eval()
    try:
        with ctx:
            for i in tqdm(starts, desc="exit probabilities", unit="batch", disable=not progress):
                pair = None if text_pairs is None else list(text_pairs[i: i + batch_size])
                enc = tokenizer(list(texts[i: i + batch_size]), pair, padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                out.append(model(**enc).exit_logits.float().softmax(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def refit_scheduler_bank(model, tokenizer, texts, labels, *, budgets=None, text_pairs=None, seed: int = 0,
                         batch_size: int = 64, max_length: int | None = None, autocast_dtype: torch.dtype | None = None,
                         progress: bool = True) -> dict:
    """Refit ``model``'s scheduler bank (same budgets and scheduler config unless ``budgets`` is given) on the
    model's *own* outputs on a labelled validation split, and replace the bank with it.

    Use it after anything that changes the exits' outputs (quantisation, a lower-precision autocast, pruning).
    Returns ``{"validation_rows", "forward_seconds", "fit_seconds": {budget: s}, "data_fingerprint"}``.
    """
    from tqdm.auto import tqdm

    from .scheduler import EENetScheduler

    budgets = list(model.config.scheduler_budgets or []) if budgets is None else list(budgets)
    if not budgets:
        raise ValueError("no budgets: the model has no scheduler bank; pass budgets=[...]")
    budgets = sorted(check_budget_fraction(b, "budgets entry") for b in budgets)
    labels = np.asarray(labels)
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must have one entry per text ({len(texts)}), got shape {labels.shape}")
    t0 = time.perf_counter()
    probs = exit_probabilities(model, tokenizer, texts, text_pairs=text_pairs, batch_size=batch_size,
                               max_length=max_length, autocast_dtype=autocast_dtype, progress=progress)
    info = {"validation_rows": len(texts), "forward_seconds": time.perf_counter() - t0, "fit_seconds": {}}
    sched_cfg = dict(model.config.scheduler_config or {})
    fitted = {}
    for b in tqdm(budgets, desc="EENet scheduler bank", unit="budget", disable=not progress):
        t1 = time.perf_counter()
        fitted[b] = EENetScheduler.from_config(sched_cfg).fit(probs, labels, model.config.exit_costs, b, seed=seed)
        info["fit_seconds"][str(b)] = time.perf_counter() - t1
    fp = data_fingerprint(probs, labels)
    model.set_scheduler_bank(fitted, data_fingerprint=fp)
    info["data_fingerprint"] = fp
    return info


def quantize_dynamic_int8(model, tokenizer=None, texts=None, labels=None, *, budgets=None, text_pairs=None,
                          traffic_texts=None, traffic_text_pairs=None, refit: bool = True, inplace: bool = False,
                          seed: int = 0, batch_size: int = 64, max_length: int | None = None, progress: bool = True):
    """Dynamic int8 quantisation of an EENet model's backbone, exit heads and classifier (CPU inference).

    Args:
        model: an hf_eenet early-exit model (fp32).
        tokenizer, texts, labels: a labelled validation split; needed when the model has a scheduler bank, which is
            then refitted at ``budgets`` (default: the bank's budgets) on the quantised model's own outputs.
        traffic_texts, traffic_text_pairs: an unlabelled sample of the served traffic: the refitted bank is then
            re-matched to its budgets on the quantised model's outputs for it (``model.rematch_budgets``). A refit
            matches the budgets on the validation split, so a bank that had been re-matched on traffic loses that
            re-match without them (a warning says so).
        refit: ``False`` drops the bank instead (``budget=`` then raises until a bank is fitted for this model).
        inplace: quantise ``model`` itself instead of a deep copy.
    Returns:
        The quantised model; ``model.eenet_quantization`` holds ``{"scheme", "modules", "refit", "rematch"}``.

    Batch dependence: ``quantize_dynamic`` picks each activation's int8 scale from the whole tensor it multiplies,
    i.e. from every row (and padding column) of the batch, so an int8 model's logits — and, for rows near a
    threshold, their exits — depend on the other texts in the batch (fp32 / bf16 / fp16 models give every text what
    it gets alone). For results that do not depend on the batch, serve one text per call (``pipe(text,
    budget=...)``, the per-request loop).
    """
    if not (hasattr(model, "exit_forward") and hasattr(model, "eenet_schedulers")):
        raise TypeError(f"expected an hf_eenet early-exit model, got {type(model).__name__}")
    has_bank = bool(model.config.scheduler_budgets) or budgets is not None
    if has_bank and refit and (tokenizer is None or texts is None or labels is None):
        raise ValueError(
            "this model has a scheduler bank fitted on its fp32 outputs, which no longer meets its budgets after "
            "quantisation: pass tokenizer=, texts= and labels= of a labelled validation split to refit it, or "
            "refit=False to drop the bank")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("dynamic int8 quantisation runs on CPU: move the model to the CPU first")
    if traffic_texts is not None and not (has_bank and refit):
        raise ValueError("traffic_texts re-matches a refitted bank: it needs a bank (or budgets=) and refit=True")
    rematched = [r for r in (model.config.scheduler_bank or []) if r.get("rematched_on")]
    if rematched and refit and has_bank and traffic_texts is None:
        warnings.warn(f"this model's bank was re-matched on {rematched[0]['rematched_on'].get('rows')} traffic rows; "
                      "the quantised model's bank is refitted and matched on the validation split, so that re-match "
                      "is not carried over: pass traffic_texts= (a sample of the traffic) to re-match it",
                      UserWarning, stacklevel=2)
    q = model if inplace else copy.deepcopy(model)
    q.eval()
    done = []
    for name in QUANTIZED_PARTS:
        sub = getattr(q, name, None)
        if isinstance(sub, nn.Module):
            setattr(q, name, torch.ao.quantization.quantize_dynamic(sub, {nn.Linear}, dtype=torch.qint8))
            done.append(name)
    info = {"scheme": "torch.ao dynamic int8 (nn.Linear)", "modules": done, "refit": None, "rematch": None}
    if has_bank:
        if refit:
            info["refit"] = refit_scheduler_bank(q, tokenizer, texts, labels, budgets=budgets, text_pairs=text_pairs,
                                                 seed=seed, batch_size=batch_size, max_length=max_length,
                                                 progress=progress)
            if traffic_texts is not None:
                traffic = exit_probabilities(q, tokenizer, traffic_texts, text_pairs=traffic_text_pairs,
                                             batch_size=batch_size, max_length=max_length, progress=progress)
                info["rematch"] = q.rematch_budgets(traffic)
        else:
            q.clear_scheduler_bank()
    q.eenet_quantization = info
    return q


__all__ = ["quantize_dynamic_int8", "refit_scheduler_bank", "exit_probabilities", "QUANTIZED_PARTS"]
