"""The budget → scheduler bank: what each fitted EENet scheduler was fitted for, and the checks that keep a model from
serving a budget it was not fitted for.

A model's bank is ``model.eenet_schedulers`` (a :class:`SchedulerBank`, state-dict keys ``eenet_schedulers.<i>.*``),
indexed like ``config.scheduler_budgets`` (sorted ascending). Every entry has a *record* in ``config.scheduler_bank``
(JSON, saved in ``config.json``)::

    {"budget": 0.4,                      # the bank key: fraction of the full model's cost
     "costs": [0.29, 0.53, 0.77, 1.0],   # cumulative exit costs the scheduler was fitted with (= config.exit_costs)
     "num_exits": 4, "num_classes": 2,
     "data_fingerprint": "sha256:...",   # of the validation labels + rounded exit probabilities (None: unknown)
     "scheduler_config": {...},          # the scheduler's get_config()
     "state_sha256": "...",              # digest of the scheduler's tensors when the record was written
     "weights_sha256": {"bfloat16": "...", "float16": "..."},  # the model's weights the bank was fitted for
                                                               # (besides the bank; see weights_digest)
     "plan": "geometric",                # share plan of the kept candidate (§6; None: not recorded)
     "exit_layers": [2, 4, 6, 8], "exit_pooling": "cls",  # what the exits read when it was fitted (EXIT_READS)
     "rematched_on": {"rows": 5000, "fingerprint": "sha256:..."}}  # optional: thresholds re-matched on unlabelled
                                                                    # traffic (model.rematch_budgets)

:func:`verify_bank` compares config ↔ records ↔ the schedulers' own fitted-for state (read through their public API:
``is_fitted``, ``budget``, ``costs``, ``thresholds``, ``num_exits``, ``get_config()``) and the tensors (finite, digest)
and raises :class:`BankIntegrityError` naming what differs. The model runs it on ``from_pretrained`` (after checking that
no scheduler tensor is missing from the checkpoint), on ``add_scheduler``, on ``set_exit_costs`` and on
``save_pretrained``; :func:`check_entry` is the cheap per-request version run before serving a budget.

This module is copied next to the model code by ``save_pretrained`` (Hub remote code): relative imports only.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import math
import operator
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .validation import check_budget_fraction, costs_match
from .weight_events import (
    events as _events,
    note_weight_change,
    same_sample,
    stepped_since,
    version_total,
    weight_sample,
)

BANK_RECORD_KEYS = ("budget", "costs", "num_exits", "num_classes", "data_fingerprint", "scheduler_config",
                    "state_sha256")


class BankIntegrityError(ValueError):
    """The scheduler bank does not match the model's config (or is damaged): the model refuses to serve it."""


# ------------------------------------------------------------------------------------------------------------ the bank
class SchedulerBank(nn.ModuleList):
    """``nn.ModuleList`` of the fitted schedulers whose floating state keeps its dtype through ``model.to(dtype)``,
    ``.half()``, ``.bfloat16()`` (thresholds are float32 midpoints, costs and budget float64, by design: casting
    them would move exits). Device moves still apply."""

    def _apply(self, fn, recurse=True):
        def keep_dtype(t):
            out = fn(t)
            if isinstance(out, torch.Tensor) and t.is_floating_point() and out.dtype != t.dtype:
                out = t.to(device=out.device)  # the device move only: the original values, not a round trip
            return out

        return super()._apply(keep_dtype, recurse)

    def frozen(self) -> "SchedulerBank":
        """No gradient for any scheduler tensor (and none left over): an optimizer built on the model's parameters
        (``Trainer`` keeps only those that require a gradient) never moves the bank. Returns ``self``."""
        for p in self.parameters():
            p.grad = None
            p.requires_grad_(False)
        return self


# ----------------------------------------------------------------------------------------------------- fingerprints
def data_fingerprint(exit_probs, labels, decimals: int = 4) -> str:
    """``"sha256:<hex>"`` of the validation data a bank is fitted on: labels ``[N]`` (int64) and the exit
    probabilities ``[N, K, C]`` rounded to ``decimals``, so the same predictions collected twice the same way give the
    same print. Collected on another device or in another precision, values near a rounding boundary can move across
    it (differences of ~1e-7 over thousands of values): the print then differs and an extended bank is refused, to be
    refitted as a whole."""
    p = exit_probs.detach().cpu().double().numpy() if isinstance(exit_probs, torch.Tensor) else np.asarray(exit_probs, np.float64)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    h = hashlib.sha256()
    h.update(repr((tuple(p.shape), decimals)).encode())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    h.update(np.ascontiguousarray(np.round(p, decimals) + 0.0).tobytes())  # + 0.0: -0.0 → 0.0
    return "sha256:" + h.hexdigest()


def state_digest(module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, bytes), device independent; ``module`` may also be the
    state dict itself (e.g. the one a distributed save gathered)."""
    h = hashlib.sha256()
    state = module if isinstance(module, Mapping) else module.state_dict()
    for key, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------- the weights a bank is for
_CHECK_LOCK = threading.Lock()  # one digest at a time (concurrent requests after an event wait for the first)

_BANK_PREFIX = "eenet_schedulers."
_ROUNDINGS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _weight_tensors(model) -> list[tuple[str, torch.Tensor]] | None:
    """The model's tensors besides the bank, sorted by name (entries that are not tensors, e.g. a module's extra
    state, are left out), as :class:`_WeightItems`: a tensor accelerate offloaded (``device_map`` with disk / CPU
    offload: ``meta`` in the model) stays the model's own meta tensor (its dtype and version counter are what a
    request compares) and is read from the offload store its hook loads it from only when digested. ``None`` where
    they cannot be read here: a meta tensor with no such store, sharded DTensor / FSDP / DeepSpeed ZeRO-3 parameters
    (each rank holds a part, or an empty placeholder)."""
    items = sorted((k, t) for k, t in model.state_dict(keep_vars=True).items()
                   if not k.startswith(_BANK_PREFIX) and isinstance(t, torch.Tensor))
    stores = None
    for key, t in items:
        if type(t).__name__ in ("DTensor", "FlatParameter") or hasattr(t, "ds_id") or hasattr(t, "ds_shape"):
            return None
        if t.device.type == "meta":
            stores = _offload_stores(model) if stores is None else stores
            if key.rpartition(".")[0] not in stores:
                return None
    return _WeightItems(items, stores)


class _WeightItems(list):
    """``(name, tensor)`` pairs of a model's weights; :meth:`read` gives them with offloaded ones read from their
    store one at a time (a model larger than memory is digested tensor by tensor)."""

    def __init__(self, items, stores: dict | None):
        super().__init__(items)
        self.stores = stores

    def read(self):
        for key, t in self:
            if t.device.type == "meta":
                module, _, name = key.rpartition(".")
                t = self.stores[module][name].to(t.dtype)  # in the dtype the model runs it in, as the hook casts it
            yield key, t


def _read(items):
    """``items`` with their values readable (offloaded ones from their store: :meth:`_WeightItems.read`)."""
    return items.read() if isinstance(items, _WeightItems) else items


def accelerate_hooks(module: nn.Module) -> tuple:
    """The accelerate hooks set on ``module`` itself (a ``SequentialHook``'s parts; none without accelerate)."""
    hook = getattr(module, "_hf_hook", None)
    return () if hook is None else tuple(getattr(hook, "hooks", (hook,)))


def _offload_stores(model) -> dict:
    """``{module path: the store accelerate's hook on it loads its offloaded tensors from}``, by their own names."""
    out = {}
    for path, module in model.named_modules():
        for h in accelerate_hooks(module):
            store = getattr(h, "weights_map", None)
            if store is not None:
                out[path] = store
    return out


def _rounding(items) -> str:
    """The precision a model's weights are compared in first: float16 when it holds float16 weights, else bfloat16."""
    return "float16" if any(t.dtype == torch.float16 for _, t in items) else "bfloat16"


def _digest(items, rounding: str) -> str:
    h = hashlib.sha256()
    dtype = _ROUNDINGS[rounding]
    for key, t in _read(items):
        t = t.detach()
        if t.is_floating_point():
            t = t.to(dtype)
        t = t.cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype if not t.is_floating_point() else rounding}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _adapter_layers(model) -> list:
    """The model's PEFT tuner layers (LoRA and the like, told by the attributes every ``BaseTunerLayer`` has; no
    import of peft): switched off (``disable_adapter()``), switched to another adapter (``set_adapter``) or rescaled
    (``set_scale``) they compute another function with the same weights."""
    return [m for m in model.modules() if hasattr(m, "_disable_adapters") and hasattr(m, "active_adapters")]


def _adapter_settings(layers) -> tuple:
    """What the tuner ``layers`` compute with: per layer on / off, the active adapters and their scales (``()``
    without tuner layers). Plain attribute reads (no ``nn.Module.__getattr__`` misses): read on every request of a
    model that has them."""
    out = []
    for m in layers:
        own = m.__dict__
        active = own.get("_active_adapter", getattr(type(m), "_active_adapter", None))  # what active_adapters reads
        active = m.active_adapters if active is None else active
        active = (active,) if isinstance(active, str) else tuple(active)
        scaling = own.get("scaling")
        scales = tuple(scaling.get(a) for a in active) if isinstance(scaling, dict) else ()
        off = own.get("_disable_adapters", getattr(type(m), "_disable_adapters", False))  # (a class default)
        out.append((bool(off), active, scales))
    return tuple(out)


