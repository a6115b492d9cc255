"""Regenerate the README's results section from the committed JSON (never hand-typed numbers).

Reads ``model_cards/<dataset>/results.json`` (recipe output) and, when present, ``benchmarks/results/pipeline_<dataset>*.json``
(wall-clock benchmarks; the targets use ``pipeline_<dataset>.json``) and ``int8_batch_parity_<dataset>.json`` (batched
vs alone, fp32 and int8), and rewrites the block between ``<!-- results:start -->`` and ``<!-- results:end -->``.

    python benchmarks/make_readme_results.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_eenet.reporting import EENET  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
NAMES = {"sst2": "SST-2 (GLUE train, 1 epoch; scheduler on GLUE dev; labelled test, 1,821 rows)",
         "ag_news": "AG News (first 10,429 train rows minus 2,000 validation; full test, 7,600 rows)"}
SHOW_BUDGETS = (0.3, 0.4, 0.5, 0.7)


def _machine(p: dict) -> str:
    """', CPU <model> (<n> threads)' from a pipeline JSON (wall-clock figures depend on the CPU), '' when unknown."""
    model = (p.get("cpu") or {}).get("model")
    return f", CPU {model} ({p['threads']} threads)" if model and p.get("threads") else ""


def dataset_section(name: str, res: dict, pipes: list) -> list[str]:
    lines = [f"**{NAMES.get(name, name)}** — backbone all-MiniLM-L6-v2, exits after every layer, "
             f"cost = {res['cost_profile']} (bs 1, this machine). Full model accuracy "
             f"{100 * res['full_model']['accuracy']:.2f}; per-exit accuracy "
             f"{', '.join(f'{100 * a:.1f}' for a in res['per_exit_accuracy'])}.", ""]
    methods = list(res["methods"])
    lines.append("| budget | " + " | ".join(methods) + " |")
    lines.append("|---:|" + "---:|" * len(methods))
    for i, b in enumerate(res["budgets"]):
        cells = [f"{100 * res['methods'][m][i]['accuracy']:.2f} ({res['methods'][m][i]['mean_cost']:.2f})" for m in methods]
        policies = [j for j, m in enumerate(methods) if not m.startswith("Oracle")]
        best = max(res["methods"][methods[j]][i]["accuracy"] for j in policies)
        cells = [f"**{c}**" if j in policies and res["methods"][methods[j]][i]["accuracy"] == best else c
                 for j, c in enumerate(cells)]
        lines.append(f"| {b:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: test accuracy % (realised mean cost, fraction of the full model); bold = best policy "
                 "(the oracle is an upper bound, not a policy). "
                 f"Plot and model card: `model_cards/{name}/`.")
    for path, p in pipes:
        lines += ["", f"Wall-clock through the pipeline ({name} test texts, `{path}`{_machine(p)}, command in the file; bf16 / int8 "
                  "early exit use a scheduler bank refitted on that precision's validation outputs; all ratios are "
                  "against the fp32 full model timed in the same run):", "",
                  "| batch | texts | configuration | texts/s | speed-up vs full fp32 | accuracy Δ (pt) | mean cost |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
        for r in p["rows"]:
            if r["mode"] == "ee" and r["budget"] not in SHOW_BUDGETS:
                continue
            label = {"full": f"full model {r['precision']}",
                     "engine": f"early-exit engine {r['precision']}, no exit (every text to the last exit)"}.get(
                r["mode"], f"early exit {r['precision']}, budget {r['budget']}")
            lines.append(f"| {r['batch_size']} | {r['texts']} | {label} | {r['texts_per_s']:.1f} | "
                         f"{r['speedup_vs_full_fp32']:.2f}x | {r['accuracy_delta_pt']:+.2f} | {r['mean_cost']:.3f} |")
        if any(r["mode"] == "engine" for r in p["rows"]):
            lines += ["", "The full model runs through the stock pipeline (texts in input order, each batch padded to "
                      "its longest text); over a list the budgeted pipeline runs depth waves (texts sorted by length "
                      "into micro-batches, layer by layer), which is faster even when no text exits early (the "
                      "\"no exit\" row). What early exit itself adds is a budget's speed-up over that row."]
    return lines


BASELINE_NAMES = ("BranchyNet (entropy)", "MSDNet (max-prob)", "PABEE (patience)", "Static")


def _mark(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets_section(name: str, res: dict, pipe: dict | None) -> list[str]:
    """The issue's targets, each reported as met / not met with its figure (computed, not typed)."""
    lines = [f"Targets on {name} (test split; policies calibrated on validation only):", ""]
    ee = {r["budget"]: r for r in res["methods"][EENET]}
    gaps = []
    for b in res["budgets"]:
        if not 0.3 - 1e-9 <= b <= 0.8 + 1e-9:
            continue
        i = res["budgets"].index(b)
        best_name = max(BASELINE_NAMES, key=lambda m: res["methods"][m][i]["accuracy"])
        gaps.append((b, 100 * (ee[b]["accuracy"] - res["methods"][best_name][i]["accuracy"]), best_name))
    worst = min(gaps, key=lambda g: g[1])
    lines.append(f"- EENet ≥ best baseline at every budget 0.3–0.8 (ties within 0.2 pt): "
                 f"{_mark(all(g >= -0.2 for _, g, _ in gaps))}; EENet − best baseline (pt): "
                 + ", ".join(f"{b:.1f}: {g:+.2f}" for b, g, _ in gaps)
                 + f" (worst {worst[1]:+.2f} at {worst[0]:.1f} vs {worst[2]})")
    if 0.5 in ee:
        d = 100 * (ee[0.5]["accuracy"] - res["full_model"]["accuracy"])
        lines.append(f"- Budget 0.5 within 1.0 pt of the full model: {_mark(d >= -1.0)} ({d:+.2f} pt, "
                     f"{100 * ee[0.5]['accuracy']:.2f} vs {100 * res['full_model']['accuracy']:.2f})")
    ratios = [(b, r["mean_cost"] / b) for b, r in ee.items()]
    off = [f"{b:.2f}: {x:.3f}" for b, x in ratios if abs(x - 1) > 0.03]
    lines.append(f"- EENet realised test cost within ±3% of the budget: {_mark(not off)} (cost/budget from "
                 f"{min(x for _, x in ratios):.3f} to {max(x for _, x in ratios):.3f}"
                 + (f"; outside at {', '.join(off)})" if off else ")"))
    fit = [v["fit_seconds"] for v in (res.get("scheduler_fit") or {}).values() if "fit_seconds" in v]
    if fit:
        lines.append(f"- Scheduler fit time: {min(fit):.1f}–{max(fit):.1f} s per budget "
                     f"({len(fit)} budgets, {res['splits']['validation']} validation rows)")
    if pipe:
        rows = pipe["rows"]
        for bs in sorted({r["batch_size"] for r in rows}):
            r = next((r for r in rows if r["batch_size"] == bs and r["mode"] == "ee" and r["precision"] == "fp32"
                      and r["budget"] == 0.5), None)
            if r:
                base = next((e for e in rows if e["batch_size"] == bs and e["mode"] == "engine"), None)
                own = (f"; {r['speedup_vs_full_fp32'] / base['speedup_vs_full_fp32']:.2f}x over the engine with no "
                       "exit" if base else "")
                lines.append(f"- Wall-clock speed-up at budget 0.5, batch size {bs}, ≥ 1.8x{_machine(pipe)}: "
                             f"{_mark(r['speedup_vs_full_fp32'] >= 1.8)} ({r['speedup_vs_full_fp32']:.2f}x, "
                             f"{r['accuracy_delta_pt']:+.2f} pt{own})")
        widest = max(rows, key=lambda r: (r.get("texts", 0), r["batch_size"]))
        for bs in sorted({r["batch_size"] for r in rows}):
            cands = [dict(r) for r in rows if r["batch_size"] == bs and r["mode"] == "ee" and r["precision"] == "int8"]
            if not cands:
                continue
            where = ""
            if cands[0].get("texts", 0) < widest.get("texts", 0):  # timed (and scored) on the first texts only:
                for r in cands:  # accuracy from the run of the same model and bank on the most texts
                    r["accuracy_delta_pt"] = next(
                        e["accuracy_delta_pt"] for e in rows if e["batch_size"] == widest["batch_size"]
                        and e["mode"] == "ee" and e["precision"] == "int8" and e["budget"] == r["budget"])
                where = (f"; accuracy of the batch-{widest['batch_size']} run on {widest['texts']} test texts, the "
                         f"same model and bank: batch {bs} was timed and scored on the first {cands[0]['texts']}")
            ok = [r for r in cands if r["accuracy_delta_pt"] >= -1.0]
            best = max(ok or cands, key=lambda r: r["speedup_vs_full_fp32"])
            lines.append(f"- Early exit + int8 ≥ 4x at ≤ 1 pt loss, batch size {bs}{_machine(pipe)}: "
                         f"{_mark(bool(ok) and best['speedup_vs_full_fp32'] >= 4.0)} (best within 1 pt: "
                         + (f"budget {best['budget']}, {best['speedup_vs_full_fp32']:.2f}x, "
                            f"{best['accuracy_delta_pt']:+.2f} pt" if ok else "none; "
                            f"fastest {best['speedup_vs_full_fp32']:.2f}x at {best['accuracy_delta_pt']:+.2f} pt")
                         + where + ")")
        mem = pipe.get("memory", [])
        if mem:
            lines.append("- Peak memory during inference (batch 32, separate process per configuration; peak RSS, "
                         "and its growth over the loaded model): " + "; ".join(
                             f"{'full model' if m['budget'] is None else 'early exit B=' + str(m['budget'])} "
                             f"{m['peak_rss_mib']:.0f} MiB"
                             + (f" (+{m['inference_growth_mib']:.0f})" if "inference_growth_mib" in m else "")
                             for m in mem))
    return lines + [""]


