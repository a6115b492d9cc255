"""GPU check of the EENet decision path (docs/method.md §7): no host synchronisation, CPU/GPU parity, decide timing.

Fits a scheduler on the synthetic agreement generator (CPU), moves it to CUDA and runs the online exit loop there
with ``torch.cuda.set_sync_debug_mode("error")`` around every ``decide`` call (any host sync raises), compares the
exits with the CPU ``exit_index``, and times ``decide`` per exit (CUDA events) against the max-prob rule.

    python benchmarks/gpu_decide_check.py --json benchmarks/results/gpu_decide_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from hf_eenet.policies import MaxProbPolicy  # noqa: E402
from hf_eenet.scheduler import EENetScheduler  # noqa: E402
from bench_engine import command_line  # noqa: E402
from test_scheduler import COSTS, make_agreement_data  # noqa: E402


def online_exits(policy, probs, device):
    """The exit loop on ``device``: rows leave the batch, state sliced with them; decide under sync-debug 'error'."""
    n, k_total, _ = probs.shape
    p = probs.to(device)
    exits = torch.full((n,), k_total - 1, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)
    state = policy.init_state(n, device)
    cuda = torch.device(device).type == "cuda"
    for k in range(k_total - 1):
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            stop = policy.decide(k, p[rows, k], state)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        exits[rows[stop]] = k
        keep = ~stop
        rows = rows[keep]
        state = {key: v[keep] for key, v in state.items()}
        if rows.numel() == 0:
            break
    return exits.cpu()


def time_decide(policy, k_total, num_classes, batch, device, repeats=200):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(k_total, batch, num_classes, generator=g), -1).to(device)
    for _ in range(10):
        st = policy.init_state(batch, device)
        for k in range(k_total - 1):
            policy.decide(k, probs[k], st)
    if torch.device(device).type != "cuda":  # CPU smoke run
        st = policy.init_state(batch, device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for k in range(k_total - 1):
                policy.decide(k, probs[k], st)
        return (time.perf_counter() - t0) / (repeats * (k_total - 1)) * 1e6
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    st = policy.init_state(batch, device)
    start.record()
    for _ in range(repeats):
        for k in range(k_total - 1):
            policy.decide(k, probs[k], st)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (repeats * (k_total - 1)) * 1000  # µs per decide call (launch-bound)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cuda (the check); cpu only smoke-tests the script")
    args = ap.parse_args()
    dev = torch.device(args.device)
    probs, labels = make_agreement_data(3000, seed=1)
    test_probs, _ = make_agreement_data(20000, seed=2)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke run: no sync check)"
    out = {"device": name, "torch": torch.__version__, "checks": {}}
    for features in ("agreement", "base"):
        sched = EENetScheduler(features=features, restarts=1).fit(probs, labels, COSTS, 0.5, seed=0)
        cpu_exits = sched.exit_index(test_probs)
        sched = sched.to(dev)
        gpu_exits = online_exits(sched, test_probs, dev)
        same = int((cpu_exits == gpu_exits).sum())
        out["checks"][features] = {"rows": len(cpu_exits), "same_exit_cpu_vs_gpu": same,
                                   "no_host_sync_in_decide": dev.type == "cuda"}
        out["checks"][features]["decide_us"] = {
            str(b): time_decide(sched, 6, 4, b, dev) for b in (1, 64, 4096)}
    mp = MaxProbPolicy.calibrate(probs, labels, COSTS, 0.5)
    out["maxprob_decide_us"] = {str(b): time_decide(mp, 6, 4, b, dev) for b in (1, 64, 4096)}
    out["command"] = command_line(["python", "benchmarks/gpu_decide_check.py", *sys.argv[1:]])
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