def _adapter_state(layers) -> str | None:
    """:func:`_adapter_settings` as a digest for a bank's record (``None`` without tuner layers)."""
    if not layers:
        return None
    return hashlib.sha256(repr(_adapter_settings(layers)).encode()).hexdigest()


def weights_digest(model) -> dict | None:
    """What a bank records about the weights it was fitted for: ``{"bfloat16": sha256, "float16": sha256}`` of the
    model's tensors besides the bank, every floating tensor rounded to that precision first (``None``: not readable
    here, see ``_weight_tensors``; nothing is then checked).

    Rounded so that the model cast once from the weights its bank was fitted on to bfloat16 or float16 for serving
    (``model.half()``, ``dtype=`` at load, and back to float32) still matches, while any training does not: an
    optimizer step moves thousands of weights across a rounding boundary (a bfloat16 step is 2^-8 of a weight, a
    float16 one 2^-11). Weights rounded twice (saved in float16, loaded as bfloat16) differ from either rounding:
    the bank then counts as fitted for other weights. Parameter names are part of the digest (a merged LoRA adapter
    is other weights: fit the bank on the model as it is served). A model with PEFT tuner layers also records their
    state (``"adapters"``: :func:`_adapter_state`): a bank fitted with the adapter on does not serve the same weights
    with it off."""
    items = _weight_tensors(model)
    if items is None:
        return None
    try:
        out = {r: _digest(items, r) for r in _ROUNDINGS}
    except Exception:  # noqa: BLE001 - an offload store that cannot be read: nothing is checked
        return None
    adapters = _adapter_state(_adapter_layers(model))
    if adapters is not None:
        out["adapters"] = adapters
    return out


def _matches(items, want: dict) -> bool:
    # the precision the weights are held in first; then the other one (a model cast to float16 and back to float32
    # holds the float16 values, whose bfloat16 rounding is not that of the fitted weights)
    first = _rounding(items)
    return any(want.get(r) == _digest(items, r) for r in [first] + [r for r in _ROUNDINGS if r != first])


STALE_BANK_MESSAGE = (
    "the scheduler bank was fitted for other weights: the model's weights changed after the bank was fitted (trained "
    "or edited without EENetTrainer, which removes the bank; e.g. with transformers.Trainer or a loop of your own; "
    "or a PEFT adapter added to it or merged into it), so its thresholds no longer spend the budgets they were "
    "fitted for; refit the bank on validation data, on the model as you serve it (EENetTrainer.fit_scheduler, "
    "hf-eenet fit-scheduler), or remove it (model.clear_scheduler_bank())")


def _stale_message(items) -> str:
    """:data:`STALE_BANK_MESSAGE`, and for weights a cast can explain the cause a cast alone can be: weights rounded
    twice (saved in float16 and loaded as bfloat16, or cast from one to the other in memory) are other weights to
    the digest (:func:`weights_digest`). Told by the weights: 16-bit weights, or float32 weights that all hold
    16-bit values (cast down and back up; trained float32 weights never do)."""
    held = sorted({str(t.dtype).removeprefix("torch.") for _, t in items
                   if t.dtype in (torch.float16, torch.bfloat16)})
    if not held:  # (read one tensor at a time; trained weights stop at the first)
        held = [name for name, dtype in _ROUNDINGS.items()
                if all(torch.equal(t, t.to(dtype).to(t.dtype)) for _, t in _read(items) if t.is_floating_point())][:1]
        if not held:
            return STALE_BANK_MESSAGE
    return (f"{STALE_BANK_MESSAGE}. The model's weights are {held[0]} values: if they were only cast, they were "
            "rounded twice (e.g. saved in float16 and loaded as bfloat16, or cast from one to the other in memory), "
            "which gives other weights than one rounding of those the bank was fitted on: serve weights rounded once "
            "from those (a 16-bit save loaded in its own precision, dtype=\"auto\", or the float32 weights cast "
            "once); weights already rounded twice, and a save of them, need the bank refitted")


#: the same weights, another function: the bank was fitted with the model's PEFT adapters in another state
STALE_ADAPTERS_MESSAGE = (
    "the scheduler bank was fitted with the model's PEFT adapters in another state (switched on or off by "
    "disable_adapter(), another adapter set active, or rescaled): the exits' outputs, and so the budget each threshold "
    "spends, differ; serve it with the adapters as they were when it was fitted, or refit the bank in this state "
    "(EENetTrainer.fit_scheduler)")


#: the config fields that decide, for the same weights, what the exits output (where each exit sits, what it pools):
#: a bank is fitted on those outputs, so its records keep them and a model whose config now says otherwise (e.g.
#: ``from_pretrained(d, exit_pooling="mean")`` on a bank fitted with ``"cls"``) does not serve it
EXIT_READS = ("exit_layers", "exit_pooling")


def exit_reads(config) -> dict:
    """``{"exit_layers": [...], "exit_pooling": ...}`` of ``config``: what its exits read (:data:`EXIT_READS`)."""
    return {"exit_layers": [int(x) for x in config.exit_layers],
            "exit_pooling": str(getattr(config, "exit_pooling", None) or "cls")}


def exit_layout(config) -> dict:
    """What a model's exit heads are trained for: :func:`exit_reads` and ``num_labels``."""
    return {**exit_reads(config), "num_labels": int(getattr(config, "num_labels", 0) or 0)}


def saved_exit_layout(saved: dict) -> dict:
    """:func:`exit_layout` as a saved ``config.json`` (a dict) states it (``None`` where it does not say)."""
    return {"exit_layers": saved.get("exit_layers"), "exit_pooling": saved.get("exit_pooling") or "cls",
            "num_labels": len(saved.get("id2label") or {}) or saved.get("num_labels")}


def exit_reads_reason(model) -> str | None:
    """Why the bank must not be served because the model's exits read otherwise than when it was fitted (a record's
    :data:`EXIT_READS` differ from the config's), else ``None``. Records saved before they kept these are not
    checked."""
    cfg = model.config
    records = getattr(cfg, "scheduler_bank", None)
    if not records:
        return None
    layers, pooling = cfg.exit_layers, getattr(cfg, "exit_pooling", None) or "cls"
    for rec in records:  # (runs on every request: plain comparisons, no copies)
        if not isinstance(rec, dict) or (rec.get("exit_pooling", pooling) == pooling
                                         and rec.get("exit_layers", layers) == layers):
            continue  # (config.exit_layers is a list, as a record's from JSON; a tuple is compared below)
        now = exit_reads(cfg)
        diff = [k for k in EXIT_READS if k in rec and rec[k] != now[k]]
        if diff:
            said = ", ".join(f"config.{k} is {now[k]!r} but the bank was fitted with {rec[k]!r}" for k in diff)
            return (f"the scheduler bank was fitted on other exit outputs ({said}): every exit's confidence, and so "
                    "the budget each threshold spends, differ; refit the bank for this setting (EENetTrainer."
                    "fit_scheduler, hf-eenet fit-scheduler), or load the model with the bank's "
                    f"({', '.join(f'{k}={rec[k]!r}' for k in diff)}), or remove it (model.clear_scheduler_bank())")
    return None


def _recorded_weights(model) -> dict | None:
    records = getattr(model.config, "scheduler_bank", None) or []
    stored = [r.get("weights_sha256") if isinstance(r, dict) else None for r in records]
    if not stored or any(not isinstance(d, dict) for d in stored):
        return None  # no bank, or one saved before weights were recorded (or fitted where they could not be read)
    return stored[0]


def stale_bank_reason(model, force: bool = False) -> str | None:
    """Why the model's bank must not be served (:data:`STALE_BANK_MESSAGE`) when its weights differ from those the
    bank recorded (``weights_sha256``), else ``None``. Banks saved before the record existed are not checked.

    ``force`` (load, save, ``verify_scheduler_bank``, ``add_scheduler``, ``rematch_budgets``): the digest is computed
    (any change is seen: an in-place ``.data`` edit, a submodule's ``load_state_dict``). Otherwise (each request) the
    last verdict stands until a weight event in this process (:mod:`.weight_events`: an optimizer step anywhere, a
    ``load_state_dict`` of one of our models, a module / parameter / buffer set on any module) or an in-place write to
    one of the model's tensors (the sum of their version counters: ~0.1 us a tensor per request) or a cast
    of one (their dtypes); then the digest is
    computed again if a tensor's identity, storage or version counter changed or an optimizer stepped one of this
    model's parameters, and otherwise if the weights'
    sample changed (a master copy written back through ``.data``, as DeepSpeed ZeRO-1/2 does); an unrelated event
    costs the model one sample."""
    reads = exit_reads_reason(model)  # (config fields: a few comparisons, read on every request)
    if reads:
        return reads
    want = _recorded_weights(model)
    if want is None:
        return None
    cache = model.__dict__.get("_eenet_weights_check")
    if not force and _still_current(cache, want, _events()):
        return cache["reason"]  # the serving path: two lookups and the version counters
    with _CHECK_LOCK:
        cache = model.__dict__.get("_eenet_weights_check")
        events = _events()  # read before the weights: an event while they are read is seen at the next request
        if not force and _still_current(cache, want, events):
            return cache["reason"]  # another thread checked meanwhile
        try:
            items = _weight_tensors(model)
            if items is None:
                return None
            sig = _weights_signature(items)
            versions = _versions(items)  # read before the digest: a write (or cast) during it is seen next request
        except Exception:  # noqa: BLE001 - a model whose state cannot be read here is not checked, never broken
            return None
        sample = _sample_or_none(items)
        if (not force and cache is not None and cache["want"] is want and cache["sig"] == sig
                and not stepped_since((t for _, t in items), cache["events"])
                and same_sample(sample, cache["sample"]) and _same_adapters(cache)):
            cache["events"] = events
            return cache["reason"]
        layers = _adapter_layers(model)
        adapters = _adapter_state(layers)
        try:
            reason = (_stale_message(items) if not _matches(items, want)
                      else STALE_ADAPTERS_MESSAGE if want.get("adapters") != adapters else None)
        except Exception:  # noqa: BLE001 - an offload store that cannot be read: not checked, never broken
            return None
        model.__dict__["_eenet_weights_check"] = {"want": want, "events": events, "sig": sig, "sample": sample,
                                                  "reason": reason, "layers": layers,
                                                  "settings": _adapter_settings(layers), **versions}
        return reason


