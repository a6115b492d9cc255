"""``EENetTrainer``: joint training of all exits with the HF ``Trainer``, then fitting the EENet scheduler bank.

Training loss (docs/method.md §2): Σ_k w_k · CE(z_k, y), w_k ∝ k normalised, plus optional self-distillation in
the last ``distill_start`` fraction of training: + α · T² · KL(softmax(z_K/T) ‖ softmax(z_k/T)) for k < K with a
*detached* teacher z_K (the authors' code lets the students pull on the final exit).
"""

from __future__ import annotations

import logging
import contextlib
import itertools
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import EvalPrediction, Trainer, TrainerCallback

from .bank import SAVE_LEFTOVER_PATTERNS, atomic_save_dir, data_fingerprint, recover_leftovers_in
from .configuration_eenet import eenet_model_type, pairing_mismatch
from .engine import input_device
from .evaluation import evaluate_exits
from .modeling_eenet import exit_softmax
from .scheduler import EENetScheduler
from .validation import (check_bool, check_budget, check_budget_fraction, check_costs, check_fraction, check_int,
                         check_single_label,
                         check_labels, check_positive)
from .weight_events import stepped_since


logger = logging.getLogger(__name__)


def _exit_logits_from_predictions(predictions) -> np.ndarray:
    """The ``[N, K, C]`` exit logits among the arrays ``Trainer.predict`` returns for our models (a tuple of arrays,
    or with ``eval_do_concat_batches=False`` a list of per-batch tuples, concatenated here)."""
    if isinstance(predictions, list) and predictions:  # per-batch outputs
        return np.concatenate([_exit_logits_from_predictions(batch) for batch in predictions])
    preds = predictions if isinstance(predictions, tuple) else (predictions,)
    for p in preds:
        if isinstance(p, np.ndarray) and p.ndim == 3:
            return p
    if predictions is None:
        raise ValueError("the Trainer kept no predictions (prediction_loss_only=True?): the per-exit metrics and the "
                         "scheduler need the exit logits")
    raise ValueError("predictions hold no [N, K, C] exit logits: was the model run with all exits (no policy)? "
                     "With your own compute_metrics, EENetTrainer passes stock-shaped predictions (the last exit's "
                     "logits): give EENetTrainer(..., exit_outputs=True) to get the exits' outputs")


def _label_array(label_ids) -> np.ndarray:
    """Labels as one array (a list of per-batch arrays with ``eval_do_concat_batches=False``)."""
    if isinstance(label_ids, list) and label_ids and isinstance(label_ids[0], np.ndarray):
        return np.concatenate(label_ids)
    return np.asarray(label_ids)


def compute_exit_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: accuracy of every exit (``accuracy_exit_<k>``, k the 1-based exit index, not the encoder layer) and of the last one.

    Needs no Hub access (plain numpy; ``evaluate.load("accuracy")`` would download the metric script). Regression
    (one output): ``mse_exit_<k>``; multi-label (multi-hot labels): exact-match accuracy per exit.
    """
    exit_logits = _exit_logits_from_predictions(eval_pred.predictions)
    labels = _label_array(eval_pred.label_ids)
    if labels.ndim == 2:  # multi-label (multi-hot labels [N, C]): per-exit exact-match accuracy, logit > 0 = on
        if labels.shape[1] != exit_logits.shape[-1]:
            raise ValueError(f"multi-label labels have {labels.shape[1]} columns but the exits have "
                             f"{exit_logits.shape[-1]} classes")
        acc = ((exit_logits > 0) == (labels[:, None, :] > 0.5)).all(-1).mean(0)
        out = {f"accuracy_exit_{k + 1}": float(a) for k, a in enumerate(acc)}
        out["accuracy"] = float(acc[-1])
        return out
    if exit_logits.shape[-1] == 1:  # regression: report per-exit MSE
        return {f"mse_exit_{k + 1}": float(np.mean((exit_logits[:, k, 0] - labels) ** 2))
                for k in range(exit_logits.shape[1])}
    acc = (exit_logits.argmax(-1) == labels[:, None]).mean(0)
    out = {f"accuracy_exit_{k + 1}": float(a) for k, a in enumerate(acc)}
    out["accuracy"] = float(acc[-1])
    return out


class BatchedExitMetrics:
    """:func:`compute_exit_metrics` for ``batch_eval_metrics=True``: ``Trainer`` calls it once per evaluation batch
    (``compute_result`` True on the last one); it keeps the batches' exit logits and labels and returns the same
    metrics as :func:`compute_exit_metrics` at the end."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget the batches kept so far (``EENetTrainer`` calls it as every evaluation starts, so an evaluation
        interrupted midway leaves nothing behind)."""
        self._logits, self._labels = [], []

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        preds = eval_pred.predictions
        preds = tuple(preds) if isinstance(preds, (tuple, list)) else (preds,)
        self._logits.append(_exit_logits_from_predictions(tuple(_to_numpy(p) for p in preds)))
        self._labels.append(_to_numpy(eval_pred.label_ids))
        if not compute_result:
            return {}
        logits, labels = np.concatenate(self._logits), np.concatenate(self._labels)
        self._logits, self._labels = [], []
        return compute_exit_metrics(EvalPrediction(predictions=logits, label_ids=labels))


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


#: the outputs of the all-exits forward besides ``logits`` (what the stock classifier returns)
EXIT_OUTPUT_KEYS = ("exit_logits", "exit_index", "exit_layer", "exit_cost")
#: arguments of the models' forward that choose how it serves, never dataset columns
SERVING_ONLY_ARGUMENTS = ("exit_policy", "budget", "cuda_graphs")


class _FirstOptimizerStep(TrainerCallback):
    """Tells the trainer when a run's weights first change (``EENetTrainer._weights_changed``)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._weights_changed()


def _row_lengths(dataset, max_rows: int | None = None, read_streams: bool = False,
                 distinct: bool = False) -> np.ndarray | None:
    """Tokens per row of a tokenized map-style ``datasets.Dataset`` (attention-mask sums, else ``input_ids``
    lengths; the first ``max_rows`` rows when given), or ``None`` where they cannot be read without consuming it (a
    streaming dataset, a plain torch Dataset). ``read_streams``: a (finite) iterable of rows is read through, as for
    a validation set that is read in full anyway. ``distinct``: one length per distinct token sequence (a text
    repeated in the data counts once, so repeats cannot look like a pile of rows cut at one length)."""
    def rows_of(ids_col, mask_col):
        out, seen = [], set()
        for i, ids in enumerate(ids_col):
            mask = None if mask_col is None else np.asarray(mask_col[i])
            n = len(ids) if mask is None else int(np.sum(mask))
            if distinct:
                key = tuple(np.asarray(ids)[mask.astype(bool)].tolist() if mask is not None else list(ids))
                if key in seen:
                    continue
                seen.add(key)
            out.append(n)
        return np.asarray(out)

    if not hasattr(dataset, "with_format") or not hasattr(dataset, "__len__") or not hasattr(dataset, "select"):
        if not read_streams or not hasattr(dataset, "__iter__"):
            return None
        try:
            rows = list(dataset)
            return rows_of([r["input_ids"] for r in rows],
                           [r["attention_mask"] for r in rows] if all("attention_mask" in r for r in rows) else None)
        except (TypeError, ValueError, KeyError):
            return None
    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.select(range(max_rows))
    counted = _arrow_row_lengths(dataset, distinct)
    if counted is not None:
        return counted
    dataset = dataset.with_format(None)  # every column as plain lists, whatever format the dataset was given
    columns = getattr(dataset, "column_names", None)
    if not isinstance(columns, list):
        return None
    try:
        if "attention_mask" in columns and (not distinct or "input_ids" not in columns):
            return np.asarray([int(np.sum(np.asarray(m))) for m in dataset["attention_mask"]])
        if "input_ids" in columns:
            return rows_of(dataset["input_ids"], dataset["attention_mask"] if "attention_mask" in columns else None)
    except (TypeError, ValueError, KeyError):
        return None
    return None


def _arrow_row_lengths(dataset, distinct: bool) -> np.ndarray | None:
    """:func:`_row_lengths` of a ``datasets.Dataset`` counted in Arrow and numpy, in row order (a Python loop over the
    rows' token lists takes tens of seconds on 100k rows); ``None`` where it cannot count there (not a
    ``datasets.Dataset``, no ``input_ids`` list of integers, a null row or entry, masks of other lengths than the
    ids), and the rows are then read one by one."""
    columns = getattr(dataset, "column_names", None)
    if not hasattr(dataset, "with_format") or not isinstance(columns, list) or "input_ids" not in columns:
        return None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = dataset.with_format("arrow")[:]  # the rows as selected / shuffled (an indices mapping is applied)
        ids = table.column("input_ids").combine_chunks()
        n = len(ids)
        tokens = pc.list_flatten(ids)
        if ids.null_count or tokens.null_count or not pa.types.is_integer(tokens.type):
            return None
        flat = np.asarray(tokens)
        parents = np.asarray(pc.list_parent_indices(ids))
        if "attention_mask" in table.column_names:
            masks = table.column("attention_mask").combine_chunks()
            if masks.null_count or pc.list_flatten(masks).null_count \
                    or not pc.all(pc.equal(pc.list_value_length(ids), pc.list_value_length(masks))).as_py():
                return None
            mask = np.asarray(pc.list_flatten(masks))
            lengths = np.bincount(parents, weights=mask, minlength=n).astype(np.int64) if n else np.zeros(0, int)
            keep = mask.astype(bool)
        else:
            lengths = np.asarray(pc.list_value_length(ids).fill_null(0), dtype=np.int64)
            keep = None
        if not distinct:
            return lengths
        attended = flat if keep is None else flat[keep]
        row_of = parents if keep is None else parents[keep]
        ends = np.cumsum(np.bincount(row_of, minlength=n)) if n else np.zeros(0, int)
        raw = attended.astype(np.int64).tobytes()  # a row's attended tokens as one key: 8 bytes a token
        seen, first = set(), []
        start = 0
        for i, end in enumerate(ends.tolist()):
            key = raw[8 * start:8 * end]
            start = end
            if key not in seen:
                seen.add(key)
                first.append(i)
        return lengths[np.asarray(first, dtype=np.int64)]
    except Exception as err:  # noqa: BLE001 - read row by row instead
        logger.debug("row lengths not counted in Arrow: %r", err)
        return None


