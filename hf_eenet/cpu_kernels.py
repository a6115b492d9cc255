"""Fused CPU kernels for the encoder layers of the early-exit engine (opt-in: ``model.use_fused_cpu_layers()``).

On a CPU, a BERT / RoBERTa layer at the sizes a server sees (one text of ~25 tokens, or a micro-batch of them)
spends most of its time in six ``nn.Linear`` calls whose GEMMs are small. oneDNN runs them 1.4-1.8x faster
when the weights are re-laid out once for its kernels ("packed"), and fewer, larger GEMMs with the element-wise
work fused in cost less again. With the layer's own parameters, the fused layer computes

    [q | k | v] = x W_qkv^T + b_qkv                  (query / key / value weights concatenated: one packed GEMM)
    c = SDPA(q, k, v, mask) with scale 1/sqrt(d_head)  (the stock layer's attention, SDPA or eager masks alike)
    a = LayerNorm_1(c W_o^T + b_o + x)               (the residual add fused into the GEMM)
    y = LayerNorm_2(act(a W_i^T + b_i) W_out^T + b_out + a)   (exact GELU fused into the first GEMM)

which is the stock ``BertLayer`` / ``RobertaLayer`` forward in eval mode; results agree with it to the dtype's
rounding (float32: ~1e-6; tests: ``tests/test_cpu_kernels.py``). The fused path is taken only where it computes
exactly that: the model is in eval mode, autograd is off, the hidden states are on the CPU in the weights' dtype
(float32, or bfloat16 where this CPU has oneDNN's bfloat16 kernels), no autocast, transformers' own SDPA or eager
attention, no global forward hooks, and the layer is a stock encoder layer whose modules are the stock ones, in eval
mode, without hooks or patched ``forward``. Anything else runs the stock layer, layer by layer (``_plain_parts`` lists
every case: LoRA / int8 Linears, MC dropout, accelerate offload, decoder layers, chunked feed-forward, ...).

Memory: the packed copies hold the encoder's Linear weights a second time while enabled (float32: 40 MiB for
MiniLM-L6, 324 MiB for BERT-base); ``use_fused_cpu_layers(False)`` drops them. Staleness: an entry is rebuilt when
a module on the layer's path or a parameter changes identity, storage or version counter (``load_state_dict``,
in-place edits under ``no_grad``, ``.to(...)``, a new Parameter). Updates that bypass the version counter are
covered by when they happen (:mod:`.weight_events`): after any optimizer step in the process, an entry is dropped at
the next forward when the step held one of its parameters (fused optimizers included) or when a sample of its
parameters moved (master copies, plain tensors or ``nn.Parameter``, written back through ``.data``: DeepSpeed
ZeRO-1/2); an unrelated step costs one sample per entry. ``model.train()`` /
``model.eval()`` and every forward that could train (training mode or autograd on) drop all entries. An edit
through ``.data`` in eval mode with no optimizer step after it, or of a few scattered elements outside the sample
(EMA, pruning, weight surgery), needs ``use_fused_cpu_layers()`` again. Entries are per process and never saved or copied (``copy.deepcopy`` / pickle
give a model with the setting on and an empty cache).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import GELUActivation
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.roberta.modeling_roberta import RobertaLayer

from . import weight_events

_STOCK_LAYERS = (BertLayer, RobertaLayer)


def fused_kernels_available() -> bool:
    """Whether this PyTorch build has the oneDNN kernels the fused layers use."""
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def _fused_dtypes() -> tuple[torch.dtype, ...]:
    """The hidden-state dtypes the fused layers run: float32, and bfloat16 where oneDNN has bfloat16 kernels on this
    CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; without them packing a bfloat16 weight raises, and the stock layers
    run)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return (torch.float32, torch.bfloat16) if check is not None and check() else (torch.float32,)


def _plain_parts(layer: nn.Module):
    """The modules of a stock layer the fused forward reads, or ``None`` when the layer is not one it can replace
    exactly: another class, a replaced Linear / LayerNorm, a Linear without bias, a module in training mode, a
    forward hook or a ``forward`` set on a module instance (accelerate's offload hooks, patches), a decoder /
    causal or cross-attention layer, chunked feed-forward, weights off the CPU (meta, offloaded) or without a
    version counter (created under ``torch.inference_mode``)."""
    if type(layer) not in _STOCK_LAYERS or getattr(layer, "add_cross_attention", False):
        return None
    if getattr(layer, "is_decoder", False) or getattr(layer, "chunk_size_feed_forward", 0):
        return None
    try:
        sa, so = layer.attention.self, layer.attention.output
        inter, out = layer.intermediate, layer.output
    except AttributeError:
        return None
    if getattr(sa, "is_causal", False) or getattr(sa, "is_decoder", False):
        return None
    linears = (sa.query, sa.key, sa.value, so.dense, inter.dense, out.dense)
    norms = (so.LayerNorm, out.LayerNorm)
    if any(type(m) is not nn.Linear or m.bias is None for m in linears):
        return None
    if any(type(m) is not nn.LayerNorm for m in norms):
        return None
    for m in linears:
        for t in (m.weight, m.bias):
            if t.device.type != "cpu" or t.is_inference():  # meta / offloaded; no version counter to watch
                return None
    if any(_intercepted(m) for m in _path_modules(layer, sa, so, inter, out)):
        return None
    return sa, so, inter, out


