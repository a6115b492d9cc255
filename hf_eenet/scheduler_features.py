"""§3 of docs/method.md: the per-exit features the utility and assignment heads read, computed online.

Notation: exit k (0-based in code, 1-based in the equations), p_{n,k} = softmax of exit k, a_{n,k} = argmax_c p_{n,k}.

    x_{n,k} = [ p_{n,k} (C),  m_{n,k},  h_{n,k},  (v_{n,k},  g_{n,k}),  q_{n,1..k-1} ]                  (eq. 3.1)

    m_{n,k} = max_c p_{n,k}                                       max prob (MSDNet's score)
    h_{n,k} = -sum_c p_{n,k,c} log p_{n,k,c}                      entropy (BranchyNet's score; the entropy confidence
                                                                  conf = 1 - h / log C is the same feature for a linear
                                                                  head, whose p part absorbs the constant, sum_c p = 1)
    v_{n,k} = sum_{j<k} 1[a_{n,j} = a_{n,k}]      (0 at k = 1)     voting: number of earlier exits that agree with exit
                                                                  k; the share v / (k-1) is the same feature for exit
                                                                  k's own head                                 (eq. 3.2)
    g_{n,k} = 1[a_{n,k-1} = a_{n,k}]              (0 at k = 1)     agreement with the previous exit (PABEE)     (eq. 3.3)

v and g exist with ``features="agreement"`` (the default); ``"base"`` has [p, m, h] only. ``"legacy"`` is the
feature set of schedulers saved before the agreement features existed ([p, m, conf]); it is only for loading them. Counts and nats rather than share and conf save the scalar
operations on the hot path (each is a separate kernel launch) without changing what a per-exit linear head can express.

Online, row by row. The exit loop carries a dict of batch-first tensors (sliced with the same row index when rows
leave, re-packed by an engine); the features of exit k need only:

    state["votes"] [B, C] float32   number of earlier exits that predicted each class (sum_{j<k} onehot(a_j))
    state["prev"]  [B]    int64     a_{n,k-1} (-1 before the first exit)
    state["q"]     [B, K] float32   clamped utility scores of the exits passed so far (0 for the others)

so v_{n,k} = votes[n, a_{n,k}] and g_{n,k} = 1[prev_n = a_{n,k}]. All of it is elementwise or a reduction over
the class dimension of one row: a row's features never depend on the other rows of its batch.
"""

from __future__ import annotations

import math

import torch

from .scheduler_config import FEATURE_SETS


def feature_dim(num_classes: int, exit_idx: int, features: str) -> int:
    """d_k, the length of x_{n,k} for 0-based ``exit_idx``: C + 2 (+ 2 with agreement) + exit_idx earlier scores."""
    return num_classes + 2 + FEATURE_SETS[features] + exit_idx


def init_feature_state(batch_size: int, num_exits: int, num_classes: int, features: str,
                       device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The per-row state before the first exit (see the module docstring for the keys)."""
    state = {"q": torch.zeros(batch_size, num_exits, dtype=torch.float32, device=device)}
    if FEATURE_SETS[features]:
        state["votes"] = torch.zeros(batch_size, num_classes, dtype=torch.float32, device=device)
        state["prev"] = torch.full((batch_size,), -1, dtype=torch.long, device=device)
    return state


def exit_features(exit_idx: int, probs: torch.Tensor, state: dict[str, torch.Tensor], features: str):
    """x_{n,k} without the earlier scores (eq. 3.1 up to q_{<k}) and the updated feature state.

    Args:
        exit_idx: 0-based exit k.
        probs: ``[b, C]`` float32 softmax outputs of exit k.
        state: the per-row state (``init_feature_state``) of the same b rows, as left by exit k-1.
    Returns:
        ``(x [b, C + 2 (+2)], updates)`` where ``updates`` holds the new ``votes`` / ``prev`` (agreement only).
    """
    m = probs.amax(-1, keepdim=True)
    h = torch.special.entr(probs).sum(-1, keepdim=True)  # -sum p log p (0 log 0 = 0)
    if features == "legacy":  # schedulers saved before issue 12 read conf = 1 - h / log C
        return torch.cat([probs, m, 1.0 - h * (1.0 / math.log(probs.shape[-1]))], -1), {}
    if not FEATURE_SETS[features]:
        return torch.cat([probs, m, h], -1), {}
    a = probs.argmax(-1, keepdim=True)  # [b, 1]
    votes, prev = state["votes"], state["prev"]
    v = votes.gather(1, a)  # eq. 3.2 (0 at the first exit: no votes yet)
    g = (prev.unsqueeze(1) == a).to(probs.dtype)  # eq. 3.3 (prev = -1 before the first exit)
    updates = {"votes": votes.scatter_add(1, a, torch.ones_like(m)), "prev": a.squeeze(1)}
    return torch.cat([probs, m, h, v, g], -1), updates


@torch.no_grad()
def all_exit_features(probs: torch.Tensor, features: str) -> torch.Tensor:
    """Eq. 3.1 without q_{<k} for every exit, from all-exits outputs ``[N, K, C]`` -> exit-major ``[K, N, d]`` float32.

    Runs :func:`exit_features` exit by exit over all N rows (the online computation with batch N), so fitting and
    serving read the same numbers."""
    n, k_total, num_classes = probs.shape
    p = probs.detach().float()
    state = init_feature_state(n, k_total, num_classes, features, p.device)
    out = []
    for k in range(k_total):
        x, upd = exit_features(k, p[:, k].contiguous(), state, features)
        state.update(upd)
        out.append(x)
    return torch.stack(out, 0)


__all__ = ["feature_dim", "init_feature_state", "exit_features", "all_exit_features"]