def state_dict_for_save(model, state_dict: Mapping) -> tuple[dict, str | None]:
    """``(state_dict, reason)`` for ``save_pretrained(state_dict=...)`` of a model with a bank: the bank's tensors the
    given state dict lacks (one built from ``named_parameters()``, which leaves out buffers) are added from the model
    (the folder would not load without them: :class:`BankIntegrityError`, missing scheduler tensors), and ``reason``
    (:data:`STALE_BANK_MESSAGE`) says whether its other tensors are weights the bank was not fitted for (compared as
    :func:`stale_bank_reason` compares the model's, in either rounding: a gathered 16-bit state dict matches). A state
    dict without every one of the model's parameters (empty, or a part) is returned as given, unchecked."""
    params = {k for k, _ in model.named_parameters() if not k.startswith(_BANK_PREFIX)}
    if not params <= set(state_dict):  # not the model's weights: an empty gather (DeepSpeed ZeRO-3 without
        return state_dict, None  # stage3_gather_16bit_weights_on_model_save), a part: written as given
    own = {k: t for k, t in model.state_dict().items() if k.startswith(_BANK_PREFIX)}
    out = dict(state_dict)
    for key, t in own.items():
        out.setdefault(key, t)
    want = _recorded_weights(model)
    if want is None:
        return out, None
    items = sorted((k, t) for k, t in out.items() if not k.startswith(_BANK_PREFIX) and isinstance(t, torch.Tensor))
    if any(t.device.type == "meta" for _, t in items):
        return out, None
    return out, (None if _matches(items, want) else
                 "the scheduler bank was fitted for other weights than those of the state dict saved (state_dict=): "
                 "the folder loads with a warning and refuses budgets until the bank is refitted on its weights")


def _versions(items) -> dict:
    """The tensors whose version counters and dtypes a request compares, with their sum and dtypes when the weights
    were checked (read with the signature: a write after it is seen at the next request)."""
    # (not offloaded ones: meta in the model, replaced by accelerate's hook after each forward that loads them)
    tensors = [t for _, t in items if not t.is_inference() and t.device.type != "meta"]
    return {"tensors": tensors, "versions": version_total(tensors), "dtypes": _dtypes(tensors)}


def _dtypes(tensors) -> tuple:
    """The tensors' dtypes: a cast (``.to(dtype)`` / ``.half()`` of the model or of any submodule) swaps each
    ``param.data``, with no weight event and no version bump (~0.1 us a tensor)."""
    return tuple(map(_DTYPE_OF, tensors))


_DTYPE_OF = operator.attrgetter("dtype")


def _still_current(cache, want, events) -> bool:
    """Whether the last verdict stands: the same record, no weight event since, no in-place write to a tensor, no
    cast of one, the PEFT tuner layers (if any) in the same state."""
    return (cache is not None and cache["want"] is want and cache["events"] == events
            and version_total(cache["tensors"]) == cache["versions"] and _dtypes(cache["tensors"]) == cache["dtypes"]
            and _same_adapters(cache))


def _same_adapters(cache) -> bool:
    """Whether the tuner layers the last check saw (none: most models) are in the state it saw."""
    layers = cache.get("layers")
    return not layers or _adapter_settings(layers) == cache.get("settings")


def seed_weights_check(model, weights: dict | None) -> None:
    """After a bank is installed with the digest ``weights`` just computed from the model: its first request need not
    compute it again."""
    want = _recorded_weights(model)
    if want is None or want != weights:
        return
    try:
        events = _events()
        items = _weight_tensors(model)
        if items is not None:
            layers = _adapter_layers(model)
            model.__dict__["_eenet_weights_check"] = {"want": want, "events": events,
                                                      "sig": _weights_signature(items),
                                                      "sample": _sample_or_none(items), "reason": None,
                                                      "layers": layers, "settings": _adapter_settings(layers),
                                                      **_versions(items)}
    except Exception:  # noqa: BLE001 - a cache only: the first request computes the check instead
        model.__dict__.pop("_eenet_weights_check", None)


def _sample_or_none(items):
    try:  # (offloaded weights, meta in the model, are not sampled: no optimizer writes them back through .data)
        return weight_sample(t for _, t in items if t.device.type != "meta")
    except Exception:  # noqa: BLE001 - tensors whose bytes cannot be sampled: each event computes the digest
        return None


def _weights_signature(items) -> tuple:
    """Cheap identity of the tensors (object, storage, dtype, device, in-place version counter). An inference tensor
    (made under ``torch.inference_mode()``) has no counter and can be written in that mode unseen: it gets a marker
    that equals nothing, so after any weight event its model's digest is computed again. An offloaded (meta) tensor
    is told by its dtype alone: accelerate's hook sets a new meta Parameter after every forward that loaded it."""
    return tuple((k, t.dtype, "meta") if t.device.type == "meta" else
                 (k, id(t), t.data_ptr(), t.dtype, t.device, object() if t.is_inference() else t._version)
                 for k, t in items)


def make_record(scheduler, budget: float, data_fingerprint: str | None = None,
                weights_sha256: dict | None = None, reads: dict | None = None) -> dict:
    """The JSON record of one fitted scheduler under bank key ``budget`` (``weights_sha256``: :func:`weights_digest`
    of the model it was fitted for; ``reads``: :func:`exit_reads` of its config)."""
    return {
        "budget": float(budget),
        "costs": [float(c) for c in scheduler.costs],
        "num_exits": int(scheduler.num_exits),
        "num_classes": _num_classes(scheduler),
        "data_fingerprint": data_fingerprint,
        "scheduler_config": scheduler_config_json(scheduler),
        "state_sha256": state_digest(scheduler),
        # the share plan of the kept candidate (learned / geometric / static): what rematch_budgets re-runs
        "plan": (getattr(scheduler, "fit_info", None) or {}).get("plan"),
        "weights_sha256": weights_sha256,
        **({k: reads[k] for k in EXIT_READS if k in reads} if reads else {}),
    }


def _num_classes(scheduler):
    n = getattr(scheduler, "num_classes", None)
    return None if n is None else int(n)


def scheduler_config_json(scheduler) -> dict:
    return json.loads(json.dumps(scheduler.get_config()))  # what config.json will hold (tuples → lists, ...)


def same_scheduler_config(a: dict | None, b: dict | None) -> bool:
    """Whether two saved scheduler configs describe the same scheduler. Keys added to
    :class:`~hf_eenet.scheduler_config.EENetSchedulerConfig` after a bank was saved (e.g. ``selection_folds``) take
    their defaults on both sides, so banks saved by earlier versions keep loading; anything else must match."""
    from .scheduler_config import EENetSchedulerConfig

    if a == b:
        return True
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    try:
        return EENetSchedulerConfig.from_dict(a).to_dict() == EENetSchedulerConfig.from_dict(b).to_dict()
    except (TypeError, ValueError):
        return False


# -------------------------------------------------------------------------------------------------------- checks
def _fail(where: str, msg: str):
    raise BankIntegrityError(f"EENet scheduler bank {where}: {msg}")


