"""CPU benchmark of the served model's weights check (not a test): what a request pays after a weight event.

A BERT-base-shaped model (12 layers, h768, vocab 30,522; random weights) with a fitted scheduler bank, with and
without the packed CPU layers (``use_fused_cpu_layers``), serves one text per request at budget 0.5. Timed, side by
side in one run, on one CPU thread:

* the full digest of the weights (``weights_digest``: what a forced check, a save or a load computes);
* one sample of the weights (``weight_events.weight_sample``: the first in the process, then warm);
* the median request with no weight event in between, and with an unrelated optimizer step (one SGD step over a
  3-element tensor, as temperature scaling would take) before each request: the cheap check compares the sample
  (and the packed layers theirs) instead of digesting.

    python benchmarks/bench_weights_check.py [--requests 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from bench_common import machine_fields  # noqa: E402
from conftest import random_batch, tiny_model  # noqa: E402  (the tests' model and batch builders)
from test_bank import all_exit_probs  # noqa: E402

from hf_eenet.bank import data_fingerprint, weights_digest  # noqa: E402
from hf_eenet.scheduler import EENetScheduler  # noqa: E402
from hf_eenet.weight_events import weight_sample  # noqa: E402


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=15, help="requests per timed condition (median reported)")
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    torch.set_num_threads(1)

    model = tiny_model(layers=12, num_labels=2, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                       vocab_size=30522, max_position_embeddings=512)
    batch = random_batch(n=64, max_len=16, vocab=30522, seed=0)
    probs = all_exit_probs(model, batch)
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(0))
    sched = EENetScheduler(restarts=1, max_epochs=6).fit(probs, labels, model.config.exit_costs, 0.5)
    items = [t for _, t in sorted(model.state_dict(keep_vars=True).items())]

    first_sample = ms(lambda: weight_sample(items))  # the first in this process builds the positions
    warm_sample = statistics.median(ms(lambda: weight_sample(items)) for _ in range(5))
    digest = statistics.median(ms(lambda: weights_digest(model)) for _ in range(3))
    model.set_scheduler_bank({0.5: sched}, data_fingerprint=data_fingerprint(probs, labels))
    request = {k: v[:1] for k, v in batch.items()}
    other = torch.ones(3, requires_grad=True)

    def serve(unrelated_step: bool) -> float:
        times = []
        for _ in range(args.requests):
            if unrelated_step:
                other.grad = torch.ones_like(other)
                torch.optim.SGD([other], lr=0.01).step()
            with torch.inference_mode():
                times.append(ms(lambda: model(**request, budget=0.5)))
        return statistics.median(times)

    rows = {}
    for fused in (False, True):
        model.use_fused_cpu_layers(fused)
        serve(False)  # warm up (packs the layers)
        quiet, stepped = serve(False), serve(True)
        rows["fused" if fused else "stock"] = {"request_ms": quiet, "request_after_unrelated_step_ms": stepped,
                                               "overhead_ms": stepped - quiet}
    result = {
        "model": "BERT-base shape (12 layers, h768, vocab 30522), random weights, bank at budget 0.5",
        "digest_ms": digest, "sample_first_ms": first_sample, "sample_warm_ms": warm_sample,
        "sampled_bytes": sum(s.numel() for s in weight_sample(items)),
        "weight_bytes": sum(t.numel() * t.element_size() for t in items), "requests": rows,
        **machine_fields(command),
    }
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, "
          f"load avg {result['load_avg_1min']:.2f}")
    print(f"full digest {digest:.1f} ms; sample {first_sample:.1f} ms first, {warm_sample:.1f} ms warm "
          f"({result['sampled_bytes']:,} of {result['weight_bytes']:,} bytes)")
    for name, row in rows.items():
        print(f"{name} layers: request {row['request_ms']:.1f} ms, after an unrelated step "
              f"{row['request_after_unrelated_step_ms']:.1f} ms (+{row['overhead_ms']:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
