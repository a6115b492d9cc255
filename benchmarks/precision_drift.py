"""Serving a bank fitted in float32 from a model cast to bfloat16 / float16: how far the realised cost drifts.

A bank's thresholds are fitted on the float32 model's exit probabilities. A server that loads the model with
``dtype=torch.bfloat16`` (or calls ``model.half()``) keeps the bank (its weights check accepts a model cast once for
serving), but the exits' probabilities round differently, so a row near a threshold can take another exit and the
realised cost can move away from the budget. This measures that move on a trained model's test texts: for every
bank entry, the realised cost and accuracy of the exits it picks from the float32 probabilities and from the cast
model's, and the share of rows whose exit differs. Offline (the model's own bank applied to all-exits outputs; the
served path gives the same exits: tests/test_trainer_pipeline.py::test_budget_early_exit_matches_offline_scheduler).

    python benchmarks/precision_drift.py --model_dir outputs/sst2 --dataset sst2 --json benchmarks/results/precision_drift_sst2.json

When the drift matters for a budget, refit the bank on the cast model's own validation outputs
(``EENetTrainer.fit_scheduler`` on the cast model; ``benchmarks/bench_pipeline.py`` shows the refit for bf16).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import hf_eenet  # noqa: E402,F401  (registers the model classes)
from bench_common import machine_fields  # noqa: E402
from recipes.presets import default_data_dir, load_task, preset_names  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def exit_probs(model, tok, texts, pairs=None, batch_size=64) -> torch.Tensor:
    """``[N, K, C]`` float32 probabilities of every exit (all-exits forward, the model in its own dtype), inputs
    truncated to the length the model serves (``max_input_tokens``: its recorded ``config.max_seq_length``)."""
    from hf_eenet.configuration_eenet import max_input_tokens

    max_length = max_input_tokens(model.config, tok)
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(texts), batch_size), desc=f"exits ({model.dtype})", leave=False):
            args = (texts[i:i + batch_size],) + ((pairs[i:i + batch_size],) if pairs is not None else ())
            enc = tok(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**enc).exit_logits.float().softmax(-1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--dataset", required=True, choices=preset_names())
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--precisions", default="bf16,fp16", help="cast dtypes compared with fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ds = load_task(args.dataset, args.data_dir or default_data_dir())[args.split]
    texts = list(ds["text"])
    pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
    labels = np.asarray(ds["label"])
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
    costs = np.asarray(base.config.exit_costs, dtype=np.float64)
    budgets = list(base.config.scheduler_budgets)
    probs = {"fp32": exit_probs(base, tok, texts, pairs)}
    for name in [p for p in args.precisions.split(",") if p]:
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, dtype=DTYPES[name]).eval()
        probs[name] = exit_probs(model, tok, texts, pairs)
    rows = []
    for b, sched in zip(budgets, base.eenet_schedulers):
        exits = {p: np.asarray(sched.exit_index(v)) for p, v in probs.items()}
        for p, e in exits.items():
            pred = probs[p][torch.arange(len(e)), torch.as_tensor(e)].argmax(-1).numpy()
            rows.append({"budget": b, "precision": p, "realised_cost": float(costs[e].mean()),
                         "cost_minus_fp32": float(costs[e].mean() - costs[exits["fp32"]].mean()),
                         "accuracy": float((pred == labels).mean()),
                         "exit_differs_from_fp32": float((e != exits["fp32"]).mean())})
            print(f"B={b:g} {p}: cost {rows[-1]['realised_cost']:.4f} ({rows[-1]['cost_minus_fp32']:+.4f}) "
                  f"acc {rows[-1]['accuracy']:.4f} exits differ {rows[-1]['exit_differs_from_fp32']:.3f}")
    result = {**machine_fields("python " + " ".join(shlex.quote(a) for a in sys.argv)),
              "model_dir": Path(args.model_dir).name, "dataset": args.dataset, "split": args.split,
              "rows_scored": len(texts), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
