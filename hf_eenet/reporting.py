"""Side-by-side comparison of EENet, the baselines and the oracle on all-exit predictions, plus the plot and table.

Every policy is calibrated on the *validation* predictions for each budget and evaluated on the *test* predictions.
"""

from __future__ import annotations

import time

import numpy as np

from .evaluation import evaluate_exits
from .policies import EntropyPolicy, MaxProbPolicy, OraclePolicy, PatiencePolicy, StaticPolicy
from .scheduler import EENetScheduler


def budget_key(budget: float) -> str:
    """A budget in table rows and metric names: two decimals ("0.50"), or every digit it has where two would round
    it (0.604 → "0.604"; budgets 0.6 and 0.604 must not share a row or a key)."""
    b = float(budget)
    return f"{b:.2f}" if round(b, 2) == b else f"{b:g}"


BASELINES = {
    "BranchyNet (entropy)": EntropyPolicy,
    "MSDNet (max-prob)": MaxProbPolicy,
    "PABEE (patience)": PatiencePolicy,
    "Static": StaticPolicy,
}
EENET = "EENet"
ORACLE = "Oracle (upper bound)"


def compare_policies(val_probs, val_labels, test_probs, test_labels, costs, budgets, seed: int = 0,
                     schedulers: dict | None = None, scheduler_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Calibrate every method on validation at every budget and evaluate it on test.

    Args:
        val_probs/test_probs: ``[N, K, C]`` all-exit softmax outputs; ``val_labels``/``test_labels``: ``[N]``.
        costs: ``[K]`` cumulative costs (fractions of the full cost); budgets: fractions.
        schedulers: optional ``{budget: fitted EENetScheduler}`` (e.g. the model's bank) to use instead of fitting.
    Returns:
        ``{"budgets": [...], "methods": {name: [evaluate_exits(...) + {"budget", "calibration_cost"}] per budget},
        "full_model": {...}, "per_exit_accuracy": [...], "scheduler_fit_seconds": {budget: s}}``.
    """
    from tqdm.auto import tqdm

    k = len(costs)
    n_test = len(test_labels)
    last = np.full(n_test, k - 1)
    full = evaluate_exits(test_probs, test_labels, last, costs)
    out = {"budgets": [float(b) for b in budgets], "costs": [float(c) for c in costs], "methods": {},
           "full_model": {"accuracy": full["accuracy"], "mean_cost": full["mean_cost"]},
           "per_exit_accuracy": full["per_exit_accuracy"], "scheduler_fit_seconds": {}}
    names = [EENET, *BASELINES, ORACLE]
    for name in names:
        out["methods"][name] = []
    for b in tqdm(budgets, desc="policies x budgets", disable=not progress):
        b = float(b)
        if schedulers and b in schedulers:
            sched = schedulers[b]
        else:
            t0 = time.perf_counter()
            sched = EENetScheduler(**(scheduler_kwargs or {})).fit(val_probs, val_labels, costs, b, seed=seed)
            out["scheduler_fit_seconds"][b] = time.perf_counter() - t0
        policies = {EENET: sched}
        for name, cls in BASELINES.items():
            policies[name] = cls.calibrate(val_probs, val_labels, costs, b)
        for name, pol in policies.items():
            res = evaluate_exits(test_probs, test_labels, pol.exit_index(test_probs), costs, budget=b)
            res.update(budget=b, calibration_cost=float(
                evaluate_exits(val_probs, val_labels, pol.exit_index(val_probs), costs)["mean_cost"]))
            out["methods"][name].append(res)
        oracle = OraclePolicy.calibrate(test_probs, test_labels, costs, b)
        res = evaluate_exits(test_probs, test_labels, oracle.exit_index(test_probs, test_labels), costs, budget=b)
        res.update(budget=b, calibration_cost=None)
        out["methods"][ORACLE].append(res)
    return out


def results_table(results: dict, fmt: str = "md") -> str:
    """Markdown table: one row per budget, accuracy (realised cost) per method."""
    names = list(results["methods"])
    head = "| budget | " + " | ".join(names) + " |"
    sep = "|---:|" + "---:|" * len(names)
    rows = [head, sep]
    for i, b in enumerate(results["budgets"]):
        cells = []
        for n in names:
            r = results["methods"][n][i]
            cells.append(f"{100 * r['accuracy']:.2f} ({r['mean_cost']:.3f})")
        rows.append(f"| {budget_key(b)} | " + " | ".join(cells) + " |")
    full = results["full_model"]
    split = results.get("evaluated_on", "test")
    rows.append(f"\nFull model (last of {len(results['costs'])} exits): accuracy {100 * full['accuracy']:.2f}, cost 1.000. "
                f"Cells: {split} accuracy % (realised mean cost as a fraction of the full model).")
    return "\n".join(rows)


def budget_adherence_table(results: dict, tolerance: float = 0.03) -> str:
    """Markdown table: realised test cost / budget for every method and budget (1.00 = exactly on budget).

    EENet cells outside ``1 ± tolerance`` are marked with ``!``. The oracle is calibrated on test itself."""
    names = list(results["methods"])
    rows = ["| budget | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, b in enumerate(results["budgets"]):
        cells = []
        for n in names:
            ratio = results["methods"][n][i]["mean_cost"] / b
            flag = "!" if n == EENET and abs(ratio - 1) > tolerance else ""
            cells.append(f"{ratio:.3f}{flag}")
        rows.append(f"| {budget_key(b)} | " + " | ".join(cells) + " |")
    rows.append(f"\nCells: realised mean {results.get('evaluated_on', 'test')} cost / budget. `!` marks EENet outside "
                f"±{100 * tolerance:.0f}%. "
                "Policies that cannot reach a budget (patience, static on a coarse grid) stay below it.")
    return "\n".join(rows)


def plot_results(results: dict, path: str, title: str = "") -> str:
    """Accuracy vs realised cost on the evaluated split (``results["evaluated_on"]``, default test), one line per method, the full model as a star. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    styles = {EENET: dict(color="C3", marker="o", lw=2.2), ORACLE: dict(color="k", ls=":", marker="."),
              "BranchyNet (entropy)": dict(color="C0", marker="s", ms=4), "MSDNet (max-prob)": dict(color="C1", marker="^", ms=4),
              "PABEE (patience)": dict(color="C2", marker="v", ms=4), "Static": dict(color="C4", marker="D", ms=4)}
    for name, rows in results["methods"].items():
        xs = [r["mean_cost"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        ax.plot(xs, ys, label=name, **styles.get(name, dict(marker="s", ms=4, alpha=0.85)))
    full = results["full_model"]
    ax.scatter([1.0], [100 * full["accuracy"]], marker="*", s=160, color="C2", zorder=5, label="full model")
    ax.set_xlabel("realised mean cost (fraction of the full model)")
    ax.set_ylabel(f"{results.get('evaluated_on', 'test')} accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["compare_policies", "results_table", "budget_adherence_table", "plot_results", "BASELINES", "EENET", "ORACLE"]
