"""Regenerate the README's results section from the committed JSON (never hand-typed numbers).

Reads ``model_cards/<dataset>/results.json`` (recipe output) and, when present, ``benchmarks/results/pipeline_<dataset>.json``
(wall-clock benchmark) and rewrites the block between ``<!-- results:start -->`` and ``<!-- results:end -->``.

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
SHOW_BUDGETS = (0.3, 0.5, 0.7)


def dataset_section(name: str, res: dict, pipe: dict | None) -> list[str]:
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
    if pipe:
        lines += ["", f"Wall-clock through the pipeline ({name} test texts, `benchmarks/results/pipeline_{name}.json`):", "",
                  "| batch | configuration | texts/s | speed-up vs full fp32 | accuracy Δ (pt) |", "|---:|---|---:|---:|---:|"]
        for r in pipe["rows"]:
            if r["mode"] == "full" and r["precision"] != "fp32":
                continue
            if r["mode"] == "ee" and r["budget"] not in SHOW_BUDGETS:
                continue
            label = "full model fp32" if r["mode"] == "full" else f"early exit {r['precision']}, budget {r['budget']}"
            lines.append(f"| {r['batch_size']} | {label} | {r['texts_per_s']:.1f} | {r['speedup_vs_full_fp32']:.2f}x | "
                         f"{r['accuracy_delta_pt']:+.2f} |")
    return lines


def engine_and_synthetic_sections() -> list[str]:
    lines = []
    eng = ROOT / "benchmarks" / "results" / "early_exit_engine.json"
    if eng.exists():
        e = json.loads(eng.read_text())
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
    ts = ROOT / "benchmarks" / "results" / "train_step.json"
    if ts.exists():
        t = json.loads(ts.read_text())
        lines += [f"**Training step** (`benchmarks/results/train_step.json`): multi-exit {t['multi_exit_ms']:.0f} ms vs "
                  f"single-exit {t['single_exit_ms']:.0f} ms per batch of {t['batch_size']} = "
                  f"{t['ratio']:.3f}x.", ""]
    syn = ROOT / "benchmarks" / "results" / "synthetic_policies.json"
    if syn.exists():
        r = json.loads(syn.read_text())
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


def build() -> str:
    out = [START, ""]
    for name in ("sst2", "ag_news"):
        path = ROOT / "model_cards" / name / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        pipe_path = ROOT / "benchmarks" / "results" / f"pipeline_{name}.json"
        pipe = json.loads(pipe_path.read_text()) if pipe_path.exists() else None
        out += dataset_section(name, res, pipe) + [""]
    if len(out) == 2:
        out += ["No committed SST-2 / AG News runs yet: run `benchmarks/run_reproduction.sh`.", ""]
    out += engine_and_synthetic_sections()
    out += ["Generated by `python benchmarks/make_readme_results.py` from the committed JSON; the commands are in "
            "`benchmarks/README.md`.", END]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    i, j = text.index(START), text.index(END) + len(END)
    new = text[:i] + build() + text[j:]
    if args.check:
        sys.exit(0 if new == text else 1)
    readme.write_text(new)
    print("README results section regenerated")


if __name__ == "__main__":
    main()