def _intercepted(module: nn.Module) -> bool:
    """The stock layer would not run this module's own ``forward`` as the fused layer assumes (a hook, a patched
    ``forward``), or would run it in training mode (dropout)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__ or module.training)


def _path_modules(layer, sa, so, inter, out) -> tuple:
    """Every module the stock layer's forward goes through (dropouts included)."""
    mods = (layer, layer.attention, sa, so, inter, out, inter.intermediate_act_fn, sa.query, sa.key, sa.value,
            so.dense, inter.dense, out.dense, so.LayerNorm, out.LayerNorm)
    return mods + tuple(d for d in (getattr(sa, "dropout", None), getattr(so, "dropout", None),
                                    getattr(out, "dropout", None)) if isinstance(d, nn.Module))


def _stock_attention(impl: str) -> bool:
    """``impl`` resolves to transformers' own SDPA / eager attention (not a function registered under its name)."""
    if impl == "sdpa":
        return ALL_ATTENTION_FUNCTIONS.get("sdpa") is sdpa_attention_forward
    return impl == "eager" and "eager" not in ALL_ATTENTION_FUNCTIONS


def _exact_gelu(act) -> bool:
    """``act`` is transformers' ``GELUActivation`` computing ``torch.nn.functional.gelu`` (erf), untouched."""
    return type(act) is GELUActivation and act.__dict__.get("act") is F.gelu and "forward" not in act.__dict__