def _load_result(name: str) -> dict | None:
    path = ROOT / "benchmarks" / "results" / name
    return json.loads(path.read_text()) if path.exists() else None


def engine_and_synthetic_sections() -> list[str]:
    lines = []
    e = _load_result("early_exit_engine.json")
    if e:
        lines += ["**Early-exit engine overhead** (`benchmarks/results/early_exit_engine.json`: stock "
                  "`BertForSequenceClassification` vs our early exit with fixed exit mixes, MiniLM, SST-2 test "
                  f"sentences, {e['threads']} CPU threads):", "",
                  "| setting | speed-up at bs 1 | speed-up at bs 32 |", "|---|---:|---:|"]
        by = {}
        for r in e["rows"]:
            by.setdefault(r["setting"], {})[r["batch_size"]] = r["speedup_vs_full"]
        for name, v in by.items():
            lines.append(f"| {name} | {v.get(1, float('nan')):.2f}x | {v.get(32, float('nan')):.2f}x |")
        lines.append("")
    t = _load_result("train_step.json")
    if t:
        lines += [f"**Training step** (`benchmarks/results/train_step.json`): multi-exit {t['multi_exit_ms']:.0f} ms vs "
                  f"single-exit {t['single_exit_ms']:.0f} ms per batch of {t['batch_size']} = "
                  f"{t['ratio']:.3f}x (target ≤ 1.15x{', self-distillation term included' if t.get('distill') else ''}; "
                  f"exit pooling {t.get('exit_pooling', 'cls')}).", ""]
    f = _load_result("scheduler_fit.json")
    if f:
        lines += [f"**Scheduler fit** (`benchmarks/results/scheduler_fit.json`, synthetic N = {f['n']:,}, "
                  f"K = {f['num_exits']}, C = {f['num_classes']}, {f['restarts']} restarts, {f['threads']} threads): "
                  f"{f['seconds']:.1f} s (target ≤ 30 s); held-out realised cost {f['heldout_cost']:.3f} at budget "
                  f"{f['budget']}.", ""]
    r = _load_result("synthetic_policies.json")
    if r:
        methods = list(r["methods"])
        lines += ["**Synthetic check** (`benchmarks/results/synthetic_policies.json`, known ground truth where exit-1 "
                  "correctness depends on the class; calibrated on 10,000 rows, evaluated on 20,000 held-out rows; "
                  "cells: accuracy % (realised cost)):", "",
                  "| budget | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
        for i, b in enumerate(r["budgets"]):
            lines.append(f"| {b:.2f} | " + " | ".join(
                f"{100 * r['methods'][m][i]['accuracy']:.2f} ({r['methods'][m][i]['mean_cost']:.2f})" for m in methods) + " |")
        lines.append("")
    return lines


def int8_parity_lines(path: str, p: dict) -> list[str]:
    """Batched vs alone for fp32, int8 and bf16 (``benchmarks/int8_batch_parity.py``): per precision and path, the worst
    budget's counts of texts with another exit / label and the largest score difference."""
    lines = [f"Batched vs each text alone (`{path}`, {p['texts']} test texts, budgets "
             f"{', '.join(next(iter(p['results'].values())))}; worst budget shown):", "",
             "| precision | path | texts with another exit | with another label | max score difference |",
             "|---|---|---:|---:|---:|"]
    for prec, per_budget in p["results"].items():
        for path_name in next(iter(per_budget.values())):
            rs = [per_budget[b][path_name] for b in per_budget]
            lines.append(f"| {prec} | {path_name} | {max(r['exit_differs'] for r in rs)} | "
                         f"{max(r['label_differs'] for r in rs)} | "
                         f"{max(r['max_abs_score_diff'] for r in rs):.1e} |")
    return lines + [""]


def precision_drift_lines() -> list[str]:
    """A bank fitted in float32 served from the model cast to bf16 / fp16 (``benchmarks/precision_drift.py``): per
    dataset and precision, the largest moves over the bank's budgets."""
    files = sorted((ROOT / "benchmarks" / "results").glob("precision_drift_*.json"))
    if not files:
        return []
    worst = 0.0
    lines = ["Serving a float32-fitted bank from the model loaded in bf16 / fp16 (`dtype=` at load; "
             f"`benchmarks/precision_drift.py`, {', '.join(f'`{f.relative_to(ROOT)}`' for f in files)}; test texts, "
             "every budget of the bank, largest value over budgets shown):", "",
             "| dataset | precision | realised cost − fp32's | texts with another exit | accuracy Δ (pt) |",
             "|---|---|---:|---:|---:|"]
    for f in files:
        p = json.loads(f.read_text())
        fp32 = {r["budget"]: r for r in p["rows"] if r["precision"] == "fp32"}
        for prec in dict.fromkeys(r["precision"] for r in p["rows"] if r["precision"] != "fp32"):
            rs = [r for r in p["rows"] if r["precision"] == prec]
            cost = max((r["cost_minus_fp32"] for r in rs), key=abs)
            worst = max(worst, abs(cost))
            acc = max((100 * (r["accuracy"] - fp32[r["budget"]]["accuracy"]) for r in rs), key=abs)
            lines.append(f"| {p['dataset']} ({p['rows_scored']:,} rows) | {prec} | {cost:+.4f} | "
                         f"{100 * max(r['exit_differs_from_fp32'] for r in rs):.1f} % | {acc:+.2f} |")
    return lines + ["", f"On this CPU the realised cost moved by at most {worst:.4f} of the full model's cost from the "
                    "float32 bank's: these models need no refit to serve in half precision (GPU half-precision "
                    "kernels round differently; not measured). A model whose exits are less confident (a small or "
                    "barely trained one) can drift more; refit its bank on the cast model's validation outputs "
                    "(`EENetTrainer.fit_scheduler` on the cast model) when it does.", ""]


def build() -> str:
    out = [START, ""]
    for name in ("sst2", "ag_news"):
        path = ROOT / "model_cards" / name / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        pipes = [(str(f.relative_to(ROOT)), json.loads(f.read_text()))
                 for f in sorted((ROOT / "benchmarks" / "results").glob(f"pipeline_{name}*.json"))]
        main_pipe = next((p for path, p in pipes if path.endswith(f"pipeline_{name}.json")), None)
        out += dataset_section(name, res, pipes) + [""] + targets_section(name, res, main_pipe)
        parity = ROOT / "benchmarks" / "results" / f"int8_batch_parity_{name}.json"
        if parity.exists():
            out += int8_parity_lines(str(parity.relative_to(ROOT)), json.loads(parity.read_text()))
    if len(out) == 2:
        out += ["No committed SST-2 / AG News runs yet: run `benchmarks/run_reproduction.sh`.", ""]
    out += engine_and_synthetic_sections()
    out += precision_drift_lines()
    out += ["Generated by `python benchmarks/make_readme_results.py` from the committed JSON; the commands are in "
            "`benchmarks/README.md`.", END]
    return "\n".join(out)


def write_readme_block(start: str, end: str, block: str, what: str, after: str | None = None) -> None:
    """Replace the README's ``start … end`` block by ``block`` (inserted after the ``after`` marker, or at the end,
    when missing); ``--check`` exits 1 instead of writing when the README is not up to date. Shared by the README
    generators in this folder."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if the README block is not up to date")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if start in text:
        i, j = text.index(start), text.index(end) + len(end)
        new = text[:i] + block + text[j:]
    elif after is not None:
        k = text.index(after) + len(after) if after in text else len(text)
        new = text[:k] + "\n\n" + block + text[k:]
    else:
        raise SystemExit(f"README.md has no {start} ... {end} block")
    if args.check:
        sys.exit(0 if new == text else 1)
    readme.write_text(new)
    print(f"README {what} section regenerated")


def main():
    write_readme_block(START, END, build(), "results")


if __name__ == "__main__":
    main()
