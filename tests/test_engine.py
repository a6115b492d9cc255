"""Depth waves (hf_eenet/engine.py): same decisions, predictions and costs as each text alone, for every policy."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_kwargs, tiny_model
from transformers import AutoTokenizer, pipeline

import hf_eenet
from hf_eenet.engine import _LayerGraphs, _run_chunk, depth_wave_forward, iter_chunks, rows_from_encodings
from hf_eenet.policies import ExitPolicy, MaxProbPolicy

BUDGETS = [0.3, 0.5, 0.8]
POLICIES = ["eenet", "entropy", "maxprob", "patience", "static"]


def _calibration(model, seed):
    """All-exits softmax outputs of a calibration batch + labels that make exit 3 "right" most of the time."""
    batch = random_batch(n=48, max_len=20, seed=seed, pad_id=model.config.pad_token_id)
    with torch.no_grad():
        probs = model(**batch).exit_logits.softmax(-1)
    labels = probs[:, 2].argmax(-1)
    labels[::4] = (labels[::4] + 1) % probs.shape[-1]
    return probs, labels


_POLICY_CACHE = {}


def make_policy(name, model, budget, kind):
    key = (name, budget, kind)
    if key not in _POLICY_CACHE:
        probs, labels = _calibration(model, seed=11)
        costs = model.config.exit_costs
        if name == "eenet":
            policy = hf_eenet.EENetScheduler(restarts=1, max_epochs=20, fallback=False).fit(probs, labels, costs, budget, seed=0)
        else:
            cls = {"entropy": hf_eenet.EntropyPolicy, "maxprob": MaxProbPolicy, "patience": hf_eenet.PatiencePolicy,
                   "static": hf_eenet.StaticPolicy}[name]
            policy = cls.calibrate(probs, labels, costs, budget)
        _POLICY_CACHE[key] = policy
    return _POLICY_CACHE[key]


_MODELS = {}


def model_of(kind):
    if kind not in _MODELS:
        model = tiny_model(kind, seed=2, layers=6, exit_layers=[1, 2, 3, 4, 5, 6])
        # a random tiny model is almost uniform (entropy confidences ~1e-5, at float32's resolution near 1): sharpen
        # every exit so scores spread over (0, 1) and float noise between batch shapes stays far below their gaps
        with torch.no_grad():
            for head in model.exit_heads:
                head.out_proj.weight.mul_(40.0)
            last = model.classifier if kind == "bert" else model.classifier.out_proj
            last.weight.mul_(40.0)
        _MODELS[kind] = model
    return _MODELS[kind]


def per_row(model, batch, policy):
    """Each text alone (bs = 1, its own unpadded length) through the per-request loop."""
    logits, exits = [], []
    with torch.no_grad():
        for i in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][i].sum())
            out = model(**{k: v[i : i + 1, :n] for k, v in batch.items()}, exit_policy=policy)
            logits.append(out.logits[0])
            exits.append(int(out.exit_index[0]))
    return torch.stack(logits), torch.tensor(exits)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", POLICIES)
def test_waves_equal_each_text_alone(name, budget, kind):
    model = model_of(kind)
    policy = make_policy(name, model, budget, kind)
    # texts the policy was not calibrated on (no row sits exactly on a threshold), mixed lengths
    batch = random_batch(n=30, max_len=22, seed=5, pad_id=model.config.pad_token_id, min_len=2)
    ref_logits, ref_exits = per_row(model, batch, policy)
    stats = {}
    logits, exits = depth_wave_forward(model, rows_from_encodings(batch), policy, micro_batch_size=4,
                                       chunk_size=13, stats=stats)
    assert torch.equal(exits, ref_exits)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
    # the model-level entry: same, plus layer and cost of the exit taken
    out = model.early_exit_predict(batch, exit_policy=policy, batch_size=5, chunk_size=64)
    assert torch.equal(out.exit_index, ref_exits)
    costs = torch.tensor(model.config.exit_costs)
    torch.testing.assert_close(out.exit_cost, costs[ref_exits])
    assert torch.equal(out.exit_layer, torch.tensor(model.config.exit_layers)[ref_exits])
    # layer work follows the rows alive: Σ over layers of rows computed = Σ over rows of their exit layer
    layers_run = torch.tensor(model.config.exit_layers)[ref_exits]
    assert stats["layer_rows"] == int(layers_run.sum())
    # at most one host sync per decided exit per chunk (3 chunks, 5 exits that decide)
    assert stats["host_syncs"] <= 3 * (model.config.num_exits - 1)
    if name in ("eenet", "entropy", "maxprob") and budget == 0.5:
        assert len(set(ref_exits.tolist())) >= 2, "rows must spread over several exits for this test to bite"


class TracingPolicy(ExitPolicy):
    """Per-row state of several shapes that travels with the rows: every decide checks that each row's state is
    its own (ids) and logs what it saw, so the test can compare with the all-exits forward."""

    def __init__(self, num_exits, stop_at):
        self.num_exits = num_exits
        self.stop_at = stop_at  # [N] planned exit per row id
        self.next_id = 0
        self.seen = []

    def init_state(self, batch_size, device="cpu"):
        ids = torch.arange(self.next_id, self.next_id + batch_size, device=device)
        self.next_id += batch_size
        return {"id": ids, "pair": torch.stack([ids, ids * 2], 1), "hist": torch.zeros(batch_size, self.num_exits)}

    def decide(self, k, probs, state):
        ids = state["id"]
        assert torch.equal(state["pair"], torch.stack([ids, ids * 2], 1))
        assert torch.equal(state["hist"][:, :k], torch.full((ids.shape[0], k), 1.0) * torch.arange(1, k + 1))
        state["hist"] = state["hist"].clone()
        state["hist"][:, k] = k + 1
        self.seen.append((k, ids.clone(), probs.clone()))
        return self.stop_at[ids] == k


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_state_tensor_travels_with_its_row(kind):
    model = model_of(kind)
    batch = random_batch(n=23, max_len=18, seed=7, pad_id=model.config.pad_token_id)
    g = torch.Generator().manual_seed(0)
    plan = torch.randint(0, model.config.num_exits, (23,), generator=g)
    policy = TracingPolicy(model.config.num_exits, plan)
    _, exits = depth_wave_forward(model, rows_from_encodings(batch), policy, micro_batch_size=3, chunk_size=10)
    assert torch.equal(exits, plan)
    with torch.no_grad():
        all_probs = model(**batch).exit_logits.softmax(-1)
    for k, ids, probs in policy.seen:
        torch.testing.assert_close(probs, all_probs[ids, k], atol=1e-5, rtol=1e-5)


def test_full_model_without_policy_computes_only_the_last_exit():
    model = model_of("bert")
    batch = random_batch(n=9, max_len=16, seed=8)
    with torch.no_grad():
        ref = model(**batch)
    calls = []
    hooks = [h.register_forward_hook(lambda *a: calls.append(1)) for h in model.exit_heads]
    try:
        logits, exits = depth_wave_forward(model, rows_from_encodings(batch), None, micro_batch_size=4)
    finally:
        for h in hooks:
            h.remove()
    assert not calls
    assert torch.equal(exits, torch.full((9,), model.config.num_exits - 1))
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_rows_from_encodings_accepts_lists_tensors_and_rows():
    unpadded = {"input_ids": [[2, 5, 6], [2, 7]], "attention_mask": [[1, 1, 1], [1, 1]]}
    padded = {"input_ids": torch.tensor([[2, 5, 6], [2, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    per_text = [{"input_ids": torch.tensor([[2, 5, 6]])}, {"input_ids": torch.tensor([[2, 7]])}]
    for enc in (unpadded, padded, per_text):
        rows = rows_from_encodings(enc)
        assert [r["input_ids"].tolist() for r in rows] == [[2, 5, 6], [2, 7]]
    assert list(iter_chunks(iter(range(5)), 2)) == [[0, 1], [2, 3], [4]]


class _EagerGraphs(_LayerGraphs):
    """The graph cache with every CUDA call replaced by an eager "replay" (recompute into the static output), so
    the bucketing, masking and copies of ``cuda_graphs=True`` are checked on a CPU."""

    def _capture(self, i, width):
        step = self._step(i, width)
        out = step()

        class Replay:
            def replay(self):
                out.copy_(step())

        return Replay(), out


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("name", ["eenet", "entropy", "patience"])
def test_graph_path_pads_to_buckets_and_equals_each_text_alone(name, kind):
    model = model_of(kind)
    policy = make_policy(name, model, 0.5, kind)
    batch = random_batch(n=30, max_len=22, seed=5, pad_id=model.config.pad_token_id, min_len=2)
    ref_logits, ref_exits = per_row(model, batch, policy)
    graphs = _EagerGraphs(model, 4, bucket=8)
    logits, exits = _run_chunk(model, rows_from_encodings(batch), policy, 4, None, graphs)
    assert torch.equal(exits, ref_exits)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert graphs.graphs and all(width % 8 == 0 for _, width in graphs.graphs)
    assert any(width > 8 for _, width in graphs.graphs), "texts up to 22 tokens must reach wider buckets"
    # the model keeps the cache built through _LayerGraphs.of; release_cuda_graphs drops it and says how many
    with torch.no_grad():
        cached = _LayerGraphs.of(model, 4)
    cached.graphs.update(graphs.graphs)
    assert model.release_cuda_graphs() == len(graphs.graphs)
    assert "_eenet_layer_graphs" not in model.__dict__ and model.release_cuda_graphs() == 0


@pytest.mark.parametrize("name", ["eenet", "maxprob"])
def test_loop_graph_path_for_one_text_equals_eager(name, monkeypatch):
    import hf_eenet.engine as engine

    model = model_of("bert")
    policy = make_policy(name, model, 0.5, "bert")
    batch = random_batch(n=12, max_len=22, seed=6, pad_id=model.config.pad_token_id, min_len=2)
    ref_logits, ref_exits = per_row(model, batch, policy)
    made = []
    monkeypatch.setattr(engine, "layer_graphs", lambda m, rows: made.append(_EagerGraphs(m, rows)) or made[-1])
    monkeypatch.setattr(engine, "check_graphs_usable", lambda m: None)  # the eager replay stands in for CUDA
    with torch.no_grad():
        outs = [model(**{k: v[i : i + 1, : int(batch["attention_mask"][i].sum())] for k, v in batch.items()},
                      exit_policy=policy, cuda_graphs=True) for i in range(12)]
    assert made and all(g.graphs for g in made), "the graph path must have run"
    assert torch.equal(torch.cat([o.exit_index for o in outs]), ref_exits)
    torch.testing.assert_close(torch.cat([o.logits for o in outs]), ref_logits, atol=1e-4, rtol=1e-4)


def test_cuda_graphs_refuse_forward_hooks():
    model = tiny_model("bert", seed=3, layers=2, exit_layers=[1, 2])
    handle = model.bert.encoder.layer[1].output.register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(ValueError, match="would skip forward hooks"), torch.no_grad():
            _LayerGraphs.of(model, 4)
    finally:
        handle.remove()
    with torch.no_grad():
        assert _LayerGraphs.of(model, 4).mb == 4  # no hook: the cache is built


def test_cuda_graphs_refused_off_cuda():
    model = model_of("bert")
    rows = rows_from_encodings(random_batch(n=4, max_len=8, seed=1, pad_id=model.config.pad_token_id))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a model on a CUDA device"):
        depth_wave_forward(model, rows, None, micro_batch_size=2, cuda_graphs=True)
    policy = make_policy("maxprob", model, 0.5, "bert")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a model on a CUDA device"):
        model(input_ids=rows[0]["input_ids"][None], exit_policy=policy, cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        model(input_ids=rows[0]["input_ids"][None], exit_policy=policy, cuda_graphs="yes")
    # refused the same way whatever the batch size or policy (the graphs serve one text with a policy only, but a
    # call that could never use them is not silently run eagerly)
    two = random_batch(n=2, max_len=8, seed=1, pad_id=model.config.pad_token_id)
    for kw in ({"exit_policy": policy}, {}):
        with pytest.raises(ValueError, match="cuda_graphs=True needs a model on a CUDA device"):
            model(**two, cuda_graphs=True, **kw)
    with pytest.raises(TypeError, match="ExitPolicy"):
        depth_wave_forward(model, rows, "not a policy", micro_batch_size=2)


def test_graph_cache_keeps_one_entry_per_inference_mode_and_a_lock():
    model = model_of("bert")
    with torch.no_grad():
        a = _LayerGraphs.of(model, 4)
    with torch.inference_mode():
        b = _LayerGraphs.of(model, 4)
    with torch.no_grad():
        assert _LayerGraphs.of(model, 4) is a, "alternating modes must not recapture"
    assert a is not b and len(model.__dict__["_eenet_layer_graphs"]) == 2
    # with autograd on, a replay would overwrite what a captured graph saved for backward: every call is refused
    # (here, off CUDA, with both problems named), whatever its batch size
    two = random_batch(n=2, max_len=8, seed=1, pad_id=model.config.pad_token_id)
    for batch in ({k: v[:1] for k, v in two.items()}, two):
        with pytest.raises(ValueError, match=r"CUDA device, this one is on cpu, and runs only without autograd: call it under torch"):
            model(**batch, exit_policy=make_policy("maxprob", model, 0.5, "bert"), cuda_graphs=True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"CUDA device, this one is on cpu$"):
        model(**two, exit_policy=make_policy("maxprob", model, 0.5, "bert"), cuda_graphs=True)
    assert a.lock.acquire(blocking=False) and a.lock.acquire(blocking=False)  # re-entrant: run() inside the loop
    a.lock.release(), a.lock.release()
    with torch.no_grad(), torch.autocast(a.key[1].type, dtype=torch.bfloat16):  # graphs replay autocast's casts
        c = _LayerGraphs.of(model, 4)
    with torch.no_grad():
        assert c is not a and _LayerGraphs.of(model, 4) is a, "autocast on and off keep their own graphs"
    with torch.no_grad(), torch.autocast(a.key[1].type, dtype=torch.bfloat16):
        assert _LayerGraphs.of(model, 4) is c
    before = model.config._attn_implementation
    model.set_attn_implementation("eager" if before != "eager" else "sdpa")
    try:  # graphs replay the kernels they captured: another attention implementation recaptures
        with torch.no_grad():
            assert _LayerGraphs.of(model, 4) is not a
    finally:
        model.set_attn_implementation(before)


def test_a_model_with_captured_graphs_still_deep_copies_and_pickles():
    """The graph cache holds a lock and static buffers: copies leave the per-process caches out and rebuild them."""
    model = tiny_model("bert", layers=2)
    with torch.no_grad():
        graphs = _LayerGraphs.of(model, 4)
    model.__dict__["_eenet_checked_entries"] = {0: ("stale",)}
    copied = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    for m in (copied, restored):
        assert "_eenet_layer_graphs" not in m.__dict__ and "_eenet_checked_entries" not in m.__dict__
        batch = random_batch(n=3, max_len=8, seed=3, pad_id=m.config.pad_token_id)
        with torch.no_grad():
            torch.testing.assert_close(m(**batch).exit_logits, model(**batch).exit_logits)
    assert list(model.__dict__["_eenet_layer_graphs"].values()) == [graphs], "the original keeps its caches"


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda m: depth_wave_forward(m, [], None), ValueError, "empty"),
        (lambda m: depth_wave_forward(m, rows_from_encodings({"input_ids": [[2, 3]]}), None, chunk_size=0),
         ValueError, "chunk_size"),
        (lambda m: depth_wave_forward(m, rows_from_encodings({"input_ids": [[2, 3]]}), None, micro_batch_size=0),
         ValueError, "micro_batch_size"),
        (lambda m: rows_from_encodings({"input_ids": [[2, 3]], "attention_mask": [[0, 0]]}), ValueError, "no tokens"),
        (lambda m: rows_from_encodings({"input_ids": [[2, 3]], "attention_mask": [[1]]}), ValueError, "entries"),
        (lambda m: m.early_exit_predict(["a text"]), ValueError, "tokenizer"),
        (lambda m: m.early_exit_predict({"input_ids": [[2, 3]]}, budget=0.5), ValueError, "no fitted"),
        (lambda m: m.early_exit_predict({"input_ids": [[2, 3]]}, exit_policy="x"), TypeError, "ExitPolicy"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, err, match):
    with pytest.raises(err, match=match):
        call(model_of("bert"))


# ------------------------------------------------------------------------------------------------ pipeline + bank


@pytest.fixture(scope="module")
def banked(minilm_dir):
    """A tiny BERT with the MiniLM tokenizer's vocabulary and a fitted EENet bank at 0.4 and 0.7."""
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(3)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=30522),
                                   id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = hf_eenet.EENetBertForSequenceClassification(cfg).eval()
    words = "the film was good bad dull fine great plot story thin lovely awful it and is".split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(0, len(words), (int(n),), generator=g))
             for n in torch.randint(2, 14, (120,), generator=g)]
    enc = tok(texts[:80], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).exit_logits.softmax(-1)
    labels = probs[:, 1].argmax(-1)
    labels[::3] = 1 - labels[::3]
    for b in (0.4, 0.7):
        sched = hf_eenet.EENetScheduler(restarts=1, max_epochs=20).fit(probs, labels, cfg.exit_costs, b, seed=0)
        model.add_scheduler(sched, b)
    return model, tok, texts[80:]


