"""CPU benchmark of ``EENetScheduler.fit`` (not a test).

Times one fit with the default hyper-parameters (all restarts) on synthetic all-exits outputs, N = 10,000 rows,
K = 6 exits, C = 4 classes, costs = [1..6] / 6, budget 0.5; target <= 30 s on 2 CPU cores. Runs with torch's
default thread settings. Also prints the held-out realised cost and accuracy as a sanity check.

    python benchmarks/bench_scheduler_fit.py [--n 10000] [--budget 0.5] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from bench_common import machine_fields  # noqa: E402
from hf_eenet.scheduler import EENetScheduler  # noqa: E402
from test_scheduler import make_data  # noqa: E402  (the synthetic generator of the scheduler tests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the full cost")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    num_exits, num_classes = 6, 4
    costs = [k / num_exits for k in range(1, num_exits + 1)]
    probs, labels = make_data(args.n, num_exits, num_classes, seed=1)
    test_probs, test_labels = make_data(20_000, num_exits, num_classes, seed=2)

    sched = EENetScheduler()
    t0 = time.perf_counter()
    sched.fit(probs, labels, costs, args.budget, seed=args.seed)
    seconds = time.perf_counter() - t0

    exits = sched.exit_index(test_probs)
    cost = torch.tensor(costs)[exits].mean().item()
    acc = (test_probs[torch.arange(len(test_labels)), exits].argmax(-1) == test_labels).float().mean().item()
    info = sched.fit_info
    result = {
        "seconds": seconds, "n": args.n, "num_exits": num_exits, "num_classes": num_classes, "budget": args.budget,
        "restarts": info["restarts"], "epochs_chosen_run": info["epochs"],
        "epochs_all_runs": [e for r in info["runs"] for e in r["fold_epochs"]], "selection": info["val_source"],
        "trainings": sum(len(r["fold_epochs"]) for r in info["runs"]) + (0 if info["fallback"] else 1),
        "chosen": info["chosen"], "heldout_cost": cost, "heldout_accuracy": acc,
        **machine_fields(command),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load avg {result['load_avg_1min']:.2f}")
    print(f"held-out: realised cost {cost:.4f} (budget {args.budget}), accuracy {acc:.4f}; "
          f"epochs per training {result['epochs_all_runs']}; {result['trainings']} trainings; kept {info['chosen']}")
    print(f"EENetScheduler.fit N={args.n} K={num_exits} C={num_classes} restarts={info['restarts']}: "
          f"{seconds:.2f} s (target <= 30 s)  command: {command}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