def _types_mark_pairs(config, tokenizer) -> bool:
    """Whether ``token_type_ids`` tell a second segment for this model and tokenizer: the model reads token types
    (``type_vocab_size`` >= 2; never RoBERTa, whose tokenizer asked for token types gives a pair zeros throughout,
    whatever the config's ``type_vocab_size``) and the tokenizer gives a pair's second segment type 1. Without a
    tokenizer to ask, the model's ``type_vocab_size`` decides."""
    if int(getattr(config, "type_vocab_size", 0) or 0) < 2 or \
            eenet_model_type(getattr(config, "model_type", None)) == "eenet-roberta":
        return False
    if tokenizer is None or not callable(tokenizer):
        return True
    try:
        return any(tokenizer("a", "b", return_token_type_ids=True).get("token_type_ids") or [])
    except Exception:  # noqa: BLE001 - a processor or a tokenizer without pairs: the config decides
        return True


def _rows_are_pairs(dataset, config, tokenizer=None) -> bool | None:
    """Whether the tokenized rows of ``dataset`` are sentence pairs.

    * Where token types mark a second segment (:func:`_types_mark_pairs`, BERT) and the rows hold
      ``token_type_ids``: a non-zero entry.
    * Otherwise (RoBERTa, or rows without token types) the separators (``tokenizer.sep_token_id``) in each row's
      attended tokens: a single text holds one (``[CLS] a [SEP]``, ``<s> a </s>``), so every row holding exactly one
      means single texts. A pair holds two or more (``[CLS] a [SEP] b [SEP]``, ``<s> a </s></s> b </s>``), but so does
      one string that writes the pair inline (``"a</s></s>b"``, served as one string), so rows with two or more are
      taken for pairs only where the text columns the rows still hold say so
      (:func:`_pairing_from_text_columns`).

    ``None`` where that cannot be told: nothing to read the separators with (no tokenizer), rows that disagree or hold
    no separator (tokenized without special tokens), pairs whose text columns are gone (or a stream), or rows that
    cannot be read without consuming them."""
    streamed = []  # a (finite) stream of rows is read through once, as the fit reads it

    def column(name):
        if hasattr(dataset, "with_format") and hasattr(dataset, "__len__") and hasattr(dataset, "column_names"):
            return dataset.with_format(None)[name] if name in (dataset.column_names or []) else None
        if not hasattr(dataset, "__iter__"):
            return None
        if not streamed:
            streamed.append(list(dataset))
        rows = streamed[0]
        return [r[name] for r in rows] if rows and all(name in r for r in rows) else None

    try:
        types = column("token_type_ids") if _types_mark_pairs(config, tokenizer) else None
        if types is not None:
            return any(bool(np.any(np.asarray(t))) for t in types)
        sep = getattr(tokenizer, "sep_token_id", None)
        if not isinstance(sep, int):
            return None
        counts = _separator_counts(dataset, sep)
        if counts is None:  # a stream, or columns Arrow cannot count: row by row
            ids = column("input_ids")
            if ids is None:
                return None
            masks = column("attention_mask") or [None] * len(ids)
            counts = {int(np.sum((np.asarray(i) == sep) & (np.asarray(m) != 0 if m is not None else True)))
                      for i, m in zip(ids, masks)}
        if counts == {1}:
            return False
        return _pairing_from_text_columns(dataset, tokenizer) if counts and min(counts) >= 2 else None
    except (TypeError, ValueError, KeyError):
        return None


def _special_token_count(tokenizer) -> int | None:
    """Tokens the tokenizer adds around one text (2 for BERT's ``[CLS] … [SEP]``), ``None`` where it cannot tell."""
    try:
        return len(tokenizer("", truncation=False, verbose=False)["input_ids"])
    except Exception:  # noqa: BLE001 - no tokenizer, or one that cannot encode an empty text: no such guess
        return None


def _first_rows(dataset, n: int):
    """The first ``n`` rows of a map-style ``datasets.Dataset`` (a sample that tells their kind cheaply), ``None``
    for any other dataset (a stream would be read through)."""
    if not (hasattr(dataset, "select") and hasattr(dataset, "__len__") and hasattr(dataset, "with_format")):
        return None
    return dataset.select(range(n)) if len(dataset) > n else dataset


def _separator_counts(dataset, sep: int) -> set | None:
    """The distinct numbers of ``sep`` among each row's attended tokens in a ``datasets.Dataset``, counted in Arrow
    (vectorised over the split: a Python loop over 100k rows takes seconds); ``None`` where it cannot count there (not
    a ``datasets.Dataset``, no ``input_ids`` list column, masks of other lengths than the ids)."""
    if not (hasattr(dataset, "with_format") and hasattr(dataset, "column_names") and hasattr(dataset, "__len__")) \
            or "input_ids" not in (dataset.column_names or []):
        return None
    try:
        import pyarrow.compute as pc

        table = dataset.with_format("arrow")[:]  # the rows as selected / shuffled (an indices mapping is applied)
        ids = table.column("input_ids").combine_chunks()
        hit = pc.equal(pc.list_flatten(ids), sep)
        if "attention_mask" in table.column_names:
            mask = table.column("attention_mask").combine_chunks()
            if not pc.all(pc.equal(pc.list_value_length(ids), pc.list_value_length(mask))).as_py():
                return None
            hit = pc.and_(hit, pc.not_equal(pc.list_flatten(mask), 0))
        rows = np.asarray(pc.list_parent_indices(ids))[np.asarray(hit.fill_null(False), dtype=bool)]
        return {int(c) for c in np.unique(np.bincount(rows, minlength=len(ids)))} if len(ids) else set()
    except Exception as err:  # noqa: BLE001 - counted row by row instead
        logger.debug("separators not counted in Arrow: %r", err)
        return None


def _text_columns(dataset, tokenizer) -> tuple | None:
    """``(rows, combos)`` for re-tokenizing a tokenized ``datasets.Dataset``'s kept text columns: the dataset as plain
    lists and the text inputs it may have been made from (each string column alone, then each ordered pair of them).
    ``None`` where that cannot be tried: no tokenizer, a stream, no string column (``remove_columns``) or no
    ``input_ids``."""
    if tokenizer is None or not callable(tokenizer) or not hasattr(dataset, "select") \
            or not hasattr(dataset, "__len__"):
        return None
    features = dataset.features or {}
    texts = [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if not texts or "input_ids" not in features:
        return None
    return dataset.with_format(None), [(c,) for c in texts] + [(a, b) for a in texts for b in texts if a != b]


def _attended(ids, mask) -> list:
    return list(ids) if mask is None else [t for t, m in zip(ids, mask) if m]


def _reproducing_combo(row: dict, ids: list, combos, tokenizer, length: int):
    """The first of ``combos`` whose text(s) in ``row``, tokenized cut at ``length``, give exactly ``ids``; None."""
    for combo in combos:
        values = [row[c] for c in combo]
        if all(isinstance(v, str) for v in values) \
                and list(tokenizer(*values, truncation=True, max_length=length)["input_ids"]) == ids:
            return combo
    return None


def _spread(indices: list, max_rows: int) -> list:
    """At most ``max_rows`` of ``indices``, spread evenly over them (first and last included)."""
    if len(indices) <= max_rows:
        return indices
    return [indices[round(j * (len(indices) - 1) / max(max_rows - 1, 1))] for j in range(max(max_rows, 1))]


def _pairing_from_text_columns(dataset, tokenizer, max_rows: int = 32) -> bool | None:
    """Whether the rows of ``dataset`` were tokenized from an ordered pair of its text columns (``True``) or from one
    column (``False``), found by tokenizing the text columns again (up to ``max_rows`` rows spread over the split; a
    column holding a pair written inline, ``"a</s></s>b"``, reads as one text). ``None`` where a row read is
    reproduced by no kept column or by both readings (a pair's columns kept beside the string that writes it inline),
    the rows disagree, or the dataset holds no text column (``remove_columns``) or is a stream. Rows tokenized from an
    inline string that was not kept, beside its parts, read as pairs: their ids are the pair's, served as a pair."""
    try:
        found = _text_columns(dataset, tokenizer)
        if found is None or not len(found[0]):
            return None
        plain, combos = found
        singles, pairs = [c for c in combos if len(c) == 1], [c for c in combos if len(c) == 2]
        kinds = set()
        for i in _spread(list(range(len(plain))), max_rows):
            row = plain[i]
            ids = _attended(row["input_ids"], row.get("attention_mask"))
            one = _reproducing_combo(row, ids, singles, tokenizer, len(ids)) is not None
            two = _reproducing_combo(row, ids, pairs, tokenizer, len(ids)) is not None
            if one == two:  # no column reproduces the row, or both readings do (a pair kept beside it written inline)
                return None
            kinds.add(two)
        return kinds.pop() if len(kinds) == 1 else None
    except Exception as err:  # noqa: BLE001 - evidence only: nothing is recorded
        logger.debug("no pairing evidence from the text columns: %r", err)
        return None


def _truncation_evidence(dataset, tokenizer, length: int, max_rows: int = 512) -> bool | None:
    """Whether the rows of ``dataset`` that are ``length`` tokens long include texts cut there (``True``) or are all
    whole texts (``False``), found by tokenizing the text columns the dataset still holds again: a row whose text,
    cut at ``length``, gives exactly its ``input_ids`` is that text; uncut, it is longer or not. One cut row is
    enough for ``True``; ``False`` needs every row read to be whole. The distinct rows at that length are read (up to
    ``max_rows``, spread evenly over the split, so an order such as repeats first or rows sorted by length does not
    decide). ``None`` where this cannot tell: no string column kept (``remove_columns``), a stream, no tokenizer, or
    rows read that no kept text column reproduces (text edited before tokenizing, other tokenizer options). One
    single-text column or an ordered pair of them is tried per row."""
    try:
        found = _text_columns(dataset, tokenizer)
        if found is None:
            return None
        plain, combos = found
        masks = plain["attention_mask"] if "attention_mask" in plain.column_names else itertools.repeat(None)
        rows, seen = [], set()  # the distinct token rows at that length: their indices (and their tokens' hashes)
        for i, (ids, mask) in enumerate(zip(plain["input_ids"], masks)):
            if (len(ids) if mask is None else sum(mask)) != length:
                continue
            key = hash(tuple(_attended(ids, mask)))
            if key not in seen:
                seen.add(key)
                rows.append(i)
        rows = _spread(rows, max_rows)
        whole = 0
        for i in rows:
            row = plain[i]
            combo = _reproducing_combo(row, _attended(row["input_ids"], row.get("attention_mask")), combos,
                                       tokenizer, length)
            if combo is None:
                continue  # a row no kept text column reproduces: it cannot count as whole
            if len(tokenizer(*[row[c] for c in combo], truncation=False, verbose=False)["input_ids"]) > length:
                return True  # a text cut at the length
            whole += 1
        return False if rows and whole == len(rows) else None
    except Exception as err:  # noqa: BLE001 - evidence only: the length guess stands
        logger.debug("no truncation evidence from the text columns: %r", err)
        return None


def _class_names(config) -> list[str]:
    """The model's class names in id order (``config.id2label``, int or str keys)."""
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]