@pytest.mark.parametrize("budget", [0.4, 0.7])
def test_pipeline_over_a_list_uses_waves_and_equals_text_by_text(banked, budget):
    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    one_by_one = [clf(t, budget=budget)[0] for t in texts]
    waves = clf(texts, budget=budget, batch_size=4, chunk_size=16)
    stock_loop = clf(texts, budget=budget, batch_size=4, chunk_size=0)
    default = clf(texts, budget=budget, batch_size=8)  # batch_size > 1: waves with the default chunk size
    for got in (waves, stock_loop, default):
        assert [(r["label"], r["exit_layer"], r["cost"]) for r in got] == \
            [(r["label"], r["exit_layer"], r["cost"]) for r in one_by_one]
        for a, b in zip(got, one_by_one):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert len({r["exit_layer"] for r in waves}) >= 2
    # a generator streams results chunk by chunk
    streamed = list(clf((t for t in texts), budget=budget, batch_size=4, chunk_size=7))
    assert [r["exit_layer"] for r in streamed] == [r["exit_layer"] for r in one_by_one]
    # the model-level entry on raw texts
    out = model.early_exit_predict(texts, tokenizer=tok, budget=budget, batch_size=4)
    assert out.exit_layer.tolist() == [r["exit_layer"] for r in one_by_one]


