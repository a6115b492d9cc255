"""EENet vs every baseline over several scheduler seeds, with the decision cost in the exit costs, plus an ablation.

Offline, on a trained model's saved all-exit probabilities (``exit_predictions.safetensors``: val_probs, val_labels,
test_probs, test_labels, written by the recipe) and the recipe's ``results.json`` (profiled exit latencies). Every
policy is calibrated on validation only and evaluated on test.

Costs: the recipe profiled c_k with a forced-exit policy (no decisions). Here each exit passed also pays the EENet
decision time d_j measured on this machine at the profile's batch size (``hf_eenet.costs.measure_decision_ms``):
c_k = t_k + sum_{j<=k, j<K} d_j, normalised by c_K (docs/method.md §7.2). All policies are scored with these costs.

    python benchmarks/eenet_seeds.py --model_dir ../outputs/sst5 --results ../outputs/sst5_results/results.json \
        --name sst5 --ablation --card model_cards/sst5
    python benchmarks/eenet_seeds.py --synthetic agreement --ablation

Writes ``benchmarks/results/eenet_seeds_<name>.json``: per budget the mean ± sd over seeds of EENet − best baseline
(points and test rows), realised cost / budget, the exits no policy uses, and the ablation table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from hf_eenet.costs import _eenet_timing_probe, measure_decision_ms, monotone_latencies  # noqa: E402
from hf_eenet.evaluation import evaluate_exits  # noqa: E402
from hf_eenet.reporting import BASELINES, ORACLE, compare_policies  # noqa: E402
from hf_eenet.scheduler import EENetScheduler  # noqa: E402

BUDGETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
#: ablation variants, cumulative: base features -> + agreement -> + honest selection -> k-fold -> one-SE rule (= the
#: default), and the
#: share-plan ablation for the assignment nets (pi only enters as pi_bar, see hf_eenet/scheduler_fit.py)
ABLATION = {
    "base features (selection on fitting data, learned shares)":
        dict(features="base", selection_folds=0, selection_fraction=0.0, fallback=False, shares="learned"),
    "+ agreement features":
        dict(features="agreement", selection_folds=0, selection_fraction=0.0, fallback=False, shares="learned"),
    "+ honest selection: one 30 % hold-out, fixed-rule fallbacks, most accurate kept":
        dict(selection_folds=0, selection_margin=0.0),
    "+ auto cross-selection (5-fold below 4,000 rows), most accurate kept": dict(selection_margin=0.0),
    "+ one-standard-error rule: simplest candidate within 1 SE (default)": {},
    "default, learned shares only": dict(shares="learned"),
    "default, geometric shares only": dict(shares="geometric"),
}


def _rel(path) -> str:
    return os.path.relpath(os.path.abspath(path), ROOT)


def _mean_sd(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def load_model_outputs(model_dir, results_path):
    from safetensors.torch import load_file

    t = load_file(str(Path(model_dir) / "exit_predictions.safetensors"))
    res = json.loads(Path(results_path).read_text())
    prof = res.get("exit_cost_profile") or {}
    info = prof.get("info") or {}
    lat = prof.get("latency_ms")
    if lat is None:  # a run that kept the model's costs (e.g. a bank refit): the profile is in the model's config
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        info = dict(cfg.get("exit_cost_info") or {})
        lat = info.pop("raw", None) if cfg.get("exit_cost_profile") == "latency" else None
    # forced-exit latencies without decisions: the recipe's profile already adds the EENet decision time to
    # latency_ms (and keeps the plain ones aside); older profiles have only the plain ones
    lat = info.get("latency_ms_without_decisions") or lat
    return (t["val_probs"].float(), t["val_labels"].long(), t["test_probs"].float(), t["test_labels"].long(),
            res, lat, info)


def load_seeds_run(seeds_json, model_dir=None):
    """A committed ``eenet_seeds_<name>.json`` of a model's run and that model's outputs -> (ref, val_probs,
    val_labels, test_probs, test_labels); ``model_dir`` (default: the one the JSON names; relative paths from the
    repository root) for a model trained again elsewhere."""
    ref = json.loads(Path(seeds_json).read_text())
    inp = ref["inputs"]
    if "model_dir" not in inp:
        raise SystemExit("--seeds_json must come from a model run (it names model_dir and results)")
    model_dir = Path(model_dir or inp["model_dir"])
    val_p, val_y, test_p, test_y, _, _, _ = load_model_outputs(
        model_dir if model_dir.is_absolute() else ROOT / model_dir, ROOT / inp["results"])
    return ref, val_p, val_y, test_p, test_y


def decision_inclusive_costs(lat_ms, decision_ms):
    """As ``profile_exit_costs``: decision times added, then made increasing (``monotone_latencies``)."""
    k_total = len(lat_ms)
    raw, _ = monotone_latencies([t + sum(decision_ms[: min(k + 1, k_total - 1)]) for k, t in enumerate(lat_ms)])
    return raw, [r / raw[-1] for r in raw]


def fit_eenet_rows(val_p, val_y, test_p, test_y, costs, budgets, seed, kwargs, keep=None):
    rows = []
    for b in budgets:
        t0 = time.perf_counter()
        s = EENetScheduler(**kwargs).fit(val_p, val_y, costs, b, seed=seed)
        r = evaluate_exits(test_p, test_y, s.exit_index(test_p), costs, budget=b)
        rows.append({"budget": b, "accuracy": r["accuracy"], "mean_cost": r["mean_cost"],
                     "exit_fractions": r["exit_fractions"], "chosen": s.fit_info["chosen"],
                     "fallback": s.fit_info["fallback"], "fit_seconds": time.perf_counter() - t0})
        if keep is not None:
            keep[b] = s
    return rows


def tuned_on_test(scores, correct, costs, budget, rounds=3, grid=101):
    """Upper bound of a threshold policy on these scores: thresholds tuned on the *test* rows themselves (coordinate
    search over per-exit score quantiles, from the geometric calibration, keeping realised cost <= budget) ->
    (accuracy, cost). Not a policy anyone can deploy: it says how much any threshold fit on these scores could gain."""
    from hf_eenet.policies import _calibrate_geometric
    from hf_eenet.scheduler_fit import first_exit

    c = torch.tensor(costs, dtype=torch.float64)
    rows = torch.arange(scores.shape[0])

    def score(th):
        e = first_exit(scores, th)
        return float(correct[rows, e].mean()), float(c[e].mean())

    th = list(_calibrate_geometric(scores, list(costs), budget)[0])
    best = score(th)
    if best[1] > budget:
        th = [-float("inf")] * len(th)  # start from everyone at exit 1 when the calibration overshoots
        best = score(th)
    qs = torch.linspace(0, 1, grid, dtype=torch.float64)
    for _ in range(rounds):
        for k in range(len(th) - 1):
            for v in torch.quantile(scores[:, k].double(), qs).tolist() + [float("inf")]:
                trial = th[:k] + [v] + th[k + 1:]
                acc, cost = score(trial)
                if cost <= budget + 1e-12 and acc > best[0]:
                    best, th = (acc, cost), trial
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir")
    ap.add_argument("--results", help="the recipe's results.json (profiled exit latencies)")
    ap.add_argument("--synthetic", choices=["agreement", "class"], help="use a test generator instead of a model")
    ap.add_argument("--name")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--card", help="also write a model card folder (results.json, plot, README.md) for seed 0")
    ap.add_argument("--bound", action="store_true",
                    help="also report thresholds tuned on the test rows (an upper bound, not a policy) for max-prob, "
                         "voting and a trained EENet's scores")
    ap.add_argument("--decision_ms_from", metavar="SEEDS_JSON",
                    help="take the EENet decision times from an earlier eenet_seeds JSON of the same model instead of "
                         "measuring them again (they are timed in this process, so a busy CPU inflates them): runs "
                         "meant to share costs (a main run and its ablation) then score the same costs")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    recipe_results, lat, prof_info = None, None, {}
    if args.synthetic and args.decision_ms_from:
        ap.error("--decision_ms_from is for a model's run (--model_dir): the synthetic costs have no decision time")
    if args.synthetic:
        from test_scheduler import COSTS, make_agreement_data, make_data

        gen = make_agreement_data if args.synthetic == "agreement" else make_data
        val_p, val_y = gen(4000, seed=1)
        test_p, test_y = gen(20000, seed=2)
        costs_profiled = list(COSTS)
        name = args.name or f"synthetic_{args.synthetic}"
        decision_ms, costs, costs_raw = None, list(COSTS), None
        inputs = {"generator": f"tests/test_scheduler.py::{gen.__name__}", "fit_rows": 4000, "test_rows": 20000}
    else:
        val_p, val_y, test_p, test_y, recipe_results, lat, prof_info = load_model_outputs(args.model_dir, args.results)
        name = args.name or recipe_results.get("dataset", Path(args.model_dir).name)
        if lat is None:
            raise SystemExit("results.json has no latency profile")
        costs_profiled = [t / lat[-1] for t in lat]
        k_total, n_classes = val_p.shape[1], val_p.shape[2]
        from hf_eenet import EENetBertConfig

        cfg = EENetBertConfig(num_hidden_layers=k_total, exit_layers=list(range(1, k_total + 1)), num_labels=n_classes)
        probe = _eenet_timing_probe(cfg)
        inputs = {"model_dir": _rel(args.model_dir), "results": _rel(args.results)}
        if args.decision_ms_from:
            ref = json.loads(Path(args.decision_ms_from).read_text())
            decision_ms = ref.get("decision_ms_per_exit")
            if not decision_ms or len(decision_ms) != k_total - 1:
                raise SystemExit(f"{args.decision_ms_from}: decision_ms_per_exit must hold {k_total - 1} times (one per "
                                 f"exit before the last), got {decision_ms!r}")
            ref_inputs = ref.get("inputs") or {}
            if (ref_inputs.get("model_dir"), ref_inputs.get("results")) != (inputs["model_dir"], inputs["results"]) \
                    or (ref.get("profile_info") or {}).get("batch_size") != prof_info.get("batch_size"):
                raise SystemExit(f"{args.decision_ms_from} was run on {ref_inputs} (profile batch size "
                                 f"{(ref.get('profile_info') or {}).get('batch_size')}), not on {inputs} (batch size "
                                 f"{prof_info.get('batch_size')}): decision times are reused only within one model "
                                 "and profile")
            inputs["decision_ms_from"] = _rel(args.decision_ms_from)
        else:
            decision_ms = measure_decision_ms(probe, k_total, n_classes,
                                              batch_size=int(prof_info.get("batch_size", 1)), repeats=300)
        costs_raw, costs = decision_inclusive_costs(lat, decision_ms)
    print(f"{name}: val {tuple(val_p.shape)}, test {tuple(test_p.shape)}; costs {[round(c, 4) for c in costs]}")

    # seed 0 with every baseline and the oracle (reporting.compare_policies), further seeds: EENet only
    bank = {}
    eenet = {seeds[0]: fit_eenet_rows(val_p, val_y, test_p, test_y, costs, budgets, seeds[0], {}, keep=bank)}
    res0 = compare_policies(val_p, val_y, test_p, test_y, costs, budgets, seed=seeds[0], schedulers=bank,
                            progress=False)
    for s in seeds[1:]:
        eenet[s] = fit_eenet_rows(val_p, val_y, test_p, test_y, costs, budgets, s, {})
    n_test = len(test_y)
    summary = []
    for i, b in enumerate(budgets):
        accs = [eenet[s][i]["accuracy"] for s in seeds]
        base = {m: res0["methods"][m][i]["accuracy"] for m in BASELINES}
        best = max(base, key=base.get)
        margins = [100 * (a - base[best]) for a in accs]
        m_mean, m_sd = _mean_sd(margins)
        ratios = [eenet[s][i]["mean_cost"] / b for s in seeds]
        summary.append({
            "budget": b, "eenet_mean": 100 * statistics.fmean(accs), "eenet_sd": 100 * _mean_sd(accs)[1],
            "best_baseline": best, "best_baseline_acc": 100 * base[best],
            "maxprob_acc": 100 * base["MSDNet (max-prob)"], "static_acc": 100 * base["Static"],
            "margin_mean_pt": m_mean, "margin_sd_pt": m_sd, "margin_mean_rows": m_mean / 100 * n_test,
            "cost_ratio_mean": statistics.fmean(ratios), "cost_ratio_worst": max(ratios, key=lambda r: abs(r - 1)),
            "oracle_acc": 100 * res0["methods"][ORACLE][i]["accuracy"],
        })
    # per-exit usefulness: largest test share of rows any (non-oracle) policy sends to each exit, over all budgets
    k_total = val_p.shape[1]
    usage = [0.0] * k_total
    for m, rows in res0["methods"].items():
        if m == ORACLE:
            continue
        for r in rows:
            usage = [max(u, f) for u, f in zip(usage, r["exit_fractions"])]
    for s in seeds:
        for r in eenet[s]:
            usage = [max(u, f) for u, f in zip(usage, r["exit_fractions"])]
    out = {
        "name": name, "inputs": inputs, "n_val": len(val_y), "n_test": n_test, "one_test_row_pt": 100 / n_test,
        "budgets": budgets, "seeds": seeds, "costs_profiled_forced_exit": costs_profiled,
        "decision_ms_per_exit": decision_ms, "costs_with_decisions_raw_ms": costs_raw, "costs": costs,
        "profile_info": {k: prof_info.get(k) for k in ("batch_size", "seq_len", "threads", "statistic", "unit")},
        "scheduler_config": EENetScheduler().get_config(),
        "per_exit_accuracy": res0["per_exit_accuracy"], "full_model": res0["full_model"],
        "baselines": {m: [r["accuracy"] for r in res0["methods"][m]] for m in BASELINES},
        "oracle": [r["accuracy"] for r in res0["methods"][ORACLE]],
        "eenet": {str(s): eenet[s] for s in seeds}, "summary": summary,
        "exit_usage": {"max_share_per_exit": usage,
                       "unused_exits": [k + 1 for k, u in enumerate(usage) if u == 0.0],
                       "note": "1-based exits that no policy (EENet at any seed, any baseline) sends any test row to "
                               "at any budget"},
    }
    if args.ablation:
        abl = {}
        for variant, kw in ABLATION.items():
            t0 = time.perf_counter()
            per_seed = {s: (eenet[s] if not kw else fit_eenet_rows(val_p, val_y, test_p, test_y, costs, budgets, s, kw))
                        for s in seeds}
            accs = [[100 * per_seed[s][i]["accuracy"] for s in seeds] for i in range(len(budgets))]
            abl[variant] = {
                "config": kw, "accuracy_mean": [statistics.fmean(a) for a in accs],
                "accuracy_sd": [_mean_sd(a)[1] for a in accs],
                "minus_best_baseline": [statistics.fmean(a) - summary[i]["best_baseline_acc"] for i, a in enumerate(accs)],
                "minus_maxprob": [statistics.fmean(a) - summary[i]["maxprob_acc"] for i, a in enumerate(accs)],
                "fallbacks": sum(r["fallback"] for s in seeds for r in per_seed[s] if "fallback" in r),
                "seconds": time.perf_counter() - t0,
            }
            print(f"  ablation {variant}: " + " ".join(f"{x:.2f}" for x in abl[variant]["accuracy_mean"]))
        out["ablation"] = abl
    if args.bound:
        correct = (test_p.argmax(-1) == test_y.unsqueeze(1)).float()
        bound = {"note": "test accuracy with thresholds tuned on the test rows themselves at realised cost <= B "
                         "(coordinate search): no deployable policy on these scores does better; compare with the "
                         "best baseline", "rows": []}
        for b in budgets:
            trained = EENetScheduler(fallback=False).fit(val_p, val_y, costs, b, seed=seeds[0])
            readouts = {"EENet trained heads (seed 0, no fallback)": trained.utility_scores(test_p, raw=True)}
            for readout, label in (("maxprob", "max prob"), ("voting", "voting")):
                trained._set_readout(readout)
                readouts[label] = trained.utility_scores(test_p, raw=True)
            row = {"budget": b}
            for label, sc in readouts.items():
                acc, cost = tuned_on_test(sc.float(), correct, costs, b)
                row[label] = {"accuracy": 100 * acc, "cost": cost}
            best_base = next(r for r in summary if r["budget"] == b)["best_baseline_acc"]
            row["best_baseline"] = best_base
            row["bound_minus_best_baseline"] = max(v["accuracy"] for k, v in row.items()
                                                   if isinstance(v, dict)) - best_base
            bound["rows"].append(row)
            print(f"  bound B={b}: " + ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in row.items()
                                                 if isinstance(v, dict)) + f" (best baseline {best_base:.2f})")
        out["test_tuned_bound"] = bound
    out["command"] = "python benchmarks/eenet_seeds.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out["versions"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    print("| budget | EENet (mean ± sd) | best baseline | EENet − best (pt) | rows | cost/budget |")
    for r in summary:
        print(f"| {r['budget']:.2f} | {r['eenet_mean']:.2f} ± {r['eenet_sd']:.2f} | {r['best_baseline']} "
              f"{r['best_baseline_acc']:.2f} | {r['margin_mean_pt']:+.2f} ± {r['margin_sd_pt']:.2f} | "
              f"{r['margin_mean_rows']:+.1f} | {r['cost_ratio_mean']:.3f} |")
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"eenet_seeds_{name}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print("wrote", _rel(path))
    if args.card and recipe_results is not None:
        from hf_eenet.model_card import write_results_card

        card_res = dict(recipe_results)
        card_res.update({k: res0[k] for k in ("budgets", "costs", "methods", "full_model", "per_exit_accuracy")})
        card_res.pop("results_with_layer_costs", None)
        card_res["scheduler_fit"] = {}
        card_res["cost_profile"] = "latency incl. EENet decisions"
        card_res.setdefault("model_card", _preset_card(name))
        card_res["command"] = out["command"] + " (model trained with the recipe, see results.json's recipe_args)"
        card_res["recipe_args"] = {k: v for k, v in (card_res.get("recipe_args") or {}).items()
                                   if not (isinstance(v, str) and v.startswith("/"))}
        folder = ROOT / args.card
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(card_res, indent=2, default=float)
        for prefix in sorted({str(Path(args.model_dir).resolve().parent), str(ROOT.parent.parent)}, key=len,
                             reverse=True):  # no absolute paths of this machine in committed JSON
            text = text.replace(prefix + "/", "")
        card_res = json.loads(text)
        (folder / "results.json").write_text(text)
        write_results_card(card_res, folder)
        print("wrote card", _rel(folder))
    return out


def _preset_card(name: str) -> dict | None:
    """The card block the recipe records from the preset's ``card_*`` fields (results of runs made before it did)."""
    from recipes.presets import preset, preset_names

    if name not in preset_names():
        return None
    p = preset(name)
    return {"dataset_id": p.get("card_dataset_id"), "dataset_config": p.get("card_dataset_config"),
            "dataset_name": p.get("card_dataset_name"), "backbone": p.get("card_backbone"),
            "base_model": p.get("model_name_or_path"), "notes": list(p.get("card_notes") or [])}


if __name__ == "__main__":
    main()
