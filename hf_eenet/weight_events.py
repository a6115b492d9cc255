"""Weight events: how a served model learns, cheaply, that its weights may have changed in this process where the
tensors' own version counters do not see it, and whether they did.

Two things keep a model's derived state (its scheduler bank's weights check, its packed CPU weights) honest between
the full checks:

* **Events** — a process-wide count of what may change some model's weights: every optimizer step (a global
  optimizer hook), every ``load_state_dict`` of our models (:func:`note_weight_change`) and every module, parameter
  or buffer set on any module (torch's global registration hooks, :func:`note_registration`: a swapped exit head,
  ``torch.ao.quantization.quantize_dynamic(..., inplace=True)``, ``module.weight = nn.Parameter(...)``). A fused
  optimizer or a
  ``.data`` write leaves a tensor's identity, storage and version counter as they were, so the hook also records
  which tensors each step held (:func:`stepped_since`, exact for a model's own parameters).
* **A sample** of a model's weights (:func:`weight_sample`): the bytes of every element of a small tensor or a vector
  and, in a larger matrix, of one element in every row, one in every column and :data:`SAMPLE_SIZE` random ones. After an event
  that did not step a model's own parameters (another model's step, a step over fp32 master copies — plain tensors or
  ``nn.Parameter`` — whose values a framework then writes into the model through ``.data``, as DeepSpeed ZeRO-1/2
  does; a plain-tensor optimisation such as temperature scaling), the model compares its sample instead of digesting
  every weight, and digests them when it moved. A training step moves whole rows and columns (a dense gradient, or
  the rows of the tokens a sparse one touched), so it moves sampled elements; an unrelated step costs each model one
  sample at its next request (milliseconds where a digest takes hundreds: ``benchmarks/bench_weights_check.py``).

In-place edits of a tensor itself (``copy_`` / ``nn.init`` under ``no_grad``) move its version counter, which a served
model compares at every request (:func:`version_total`).

What none of these sees: an edit with no event (an in-place ``.data`` edit in eval mode: EMA, pruning, surgery), an edit of
a few scattered elements followed by an unrelated event (they may all lie outside the sample), and a write-back that
lands after the event and after a concurrent request already compared its sample (a framework that copies master
values into the model after ``optimizer.step()`` returns, while another thread serves the model); the full checks
(save, load, ``verify_scheduler_bank``, ``use_fused_cpu_layers()``) see them all.

This module is copied next to the model code by ``save_pretrained`` (Hub remote code): relative imports only.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.optim.optimizer import register_optimizer_step_post_hook

_LOCK = threading.Lock()
_EVENTS = [0]  # the event count; published only after the records of its step are written
#: id(tensor) -> (the event count of the last optimizer step that held it, a weak reference to that tensor: an id
#: reused by another tensor after the first one died is not mistaken for it)
_STEPPED: dict[int, tuple[int, weakref.ref]] = {}
_PRUNE_AT = [1 << 14]  # entries of dead tensors are dropped when the record grows past this
FULL_SIZE = 4096  # tensors up to this many elements are sampled whole
SAMPLE_SIZE = 64  # random positions sampled in a larger tensor, besides one per row and one per column
_POSITIONS: dict[tuple[int, int, str], tuple[torch.Tensor, ...]] = {}  # (rows, cols, device) -> positions


def events() -> int:
    """The number of weight events so far in this process."""
    return _EVENTS[0]


def note_weight_change(optimizer=None, *_args, **_kwargs) -> None:
    """Count an event that may have changed some model's weights; an optimizer step (this is also the global optimizer
    step hook) records the tensors it held. The records are written before the count is published, so a reader that
    sees the new count sees what the step held."""
    held = [p for group in getattr(optimizer, "param_groups", None) or [] for p in group.get("params", ())]
    with _LOCK:
        n = _EVENTS[0] + 1
        for p in held:
            _STEPPED[id(p)] = (n, weakref.ref(p))
        _EVENTS[0] = n
        if len(_STEPPED) > _PRUNE_AT[0]:
            for key in [k for k, (_, ref) in _STEPPED.items() if ref() is None]:
                del _STEPPED[key]
            _PRUNE_AT[0] = max(1 << 14, 2 * len(_STEPPED))


register_optimizer_step_post_hook(note_weight_change)  # a lock, a counter and one dict write per tensor per step


def note_registration(*_args) -> None:
    """Count an event: a module, parameter or buffer was set on some module (torch's global registration hooks; the
    identity of some model's weights may have changed). Returns ``None``: what is registered is kept as it is."""
    with _LOCK:
        _EVENTS[0] += 1


# a lock and a counter per registration (a model's construction makes a few hundred; a request none)
register_module_module_registration_hook(note_registration)
register_module_parameter_registration_hook(note_registration)
register_module_buffer_registration_hook(note_registration)


def version_total(tensors) -> int:
    """The sum of the tensors' in-place version counters (inference tensors, which have none, left out): counters
    only grow, so any in-place write to one of them (``copy_``, ``fill_``, ``nn.init`` under ``no_grad``) changes
    the sum. About 0.1 us a tensor."""
    return sum(t._version for t in tensors)


def stepped_since(tensors, since: int) -> bool:
    """Whether an optimizer step after event ``since`` held any of ``tensors`` (these very tensor objects)."""
    for t in tensors:
        record = _STEPPED.get(id(t))
        if record is not None and record[0] > since and record[1]() is t:
            return True
    return False


def _positions(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(row, column, row * cols + column)`` positions sampled in a ``[rows, columns]`` matrix (built once per
    shape and device, O(rows + columns)): one in every row (on a diagonal at a seeded shift: a constant stride, which
    the CPU prefetches), one in every column (one seeded row, read contiguously) and :data:`SAMPLE_SIZE` seeded random
    ones.
    So an update of whole rows (new token embeddings, an output neuron) or whole columns (an input feature pruned) is
    always seen, and an update of many scattered elements with near certainty."""
    key = (rows, cols, str(device))
    pos = _POSITIONS.get(key)
    if pos is None:
        gen = torch.Generator().manual_seed(rows * 1_000_003 + cols)
        r, c = torch.arange(rows), torch.arange(cols)
        shift, row = (int(x) for x in torch.randint(1 << 30, (2,), generator=gen))
        at_col = (r + shift) % cols  # row r's element: a diagonal over the columns (a constant stride: prefetched)
        at_row = torch.full_like(c, row % rows)  # column c's element: one whole row (contiguous)
        extra_r = torch.randint(rows, (SAMPLE_SIZE,), generator=gen)
        extra_c = torch.randint(cols, (SAMPLE_SIZE,), generator=gen)
        rr, cc = torch.cat([r, at_row, extra_r]), torch.cat([at_col, c, extra_c])
        flat = rr * cols + cc
        order = flat.argsort()  # in memory order (faster to read)
        pos = tuple(x[order].to(device) for x in (rr, cc, flat))
        pos = _POSITIONS.setdefault(key, pos)
    return pos


def _sampled(t: torch.Tensor) -> torch.Tensor:
    """The elements of one tensor that :func:`weight_sample` keeps (possibly a view: the caller copies)."""
    if t.is_quantized or t.layout != torch.strided:
        raise TypeError(f"cannot sample a {t.layout} / {t.dtype} tensor's bytes")
    rows = math.prod(t.shape[:-1]) if t.dim() > 1 else 1
    cols = t.numel() // rows
    if t.numel() <= FULL_SIZE or rows == 1 or cols == 1:  # small, or a vector: read whole
        return t.reshape(-1)
    r, c, flat = _positions(rows, cols, t.device)
    if t.is_contiguous():
        return t.view(-1).index_select(0, flat)
    return t.reshape(rows, cols)[r, c]  # a view for 2-D weights whatever their strides (transposed, tied): no copy


def weight_sample(tensors) -> tuple[torch.Tensor, ...]:
    """The bytes of every element of a tensor of at most :data:`FULL_SIZE` elements or of a vector, and of the
    positions :func:`_positions` picks in a larger tensor seen as ``[rows, last dimension]``; one ``uint8`` tensor per
    device (compare with :func:`same_sample`). Raises where a tensor's bytes cannot be read (a quantised or sparse
    tensor): the caller then takes its full check."""
    per_device: dict[str, list[torch.Tensor]] = {}
    for t in tensors:
        t = t.detach()
        if not t.numel():
            continue
        per_device.setdefault(str(t.device), []).append(_sampled(t).view(torch.uint8).reshape(-1))
    return tuple(torch.cat(parts) for _, parts in sorted(per_device.items()))


def same_sample(a, b) -> bool:
    """Whether two :func:`weight_sample` results are byte for byte equal."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x.shape == y.shape and x.device == y.device and torch.equal(x, y) for x, y in zip(a, b)))


__all__ = ["events", "note_registration", "note_weight_change", "same_sample", "stepped_since", "version_total",
           "weight_sample"]
