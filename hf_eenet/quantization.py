"""Supported reduced-precision serving: int8 quantisation of an EENet model, with its scheduler bank refitted on the
quantised model's own validation outputs.

Why a refit: quantisation shifts every exit's probabilities, so thresholds fitted on the fp32 model no longer meet
their budgets (on SST-2 the fp32 bank sends almost every row to exit 1 of the int8 model). A bank is only valid for
the outputs it was fitted on; :func:`quantize_dynamic_int8` therefore either refits it (``texts`` + ``labels`` of a
labelled validation split) or refuses (or, with ``refit=False``, drops it, so that ``budget=`` raises instead of
serving a budget the bank was not fitted for).

What is quantised: the backbone (``bert`` / ``roberta``), the exit heads and the final classifier — every
``nn.Linear`` there becomes an :class:`Int8Linear`: int8 weights with one scale per output feature, and activations
quantised to int8 *per token* (one scale per row of the input) as they arrive, the products summed exactly in int32
(``torch._int_mm``)::

    s_x = max_j |x_j| / 127,   s_w[o] = max_j |W[o, j]| / 127
    y[o] = s_x * s_w[o] * sum_j round(x_j / s_x) * round(W[o, j] / s_w[o]) + b[o]

Every row's output depends on that row alone: no scale is shared across the batch. (``torch.ao``'s dynamic
quantisation, which this replaced, took one activation scale from the whole batch, its padding included, so a text's
logits moved with the texts batched beside it.) What is left: fp32 attention over a padded batch differs from the
text alone in the last bits, and int8 rounding can amplify that into a small change of the scores, so a text that
close to a class tie or an exit threshold can get another label or exit in a padded batch than alone (measured by
``benchmarks/int8_batch_parity.py``). Unpadded layer calls are exact: one text per call, and the pipeline over a list
at ``batch_size=1`` (its default: single-row depth waves) give every text its alone result bit for bit.

The EENet schedulers stay as they are (float32 networks, float64 thresholds): they are tiny, their decisions must be
exact, and they read their Linear layers' weights directly, so quantising the whole model would break the budget path.

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
from .engine import input_device
from .modeling_eenet import exit_softmax
from .validation import check_budget_fraction, check_texts

QUANTIZED_PARTS = ("bert", "roberta", "exit_heads", "classifier")


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output feature) and int8 activations quantised per token (CPU).

    ``y = s_x * s_w * (round(x / s_x) @ round(W / s_w)^T) + b`` with ``s_x`` one scale per row of ``x`` (its largest
    magnitude / 127) and ``s_w`` one per output feature; the int8 products are summed exactly in int32. Each row's
    output depends on that row alone (no batch-wide scale). Input ``[..., in_features]`` (any float dtype, computed
    in float32), output ``[..., out_features]`` float32.

    Built from an ``nn.Linear`` with :meth:`from_linear`; weights live in buffers (``weight_int8 [in, out]`` int8,
    ``weight_scale [out]``, ``bias [out]`` float32), so the module has no trainable parameters.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        w = linear.weight.detach().float().cpu()
        scale = w.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        q.weight_int8.copy_(torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).t())
        q.weight_scale.copy_(scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("Int8Linear (hf_eenet int8 quantisation) runs on CPU; keep the quantised model there")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features).float()
        amax = x.abs().amax(-1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
        xq = (x * (127.0 / amax)).round_().to(torch.int8)  # |x / s_x| <= 127: no clamp needed
        acc = torch._int_mm(xq, self.weight_int8).to(torch.float32)  # exact int32 sums
        scale = (amax * (1.0 / 127.0)) * self.weight_scale  # [rows, out]: s_x * s_w
        y = acc.mul_(scale) if self.bias is None else torch.addcmul(self.bias, acc, scale)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linears_int8(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` below ``module`` (in place) by an :class:`Int8Linear`; returns how many.
    ``module`` itself is not replaced (for a bare ``nn.Linear`` use :meth:`Int8Linear.from_linear`)."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child))
            count += 1
        else:
            count += quantize_linears_int8(child)
    return count


def _check_texts(model, texts, text_pairs, what: str = "texts") -> None:
    """Texts (and pairs) for an all-exits pass: a non-empty list, pairs of the same length, and sentence pairs
    exactly when the model was trained on them (``pairing_mismatch``, the check behind the pipeline's refusals)."""
    from .configuration_eenet import pairing_mismatch

    if texts is None or isinstance(texts, str) or not len(texts):
        raise ValueError(f"{what} must be a non-empty list of strings")
    if text_pairs is not None and not isinstance(text_pairs, str) and len(text_pairs) != len(texts):
        raise ValueError(f"{what}: text_pairs has {len(text_pairs)} entries for {len(texts)} texts")
    check_texts(texts, what, text_pairs, "text_pairs")  # each a non-empty str, as the pipeline serves
    trained_on = pairing_mismatch(model.config, text_pairs is not None)
    if trained_on == "pairs":
        raise ValueError(f"this model was trained on sentence pairs: pass the second texts of {what} as text_pairs=")
    if trained_on is not None:
        raise ValueError(f"this model was trained on single texts: {what} take no text_pairs")


def _check_text_labels(texts, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must have one entry per text ({len(texts)}), got shape {labels.shape}")
    return labels


@torch.inference_mode()
def exit_probabilities(model, tokenizer, texts, *, text_pairs=None, batch_size: int = 64, max_length: int | None = None,
                       autocast_dtype: torch.dtype | None = None, progress: bool = True) -> np.ndarray:
    """``[N, K, C]`` softmax outputs of every exit of ``model`` (all-exits forward) on ``texts`` (float32 numpy).

    Texts are truncated to ``max_length``, by default what the pipeline and ``early_exit_predict`` truncate to
    (``max_input_tokens``), so a bank fitted or re-matched on these outputs sees the inputs it will serve.

    Runs the model in eval mode (dropout off; its previous mode is restored), as it serves."""
    from tqdm.auto import tqdm

    _check_texts(model, texts, text_pairs)
    if max_length is None:
        from .configuration_eenet import max_input_tokens

        max_length = max_input_tokens(model.config, tokenizer)
    device = input_device(model)  # (not meta where a device_map offloaded the first weights)
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
                # the softmax the served decisions read
                out.append(exit_softmax(model(**enc, return_dict=True).exit_logits).cpu())
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
    labels = _check_text_labels(texts, labels)
    t0 = time.perf_counter()
    probs = exit_probabilities(model, tokenizer, texts, text_pairs=text_pairs, batch_size=batch_size,
                               max_length=max_length, autocast_dtype=autocast_dtype, progress=progress)
    info = {"validation_rows": len(texts), "forward_seconds": time.perf_counter() - t0, "fit_seconds": {}}
    # the bank's scheduler config; a model without a bank gets today's default scheduler (its config without a
    # "features" key would read as the legacy feature set, kept only to load old banks)
    sched_cfg = dict(model.config.scheduler_config or {"features": EENetScheduler().features})
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
    """int8 quantisation of an EENet model's backbone, exit heads and classifier (CPU inference): every
    ``nn.Linear`` there becomes an :class:`Int8Linear` (int8 weights, activations quantised per token).

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

    Activations are quantised per token: no scale is shared across a batch (padding can still move a batched text's
    scores slightly; one text per call and a list at ``batch_size=1`` are exact; see the module docstring).
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
        raise ValueError("int8 quantisation (Int8Linear) runs on CPU: move the model to the CPU first")
    low = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()
                  if p.is_floating_point() and p.dtype != torch.float32})
    if low:  # Int8Linear computes in float32, which meets the other layers' bf16 / fp16 weights
        raise ValueError(f"int8 quantisation needs a float32 model; this one holds {', '.join(low)} weights: load it "
                         "in float32 (from_pretrained(..., dtype=torch.float32)) or call .float() first")
    if traffic_texts is not None and not (has_bank and refit):
        raise ValueError("traffic_texts re-matches a refitted bank: it needs a bank (or budgets=) and refit=True")
    rematched = [r for r in (model.config.scheduler_bank or []) if r.get("rematched_on")]
    if rematched and refit and has_bank and traffic_texts is None:
        warnings.warn(f"this model's bank was re-matched on {rematched[0]['rematched_on'].get('rows')} traffic rows; "
                      "the quantised model's bank is refitted and matched on the validation split, so that re-match "
                      "is not carried over: pass traffic_texts= (a sample of the traffic) to re-match it",
                      UserWarning, stacklevel=2)
    if has_bank and refit:  # every input checked before the model is touched
        _check_texts(model, texts, text_pairs)
        _check_text_labels(texts, labels)
        for b in budgets or []:
            check_budget_fraction(b, "budgets entry")
        if traffic_texts is not None:
            _check_texts(model, traffic_texts, traffic_text_pairs, what="traffic_texts")
    q = model if inplace else copy.deepcopy(model)
    was_training = q.training
    q.eval()
    swapped = []  # (parent, name, original Linear): put back if anything below fails (inplace)
    bank = _bank_snapshot(q)
    try:
        done = []
        for name in QUANTIZED_PARTS:
            sub = getattr(q, name, None)
            if isinstance(sub, nn.Module):
                _swap_linears(q, name, sub, swapped)
                done.append(name)
        info = {"scheme": "int8 per-token activations, per-channel weights (hf_eenet Int8Linear)", "modules": done,
                "refit": None, "rematch": None}
        if has_bank:
            if refit:
                info["refit"] = refit_scheduler_bank(q, tokenizer, texts, labels, budgets=budgets,
                                                     text_pairs=text_pairs, seed=seed, batch_size=batch_size,
                                                     max_length=max_length, progress=progress)
                if traffic_texts is not None:
                    traffic = exit_probabilities(q, tokenizer, traffic_texts, text_pairs=traffic_text_pairs,
                                                 batch_size=batch_size, max_length=max_length, progress=progress)
                    info["rematch"] = q.rematch_budgets(traffic)
            else:
                q.clear_scheduler_bank()
    except BaseException:
        if inplace:  # the model as it was: fp32 Linears, its own bank (not half-quantised, serving an fp32 bank)
            for parent, name, original in reversed(swapped):
                setattr(parent, name, original)
            _restore_bank(q, bank)
            q.train(was_training)
        raise
    q.eenet_quantization = info
    return q


def _swap_linears(parent: nn.Module, name: str, module: nn.Module, swapped: list) -> None:
    """Replace ``module`` (``parent.name``) or every ``nn.Linear`` inside it by an :class:`Int8Linear`, recording
    ``(parent, name, original)`` for each replacement."""
    if isinstance(module, nn.Linear):  # BERT's final classifier is a bare Linear
        setattr(parent, name, Int8Linear.from_linear(module))
        swapped.append((parent, name, module))
        return
    for child_name, child in list(module.named_children()):
        _swap_linears(module, child_name, child, swapped)


def _bank_snapshot(model) -> dict:
    """What a refit replaces: the bank module and the config fields that describe it."""
    keys = ("scheduler_config", "scheduler_budgets", "scheduler_bank", "default_budget")
    return {"schedulers": model.eenet_schedulers, **{k: copy.deepcopy(getattr(model.config, k, None)) for k in keys}}


def _restore_bank(model, snapshot: dict) -> None:
    model.eenet_schedulers = snapshot["schedulers"]
    for key, value in snapshot.items():
        if key != "schedulers":
            setattr(model.config, key, value)


__all__ = ["Int8Linear", "quantize_dynamic_int8", "quantize_linears_int8", "refit_scheduler_bank", "exit_probabilities",
           "QUANTIZED_PARTS"]
