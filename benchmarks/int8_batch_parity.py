"""How far batched results of an int8 (or bf16) model are from each text alone, next to the same model in fp32.

``quantize_dynamic_int8`` quantises activations per token (``hf_eenet.quantization.Int8Linear``), so no scale is
shared across a batch; what is left is padding: fp32 attention over a padded batch differs from the text alone in the
last bits, and int8 rounding can amplify that. This script measures it on a trained model's test texts: every text
alone through the pipeline (one text per call) is the reference; compared with it, at each budget, for the fp32 model
and its int8 copy (bank refitted on the int8 validation outputs, as ``bench_pipeline.py`` does):

* the pipeline over the list at ``batch_size=1`` (single-row depth waves: no padding in the layer calls),
* the pipeline over the list at ``batch_size=32`` (depth waves: length-sorted, padded micro-batches),
* the pipeline's per-batch loop (``batch_size=32, chunk_size=0``: batches in input order, padded).

``--precisions fp32,int8,bf16`` adds the fp32 model cast to bfloat16 with its fp32 bank (what
``from_pretrained(..., dtype=torch.bfloat16)`` serves): bf16 matmuls over a padded batch round differently from the
text alone, so the same question applies.

Reported per path: texts whose exit differs, texts whose label differs, and the largest score difference.

    python benchmarks/int8_batch_parity.py --model_dir ../outputs/sst2 --dataset sst2 --data_dir ../shared/data \\
        --json benchmarks/results/int8_batch_parity_sst2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import hf_eenet  # noqa: E402
from bench_pipeline import cpu_info  # noqa: E402
from recipes.presets import default_data_dir, load_task  # noqa: E402

PATHS = {"list, batch_size=1": {}, "list, batch_size=32": {"batch_size": 32},
         "per-batch loop, batch_size=32": {"batch_size": 32, "chunk_size": 0}}


def compare(clf, texts, budget) -> dict:
    alone = [clf(t, budget=budget)[0] for t in tqdm(texts, desc=f"alone B={budget}", unit="text", leave=False)]
    out = {}
    for name, kw in PATHS.items():
        got = clf(texts, budget=budget, **kw)
        out[name] = {
            "exit_differs": sum(a["exit_layer"] != g["exit_layer"] for a, g in zip(alone, got)),
            "label_differs": sum(a["label"] != g["label"] for a, g in zip(alone, got)),
            "max_abs_score_diff": max(abs(a["score"] - g["score"]) for a, g in zip(alone, got)),
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--dataset", required=True, choices=["sst2", "ag_news", "sst5"])
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--budgets", default="0.3,0.5,0.7")
    ap.add_argument("--max_texts", type=int, default=None, help="first N test texts (default: all)")
    ap.add_argument("--precisions", default="fp32,int8", help="comma-separated, of fp32, int8, bf16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    if not precisions or set(precisions) - {"fp32", "int8", "bf16"}:
        ap.error(f"--precisions takes fp32, int8, bf16; got {args.precisions!r}")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    splits = load_task(args.dataset, args.data_dir or default_data_dir(), seed=0)
    texts = list(splits["test"]["text"])[: args.max_texts]
    budgets = [float(b) for b in args.budgets.split(",")]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    fp32 = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
    models = {"fp32": fp32}
    if "int8" in precisions:
        models["int8"] = hf_eenet.quantize_dynamic_int8(fp32, tok, list(splits["validation"]["text"]),
                                                        list(splits["validation"]["label"]), budgets=budgets, seed=42)
    if "bf16" in precisions:
        models["bf16"] = AutoModelForSequenceClassification.from_pretrained(args.model_dir,
                                                                            dtype=torch.bfloat16).eval()
    results = {}
    with torch.inference_mode():
        for name in precisions:
            model = models[name]
            clf = pipeline("text-classification", model=model, tokenizer=tok)
            results[name] = {str(b): compare(clf, texts, b) for b in budgets}
    for name, per_budget in results.items():
        for b, paths in per_budget.items():
            for path, r in paths.items():
                print(f"{name} B={b} {path:32s} exit differs {r['exit_differs']:4d}  label differs "
                      f"{r['label_differs']:4d}  max |d score| {r['max_abs_score_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/int8_batch_parity.py " + " ".join(sys.argv[1:]), "texts": len(texts),
            "reference": "each text alone through the pipeline (one text per call)", "results": results,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_info(),
            "machine": platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