def test_pipeline_cost_is_the_configs_cost_on_every_path(minilm_dir):
    """The pipeline reports ``config.exit_costs[k]`` itself (as the CLI and the recipe's predictions do), not its
    float32 rounding (0.35 came back as 0.3499999940395355)."""
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=30522),
                                   exit_costs=[0.1, 0.35, 0.7, 1.0])
    model = hf_eenet.EENetBertForSequenceClassification(cfg).eval()
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    texts = ["a fine film", "dull", "the plot is thin and the story is awful"]
    for k in range(4):
        policy = hf_eenet.StaticPolicy(k, 4)
        for got in ([clf(t, exit_policy=policy)[0] for t in texts], clf(texts, exit_policy=policy, batch_size=2),
                    clf(texts, exit_policy=policy, batch_size=2, chunk_size=0)):
            assert [(r["exit_layer"], r["cost"]) for r in got] == [(k + 1, cfg.exit_costs[k])] * 3


def test_pipeline_waves_tokenize_a_chunk_in_one_call_with_the_ids_of_each_text(banked):
    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    rows = clf._chunk_rows(texts, {})
    alone = [clf.preprocess(t) for t in texts]
    assert [r["input_ids"].tolist() for r in rows] == [a["input_ids"][0].tolist() for a in alone]
    calls = []
    original = type(tok).__call__
    try:
        type(tok).__call__ = lambda self, *a, **k: calls.append(a) or original(self, *a, **k)
        clf(texts, budget=0.4, batch_size=4, chunk_size=16)
    finally:
        type(tok).__call__ = original
    assert len(calls) == -(-len(texts) // 16), "one tokenizer call per chunk"
    with pytest.raises(ValueError, match="empty string"):
        clf([texts[0], "  "], budget=0.4, batch_size=2)
    pairs = [{"text": t, "text_pair": t} for t in texts[:3]]  # pairs go text by text, same results as alone
    alone = [clf(p, budget=0.4) for p in pairs]
    alone = [a[0] if isinstance(a, list) else a for a in alone]
    got = clf(pairs, budget=0.4, batch_size=2)
    assert [(r["label"], r["exit_layer"]) for r in got] == [(a["label"], a["exit_layer"]) for a in alone]


def test_pipeline_list_at_batch_size_1_runs_single_row_waves_and_a_stream_goes_text_by_text(banked):
    """A list at the default batch_size=1 takes depth waves of one-row micro-batches (one tokenizer call per chunk of
    ``default_chunk_size_single`` texts); a generator at batch_size=1 keeps one result per text (one call per text).
    Both equal each text alone."""
    import hf_eenet.engine as engine

    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    one_by_one = [clf(t, budget=0.4)[0] for t in texts]
    seen, original_wave = [], engine.depth_wave_forward
    calls, original_tok = [], type(tok).__call__
    try:
        engine.depth_wave_forward = lambda *a, **k: seen.append(k["micro_batch_size"]) or original_wave(*a, **k)
        type(tok).__call__ = lambda self, *a, **k: calls.append(a) or original_tok(self, *a, **k)
        listed = clf(texts, budget=0.4)
        n_list_calls, n_list_waves = len(calls), len(seen)
        streamed = list(clf((t for t in texts), budget=0.4))
    finally:
        engine.depth_wave_forward = original_wave
        type(tok).__call__ = original_tok
    chunk = clf.default_chunk_size_single
    assert n_list_waves == -(-len(texts) // chunk) and set(seen) == {1}
    assert n_list_calls == n_list_waves, "one tokenizer call per chunk"
    assert len(seen) == n_list_waves, "the stream did not take depth waves"
    assert len(calls) - n_list_calls == len(texts), "the stream tokenizes text by text"
    for got in (listed, streamed):
        assert [(r["label"], r["exit_layer"], r["cost"]) for r in got] == \
            [(r["label"], r["exit_layer"], r["cost"]) for r in one_by_one]
        for a, b in zip(got, one_by_one):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_call_policy_or_budget_overrides_the_pipeline_default_in_every_path(banked):
    """``pipeline(..., budget=b)`` then ``clf(texts, exit_policy=p)``: the call's policy serves, through waves, the
    per-batch loop and text by text alike (and a call's budget overrides a pipeline-level policy)."""
    model, tok, texts = banked
    texts = texts[:9]
    first = hf_eenet.StaticPolicy(0, model.config.num_exits)  # every text at exit 1
    clf = pipeline("text-classification", model=model, tokenizer=tok, budget=0.7)
    assert {r["exit_layer"] for r in clf(texts)} != {1}, "the fixture's budget must send some texts deeper"
    for got in (clf(texts, exit_policy=first), clf(texts, exit_policy=first, chunk_size=0),
                [clf(t, exit_policy=first)[0] for t in texts], clf(texts, exit_policy=first, batch_size=4)):
        assert [r["exit_layer"] for r in got] == [1] * len(texts)
    by_policy = pipeline("text-classification", model=model, tokenizer=tok, exit_policy=first)
    want = [r["exit_layer"] for r in clf(texts)]
    assert [r["exit_layer"] for r in by_policy(texts, budget=0.7)] == want
    assert [by_policy(t, budget=0.7)[0]["exit_layer"] for t in texts] == want
    with pytest.raises(ValueError, match="either budget or exit_policy"):
        clf(texts, budget=0.4, exit_policy=first)
    with pytest.raises(TypeError, match="ExitPolicy"):
        clf(texts, exit_policy="x")


def test_waves_tokenize_text_by_text_when_tokenizer_options_could_change_the_ids(banked):
    model, tok, texts = banked
    texts = texts[:5]
    clf = pipeline("text-classification", model=model, tokenizer=tok)

    def key(results):
        return [(r["label"], r["exit_layer"], round(r["score"], 5)) for r in results]

    alone = key([clf(t, text_pair="a good film", budget=0.4)[0] for t in texts])
    assert key(clf(texts, text_pair="a good film", budget=0.4)) == alone  # text_pair= with a list at batch 1
    assert key(clf(texts, text_pair="a good film", budget=0.4, batch_size=2)) == alone
    alone = key([clf(t, padding=True, budget=0.4)[0] for t in texts])
    assert key(clf(texts, padding=True, budget=0.4)) == alone
    # overflowing tokens give several rows per text: refused (as text by text), never results misaligned with texts
    for kw in ({}, {"batch_size": 2}):
        with pytest.raises((ValueError, TypeError)):
            clf(texts, budget=0.4, truncation=True, max_length=4, return_overflowing_tokens=True, **kw)


def test_waves_read_a_sized_dataset_by_index_like_the_stock_pipeline(banked):
    model, tok, texts = banked
    texts = texts[:6]

    class DictDataset(torch.utils.data.Dataset):  # KeyError (not IndexError) past the end, like a dict-backed set
        def __init__(self, items):
            self.d = dict(enumerate(items))

        def __len__(self):
            return len(self.d)

        def __getitem__(self, i):
            return self.d[i]

    clf = pipeline("text-classification", model=model, tokenizer=tok)
    want = [clf(t, budget=0.4)[0]["exit_layer"] for t in texts]
    for kw in ({"batch_size": 1}, {"batch_size": 4}, {"batch_size": 4, "chunk_size": 0}, {"batch_size": 1,
                                                                                            "chunk_size": 4}):
        results = clf(DictDataset(texts), budget=0.4, **kw)
        if kw.get("chunk_size") != 0:  # waves: one result per text (the stock iterator counts its batches)
            assert len(results) == len(texts)
        assert [r["exit_layer"] for r in results] == want
    stream = clf((t for t in texts), budget=0.4, batch_size=4)
    with pytest.raises(TypeError):  # a generator has no length, on the stock path either
        len(stream)
    assert [r["exit_layer"] for r in stream] == want


def test_early_exit_predict_truncates_to_what_the_model_takes(banked):
    model, tok, texts = banked
    long_text = " ".join(["good film"] * 80)  # longer than the tiny model's position table
    assert len(tok(long_text)["input_ids"]) > model.config.max_position_embeddings
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    out = model.early_exit_predict([long_text], tokenizer=tok, budget=0.4)
    assert int(out.exit_layer[0]) == clf(long_text, budget=0.4)[0]["exit_layer"]


def test_pipeline_waves_reject_bad_chunk_size(banked):
    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="chunk_size"):
        clf(texts, batch_size=4, chunk_size=-1)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 0"):
        pipeline("text-classification", model=model, tokenizer=tok, chunk_size=-1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):  # not micro_batch_size
        clf(texts, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        model.early_exit_predict(texts, tokenizer=tok, batch_size=0)


def test_default_chunk_holds_at_least_32_micro_batches_on_every_path(banked, monkeypatch):
    """Without ``chunk_size`` a chunk is max(1024 texts, 32 micro-batches) (here scaled down to max(8, 4 x batch)),
    on the pipeline, ``early_exit_predict`` and ``depth_wave_forward`` alike; a pipeline's ``default_chunk_size``
    fixes it; results equal each text alone whatever the chunk."""
    import hf_eenet.engine as engine

    model, tok, texts = banked
    assert engine.default_chunk_size(1) == 1024 and engine.default_chunk_size(32) == 1024
    assert engine.default_chunk_size(64) == 2048 and engine.default_chunk_size(128) == 4096
    assert engine.default_chunk_size(1024) == 4096, "the default chunk's memory must not grow with the batch size"
    with pytest.raises(ValueError, match="micro_batch_size"):
        engine.default_chunk_size(0)
    monkeypatch.setattr(engine, "DEFAULT_CHUNK_TEXTS", 8)
    monkeypatch.setattr(engine, "DEFAULT_CHUNK_MICRO_BATCHES", 4)
    monkeypatch.setattr(engine, "DEFAULT_CHUNK_MAX_TEXTS", 20)
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    want = [(r["label"], r["exit_layer"]) for r in (clf(t, budget=0.4)[0] for t in texts)]
    seen, run_chunk = [], engine._run_chunk
    monkeypatch.setattr(engine, "_run_chunk", lambda m, rows, *a, **k: seen.append(len(rows)) or run_chunk(m, rows, *a, **k))
    n = len(texts)
    for batch_size, chunk in ((2, 8), (3, 12), (5, 20), (7, 20)):  # max(8, 4 x batch), at most 20
        seen.clear()
        got = clf(texts, budget=0.4, batch_size=batch_size)
        assert seen == [chunk] * (n // chunk) + ([n % chunk] if n % chunk else []), (batch_size, seen)
        assert [(r["label"], r["exit_layer"]) for r in got] == want
    seen.clear()
    out = model.early_exit_predict(texts, tokenizer=tok, budget=0.4, batch_size=3)
    assert seen == [12, 12, 12, 4]
    assert [model.config.id2label[int(i)] for i in out.logits.argmax(-1)] == [w[0] for w in want]
    assert out.exit_layer.tolist() == [w[1] for w in want]
    seen.clear()
    depth_wave_forward(model, rows_from_encodings(tok(texts)), model.get_exit_policy(0.4), micro_batch_size=5)
    assert seen == [20, 20]
    # a default chunk also ends before it holds more than DEFAULT_CHUNK_TOKENS (texts x its longest text): long texts
    # run in smaller chunks, on every path; a given chunk_size is taken as it is
    rows = rows_from_encodings(tok(texts))
    lengths = [int(r["input_ids"].shape[0]) for r in rows]
    cap = 4 * max(lengths)
    monkeypatch.setattr(engine, "DEFAULT_CHUNK_TOKENS", cap)
    bounds = engine.chunk_bounds(rows, 20, cap)
    assert [b for _, b in bounds[:-1]] == [a for a, _ in bounds[1:]] and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all((b - a) * max(lengths[a:b]) <= cap and b - a <= 20 for a, b in bounds)
    assert all((b - a + 1) * max(lengths[a:b + 1]) > cap for a, b in bounds[:-1])  # each as long as it may be
    assert engine.chunk_bounds(rows, 20, 1) == [(i, i + 1) for i in range(n)]  # a row alone always fits
    expected = [b - a for a, b in bounds]
    assert len(expected) > 2  # the token bound, not the 20 texts, ends these chunks
    for call in (lambda: clf(texts, budget=0.4, batch_size=7),
                 lambda: model.early_exit_predict(texts, tokenizer=tok, budget=0.4, batch_size=7),
                 lambda: depth_wave_forward(model, rows, model.get_exit_policy(0.4), micro_batch_size=7)):
        seen.clear()
        got = call()
        assert seen == expected, seen
    assert [(r["label"], r["exit_layer"]) for r in clf(texts, budget=0.4, batch_size=7)] == want
    seen.clear()
    clf(texts, budget=0.4, batch_size=7, chunk_size=20)
    assert seen == [20, 20]
    seen.clear()
    monkeypatch.setattr(engine, "DEFAULT_CHUNK_TOKENS", 1024 * 512)
    clf.default_chunk_size = 6  # a fixed default for every batch size
    clf(texts, budget=0.4, batch_size=5)
    assert seen == [6] * (n // 6) + [n % 6]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        pipeline("text-classification", model=model, tokenizer=tok)(texts, budget=0.4, batch_size=2.5)


def test_chunk_size_given_when_the_pipeline_is_built_is_its_default(banked):
    """``pipeline(..., chunk_size=N)`` sets the depth-wave chunk (it was taken for a tokenizer option and ignored);
    ``0`` keeps the stock per-batch loop; a call's own ``chunk_size`` wins. Results equal each text alone."""
    import hf_eenet.engine as engine

    model, tok, texts = banked
    want = [(r["label"], r["exit_layer"]) for r in
            (pipeline("text-classification", model=model, tokenizer=tok)(t, budget=0.4)[0] for t in texts)]
    seen, original = [], engine.depth_wave_forward
    try:
        engine.depth_wave_forward = lambda m, rows, *a, **k: seen.append(len(rows)) or original(m, rows, *a, **k)
        for built, call, chunks in ((7, {}, [7] * 5 + [5]), (7, {"chunk_size": 20}, [20, 20]), (0, {}, [])):
            seen.clear()
            clf = pipeline("text-classification", model=model, tokenizer=tok, chunk_size=built)
            assert "chunk_size" not in clf._preprocess_params  # not a tokenizer option
            got = clf(texts, budget=0.4, batch_size=4, **call)
            assert seen == chunks, (built, call, seen)
            assert [(r["label"], r["exit_layer"]) for r in got] == want
    finally:
        engine.depth_wave_forward = original


def test_early_exit_predict_takes_any_sequence_of_texts_and_one_text_s_unbatched_encoding(banked):
    """A NumPy array of strings (and a datasets column, a pandas Series: sized iterables of str) are texts, not
    tokenizer output; ``tok(text)`` (flat ids) and a 1-D id tensor are one row, not one row per token."""
    import numpy as np

    model, tok, texts = banked
    want = model.early_exit_predict(texts[:6], tokenizer=tok, budget=0.4)
    got = model.early_exit_predict(np.array(texts[:6]), tokenizer=tok, budget=0.4,
                                   text_pair=None)  # text_pair=None: the single-text path still
    assert got.exit_layer.tolist() == want.exit_layer.tolist()
    assert torch.equal(got.logits.argmax(-1), want.logits.argmax(-1))

    class Column:  # the shape of datasets' Column: sized, iterable, indexable, not a list
        def __init__(self, values):
            self.values = list(values)

        def __len__(self):
            return len(self.values)

        def __iter__(self):
            return iter(self.values)

        def __getitem__(self, i):
            return self.values[i]

    got = model.early_exit_predict(Column(texts[:6]), tokenizer=tok, budget=0.4)
    assert got.exit_layer.tolist() == want.exit_layer.tolist()
    pair = model.early_exit_predict(texts[:3], tokenizer=tok, budget=0.4, text_pair=Column(texts[3:6]))
    assert pair.exit_layer.tolist() == model.early_exit_predict(texts[:3], tokenizer=tok, budget=0.4,
                                                                text_pair=texts[3:6]).exit_layer.tolist()
    one = model.early_exit_predict(tok(texts[0]), budget=0.4)
    assert one.logits.shape[0] == 1 and one.exit_layer.tolist() == want.exit_layer[:1].tolist()
    flat = model.early_exit_predict({"input_ids": torch.tensor(tok(texts[1])["input_ids"])}, budget=0.4)
    assert flat.logits.shape[0] == 1 and flat.exit_layer.tolist() == want.exit_layer[1:2].tolist()
    with pytest.raises(ValueError, match="pass tokenizer="):
        model.early_exit_predict(np.array(texts[:2]), budget=0.4)
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string, got NoneType"):  # a missing first value
        model.early_exit_predict(Column([None, *texts[1:3]]), tokenizer=tok, budget=0.4)
    import pandas as pd

    frame = pd.DataFrame({"text": texts[:4], "label": [0, 1, 0, 1]})  # iterates over its column names
    with pytest.raises(TypeError, match=r"pass one column of it \(e.g. df\['text'\]\)"):
        model.early_exit_predict(frame, tokenizer=tok, budget=0.4)
    with pytest.raises(TypeError, match=r"text_pair must be one sequence of strings, got a DataFrame"):
        model.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4, text_pair=frame[["text"]])
    got = model.early_exit_predict(frame["text"], tokenizer=tok, budget=0.4)
    assert got.exit_layer.tolist() == want.exit_layer[:4].tolist()


def test_early_exit_predict_names_a_bad_text_and_refuses_rows_it_cannot_map_back(banked):
    model, tok, texts = banked
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got NoneType"):
        model.early_exit_predict([texts[0], None], tokenizer=tok, budget=0.4)
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string, got tuple .*text_pair="):
        model.early_exit_predict([(texts[0], texts[1])], tokenizer=tok, budget=0.4)
    # empty or blank texts (and second segments) are refused as the pipeline refuses them, on every path that
    # tokenizes texts: served, and read for a refit or a re-match (exit_probabilities)
    for call, match in (
            (lambda: model.early_exit_predict(["", texts[1]], tokenizer=tok, budget=0.4), r"texts\[0\] is an empty"),
            (lambda: model.early_exit_predict(texts[:2], tokenizer=tok, budget=0.4, text_pair=[texts[2], "  "]),
             r"text_pair\[1\] is an empty"),
            (lambda: model.early_exit_predict(texts[:2], tokenizer=tok, budget=0.4, text_pair=[texts[2]]),
             r"text_pair has 1 entries for 2 texts"),
            (lambda: hf_eenet.exit_probabilities(model, tok, [texts[0], " \n"], progress=False),
             r"texts\[1\] is an empty"),
            (lambda: hf_eenet.exit_probabilities(model, tok, texts[:2], text_pairs=["", texts[1]], progress=False),
             r"text_pairs\[0\] is an empty")):
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="early_exit_predict got return_overflowing_tokens=True: it splits a long "
                                         "text into several rows"):  # overflow rows: one text, many rows (review 108)
        model.early_exit_predict(texts[:5], tokenizer=tok, budget=0.4, max_length=6, stride=0,
                                 return_overflowing_tokens=True)
    # what the model was trained on (config.sentence_pairs, recorded by the recipe) is checked as in the pipeline
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    before = getattr(model.config, "sentence_pairs", None)
    try:
        model.config.sentence_pairs = True
        for call in (lambda: model.early_exit_predict(texts[:3], tokenizer=tok, budget=0.4),
                     lambda: clf(texts[:3], budget=0.4)):
            with pytest.raises(ValueError, match="trained on sentence pairs"):
                call()
        out = model.early_exit_predict(texts[:3], tokenizer=tok, budget=0.4, text_pair=texts[3:6])
        want = [clf({"text": a, "text_pair": b}, budget=0.4)["exit_layer"] for a, b in zip(texts[:3], texts[3:6])]
        assert out.exit_layer.tolist() == want
        model.config.sentence_pairs = False
        with pytest.raises(ValueError, match="trained on single texts"):
            model.early_exit_predict(texts[:3], tokenizer=tok, budget=0.4, text_pair=texts[3:6])
    finally:
        model.config.sentence_pairs = before


def test_serving_early_exit_in_training_mode_warns(banked):
    """Dropout on: exits and predictions are random and differ from what the bank was fitted on; every serving path
    says so (the all-exits forward used for training does not)."""
    model, tok, texts = banked
    enc = tok(texts[:4], padding=True, return_tensors="pt")
    model.train()
    try:
        for serve in (lambda: model.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4),
                      lambda: model(**enc, budget=0.4),
                      lambda: pipeline("text-classification", model=model, tokenizer=tok)(texts[:4], budget=0.4)):
            with pytest.warns(UserWarning, match="training mode .* call model.eval"):
                serve()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(**enc)  # all exits (training): no warning
    finally:
        model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**enc, budget=0.4)
    # the engine serves model code saved before the warning existed (the installed pipeline with older Hub code)
    from hf_eenet.modeling_eenet import EENetModelMixin

    want = model.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4).exit_index
    with pytest.MonkeyPatch.context() as mp:
        mp.delattr(EENetModelMixin, "_warn_if_training")
        rows = rows_from_encodings(tok(texts[:4]))
        assert torch.equal(depth_wave_forward(model, rows, model.get_exit_policy(0.4), micro_batch_size=2)[1], want)


