"""Regenerate the README's "EENet over scheduler seeds" section from ``benchmarks/results/eenet_seeds_*.json``.

Rewrites the block between ``<!-- eenet-seeds:start -->`` and ``<!-- eenet-seeds:end -->`` (appended after the main
results block if missing). Numbers come only from the committed JSON written by ``benchmarks/eenet_seeds.py``.

    python benchmarks/make_eenet_readme.py [--check]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- eenet-seeds:start -->", "<!-- eenet-seeds:end -->"
ORDER = ["sst5", "sst5_ablation", "sst2", "ag_news", "demo", "synthetic_agreement", "synthetic_agreement_ablation",
         "synthetic_class"]
TITLES = {"sst5": "SST-5 (5 classes; fit on dev 1,101 rows, test 2,210 rows)",
          "sst2": "SST-2 (fit on GLUE dev 872 rows, test 1,821 rows)",
          "ag_news": "AG News (fit on a 2,000-row hold-out, test 7,600 rows)",
          "sst5_ablation": "SST-5 ablation (same model, costs and seeds; budgets 0.3 / 0.5 / 0.7)",
          "demo": "`make demo` model (SST-2, 6,000 training rows; fit on GLUE dev 872 rows, test 1,821 rows)",
          "synthetic_agreement_ablation": "Synthetic 'agreement' generator, ablation (budgets 0.3 / 0.5 / 0.7)",
          "synthetic_agreement": "Synthetic 'agreement' generator (tests/test_scheduler.py::make_agreement_data)",
          "synthetic_class": "Synthetic class-dependent generator (tests/test_scheduler.py::make_data)"}


def _load():
    found = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("eenet_seeds_*.json")):
        res = json.loads(path.read_text())
        found[res["name"]] = (path.relative_to(ROOT).as_posix(), res)
    return sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER))


def cost_noise(res: dict) -> str:
    """How the worst realised-cost deviation compares with sampling noise: the standard error of (test cost −
    validation cost) when thresholds matched the budget on the validation rows, from the per-row cost spread implied
    by the test exit fractions (var = Σ f_k c_k² − (Σ f_k c_k)², SE = sqrt(var / n_val + var / n_test))."""
    worst = None
    for rows in res.get("eenet", {}).values():
        for r in rows:
            f, c = r["exit_fractions"], res["costs"]
            mu = sum(a * b for a, b in zip(f, c))
            var = max(sum(a * b * b for a, b in zip(f, c)) - mu * mu, 0.0)
            se = math.sqrt(var / res["n_val"] + var / res["n_test"])
            dev = r["mean_cost"] - r["budget"]
            if se > 0 and (worst is None or abs(dev) / r["budget"] > abs(worst[0])):
                worst = (dev / r["budget"], dev / se, se / r["budget"], r["budget"])
    if worst is None:
        return ""
    return (f" (at B = {worst[3]:.1f}: {worst[1]:+.1f} standard errors of the test − validation cost difference, "
            f"one SE = {100 * worst[2]:.1f} % of the budget with {res['n_val']:,} validation rows)")


def section(name: str, path: str, res: dict) -> list[str]:
    s = res["summary"]
    lines = [f"**{TITLES.get(name, name)}** — `{path}`, {len(res['seeds'])} scheduler seeds "
             f"({', '.join(map(str, res['seeds']))}); one test row = {res['one_test_row_pt']:.3f} pt; per-exit test "
             f"accuracy {' / '.join(f'{100 * a:.1f}' for a in res['per_exit_accuracy'])}.", ""]
    if res.get("decision_ms_per_exit"):
        d = res["decision_ms_per_exit"]
        lines += [f"Exit costs include the EENet decision ({1000 * sum(d) / len(d):.0f} µs per exit at batch "
                  f"{res['profile_info'].get('batch_size')}): c = {[round(c, 3) for c in res['costs']]} "
                  f"(forced-exit profile without decisions: {[round(c, 3) for c in res['costs_profiled_forced_exit']]}).",
                  ""]
    lines += ["| budget | EENet (mean ± sd) | max-prob | static | best baseline | EENet − best: pt (test rows) | "
              "EENet cost / budget | oracle |", "|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in s:
        lines.append(f"| {r['budget']:.2f} | {r['eenet_mean']:.2f} ± {r['eenet_sd']:.2f} | {r['maxprob_acc']:.2f} | "
                     f"{r['static_acc']:.2f} | {r['best_baseline']} {r['best_baseline_acc']:.2f} | "
                     f"{r['margin_mean_pt']:+.2f} ± {r['margin_sd_pt']:.2f} ({r['margin_mean_rows']:+.1f}) | "
                     f"{r['cost_ratio_mean']:.3f} | {r['oracle_acc']:.2f} |")
    worst = min(r["margin_mean_pt"] for r in s)
    wins = sum(r["margin_mean_pt"] >= 0.5 for r in s)
    cost_dev = max(abs(r["cost_ratio_worst"] - 1) for r in s)
    lines += ["", f"Worst EENet − best baseline: {worst:+.2f} pt; budgets with ≥ +0.5 pt: {wins} of {len(s)}; "
                  f"largest realised-cost deviation of any seed: {100 * cost_dev:.1f} % of the budget{cost_noise(res)}."]
    unused = res["exit_usage"]["unused_exits"]
    lines += [f"Exits that no policy uses at any budget: {unused if unused else 'none'} "
              f"(largest share per exit: {' / '.join(f'{100 * u:.0f}%' for u in res['exit_usage']['max_share_per_exit'])})."]
    if res.get("ablation"):
        lines += ["", "Ablation (mean test accuracy over the seeds; in brackets minus the best baseline):", "",
                  "| variant | " + " | ".join(f"{b:.1f}" for b in res["budgets"]) + " | fallbacks |",
                  "|---|" + "---:|" * (len(res["budgets"]) + 1)]
        for variant, a in res["ablation"].items():
            lines.append(f"| {variant} | " + " | ".join(
                f"{m:.2f} ({d:+.2f})" for m, d in zip(a["accuracy_mean"], a["minus_best_baseline"])) +
                f" | {a['fallbacks']} |")
    if res.get("test_tuned_bound"):
        rows = res["test_tuned_bound"]["rows"]
        labels = [k for k, v in rows[0].items() if isinstance(v, dict)]
        lines += ["", "Upper bound: thresholds tuned on the **test rows themselves** (realised cost ≤ B; not a "
                      "deployable policy) — how far any threshold fit on these scores could go:", "",
                  "| budget | " + " | ".join(labels) + " | best baseline | bound − best (pt) |",
                  "|---:|" + "---:|" * (len(labels) + 2)]
        for r in rows:
            lines.append(f"| {r['budget']:.2f} | " + " | ".join(f"{r[k]['accuracy']:.2f}" for k in labels) +
                         f" | {r['best_baseline']:.2f} | {r['bound_minus_best_baseline']:+.2f} |")
    lines += ["", f"Command: `{res['command']}`", ""]
    lines += rematch_section(name)
    lines += fit_size_section(name)
    return lines


def rematch_section(name: str) -> list[str]:
    """The ``benchmarks/rematch_budget.py`` table for this dataset, if committed."""
    path = ROOT / "benchmarks" / "results" / f"rematch_{name}.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    sizes = res["traffic_rows"]
    by = {(r["budget"], r["mode"]): r for r in res["summary"]}
    modes = ["plain"] + [f"rematched_{s}" for s in sizes]
    label = {"plain": "validation"} | {f"rematched_{s}": (f"traffic {s} rows" if s != "all" else
                                                           f"traffic {max(res['half_rows']):,} rows") for s in sizes}
    lines = [f"**{TITLES.get(name, name).split(' (')[0]}: budget re-matched on unlabelled traffic** — "
             f"`{path.relative_to(ROOT).as_posix()}`. Each half of the test set is scored with thresholds matched on "
             "an unlabelled sample of the other half (`model.rematch_budgets`; EENet heads as fitted on validation, "
             "every baseline recalibrated on the same rows): the worst seed's realised cost / budget, and EENet − best "
             "baseline in points (mean over seeds, every method under the same protocol):", "",
             "| budget | " + " | ".join(f"EENet cost/B, {label[m]}" for m in modes) + " | max-prob cost/B, "
             f"{label[modes[0]]} → {label[modes[-1]]} | " + " | ".join(f"EENet − best, {label[m]}" for m in modes) + " |",
             "|---:|" + "---:|" * (2 * len(modes) + 1)]
    for b in res["budgets"]:
        rows = [by[(b, m)] for m in modes]
        lines.append(f"| {b:.2f} | " + " | ".join(f"{r['eenet_cost_ratio_worst']:.3f}" for r in rows) +
                     f" | {rows[0]['maxprob_cost_ratio']:.3f} → {rows[-1]['maxprob_cost_ratio']:.3f} | " +
                     " | ".join(f"{r['margin_mean_pt']:+.2f}" for r in rows) + " |")
    worst = {m: max(abs(by[(b, m)]["eenet_cost_ratio_worst"] - 1) for b in res["budgets"]) for m in modes}
    lines += ["", "Largest EENet cost deviation over budgets and seeds: " +
              ", ".join(f"{label[m]} {100 * worst[m]:.1f} %" for m in modes) + ".", "",
              f"Command: `{res['command']}`", ""]
    return lines


def fit_size_section(name: str) -> list[str]:
    """The ``benchmarks/fit_size.py`` table for this dataset, if committed."""
    path = ROOT / "benchmarks" / "results" / f"fit_size_{name}.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    by = {(r["budget"], r["mode"]): r for r in res["summary"]}
    modes = res["modes"]
    rows = res["fitting_rows"]
    def n_rows(v):  # one count, or one per test half
        v = [v] if isinstance(v, int) else v
        return f"{v[0]:,}" if min(v) == max(v) else f"{min(v):,}–{max(v):,}"

    label = {m: f"{m} ({n_rows(rows[m])} rows)" for m in modes}
    seeds_res = json.loads((ROOT / res["seeds_json"]).read_text())
    same = [abs(r["eenet_mean"] - by[(r["budget"], modes[0])]["eenet_mean"]) < 1e-9 for r in seeds_res["summary"]
            if (r["budget"], modes[0]) in by]
    lines = [f"**{TITLES.get(name, name).split(' (')[0]}: twice the labelled fitting rows** — "
             f"`{path.relative_to(ROOT).as_posix()}`. Each half of the test set is scored with every method fitted on "
             "the validation rows, or on the validation rows plus the other test half with its labels, so every test "
             "row is scored once and never fitted on (per-exit test accuracy "
             f"{' / '.join(f'{a:.1f}' for a in res['per_exit_test_accuracy'])}; costs and seeds "
             f"{', '.join(map(str, res['seeds']))} from `{res['seeds_json']}`, whose EENet accuracy the validation "
             f"column {'reproduces at every budget' if same and all(same) else 'does not reproduce'}). EENet − best "
             "baseline in points (mean ± sd over seeds) and how many of the fits fell back to a fixed rule:", "",
             "| budget | " + " | ".join(f"EENet − best, {label[m]}" for m in modes) + " | " +
             " | ".join(f"fallbacks, {m}" for m in modes) + " |",
             "|---:|" + "---:|" * (2 * len(modes))]
    for b in res["budgets"]:
        r = [by[(b, m)] for m in modes]
        lines.append(f"| {b:.2f} | " + " | ".join(f"{x['margin_mean_pt']:+.2f} ± {x['margin_sd_pt']:.2f}" for x in r)
                     + " | " + " | ".join(f"{x['fallbacks']} of {x['fits']}" for x in r) + " |")
    worst = {m: min(by[(b, m)]["margin_mean_pt"] for b in res["budgets"]) for m in modes}
    wins = {m: sum(by[(b, m)]["margin_mean_pt"] >= 0.5 for b in res["budgets"]) for m in modes}
    lines += ["", "Worst EENet − best baseline / budgets with ≥ +0.5 pt: " + ", ".join(
        f"{label[m]} {worst[m]:+.2f} pt / {wins[m]} of {len(res['budgets'])}" for m in modes) + ".", "",
        f"Command: `{res['command']}`", ""]
    return lines


def build() -> str:
    out = [START, "", "### EENet over scheduler seeds (issue 12: agreement features, honest selection, decision cost)", ""]
    items = _load()
    if not items:
        out += ["No `benchmarks/results/eenet_seeds_*.json` yet: run `benchmarks/eenet_seeds.py`.", ""]
    for name, (path, res) in items:
        out += section(name, path, res)
    out += ["Generated by `python benchmarks/make_eenet_readme.py` from the committed JSON.", END]
    return "\n".join(out)


def main():
    from make_readme_results import write_readme_block

    write_readme_block(START, END, build(), "eenet-seeds", after="<!-- results:end -->")


if __name__ == "__main__":
    main()
