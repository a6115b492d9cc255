"""Regenerate the README's early-exit engine tables (GPU and CPU) from the committed JSON of ``bench_engine.py``.

Rewrites the block between ``<!-- engine-results:start -->`` and ``<!-- engine-results:end -->`` (a block of its own,
so that it never collides with ``make_readme_results.py``'s section).

    python benchmarks/make_readme_engine.py [--check]
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- engine-results:start -->", "<!-- engine-results:end -->"
RESULTS = ROOT / "benchmarks" / "results"
SHAPE_NAMES = {"minilm_l6": "MiniLM-L6 (h384, exits 1..6)", "bert_base_l12": "BERT-base-L12 (h768, exits 2,4,..,12)"}


def _load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _cell(entry, engine, plan):
    for r in entry["rows"]:
        if r["engine"] == engine and r["plan"] == plan:
            return f"{r['speedup_vs_stock']:.2f}x"
    return "–"


def _ideal(entry, plan):
    for r in entry["rows"]:
        if r["plan"] == plan:
            return f"{r['ideal_speedup']:.2f}x"
    return "–"


def sweep_table(res, columns) -> list[str]:
    """One row per (shape, dtype, micro-batch); ``columns`` = [(engine, plan), ...]; last column: ideal at B=0.5."""
    head = ["shape, dtype", "micro-batch", "stock texts/s"] + [f"{e} {p}" for e, p in columns] + ["ideal B=0.5"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for e in res["sweep"]:
        cells = [f"{SHAPE_NAMES.get(e['shape'], e['shape'])}, {e['dtype']}", str(e["micro_batch"]),
                 f"{e['stock_texts_per_s']:,.0f}"]
        cells += [_cell(e, eng, p) for eng, p in columns]
        cells.append(_ideal(e, "B=0.5"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def build() -> str:
    out = [START, ""]
    cur = _load("engine_gpu_h200.json")
    if cur:
        out += [f"**Depth waves on a GPU** (`benchmarks/results/engine_gpu_h200.json`, {cur['device']}, torch "
                f"{cur['versions']['torch']}, transformers {cur['versions']['transformers']}; random weights, "
                f"{cur['sweep'][0]['n_texts']:,} SST-2 test sentences, rows exit by a fixed plan drawn from the exit "
                "shares EENet chose on SST-2 at each budget, so only the engine differs). Cells: throughput / stock "
                "`BertForSequenceClassification` (same weights, same length-sorted micro-batches); `waves` = "
                "`model.early_exit_predict` / the pipeline over a list, `loop` = the per-request loop "
                "(`model(..., budget=)`), `all-last` = every row to the last exit (the engine's overhead):", ""]
        out += sweep_table(cur, [(e, p) for p in ("B=0.5", "B=0.9", "all-last") for e in ("waves", "loop")]) + [""]
    full = _load("engine_gpu_h200_sweep.json")
    if full:
        out += [f"Full sweep, one run (`benchmarks/results/engine_gpu_h200_sweep.json`, {full['device']}; "
                "`legacy` = the loop before this change; engine one commit before the chunk-padding fix, see "
                "`code` in the JSON):", ""]
        out += sweep_table(full, [("waves", p) for p in ("B=0.3", "B=0.5", "B=0.7", "B=0.9", "all-last")]
                           + [(e, p) for p in ("B=0.5", "all-last") for e in ("loop", "legacy")])
        out.append("")
        if full.get("memory"):
            out += ["Peak device memory of depth waves above the weights (B=0.5, micro-batch 128, "
                    f"{full['memory'][0]['n_texts']:,} texts):", "",
                    "| shape, dtype | chunk_size | peak extra MiB | texts/s |", "|---|---:|---:|---:|"]
            for m in full["memory"]:
                out.append(f"| {SHAPE_NAMES.get(m['shape'], m['shape'])}, {m['dtype']} | {m['chunk_size']} | "
                           f"{m['peak_extra_bytes'] / 2**20:.0f} | {m['texts_per_s']:,.0f} |")
            out.append("")
    cpu = _load("engine_cpu.json")
    if cpu and cpu.get("sweep"):
        out += [f"**Same benchmark on this machine's CPU** (`benchmarks/results/engine_cpu.json`, {cpu['device']}; "
                "shared with other jobs while it ran, so absolute numbers are noisy; ratios are side by side):", ""]
        out += sweep_table(cpu, [(e, p) for p in ("B=0.5", "B=0.9", "all-last") for e in ("waves", "loop", "legacy")])
        out.append("")
    pipe = _load("engine_cpu_pipeline.json")
    if pipe and pipe.get("pipeline"):
        out += [f"**Real SST-2 model through the pipeline, CPU** (`benchmarks/results/engine_cpu_pipeline.json`, "
                f"{pipe['device']}): speed-up vs the full model through the stock pipeline:", "",
                "| batch_size | path | budget | speed-up | mean cost |", "|---:|---|---:|---:|---:|"]
        for e in pipe["pipeline"]:
            for r in e["rows"]:
                out.append(f"| {e['batch_size']} | {r['path']} | {r['budget']} | {r['speedup_vs_full']:.2f}x | "
                           f"{r['mean_cost']:.3f} |")
        out.append("")
    if len(out) == 2:
        out += ["No committed engine benchmark yet: run `benchmarks/bench_engine.py`.", ""]
    out += ["Generated by `python benchmarks/make_readme_engine.py` from the committed JSON (commands inside).", END]
    return "\n".join(out)


def main():
    from make_readme_results import write_readme_block

    write_readme_block(START, END, build(), "engine")


if __name__ == "__main__":
    main()
