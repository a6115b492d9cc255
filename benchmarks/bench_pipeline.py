"""Real wall-clock of budgeted early exit through the pipeline vs the full model, side by side in one run.

For a trained model folder (from ``recipes/run_eenet.py``) and its dataset's test texts, at each batch size:
  * full model: the same weights with the last exit's head only, through the stock pipeline: the stock
    ``BertForSequenceClassification``/``RobertaForSequenceClassification`` for first-token exits, the single-exit
    EENet model for mean-pooled exits (see ``full_model``);
  * early exit at each budget through ``pipeline("text-classification")(texts, budget=B)``;
  * the early-exit engine with every text sent to the last exit (fp32, ``exit_policy=StaticPolicy(last)``): over a
    list the budgeted pipeline runs depth waves (texts sorted by length into micro-batches, layer by layer), which
    is faster than the stock pipeline even without any early exit; the ratio of a budget's row to this one is
    what early exit itself adds;
  * compounding: early exit at each budget with bf16 autocast, and with int8 quantisation of the Linear layers
    (``hf_eenet.quantization``: int8 weights, activations quantised per token); plus the full model in bf16 / int8
    (the same int8 linears) for reference.
    Quantisation shifts the exits' probabilities, so thresholds fitted on the fp32 model no longer meet the budget
    (they send almost every row to exit 1): for bf16 / int8 early exit the scheduler bank is refitted at the same
    budgets on the *reduced-precision* model's own validation outputs (``--no_refit`` to skip; fit time reported).
Prints throughput (texts/s), speed-up vs the fp32 full model, accuracy, realised mean cost, and the peak RSS of a
separate process per configuration (``--memory``). Settings are timed interleaved, ``--rounds`` times; medians.

    python benchmarks/bench_pipeline.py --model_dir outputs/sst2 --dataset sst2 --json benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hf_eenet  # noqa: E402,F401
from recipes.presets import default_data_dir, load_task  # noqa: E402  (the SST-2 / AG News presets)


def precision_ctx(prec: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()


def validation_exit_probs(model, tok, texts, prec, batch_size=64, max_length=128):
    """``[N, K, C]`` per-exit probabilities of ``model`` (all-exits forward) under precision ``prec``."""
    out = []
    with precision_ctx(prec), torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            out.append(model(**enc).exit_logits.float().softmax(-1))
    return torch.cat(out).numpy()


def refit_bank(model, tok, prec, val_texts, val_labels, budgets, seed=42) -> dict:
    """Refit the EENet scheduler bank at ``budgets`` on the (quantised / bf16) model's own validation outputs."""
    import numpy as np

    t0 = time.perf_counter()
    probs = validation_exit_probs(model, tok, val_texts, prec)
    fwd = time.perf_counter() - t0
    info = {"validation_rows": len(val_texts), "forward_seconds": fwd, "fit_seconds": {}}
    for b in budgets:
        t1 = time.perf_counter()
        sched = hf_eenet.EENetScheduler.from_config(model.config.scheduler_config).fit(probs, np.asarray(val_labels), model.config.exit_costs, b, seed=seed)
        model.add_scheduler(sched, b)
        info["fit_seconds"][str(b)] = time.perf_counter() - t1
    return info


def full_model(model_dir: str):
    """The full model the early exit is compared with: same weights, the last exit's head only.

    First-token exits: the stock ``BertForSequenceClassification`` / ``RobertaForSequenceClassification`` (the
    exit heads are simply not loaded). Mean-pooled exits (``exit_pooling="mean"``) have no stock equivalent, so the
    same EENet class with a single exit at the last layer (no intermediate heads, no policy) serves as the full model.
    """
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        BertForSequenceClassification,
        RobertaForSequenceClassification,
    )

    config = AutoConfig.from_pretrained(model_dir)
    if config.exit_pooling == "cls":
        stock_cls = RobertaForSequenceClassification if "roberta" in config.model_type else BertForSequenceClassification
        return stock_cls.from_pretrained(model_dir).eval()
    single = config.to_dict()
    single.update(exit_layers=[config.num_hidden_layers], exit_costs=[1.0], exit_cost_profile="layers",
                  scheduler_budgets=None, scheduler_config=None, scheduler_bank=None, default_budget=None)
    single = {k: v for k, v in single.items() if k not in ("model_type", "transformers_version")}
    return AutoModelForSequenceClassification.from_pretrained(model_dir, config=type(config)(**single)).eval()