def test_readme_engine_tables_are_generated_from_the_committed_json():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "make_readme_engine.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, "README engine tables are stale: run python benchmarks/make_readme_engine.py"


def test_benchmark_commands_record_no_machine_paths_and_run_as_written():
    """The commands the engine benchmarks write into their JSON: absolute paths become file names (also
    ``--x=/path`` and folders with a trailing slash), arguments are shell-quoted (a note with ``;``, an empty value)."""
    import shlex
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_engine import command_line

    argv = ["python", "benchmarks/bench_engine.py", "--tokenizer", "/m/repo/.gpu/tok/", "--json=/root/out/x.json",
            "-o=/tmp/y.json", "--note", "real model; fp16", "--chunk_sizes", "", "--texts", "data/t.tsv"]
    line = command_line(argv)
    assert line == ("python benchmarks/bench_engine.py --tokenizer tok --json=x.json -o=y.json --note 'real model; "
                    "fp16' --chunk_sizes '' --texts data/t.tsv")
    assert shlex.split(line)[7] == "real model; fp16" and "/" not in "".join(shlex.split(line)[3:7])


def _left_padded(batch, pad_id):
    """The same rows padded on the left (``padding_side="left"``)."""
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    width = mask.shape[1]
    out = {}
    for key, t in batch.items():
        fill = pad_id if key == "input_ids" else 0
        rows = [torch.cat([torch.full((width - int(n),), fill, dtype=t.dtype), t[i, : int(n)]])
                for i, n in enumerate(lengths)]
        out[key] = torch.stack(rows)
    return out


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("name", ["eenet", "entropy", "patience"])
def test_left_padded_batches_give_each_text_what_it_gets_alone(name, kind):
    model = model_of(kind)
    policy = make_policy(name, model, 0.5, kind)
    batch = random_batch(n=16, max_len=18, seed=9, pad_id=model.config.pad_token_id, min_len=2)
    left = _left_padded(batch, model.config.pad_token_id)
    assert not bool(left["attention_mask"][:, 0].all())  # really left-padded
    ref_logits, ref_exits = per_row(model, batch, policy)
    with torch.no_grad():
        loop = model(**left, exit_policy=policy)  # the per-request loop
        all_exits_right = model(**batch).exit_logits  # the all-exits forward (training, exit_probabilities)
        all_exits_left = model(**left).exit_logits
    assert torch.equal(loop.exit_index, ref_exits)
    torch.testing.assert_close(loop.logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(all_exits_left, all_exits_right, atol=1e-5, rtol=1e-5)
    waves = model.early_exit_predict(left, exit_policy=policy, batch_size=4)  # depth waves on tokenizer output
    assert torch.equal(waves.exit_index, ref_exits)
    torch.testing.assert_close(waves.logits, ref_logits, atol=1e-4, rtol=1e-4)
    # inputs_embeds and explicit position_ids move with their tokens
    pos = torch.arange(left["input_ids"].shape[1]).expand_as(left["input_ids"]) - \
        (left["attention_mask"] == 0).sum(1, keepdim=True)
    pos = pos.clamp(min=0) + (model.config.pad_token_id + 1 if kind == "roberta" else 0)
    with torch.no_grad():
        pos_ref = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]) + \
            (model.config.pad_token_id + 1 if kind == "roberta" else 0)
        emb = model(inputs_embeds=model.backbone.embeddings.word_embeddings(left["input_ids"]),
                    attention_mask=left["attention_mask"], token_type_ids=left.get("token_type_ids"),
                    position_ids=pos, exit_policy=policy)
        emb_ref = model(inputs_embeds=model.backbone.embeddings.word_embeddings(batch["input_ids"]),
                        attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"),
                        position_ids=pos_ref, exit_policy=policy)
    assert torch.equal(emb.exit_index, emb_ref.exit_index)
    torch.testing.assert_close(emb.logits, emb_ref.logits, atol=1e-4, rtol=1e-4)
    # position_ids broadcast over the batch ([1, S] or [S], as BERT takes them) are each row's own
    ids = torch.arange(left["input_ids"].shape[1]) + (model.config.pad_token_id + 1 if kind == "roberta" else 0)
    with torch.no_grad():
        full = model(**left, position_ids=ids.expand_as(left["input_ids"]), exit_policy=policy)
        for broadcast in (ids[None], ids):
            got = model(**left, position_ids=broadcast, exit_policy=policy)
            assert torch.equal(got.exit_index, full.exit_index)
            torch.testing.assert_close(got.logits, full.logits)


