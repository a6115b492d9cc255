"""How far the committed baseline results move with midpoint thresholds (issue-12 follow-up, session 19).

``ScoreThresholdPolicy.calibrate`` (BranchyNet / MSDNet) now moves each threshold halfway to the next lower
calibration score (D8, as the EENet scheduler always did), so no calibration row sits on a threshold. The results
committed before that (README tables, ``model_cards/*/results.json``, the benchmark JSONs) were computed with the
thresholds on a calibration score. This script recalibrates every baseline on the stored validation predictions of
each recipe run and scores the stored test predictions, against the committed ``results.json``: how many cells
change per method, by how many test rows (net: the accuracy difference times the rows), and by how much cost. The
Static rows are a control: they use no thresholds, and their few cost-only differences (AG News, SST-5) predate the
midpoint change (the code before it gives the same ones).

    python benchmarks/baseline_midpoint_drift.py --names sst2,ag_news,sst5 \\
        --json benchmarks/results/baseline_midpoint_drift.json

Needs each recipe's output folder (``outputs/<name>/exit_predictions.safetensors``, written by the recipe).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_eenet.evaluation import evaluate_exits  # noqa: E402
from hf_eenet.reporting import BASELINES  # noqa: E402


def drift(name: str, outputs: Path, cards: Path) -> dict:
    committed = json.loads((cards / name / "results.json").read_text())
    p = load_file(str(outputs / name / "exit_predictions.safetensors"))
    vp, vl, tp, tl = p["val_probs"], p["val_labels"], p["test_probs"], p["test_labels"]
    n, rows = len(tl), []
    for method, cls in BASELINES.items():
        for i, b in enumerate(committed["budgets"]):
            old = committed["methods"][method][i]
            new = evaluate_exits(tp, tl, cls.calibrate(vp, vl, committed["costs"], b).exit_index(tp),
                                 committed["costs"], budget=b)
            net_rows = round(abs(new["accuracy"] - old["accuracy"]) * n)
            rows.append({"method": method, "budget": b, "accuracy_committed": old["accuracy"],
                         "accuracy_now": new["accuracy"], "net_test_rows_changed": net_rows,
                         "cost_committed": old["mean_cost"], "cost_now": new["mean_cost"]})
    changed = [r for r in rows if r["net_test_rows_changed"] or abs(r["cost_now"] - r["cost_committed"]) > 1e-12]
    by_method = {m: sum(r["method"] == m for r in changed) for m in BASELINES}
    return {"test_rows": n, "cells": len(rows), "cells_changed": len(changed), "cells_changed_by_method": by_method,
            "max_net_test_rows_changed": max(r["net_test_rows_changed"] for r in rows),
            "max_cost_change_over_budget": max(abs(r["cost_now"] - r["cost_committed"]) / r["budget"] for r in rows),
            "rows": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", default="sst2,ag_news,sst5")
    ap.add_argument("--outputs", default=str(ROOT / "outputs"))
    ap.add_argument("--cards", default=str(ROOT / "model_cards"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    out = {"command": "python benchmarks/baseline_midpoint_drift.py " + " ".join(given),
           "versions": {"torch": torch.__version__}, "datasets": {}}
    for name in args.names.split(","):
        out["datasets"][name] = d = drift(name, Path(args.outputs), Path(args.cards))
        print(f"{name}: {d['cells_changed']} of {d['cells']} baseline cells change {d['cells_changed_by_method']}; "
              f"accuracy by at most {d['max_net_test_rows_changed']} test row(s) of {d['test_rows']} (net), cost by at "
              f"most {100 * d['max_cost_change_over_budget']:.2f} % of the budget")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