def _aligned_class_names(dataset, column: str, config, unknown: str = "raise") -> tuple:
    """``(dataset, kept)``: ``dataset`` whose ``ClassLabel`` column ``column`` counts its classes in the model's order
    (``config.id2label``): a dataset that encodes the same class names in another order (``ClassLabel(names=
    ["positive", "negative"])`` for a model with ``{0: "negative", 1: "positive"}``) would otherwise be trained on,
    and fit the bank on, permuted labels without a word.
    Names are matched case-insensitively and re-encoded with ``datasets``' ``align_labels_with_mapping`` (what
    ``run_classification.py`` does with a model's label names). A model without class names (``LABEL_0`` ...) reads
    the ids as given, unless every name of the column is one of those generic names (any case; then they are aligned
    as names); names the model does not have are a ValueError that lists both sets (``unknown="keep"``: the ids are
    read as given, as the stock ``Trainer`` does: fine-tuning on another dataset's classes; ``kept`` lists those
    names, else it is empty)."""
    feature = (getattr(dataset, "features", None) or {}).get(column)
    model_names = _class_names(config)
    if feature is None or type(feature).__name__ != "ClassLabel" or not model_names:
        return dataset, []
    data_names = [str(n) for n in feature.names]
    model_names_lower = [m.lower() for m in model_names]
    known = set(model_names_lower)
    if (all(n == f"LABEL_{i}" for i, n in enumerate(model_names))
            and not {n.lower() for n in data_names} <= known):
        return dataset, []  # generic model names: the column's own names say nothing about the model's ids
    if [n.lower() for n in data_names] == [n.lower() for n in model_names]:
        return dataset, []
    strangers = sorted({n for n in data_names if n.lower() not in known})
    if strangers and unknown == "keep":
        return dataset, strangers
    if strangers:
        raise ValueError(f"label column {column!r} is a ClassLabel with classes {data_names}, but the model's classes "
                         f"are {model_names} (config.id2label): {strangers} are not among them, so the labels cannot "
                         "be read as the model's classes (if the ids already follow the model's order, cast the "
                         f"column to plain ids: dataset.cast_column({column!r}, Value('int64')))")
    if not hasattr(dataset, "align_labels_with_mapping"):
        raise ValueError(f"label column {column!r} counts the classes in another order ({data_names}) than the model "
                         f"({model_names}, config.id2label), and a stream cannot be re-encoded here: re-encode it "
                         "first (a map-style Dataset before streaming it: "
                         f"dataset.align_labels_with_mapping(model.config.label2id, {column!r}); a stream: "
                         "dataset.map(fn, features=...) with fn mapping each id to the model's id of its class "
                         f"name and the column's feature ClassLabel(names={model_names!r}))")
    return _reencoded(dataset, column, [model_names_lower.index(n.lower()) for n in data_names], model_names), []


def _reencoded(dataset, column: str, to_model: list[int], model_names: list[str]):
    """``dataset`` with the ids of its ``ClassLabel`` column ``column`` mapped through ``to_model`` (data id → model
    id) and the column a ``ClassLabel`` of ``model_names``; negative ids (-1: no label, -100: ignored) stay as they
    are, in a plain int64 column where there are any (a ``ClassLabel`` cannot hold them). Re-encoded unformatted and
    given its format back (a torch-formatted dataset or a transform stays so; ``align_labels_with_mapping`` fails on
    torch-formatted rows and on -100)."""
    import pyarrow.compute as pc
    from datasets import ClassLabel, Value

    fmt = dataset.format
    plain = dataset.with_format(None)
    ids = plain.with_format("arrow")[column]
    negative = len(ids) > 0 and bool(pc.min(ids).as_py() < 0)
    features = plain.features.copy()
    features[column] = Value("int64") if negative else ClassLabel(names=list(model_names))
    out = plain.map(lambda b: {column: [to_model[y] if y >= 0 else y for y in b[column]]}, batched=True,
                    features=features, desc="Labels in the model's class order")
    kwargs = dict(fmt.get("format_kwargs") or {})
    return out.with_format(fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"],
                           **kwargs)