def test_pipeline_and_helpers_with_a_left_padding_tokenizer_equal_text_by_text(banked):
    model, tok, texts = banked
    left_tok = copy.deepcopy(tok)
    left_tok.padding_side = "left"
    ref = model.early_exit_predict(texts, tokenizer=tok, budget=0.4, batch_size=4)
    clf = pipeline("text-classification", model=model, tokenizer=left_tok)
    for kw in ({"batch_size": 4, "chunk_size": 0}, {"batch_size": 4}, {}):  # stock per-batch loop, waves, default
        got = clf(texts, budget=0.4, **kw)
        assert [r["exit_layer"] for r in got] == ref.exit_layer.tolist(), kw
    out = model.early_exit_predict(texts, tokenizer=left_tok, budget=0.4, batch_size=4, padding=True)
    assert torch.equal(out.exit_layer, ref.exit_layer)
    out = model.early_exit_predict(left_tok(texts, padding=True, return_tensors="pt"), budget=0.4, batch_size=4)
    assert torch.equal(out.exit_layer, ref.exit_layer)
    probs_left = hf_eenet.exit_probabilities(model, left_tok, texts, batch_size=8, progress=False)
    probs_right = hf_eenet.exit_probabilities(model, tok, texts, batch_size=8, progress=False)
    np.testing.assert_allclose(probs_left, probs_right, atol=1e-5)


