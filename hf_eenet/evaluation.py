"""Offline evaluation of exit decisions on all-exits outputs (plain Python results, JSON-serialisable)."""

from __future__ import annotations

import torch

from .validation import as_probs_tensor, check_budget, check_costs, check_exit_index, check_labels

_check_exit_index = check_exit_index  # old name, kept importable


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
    probs = as_probs_tensor(exit_probs)
    n, num_exits, num_classes = probs.shape
    labels = check_labels(labels, n, num_classes)
    costs = check_costs(costs, num_exits)
    if budget is not None:
        budget = check_budget(budget, costs)
    idx = check_exit_index(exit_index, n, num_exits)

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