def _refuse_other_exits(folder, config) -> None:
    """ValueError when the checkpoint in ``folder`` (its ``config.json``) puts its exits at other layers, pools them
    otherwise, has another number of classes than the model that resumes from it or the same class names in another
    order (``id2label``): its exit heads were trained on other inputs or classes and would load into the model's heads
    without a shape error. A checkpoint without a readable config is not compared."""
    from .bank import EXIT_READS, exit_layout, saved_exit_layout

    try:
        saved = json.loads(Path(folder, "config.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or "exit_layers" not in saved:
        return  # not one of our configs (the stock load decides)
    ours, theirs = exit_layout(config), saved_exit_layout(saved)
    differ = [k for k in (*EXIT_READS, "num_labels") if theirs.get(k) is not None and theirs[k] != ours[k]]
    if not differ:  # the same class names in another order: head row i of the checkpoint is another class here
        saved_names = [str((saved.get("id2label") or {}).get(str(i), "")) for i in range(ours["num_labels"])]
        names = _class_names(config)
        if sorted(n.lower() for n in saved_names) == sorted(n.lower() for n in names) \
                and [n.lower() for n in saved_names] != [n.lower() for n in names]:
            theirs["id2label"], ours["id2label"] = saved_names, names
            differ = ["id2label"]
    if differ:
        raise ValueError(f"resume_from_checkpoint={str(folder)!r}: the checkpoint's "
                         + ", ".join(f"{k} {theirs[k]}" for k in differ) + " differ from the model's "
                         + ", ".join(f"{k} {ours[k]}" for k in differ) + ": its exit heads were trained for those "
                         "and would load into this model's exits; build the model with the checkpoint's config "
                         "(from_pretrained of the checkpoint folder) or start a new run instead of resuming")


def _label_range_problem(values, num: int) -> str | None:
    """Why single-label class ids ``values`` (any integer array) do not fit ``num`` classes, else ``None``: ids outside
    ``[0, num)``, the ignore index -100 aside. -1 marks an unlabelled split (GLUE's hidden test labels)."""
    v = np.asarray(values)
    v = v[v != -100]
    if not v.size or (v.min() >= 0 and v.max() < num):
        return None
    if set(np.unique(v[(v < 0) | (v >= num)]).tolist()) == {-1}:
        return ("labels -1 mark rows without a label (an unlabelled split, e.g. GLUE's hidden test labels), which no "
                "loss can be computed on: drop the label column to predict them (dataset.remove_columns(...)), or "
                "keep only labelled rows to train / evaluate")
    low, high = int(v.min()), int(v.max())
    return (f"the labels must be class ids in [0, {num}) (config.num_labels = {num}), but they run from {low} to "
            f"{high}: map the dataset's labels to 0..{num - 1} first (ids 1..C: subtract 1), or build the model with "
            "the number of classes of the data (num_labels / id2label)")


def _reads_class_ids(config) -> int | None:
    """The number of classes where the model reads its labels as single-label class ids, else ``None`` (regression,
    multi-label)."""
    num = getattr(config, "num_labels", None)
    if not num or num < 2 or getattr(config, "problem_type", None) not in (None, "single_label_classification"):
        return None
    return int(num)


def _class_id_batch(labels) -> bool:
    """Whether ``labels`` is a batch of single-label class ids: integers shaped ``[B]`` or ``[B, 1]`` (the loss reads
    ``labels.view(-1)``)."""
    return (isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.numel() > 0
            and (labels.ndim == 1 or (labels.ndim == 2 and labels.shape[-1] == 1)))


def _refuse_labels_out_of_range(labels: torch.Tensor, config) -> None:
    """ValueError (:func:`_label_range_problem`) when a batch's single-label class ids (training, or the loss of an
    evaluation / prediction) do not fit the model's classes; else nothing."""
    num = _reads_class_ids(config)
    if num is None or not _class_id_batch(labels):
        return
    problem = _label_range_problem(labels.detach().cpu().reshape(-1).numpy(), num)
    if problem:
        raise ValueError(problem)


class _LabelRangeCheck:
    """The trainer's collator, then :func:`_label_range_problem` on the batch's ``labels``: checked on the host, in
    the loader (its workers too), before the batch reaches a device - on a GPU an id outside the classes stops the
    run with CUDA's device-side assert (no message, the process unusable), where the CPU raises ``IndexError``. A
    numpy min / max per batch, no device sync. Picklable (a top-level class) for loader workers."""

    def __init__(self, collator, num_classes: int):
        self.collator = collator
        self.num_classes = num_classes

    def __call__(self, features):
        batch = self.collator(features)
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if _class_id_batch(labels) and labels.device.type == "cpu":  # (a collator that moves batches: compute_loss)
            problem = _label_range_problem(labels.reshape(-1).numpy(), self.num_classes)
            if problem:
                raise ValueError(problem)
        return batch


def _eenet_core(model):
    """The hf_eenet model itself: inside a PEFT wrapper (``PeftModel``: its ``get_base_model()``), else ``model``.
    Attributes set on the wrapper would land on the wrapper (``nn.Module.__setattr__``), not on the model it wraps."""
    if not hasattr(type(model), "multi_exit_loss") and callable(getattr(model, "get_base_model", None)):
        inner = model.get_base_model()
        if hasattr(type(inner), "multi_exit_loss"):
            return inner
    return model


def _is_adapter_wrapper(model) -> bool:
    """A PEFT wrapper of one of our models (its ``save_pretrained`` writes the adapter only)."""
    return _eenet_core(model) is not model


def _warn_frozen_exit_heads(model) -> None:
    """Training where some parameters train but an early exit's own head does not (e.g. PEFT's
    ``task_type="SEQ_CLS"``, which trains modules named ``classifier`` / ``score`` only): those exits stay as they are
    (a new head: random), silently, unless said here. A frozen last exit (``classifier``) is not warned about when it
    is a trained one kept as it is while new exits train on it (the two-stage recipe of DeeBERT): its parameters are
    those ``from_pretrained`` read from the checkpoint, or an optimizer in this process stepped them; a new one (from
    a backbone, re-headed, replaced, or a model built from its config) is warned about (one re-initialised in place,
    ``reset_parameters()``, is not told from the loaded one)."""
    from .modeling_eenet import exit_head_modules

    core = _eenet_core(model)
    if not hasattr(type(core), "multi_exit_loss") or not any(p.requires_grad for p in model.parameters()):
        return  # (not ours: refused by name next; nothing trains: the stock error)
    modules = dict(core.named_modules())
    frozen = [name for name in exit_head_modules(core)
              if name in modules and not any(p.requires_grad for p in modules[name].parameters())]
    if frozen == ["classifier"]:
        loaded = getattr(type(core), "_classifier_is_loaded", None)  # (absent from older shipped model code)
        if (loaded is not None and loaded(core)) or stepped_since(core.classifier.parameters(), 0):
            return  # a trained classifier, kept
    if frozen:
        warnings.warn(f"the exit heads {frozen} are frozen (no parameter requires grad) while the model trains: "
                      "those exits keep the weights they have (a new head's are random) and a PEFT adapter does not "
                      "save them. With PEFT, list every exit head: LoraConfig(task_type='SEQ_CLS', "
                      "modules_to_save=hf_eenet.exit_head_modules(model))", UserWarning, stacklevel=4)


def _check_eenet_model(model) -> None:
    """EENetTrainer trains hf_eenet's multi-exit models (a PEFT wrapper of one included)."""
    if not hasattr(model, "multi_exit_loss"):
        raise TypeError(f"EENetTrainer trains hf_eenet multi-exit models; got {type(model).__name__}: load the "
                        "checkpoint with hf_eenet.EENetBertForSequenceClassification.from_pretrained(...) (or "
                        "EENetRobertaForSequenceClassification), which adds the exits, or train it with Trainer")


class EENetTrainer(Trainer):
    """``Trainer`` for the multi-exit models.

    Args (on top of ``Trainer``'s):
        self_distillation (`bool`): add the self-distillation term in the last part of training.
        distill_start (`float`): fraction of training steps after which self-distillation is on (paper: 0.75).
        distill_temperature (`float`): T (paper: 3).
        distill_weight (`float`): α (paper: 0.01).

    ``train`` removes a scheduler bank the model has when training starts (with a warning; see
    ``_inner_training_loop``): refit it with :meth:`fit_scheduler` afterwards.

    Per-exit validation accuracy is logged by ``evaluate`` (``eval_accuracy_exit_<k>``) unless another
    ``compute_metrics`` is given (with ``batch_eval_metrics=True``: :class:`BatchedExitMetrics`).

    Predictions: with the default metrics, ``evaluate`` / ``predict`` keep every output of the all-exits forward
    (``predictions = (logits, exit_logits [N, K, C], exit_index, exit_layer, exit_cost)``). With your own
    ``compute_metrics`` (or ``compute_metrics=None``) they are stock-shaped: ``predictions`` is the last exit's
    ``logits [N, C]`` (the full model's), as with ``BertForSequenceClassification``, unless you pass
    ``ignore_keys`` or ``exit_outputs=True`` (e.g. a metric that calls :func:`compute_exit_metrics`). ``fit_scheduler`` / ``rematch_budgets`` read the exits themselves, whatever the metric hooks.
    """

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps (GA-correct).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, self_distillation: bool = False, distill_start: float = 0.75,
                 distill_temperature: float = 3.0, distill_weight: float = 0.01, exit_outputs: bool | None = None,
                 **kwargs):
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        if "compute_metrics" not in kwargs:
            kwargs["compute_metrics"] = BatchedExitMetrics() if getattr(args_, "batch_eval_metrics", False) \
                else compute_exit_metrics
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("EENetTrainer computes the weighted loss over all exits itself, so compute_loss_func is "
                             "not used: override EENetTrainer.compute_loss (or the model's multi_exit_loss) instead")
        # the settings are checked before the stock set-up (which may build a model from model_init)
        self_distillation = check_bool(self_distillation, "self_distillation")
        distill_start = check_fraction(distill_start, "distill_start")
        distill_temperature = check_positive(distill_temperature, "distill_temperature")
        distill_weight = check_positive(distill_weight, "distill_weight", allow_zero=True)
        super().__init__(*args, **kwargs)
        if self.model is not None:  # with model_init, checked when train() builds the model
            _check_eenet_model(self.model)
        self.add_callback(_FirstOptimizerStep(self))
        self.self_distillation = self_distillation
        self.distill_start = distill_start
        self.distill_temperature = distill_temperature
        self.distill_weight = distill_weight
        self.exit_outputs = None if exit_outputs is None else check_bool(exit_outputs, "exit_outputs")
        self.scheduler_fit_info: dict = {}
        self.scheduler_fit_mode: str | None = None  # "replaced" / "extended" after fit_scheduler
        #: what every save writes as ``training_args.json``: ``None`` (default) this trainer's ``args``; a dict, the
        #: settings a model this trainer did not train was trained with; ``{}``, none (not recorded, rather than this
        #: run's unused ones). Also holds for the save ``push_to_hub`` makes.
        self.training_args_record: dict | None = None
        #: a save into a folder holding a results card of another model marks the card stale (``_mark_stale_card``)
        self.mark_stale_cards = True

    # ------------------------------------------------------------------------------------------------ training
    def _inner_training_loop(self, *args, **kwargs):
        """Training starts here, on the model that trains (also one ``model_init`` built), before its optimizer is
        built: a scheduler bank the model has is set aside (:meth:`_drop_bank_before_training`). It is removed for
        good, with a warning, at the first optimizer step (the weights change); a run that fails before that (no
        train dataset, a batch that does not collate, a first forward that fails, ...) puts it back, so the model is
        left as it was. A resumed run's checkpoint is compared with the model here too (:func:`_refuse_other_exits`):
        under DeepSpeed / FSDP the stock loop loads it after ``prepare``, not through :meth:`_load_from_checkpoint`."""
        folder = kwargs.get("resume_from_checkpoint", args[2] if len(args) > 2 else None)
        if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
            _refuse_other_exits(folder, self.accelerator.unwrap_model(self.model).config)
        self._first_step_done = False
        _warn_frozen_exit_heads(self.accelerator.unwrap_model(self.model))
        saved = self._drop_bank_before_training()
        try:
            out = super()._inner_training_loop(*args, **kwargs)
        except BaseException:
            if saved is not None and not self._first_step_done and self.state.global_step == 0:
                self._restore_bank(saved)
            raise
        if saved is not None and not self._first_step_done and self.state.global_step == 0:  # no step ran
            self._restore_bank(saved)  # (max_steps=0, ...): the weights are as the bank was fitted on
        return out

    def _weights_changed(self) -> None:
        """The first optimizer step of a run: what ``_inner_training_loop`` set aside is removed for good."""
        if not getattr(self, "_first_step_done", True):
            self._first_step_done = True
            removed = getattr(self, "_set_aside", None)
            if removed:
                warnings.warn(removed, UserWarning, stacklevel=2)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resuming loads a checkpoint's weights, for which a bank fitted on the model's own weights is stale:
        removed first, with a warning (a checkpoint written during training has none). A folder that is not a
        Trainer checkpoint (no ``trainer_state.json`` or no weights) is left to the stock error, the bank kept."""
        from transformers.trainer import TRAINER_STATE_NAME

        folder = resume_from_checkpoint
        if (model is None or model is self.model) and os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and \
                any(name.endswith((".safetensors", ".bin")) and name != "training_args.bin" for name in os.listdir(folder)):
            _refuse_other_exits(folder, self.accelerator.unwrap_model(self.model).config)
            if self._drop_bank_before_training() is not None:
                warnings.warn(self._set_aside, UserWarning, stacklevel=2)
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _drop_bank_before_training(self):
        """Remove a scheduler bank the model has: it was fitted on the exits' outputs *before* training and would
        serve budgets it no longer meets, from the final model and from every checkpoint written during training;
        refit it with :meth:`fit_scheduler` afterwards. A recorded ``config.max_seq_length`` (the length the model
        serves, its bank fitted at) shorter than the training rows (the first 10,000 of a map-style dataset) goes
        too: the model is trained on longer inputs, and the next fit records the length of its rows. A recorded
        ``config.sentence_pairs`` becomes the kind of the training rows where their first 10,000 tell another kind
        (a stream, or rows that cannot tell, leave it). Returns what was removed (for :meth:`_restore_bank`), or
        ``None``; the warning to give once training runs is kept in ``self._set_aside``. A PEFT wrapper's bank is
        the wrapped model's (set aside and put back there)."""
        model = _eenet_core(self.accelerator.unwrap_model(self.model))
        _check_eenet_model(model)
        config = model.config
        budgets = list(getattr(config, "scheduler_budgets", None) or [])
        recorded = getattr(config, "max_seq_length", None)
        lengths = _row_lengths(self.train_dataset, max_rows=10_000) if recorded else None  # a sample of them
        longer = lengths is not None and len(lengths) and int(lengths.max()) > recorded
        pairs = getattr(config, "sentence_pairs", None)
        # the kind of input it was trained on (pairs / single texts) is what the new training rows are: a model
        # trained on pairs and fine-tuned on single texts reads single texts (None where the rows cannot tell)
        now_pairs = pairs
        sample = _first_rows(self.train_dataset, 10_000) if pairs is not None else None  # (a stream is not read)
        if sample is not None:
            told = _rows_are_pairs(sample, config, self.processing_class)
            now_pairs = pairs if told is None else told  # rows that cannot tell leave the record as it is
        self._set_aside = None
        if not budgets and not longer and now_pairs == pairs:
            return None
        saved = (model, model.eenet_schedulers, budgets, config.scheduler_bank, config.default_budget, recorded, pairs)
        notes = []
        if budgets:
            model.clear_scheduler_bank()
            notes.append(f"training changes the exits' outputs: the scheduler bank fitted before it (budgets "
                         f"{budgets}) would no longer meet its budgets and was removed; refit it with "
                         "trainer.fit_scheduler(budgets=[...]) before serving budget=")
        if longer:
            config.max_seq_length = None
            notes.append(f"the training rows are up to {int(lengths.max())} tokens long, the model served {recorded} "
                         "(config.max_seq_length): the recorded length was removed; fit_scheduler records the length "
                         "of its rows")
        if now_pairs != pairs:
            config.sentence_pairs = now_pairs
            kind = {True: "sentence pairs", False: "single texts"}
            notes.append(f"the model was trained on {kind[pairs]} (config.sentence_pairs) and now trains on "
                         f"{kind[now_pairs]}: config.sentence_pairs is now {now_pairs}")
        self._set_aside = "; ".join(notes)
        return saved

    def _restore_bank(self, saved) -> None:
        model, schedulers, budgets, records, default, length, pairs = saved
        model.eenet_schedulers = schedulers
        model.config.scheduler_budgets, model.config.scheduler_bank = budgets, records
        model.config.default_budget, model.config.max_seq_length = default, length
        model.config.sentence_pairs = pairs
        self._set_aside = None

    def _get_dataloader(self, dataset, *args, **kwargs):
        """The stock loader, of ``dataset`` with its labels read as the model reads them
        (:meth:`_labels_in_model_order`: train, evaluate and predict read labels as :meth:`fit_scheduler` does), its
        batches' class ids checked on the host as they are collated (:class:`_LabelRangeCheck`)."""
        dataset = self._labels_in_model_order(dataset, strict=False)
        num = _reads_class_ids(getattr(self.accelerator.unwrap_model(self.model), "config", None))
        collator = self.data_collator
        if num is None or collator is None:
            return super()._get_dataloader(dataset, *args, **kwargs)
        self.data_collator = _LabelRangeCheck(collator, num)  # what the stock loader builds its collate_fn from
        try:
            return super()._get_dataloader(dataset, *args, **kwargs)
        finally:
            self.data_collator = collator

    def _labels_in_model_order(self, dataset, strict: bool = True):
        """``dataset`` with its label columns (``labels`` / ``label`` / ``label_ids`` / ``label_names``; each one) as
        the model reads them, checked once per dataset version (evaluation every epoch does not read it again):

        * a ``ClassLabel`` that counts the model's class names in another order is re-encoded in the model's order
          (:func:`_aligned_class_names`), with a warning: a dataset encoding ``["positive", "negative"]`` for a model
          with ``{0: "negative", 1: "positive"}`` would otherwise be trained on permuted labels; ``label_ids`` of
          ``predict`` are then the model's ids. Class names the model does not have: ``strict`` (the bank's fit) a
          ValueError; else (train / evaluate / predict) the ids as given, as the stock ``Trainer`` reads them.

        Ids outside the model's classes are named batch by batch as they are collated (:class:`_LabelRangeCheck`):
        what the loader yields may differ from the column (a format hiding it, a transform or collator mapping it)."""
        columns = getattr(dataset, "column_names", None)
        names = [c for c in (columns or []) if c in {"labels", "label", "label_ids", *(self.label_names or [])}]
        if not names or not hasattr(dataset, "features"):
            return dataset
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        key = (getattr(dataset, "_fingerprint", None) or id(dataset), tuple(names),
               json.dumps(getattr(config, "id2label", None) or {}, sort_keys=True, default=str))
        cache = self.__dict__.setdefault("_label_aligned", {})
        if key in cache:
            source, aligned, kept = cache[key]
            if strict and kept:  # kept as given for training; the bank's fit refuses names it cannot read
                for name in kept:
                    _aligned_class_names(dataset, name, config)
            return aligned
        aligned, kept = dataset, []
        # every label column (a dataset with both `label` and `labels`: the collators differ in which one wins).
        # Building a loader (every rank does), the main process maps first and the others read its cache; the bank's
        # fit (strict) may run on one rank alone, where a barrier would wait for ever
        class_labels = [n for n in names if type((dataset.features or {}).get(n)).__name__ == "ClassLabel"]
        first = contextlib.nullcontext() if strict or not class_labels else \
            self.args.main_process_first(desc="labels in the model's class order")
        with first:
            for name in class_labels:
                feature = (aligned.features or {}).get(name)
                before = aligned
                aligned, strangers = _aligned_class_names(aligned, name, config,
                                                          unknown="raise" if strict else "keep")
                kept += [name] if strangers else []
                if aligned is not before:
                    warnings.warn(f"label column {name!r} is a ClassLabel with classes {list(feature.names)}, "
                                  f"which are the model's classes {_class_names(config)} (config.id2label) in another "
                                  "order: its ids are re-encoded in the model's order, so labels, metrics and "
                                  "predict().label_ids use the model's ids", UserWarning, stacklevel=4)
        if len(cache) >= 8:
            cache.clear()
        cache[key] = (dataset, aligned, kept)  # (the source kept: its id stays unique while the entry lives)
        return aligned

    def _set_signature_columns_if_needed(self) -> None:
        """The stock columns (the forward's arguments) minus the serving-only ones: a dataset column that happens to
        be named ``budget`` or ``exit_policy`` is not data for the model (the stock classifier drops it too)."""
        super()._set_signature_columns_if_needed()
        self._signature_columns = [c for c in self._signature_columns if c not in SERVING_ONLY_ARGUMENTS]

    def _distillation_active(self) -> bool:
        if not self.self_distillation or not self.model.training:
            return False
        max_steps = max(self.state.max_steps or 0, 1)
        return self.state.global_step >= self.distill_start * max_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        outputs = model(**inputs, return_dict=True)  # (also where config.return_dict is False)
        if labels is None:
            raise ValueError("EENetTrainer needs `labels` in every batch")
        core = self.accelerator.unwrap_model(model)
        # label_smoothing_factor (TrainingArguments) smooths every exit's cross-entropy, as LabelSmoother does the
        # stock model's one head
        try:
            loss = core.multi_exit_loss(outputs.exit_logits, labels, label_smoothing=self.args.label_smoothing_factor)
        except IndexError:  # torch's "Target 2 is out of bounds": say which labels and what to do
            _refuse_labels_out_of_range(labels, core.config)
            raise
        if self._distillation_active() and outputs.exit_logits.shape[1] > 1:
            t = self.distill_temperature
            teacher = F.softmax(outputs.exit_logits[:, -1].detach().float() / t, dim=-1)  # detached teacher
            kl = sum(
                F.kl_div(F.log_softmax(outputs.exit_logits[:, k].float() / t, dim=-1), teacher, reduction="batchmean")
                for k in range(outputs.exit_logits.shape[1] - 1)
            )
            loss = loss + self.distill_weight * t * t * kl
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def _keeps_exit_outputs(self) -> bool:
        if self.exit_outputs is not None:
            return self.exit_outputs
        return self.compute_metrics is compute_exit_metrics or isinstance(self.compute_metrics, BatchedExitMetrics)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """``Trainer.prediction_step``; unless the exits' outputs are kept (the default per-exit metrics, or
        ``exit_outputs=True``), they are left out (``predictions`` = ``logits [N, C]``, stock-shaped) when no
        ``ignore_keys`` is given."""
        if ignore_keys is None and not self._keeps_exit_outputs():
            ignore_keys = list(getattr(getattr(model, "config", None), "keys_to_ignore_at_inference", None) or []) \
                + list(EXIT_OUTPUT_KEYS)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluation_loop(self, *args, **kwargs):
        if isinstance(self.compute_metrics, BatchedExitMetrics):
            self.compute_metrics.reset()  # nothing left over from an evaluation that was interrupted
        return super().evaluation_loop(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``Trainer._save`` minus pickles, atomic, plus what the Hub needs for the budgeted pipeline.

        Everything (model, remote code + pipeline code + ``custom_pipelines`` via the model's ``save_pretrained``,
        tokenizer, ``training_args.json`` instead of the pickled ``training_args.bin``) is written into a temporary
        folder beside ``output_dir`` that is swapped in by rename: if any write fails, ``output_dir`` still loads
        exactly as before (``hf-eenet fit-scheduler`` saves over the model folder). Other files already in
        ``output_dir`` (checkpoints, README, ...) are kept.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return super()._save(output_dir, state_dict=state_dict)
        model = self.accelerator.unwrap_model(self.model)
        writes = getattr(model, "should_save_on_this_rank", None)
        if writes is not None and not writes(True):  # save_on_each_node: transformers writes weights on global
            # rank 0 only. The stock save still runs here (it joins the gather / barrier of a model sharded at load,
            # writing nothing) and the tokenizer is saved, as the stock Trainer does; no config or code without
            # weights, no pickle
            logger.info("rank %s writes no model (transformers saves on global rank 0 only)", self.args.process_index)
            os.makedirs(output_dir, exist_ok=True)
            model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=False)
            tokenizer = self.processing_class if self.processing_class is not None else \
                getattr(self.data_collator, "tokenizer", None)  # (the stock fallback)
            if tokenizer is not None:
                tokenizer.save_pretrained(output_dir)
            return

        wrapper = _is_adapter_wrapper(model)  # (adapters through transformers' integration: the model's save warns)
        adapter = wrapper or bool(getattr(model, "_hf_peft_config_loaded", False))
        if wrapper and getattr(_eenet_core(model).config, "scheduler_budgets", None):
            warnings.warn(f"{output_dir}: the model is a PEFT wrapper, whose save holds the adapter only: its "
                          f"scheduler bank (budgets {list(_eenet_core(model).config.scheduler_budgets)}) is not saved. "
                          "To serve budgets from a folder, merge the adapter (model.merge_and_unload()), fit the bank on "
                          "the merged model and save that", UserWarning, stacklevel=3)

        def write(tmp):
            Trainer._save(self, tmp, state_dict=state_dict)
            pickled = os.path.join(tmp, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)
            record = self.training_args_record
            if record is None:
                Path(tmp, "training_args.json").write_text(self.args.to_json_string())
            elif record:
                Path(tmp, "training_args.json").write_text(json.dumps(record, indent=2))
            if not adapter and not Path(tmp, "pipeline_eenet.py").exists():  # a model that is not ours: still
                # ship the pipeline code (an adapter folder has no model to serve it: PeftModel.from_pretrained
                # loads the base model's own code)
                shutil.copy(Path(__file__).with_name("pipeline_eenet.py"), Path(tmp, "pipeline_eenet.py"))
            self._mark_stale_card(output_dir, tmp, state_dict)

        drop = ("training_args.bin",) if self.training_args_record != {} else ("training_args.bin", "training_args.json")
        atomic_save_dir(output_dir, write, drop=drop)

    def _mark_stale_card(self, folder, tmp, state_dict=None) -> None:
        """Within a save of the model into ``folder`` (written into ``tmp``): a results card already there that
        describes other weights or another scheduler bank than the model saved is kept, marked stale, with a warning
        (:func:`~hf_eenet.model_card.mark_card_stale_in_save`). Off with ``mark_stale_cards = False``."""
        from .card_state import mark_card_stale_in_save

        if not self.mark_stale_cards:
            return
        model = self.accelerator.unwrap_model(self.model)
        status = mark_card_stale_in_save(folder, tmp, model, state_dict, by="EENetTrainer",
                                         changed_here=self.state.global_step > 0 or self.scheduler_fit_mode is not None)
        if status == "stale":
            warnings.warn(f"{Path(folder, 'README.md')} held results of another model (its results.json): the card "
                          "was marked stale (its model-index results removed); re-run the recipe with --do_eval on "
                          "the model saved now to write its own card", UserWarning, stacklevel=6)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """A push during training (``push_to_hub=True``, ``hub_strategy`` other than ``"end"``): the stock
        ``Trainer._push_from_checkpoint`` without its pickle, plus what the pushed repo needs to load without hf_eenet.

        The stock method copies config, weights and tokenizer from the checkpoint into ``output_dir``, writes the
        pickled ``training_args.bin`` there and uploads the folder. Here the model's remote code, pipeline code and
        ``training_args.json`` (which ``_save`` wrote into the checkpoint instead of the pickle) are copied as well,
        no pickle is written, and ``training_args.bin`` is never uploaded (not even a stale one left in
        ``output_dir`` by a stock run). The checkpoint upload of ``hub_strategy="checkpoint"`` /
        ``"all_checkpoints"`` carries the Trainer's resume state as the stock one does (``optimizer.pt``,
        ``scheduler.pt``, ``rng_state.pth``, read back by the Trainer with ``weights_only=True``). Everything else
        (which pushes are skipped while one is in progress, commit messages, callbacks) is the stock logic of
        transformers 5.x, repeated here because the stock method writes the pickle in the middle of it.
        """
        from transformers import trainer as stock  # module attributes, so hf_api / PushInProgress stay patchable
        from transformers.trainer_utils import HubStrategy, SaveStrategy

        args = self.args
        if not self.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
            return
        if not args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(args, self.state, self.control)
        output_dir = args.output_dir
        entries = self._checkpoint_files_to_push(checkpoint_folder)

        def write(tmp):  # the checkpoint's model files, swapped in as one save: never new weights beside an old config
            for entry in entries:
                shutil.copy(os.path.join(checkpoint_folder, entry), os.path.join(tmp, entry))
            if self.processing_class is not None:  # as the stock push: re-saved, it may have spawned any files
                self.processing_class.save_pretrained(tmp)
            self._mark_stale_card(output_dir, tmp)

        # in place (a journal): checkpoint folders in output_dir, which other ranks may still be writing, stay put;
        # a stale training_args.bin stays too, never uploaded (ignore_patterns)
        atomic_save_dir(output_dir, write, in_place=True)
        if args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        jobs = [stock.hf_api().upload_folder(
            repo_id=self.hub_model_id, folder_path=output_dir, commit_message=commit_message, token=args.hub_token,
            run_as_future=True, revision=args.hub_revision,
            ignore_patterns=["_*", f"{stock.PREFIX_CHECKPOINT_DIR}-*", stock.TRAINING_ARGS_NAME,
                             *SAVE_LEFTOVER_PATTERNS])]
        if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            path_in_repo = ("last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT
                            else Path(checkpoint_folder).name)
            jobs.append(stock.hf_api().upload_folder(
                repo_id=self.hub_model_id, folder_path=checkpoint_folder, path_in_repo=path_in_repo,
                commit_message=commit_message + ", checkpoint", token=args.hub_token, run_as_future=True,
                revision=args.hub_revision, ignore_patterns=[stock.TRAINING_ARGS_NAME, *SAVE_LEFTOVER_PATTERNS]))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = stock.PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    @staticmethod
    def _checkpoint_files_to_push(checkpoint_folder: str) -> list[str]:
        """The files of a checkpoint that make up the model repo: what the stock push copies (config, generation
        config, weights, sharded weights with their index, PEFT adapter files) plus the remote / pipeline code
        (``*.py``) and ``training_args.json``; never the optimizer, scheduler, RNG or trainer state."""
        from transformers import trainer as stock

        names = [stock.CONFIG_NAME, stock.GENERATION_CONFIG_NAME, stock.SAFE_WEIGHTS_NAME, "training_args.json",
                 stock.ADAPTER_CONFIG_NAME, stock.ADAPTER_SAFE_WEIGHTS_NAME]
        index = os.path.join(checkpoint_folder, stock.SAFE_WEIGHTS_INDEX_NAME)
        if os.path.isfile(index):
            names.append(stock.SAFE_WEIGHTS_INDEX_NAME)
            with open(index, encoding="utf-8") as f:
                names.extend(sorted(set(json.load(f)["weight_map"].values())))
        names.extend(sorted(e for e in os.listdir(checkpoint_folder) if e.endswith(".py")))
        return [n for n in dict.fromkeys(names) if os.path.isfile(os.path.join(checkpoint_folder, n))]

    # ------------------------------------------------------------------------------------------------ scheduler
    def collect_exit_predictions(self, dataset=None,
                                 require_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """All-exit softmax outputs ``[N, K, C]`` and labels ``[N]`` on ``dataset`` (default: ``eval_dataset``).

        Under DDP every rank must call this (``Trainer.predict`` gathers the rows of all ranks); every rank gets all
        rows. ``require_labels=False`` allows an unlabelled dataset (labels ``None``). Shows the ``Trainer``
        prediction progress bar unless ``args.disable_tqdm``.
        """
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("no dataset: pass eval_dataset to the trainer or to fit_scheduler(eval_dataset=...)")
        if isinstance(dataset, dict):
            raise ValueError(f"eval_dataset is a dict of several datasets ({sorted(dataset)}): pass the one to read, "
                             "e.g. fit_scheduler(eval_dataset=trainer.eval_dataset['validation'])")
        columns = getattr(dataset, "column_names", None)
        if require_labels and columns is not None and not {"labels", "label", "label_ids", *self.label_names} & set(
                columns):
            raise ValueError("the dataset has no labels; the scheduler is fitted on a labelled validation split")
        cache = getattr(self, "_exit_prediction_cache", None)
        key = getattr(dataset, "_fingerprint", None)
        if cache is not None and key is not None and key in cache:
            probs, labels = cache[key]
            if labels is None and require_labels:
                raise ValueError("the dataset has no labels; the scheduler is fitted on a labelled validation split")
            return probs, labels
        out = self._predict_exits(dataset, require_labels)
        if cache is not None and key is not None:
            cache[key] = out
        return out

    @contextlib.contextmanager
    def reuse_exit_predictions(self):
        """Within this block the model must not change: ``collect_exit_predictions`` runs each dataset (by its
        ``datasets`` fingerprint) once, e.g. when the bank is fitted on validation and then evaluated on it."""
        self._exit_prediction_cache = {}
        try:
            yield
        finally:
            self._exit_prediction_cache = None

    @contextlib.contextmanager
    def _serving_precision(self):
        """Exit predictions that a bank is fitted (or evaluated) on are computed as the saved model serves them: the
        model's own dtype, without the mixed-precision forward wrapper Accelerate installs for ``bf16`` / ``fp16``
        training and without ``*_full_eval`` casts (a bank fitted on bf16 probabilities mis-spends in fp32)."""
        patched = []
        for m in {id(m): m for m in (self.model, self.accelerator.unwrap_model(self.model))}.values():
            original = m.__dict__.get("_original_forward")
            if original is not None and "forward" in m.__dict__:
                patched.append((m, m.__dict__["forward"]))
                m.forward = original
        flags = {k: getattr(self.args, k, False) for k in ("bf16_full_eval", "fp16_full_eval", "prediction_loss_only",
                                                           "batch_eval_metrics", "dataloader_drop_last")}
        # the user's metric hooks are not run on these predictions (they need not understand the exits' outputs)
        hooks = {"compute_metrics": self.compute_metrics,
                 "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics}
        try:
            for k in flags:  # fp32 eval, every row, and the predictions kept (the bank needs the exit logits)
                setattr(self.args, k, False)
            for k in hooks:
                setattr(self, k, None)
            yield
        finally:
            for m, forward in patched:
                m.forward = forward
            for k, v in flags.items():
                setattr(self.args, k, v)
            for k, v in hooks.items():
                setattr(self, k, v)

    def _predict_exits(self, dataset, require_labels: bool, use_labels: bool = True):
        dataset = self._usable_labels(dataset, require_labels, use_labels)
        with self._serving_precision():
            pred = self.predict(dataset, ignore_keys=[], metric_key_prefix="exits")  # every output kept
        # the float32 softmax serving decides on (exit_softmax), not a float64 one: saturated exits differ in the
        # last bit, and a bank fitted on other scores than the served ones misses its budget
        logits = torch.from_numpy(np.ascontiguousarray(_exit_logits_from_predictions(pred.predictions), np.float32))
        device = input_device(self.accelerator.unwrap_model(self.model))  # where serving computes it
        probs = exit_softmax(logits.to(device)).cpu().numpy()
        if pred.label_ids is None:
            if require_labels:
                raise ValueError("the dataset has no labels; the scheduler is fitted on a labelled validation split")
            return probs, None
        return probs, _label_array(pred.label_ids)

    def _usable_labels(self, dataset, require_labels: bool, use_labels: bool):
        """``dataset`` with its label column checked, or without it where labels are not used (``use_labels=False``)
        or not given (``require_labels=False`` and every label ``-1``, GLUE's hidden test labels): ``Trainer.predict``
        computes the loss with any label column, which fails on labels outside ``0..C-1``. Labels outside that range
        otherwise are a ValueError that names the column."""
        columns = getattr(dataset, "column_names", None)
        names = [c for c in (columns or []) if c in {"labels", "label", "label_ids", *(self.label_names or [])}]
        if not names or not hasattr(dataset, "remove_columns"):
            return dataset
        if not use_labels:
            return dataset.remove_columns(names)
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        num_labels = getattr(config, "num_labels", None)
        values = np.asarray(dataset[names[0]])
        if not require_labels and values.size and values.dtype.kind in "iu" and (values == -1).all():
            return dataset.remove_columns(names)  # an unlabelled split (GLUE's hidden test labels): nothing to align

        def check(values) -> None:  # the shared check, naming the column
            try:
                check_labels(values, len(values), num_labels)
            except ValueError as err:
                raise ValueError(f"label column {names[0]!r}: {err}" + (
                    "" if require_labels else "; an unlabelled split has every label -1 or no label column")) from None

        if values.dtype.kind == "i" and values.ndim == 1 and num_labels is not None and (values < 0).any():
            check(values)  # before re-encoding a ClassLabel: a partly labelled split is refused here, by name
        aligned = self._labels_in_model_order(dataset)  # (_aligned_class_names, once per dataset version)
        if aligned is not dataset:  # ids re-encoded in the model's order
            dataset, values = aligned, np.asarray(aligned[names[0]])
        if values.dtype.kind in "USO" and values.ndim == 1:  # strings (or None): not class ids
            if not require_labels and all(v is None for v in values.tolist()):
                return dataset.remove_columns(names)
            shown = sorted({str(v) for v in values.tolist()})[:5]
            label2id = getattr(config, "label2id", None)
            col = names[0]
            raise ValueError(f"label column {col!r} holds strings ({shown}), not class ids: map them to ids first, "
                             f"with the model's label2id {label2id} (e.g. dataset.map(lambda r: "
                             f"{{{col!r}: model.config.label2id[r[{col!r}]]}})) or by casting the column to a "
                             "ClassLabel of the model's class names")
        if values.dtype.kind not in "iub" or values.ndim != 1 or num_labels is None:
            return dataset  # not class ids (the model's own checks apply)
        check(values)
        return dataset

    def rematch_budgets(self, dataset) -> dict:
        """Re-match the model's scheduler bank to its budgets on ``dataset``, a sample of the traffic it will serve
        (tokenized like the eval set; labels not needed, ignored if present): see
        :meth:`~hf_eenet.modeling_eenet.EENetModelMixin.rematch_budgets`. Returns its per-budget dict."""
        model = self.accelerator.unwrap_model(self.model)
        check_single_label(model.config, "re-matching a scheduler bank")
        if not model.config.scheduler_budgets:
            raise ValueError("the model has no scheduler bank to re-match: call fit_scheduler first")
        model.verify_scheduler_bank()  # a bank it would refuse anyway (e.g. fitted for other weights): before the pass
        probs, _ = self._predict_exits(dataset, require_labels=False, use_labels=False)  # labels: ignored
        info = model.rematch_budgets(probs)
        logger.info("EENet scheduler bank re-matched on %d rows: %s", len(probs),
                    {b: (round(i["cost_before"], 4), round(i["cost_after"], 4)) for b, i in info.items()})
        return info

    # ------------------------------------------------------------------------------------------------ hub
    def push_to_hub(self, *args, **kwargs):
        """``Trainer.push_to_hub``, which uploads ``output_dir`` as a whole: what an interrupted save left in it (a
        checkpoint killed while it was written leaves ``.checkpoint-N.saving-*`` beside it) is mended first
        (:func:`hf_eenet.bank.recover_leftovers_in`), so no half-written weights are uploaded."""
        if self.is_world_process_zero():
            recover_leftovers_in(self.args.output_dir)
        return super().push_to_hub(*args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """Keep the EENet card. ``Trainer.push_to_hub`` calls this and the stock version would replace the card the
        recipe writes from its results (``model-index`` with accuracy and cost per budget) by a generic draft
        without them. When ``output_dir/README.md`` exists it is left as it is; otherwise the stock draft is
        written, tagged as an hf_eenet early-exit model."""
        if not self.is_world_process_zero():
            return
        if Path(self.args.output_dir, "README.md").is_file():
            return
        tags = kwargs.pop("tags", None) or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        kwargs["tags"] = tags + [t for t in ("hf_eenet", "early-exit", "eenet") if t not in tags]
        super().create_model_card(*args, **kwargs)

    def _fitting_length(self, model, dataset, max_seq_length, tokenized_max_length=None) -> int | None:
        """The input length (tokens) the bank is fitted at, to record as ``config.max_seq_length`` (what the pipeline,
        ``early_exit_predict`` and the CLI truncate to), or ``None`` to leave the config as it is. A bank fitted on
        rows truncated at one length and served at another meets its budget at neither: the exits' confidence, and
        so the exits taken, depend on how much of each text the model reads.

        ``max_seq_length`` given: it must be a length the model takes (its position table, the tokenizer's
        ``model_max_length``) and the rows must fit in it; it is recorded. Else, from the rows' lengths
        (attention masks): rows longer than the length the model serves are an error; rows piled up at one longest
        length (a truncation: at least 5 distinct rows, over twice as many as one token shorter, a text repeated in the
        data counted once; 872 short sentences cut at 32
        tokens: 232 at 32, 23 at 31, uncut: 1 at 55, 2 at 54; 2,000 news texts cut at 128: 13 at 128, 0 at 127)
        shorter than it are recorded as the served length when the config has none (with a warning), and warned
        about when it has one (the bank would serve at another length). Where the dataset still holds its text
        columns, they decide (:func:`_truncation_evidence`): templated texts of one length are whole texts, not a
        truncation, and record nothing; without them, a guessed cut that leaves one token of text (one-word rows,
        ``[CLS] word [SEP]``) is warned about and not recorded.
        ``tokenized_max_length`` (the ``max_length`` the caller tokenized the rows with) replaces the guess
        (:meth:`_stated_fitting_length`)."""
        from .configuration_eenet import max_input_tokens

        limit = max_input_tokens(model.config, self.processing_class, recorded=False)  # what the model can take
        given = None if max_seq_length is None else check_int(max_seq_length, "max_seq_length", 1)
        if given is not None and given > limit:
            raise ValueError(f"max_seq_length={given} is longer than this model takes ({limit} tokens: its position "
                             "table / the tokenizer's model_max_length), so it would never be served at that length")
        known = None if tokenized_max_length is None else check_int(tokenized_max_length, "tokenized_max_length", 1)
        lengths = _row_lengths(dataset, read_streams=True, distinct=True)  # a repeated text counts once
        recorded = getattr(model.config, "max_seq_length", None)
        served = given or max_input_tokens(model.config, self.processing_class)
        if lengths is None or not len(lengths):  # (rows whose lengths cannot be read: the stated length holds)
            return given if known is None else self._stated_fitting_length(known, 0, given, recorded, served)
        longest = int(lengths.max())
        if longest > served:
            hint = (f", or pass max_seq_length={longest} to serve the model at that length"
                    if recorded and not given and longest <= limit else "")
            raise ValueError(
                f"the validation rows are up to {longest} tokens long but the model serves at most {served} "
                + ("(max_seq_length)" if given else "(config.max_seq_length, the length it was trained at)" if recorded
                   else "(its position table / tokenizer)")
                + f": the bank would be fitted on inputs it never serves; tokenize them with truncation=True, "
                  f"max_length={served}{hint}")
        if known is not None:
            return self._stated_fitting_length(known, longest, given, recorded, served)
        piled = int((lengths == longest).sum())
        truncated = piled >= 5 and piled > 2 * int((lengths == longest - 1).sum())
        evidence = None  # read only where a truncation would be recorded or warned about
        if truncated and (longest < given if given is not None else longest != served):
            evidence = _truncation_evidence(dataset, self.processing_class, longest)
            truncated = evidence is not False  # the rows' own texts say they are whole: nothing was cut
        looks = (f"the validation rows are truncated at {longest} tokens (their text columns, tokenized again, are "
                 "longer)" if evidence else
                 f"the validation rows look truncated at {longest} tokens ({piled} of {len(lengths)} distinct rows "
                 "have exactly that length, and not every such row is reproduced by a text column kept in the "
                 "dataset to tell)")
        if given is not None and truncated and longest < given:
            warnings.warn(f"{looks} but max_seq_length={given} is recorded: served inputs up to {given} "
                          "tokens make the exits' confidence, and so the budgets' spend, differ from the fit"
                          + ("" if evidence else f" (if the rows are whole texts tokenized at max_length {given}, "
                                                 f"pass tokenized_max_length={given})"),
                          UserWarning, stacklevel=3)
        if given is not None or not truncated or longest == served:
            return given
        specials = _special_token_count(self.processing_class)
        if not evidence and specials is not None and longest <= specials + 1:
            # a guess only (no text column to tell), and the "cut" leaves one token of text: no max_length anyone
            # tokenizes at, but what one-word rows are ([CLS] word [SEP]); nothing recorded (a cut leaving more, even
            # with training rows longer, is what validation rows tokenized shorter look like: recorded below)
            warnings.warn(f"{looks}, but that is one token of text besides the special tokens (one-word rows): no "
                          f"length is recorded (the pipeline serves up to {served} tokens); if the rows were cut "
                          f"there, pass max_seq_length={longest} to serve at that length", UserWarning, stacklevel=3)
            return None
        if recorded is None:
            warnings.warn(f"{looks}: the bank is fitted at that length, so config.max_seq_length = "
                          f"{longest} is recorded and the pipeline truncates served inputs to it"
                          + ("" if evidence else "; if the rows are whole texts, pass fit_scheduler("
                             "tokenized_max_length=<the max_length you tokenized them with>) instead (or keep the "
                             "text columns the rows were tokenized from, unchanged, in the dataset)"),
                          UserWarning, stacklevel=3)
            return longest
        warnings.warn(f"{looks} while the model serves {served} tokens (config.max_seq_length): the bank "
                      "will spend its budgets at another rate on served inputs; "
                      + (f"tokenize the rows with max_length={served}, or pass max_seq_length={longest} to serve at "
                         "that length" if evidence else
                         f"if they are whole texts tokenized at max_length {served}, pass "
                         f"tokenized_max_length={served}; if they were cut at {longest}, tokenize them with "
                         f"max_length={served}"),
                      UserWarning, stacklevel=3)
        return None

    @staticmethod
    def _stated_fitting_length(known: int, longest: int, given, recorded, served: int) -> int | None:
        """:meth:`_fitting_length` where the caller stated ``tokenized_max_length`` (``known``): nothing is guessed.
        Rows below ``known`` are whole texts; rows that reach it may be cut there. The bank is fitted on rows read up
        to ``known`` tokens, so ``known`` is recorded when the config has no length (and the model would serve more);
        a recorded or given length that rows cut at ``known`` would be served at warns."""
        if longest > known:
            raise ValueError(f"tokenized_max_length={known}, but the validation rows are up to {longest} tokens "
                             "long: they were not tokenized (truncation=True) at that max_length")
        looks = (f"the validation rows were tokenized at max_length {known} (tokenized_max_length) and reach it, so "
                 "some may be cut there")
        if given is not None:
            if longest == known < given:
                warnings.warn(f"{looks} but max_seq_length={given} is recorded: served inputs up to {given} tokens "
                              "make the exits' confidence, and so the budgets' spend, differ from the fit",
                              UserWarning, stacklevel=4)
            return given
        if recorded is None:
            return known if known < served else None
        if longest == known != served:
            warnings.warn(f"{looks} while the model serves {served} tokens (config.max_seq_length): the bank will "
                          f"spend its budgets at another rate on served inputs; tokenize the rows with "
                          f"max_length={served}, or pass max_seq_length={known} to serve at that length",
                          UserWarning, stacklevel=4)
        return None

    def fit_scheduler(self, eval_dataset=None, budgets=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8), seed: int = 0,
                      default_budget: float | None = None, cost_profile=None, extend: bool = False,
                      max_seq_length: int | None = None, tokenized_max_length: int | None = None,
                      **scheduler_kwargs) -> dict:
        """Fit one EENet scheduler per budget on the all-exit predictions of ``eval_dataset`` (collected once) and
        install them as the model's scheduler bank.

        Args:
            budgets: fractions of the full model's cost in (0, 1] (numbers, NumPy scalars or 0-d tensors), each within
                [c_1, c_K] of ``config.exit_costs``.
            cost_profile: optional :class:`~hf_eenet.costs.ExitCostProfile` (plus kind) to store as the model's
                exit costs first, e.g. ``(profile, "latency")``; by default the costs already in the config are used.
            default_budget: budget the pipeline uses when a call gives none (default: the fitted budget nearest 0.5).
            extend: ``False`` (default) *replaces* the bank with the schedulers fitted now; ``True`` adds them to the
                existing bank (same budgets are replaced), which requires the same validation data (fingerprint),
                costs and scheduler config as the bank's other entries.
            max_seq_length: the input length in tokens the rows of ``eval_dataset`` were truncated at, recorded as
                ``config.max_seq_length`` so the model serves at the length its bank was fitted at. By default it is
                found from the rows (a truncation piles rows up at one longest length; see ``_fitting_length``).
            tokenized_max_length: the ``max_length`` the rows of ``eval_dataset`` were tokenized with
                (``truncation=True``), when you know it: nothing is guessed from the rows' lengths (rows shorter than it
                are whole texts, however many share one length); the bank is fitted on rows read up to that length,
                so it is recorded as ``config.max_seq_length`` when the config has none (and the model takes more);
                rows that reach it may be cut there, so a config serving another length warns.
            scheduler_kwargs: passed to :class:`EENetScheduler`.
        Returns:
            ``{budget: {"planned_cost", "validation": evaluate_exits(...), "fit_seconds", ...}}``, also stored in
            ``self.scheduler_fit_info``; ``self.scheduler_fit_mode`` is ``"replaced"`` or ``"extended"`` (also
            logged), and ``self.scheduler_bank_budgets`` the bank's budgets afterwards.
        """
        model = self.accelerator.unwrap_model(self.model)
        check_single_label(model.config, "fitting a scheduler bank")
        check_bool(extend, "extend")
        if cost_profile is not None:
            from .costs import ExitCostProfile

            profile, kind = cost_profile if isinstance(cost_profile, tuple) else (cost_profile, "latency")
            if not isinstance(profile, ExitCostProfile):
                raise TypeError(f"cost_profile must be an ExitCostProfile (or (profile, kind)), got {type(profile).__name__}")
            new_costs = check_costs(profile.normalised(kind), model.config.num_exits, name="cost_profile costs")
        else:
            new_costs = check_costs(model.config.exit_costs, model.config.num_exits)
        if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__"):
            raise TypeError(f"budgets must be a sequence of fractions in (0, 1], got {budgets!r}")
        budgets = sorted(check_budget_fraction(b, "budgets entry") for b in budgets)
        if not budgets:
            raise ValueError("budgets is empty")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets has duplicates: {budgets}")
        for b in budgets:  # validate all before spending time on any fit
            check_budget(b, new_costs)
        if extend and not model.config.scheduler_budgets:
            extend = False  # nothing to extend: the fitted schedulers make a new bank (with cost_profile's costs)
        future = sorted(set(model.config.scheduler_budgets or []) | set(budgets)) if extend else budgets
        if default_budget is not None:  # servable by the bank this call will leave, checked before any change
            d = check_budget_fraction(default_budget, "default_budget")
            if not future[0] - 1e-6 <= d <= future[-1] + 1e-6:
                raise ValueError(f"default_budget {d:g} is outside the budgets the bank will hold {future}; give one "
                                 "in that range (or none: the fitted budget nearest 0.5)")
        if extend and model.config.scheduler_budgets:
            model.verify_scheduler_bank()
            if any("rematched_on" in r for r in model.config.scheduler_bank or []):
                raise ValueError("extend=True: the bank's thresholds were re-matched on traffic (rematch_budgets); "
                                 "refit the whole bank (extend=False), then re-match it")
            from .validation import costs_match

            if not costs_match(new_costs, model.config.exit_costs):
                raise ValueError("extend=True needs the bank's exit costs; these cost_profile costs differ: refit the "
                                 "whole bank (extend=False)")
        checked = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not all(hasattr(checked, a) for a in ("with_format", "__len__", "select")) and hasattr(checked, "__iter__") \
                and not isinstance(checked, (list, tuple)):
            checked = list(checked)  # a (finite) stream: the length and pairing checks read it once
        length = self._fitting_length(model, checked, max_seq_length, tokenized_max_length)
        recorded = model.config.max_seq_length
        if extend and model.config.scheduler_budgets and length is not None and recorded is not None \
                and length != recorded:  # (a bank saved without a length: its entries were fitted on these very rows,
            # the data fingerprint checks it, so the length found now holds for them too)
            raise ValueError(f"extend=True: the bank serves at {recorded} tokens (config.max_seq_length), this fit at "
                             f"{length}; refit the whole bank (extend=False)")
        pairs = _rows_are_pairs(checked, model.config, self.processing_class)
        if pairs is not None and pairing_mismatch(model.config, pairs):
            raise ValueError(f"this model was trained on {pairing_mismatch(model.config, pairs)} "
                             f"(config.sentence_pairs) but the validation rows are "
                             f"{'sentence pairs' if pairs else 'single texts'} (their token types or separators): "
                             "the bank would be fitted on inputs the pipeline refuses to serve; tokenize the rows as "
                             "the model reads them")
        probs, labels = self.collect_exit_predictions(eval_dataset)
        missing = sorted(set(range(probs.shape[-1])) - set(np.asarray(labels).tolist()))
        if missing:
            id2label = getattr(model.config, "id2label", None) or {}
            names = [str(id2label.get(c, id2label.get(str(c), c))) for c in missing]
            warnings.warn(f"the validation rows hold no row of class(es) {names}: the bank is fitted without them, so "
                          "its budgets are matched, and its accuracy measured, on the other classes only; fit it on "
                          "validation rows of every class", UserWarning, stacklevel=2)
        fingerprint = data_fingerprint(probs, labels)
        if extend and model.config.scheduler_bank:
            prints = {r.get("data_fingerprint") for r in model.config.scheduler_bank if r.get("data_fingerprint")}
            if prints and prints != {fingerprint}:
                older = not any("weights_sha256" in r for r in model.config.scheduler_bank)  # (None: not readable)
                raise ValueError("extend=True: the existing bank was fitted on other validation data, or on the same "
                                 "data collected on another device or in another precision"
                                 + (", or by an earlier hf_eenet (its records hold no weights digest; it computed "
                                    "the exit probabilities in float64, which moves their last bits)" if older else "")
                                 + f" (fingerprint {sorted(prints)} vs {fingerprint}); refit the whole bank "
                                   "(extend=False)")
        info, fitted = {}, {}
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm ships with transformers
            tqdm = None
        bar = tqdm(budgets, desc="EENet scheduler bank", unit="budget",
                   disable=self.args.disable_tqdm if tqdm else True) if tqdm else budgets
        for b in bar:
            if tqdm:
                bar.set_postfix(budget=f"{b:g}")
            t0 = time.perf_counter()
            sched = EENetScheduler(**scheduler_kwargs).fit(probs, labels, new_costs, b, seed=seed)
            secs = time.perf_counter() - t0
            fitted[b] = sched
            info[b] = {
                "fit_seconds": secs,
                "planned_cost": float(sched.planned_cost),
                "validation": evaluate_exits(probs, labels, sched.exit_index(probs), new_costs, budget=b),
            }
        # install only now: a failed or interrupted fit leaves the old bank as it was. The default budget is set
        # below (the one given, else the old one if the new bank serves it, else the fitted budget nearest 0.5)
        old_default, old_budgets = model.config.default_budget, model.config.scheduler_budgets
        if default_budget is not None or (old_default is not None
                                          and not future[0] - 1e-6 <= old_default <= future[-1] + 1e-6):
            model.config.default_budget = None
        try:
            if extend:
                for b, sched in fitted.items():
                    model.add_scheduler(sched, b, data_fingerprint=fingerprint)
                mode = "extended"
            else:
                if cost_profile is not None:
                    from .costs import set_exit_costs

                    model.clear_scheduler_bank()
                    set_exit_costs(model, profile, kind)
                model.set_scheduler_bank(fitted, data_fingerprint=fingerprint)
                mode = "replaced"
        except BaseException:
            if model.config.default_budget is None and model.config.scheduler_budgets == old_budgets:
                model.config.default_budget = old_default  # the old bank stayed: so does its default
            raise
        if length is not None:
            model.config.max_seq_length = length
        if pairs is not None and getattr(model.config, "sentence_pairs", None) is None:
            model.config.sentence_pairs = pairs  # what the bank was fitted on: the pipeline serves that kind only
        if default_budget is None and model.config.default_budget is None:
            default_budget = min(model.config.scheduler_budgets, key=lambda x: abs(x - 0.5))
        if default_budget is not None:
            model.get_exit_policy(default_budget)  # validates it is servable
            model.config.default_budget = check_budget_fraction(default_budget, "default_budget")
        logger.info("EENet scheduler bank %s: fitted budgets %s, bank now %s", mode, budgets,
                    model.config.scheduler_budgets)
        self.scheduler_fit_info = info
        self.scheduler_fit_mode = mode
        self.scheduler_bank_budgets = list(model.config.scheduler_budgets)
        return info


__all__ = ["EENetTrainer", "compute_exit_metrics"]