def test_pipeline_pickles_and_deep_copies_after_a_call(banked):
    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    first = clf(texts[:6], budget=0.7)
    for clone in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        assert [(r["label"], r["exit_layer"]) for r in clone(texts[:6], budget=0.7)] == \
            [(r["label"], r["exit_layer"]) for r in first]


def test_the_stock_class_built_directly_with_an_eenet_model_honours_budget(banked):
    """``TextClassificationPipeline(model=eenet)`` (not through ``pipeline()``) used to pass ``budget=`` to the
    tokenizer and serve the full model; it now builds the budgeted pipeline. Other models keep the stock class."""
    from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline

    model, tok, texts = banked
    direct = TextClassificationPipeline(model=model, tokenizer=tok)
    assert isinstance(direct, hf_eenet.EENetTextClassificationPipeline)
    ref = pipeline("text-classification", model=model, tokenizer=tok)
    for b in (0.4, 0.7):
        assert direct(texts, budget=b) == ref(texts, budget=b)
    assert {r["exit_layer"] for r in direct(texts, budget=0.4)} != {4}, "budget= must reach the exit loop"
    with pytest.raises(ValueError, match="budget"):
        direct(texts[0], budget=0.05)  # not a fitted budget: refused, not ignored
    plain = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=1, intermediate_size=8)).eval()
    stock = TextClassificationPipeline(model=plain, tokenizer=tok)
    assert type(stock) is TextClassificationPipeline
    assert type(pickle.loads(pickle.dumps(stock))) is TextClassificationPipeline


    class Made:  # a user's mixin with its own __new__, after the stock class in the MRO: still runs
        def __new__(cls, *args, **kwargs):
            obj = object.__new__(cls)
            obj.made_by_mixin = True
            return obj

    class Mine(TextClassificationPipeline, Made):
        pass

    mine = Mine(model=plain, tokenizer=tok)
    assert type(mine) is Mine and mine.made_by_mixin