def check_scheduler(scheduler, config, budget: float, where: str = "check") -> None:
    """A fitted scheduler can serve ``budget`` on a model with ``config``: fitted, same exits/classes, fitted for
    this budget and for ``config.exit_costs``, no NaN threshold, finite weights."""
    name = f"scheduler for budget {budget:g}"
    try:
        fitted = bool(scheduler.is_fitted)
    except Exception as err:  # noqa: BLE001 - a damaged module can fail anywhere
        _fail(where, f"{name}: cannot read its fitted state ({err})")
    if not fitted:
        _fail(where, f"{name} is not fitted (its tensors are missing or were never fitted: e.g. a model built from a "
                     "config that names a bank, with from_config; fit a bank with EENetTrainer.fit_scheduler, or "
                     "drop it with model.clear_scheduler_bank())")
    if int(scheduler.num_exits) != int(config.num_exits):
        _fail(where, f"{name} was fitted for {scheduler.num_exits} exits but config.exit_layers has "
                     f"{config.num_exits} ({list(config.exit_layers)})")
    n_cls = _num_classes(scheduler)
    if n_cls is not None and n_cls != int(config.num_labels):
        _fail(where, f"{name} was fitted for {n_cls} classes but config.num_labels = {config.num_labels}")
    # a bank key is a fraction of the full model's cost, and what a served policy reports (budget, planned cost,
    # rematch) is read in that unit: a scheduler fitted on costs in another unit (e.g. latency in ms) is refused
    costs = scheduler.costs
    if not costs or not math.isclose(float(costs[-1]), 1.0, rel_tol=1e-6):
        _fail(where, f"{name} was fitted with exit costs in another unit (last exit {float(costs[-1]) if costs else None}"
                     "): a bank holds schedulers fitted on fractions of the full cost, model.config.exit_costs, with a "
                     "budget fraction in (0, 1]")
    fitted_budget = float(scheduler.budget)
    if not math.isfinite(fitted_budget) or not math.isclose(fitted_budget, budget, rel_tol=1e-6, abs_tol=1e-9):
        _fail(where, f"config says budget {budget:g} but the scheduler stored there was fitted for budget "
                     f"{fitted_budget:g}")
    if not costs_match(costs, config.exit_costs):
        _fail(where, f"{name} was fitted for exit costs {[round(c, 6) for c in costs]} but config.exit_costs = "
                     f"{[round(c, 6) for c in config.exit_costs]}: refit the bank for these costs "
                     "(EENetTrainer.fit_scheduler) or restore the costs")
    thresholds = scheduler.thresholds
    if any(math.isnan(t) for t in thresholds):
        _fail(where, f"{name} has NaN thresholds {thresholds}")
    state = scheduler.state_dict()
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or t.is_quantized:  # e.g. quantize_dynamic(model, {nn.Linear}) as a whole
            _fail(where, f"{name} was quantised (its state holds {key!r}): the bank's nets must stay in floating "
                         "point. Quantise the encoder, exit heads and classifier only: hf_eenet.quantize_dynamic_int8"
                         "(model, tokenizer, texts, labels) does, and refits the bank on the int8 outputs")
    for key, t in state.items():
        if t.is_floating_point() and torch.isnan(t).any():
            _fail(where, f"{name}: tensor {key!r} contains NaN")
    for key, p in scheduler.named_parameters():
        if not torch.isfinite(p.detach()).all():  # detach: a Parameter made under inference_mode cannot be read
            _fail(where, f"{name}: weight {key!r} is not finite")


def _entry_signature(model, index: int) -> tuple:
    """What a served entry's check depends on: the config's budget/costs/shape and, for every scheduler tensor, its
    identity, storage, dtype and in-place version counter (``load_state_dict``, ``copy_``, ``fill_``, ``.to()`` and
    ``.data =`` all change one of them)."""
    cfg = model.config
    sched = model.eenet_schedulers[index]
    tensors = tuple((id(t), t.data_ptr(), t.dtype, t.device, t._version) for t in _module_tensors(sched))
    return (id(sched), tensors, float(cfg.scheduler_budgets[index]), tuple(cfg.exit_costs), int(cfg.num_exits),
            int(cfg.num_labels))


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``module`` and its submodules (``parameters()`` + ``buffers()`` without their
    generator machinery: this runs on every request, and the plain walk is several times cheaper)."""
    out, stack = [], [module]
    while stack:
        m = stack.pop()
        out.extend(t for t in m._parameters.values() if t is not None)
        out.extend(t for t in m._buffers.values() if t is not None)
        stack.extend(c for c in m._modules.values() if c is not None)
    return out


def without_inference_tensors(scheduler: nn.Module) -> nn.Module:
    """``scheduler``, or a copy of it made outside inference mode when it holds inference tensors (one loaded or
    fitted under ``torch.inference_mode()``): those have no version counter, which the per-request entry check
    (:func:`check_entry`) reads."""
    if not any(t.is_inference() for t in _module_tensors(scheduler)):
        return scheduler
    with torch.inference_mode(False):
        return copy.deepcopy(scheduler)


def bring_offloaded_bank_in(model) -> None:
    """A ``device_map`` that offloads part of the model (to disk, or to the CPU beside a GPU) may put the scheduler
    bank there too: accelerate then leaves its tensors on the ``meta`` device with forward hooks that would bring them
    in. The bank is read directly, not through a forward (its verification, fingerprints, thresholds), and it is
    small, so its tensors are read from the offload store onto the hooks' execution device and its hooks removed (at
    load, and where accelerate's ``cpu_offload`` / ``disk_offload`` offloaded a loaded model: before its bank is
    checked). Raises ``ValueError`` naming ``eenet_schedulers`` when a tensor cannot be read back."""
    bank = getattr(model, "eenet_schedulers", None)
    if bank is None or not any(t.is_meta for t in (*bank.parameters(), *bank.buffers())):
        return
    with _BRING_LOCK:  # two first requests at once: one reads the bank in, the other finds it in
        if any(t.is_meta for t in (*bank.parameters(), *bank.buffers())):
            _read_bank_in(bank)


_BRING_LOCK = threading.Lock()


def _read_bank_in(bank) -> None:
    try:  # (under try: a Hub load with trust_remote_code does not require accelerate for the shipped file)
        from accelerate.hooks import remove_hook_from_module
        from accelerate.utils import set_module_tensor_to_device
    except ImportError as err:  # meta tensors without accelerate: not an offload this can read back
        raise ValueError("the scheduler bank's tensors are on the meta device (not loaded): load the model with its "
                         "bank on a device") from err

    for module in bank.modules():
        for h in accelerate_hooks(module):
            store, device = getattr(h, "weights_map", None), getattr(h, "execution_device", None)
            if store is None or device is None:
                continue
            for name, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
                if t.is_meta:
                    with contextlib.suppress(KeyError):
                        set_module_tensor_to_device(module, name, device, value=store[name])
    remove_hook_from_module(bank, recurse=True)
    left = [n for n, t in (*bank.named_parameters(), *bank.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"the device_map offloaded the scheduler bank ('eenet_schedulers') and {len(left)} of its "
                         f"tensors could not be read back ({left[:3]}): place it on a device, e.g. device_map="
                         "{..., 'eenet_schedulers': 0} (it is a few MB at most)")


def check_entry(model, index: int) -> None:
    """Check before serving bank entry ``index`` (config ↔ scheduler; no digest). The full check runs once per state
    of the entry: it is repeated only when the scheduler's tensors or the config's budget/costs changed since the last
    check that passed (so a request does not pay for ~30 small tensor scans and host reads)."""
    cfg = model.config
    cache = model.__dict__.setdefault("_eenet_checked_entries", {})
    sig = _entry_signature(model, index)
    if cache.get(index) == sig:
        return
    bring_offloaded_bank_in(model)  # (accelerate's cpu_offload / disk_offload of a loaded model: its tensors changed)
    sig = _entry_signature(model, index)
    check_scheduler(model.eenet_schedulers[index], cfg, float(cfg.scheduler_budgets[index]), where="before serving")
    cache[index] = sig


def verify_bank(model, where: str = "check") -> list[dict]:
    """Full check of ``model``'s bank against its config; returns the records. Raises :class:`BankIntegrityError`."""
    cfg = model.config
    budgets = [float(b) for b in (cfg.scheduler_budgets or [])]
    bring_offloaded_bank_in(model)
    schedulers = list(model.eenet_schedulers)
    records = cfg.scheduler_bank
    if len(budgets) != len(schedulers):
        _fail(where, f"config.scheduler_budgets lists {len(budgets)} budgets {budgets} but the model holds "
                     f"{len(schedulers)} schedulers")
    d = cfg.default_budget
    if d is not None and budgets and not budgets[0] - 1e-6 <= float(d) <= budgets[-1] + 1e-6:
        _fail(where, f"config.default_budget {d:g} is outside the bank's budgets {budgets} (was config.json "
                     "edited?): set one the bank serves, or null")
    if records is not None:
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            _fail(where, f"config.scheduler_bank must be a list of records, got {type(records).__name__}")
        if [r.get("budget") for r in records] != budgets:
            _fail(where, f"config.scheduler_budgets {budgets} differ from the budgets of config.scheduler_bank "
                         f"{[r.get('budget') for r in records]} (was config.json edited?)")
    else:
        records = [None] * len(budgets)  # no bank, or a legacy checkpoint (no records): check what the schedulers say
    prints = {r.get("data_fingerprint") for r in records if r and r.get("data_fingerprint")}
    if len(prints) > 1:
        _fail(where, "the bank mixes schedulers fitted on different validation data "
                     f"({sorted(prints)}); refit the whole bank on one validation set")
    present = [r for r in records if r]
    rematched = [r["rematched_on"] for r in present if "rematched_on" in r]
    if rematched and (len(rematched) != len(present)
                      or not all(isinstance(m, dict) and isinstance(m.get("fingerprint"), str) for m in rematched)
                      or len({m["fingerprint"] for m in rematched}) > 1):
        _fail(where, "the bank mixes thresholds re-matched on different traffic samples (or on none), or a "
                     "rematched_on record is malformed: re-match the whole bank at once (rematch_budgets)")
    weights = {json.dumps(r["weights_sha256"], sort_keys=True) for r in present if r.get("weights_sha256")}
    if len(weights) > 1:
        _fail(where, "the bank mixes schedulers fitted for different model weights (config.scheduler_bank "
                     "weights_sha256); refit the whole bank on the model as it is now")
    for b, sched, rec in zip(budgets, schedulers, records):
        check_budget_fraction(b, "config.scheduler_budgets entry")
        check_scheduler(sched, cfg, b, where)
        if rec is None:
            continue
        if not costs_match(rec.get("costs", []), cfg.exit_costs):
            _fail(where, f"record for budget {b:g} says costs {rec.get('costs')} but config.exit_costs = "
                         f"{cfg.exit_costs}")
        if rec.get("num_exits") != cfg.num_exits:
            _fail(where, f"record for budget {b:g} says {rec.get('num_exits')} exits, config has {cfg.num_exits}")
        if rec.get("num_classes") not in (None, cfg.num_labels):
            _fail(where, f"record for budget {b:g} says {rec.get('num_classes')} classes, config has "
                         f"{cfg.num_labels}")
        if rec.get("scheduler_config") is not None and not same_scheduler_config(rec["scheduler_config"],
                                                                                 scheduler_config_json(sched)):
            _fail(where, f"record for budget {b:g}: scheduler config {rec['scheduler_config']} differs from the "
                         f"loaded scheduler's {scheduler_config_json(sched)}")
        if rec.get("state_sha256") and rec["state_sha256"] != state_digest(sched):
            _fail(where, f"the tensors of the scheduler for budget {b:g} are not the ones recorded in "
                         "config.scheduler_bank (weights file from another save, or edited)")
    return [r if r is not None else make_record(s, b) for r, s, b in zip(records, schedulers, budgets)]


