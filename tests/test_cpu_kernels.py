"""Fused CPU layers (hf_eenet/cpu_kernels.py): the stock layer's function, every engine path, exact fallbacks."""

import copy
import pickle

import pytest
import torch
from conftest import random_batch, tiny_model
from test_bank import parameter_master_step, plain_master_step
from test_engine import BUDGETS, POLICIES, banked, make_policy, model_of, per_row  # noqa: F401 (fixture)
from torch import nn

import hf_eenet
from hf_eenet import cpu_kernels
from hf_eenet.cpu_kernels import _FusedLayer
from hf_eenet.engine import depth_wave_forward, rows_from_encodings


def fused_copy(model):
    return copy.deepcopy(model).use_fused_cpu_layers()


def layer_inputs(model, batch):
    """Embeddings of ``batch`` and the layer mask the engine builds for it."""
    with torch.inference_mode():
        hidden = model.backbone.embeddings(input_ids=batch["input_ids"])
        mask = model._layer_mask(hidden, batch["attention_mask"], not bool(batch["attention_mask"].bool().all()))
    return hidden, mask


def stock_and_fused_stacks(model, batch):
    """The token states of ``batch``'s real tokens after the whole layer stack: stock layers, fused layers."""
    hidden, mask = layer_inputs(model, batch)
    fused = fused_copy(model)
    with torch.inference_mode():
        calls = list(fused._layer_calls(hidden))
        assert all(isinstance(c, _FusedLayer) for c in calls)
        ref, got = hidden, hidden
        for layer, call in zip(model.backbone.encoder.layer, calls):
            ref, got = layer(ref, mask), call(got, mask)
    keep = batch["attention_mask"].bool()  # padding positions are masked everywhere downstream
    return ref[keep], got[keep], mask


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_layer_computes_the_stock_layer(kind, attn, padded):
    model = tiny_model(kind, attn=attn, seed=3, layers=3)
    with torch.no_grad():  # peaked attention (a random tiny model's is almost uniform), so the scale and mask matter
        for layer in model.backbone.encoder.layer:
            layer.attention.self.query.weight.mul_(8.0)
            layer.attention.self.key.weight.mul_(8.0)
    batch = random_batch(n=6, max_len=11, seed=4, pad_id=model.config.pad_token_id, min_len=3 if padded else 11)
    ref, got, mask = stock_and_fused_stacks(model, batch)
    assert (mask is not None) == padded
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bf16_kernels", [True, False])
def test_fused_layer_in_bfloat16_matches_the_stock_bfloat16_layer(bf16_kernels, monkeypatch):
    """Where oneDNN has bfloat16 kernels on this CPU the fused layers run bfloat16 (the stock layer to bfloat16
    rounding); where it has none (no AVX-512: packing a bfloat16 weight raised, and a bfloat16 model with fused
    layers crashed on this machine) the stock layers run. The second case is also forced on a CPU that has them."""
    supported = cpu_kernels._fused_dtypes() == (torch.float32, torch.bfloat16)
    if not bf16_kernels:
        monkeypatch.setattr(cpu_kernels, "_fused_dtypes", lambda: (torch.float32,))
    model = tiny_model("bert", seed=3, layers=2).to(torch.bfloat16)
    batch = random_batch(n=4, max_len=9, seed=4)
    if bf16_kernels and supported:
        ref, got, _ = stock_and_fused_stacks(model, batch)
        torch.testing.assert_close(got.float(), ref.float(), atol=0.1, rtol=0.05)
        return
    hidden, _ = layer_inputs(model, batch)
    fused = fused_copy(model)
    with torch.inference_mode():
        assert fused._layer_calls(hidden) is fused.backbone.encoder.layer  # the stock layers, nothing packed
        want, got = model(**batch), fused(**batch)
    assert not fused._eenet_fused_cpu.layers
    assert torch.equal(got.exit_logits, want.exit_logits)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", POLICIES)
def test_fused_waves_equal_each_text_alone_and_the_stock_layers(name, budget, kind):
    model = model_of(kind)
    policy = make_policy(name, model, budget, kind)
    fused = fused_copy(model)
    batch = random_batch(n=30, max_len=22, seed=5, pad_id=model.config.pad_token_id, min_len=2)
    ref_logits, ref_exits = per_row(model, batch, policy)  # stock layers, each text alone
    alone_logits, alone_exits = per_row(fused, batch, policy)  # fused layers, each text alone
    with torch.no_grad():
        loop = fused(**batch, exit_policy=policy)  # fused, the padded per-request loop
    waves_logits, waves_exits = depth_wave_forward(fused, rows_from_encodings(batch), policy, micro_batch_size=4,
                                                   chunk_size=13)
    for exits, logits in ((alone_exits, alone_logits), (loop.exit_index, loop.logits), (waves_exits, waves_logits)):
        assert torch.equal(exits, ref_exits)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert fused._eenet_fused_cpu.layers, "the fused path must have run"


