"""Synthetic accuracy-vs-budget table: EENet vs every baseline vs the oracle, where the truth is known.

Data: the generator of the scheduler tests (``tests/test_scheduler.py::make_data``): K = 6 exits, C = 4 classes,
accuracy rising 0.55 → 0.92, and exit 1 whose correctness depends on the class (class 0 right with a low max prob,
class 1 wrong with a high max prob). Calibrated on one draw (N = 10,000), evaluated on a held-out draw (N = 20,000).

    python benchmarks/synthetic_policies.py [--json benchmarks/results/synthetic_policies.json]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_scheduler import COSTS, make_data  # noqa: E402

from hf_eenet.reporting import compare_policies, results_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    val_probs, val_labels = make_data(10000, seed=1)
    test_probs, test_labels = make_data(20000, seed=2)
    budgets = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    res = compare_policies(val_probs, val_labels, test_probs, test_labels, COSTS, budgets, seed=0, progress=False)
    print("costs (fraction of full):", [round(c, 3) for c in COSTS])
    print(results_table(res))
    if args.json:
        res["command"] = "python benchmarks/synthetic_policies.py " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