def check_loading_info(info: dict, prefix: str = "eenet_schedulers.", bank_expected: bool = True) -> None:
    """After ``from_pretrained``: every scheduler tensor must come from the checkpoint (a missing one would serve
    uninitialised memory, the fitted flag included) and none may be left over, unless the config asks for no bank
    at all (``bank_expected=False``: e.g. loading the backbone with ``config=`` whose bank was cleared)."""
    missing = sorted(k for k in info.get("missing_keys", []) if k.startswith(prefix))
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if k.startswith(prefix))
    mismatched = sorted(str(k[0] if isinstance(k, (tuple, list)) else k)
                        for k in info.get("mismatched_keys", []) if str(k[0] if isinstance(k, (tuple, list)) else k).startswith(prefix))
    if missing:
        _fail("on load", f"{len(missing)} scheduler tensors are missing from the checkpoint (e.g. {missing[:4]}); "
                         "the weights file does not match config.scheduler_budgets")
    if unexpected and bank_expected:
        _fail("on load", f"the checkpoint holds scheduler tensors that config.scheduler_budgets does not list "
                         f"(e.g. {unexpected[:4]}); config.json and the weights file come from different saves")
    if mismatched:
        _fail("on load", f"scheduler tensors with the wrong shape: {mismatched[:4]}")


# --------------------------------------------------------------------------------------------------- atomic saves
#: transformers' weight file names: ``model[.<variant>][-00001-of-00002].safetensors`` (and ``pytorch_model`` ``.bin``,
#: ``tf_model`` ``.h5``, ``flax_model`` ``.msgpack``: each stem with its own extension; a variant may hold dots or
#: dashes), and their index ``model.safetensors.index[.<variant>].json``
_WEIGHT_FILES = tuple(re.compile(rf"^{stem}(?:\.(?P<v>.+?))?(?:-\d{{5}}-of-\d{{5}})?\.{ext}$") for stem, ext in (
    ("model", "safetensors"), ("pytorch_model", "bin"), ("tf_model", "h5"), ("flax_model", "msgpack")))
_WEIGHT_INDEX = re.compile(r"^(?:model\.safetensors|pytorch_model\.bin|tf_model\.h5|flax_model\.msgpack)\.index"
                           r"(?:\.(?P<v>.+))?\.json$")


def atomic_save_dir(target, write, keep_old_entries: bool = True, drop: tuple[str, ...] = (),
                    replaces_weights: bool = True, in_place: bool = False) -> None:
    """Write a folder atomically: ``write(tmp)`` fills a temporary folder beside ``target``, then the folder is swapped
    in. If ``write`` raises, ``target`` is untouched (it loads exactly as before) and the error propagates.

    The swap is one atomic exchange of the two folders where the OS has one (Linux ``renameat2(RENAME_EXCHANGE)``):
    at every instant ``target`` is either the complete old folder or the complete new one, also when the process is
    killed. Elsewhere (or on a filesystem without the exchange) it is two renames, ``target`` → ``.NAME.old-*`` then
    ``.NAME.saving-*`` → ``target``; a kill between them leaves no ``target``, and the next save of the same folder
    renames the old one back first. Each save also removes the ``.NAME.saving-*`` / ``.NAME.old-*`` folders that an
    interrupted earlier save left beside ``target`` (unless a running save holds them, via ``flock``; the clean-up
    and the creation + marking of a save's own temporary folder run under a lock on the parent folder, so a
    concurrent save of the same folder never removes the other's).

    With ``keep_old_entries``, files and sub-folders of the old ``target`` that ``write`` did not produce (tokenizer
    files, checkpoints, README, ...) are carried over as hard links (copies where links fail), except stale weight
    files (``model*.safetensors``, ``pytorch_model*`` of a variant the save wrote: its weights replace them) and the entries named in
    ``drop`` that ``write`` did not produce (removed on every path, e.g. the trainer's stale ``training_args.bin``).
    ``replaces_weights=False`` (a save of something else into a model folder, e.g. a scheduler) keeps the old weight
    files as well; so does a save that wrote no weight files, and files of a variant it did not write are kept
    (:func:`_replaced_variants`). ``in_place=True`` never swaps the folder: its other entries are never moved or re-linked (a
    training run's ``output_dir`` whose checkpoint folders other processes may be writing into); the save is the
    journal described below.

    A symlinked ``target`` is saved into the folder it points at (the link stays). Where the folder itself must not
    or cannot be swapped — it is the current working directory or contains it (swapping would delete the process's
    cwd), its parent is not writable, or it is or holds a mount point (e.g. a container volume given as output_dir,
    or mounted inside it: ``os.path.ismount`` and ``/proc/self/mountinfo``, which also lists bind mounts) — the
    temporary folder goes inside ``target``; where the swap is still refused after ``write`` (EBUSY / EXDEV), the
    entries ``write`` produced are moved in from beside it, copied where a rename cannot cross. ``write`` runs once
    either way, and entries it did not produce are not touched there. The files replace the old ones one by one,
    weights first and ``config.json`` last (a replaced sub-folder, or a file a folder replaces, is set aside until
    its successor is in place); other entries of the old folder are always kept there. Clean-ups never descend
    into a mount point. There the save is a journal: an interruption during ``write`` leaves the old folder
    untouched; once ``write`` has finished, a manifest commits the save, and an interruption while the files move
    in is finished by the next save of the folder (from inside or from elsewhere) or the next ``from_pretrained`` of
    an hf_eenet model from it (:func:`finish_interrupted_save`; the newest commit wins), so the folder loads as the
    complete new save, never as new weights beside the old config. A finish leaves ``FINISHED_FILE`` (the config it
    replaced, for config objects read before it; removed by the next save).
    """
    target = os.path.realpath(os.path.abspath(os.fspath(target)))
    parent = os.path.dirname(target)
    if in_place or (os.path.isdir(target) and (_holds_cwd(target) or _mounts_at_or_below(target))):
        return _save_inside(target, write, drop, replaces_weights)
    if os.path.isdir(target):  # an interrupted save from inside (another cwd): finished first, not carried over
        finish_interrupted_save(target, force=True)  # half done (a save of other files would keep the mix); forced
        # where no lock tells a running one: the swap would drop its folder anyway, as _save_inside finishes it
    os.makedirs(parent, exist_ok=True)
    # clean-up, then create + mark the new temporary folder, as one step among saves beside each other (a lock on the
    # parent folder): another save's clean-up never sees this folder created but not yet marked
    guard = _lock_folder(parent)
    try:
        _recover_leftovers(target)
        try:
            tmp = tempfile.mkdtemp(prefix=_leftover_prefixes(target)[0], dir=parent)
        except PermissionError:  # the parent is not writable; the folder may be
            tmp = None
        if tmp is not None:
            _HELD[tmp] = _hold(tmp)  # marks tmp as in use: clean-ups leave it alone
    finally:
        if guard is not None:
            os.close(guard)
    if tmp is None:
        return _save_inside(target, write, drop, replaces_weights)
    swapped = None
    try:
        write(tmp)
        produced = set(os.listdir(tmp))
        replaced = _replaced_variants(produced, replaces_weights)
        if keep_old_entries and os.path.isdir(target):
            for entry in os.listdir(target):
                if (entry in produced or _weight_variant(entry) in replaced
                        or entry.startswith(".saving-") or entry == FINISHED_FILE or entry in drop):
                    continue
                src, dst = os.path.join(target, entry), os.path.join(tmp, entry)
                if os.path.isdir(src) and not os.path.islink(src):
                    shutil.copytree(src, dst, copy_function=_link_or_copy, symlinks=True)
                else:
                    _link_or_copy(src, dst)
        if os.path.isdir(target):
            try:
                swapped = _exchange(tmp, target)  # tmp now holds the old folder
            except OSError as err:
                if err.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
                    raise
                swapped = None  # a mount point (or a folder that cannot move)
            if swapped is False:
                swapped = _swap_by_renames(tmp, target, parent) or None
            if swapped is None:  # a folder that cannot move (a bind mount ismount misses, ...): what write produced
                _remove_finished_record(target)
                _replace_files(tmp, target, drop, replaces_weights, only=produced)  # goes in, file by file (copied
                # where a rename cannot cross: EXDEV); the old folder's other entries stay where they are
        else:
            os.rename(tmp, target)
            swapped = True
    finally:
        _release(tmp, target, moved_in=swapped is True)
        _remove_tree(tmp)  # the unfinished new folder, or the old one after the swap