def test_all_exits_forward_and_pipeline_use_the_fused_layers(banked):
    model, tok, texts = banked
    fused = fused_copy(model)
    texts = texts[:12]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref, got = model(**enc), fused(**enc)
    torch.testing.assert_close(got.exit_logits, ref.exit_logits, atol=1e-4, rtol=1e-4)
    budget = model.config.scheduler_budgets[0]
    stock_pipe = hf_eenet.EENetTextClassificationPipeline(model=model, tokenizer=tok)
    fused_pipe = hf_eenet.EENetTextClassificationPipeline(model=fused, tokenizer=tok)
    for call in (lambda p: p(texts, budget=budget), lambda p: [p(t, budget=budget)[0] for t in texts]):
        a, b = call(stock_pipe), call(fused_pipe)
        assert [(r["label"], r["exit_layer"]) for r in a] == [(r["label"], r["exit_layer"]) for r in b]


class _Wrapped(nn.Linear):  # stands in for LoRA / any replaced Linear
    def forward(self, x):
        return super().forward(x) * 1.0


@pytest.mark.parametrize(
    "change",
    ["train", "grad", "autocast", "hook", "replaced_linear", "int8", "global_hook", "inference_weights",
     "submodule_train", "forward_override", "dropout_hook", "decoder", "chunked_ff", "meta_weight", "attention_fn"],
)
def test_what_the_fused_layer_cannot_reproduce_runs_the_stock_layer(change):
    model = tiny_model("bert", seed=3, layers=3)
    fused = fused_copy(model)
    batch = random_batch(n=4, max_len=9, seed=4)
    hidden, _ = layer_inputs(model, batch)
    stock_layers = list(fused.backbone.encoder.layer)
    handle, ctx = None, torch.inference_mode()
    if change == "train":
        fused.train()
    elif change == "grad":
        ctx = torch.enable_grad()
    elif change == "autocast":
        ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    elif change == "hook":
        handle = stock_layers[1].attention.output.dense.register_forward_hook(lambda m, i, o: o)
    elif change == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    elif change == "replaced_linear":
        old = stock_layers[1].attention.self.query
        new = _Wrapped(old.in_features, old.out_features)
        new.load_state_dict(old.state_dict())
        stock_layers[1].attention.self.query = new
    elif change == "submodule_train":  # e.g. MC dropout: the layer's own dropout is on
        stock_layers[1].train()
    elif change == "forward_override":  # accelerate's offload hooks and patches replace an instance's forward
        lin = stock_layers[1].output.dense
        lin.forward = lambda x, _f=lin.forward: _f(x) * 1.0
    elif change == "dropout_hook":
        handle = stock_layers[1].output.dropout.register_forward_hook(lambda m, i, o: o)
    elif change == "decoder":  # causal self-attention
        stock_layers[1].is_decoder = True
    elif change == "chunked_ff":
        stock_layers[1].chunk_size_feed_forward = 2
    elif change == "meta_weight":  # weights not materialised on the CPU (offloaded / meta)
        lin = stock_layers[1].attention.self.value
        lin.weight = nn.Parameter(torch.empty_like(lin.weight, device="meta"))
    elif change == "attention_fn":  # a function registered under "sdpa" replaces the stock attention
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        saved = ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"]
        ALL_ATTENTION_FUNCTIONS.register("sdpa", lambda *a, **k: saved(*a, **k))
        handle = type("Restore", (), {"remove": lambda self: ALL_ATTENTION_FUNCTIONS.register("sdpa", saved)})()
    elif change == "inference_weights":  # no version counter: an in-place edit could not be seen
        with torch.inference_mode():
            fused = fused_copy(model)
        stock_layers = list(fused.backbone.encoder.layer)
    elif change == "int8":
        from hf_eenet.quantization import quantize_linears_int8

        quantize_linears_int8(fused)
    try:
        with ctx:
            calls = fused._layer_calls(hidden)
            layer_list = list(calls)
    finally:
        if handle is not None:
            handle.remove()
    per_layer = ("hook", "replaced_linear", "submodule_train", "forward_override", "dropout_hook", "decoder",
                 "chunked_ff", "meta_weight")
    if change in per_layer + ("int8", "inference_weights"):  # checked layer by layer
        fallback = [1] if change in per_layer else [0, 1, 2]
        for i, call in enumerate(layer_list):
            assert call is stock_layers[i] if i in fallback else isinstance(call, _FusedLayer)
    else:  # nothing can be fused for these inputs
        assert calls is fused.backbone.encoder.layer


