"""Weight events: how a served model learns, cheaply, that its weights may have changed in this process where the
tensors' own version counters do not see it, and whether they did.

Two things keep a model's derived state (its scheduler bank's weights check, its packed CPU weights) honest between
the full checks:

* **Events** — a process-wide count of what may change some model's weights: every optimizer step (a global
  optimizer hook) and every ``load_state_dict`` of our models (:func:`note_weight_change`). A fused optimizer or a
  ``.data`` write leaves a tensor's identity, storage and version counter as they were, so the hook also records
  which tensors each step held (:func:`stepped_since`, exact for a model's own parameters).
* **A sample** of a model's weights (:func:`weight_sample`): the bytes of every element of a small tensor and, in a
  larger one, of one element in every row, one in every column and :data:`SAMPLE_SIZE` random ones. After an event
  that did not step a model's own parameters (another model's step, a step over fp32 master copies — plain tensors or
  ``nn.Parameter`` — whose values a framework then writes into the model through ``.data``, as DeepSpeed ZeRO-1/2
  does; a plain-tensor optimisation such as temperature scaling), the model compares its sample instead of digesting
  every weight, and digests them when it moved. A training step moves whole rows and columns (a dense gradient, or
  the rows of the tokens a sparse one touched), so it moves sampled elements; an unrelated step costs each model one
  sample (a few milliseconds for BERT-base on one CPU thread) at its next request.

What neither sees: an edit with no event (an in-place ``.data`` edit in eval mode: EMA, pruning, surgery), an edit of
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
from torch.optim.optimizer import register_optimizer_step_post_hook

_LOCK = threading.Lock()
_EVENTS = [0]  # the event count; published only after the records of its step are written
#: id(tensor) -> (the event count of the last optimizer step that held it, a weak reference to that tensor: an id
#: reused by another tensor after the first one died is not mistaken for it)
_STEPPED: dict[int, tuple[int, weakref.ref]] = {}
_PRUNE_AT = [1 << 14]  # entries of dead tensors are dropped when the record grows past this
FULL_SIZE = 4096  # tensors up to this many elements are sampled whole
SAMPLE_SIZE = 64  # random positions sampled in a larger tensor, besides one per row and one per column
_POSITIONS: dict[tuple[tuple, str], torch.Tensor] = {}  # (shape, device) -> the sampled flat positions


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


def stepped_since(tensors, since: int) -> bool:
    """Whether an optimizer step after event ``since`` held any of ``tensors`` (these very tensor objects)."""
    for t in tensors:
        record = _STEPPED.get(id(t))
        if record is not None and record[0] > since and record[1]() is t:
            return True
    return False


def _positions(shape: tuple, device: torch.device) -> torch.Tensor:
    """The flat positions sampled in a tensor of ``shape`` larger than :data:`FULL_SIZE` elements (smaller ones are read
    whole), built once per shape and device, O(rows + columns).

    The tensor is seen as ``[rows, columns]`` (its first dimension by the rest; a vector as one row): one position in
    every row and one in every column, each in another column / row (spread by a multiplicative hash, no stride to
    alias with the layout), plus :data:`SAMPLE_SIZE` seeded random ones. So an update of whole rows (new token
    embeddings, an output neuron) or whole columns (an input feature pruned) is always seen, and an update of many
    scattered elements with near certainty."""
    key = (shape, str(device))
    idx = _POSITIONS.get(key)
    if idx is None:
        numel = math.prod(shape)
        rows = shape[0] if len(shape) > 1 else 1
        cols = numel // rows
        r, c = torch.arange(rows), torch.arange(cols)
        gen = torch.Generator().manual_seed(numel)
        idx = torch.cat([r * cols + (r * 40503 + 7) % cols,  # every row, in a spread column
                         ((c * 40503 + 11) % rows) * cols + c,  # every column, in a spread row
                         torch.randint(numel, (SAMPLE_SIZE,), generator=gen)]).sort().values  # in memory order
        idx = _POSITIONS.setdefault(key, idx.to(device))
    return idx


def weight_sample(tensors) -> tuple[torch.Tensor, ...]:
    """The bytes of the positions :func:`_positions` picks in each tensor, one ``uint8`` tensor per device (compare
    with :func:`same_sample`). Raises where a tensor's bytes cannot be read (a quantised tensor): the caller then takes
    its full check."""
    per_device: dict[str, list[torch.Tensor]] = {}
    for t in tensors:
        t = t.detach()
        if not t.numel():
            continue
        flat = t.reshape(-1)
        part = flat if flat.numel() <= FULL_SIZE else flat.index_select(0, _positions(tuple(t.shape), flat.device))
        per_device.setdefault(str(flat.device), []).append(part.view(torch.uint8).reshape(-1))
    return tuple(torch.cat(parts) for _, parts in sorted(per_device.items()))


def same_sample(a, b) -> bool:
    """Whether two :func:`weight_sample` results are byte for byte equal."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x.shape == y.shape and x.device == y.device and torch.equal(x, y) for x, y in zip(a, b)))


__all__ = ["events", "note_weight_change", "same_sample", "stepped_since", "weight_sample"]