def _weight_variant(name: str) -> str | None:
    """The variant of a weight file or index named ``name`` (``""``: none; ``"fp16"`` for ``model.fp16.safetensors``,
    its shards and ``model.safetensors.index.fp16.json``), or ``None`` where ``name`` is not one."""
    for pattern in (*_WEIGHT_FILES, _WEIGHT_INDEX):
        m = pattern.match(name)
        if m is not None:
            return m.group("v") or ""
    return None


def _replaced_variants(produced, replaces_weights: bool) -> set[str]:
    """The weight variants a save replaces: those it wrote files of (single file, shards or index). The old folder's
    files of those variants are dropped (the new ones replace them: an old single file beside new shards would load
    first); files of other variants stay, and a save that wrote no weights (the stock save on a rank other than global
    0 writes nothing; a PEFT adapter, ``adapter_model*``) keeps them all, as the stock save into the folder would."""
    if not replaces_weights:
        return set()
    return {v for v in map(_weight_variant, produced) if v is not None}


#: the temporary folders of this process's running saves → the descriptor of the lock that marks each in use
_HELD: dict = {}


def _release(tmp, target, moved_in: bool) -> None:
    """Unmark ``tmp`` at the end of a save. Where the save's folder moved in at ``target`` and ``target`` is itself
    the temporary folder of a running save of this process (a save nested in a save: ``EENetTrainer._save`` →
    ``model.save_pretrained`` into the trainer's temporary folder), the lock moves with the folder and now marks
    ``target`` for that outer save, which goes on writing there; its old lock (on the folder swapped out) is closed."""
    lock = _HELD.pop(tmp, None)
    if moved_in and lock is not None and target in _HELD:
        outer, _HELD[target] = _HELD[target], lock
        if outer is not None:
            os.close(outer)
    elif lock is not None:
        os.close(lock)


def _swap_by_renames(tmp, target, parent) -> bool:
    """The fallback swap without an atomic exchange: ``target`` → ``.NAME.old-*``, ``tmp`` → ``target``. False when
    ``target`` cannot be moved (a mount point, ...): nothing was changed."""
    backup = tempfile.mkdtemp(prefix=_leftover_prefixes(target)[1], dir=parent)
    os.rmdir(backup)
    lock = _hold(target)  # the lock moves with the folder: a concurrent save does not take the backup for a leftover
    try:
        try:
            os.rename(target, backup)
        except OSError as err:
            if err.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
                raise
            return False
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(backup, target)
            raise
    finally:
        if lock is not None:
            os.close(lock)
    _remove_tree(backup)
    return True


# Linux renameat2(2): swaps two paths in one step. glibc >= 2.28 exports it.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNRESOLVED = object()
_renameat2_fn = _UNRESOLVED


def _renameat2():
    global _renameat2_fn
    if _renameat2_fn is _UNRESOLVED:
        _renameat2_fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
            except (OSError, AttributeError, ImportError):
                pass
    return _renameat2_fn


def _exchange(a, b) -> bool:
    """Atomically exchange the paths ``a`` and ``b`` (both must exist). False where the OS or the filesystem has no
    exchange (no ``renameat2``; ENOSYS / EINVAL / ENOTSUP): nothing was changed, the caller falls back to two
    renames. Any other failure raises :class:`OSError`."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def _holds_cwd(path) -> bool:
    """True when ``path`` is the process's current working directory or one of its ancestors."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the cwd is already gone
        return False
    path = os.path.realpath(path)
    try:
        return os.path.commonpath([cwd, path]) == path
    except ValueError:  # different drives (Windows)
        return False


def _leftover_prefixes(target) -> tuple[str, str]:
    """Name prefixes of :func:`atomic_save_dir`'s own temporary folders beside ``target``: (new folder, backup)."""
    name = os.path.basename(target)
    return f".{name}.saving-", f".{name}.old-"


_MKDTEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _is_mkdtemp_suffix(suffix: str) -> bool:
    """Exactly what ``tempfile.mkdtemp`` appends (8 characters of its alphabet): a hand-named ".model.old-v1" is not
    ours."""
    return len(suffix) == 8 and set(suffix) <= _MKDTEMP_CHARS


def _leftovers(folder, prefix, suffix_ok=_is_mkdtemp_suffix) -> list[str]:
    """Folders in ``folder`` named ``prefix`` + a suffix ``suffix_ok`` accepts (default: a ``tempfile.mkdtemp``
    suffix), not symlinks, not held by a running save; newest first."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.startswith(prefix) or not suffix_ok(entry[len(prefix):]):
            continue
        path = os.path.join(folder, entry)
        try:  # a concurrent save may remove its own folder at any moment
            if os.path.isdir(path) and not os.path.islink(path) and not _in_use(path):
                found.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(found, reverse=True)]


def _recover_leftovers(target) -> None:
    """Mend what an interrupted earlier save of ``target`` left: a missing ``target`` whose old folder is still at
    ``.NAME.old-*`` (killed between the two renames of the fallback swap) is renamed back; then the temporary
    folders are removed."""
    parent = os.path.dirname(target)
    saving, old = _leftover_prefixes(target)
    if not os.path.lexists(target):
        backups = _leftovers(parent, old)
        if backups:
            os.rename(backups[0], target)
    if os.path.isdir(target) or not os.path.lexists(target):
        for path in _leftovers(parent, saving) + _leftovers(parent, old):
            _remove_tree(path)
    for path in _nested_leftovers(parent, saving):
        _remove_tree(path)


def _nested_leftovers(folder, saving_prefix) -> list[str]:
    """Leftovers of a save nested in a save (``EENetTrainer._save`` → ``model.save_pretrained`` into the trainer's
    temporary folder ``.NAME.saving-XXXXXXXX`` saves beside it, as ``..NAME.saving-XXXXXXXX.saving-YYYYYYYY`` /
    ``.old-YYYYYYYY``) whose outer temporary folder is gone: the outer save was interrupted (its own leftover
    is removed first) and nothing can still be writing them."""

    def nested(suffix):
        outer, _, inner = suffix.partition(".")
        kind, _, own = inner.partition("-")
        return (_is_mkdtemp_suffix(outer) and kind in ("saving", "old") and _is_mkdtemp_suffix(own)
                and not os.path.lexists(os.path.join(folder, saving_prefix + outer)))  # else it may be running

    return _leftovers(folder, "." + saving_prefix, nested)


def _try_lock(path):
    """``(fd, busy)``: an exclusive non-blocking ``flock`` on the folder ``path`` (``fd`` holds it until closed or
    the process dies), or ``(None, True)`` when a running save holds it, ``(None, False)`` where no lock can be
    taken (no ``fcntl``, a filesystem without locks, ...)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        return None, isinstance(err, BlockingIOError)
    return fd, False


def _lock_folder(path):
    """A blocking exclusive ``flock`` on the folder ``path`` (its descriptor, released when closed), or None where
    no lock can be taken."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    return fd


def _hold(path):
    """Mark the folder ``path`` (a temporary folder of a running save) as in use: the lock's descriptor, or None."""
    return _try_lock(path)[0]


def _in_use(path) -> bool:
    """True when a running save holds ``path`` (see :func:`_hold`); where locks cannot be told, False."""
    fd, busy = _try_lock(path)
    if fd is not None:
        os.close(fd)
    return busy


def _save_inside(target, write, drop: tuple[str, ...] = (), replaces_weights: bool = True) -> None:
    """:func:`atomic_save_dir` when the folder cannot (or must not) be swapped: write into a hidden folder inside
    it, commit, then replace the files one by one (a journal, rolled forward when interrupted).

    The commit point is the manifest ``.saving-*/COMMIT_FILE`` (the entries to move in, and which of them are
    merged into rather than replaced; written atomically once ``write`` has finished): an interruption before it
    leaves the old folder as it was (the unfinished folder is removed by the next save); one after it, while the
    files move, is finished by the next save of the folder or the next ``from_pretrained`` of it
    (:func:`finish_interrupted_save`), which move the remaining entries in, so the folder becomes the complete new
    save rather than new weights beside the old config."""
    os.makedirs(target, exist_ok=True)
    guard = _lock_folder(target)  # clean-up, then create + mark the temporary folder, as one step among saves
    try:
        superseded = _finish_or_remove_inside(target)
        tmp = tempfile.mkdtemp(prefix=".saving-", dir=target)
        _HELD[tmp] = _hold(tmp)
    finally:
        if guard is not None:
            os.close(guard)
    pending = False  # committed, not all moved in: the folder stays for the next load or save to finish
    try:
        write(tmp)
        produced = sorted(os.listdir(tmp))
        mounted = _mounted_entries(tmp, target, produced)  # a save that cannot move in is refused before its commit
        _commit(tmp, produced, drop, replaces_weights, _merge_plan(tmp, target, produced, mounted))
        pending = True
        for path in superseded:  # committed saves that could not be finished: this one replaces their files
            _drop_leftover(path)
        _remove_finished_record(target)
        _replace_files(tmp, target, drop, replaces_weights, only=produced)
        pending = False
        os.remove(os.path.join(tmp, COMMIT_FILE))  # before the lock goes: a load never takes it for interrupted
    except BaseException as err:
        if pending and hasattr(err, "add_note"):
            err.add_note(f"hf_eenet: the save into {target} was committed; the next save of the folder or "
                         "from_pretrained of it finishes moving its files in (hf_eenet.bank.finish_interrupted_save)")
        raise
    finally:
        _release(tmp, target, moved_in=False)
        if not pending:
            shutil.rmtree(tmp, ignore_errors=True)


