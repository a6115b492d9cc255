"""Where depth waves spend their time at micro-batch 128 on a GPU (diagnosis for issue 11's micro-batch-128 rows; no target).

For each shape and dtype: the stock model and depth waves (every row to the last exit, and B=0.5) over the same
texts; reports the median wall time of ``--repeats`` unprofiled passes, the device's busy time in one pass under
``torch.profiler`` (sum of its device events: kernels, copies, fills; idle = wall - busy: the device waiting for the
host), the number of device events, and the ops that take the most device and host time. Random weights and planned exits as in ``bench_engine.py``.

    python benchmarks/gpu_profile_waves.py --device cuda --texts .gpu/sst2_test.tsv --tokenizer .gpu/tok \
        --json gpu_profile_waves.json
CPU smoke test: ``--device cpu --n_texts 64 --shapes minilm_l6 --dtypes fp32`` (no device kernels: busy time 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import (Bench, command_line, cycled, device_name, load_texts, make_plan, sst2_shares,  # noqa: E402
                          sync, timed, versions, write)


def _device_ms(e) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(e, attr):
            return getattr(e, attr) / 1e3
    return 0.0


def kernel_stats(prof) -> dict:
    """Device busy time (device-side events: kernels, copies, fills), their count, the top device events and the top
    host ops by their own CPU time."""
    cuda = torch.autograd.DeviceType.CUDA

    def on_device(e):  # device-side events; record_function ranges also appear there as user annotations
        return getattr(e, "device_type", None) == cuda and not getattr(e, "is_user_annotation", False)

    device_events = [e for e in prof.events() if on_device(e)]
    averages = prof.key_averages()
    top_dev = sorted((e for e in averages if on_device(e)), key=lambda e: -_device_ms(e))
    top_cpu = sorted((e for e in averages if getattr(e, "device_type", None) != cuda),
                     key=lambda e: -e.self_cpu_time_total)
    return {"device_busy_ms": sum(_device_ms(e) for e in device_events), "device_events": len(device_events),
            "top_device": [{"name": e.key[:120], "ms": _device_ms(e), "count": e.count} for e in top_dev[:10]],
            "top_host_ops": [{"op": e.key[:120], "self_cpu_ms": e.self_cpu_time_total / 1e3, "count": e.count}
                             for e in top_cpu[:10]]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--texts", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shares", default=str(Path(__file__).resolve().parents[1] / "model_cards" / "sst2" / "results.json"))
    p.add_argument("--shapes", default="minilm_l6,bert_base_l12")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--mb", type=int, default=128)
    p.add_argument("--n_texts", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5, help="unprofiled passes; their median is the wall time")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    from transformers import AutoTokenizer

    dev = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    texts = cycled(load_texts(args.texts, args.n_texts), args.n_texts)
    enc = tok(texts, truncation=True, max_length=128)
    shares = sst2_shares(args.shares)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    out = {"command": command_line(["python", *sys.argv]),
           "device": device_name(dev), "versions": versions(), "micro_batch": args.mb, "n_texts": args.n_texts,
           "notes": "wall_ms = median of --repeats unprofiled passes after a warm-up; device busy = device events' time "
                    "summed over one profiled pass; device_idle_share = 1 - busy / wall",
           "runs": []}
    n, mb = args.n_texts, args.mb
    for shape in args.shapes.split(","):
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if dname not in args.dtypes.split(","):
                continue
            Bench._batches = {}
            bench = Bench(args, shape, dtype, dev, enc)
            plans = {"all-last": torch.full((n,), bench.K - 1, dtype=torch.long),
                     "B=0.5": make_plan(shares[0.5], n, seed=0)}
            configs = [("stock", None)] + [("waves", p) for p in plans]
            for engine, plan in configs:
                run = lambda: bench.run(engine, n, mb, None if plan is None else plans[plan])  # noqa: E731
                run()  # warm-up
                wall = statistics.median(timed(run, dev) for _ in range(args.repeats))
                sync(dev)
                with profile(activities=activities) as prof:
                    profiled = timed(run, dev)
                row = {"shape": shape, "dtype": dname, "engine": engine, "plan": plan, "wall_ms": wall * 1e3,
                       "profiled_wall_ms": profiled * 1e3, **kernel_stats(prof)}
                row["device_idle_share"] = (max(0.0, 1 - row["device_busy_ms"] / row["wall_ms"])
                                            if dev.type == "cuda" else None)
                out["runs"].append(row)
                print(f"{shape} {dname} {engine} {plan}: wall {row['wall_ms']:.1f} ms, device busy "
                      f"{row['device_busy_ms']:.1f} ms, {row['device_events']} device events", flush=True)
                write(out, args.json)
            del bench
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    write(out, args.json)


if __name__ == "__main__":
    main()
