"""Fused CPU kernels for the encoder layers of the early-exit engine (opt-in: ``model.use_fused_cpu_layers()``).

On a CPU, a BERT / RoBERTa layer at the sizes a server sees (one text of ~25 tokens, or a micro-batch of them)
spends most of its time in six ``nn.Linear`` calls whose GEMMs are small. oneDNN runs them 1.4-1.8x faster
when the weights are re-laid out once for its kernels ("packed"), and fewer, larger GEMMs with the element-wise
work fused in cost less again. With the layer's own parameters, the fused layer computes

    [q | k | v] = x W_qkv^T + b_qkv                  (query / key / value weights concatenated: one packed GEMM)
    c = SDPA(q, k, v, mask) with scale 1/sqrt(d_head)  (the stock layer's attention, SDPA or eager masks alike)
    a = LayerNorm_1(c W_o^T + b_o + x)               (the residual add fused into the GEMM)
    y = LayerNorm_2(act(a W_i^T + b_i) W_out^T + b_out + a)   (exact GELU fused into the first GEMM)

which is the stock ``BertLayer`` / ``RobertaLayer`` forward in eval mode; results agree with it to float32
rounding (tests: ``tests/test_cpu_kernels.py``). The fused path is taken only where it computes exactly that: the
model is in eval mode, autograd is off, the hidden states are on the CPU in the weights' dtype (float32 or
bfloat16), no autocast, SDPA or eager attention, and the layer is a stock layer whose Linears and LayerNorms are
the stock modules without forward hooks. Anything else -- training, gradients, another device, a Linear replaced
by LoRA or int8 (``hf_eenet.quantization``), a hook, another attention implementation, weights created under ``torch.inference_mode`` (they have no
version counter, so an in-place edit could not be seen) -- runs the stock layer, layer by layer.

Memory: the packed copies hold the encoder's Linear weights a second time while enabled (MiniLM-L6 ≈ +85 MB,
BERT-base ≈ +340 MB); ``use_fused_cpu_layers(False)`` frees them. Packed weights are rebuilt when a weight
changes (its storage or version counter: ``load_state_dict``, in-place edits, ``.to(...)``), are per process,
and are never saved or copied (``copy.deepcopy`` / pickle give a model with the setting on and an empty cache).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def fused_kernels_available() -> bool:
    """Whether this PyTorch build has the oneDNN kernels the fused layers use."""
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def _stock_layer_types() -> tuple:
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.roberta.modeling_roberta import RobertaLayer

    return BertLayer, RobertaLayer


def _plain_parts(layer: nn.Module):
    """The modules of a stock layer the fused forward reads, or ``None`` when the layer is not one it can replace
    exactly (another class, a replaced Linear / LayerNorm, a forward hook, cross-attention)."""
    if type(layer) not in _stock_layer_types() or getattr(layer, "add_cross_attention", False):
        return None
    try:
        sa, so = layer.attention.self, layer.attention.output
        inter, out = layer.intermediate, layer.output
    except AttributeError:
        return None
    linears = (sa.query, sa.key, sa.value, so.dense, inter.dense, out.dense)
    norms = (so.LayerNorm, out.LayerNorm)
    if any(type(m) is not nn.Linear or m.bias is None for m in linears) or any(type(m) is not nn.LayerNorm for m in norms):
        return None
    if any(m.weight.is_inference() or m.bias.is_inference() for m in linears):  # no version counter to watch
        return None
    mods = (layer, layer.attention, sa, so, inter, out, inter.intermediate_act_fn, *linears, *norms)
    if any(getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None) for m in mods):
        return None
    return sa, so, inter, out


def _weight_key(tensors) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class _FusedLayer:
    """One layer's packed weights and its fused forward ``(hidden [b, S, h], mask) -> [b, S, h]``; ``mask`` is what
    ``EENetModelMixin._layer_mask`` gives (``None``, a bool ``[b, 1, 1, S]`` keep-mask or an additive float one)."""

    def __init__(self, parts, hidden_act):
        sa, so, inter, out = parts
        # every tensor the entry holds or copies: a change to any of them rebuilds the entry
        self.source = tuple(t for m in (sa.query, sa.key, sa.value, so.dense, inter.dense, out.dense)
                            for t in (m.weight, m.bias))
        self.key = _weight_key(self.source)
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
        self.act = None if hidden_act == "gelu" else inter.intermediate_act_fn

    def fresh(self, parts) -> bool:
        """Still the layer's weights (same storage and version) and LayerNorm / activation modules."""
        _, so, inter, out = parts
        return (_weight_key(self.source) == self.key and self.ln1 is so.LayerNorm and self.ln2 is out.LayerNorm
                and (self.act is None or self.act is inter.intermediate_act_fn))

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

    def __getstate__(self):  # oneDNN's packed tensors cannot be copied or pickled: a copy starts empty
        return {"layers": {}}

    def layer_calls(self, model, hidden: torch.Tensor):
        """The callables that run the encoder layers for one forward: a fused layer where the fused path computes
        exactly the stock layer for these inputs, else the stock layer; the stock ``ModuleList`` when no layer
        can be fused."""
        layers = model.backbone.encoder.layer
        if (
            model.training
            or torch.is_grad_enabled()
            or hidden.device.type != "cpu"
            or hidden.dtype not in (torch.float32, torch.bfloat16)
            or torch.is_autocast_enabled("cpu")
            or model.config._attn_implementation not in ("sdpa", "eager")
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        ):
            return layers
        calls, fused_any = [], False
        for i, layer in enumerate(layers):
            parts = _plain_parts(layer)
            if parts is None or parts[0].query.weight.dtype != hidden.dtype:
                calls.append(layer)
                continue
            entry = self.layers.get(i)
            if entry is None or not entry.fresh(parts):
                entry = self.layers[i] = _FusedLayer(parts, model.config.hidden_act)
            calls.append(entry)
            fused_any = True
        return calls if fused_any else layers


__all__ = ["FusedCPULayers", "fused_kernels_available"]