def test_budget_keywords_given_to_a_pipeline_that_would_drop_them_are_refused(banked):
    """The stock class hands unknown keywords to the tokenizer, which drops them: ``budget=`` to a model that is not
    ours, or to our model in a user's own subclass of the stock class, ran the full model as if the budget had been
    served. Both are refused by name; calls without them are unchanged."""
    from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline

    model, tok, texts = banked
    plain = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=1, intermediate_size=8)).eval()
    stock = pipeline("text-classification", model=plain, tokenizer=tok)
    assert type(stock) is TextClassificationPipeline
    want = stock(texts[:3])
    for kw in ({"budget": 0.5}, {"exit_policy": hf_eenet.StaticPolicy(0, 4)}, {"chunk_size": 8}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}= needs an hf_eenet early-exit model"):
            stock(texts[:3], **kw)
    with pytest.raises(ValueError, match="budget= needs"):
        pipeline("text-classification", model=plain, tokenizer=tok, budget=0.5)
    assert stock(texts[:3]) == want and stock(texts[0]) == want[:1]

    class Mine(TextClassificationPipeline):
        pass

    for mine in (Mine(model=model, tokenizer=tok), pipeline("text-classification", model=model, tokenizer=tok,
                                                               pipeline_class=Mine)):
        assert type(mine) is Mine
        with pytest.raises(ValueError, match="would be ignored by Mine"):
            mine(texts[0], budget=0.4)
        assert "label" in mine(texts[0])[0]  # without a budget it still runs (the full model)


def test_import_keeps_a_text_classification_pipeline_the_user_registered_for_other_models(banked):
    from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_eenet.pipeline_eenet import TextClassificationDispatch, register_text_classification

    model, tok, texts = banked
    plain = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=1, intermediate_size=8)).eval()

    class MyPipe(TextClassificationPipeline):
        pass

    saved = dict(PIPELINE_REGISTRY.supported_tasks["text-classification"])
    saved_fallback = TextClassificationDispatch.fallback
    try:
        PIPELINE_REGISTRY.supported_tasks["text-classification"] = {**saved, "impl": MyPipe}
        register_text_classification(force=True)  # what `import hf_eenet` does
        assert type(pipeline("text-classification", model=plain, tokenizer=tok)) is MyPipe
        assert isinstance(pipeline("text-classification", model=model, tokenizer=tok),
                          hf_eenet.EENetTextClassificationPipeline)
        register_text_classification(force=True)  # again (a second import path): still the user's, not ours twice
        assert type(pipeline("text-classification", model=plain, tokenizer=tok)) is MyPipe
    finally:
        PIPELINE_REGISTRY.supported_tasks["text-classification"] = saved
        TextClassificationDispatch.fallback = saved_fallback
    assert type(pipeline("text-classification", model=plain, tokenizer=tok)) is TextClassificationPipeline


@pytest.mark.parametrize("extra", ["return_special_tokens_mask", "return_length", "return_offsets_mapping"])
def test_extra_tokenizer_outputs_are_not_model_inputs_on_any_path(banked, extra):
    model, tok, texts = banked
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    want = [clf(t, budget=0.4)[0] for t in texts[:4]]
    kw = {extra: True, "budget": 0.4}
    assert [clf(t, **kw)[0] for t in texts[:4]] == want  # one text: the per-request loop
    assert clf(texts[:4], **kw) == want  # a list: depth waves
    assert clf(texts[:4], chunk_size=0, batch_size=2, **kw) == want  # the per-batch loop


def offloaded_load(folder, where, offload_folder, **load):
    """``from_pretrained`` of ``folder`` with a device_map that puts ``where`` on disk: the bank, a part of the
    embeddings (the first weights: ``model.device`` is meta) with the bank, or the whole model."""
    if where == "all_on_disk":
        kw = {"device_map": "auto", "max_memory": {"cpu": "10KB"}}
    else:
        disk = {"bank_on_disk": ("eenet_schedulers",),
                "word_embeddings_on_disk": ("eenet_schedulers", "bert.embeddings.word_embeddings")}[where]
        rest = ("bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings",
                "bert.embeddings.LayerNorm", "bert.embeddings.dropout", "bert.encoder", "bert.pooler", "exit_heads",
                "dropout", "classifier", "eenet_schedulers", "bert.embeddings.word_embeddings")
        kw = {"device_map": {name: "disk" if name in disk else "cpu" for name in rest}}
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(folder, offload_folder=str(offload_folder),
                                                                        **kw, **load)
    assert "disk" in set(model.hf_device_map.values())
    return model.eval()