def stock_pipeline(model, tokenizer, **kwargs):
    """The stock ``TextClassificationPipeline`` itself, also for the single-exit EENet full model (hf_eenet routes a
    direct construction of the stock class with one of its models to the budgeted pipeline)."""
    from transformers import TextClassificationPipeline

    pipe = TextClassificationPipeline.__new__(TextClassificationPipeline)  # no model given: the stock instance
    pipe.__init__(model=model, tokenizer=tokenizer, **kwargs)
    return pipe


def build(model_dir: str, variant: str, refit=None):
    """(pipeline, is_early_exit) for variant in {full, ee} x {fp32, bf16, int8}: 'full-fp32', 'ee-int8', ..."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kind, prec = variant.split("-")
    tok = AutoTokenizer.from_pretrained(model_dir)
    if kind == "full":
        model = full_model(model_dir)
        pipe_cls = stock_pipeline
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        pipe_cls = hf_eenet.EENetTextClassificationPipeline
    refit_info = None
    if prec == "int8" and kind == "ee":  # the supported entry point: backbone + heads int8, bank refitted on its outputs
        from hf_eenet.quantization import quantize_dynamic_int8

        val_texts, val_labels, budgets = refit if refit is not None else (None, None, None)
        model = quantize_dynamic_int8(model, tok, val_texts, val_labels, budgets=budgets, refit=refit is not None,
                                      inplace=True, seed=42)
        refit_info = model.eenet_quantization["refit"]
    elif prec == "int8":  # the full model for reference: every Linear of the stock / single-exit classifier
        from hf_eenet.quantization import quantize_linears_int8

        quantize_linears_int8(model)
    pipe = pipe_cls(model=model, tokenizer=tok)
    if kind == "ee" and prec == "bf16" and refit is not None:
        refit_info = refit_bank(model, tok, prec, *refit)
    if refit_info is not None:
        pipe.refit_info = refit_info
    return pipe, kind == "ee"


def run_variant(pipe, is_ee, prec, texts, budget, batch_size):
    kw = {"budget": budget} if is_ee else {}
    if budget == "last":  # the early-exit engine, every text to the last exit
        k = pipe.model.config.num_exits
        kw = {"exit_policy": hf_eenet.StaticPolicy(k - 1, k)}
    with precision_ctx(prec), torch.inference_mode():
        return pipe(texts, batch_size=batch_size, truncation=True, max_length=128, **kw)


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure_memory(args) -> None:
    """Child process: build one configuration, then reset the kernel's peak-RSS mark (``/proc/self/clear_refs``)
    and run it once, so the reported peak is that of inference (weights + activations), not of loading the data
    or the checkpoint. Prints ``{"peak_rss_mib", "rss_before_mib", "inference_growth_mib"}``."""
    import gc

    texts, _ = load_texts(args)
    pipe, is_ee = build(args.model_dir, args.memory_variant)
    prec = args.memory_variant.split("-")[1]
    run_variant(pipe, is_ee, prec, texts[:8], args.memory_budget, args.memory_batch_size)  # warm-up (lazy inits)
    gc.collect()
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
    run_variant(pipe, is_ee, prec, texts[: args.memory_rows], args.memory_budget, args.memory_batch_size)
    peak = _proc_status_kib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024,
                      "inference_growth_mib": (peak - before) / 1024}))


def load_texts(args, split="test"):
    ds = load_task(args.dataset, args.data_dir or default_data_dir(), seed=0)[split]
    if args.max_texts and split == "test":  # the refit always uses the whole validation split
        ds = ds.select(range(min(args.max_texts, len(ds))))
    return list(ds["text"]), list(ds["label"])


def accuracy(preds, labels, id2label) -> float:
    label2id = {v: k for k, v in id2label.items()}
    return sum(label2id[p["label"]] == y for p, y in zip(preds, labels)) / len(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--dataset", required=True, choices=["sst2", "ag_news"])
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--budgets", default="0.3,0.5,0.7")
    ap.add_argument("--batch_sizes", default="1,32")
    ap.add_argument("--max_texts", type=int, default=None, help="first N test texts (default: all)")
    ap.add_argument("--bs1_texts", type=int, default=400, help="texts timed at batch size 1 (it is slow)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per configuration (subprocesses)")
    ap.add_argument("--no_refit", action="store_true",
                    help="bf16 early exit: keep the fp32-fitted scheduler bank instead of refitting it (int8 early "
                         "exit always refits: hf_eenet.quantization drops a bank not fitted on its outputs)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory_variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory_budget", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory_batch_size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--memory_rows", type=int, default=256, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_variant:
        return measure_memory(args)

    texts, labels = load_texts(args)
    budgets = [float(b) for b in args.budgets.split(",")]
    precs = args.precisions.split(",")
    refit = None if args.no_refit else (*load_texts(args, "validation"), budgets)
    if args.no_refit and "int8" in precs:
        raise SystemExit("--no_refit applies to bf16 only: int8 early exit needs a bank fitted on the int8 outputs")
    pipes = {f"{k}-{p}": build(args.model_dir, f"{k}-{p}", refit) for k in ("full", "ee") for p in precs}
    refit_info = {v: p.refit_info for v, (p, _) in pipes.items() if hasattr(p, "refit_info")}
    for v, info in refit_info.items():
        print(f"{v}: scheduler bank refitted on {info['validation_rows']} validation rows "
              f"(forward {info['forward_seconds']:.1f} s, fits {sum(info['fit_seconds'].values()):.1f} s)")
    id2label = pipes["full-fp32"][0].model.config.id2label
    configs = [("full", p, None) for p in precs] + [("ee", p, b) for p in precs for b in budgets]
    if "fp32" in precs:
        configs.insert(len(precs), ("engine", "fp32", "last"))
    rows = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        sub = texts[: args.bs1_texts] if bs == 1 else texts
        sub_labels = labels[: len(sub)]
        times = {c: [] for c in configs}
        outputs = {}
        for c in configs:  # warm-up, and the predictions used for accuracy / cost
            pipe, is_ee = pipes[f"{'ee' if c[0] == 'engine' else c[0]}-{c[1]}"]
            outputs[c] = run_variant(pipe, is_ee, c[1], sub, c[2], bs)
        for _ in range(args.rounds):
            for c in configs:
                pipe, is_ee = pipes[f"{'ee' if c[0] == 'engine' else c[0]}-{c[1]}"]
                t0 = time.perf_counter()
                run_variant(pipe, is_ee, c[1], sub, c[2], bs)
                times[c].append(time.perf_counter() - t0)
        full_t = statistics.median(times[("full", "fp32", None)])
        full_acc = accuracy(outputs[("full", "fp32", None)], sub_labels, id2label)
        print(f"\n{args.dataset} test, batch size {bs}, {len(sub)} texts, {torch.get_num_threads()} threads")
        print(f"{'configuration':28s} {'texts/s':>9s} {'speed-up':>9s} {'accuracy':>9s} {'Δacc pt':>8s} {'mean cost':>10s}")
        for c in configs:
            t = statistics.median(times[c])
            acc = accuracy(outputs[c], sub_labels, id2label)
            cost = statistics.mean(o.get("cost", 1.0) for o in outputs[c])
            name = (f"engine {c[1]}, no exit" if c[0] == "engine" else
                    f"{'early exit' if c[0] == 'ee' else 'full model'} {c[1]}" + (f" B={c[2]}" if c[2] else ""))
            print(f"{name:28s} {len(sub) / t:9.1f} {full_t / t:8.2f}x {100 * acc:9.2f} {100 * (acc - full_acc):+8.2f} "
                  f"{cost:10.3f}")
            rows.append({"batch_size": bs, "mode": c[0], "precision": c[1],
                         "budget": None if c[0] == "engine" else c[2], "texts": len(sub),
                         "seconds": t, "texts_per_s": len(sub) / t, "speedup_vs_full_fp32": full_t / t,
                         "accuracy": acc, "accuracy_delta_pt": 100 * (acc - full_acc), "mean_cost": cost})
    memory = []
    if args.memory:
        for variant, budget in [("full-fp32", None)] + [("ee-fp32", b) for b in budgets]:
            cmd = [sys.executable, __file__, "--model_dir", args.model_dir, "--dataset", args.dataset,
                   "--memory_variant", variant, "--memory_batch_size", "32"]
            if args.data_dir:
                cmd += ["--data_dir", args.data_dir]
            if budget is not None:
                cmd += ["--memory_budget", str(budget)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            memory.append({"variant": variant, "budget": budget, **json.loads(out)})
            print(f"peak RSS {variant:10s} B={budget}: {memory[-1]['peak_rss_mib']:.0f} MiB (inference growth {memory[-1]['inference_growth_mib']:.0f} MiB)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]), "rows": rows,
            "memory": memory, "refit": refit_info, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "cpu": cpu_info()}, indent=2))


def cpu_info() -> dict:
    """CPU model and the bf16 / int8 instruction sets that decide how fast bf16 autocast and int8 run (Linux)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}
    return {"model": model or platform.processor() or platform.machine(), "flags": sorted(flags & wanted)}


if __name__ == "__main__":
    main()
