"""§7 of docs/method.md: online decisions (``init_state`` / ``decide``) and the offline ``exit_index`` built on them.

A row exits at the first exit k with q^_{n,k} >= t_k (eq. 7.1) and predicts argmax p_{n,k}. ``decide`` is the whole
hot path: float32, vectorised over the rows, no host synchronisation (no ``.item()``, no Python per-row work, no
float64 round trip). Thresholds are float32 midpoints between two fitting scores (deviation D8), and the fitting code
computes its scores with the very same :meth:`_InferenceMixin._step`, so ``exit_index`` and the online loop take the
same exits for every row at every batch size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .policies import ExitPolicy, _as_probs_tensor
from .scheduler_config import FEATURE_SETS
from .scheduler_features import exit_features, init_feature_state


class _InferenceMixin:
    """Decision-time methods of :class:`~hf_eenet.scheduler.EENetScheduler` (needs its heads and buffers)."""

    # ------------------------------------------------------------------ §4 heads, one exit
    def _step(self, exit_idx: int, probs: torch.Tensor, state: dict[str, torch.Tensor]):
        """One exit for the rows of ``state``: (raw utility q^_k [b] float32, state updates).

        eq. 4.1  q^_{n,k} = w_k^T x_{n,k}       eq. 4.2  q_{n,k} = clamp(q^_{n,k}, 0, 1)  (stored for later exits)
        """
        p = probs.to(torch.float32)
        x, updates = exit_features(exit_idx, p, state, self.features)
        q_state = state["q"]
        if exit_idx:
            x = torch.cat([x, q_state[:, :exit_idx]], -1)
        q_hat = (x * self.utility[exit_idx].weight[0].to(p.device)).sum(-1)  # eq. 4.1 (weights are float32, see _build)
        q_new = q_state.clone()
        q_new[:, exit_idx] = q_hat.clamp(0.0, 1.0)  # eq. 4.2, deviation D4: the clamped q feeds later exits
        updates["q"] = q_new
        return q_hat, updates

    def _assign_logit(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """eq. 4.3 r_{n,k} = MLP_k(x_{n,k}) (unbounded, deviation D1)."""
        lin1, _, lin2 = self.assign[k]
        h = torch.sigmoid(F.linear(x, lin1.weight, lin1.bias))
        return F.linear(h, lin2.weight, lin2.bias).squeeze(-1)

    # ------------------------------------------------------------------ ExitPolicy interface (§7)
    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per-row state, a dict of batch-first tensors: ``q`` [b, K] float32 (clamped scores of the exits passed),
        and with agreement features ``votes`` [b, C] float32 and ``prev`` [b] int64 (see ``scheduler_features.py``).
        No host sync once the scheduler is known fitted (the cached flag, as in ``decide``)."""
        if not self._fitted_flag:
            self._check_fitted()
        return init_feature_state(int(batch_size), self.num_exits, self.num_classes, self.features, device)

    @torch.no_grad()
    def decide(self, exit_idx: int, probs: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """eq. 7.1: rows of exit ``exit_idx`` (0-based) that stop, ``[b]`` bool. Updates ``state`` (new tensors, the
        old ones are not modified). Shape checks read metadata only; nothing here waits for the device."""
        if not self._fitted_flag:
            self._check_fitted()
        if isinstance(exit_idx, bool) or not isinstance(exit_idx, int) or not 0 <= exit_idx < self.num_exits:
            raise ValueError(f"exit_idx must be an int in [0, {self.num_exits - 1}], got {exit_idx!r}")
        if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[1] != self.num_classes:
            shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise ValueError(f"probs must be a [b, {self.num_classes}] tensor of softmax outputs, got {shape}")
        b = probs.shape[0]
        for key, tail in self._state_shapes().items():
            if key not in state or tuple(state[key].shape) != (b, *tail):
                raise ValueError(f"state['{key}'] must have shape {[b, *tail]}: use init_state()")
        q_hat, updates = self._step(exit_idx, probs, state)
        state.update(updates)
        return q_hat >= self.exit_thresholds[exit_idx].to(q_hat.device)

    def _state_shapes(self) -> dict[str, tuple]:
        shapes = {"q": (self.num_exits,)}
        if FEATURE_SETS[self.features]:
            shapes.update(votes=(self.num_classes,), prev=())
        return shapes

    def exit_index(self, exit_probs) -> torch.Tensor:
        """Offline decisions on all-exits outputs ``[N, K, C]`` -> ``[N]`` 0-based exits (same ``decide`` calls)."""
        self._check_fitted()
        return ExitPolicy.exit_index(self, exit_probs)

    @torch.no_grad()
    def _raw_scores(self, probs: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` raw q^ of every exit for every row (the online steps with batch N, all rows at all exits)."""
        n, k_total, _ = probs.shape
        state = init_feature_state(n, k_total, self.num_classes, self.features, probs.device)
        out = []
        for k in range(k_total):
            q_hat, upd = self._step(k, probs[:, k].contiguous(), state)
            state.update(upd)
            out.append(q_hat)
        return torch.stack(out, 1)

    def utility_scores(self, exit_probs, *, raw: bool = False) -> torch.Tensor:
        """``[N, K]`` clamped utility scores q (``raw=True``: unclamped q^, the scale of ``thresholds``), float32."""
        self._check_fitted()
        q_hat = self._raw_scores(self._check_probs(exit_probs))
        return q_hat if raw else q_hat.clamp(0.0, 1.0)

    @torch.no_grad()
    def assignment(self, exit_probs) -> torch.Tensor:
        """``[N, K]`` exit distribution pi = softmax_k(r) of the assignment heads (eq. 4.3)."""
        self._check_fitted()
        probs = self._check_probs(exit_probs)
        xs = self._inputs(probs)
        return torch.softmax(self._forward(xs, with_assign=True)[2], -1)

    def _check_probs(self, exit_probs) -> torch.Tensor:
        probs = _as_probs_tensor(exit_probs)
        self.check_num_exits(probs.shape[1])
        if self.num_classes is not None and probs.shape[2] != self.num_classes:
            raise ValueError(
                f"exit_probs has {probs.shape[2]} classes but the scheduler was built for {self.num_classes}"
            )
        return probs


__all__: list[str] = []
