"""Depth waves: the throughput path of early exit for many texts at once.

The per-request loop (:meth:`EENetModelMixin.exit_forward`) runs one batch through the encoder and lets it shrink
as rows leave: on a GPU a 9-row layer call costs about what a 32-row call costs, so the saving is lost. Depth waves
take a *chunk* of up to ``chunk_size`` texts and run it layer by layer:

1. the chunk's rows are sorted by token length (longest first) and padded only to their micro-batch's longest row;
2. every layer runs over the rows still alive as full micro-batches of ``micro_batch_size`` rows (contiguous slices
   of the length-sorted, compacted chunk, each cut to its own longest row);
3. at an exit, pooling + head + softmax + the policy's decision run once for all alive rows of the chunk, on the
   device; logits and exit index are written for every alive row (a row's last write is its exit); then the only
   device→host read of the layer (the ``[n]`` "goes on" flags) decides the re-pack: rows that left are dropped, the
   survivors (still length-sorted) are compacted into full micro-batches, and trailing padding columns are cut;
4. outputs come back in input order.

So layer work is proportional to the rows alive, with at most one host sync per exit layer per chunk. Memory: the
chunk's hidden states ``[chunk_size, longest, h]`` (plus one micro-batch's activations) stay on the device, and a
re-pack briefly holds the old and the compacted copy (peak about 1.75x the hidden states on the GPU run in
``benchmarks/results/engine_gpu_h200.json``); bound it with ``chunk_size``. The default chunk
(:func:`default_chunk_size`) is 32 micro-batches, at least 1024 and at most 4096 texts, and ends earlier where it
would hold more tokens than 1024 texts of 512 tokens (``DEFAULT_CHUNK_TOKENS``): each exit's host read drains
the device's queue once per chunk, so a chunk should hold many micro-batches (8 at ``micro_batch_size=128`` and 1024
texts would pay that stall over little work).

On a GPU at serving sizes a layer call costs the host more than the device (its kernels are launched one by one
from Python); ``cuda_graphs=True`` (opt-in) replays each full micro-batch's layer as one CUDA graph
(:class:`_LayerGraphs`), and the per-request loop does the same for a single text (:func:`layer_graphs`).

Policies are used only through the :class:`~hf_eenet.policies.ExitPolicy` interface: ``state =
policy.init_state(n, device)`` once per chunk (rows in the chunk's input order), ``policy.decide(k, probs, state)``
once per exit with the alive rows in wave order; every state tensor (whatever its keys) is re-indexed with the rows.
Decisions therefore equal those of running each text alone (``tests/test_engine.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain

import torch

from .configuration_eenet import max_input_tokens
from .validation import check_bool, check_input_length, check_int, check_single_label, check_texts

ROW_KEYS = ("input_ids", "attention_mask", "token_type_ids")

#: default chunk: this many full micro-batches ...
DEFAULT_CHUNK_MICRO_BATCHES = 32
#: ... but at least this many texts ...
DEFAULT_CHUNK_TEXTS = 1024
#: ... and at most this many (memory grows with the chunk, not with the micro-batch alone) ...
DEFAULT_CHUNK_MAX_TEXTS = 4096
#: ... holding at most this many tokens (texts x the chunk's longest text): 1024 texts at BERT's 512-token maximum, so
#: long texts never take more memory than the 1024-text default did (4096 sentences of ~60 tokens still fit)
DEFAULT_CHUNK_TOKENS = 1024 * 512


def default_chunk_size(micro_batch_size: int) -> int:
    """Texts per depth-wave chunk when none is given: 32 micro-batches, clipped to [1024, 4096] texts (1024 up to
    micro-batches of 32 rows, 2048 at 64, 4096 from 128 on); :func:`depth_wave_forward` also ends a default chunk
    before it holds more than ``DEFAULT_CHUNK_TOKENS`` (texts x its longest text: 1024 texts of 512 tokens).

    Each exit's one host read lets the device run dry once per chunk, so a chunk of many micro-batches spreads that
    stall over more work. On the H200 run (``benchmarks/results/engine_gpu_h200.json``) single passes in chunks of
    4096 vs 1024 differed by no more than the run-to-run spread (BERT-base fp32, micro-batch 128: 13,908 vs 12,056
    texts/s, with one-chunk passes of 4096 texts ranging 12,138-14,145 over two runs), so the default follows the
    design and stays bounded: memory is about ``1.75 x chunk x longest x hidden_size`` (hidden states plus a
    re-pack's copy; BERT-base fp32, 4096 SST-2 texts of at most 64 tokens: 1.3 GiB above the weights; 128-token
    texts double it). Pass ``chunk_size`` to bound it further."""
    micro_batch_size = check_int(micro_batch_size, "micro_batch_size", 1)
    return min(DEFAULT_CHUNK_MAX_TEXTS, max(DEFAULT_CHUNK_TEXTS, DEFAULT_CHUNK_MICRO_BATCHES * micro_batch_size))


def _row_tensor(value, name: str) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"each row's {name} must be 1-D (one text), got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.long)


def rows_from_encodings(encodings) -> list[dict[str, torch.Tensor]]:
    """Split tokenizer output into per-row dicts of 1-D CPU tensors, each cut to its tokens (padding on either side
    removed, so a left-padded batch gives each text's own row).

    Accepts a ``BatchEncoding`` / dict with ``input_ids`` as a list of lists (unpadded) or a ``[N, S]`` tensor
    (padded; then ``attention_mask`` says where the tokens are), or a sequence of per-text mappings (e.g. the
    pipeline's preprocessed ``[1, S]`` inputs).
    """
    if isinstance(encodings, Mapping):
        if "input_ids" not in encodings:
            raise ValueError("encodings need 'input_ids' (token ids of each text)")
        encodings = _one_text_as_batch(encodings)
        fast = _rows_from_lists(encodings)
        if fast is not None:
            return fast
        ids = encodings["input_ids"]
        n = len(ids)
        host = {key: encodings[key].detach().cpu() if isinstance(encodings[key], torch.Tensor) else encodings[key]
                for key in ROW_KEYS if encodings.get(key) is not None}  # one copy per key, not one per row
        rows = [{key: value[i] for key, value in host.items()} for i in range(n)]
    elif isinstance(encodings, Sequence) and not isinstance(encodings, (str, bytes)):
        rows = list(encodings)
    else:
        raise TypeError(f"expected tokenizer output or a list of per-text encodings, got {type(encodings).__name__}")
    if not rows:
        raise ValueError("no texts to classify (empty input)")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping) and "input_ids" not in row and "text" in row:
            raise TypeError(f"row {i} is a {{'text', 'text_pair'}} dict: early_exit_predict takes texts as a list of "
                            "strings with tokenizer= (pairs: text_pair=[...] with the second segments), or tokenizer "
                            "output")
        if not isinstance(row, Mapping) or "input_ids" not in row:
            raise TypeError(f"row {i}: expected a mapping with 'input_ids', got {type(row).__name__}")
        r = {key: _row_tensor(row[key], key) for key in ROW_KEYS if row.get(key) is not None}
        length = r["input_ids"].shape[0]
        if length == 0:
            raise ValueError(f"row {i} has no tokens")
        for key, t in r.items():
            if t.shape[0] != length:
                raise ValueError(f"row {i}: {key} has {t.shape[0]} entries but input_ids has {length}")
        if "attention_mask" in r:
            nz = r["attention_mask"].nonzero()
            if nz.numel() == 0:
                raise ValueError(f"row {i}: attention_mask has no tokens (all zeros)")
            start, end = int(nz.min()), int(nz.max()) + 1  # left and right padding cut: the text's own tokens
            if start > 0 or end < length:
                r = {key: t[start:end] for key, t in r.items()}
        out.append(r)
    return out


def check_text_list(texts, text_pair=None) -> None:
    """Every element of a list of texts (and of ``text_pair``, one second segment per text) is a non-empty ``str``
    (``validation.check_texts``, the pipeline's rule); else an error naming the first one that is not (a pair given
    as a tuple / list gets a pointer to ``text_pair=``)."""
    for i, t in enumerate(texts):
        if isinstance(t, (tuple, list)):
            raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__} {t!r:.60} (sentence pairs: pass the "
                            "first segments as the texts and text_pair=[...] with the second ones)")
    check_texts(texts, "texts", text_pair, "text_pair")


def texts_as_list(inputs, name: str = "texts"):
    """``inputs`` as a list when it is a sequence of texts other than a list / tuple (a NumPy array of strings, a
    ``datasets`` column, a pandas Series: anything sized and iterable holding a ``str``), else unchanged
    (tokenizer output, tensors and lists go to their own checks)."""
    if isinstance(inputs, (str, bytes, list, tuple, Mapping, torch.Tensor)):
        return inputs
    if hasattr(inputs, "columns"):  # a DataFrame: iterating it gives its column names, not its rows
        raise TypeError(f"{name} must be one sequence of strings, got a {type(inputs).__name__} of shape "
                        f"{tuple(getattr(inputs, 'shape', ()))}: pass one column of it (e.g. df['text'])")
    if getattr(inputs, "ndim", 1) != 1 or not all(hasattr(inputs, a) for a in ("__len__", "__iter__", "__getitem__")):
        return inputs  # a 0-d / 2-D array, a set (no order): not texts here (their own checks name them)
    if len(inputs) == 0:
        return inputs
    items = list(inputs)  # (a Series whose first value is NaN is texts all the same: the check names that row)
    return items if len(items) == len(inputs) and any(isinstance(t, str) for t in items) else inputs


def check_rows_per_text(n_texts: int, rows: list, tokenizer_kwargs) -> None:
    """Tokenizing ``n_texts`` texts must give one row each (outputs are returned per text, in input order)."""
    if len(rows) != n_texts:
        raise ValueError(f"tokenizing {n_texts} texts gave {len(rows)} rows: the tokenizer options "
                         f"{sorted(tokenizer_kwargs)} split texts into several rows (e.g. return_overflowing_tokens), "
                         "which a classifier cannot map back to the texts")


def _one_text_as_batch(encodings):
    """One text's unbatched tokenizer output (``tok("a text")``: ``input_ids`` a flat list of ids, or a 1-D tensor)
    as a batch of one row; anything else unchanged."""
    ids = encodings["input_ids"]
    flat = (isinstance(ids, torch.Tensor) and ids.dim() == 1) or (
        isinstance(ids, list) and bool(ids) and all(isinstance(x, int) and not isinstance(x, bool) for x in ids))
    if not flat:
        return encodings
    return {key: [value] if key in ROW_KEYS and value is not None else value for key, value in encodings.items()}


def _rows_from_lists(encodings) -> list[dict[str, torch.Tensor]] | None:
    """Fast path of :func:`rows_from_encodings` for unpadded tokenizer output (lists of lists, every mask all ones):
    one tensor per key, split into per-row views. ``None`` when the input is anything else (the general path then
    checks it row by row and names the problem)."""
    ids = encodings["input_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(x, list) for x in ids):
        return None
    lengths = [len(x) for x in ids]
    if min(lengths) == 0:
        return None
    per_key = {}
    for key in ROW_KEYS:
        values = encodings.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or [len(x) if isinstance(x, list) else -1 for x in values] != lengths:
            return None
        flat = torch.tensor(list(chain.from_iterable(values)), dtype=torch.long)
        if key == "attention_mask" and not bool(flat.all()):
            return None
        per_key[key] = flat.split(lengths)
    return [{key: parts[i] for key, parts in per_key.items()} for i in range(len(ids))]


def input_device(model) -> torch.device:
    """Where a model's inputs (and its scheduler bank) go: the model's device, or, for a model whose first weights
    accelerate offloaded (``device_map`` with disk / CPU offload: they sit on ``meta``), the device the hooks on its
    embeddings (or on their parts) run them on."""
    device = model.device
    if device.type != "meta":
        return device
    from .bank import accelerate_hooks

    for module in model.backbone.embeddings.modules():
        for h in accelerate_hooks(module):
            found = getattr(h, "execution_device", None)
            if found is not None:
                return torch.device(f"cuda:{found}" if isinstance(found, int) else found)
    raise ValueError("the model's weights are on the meta device with no accelerate hook to run them: load it with a "
                     "device_map that places them, or without one")


class _Chunk:
    """Device tensors of one chunk in wave order (length-sorted, compacted as rows leave) + host bookkeeping."""

    def __init__(self, model, rows: list[dict[str, torch.Tensor]], micro_batch_size: int):
        device = input_device(model)
        n = len(rows)
        lengths = [r["input_ids"].shape[0] for r in rows]
        order = sorted(range(n), key=lambda i: -lengths[i])  # stable: ties keep input order
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        sorted_rows = [rows[i] for i in order]
        self.lengths = [lengths[i] for i in order]  # host, wave order, non-increasing
        self.mb = micro_batch_size
        # padded [n, W] tensors: one concatenation per key, then one scatter of all keys at flat positions (rows
        # right-aligned at 0); pad_sequence over many small tensors is slower, boolean index_put needs a nonzero
        width = self.lengths[0]
        lt = torch.tensor(self.lengths)
        within = torch.arange(width)[None] < lt[:, None]
        offsets = torch.cumsum(lt, 0) - lt
        pos = torch.repeat_interleave(torch.arange(n) * width - offsets, lt) + torch.arange(int(lt.sum()))
        flats = {"input_ids": torch.cat([r["input_ids"] for r in sorted_rows])}
        has_mask = all("attention_mask" in r for r in sorted_rows)
        if has_mask:
            flats["attention_mask"] = torch.cat([r["attention_mask"] for r in sorted_rows])
            # holes in a row's mask within its length make its micro-batch "padded" even at equal lengths
            has_mask = not bool(flats["attention_mask"].all())
            if not has_mask:
                del flats["attention_mask"]  # all ones within the lengths: the mask is `within`
        if any("token_type_ids" in r for r in sorted_rows):
            tt = torch.cat([r["token_type_ids"] if "token_type_ids" in r else torch.zeros_like(r["input_ids"])
                            for r in sorted_rows])
            if bool(tt.any()):  # all zeros = the embeddings' default (same lookup): not sent
                flats["token_type_ids"] = tt
        keys = list(flats)
        padded = torch.zeros(len(keys), n * width, dtype=torch.long)
        if pad_id:
            padded[0].fill_(pad_id)
        padded[:, pos] = torch.stack([flats[key] for key in keys])
        padded = padded.view(len(keys), n, width)
        mask = padded[keys.index("attention_mask")] if has_mask else within.long()
        self.holes = ((mask == 0) & within).any(1).tolist() if has_mask else [False] * n
        if not has_mask:
            padded = torch.cat([padded, mask[None]])
            keys.append("attention_mask")
        # one host->device copy for all keys (pinned on a GPU, so it does not wait for the device)
        pin = device.type == "cuda"
        on_device = (padded.pin_memory() if pin else padded).to(device, non_blocking=pin)
        self.ids = on_device[0]
        self.mask2d = on_device[keys.index("attention_mask")]
        self.tt = on_device[keys.index("token_type_ids")] if "token_type_ids" in keys else None
        order_t = torch.tensor(order)
        self.rows = (order_t.pin_memory() if pin else order_t).to(device, non_blocking=pin)  # wave pos -> input pos

    def slices(self):
        """Micro-batches of the alive rows: ``(start, end, width)``, width = longest row of the micro-batch."""
        n = len(self.lengths)
        return [(s, min(s + self.mb, n), self.lengths[s]) for s in range(0, n, self.mb)]

    def padded(self, s: int, e: int, width: int) -> bool:
        return self.lengths[e - 1] < width or any(self.holes[s:e])


class _LayerGraphs:
    """CUDA graphs of the encoder layers for full micro-batches (``depth_wave_forward(..., cuda_graphs=True)``).

    On a GPU at serving batch sizes a layer call is bound by the host (about 15 kernel launches through Python),
    not by the device. A graph replays all of a layer's kernels with one launch. One graph per (layer, width
    bucket): a full micro-batch of ``micro_batch_size`` rows and width ``w`` is copied into a static input of width
    ``ceil(w / bucket) * bucket`` with its padding mask (the extra columns are masked like any padding), the graph
    is replayed and the first ``w`` columns of its output are copied out at once. Partial micro-batches run
    eagerly. Graphs are captured on first use of a (layer, width) and kept on the model (one cache per micro-batch
    size and inference mode); after the layers' parameters move (``.to()``, a new state dict assigned as new
    tensors), the dtype or the attention implementation changes, the next call recaptures them (in-place weight
    updates are seen by the replay).
    Capture and replay run on the model's GPU, whichever device is current; a lock makes one thread at a time use
    the shared static buffers. Forward hooks on the encoder would not run on a replay, so they are
    refused. Memory: one static output per graph (``micro_batch_size x width x hidden``), the graphs share one pool;
    ``model.release_cuda_graphs()`` drops them.
    """

    def __init__(self, model, micro_batch_size: int, bucket: int = 8):
        self.lock = threading.RLock()  # static buffers are shared: one copy-in → replay → copy-out at a time
        self.model = model
        self.layers = model.backbone.encoder.layer
        self.mb = micro_batch_size
        self.bucket = bucket
        self.key = self.fingerprint(model)
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.graphs: dict[tuple[int, int], tuple[object, torch.Tensor]] = {}
        self.pool = None

    @staticmethod
    def fingerprint(model):
        params = list(model.backbone.encoder.parameters())
        # static buffers made under inference_mode are inference tensors: keep one cache per mode; graphs captured
        # with one attention implementation replay its kernels, so set_attn_implementation(...) recaptures (the
        # autocast setting, whose casts graphs replay, chooses the cache slot in ``of``)
        return (params[0].dtype, params[0].device, torch.is_inference_mode_enabled(),
                getattr(model.config, "_attn_implementation", None), tuple(p.data_ptr() for p in params))

    @classmethod
    def of(cls, model, micro_batch_size: int) -> "_LayerGraphs":
        from torch.nn.modules import module as nn_module

        hooked = [name for name, m in model.backbone.encoder.named_modules()
                  if m._forward_hooks or m._forward_pre_hooks]
        if hooked or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
            raise ValueError(
                "cuda_graphs=True replays captured kernels and would skip forward hooks (registered on "
                f"{hooked[:3] or 'all modules'}): remove them or run without cuda_graphs"
            )
        cache = model.__dict__.setdefault("_eenet_layer_graphs", {})
        device = next(model.backbone.encoder.parameters()).device.type
        # both inference modes, and autocast on / off (and its dtype), keep their own graphs
        slot = (micro_batch_size, torch.is_inference_mode_enabled(), torch.is_autocast_enabled(device),
                torch.get_autocast_dtype(device))
        graphs = cache.get(slot)
        if graphs is None or graphs.key != cls.fingerprint(model):
            graphs = cache[slot] = cls(model, micro_batch_size)
        return graphs

    def _step(self, i: int, width: int):
        """What a graph of layer ``i`` at ``width`` replays: the layer on the static input and mask."""
        static_in, static_mask = self.inputs[width]
        layer, model = self.layers[i], self.model

        def step():
            return layer(static_in, model._layer_mask(static_in, static_mask, True))

        return step

    def _capture(self, i: int, width: int):
        """``(graph, static output)``; ``graph.replay()`` recomputes the output from the static input."""
        step = self._step(i, width)
        dev = self.inputs[width][0].device
        with torch.cuda.device(dev):  # the model's GPU, whichever is current (capture on another does nothing)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up outside the capture (lazy initialisations, autotuning)
                for _ in range(2):
                    step()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                out = step()
        return graph, out

    def run(self, i: int, hidden: torch.Tensor, mask2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``i`` on a full micro-batch ``hidden [mb, w, h]`` with padding mask ``mask2d [mb, w]``.

        With ``out`` the result is copied into it under the lock and ``out`` is returned; without, the returned
        tensor is a view of the graph's static output, valid until the next replay of that graph (the caller holds
        ``self.lock`` for as long as it reads it, as the per-request loop does)."""
        with self.lock, _on_device(hidden.device):
            w = hidden.shape[1]
            wb = -(-w // self.bucket) * self.bucket
            if wb not in self.inputs:
                self.inputs[wb] = (
                    torch.zeros(self.mb, wb, hidden.shape[2], dtype=hidden.dtype, device=hidden.device),
                    torch.zeros(self.mb, wb, dtype=mask2d.dtype, device=hidden.device),
                )
            static_in, static_mask = self.inputs[wb]
            static_in[:, :w].copy_(hidden)
            static_mask[:, :w].copy_(mask2d)
            if wb > w:
                static_mask[:, w:].zero_()
            entry = self.graphs.get((i, wb))
            if entry is None:
                entry = self.graphs[(i, wb)] = self._capture(i, wb)
            entry[0].replay()
            if out is None:
                return entry[1][:, :w]
            out.copy_(entry[1][:, :w])
            return out


def _on_device(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (capture and replay on the model's GPU), else a no-op."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def layer_graphs(model, rows: int) -> _LayerGraphs:
    """The model's CUDA-graph cache for layer calls of ``rows`` rows, after checking that graphs can serve it."""
    check_graphs_usable(model)
    return _LayerGraphs.of(model, rows)


def check_graphs_usable(model) -> None:
    """ValueError unless ``cuda_graphs=True`` can serve ``model``: on a CUDA device, without autograd (a replay would
    overwrite what a captured graph saved for backward), in eval mode, SDPA or eager attention (forward hooks are
    checked when the cache is fetched). Every call with ``cuda_graphs=True`` is checked, whether or not its batch
    would use the graphs."""
    problems = []
    if model.device.type != "cuda":
        problems.append(f"needs a model on a CUDA device, this one is on {model.device}")
    if torch.is_grad_enabled():
        problems.append("runs only without autograd: call it under torch.no_grad() or torch.inference_mode() (the "
                        "pipeline and early_exit_predict do)")
    if problems:
        raise ValueError("cuda_graphs=True " + ", and ".join(problems))
    if model.training:
        raise ValueError("cuda_graphs=True needs model.eval() (graphs replay inference kernels)")
    if model.config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"cuda_graphs=True supports the 'sdpa' and 'eager' attention implementations, this model uses "
            f"{model.config._attn_implementation!r}"
        )


def _longest_row(config, rows) -> tuple[int, int]:
    """(width, tokens) of the longest row for ``check_input_length``: rows are cut to their tokens where a mask said
    so (a micro-batch is as wide as its longest row); a RoBERTa numbers only ids that are not padding, counted in the
    rows whose length passes the limit (rows without a mask keep their padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    pad, limit = getattr(config, "pad_token_id", None), max_input_tokens(config, recorded=False)
    if config.model_type != "eenet-roberta" or pad is None or width <= limit:
        return width, width
    return width, max(int((r["input_ids"] != pad).sum()) for r in rows if len(r["input_ids"]) > limit)


@torch.no_grad()
def depth_wave_forward(
    model,
    rows: list[dict[str, torch.Tensor]],
    exit_policy=None,
    *,
    micro_batch_size: int = 32,
    chunk_size: int | None = None,
    cuda_graphs: bool = False,
    stats: dict | None = None,
):
    """Early exit over many texts with depth waves.

    Args:
        model: an hf_eenet multi-exit model (``EENetBertForSequenceClassification`` / ``...Roberta...``).
        rows: per-text dicts of 1-D ``input_ids`` (+ ``attention_mask``, ``token_type_ids``), see
            :func:`rows_from_encodings`.
        exit_policy: an :class:`~hf_eenet.policies.ExitPolicy`; ``None`` = the full model (only the last exit is
            computed).
        micro_batch_size: rows per layer call (the re-packed micro-batch).
        chunk_size: texts held on the device at once (hidden states ``[chunk_size, longest, h]``); ``None`` =
            :func:`default_chunk_size` of ``micro_batch_size``, and a chunk ends earlier where its texts x its
            longest text would pass ``DEFAULT_CHUNK_TOKENS`` (long texts: fewer per chunk). Chunks are consecutive
            texts of the input; results do not depend on where they end.
        cuda_graphs: experimental, CUDA only: full micro-batches replay a CUDA graph of each layer instead of
            launching its kernels from Python (see :class:`_LayerGraphs`: widths padded to a multiple of 8 and
            masked, graphs captured on first use and kept on the model).
        stats: optional dict, filled with ``host_syncs`` (device→host reads) and ``layer_rows`` (Σ over layer calls
            of the rows computed), ``layer_calls``.
    Returns:
        ``(logits [N, C], exit_index [N])`` on the model's device, in input order.
    """
    micro_batch_size = check_int(micro_batch_size, "micro_batch_size", 1)
    max_tokens = DEFAULT_CHUNK_TOKENS if chunk_size is None else None  # a given chunk_size is the user's bound
    chunk_size = default_chunk_size(micro_batch_size) if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
    if not rows:
        raise ValueError("no texts to classify (empty input)")
    check_input_length(model.config, *_longest_row(model.config, rows))
    model._check_exit_policy(exit_policy)
    model._check_encoder_depth()
    graphs = layer_graphs(model, micro_batch_size) if check_bool(cuda_graphs, "cuda_graphs") else None
    num_exits = model.config.num_exits
    if exit_policy is not None:
        check_single_label(model.config)
        exit_policy.check_num_exits(num_exits)
        getattr(model, "_warn_if_training", lambda: None)()  # a model class from older remote code has none
    if stats is not None:
        stats.update(host_syncs=0, layer_rows=0, layer_calls=0)
    logits_parts, exit_parts = [], []
    for start, end in chunk_bounds(rows, chunk_size, max_tokens):
        logits, exit_index = _run_chunk(model, rows[start:end], exit_policy, micro_batch_size, stats, graphs)
        logits_parts.append(logits)
        exit_parts.append(exit_index)
    if len(logits_parts) == 1:
        return logits_parts[0], exit_parts[0]
    return torch.cat(logits_parts), torch.cat(exit_parts)


def _run_chunk(model, rows, policy, micro_batch_size, stats, graphs=None):
    backbone = model.backbone
    config = model.config
    num_exits = config.num_exits
    exit_at = {layer: k for k, layer in enumerate(config.exit_layers)}
    chunk = _Chunk(model, rows, micro_batch_size)
    n = len(rows)
    device = chunk.ids.device
    dtype = next(backbone.encoder.parameters()).dtype

    # embeddings, one call per micro-batch, into a zero-initialised chunk buffer (positions past a row's
    # micro-batch width stay finite: they are padding, masked everywhere)
    hidden = torch.zeros(n, chunk.lengths[0], config.hidden_size, dtype=dtype, device=device)
    for s, e, w in chunk.slices():
        hidden[s:e, :w] = backbone.embeddings(
            input_ids=chunk.ids[s:e, :w], token_type_ids=None if chunk.tt is None else chunk.tt[s:e, :w]
        )
    mask2d = chunk.mask2d

    def layer_masks():
        sl = chunk.slices()
        if not any(chunk.padded(s, e, w) for s, e, w in sl):
            return [None] * len(sl)
        full = model._layer_mask(hidden, mask2d, True)
        if isinstance(full, torch.Tensor) and full.dim() == 4 and full.shape[1] == 1 and full.shape[2] == 1:
            # eager / SDPA: one [n, 1, 1, W] mask for the chunk, sliced (views) per micro-batch
            return [full[s:e, :, :, :w] if chunk.padded(s, e, w) else None for s, e, w in sl]
        return [model._layer_mask(hidden[s:e, :w], mask2d[s:e, :w], chunk.padded(s, e, w)) for s, e, w in sl]

    masks = layer_masks()
    state = {}
    if policy is not None:
        state = policy.init_state(n, device)  # rows in the chunk's input order ...
        perm = chunk.rows
        for key in list(state):  # ... re-indexed into wave order
            state[key] = state[key].index_select(0, perm.to(state[key].device))
    rows_dev = chunk.rows
    logits_out = None
    exit_index = torch.full((n,), num_exits - 1, dtype=torch.long, device=device)
    for i, layer in enumerate(backbone.encoder.layer if graphs is not None else model._layer_calls(hidden)):
        sl = chunk.slices()
        if len(sl) == 1 and sl[0][2] == hidden.shape[1] and graphs is None:
            hidden = layer(hidden, masks[0])
        else:
            for (s, e, w), m in zip(sl, masks):
                if graphs is not None and e - s == micro_batch_size:
                    graphs.run(i, hidden[s:e, :w], mask2d[s:e, :w], out=hidden[s:e, :w])
                else:  # a narrower slice of the buffer is strided: one copy here, not one per projection
                    hidden[s:e, :w] = layer(hidden[s:e, :w].contiguous(), m)
        if stats is not None:
            stats["layer_rows"] += len(chunk.lengths)
            stats["layer_calls"] += len(sl)
        k = exit_at.get(i + 1)
        if k is None or (policy is None and k < num_exits - 1):
            continue
        logits, stop = model.exit_step(k, hidden, mask2d, policy, state)
        if logits_out is None:
            logits_out = logits.new_empty((n, logits.shape[-1]))
        if stop is None:  # the last exit always accepts
            logits_out.index_copy_(0, rows_dev, logits)
            exit_index.index_fill_(0, rows_dev, k)
            break
        # rows that stop: outputs written at their input positions (the layer's one device->host read)
        n_stop, keep_idx, keep_host_idx = model._record_exits(k, stop, rows_dev, logits, logits_out, exit_index)
        if stats is not None:
            stats["host_syncs"] += 1
        if n_stop == 0:
            continue
        if keep_idx is None:  # every row of the chunk stopped
            break
        # re-pack: survivors stay length-sorted; compact them and cut trailing padding columns
        kept = keep_host_idx.tolist()
        chunk.lengths = [chunk.lengths[j] for j in kept]
        chunk.holes = [chunk.holes[j] for j in kept]
        width = chunk.lengths[0]
        hidden = hidden[:, :width].index_select(0, keep_idx)
        mask2d = mask2d[:, :width].index_select(0, keep_idx)
        rows_dev = rows_dev.index_select(0, keep_idx)
        for key in list(state):
            state[key] = state[key].index_select(0, keep_idx.to(state[key].device))
        masks = layer_masks()
    return logits_out, exit_index


def chunk_bounds(rows, chunk_size: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of ``rows`` (per-text dicts of 1-D tensors): at most ``chunk_size``
    rows each and, with ``max_tokens``, at most that many rows x the chunk's longest row (a row longer than that
    is a chunk of its own)."""
    if max_tokens is None:
        return [(start, min(start + chunk_size, len(rows))) for start in range(0, len(rows), chunk_size)]
    bounds, start, longest = [], 0, 0
    for i, row in enumerate(rows):
        width = max(longest, int(row["input_ids"].shape[-1]))
        if i > start and (i - start == chunk_size or (i - start + 1) * width > max_tokens):
            bounds.append((start, i))
            start, width = i, int(row["input_ids"].shape[-1])
        longest = width
    if rows:
        bounds.append((start, len(rows)))
    return bounds


def iter_chunks(items: Iterable, chunk_size: int):
    """Yield lists of up to ``chunk_size`` items from any iterable (list, dataset, generator).

    A sized, indexable input that is not a list (a map-style ``torch.utils.data.Dataset`` such as ``KeyDataset``, a
    ``datasets.Dataset``) is read as ``items[i]`` for ``i < len(items)``, as the stock pipeline reads it (Python's
    fallback iteration would call ``__getitem__`` until an ``IndexError``, which such a dataset may never raise)."""
    if (not isinstance(items, (list, tuple, str, bytes, Mapping)) and hasattr(items, "__len__")
            and hasattr(items, "__getitem__") and not hasattr(items, "__next__")):
        dataset = items
        items = (dataset[i] for i in range(len(dataset)))
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) == chunk_size:
            yield buf
            buf = []
    if buf:
        yield buf


__all__ = ["depth_wave_forward", "default_chunk_size", "chunk_bounds", "rows_from_encodings", "iter_chunks",
           "check_graphs_usable"]
