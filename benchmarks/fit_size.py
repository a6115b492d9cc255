"""Does a larger labelled fitting set move EENet − best baseline? (issue 12: is the SST-5 gap selection noise?)

On SST-5 EENet falls back to a fixed rule at every budget and loses up to 1.75 pt to the best baseline, while the
test-tuned bound says thresholds on these scores could gain +0.2 … +1.6 pt. If the gap came from fitting / selecting
on only 1,101 validation rows, twice the labelled rows should close part of it. This benchmark measures that.

Protocol (every method sees the same fitting rows; test labels of a half are used for fitting only for the *other*
half): the test rows are split in two halves by a seeded permutation. Each half is scored with every method fitted /
calibrated on

* ``validation``: the validation rows only (the recipe's protocol), or
* ``validation + other half``: the validation rows plus the other test half, labels included (about twice the rows),

so every test row is scored once and never fitted on itself. EENet runs with each seed of the committed seeds JSON,
every baseline is recalibrated on the same rows; costs, budgets and seeds come from that JSON.

    python benchmarks/fit_size.py --seeds_json benchmarks/results/eenet_seeds_sst5.json

Writes ``benchmarks/results/fit_size_<name>.json`` (command and versions inside).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from eenet_seeds import load_seeds_run  # noqa: E402
from hf_eenet.evaluation import evaluate_exits  # noqa: E402
from hf_eenet.reporting import BASELINES  # noqa: E402
from hf_eenet.scheduler import EENetScheduler  # noqa: E402
from rematch_budget import halves  # noqa: E402

MODES = ("validation", "validation + other half")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds_json", required=True, help="a committed eenet_seeds_<name>.json (inputs, costs, seeds)")
    ap.add_argument("--model_dir", help="the trained model's folder (default: the seeds JSON's model_dir)")
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ref, val_p, val_y, test_p, test_y = load_seeds_run(args.seeds_json, args.model_dir)
    inp = ref["inputs"]
    model_dir = Path(args.model_dir or inp["model_dir"])
    costs, budgets, seeds = ref["costs"], ref["budgets"], ref["seeds"]
    parts = halves(len(test_y), args.split_seed)

    def fitting_rows(h, mode):
        if mode == "validation":
            return val_p, val_y
        other = parts[1 - h]
        return torch.cat([val_p, test_p[other]]), torch.cat([val_y, test_y[other]])

    def scored(policy_for_half, b):
        exits = torch.empty(len(test_y), dtype=torch.long)
        for h, rows in enumerate(parts):
            exits[rows] = policy_for_half(h).exit_index(test_p[rows]).long()
        r = evaluate_exits(test_p, test_y, exits, costs, budget=b)
        return {"accuracy": 100 * r["accuracy"], "mean_cost": r["mean_cost"], "cost_ratio": r["mean_cost"] / b}

    t0 = time.perf_counter()
    rows = []
    for b in tqdm(budgets, desc=f"fit size {ref['name']}", unit="budget"):
        row = {"budget": b, "eenet": {}, "baselines": {}}
        for mode in MODES:
            if mode == "validation":  # one fit on validation serves both halves
                fits = {s: EENetScheduler().fit(val_p, val_y, costs, b, seed=s) for s in seeds}
                per_seed = {s: [fits[s], fits[s]] for s in seeds}
            else:
                per_seed = {s: [EENetScheduler().fit(*fitting_rows(h, mode), costs, b, seed=s) for h in range(2)]
                            for s in seeds}
            fitted = range(1 if mode == "validation" else 2)  # one fit, or one per half
            row["eenet"][mode] = {str(s): {**scored(lambda h: per_seed[s][h], b),
                                           "chosen": [per_seed[s][h].fit_info["chosen"] for h in fitted],
                                           "fallback": [bool(per_seed[s][h].fit_info["fallback"]) for h in fitted]}
                                  for s in seeds}
            row["baselines"][mode] = {
                name: scored(lambda h: pols[h], b)
                for name, cls in BASELINES.items()
                for pols in [[cls.calibrate(*fitting_rows(h, mode), costs, b) for h in range(2)]]}
        rows.append(row)
    summary = []
    for row in rows:
        for mode in MODES:
            accs = [row["eenet"][mode][str(s)]["accuracy"] for s in seeds]
            base = {m: e["accuracy"] for m, e in row["baselines"][mode].items()}
            best = max(base, key=base.get)
            margins = [a - base[best] for a in accs]
            summary.append({
                "budget": row["budget"], "mode": mode, "eenet_mean": statistics.fmean(accs),
                "best_baseline": best, "best_baseline_acc": base[best],
                "margin_mean_pt": statistics.fmean(margins),
                "margin_sd_pt": statistics.stdev(margins) if len(margins) > 1 else 0.0,
                "eenet_cost_ratio_worst": max((row["eenet"][mode][str(s)]["cost_ratio"] for s in seeds),
                                              key=lambda r: abs(r - 1)),
                "fallbacks": sum(f for s in seeds for f in row["eenet"][mode][str(s)]["fallback"]),
                "fits": sum(len(row["eenet"][mode][str(s)]["chosen"]) for s in seeds),
            })
    out = {
        "name": ref["name"], "inputs": {**inp, "model_dir": model_dir.as_posix()},
        "seeds_json": Path(args.seeds_json).as_posix(), "n_val": len(val_y), "n_test": len(test_y),
        "split_seed": args.split_seed, "half_rows": [len(p) for p in parts],
        "fitting_rows": {MODES[0]: len(val_y), MODES[1]: [len(val_y) + len(parts[1 - h]) for h in range(2)]},
        "per_exit_test_accuracy": [100 * float(a) for a in
                                   (test_p.argmax(-1) == test_y[:, None]).float().mean(0).tolist()],
        "costs": costs, "budgets": budgets, "seeds": seeds, "modes": list(MODES),
        "protocol": "each test half is scored with every method fitted on the validation rows, or on the validation "
                    "rows plus the other test half (labels included); every test row is scored once",
        "rows": rows, "summary": summary, "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/fit_size.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    print("| budget | fitting rows | EENet acc | best baseline | EENet − best (pt) | fallbacks |")
    for r in summary:
        print(f"| {r['budget']:.2f} | {r['mode']} | {r['eenet_mean']:.2f} | {r['best_baseline']} "
              f"{r['best_baseline_acc']:.2f} | {r['margin_mean_pt']:+.2f} ± {r['margin_sd_pt']:.2f} | "
              f"{r['fallbacks']} |")
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"fit_size_{ref['name']}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return out


if __name__ == "__main__":
    main()