def test_packed_weights_follow_weight_and_module_changes():
    model, fused, batch = packed_pair(n=5, max_len=10, seed=6)

    def same_outputs():
        assert_fused_serves(model, fused, batch)

    same_outputs()
    for m in (model, fused):  # in-place weight change (version counter)
        with torch.no_grad():
            m.backbone.encoder.layer[0].intermediate.dense.weight.mul_(1.7)
    same_outputs()
    state = {k: v * 0.9 for k, v in model.state_dict().items() if "encoder.layer.1.attention.self.value" in k}
    for m in (model, fused):  # load_state_dict copies into the parameters
        m.load_state_dict(state, strict=False)
    same_outputs()
    for m in (model, fused):  # a new bias Parameter, a new LayerNorm module
        layer = m.backbone.encoder.layer[1]
        layer.output.dense.bias = nn.Parameter(layer.output.dense.bias.detach() + 0.3)
        torch.manual_seed(0)
        ln = nn.LayerNorm(model.config.hidden_size, eps=1e-12)
        nn.init.normal_(ln.weight)
        layer.attention.output.LayerNorm = ln
    fused.backbone.encoder.layer[1].attention.output.LayerNorm.load_state_dict(
        model.backbone.encoder.layer[1].attention.output.LayerNorm.state_dict())
    same_outputs()
    # a device move or cast (model.to(...), .half(), .cuda()) drops the packed copies: they hold the old tensors
    assert fused.__dict__["_eenet_fused_cpu"].layers, "packed after a forward"
    fused.to(torch.float64).to(torch.float32)
    assert fused.fused_cpu_layers and not fused.__dict__["_eenet_fused_cpu"].layers
    same_outputs()


def test_fused_setting_survives_copies_and_is_not_saved(tmp_path):
    model = tiny_model("bert", seed=3, layers=2)
    fused = fused_copy(model)
    batch = random_batch(n=3, max_len=8, seed=7)
    with torch.inference_mode():
        ref = fused(**batch).exit_logits
    assert fused._eenet_fused_cpu.layers
    for other in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert other.fused_cpu_layers and not other._eenet_fused_cpu.layers
        with torch.inference_mode():
            torch.testing.assert_close(other(**batch).exit_logits, ref)
    assert set(fused.state_dict()) == set(model.state_dict())
    fused.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert not loaded.fused_cpu_layers
    assert fused.use_fused_cpu_layers(False) is fused and not fused.fused_cpu_layers
    assert fused._layer_calls(ref) is fused.backbone.encoder.layer


def test_a_layer_fuses_again_once_its_hook_is_gone_and_an_activation_swap_is_seen():
    model = tiny_model("bert", seed=3, layers=2)
    fused = fused_copy(model)
    batch = random_batch(n=4, max_len=9, seed=4)
    hidden, _ = layer_inputs(model, batch)
    with torch.inference_mode():
        assert all(isinstance(c, _FusedLayer) for c in fused._layer_calls(hidden))
        layer = fused.backbone.encoder.layer[0]
        handle = layer.intermediate.register_forward_pre_hook(lambda m, a: None)
        assert list(fused._layer_calls(hidden))[0] is layer  # a hook added after packing is seen
        handle.remove()
        assert isinstance(list(fused._layer_calls(hidden))[0], _FusedLayer)
        for m in (model, fused):  # another activation module: not fused into the GEMM, run as the module
            m.backbone.encoder.layer[0].intermediate.intermediate_act_fn = nn.Tanh().eval()
        call = list(fused._layer_calls(hidden))[0]
        assert isinstance(call, _FusedLayer) and isinstance(call.act, nn.Tanh)
        torch.testing.assert_close(fused(**batch).exit_logits, model(**batch).exit_logits, atol=1e-5, rtol=1e-5)


def test_use_fused_cpu_layers_rejects_bad_input_and_missing_kernels(monkeypatch):
    model = tiny_model("bert", seed=3, layers=2)
    with pytest.raises((TypeError, ValueError), match="enabled"):
        model.use_fused_cpu_layers("yes")
    on_meta = tiny_model("bert", seed=3, layers=2).to("meta")  # stands in for a GPU: not a CPU
    with pytest.warns(UserWarning, match="apply only while it runs on the CPU"):
        on_meta.use_fused_cpu_layers()
    monkeypatch.setattr(hf_eenet.cpu_kernels, "fused_kernels_available", lambda: False)
    with pytest.raises(RuntimeError, match="oneDNN"):
        model.use_fused_cpu_layers()
    assert not model.fused_cpu_layers