class _FusedLayer:
    """One layer's packed weights and its fused forward ``(hidden [b, S, h], mask) -> [b, S, h]``; ``mask`` is what
    ``EENetModelMixin._layer_mask`` gives (``None``, a bool ``[b, 1, 1, S]`` keep-mask or an additive float one)."""

    def __init__(self, layer, parts):
        sa, so, inter, out = parts
        linears = (sa.query, sa.key, sa.value, so.dense, inter.dense, out.dense)
        # what ``fresh`` watches, read through the modules' own dicts (cheap enough for every forward): each link
        # parent -> child of the path to the parameters, and every parameter the entry copies or holds (identity,
        # storage, version counter), so a replaced module, a new Parameter, ``.to(...)`` or an in-place edit rebuilds
        self.layer = layer
        links = [(layer, "attention", layer.attention), (layer, "intermediate", inter), (layer, "output", out),
                 (layer.attention, "self", sa), (layer.attention, "output", so),
                 (inter, "intermediate_act_fn", inter.intermediate_act_fn),
                 (so, "LayerNorm", so.LayerNorm), (out, "LayerNorm", out.LayerNorm)]
        links += [(parent, "dense", parent.dense) for parent in (so, inter, out)]
        links += [(sa, name, getattr(sa, name)) for name in ("query", "key", "value")]
        links += [(parent, "dropout", parent.dropout) for parent in (sa, so, out) if "dropout" in parent._modules]
        self.links = tuple(links)
        self.modules = _path_modules(layer, sa, so, inter, out)
        self.params = tuple((m, name, getattr(m, name)) for m in linears for name in ("weight", "bias"))
        self.stamps = tuple((t.data_ptr(), t._version) for _, _, t in self.params)
        self.events = weight_events.events()  # read before the weights are packed
        self.sample = weight_events.weight_sample(t for _, _, t in self.params)  # what packing read
        self.dtype = sa.query.weight.dtype
        pack = torch.ops.mkldnn._reorder_linear_weight
        with torch.no_grad():
            self.w_qkv = pack(torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).contiguous())
            self.b_qkv = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]).contiguous()
            self.w_o, self.w_i, self.w_out = (pack(m.weight.detach()) for m in (so.dense, inter.dense, out.dense))
        self.b_o, self.b_i, self.b_out = so.dense.bias, inter.dense.bias, out.dense.bias
        self.ln1, self.ln2 = so.LayerNorm, out.LayerNorm
        self.heads, self.head_dim = sa.num_attention_heads, sa.attention_head_size
        self.scaling = float(sa.scaling)
        # exact (erf) GELU is fused into the intermediate GEMM; any other activation runs as the stock module
        self.act_module = inter.intermediate_act_fn
        self.act = None if _exact_gelu(self.act_module) else self.act_module

    def fresh(self, layer) -> bool:
        """Still this layer with the same modules, none intercepted, and the same parameters unchanged (identity,
        storage, version counter: edits through ``.data`` or fused optimizers bypass the counter, see
        :meth:`FusedCPULayers.layer_calls`)."""
        if layer is not self.layer:
            return False
        for parent, name, child in self.links:
            if parent._modules.get(name) is not child:
                return False
        for m in self.modules:
            if _intercepted(m):
                return False
        if (self.act is None) != _exact_gelu(self.act_module):  # the activation module was changed in place
            return False
        for (m, name, t), (ptr, version) in zip(self.params, self.stamps):
            if m._parameters.get(name) is not t or t.data_ptr() != ptr or t._version != version:
                return False
        return True

    def __call__(self, x: torch.Tensor, mask) -> torch.Tensor:
        linear = torch.ops.mkldnn._linear_pointwise
        b, s, h = x.shape
        qkv = linear(x, self.w_qkv, self.b_qkv, "none", [], "").view(b, s, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        ctx = ctx.transpose(1, 2).reshape(b, s, h)
        a = linear.binary(ctx, x, self.w_o, self.b_o, "add")
        a = F.layer_norm(a, (h,), self.ln1.weight, self.ln1.bias, self.ln1.eps)
        if self.act is None:
            y = linear(a, self.w_i, self.b_i, "gelu", [], "none")
        else:
            y = self.act(linear(a, self.w_i, self.b_i, "none", [], ""))
        z = linear.binary(y, a, self.w_out, self.b_out, "add")
        return F.layer_norm(z, (h,), self.ln2.weight, self.ln2.bias, self.ln2.eps)


class FusedCPULayers:
    """The per-model cache of fused layers (``model._eenet_fused_cpu`` while enabled)."""

    def __init__(self):
        self.layers: dict[int, _FusedLayer] = {}
        self.events = weight_events.events()  # the weight events (optimizer steps, loads) seen when last checked

    def __getstate__(self):  # oneDNN's packed tensors cannot be copied or pickled: a copy starts empty
        return {"layers": {}, "events": weight_events.events()}

    def clear(self) -> None:
        self.layers = {}

    def _drop_moved(self) -> None:
        """After a weight event in the process (:mod:`.weight_events`): drop the entries whose parameters an optimizer
        stepped or whose sample moved (neither a fused step nor a master copy written back through ``.data`` changes
        a parameter's version counter)."""
        events = weight_events.events()
        if events == self.events:
            return  # the serving path: one comparison
        for i, entry in list(self.layers.items()):
            tensors = [t for _, _, t in entry.params]
            if (weight_events.stepped_since(tensors, entry.events)
                    or not weight_events.same_sample(weight_events.weight_sample(tensors), entry.sample)):
                self.layers.pop(i, None)
            else:
                entry.events = events
        self.events = events

    def layer_calls(self, model, hidden: torch.Tensor):
        """What runs the encoder layers in one forward: the stock ``ModuleList`` when nothing can be fused for these
        inputs, else an iterator giving, layer by layer as the loop reaches it (a loop that stops early checks no
        further), a fused layer where it computes exactly the stock layer, or the stock layer.

        Weight changes the version counter does not see are covered by when they happen: after an optimizer step
        anywhere in the process, an entry whose parameters the step held (fused optimizers such as
        ``adamw_torch_fused``, the Trainer's default) or whose sampled weights moved (a master copy written back
        through ``.data``) is repacked at the next forward; a forward that could train (training mode or autograd
        on) and every ``model.train()`` / ``model.eval()`` drop all entries. An edit through ``.data`` in eval mode
        with no optimizer step after it needs ``model.use_fused_cpu_layers()`` again (it repacks).
        """
        layers = model.backbone.encoder.layer
        if model.training or torch.is_grad_enabled():
            self.clear()  # weights may change under this forward's optimizer step, beyond the version counter
            return layers
        self._drop_moved()
        if (
            hidden.device.type != "cpu"
            or hidden.dtype not in _fused_dtypes()
            or torch.is_autocast_enabled("cpu")
            or not _stock_attention(model.config._attn_implementation)
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        ):
            return layers
        return self._calls(layers, hidden.dtype)

    def _calls(self, layers, dtype):
        for i, layer in enumerate(layers):
            entry = self.layers.get(i)
            if entry is None or not entry.fresh(layer):
                parts = _plain_parts(layer)
                entry = None if parts is None else _FusedLayer(layer, parts)
                if entry is None:
                    self.layers.pop(i, None)
                else:
                    self.layers[i] = entry
            yield layer if entry is None or entry.dtype != dtype else entry


__all__ = ["FusedCPULayers", "fused_kernels_available"]