#: the manifest that commits a save inside a folder (:func:`_save_inside`): its entries are then moved in, by this
#: save or, when it was interrupted, by the next save or load of the folder
COMMIT_FILE = ".eenet-commit.json"
#: written by a finish (:func:`finish_interrupted_save`): the config.json the folder held before it and the one it
#: installed, so a loader that read the config before another process finished can tell its stale values from its
#: own changes (while config.json is still the installed one; removed by the next save)
FINISHED_FILE = ".eenet-finished.json"
#: names of what saves leave in a folder while they run or when they were interrupted (temporary folders beside a
#: saved sub-folder, a save's journal inside the folder, its record), for uploads to skip at any depth
SAVE_LEFTOVER_PATTERNS = tuple(f"{d}{p}" for p in (".*.saving-*", ".*.old-*", ".*.moving-*", ".saving-*", ".eenet-*")
                               for d in ("", "*/"))


def recover_leftovers_in(folder) -> list[str]:
    """Mend what interrupted saves of ``folder``'s sub-folders left in it (``.NAME.saving-*`` / ``.NAME.old-*``, e.g.
    of a checkpoint killed while it was written; see :func:`atomic_save_dir`) before the folder is uploaded as a whole:
    a sub-folder whose old copy is still set aside is renamed back, the temporary folders are removed (never those
    of a running save). Returns the names of the sub-folders it found leftovers of."""
    folder = os.path.realpath(os.path.abspath(os.fspath(folder)))
    if not os.path.isdir(folder):
        return []
    names = set()
    for entry in os.listdir(folder):
        for kind in (".saving-", ".old-"):
            head, sep, suffix = entry[1:].rpartition(kind)
            if entry.startswith(".") and sep and head and not head.startswith(".") and _is_mkdtemp_suffix(suffix):
                names.add(head)  # (a nested save's leftovers are its outer save's, mended with it)
    if not names:
        return []
    guard = _lock_folder(folder)
    try:
        for name in sorted(names):
            _recover_leftovers(os.path.join(folder, name))
    finally:
        if guard is not None:
            os.close(guard)
    return sorted(names)


def _merges(src, dst, mounted: bool) -> bool:
    """Whether the folder entry ``src`` is merged into ``dst`` rather than replacing it: both folders, and ``dst``
    holds the process's cwd or is or holds a mount point (replacing it would delete the cwd or fail halfway)."""
    return (os.path.isdir(src) and not os.path.islink(src) and os.path.isdir(dst) and not os.path.islink(dst)
            and (mounted or _holds_cwd(dst)))


def _merge_plan(src_dir, target, entries, mounted) -> dict[str, list[str]]:
    """The folders :func:`_replace_files` will merge into (at any depth, as ``a/b`` paths) → the entries the save
    put in each: what a finish needs to resume a merge (merge again, never replace; drop stale weights as the save
    would have)."""
    plan = {}
    for entry in entries:
        src, dst = os.path.join(src_dir, entry), os.path.join(target, entry)
        if _merges(src, dst, entry in mounted):
            names = sorted(os.listdir(src))
            plan[entry] = names
            inner = _merge_plan(src, dst, names, _mounted_entries(src, dst, names))
            plan.update({f"{entry}/{k}": v for k, v in inner.items()})
    return plan


def _commit(tmp, entries: list[str], drop: tuple[str, ...], replaces_weights: bool, merged=None) -> None:
    """Write the commit manifest of ``tmp`` atomically (a complete file or none, flushed to disk first)."""
    body = json.dumps({"entries": list(entries), "drop": list(drop), "replaces_weights": bool(replaces_weights),
                       "merged": dict(merged or {}), "committed_ns": time.time_ns()})  # orders commits (not mtimes)
    _write_atomically(os.path.join(tmp, COMMIT_FILE), body)