def packed_pair(n, max_len, seed, **over):
    """A tiny model, its copy with fused layers already packed (one inference call), and the batch used."""
    model = tiny_model("bert", seed=3, layers=2, **over)
    fused = fused_copy(model)
    batch = random_batch(n=n, max_len=max_len, seed=seed)
    with torch.inference_mode():
        fused(**batch)  # packs
    return model, fused, batch


def assert_fused_serves(model, fused, batch):
    """The fused copy serves what the stock layers of ``model`` (given the same changes) compute."""
    with torch.inference_mode():
        torch.testing.assert_close(fused(**batch).exit_logits, model(**batch).exit_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enter_train_mode", [True, False])
def test_a_fused_optimizer_step_is_not_served_stale(enter_train_mode):
    """Fused optimizers (the Trainer's default adamw_torch_fused) update weights without bumping their version
    counter: a training forward drops the packed weights, so inference after the step sees the new weights."""
    model, fused, batch = packed_pair(n=6, max_len=10, seed=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for m in (model, fused):
        torch.manual_seed(0)
        if enter_train_mode:
            m.train()
            assert not m.fused_cpu_layers or not m._eenet_fused_cpu.layers  # train() drops the packed weights
        opt = torch.optim.AdamW(m.parameters(), lr=0.05, fused=True)
        m(**batch, labels=labels).loss.backward()
        opt.step()
        m.eval()
    assert_fused_serves(model, fused, batch)


def test_training_the_backbone_alone_then_model_eval_is_not_served_stale():
    model, fused, batch = packed_pair(n=6, max_len=10, seed=8)
    for m in (model, fused):  # the backbone's own forward never reaches the fused layers' checks
        m.backbone.train()
        opt = torch.optim.AdamW(m.backbone.parameters(), lr=0.05, fused=True)
        hidden = m.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden.sum().backward()
        opt.step()
        m.eval()  # drops the packed weights
    assert_fused_serves(model, fused, batch)


def test_an_optimizer_step_after_an_inference_call_is_not_served_stale():
    """Steps that leave the version counters as they were, taken after the weights were packed and without a
    train()/eval() or training forward in between: a fused optimizer whose gradients were computed before the
    inference call, and a step over fp32 master copies written back through ``.data`` (DeepSpeed ZeRO-1/2)."""
    model, fused, batch = packed_pair(n=6, max_len=10, seed=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    opts = []
    for m in (model, fused):
        opts.append(torch.optim.AdamW(m.parameters(), lr=0.05, fused=True))
        m(**batch, labels=labels).loss.backward()
        m.eval()
    with torch.inference_mode():
        fused(**batch)  # packs the weights again, gradients waiting
    for opt in opts:
        opt.step()
    assert_fused_serves(model, fused, batch)
    for master_step in (plain_master_step, parameter_master_step):  # DeepSpeed ZeRO-1/2; a separate master model
        for m in (model, fused):
            master_step(list(m.backbone.parameters()))
        assert_fused_serves(model, fused, batch)


def test_an_unrelated_optimizer_step_keeps_the_packed_weights():
    """A step that held none of the packed parameters and moved none of their sampled values repacks nothing; a
    ``.data`` edit of one row (an output neuron pruned) or one column (an input feature pruned) of a matrix followed
    by any step is seen (the sample holds an element of every row and column; matrices here are larger than the part
    of a tensor read whole)."""
    model, fused, batch = packed_pair(n=4, max_len=9, seed=10, intermediate_size=256)
    packed = dict(fused._eenet_fused_cpu.layers)
    assert packed
    other = torch.ones(3, requires_grad=True)
    for _ in range(2):
        other.grad = torch.ones_like(other)
        torch.optim.SGD([other], lr=0.1).step()
        with torch.inference_mode():
            fused(**batch)
        assert all(fused._eenet_fused_cpu.layers[i] is entry for i, entry in packed.items())
    edits = (lambda m: m.backbone.encoder.layer[0].intermediate.dense.weight.data[5].zero_(),
             lambda m: m.backbone.encoder.layer[1].output.dense.weight.data[:, 7].zero_())
    for edit in edits:
        assert fused.backbone.encoder.layer[0].intermediate.dense.weight.numel() > 4096
        for m in (model, fused):
            edit(m)
        other.grad = torch.ones_like(other)
        torch.optim.SGD([other], lr=0.1).step()
        assert_fused_serves(model, fused, batch)


def test_an_edit_through_data_is_served_after_use_fused_cpu_layers_again():
    model, fused, batch = packed_pair(n=4, max_len=9, seed=9)
    for m in (model, fused):  # .data bypasses the version counter
        m.backbone.encoder.layer[1].output.dense.weight.data.mul_(3.0)
    fused.use_fused_cpu_layers()  # repacks, as documented
    assert_fused_serves(model, fused, batch)