OFFLOADS = ["bank_on_disk", "word_embeddings_on_disk", "all_on_disk"]


@pytest.mark.parametrize("where", OFFLOADS)
def test_a_device_map_that_offloads_the_bank_serves_what_the_model_in_memory_serves(banked, tmp_path, where):
    """accelerate's big-model offload (reviews 104, 105): a device_map may put the scheduler bank (or the whole model)
    on disk. It crashed on load (the bank's meta tensors were verified); the bank is read back onto the hooks' device
    and early_exit_predict runs a model whose first weights are offloaded (the embeddings' own hook, or a part's)."""
    model, tok, texts = banked
    model.save_pretrained(tmp_path / "m")
    offloaded = offloaded_load(tmp_path / "m", where, tmp_path / "off")
    for (name, t), (_, ref) in zip(offloaded.eenet_schedulers.state_dict().items(),
                                   model.eenet_schedulers.state_dict().items()):
        assert t.device.type == "cpu" and torch.equal(t, ref), name
    for budget in (0.4, 0.7):
        got = offloaded.early_exit_predict(texts[:24], tokenizer=tok, budget=budget)
        want = model.early_exit_predict(texts[:24], tokenizer=tok, budget=budget)
        assert torch.equal(got["exit_layer"], want["exit_layer"])
        torch.testing.assert_close(got["logits"], want["logits"])
        with torch.no_grad():
            for text in texts[:4]:
                enc = tok(text, return_tensors="pt")
                assert int(offloaded(**enc, budget=budget).exit_index) == int(model(**enc, budget=budget).exit_index)


def test_a_compiled_model_serves_one_text_per_call_as_the_model_does(banked):
    """torch.compile(model) behind a one-request-per-call server (review 104): the one-row loop's host read broke the
    graph inside a loop over the layers' ModuleList, which TorchDynamo could not resume (NameError
    ___tuple_iterator_getitem on the first request)."""
    model, tok, texts = banked
    compiled = torch.compile(model, backend="eager")
    clf, ref = (pipeline("text-classification", model=m, tokenizer=tok) for m in (compiled, model))
    for text in texts[:3]:
        assert clf(text, budget=0.4) == ref(text, budget=0.4)
        with torch.no_grad():
            enc = tok(text, return_tensors="pt")
            got, want = compiled(**enc, budget=0.7), model(**enc, budget=0.7)
        assert torch.equal(got.exit_index, want.exit_index)
        torch.testing.assert_close(got.logits, want.logits)


@pytest.mark.parametrize("where", OFFLOADS)
def test_offloaded_weights_are_checked_against_the_bank_and_a_bank_fitted_there_saves(banked, tmp_path, where):
    """Reviews 105, 106: offloaded (meta) weights were never compared with the bank's record, so a folder whose
    weights changed after its bank was fitted served silently when loaded with a device_map (in memory: warned and
    refused), and then in the store's dtype, not the one the model runs them in; add_scheduler / set_scheduler_bank
    moved the bank to the meta device (the first parameter's) and lost it; exit_probabilities ran on meta."""
    model, tok, texts = banked
    edited = copy.deepcopy(model)
    with torch.no_grad():  # (offloaded in two of the layouts)
        edited.bert.embeddings.word_embeddings.weight[:, 0] += 0.5
    with pytest.warns(UserWarning, match="saving a stale bank"):
        edited.save_pretrained(tmp_path / "edited")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stale = offloaded_load(tmp_path / "edited", where, tmp_path / "off1")
    assert any("fitted for other weights" in str(w.message) for w in caught)
    with pytest.raises(hf_eenet.BankIntegrityError, match="fitted for other weights"):
        stale.verify_scheduler_bank()
    with pytest.raises(hf_eenet.BankIntegrityError, match="fitted for other weights"):
        stale.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4)

    model.save_pretrained(tmp_path / "m")
    # cast after an offloaded load: the store's float16 weights run as bfloat16 (rounded twice), checked as such
    half = offloaded_load(tmp_path / "m", where, tmp_path / "off3", dtype=torch.float16)
    half.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4)
    half.bfloat16()
    with pytest.raises(hf_eenet.BankIntegrityError, match="rounded twice"):
        half.early_exit_predict(texts[:4], tokenizer=tok, budget=0.4)
    offloaded = offloaded_load(tmp_path / "m", where, tmp_path / "off2")
    # the refit paths a refusal points to run on the device the model runs on (were: the meta device)
    np.testing.assert_array_equal(hf_eenet.exit_probabilities(offloaded, tok, texts[:8], progress=False),
                                  hf_eenet.exit_probabilities(model, tok, texts[:8], progress=False))
    with torch.no_grad():
        probs = model(**tok(texts[:30], padding=True, return_tensors="pt")).exit_logits.softmax(-1)
    labels = torch.arange(30) % 2  # (a random tiny model predicts one class: some exits right, some wrong)
    sched = hf_eenet.EENetScheduler(restarts=1, max_epochs=20).fit(probs, labels, model.config.exit_costs, 0.5, seed=0)
    in_memory = copy.deepcopy(model)
    in_memory.add_scheduler(copy.deepcopy(sched), 0.5)
    offloaded.add_scheduler(sched, 0.5)
    assert {t.device.type for t in offloaded.eenet_schedulers.state_dict().values()} == {"cpu"}
    want = in_memory.early_exit_predict(texts[:16], tokenizer=tok, budget=0.5)["exit_layer"]
    assert torch.equal(offloaded.early_exit_predict(texts[:16], tokenizer=tok, budget=0.5)["exit_layer"], want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # transformers: saving a model with offloaded modules
        offloaded.save_pretrained(tmp_path / "again")
    reloaded = type(model).from_pretrained(tmp_path / "again").eval()
    assert reloaded.config.scheduler_budgets == [0.4, 0.5, 0.7]
    assert reloaded.verify_scheduler_bank()
    assert torch.equal(reloaded.early_exit_predict(texts[:16], tokenizer=tok, budget=0.5)["exit_layer"], want)


@pytest.mark.parametrize("offload", ["cpu_offload", "disk_offload"])
def test_accelerate_offload_of_a_loaded_model_brings_its_bank_back_before_serving(banked, tmp_path, offload):
    """Review 106: accelerate's cpu_offload / disk_offload of a model in memory put the bank on the meta device too;
    every budget then failed with "Tensor.item() cannot be called on meta tensors"."""
    import accelerate

    model, tok, texts = banked
    offloaded = copy.deepcopy(model)
    if offload == "cpu_offload":
        accelerate.cpu_offload(offloaded, execution_device="cpu")
    else:
        accelerate.disk_offload(offloaded, str(tmp_path / "off"), execution_device="cpu")
    assert all(t.is_meta for t in offloaded.eenet_schedulers.parameters())
    if offload == "cpu_offload":  # the first call to read the bank: verify_bank's own bring-in (else check_entry's)
        assert offloaded.verify_scheduler_bank()
    want = model.early_exit_predict(texts[:16], tokenizer=tok, budget=0.4)
    got = offloaded.early_exit_predict(texts[:16], tokenizer=tok, budget=0.4)
    assert torch.equal(got["exit_layer"], want["exit_layer"])
    torch.testing.assert_close(got["logits"], want["logits"])
    assert not any(t.is_meta for t in offloaded.eenet_schedulers.parameters())
    assert offloaded.verify_scheduler_bank()
