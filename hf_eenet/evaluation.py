"""Offline evaluation of exit decisions on all-exits outputs (plain Python results, JSON-serialisable)."""

from __future__ import annotations

import numpy as np
import torch

from .policies import _as_probs_tensor, check_budget, check_costs, check_labels


def _check_exit_index(exit_index, n: int, num_exits: int) -> torch.Tensor:
    if exit_index is None:
        raise ValueError("exit_index is required: the 0-based exit each row took, shape [N]")
    if not isinstance(exit_index, torch.Tensor):
        try:
            exit_index = torch.as_tensor(np.asarray(exit_index))
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"exit_index must be an integer array of shape [{n}]") from err
    exit_index = exit_index.detach().cpu()
    if exit_index.dim() != 1 or exit_index.shape[0] != n:
        raise ValueError(f"exit_index must have shape [{n}] (one exit per row), got shape {tuple(exit_index.shape)}")
    if exit_index.dtype == torch.bool or exit_index.is_complex():
        raise ValueError(f"exit_index must hold integer exit ids, got dtype {exit_index.dtype}")
    if torch.is_floating_point(exit_index):
        if not torch.isfinite(exit_index).all() or (exit_index != exit_index.round()).any():
            raise ValueError("exit_index must hold integer exit ids (got non-integral values)")
    exit_index = exit_index.long()
    if exit_index.min().item() < 0 or exit_index.max().item() >= num_exits:
        raise ValueError(
            f"exit_index values must lie in [0, {num_exits}) (0-based exits); "
            f"got min {exit_index.min().item()}, max {exit_index.max().item()}"
        )
    return exit_index


def evaluate_exits(exit_probs, labels, exit_index, costs, budget=None) -> dict:
    """Accuracy and cost of per-row exit decisions.

    Args:
        exit_probs: ``[N, K, C]`` softmax outputs of every exit.
        labels: ``[N]`` class ids in ``[0, C)``.
        exit_index: ``[N]`` 0-based exit each row took (e.g. ``policy.exit_index(exit_probs)``).
        costs: ``[K]`` cumulative per-exit cost, strictly increasing and positive (any unit).
        budget: optional target average cost in the same unit (validated to lie in ``[c_1, c_K]``).

    Returns:
        dict of plain Python values: ``accuracy`` (prediction = argmax of the exit each row took), ``mean_cost``,
        ``cost_ratio`` (``mean_cost / budget``, ``None`` without budget), ``relative_cost`` (``mean_cost / c_K``),
        ``exit_fractions`` ``[K]``, ``exit_accuracy`` ``[K]`` (accuracy of the rows that exited at ``k``, ``None`` where
        no row did), ``per_exit_accuracy`` ``[K]`` (every exit on all rows), ``n``.
    """
    probs = _as_probs_tensor(exit_probs)
    n, num_exits, num_classes = probs.shape
    labels = check_labels(labels, n, num_classes)
    costs = check_costs(costs, num_exits)
    if budget is not None:
        budget = check_budget(budget, costs)
    idx = _check_exit_index(exit_index, n, num_exits)

    correct_all = probs.argmax(-1).cpu() == labels[:, None]  # [N, K]
    correct = correct_all[torch.arange(n), idx]
    c = torch.tensor(costs, dtype=torch.float64)
    mean_cost = float(c[idx].mean().item())
    counts = torch.bincount(idx, minlength=num_exits)
    exit_accuracy = []
    for k in range(num_exits):
        m = idx == k
        exit_accuracy.append(float(correct[m].double().mean().item()) if int(counts[k]) > 0 else None)
    return {
        "accuracy": float(correct.double().mean().item()),
        "mean_cost": mean_cost,
        "cost_ratio": None if budget is None else mean_cost / budget,
        "relative_cost": mean_cost / costs[-1],
        "exit_fractions": [float(x) for x in (counts.double() / n).tolist()],
        "exit_accuracy": exit_accuracy,
        "per_exit_accuracy": [float(x) for x in correct_all.double().mean(0).tolist()],
        "n": int(n),
    }