def _write_atomically(path, text: str) -> None:
    part = path + ".part"
    with open(part, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def _remove_finished_record(target) -> None:
    try:
        os.remove(os.path.join(target, FINISHED_FILE))
    except OSError:
        pass


def _read_manifest(path):
    """``(entries, manifest)`` of the leftover ``path``, or None without a readable manifest (still writing)."""
    try:
        with open(os.path.join(path, COMMIT_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
        entries = [e for e in manifest["entries"] if isinstance(e, str) and e not in ("", ".", "..")
                   and os.sep not in e and e != COMMIT_FILE]
        merged = manifest.get("merged") or {}
        if not isinstance(merged, dict):  # an older manifest listed top-level names only
            merged = {e: None for e in merged}
        manifest["merged"] = {k: v for k, v in merged.items() if isinstance(k, str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return entries, manifest


def _finish_one(path, target, entries, manifest) -> None:
    """Finish the committed save in the leftover folder ``path`` inside ``target``: move in the manifest's entries
    still there (weights first, ``config.json`` last, as the save would have; a folder it merged into is merged
    again, so what the interrupted merge had moved in stays), drop stale weights as it would have, remove the old
    versions of replaced folders it had set aside, record the config.json it replaced (``FINISHED_FILE``), then
    remove the leftover."""
    remaining = [e for e in entries if os.path.lexists(os.path.join(path, e))]
    old_config = None
    if "config.json" in remaining:
        try:
            with open(os.path.join(target, "config.json"), encoding="utf-8") as f:
                old_config = f.read()
        except OSError:
            pass
    # the flag as stored, or set where the save wrote weights: f77e04d stored False for a save that wrote only another
    # variant's files (saves of something else, replaces_weights=False, write no weight files)
    replaces = bool(manifest.get("replaces_weights", True)) or any(_weight_variant(e) is not None for e in entries)
    _replace_files(path, target, tuple(manifest.get("drop") or ()), replaces,
                   only=remaining, keep=entries, merge=manifest["merged"], resume=True)
    folders = {"": entries, **{k: v for k, v in manifest["merged"].items() if isinstance(v, list)}}
    for folder, names in folders.items():  # old versions of replaced folders, set aside by the interrupted moves
        for entry in names:
            for aside in _leftovers(os.path.join(target, folder) if folder else target, f".{entry}.old-"):
                _remove_tree(aside)
    if old_config is not None:
        try:
            with open(os.path.join(target, "config.json"), encoding="utf-8") as f:
                installed = f.read()
            _write_atomically(os.path.join(target, FINISHED_FILE),
                              json.dumps({"old_config": old_config, "config": installed, "finished_at": time.time(),
                                          "by": [socket.gethostname(), os.getpid()]}))
        except OSError:
            pass
    _drop_leftover(path)


def _committed_newest_first(target) -> list[tuple[str, list[str], dict]]:
    """The committed leftovers inside ``target`` as ``(path, entries, manifest)``, newest commit first (by the
    commit's own time; folder mtimes change as files move and tie on coarse filesystems)."""
    found = []
    for path in _leftovers(target, ".saving-"):
        read = _read_manifest(path)
        if read is not None:
            found.append((path, *read))

    def when(item):
        ns = item[2].get("committed_ns")
        return (ns, item[0]) if isinstance(ns, int) else (0, item[0])

    return sorted(found, key=when, reverse=True)


def _drop_leftover(path) -> None:
    """Remove a leftover temporary folder, its commit first: a removal cut short never leaves a half-deleted save
    that a later finish would take for one to complete."""
    try:
        os.remove(os.path.join(path, COMMIT_FILE))
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _finish_or_remove_inside(target) -> list[str]:
    """Leftovers of interrupted saves inside ``target`` (the caller, a save, holds the folder lock): the newest
    committed one is finished (it supersedes older commits, which are removed with the uncommitted ones); nested
    leftovers removed. Returns the committed one when it could not be finished (a warning says so): kept until the
    running save has committed, so its failure before that still leaves it to finish."""
    committed = _committed_newest_first(target)
    keep = []
    if committed:
        path, entries, manifest = committed[0]
        try:
            _finish_one(path, target, entries, manifest)
        except OSError as err:
            warnings.warn(f"an interrupted save into {target} could not be finished ({err}); the save now running "
                          "replaces its files", RuntimeWarning, stacklevel=3)
            keep = [path]
    for path in _leftovers(target, ".saving-"):
        if path not in keep:
            _drop_leftover(path)
    for path in _nested_leftovers(target, ".saving-"):
        shutil.rmtree(path, ignore_errors=True)
    return keep


def finish_interrupted_save(folder, force: bool = False) -> bool:
    """Finish a save into ``folder`` that was interrupted after its commit point (:func:`_save_inside`: a save into
    the working directory or a mount point moves its files in one by one): the newest committed save is finished
    (older commits are obsolete and removed). Returns True when files were moved in (the folder now holds that
    save, complete), False when there was nothing to finish. Temporary folders of saves that had not committed are
    left to the next save (another process may still be writing one: only a save removes them); a running save's
    folder is never touched (it is locked). Where no file lock can be taken (no ``fcntl``, a filesystem without
    ``flock``) a running save cannot be told from an interrupted one: nothing is done (a warning says so) unless
    ``force=True`` (you know no save of the folder is running); the next save finishes it either way.
    ``from_pretrained`` of an hf_eenet model calls this first."""
    folder = os.path.realpath(os.fspath(folder))
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    if not any(e.startswith(".saving-") and os.path.isfile(os.path.join(folder, e, COMMIT_FILE)) for e in names):
        return False
    guard = _lock_folder(folder)
    if guard is None and not force:
        warnings.warn(f"{folder} holds a committed save that was interrupted while its files moved in, but no file "
                      "lock can be taken here to tell it from a save still running, so it is not finished: save the "
                      "folder again, or call hf_eenet.bank.finish_interrupted_save(folder, force=True) when no save "
                      "of it is running", RuntimeWarning, stacklevel=2)
        return False
    try:
        committed = _committed_newest_first(folder)
        if not committed:
            return False
        (newest, entries, manifest), older = committed[0], committed[1:]
        _finish_one(newest, folder, entries, manifest)
        for path, _, _ in older:  # superseded by the newest commit
            _drop_leftover(path)
        return True
    finally:
        if guard is not None:
            os.close(guard)


def read_finished_record(folder) -> tuple[str, str, float, bool] | None:
    """``(replaced config.json text, installed config.json text, time.time() of the finish, whether this process
    made it)`` of the last finish in ``folder`` (see ``FINISHED_FILE``) while the folder's config.json is still the
    one it installed; else None."""
    try:
        with open(os.path.join(os.fspath(folder), FINISHED_FILE), encoding="utf-8") as f:
            record = json.load(f)
        with open(os.path.join(os.fspath(folder), "config.json"), encoding="utf-8") as f:
            current = f.read()
        old, installed, when = record["old_config"], record["config"], float(record.get("finished_at", 0.0))
        mine = list(record.get("by") or []) == [socket.gethostname(), os.getpid()]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (old, installed, when, mine) if isinstance(old, str) and installed == current else None


def _mounted_entries(src_dir, target, entries) -> set[str]:
    """The ``entries`` of ``target`` that are or hold a mount point (they cannot be renamed: merged into or
    rewritten in place); OSError (EBUSY) when one would have to change between a file and a folder."""
    mounted = {e for e in entries if os.path.lexists(os.path.join(target, e))  # (a symlink is replaced as a link)
               and not os.path.islink(os.path.join(target, e)) and _mounts_at_or_below(os.path.join(target, e))}
    for entry in mounted:
        if os.path.isdir(os.path.join(src_dir, entry)) != os.path.isdir(os.path.join(target, entry)):
            raise OSError(errno.EBUSY, "a mount point cannot change from a file to a folder or back",
                          os.path.join(target, entry))
    return mounted


def _replace_files(src_dir, target, drop: tuple[str, ...] = (), replaces_weights: bool = True,
                   only=None, keep=None, merge=None, resume: bool = False) -> None:
    """Move every entry of ``src_dir`` (``only``: those of them) into ``target`` (weights first, ``config.json``
    last), then drop weight files of ``target`` the new save did not produce (``keep``: the entries it produced,
    when some were moved in before). ``merge`` (a finish resuming a save, ``resume``): the folders the save merged
    into, as ``a/b`` paths → the entries it put in each (``_merge_plan``): merged again, never replaced. An entry replacing a folder, or a
    folder replacing a file, sets the old one aside until the new one is in place (put back if the move fails). A
    sub-folder holding the process's cwd, or one that is or holds a mount point, is merged into, not replaced
    (replacing it would delete the cwd, or fail on the mount halfway); a file mount is rewritten in place."""
    produced = [e for e in os.listdir(src_dir) if only is None or e in only]
    order = sorted(produced, key=lambda e: (_weight_variant(e) is None, e == "config.json", e))
    mounted = _mounted_entries(src_dir, target, order)  # checked before anything moves
    merge = merge or {}
    for entry in order:
        src, dst = os.path.join(src_dir, entry), os.path.join(target, entry)
        src_dir_entry = os.path.isdir(src) and not os.path.islink(src)
        dst_dir_entry = os.path.isdir(dst) and not os.path.islink(dst)
        if dst_dir_entry and src_dir_entry and (_holds_cwd(dst) or entry in mounted or entry in merge):
            inner = {k[len(entry) + 1:]: v for k, v in merge.items() if k.startswith(entry + "/")}
            _replace_files(src, dst, (), replaces_weights, keep=merge.get(entry), merge=inner,
                           resume=resume)  # merged into, not replaced
            continue
        if entry in mounted:  # a file mount: rewritten in place
            shutil.copyfile(src, dst)
            continue
        if os.path.lexists(dst) and (dst_dir_entry or src_dir_entry):
            aside = tempfile.mkdtemp(prefix=f".{entry}.old-", dir=target)
            os.rmdir(aside)
            os.rename(dst, aside)
            try:
                _move_into(src, dst)
            except BaseException:
                os.rename(aside, dst)
                raise
            _remove_tree(aside)
            continue
        _move_into(src, dst)
    if resume and keep is None:  # a merge recorded by an older manifest: what moved in before is not known
        return
    kept = set(produced if keep is None else keep)  # a finished save keeps all it wrote, moved in before or now
    replaced = _replaced_variants(kept, replaces_weights)  # (recomputed on a finish: manifests store the flag)
    for entry in os.listdir(target):
        if (_weight_variant(entry) in replaced or entry in drop) and entry not in kept:
            os.remove(os.path.join(target, entry))


def _mount_points() -> set[str]:
    """Every mount point of this process (Linux ``/proc/self/mountinfo``; bind mounts of one filesystem included,
    which ``os.path.ismount`` misses), or an empty set elsewhere."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return _parse_mountinfo(f.read())
    except OSError:
        return set()


def _parse_mountinfo(text: str) -> set[str]:
    """The mount points (5th field, octal escapes such as ``\\040`` for a space decoded) of mountinfo ``text``."""
    fields = [line.split() for line in text.splitlines()]
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4]) for f in fields if len(f) > 4}


def _mounts_at_or_below(path) -> bool:
    """``path`` is a mount point or holds one (a volume mounted inside it): such a folder is never swapped (the
    mounts would move with the old folder) but saved into from inside."""
    path = os.path.realpath(path)
    if os.path.ismount(path):
        return True
    return any((m == path or m.startswith(path + os.sep)) and os.path.lexists(m) for m in _mount_points())


def _remove_tree(path) -> None:
    """``shutil.rmtree`` that never descends into a mount point (a volume mounted inside a removed folder keeps its
    files; its mount point directory stays). Errors are ignored, as the clean-ups that call it do."""
    if os.path.islink(path) or not os.path.isdir(path):
        if os.path.lexists(path):
            try:
                os.remove(path)
            except OSError:
                pass
        return
    top = os.path.realpath(path)
    mounts = {m for m in _mount_points() if m.startswith(top + os.sep)}
    mounts |= {os.path.join(root, d) for root, dirs, _ in os.walk(top) for d in dirs
               if os.path.ismount(os.path.join(root, d))}
    if not mounts:
        shutil.rmtree(top, ignore_errors=True)
        return
    for root, dirs, files in os.walk(top, topdown=True):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in mounts]  # never into a mount
        for name in files:
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass
    for root, dirs, _ in os.walk(top, topdown=False):
        if any(root == m or root.startswith(m + os.sep) for m in mounts):
            continue
        for name in dirs:
            full = os.path.join(root, name)
            if full in mounts:
                continue
            try:
                os.remove(full) if os.path.islink(full) else os.rmdir(full)
            except OSError:
                pass
    try:
        os.rmdir(top)
    except OSError:
        pass


def _move_into(src, dst) -> None:
    """``os.replace(src, dst)``; where ``src`` lies on another filesystem or mount (EXDEV: a mount point's folder and
    a temporary folder beside it), a copy staged beside ``dst`` is renamed over it instead."""
    try:
        os.replace(src, dst)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    staged = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.moving-", dir=os.path.dirname(dst))
    os.rmdir(staged)
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, staged, symlinks=True)
        else:
            shutil.copy2(src, staged, follow_symlinks=False)
        os.replace(staged, dst)
    except BaseException:  # the copy did not finish: remove it, dst is as it was
        if os.path.isdir(staged) and not os.path.islink(staged):
            shutil.rmtree(staged, ignore_errors=True)
        elif os.path.lexists(staged):
            os.remove(staged)
        raise


def _link_or_copy(src, dst):
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return dst
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


__all__ = [
    "EXIT_READS",
    "exit_reads",
    "exit_reads_reason",
    "BankIntegrityError",
    "SchedulerBank",
    "data_fingerprint",
    "state_digest",
    "SAVE_LEFTOVER_PATTERNS",
    "recover_leftovers_in",
    "make_record",
    "weights_digest",
    "stale_bank_reason",
    "seed_weights_check",
    "note_weight_change",
    "scheduler_config_json",
    "same_scheduler_config",
    "check_scheduler",
    "check_entry",
    "verify_bank",
    "check_loading_info",
    "atomic_save_dir",
    "finish_interrupted_save",
    "read_finished_record",
]
