"""The EENet recipe, in the style of transformers' ``run_classification.py``: fine-tune all exits of a BERT/RoBERTa
classifier with ``EENetTrainer`` on any text-classification data (single texts or sentence pairs), measure the exit
costs, fit the EENet scheduler bank on validation, then (``--do_eval``) compare EENet with the baselines and the
oracle on test and (``--do_predict``) write per-text predictions at every budget. Writes the model folder, results
JSON, plot and model card, and (``--push_to_hub``) pushes once at the end.

``recipes/run_eenet.py`` (with presets such as ``recipes/presets/sst2.json``) and ``hf-eenet train`` are thin
wrappers around :func:`main`. Works under ``torchrun --nproc_per_node N`` (every rank trains and predicts; rank 0
saves and reports). No dataset names here: presets live in ``recipes/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import site
import sys
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from .bank import state_digest
from .data import DataArguments, DataError, _is_number, load_text_classification
from .scheduler_config import SchedulerFitArguments
from .validation import budget_reachable, check_budget_fraction

logger = logging.getLogger(__name__)


DEFAULT_BUDGETS = "0.25,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


@dataclass
class ModelArguments:
    """Which checkpoint to start from."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "plain BERT/RoBERTa checkpoint (folder or Hub id) to fine-tune, or an hf_eenet model folder to "
                "re-fit / evaluate"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer, if not the model's"})
    exit_layers: str | None = field(default=None, metadata={"help": "comma-separated 1-based layers; default all"})
    exit_pooling: str = field(default="auto", metadata={
        "help": "cls, mean, or auto: mean when the checkpoint is a sentence-transformers model pooled by the token "
                "mean (its 1_Pooling/config.json says so), else cls"})
    cache_dir: str | None = field(default=None, metadata={"help": "where downloaded checkpoints are cached"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "allow a classification head of another size in the checkpoint (re-initialised)"})


@dataclass
class EENetArguments(SchedulerFitArguments):
    """EENet-specific options (the rest: ``DataArguments``, ``ModelArguments``, ``transformers.TrainingArguments``)."""

    budgets: str | None = field(default=None, metadata={
        "help": f"comma-separated budgets, fractions of the full cost (default {DEFAULT_BUDGETS}; an hf_eenet model "
                "evaluated with --do_fit_scheduler false: its bank's budgets)"})
    cost_profile: str = field(default="latency", metadata={
        "help": "exit costs: latency (measured here), flops or layers"})
    profile_batch_size: int = field(default=1, metadata={"help": "batch size of the latency profile"})
    self_distillation: bool = field(default=True, metadata={
        "help": "self-distillation in the last quarter of training"})
    do_fit_scheduler: bool = field(default=True, metadata={"help": "fit the EENet scheduler bank on validation"})
    reprofile_costs: bool = field(default=False, metadata={
        "help": "re-measure the exit costs of an hf_eenet model given as --model_name_or_path (default: keep its own)"})
    results_dir: str | None = field(default=None, metadata={
        "help": "where results JSON/plot/card go; default output_dir"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars, no results table"})
    dataset_label: str | None = field(default=None, metadata={
        "help": "short dataset name for results and the card; default: --dataset_name or the train file's folder"})
    card_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset id for the card's model-index"})
    card_dataset_config: str | None = field(default=None, metadata={"help": "its configuration, for the card"})
    card_dataset_name: str | None = field(default=None, metadata={"help": "readable dataset name for the card"})
    card_backbone: str | None = field(default=None, metadata={"help": "how the card names the backbone"})
    card_base_model: str | None = field(default=None, metadata={"help": "Hub id of the base model, for the card"})
    card_notes: list[str] = field(default_factory=list, metadata={
        "help": "extra limitations / notes for the card (e.g. partial training data)"})


# ------------------------------------------------------------------------------------------------ helpers
def _versions() -> dict:
    import datasets
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def portable_path(value):
    """``value`` with this machine's absolute paths made portable (relative to the working directory, or to
    ``site-packages``), so that committed results do not depend on where the repository or the venv sits."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    p = Path(value).resolve()
    roots = [("", Path.cwd().resolve())] + [("<site-packages>/", Path(s).resolve()) for s in site.getsitepackages()]
    for prefix, root in roots:
        if p.is_relative_to(root):
            rel = p.relative_to(root).as_posix()
            return prefix + rel if prefix else os.path.relpath(p, Path.cwd())
    return value


def _secret_flag(flag: str) -> bool:
    """Whether a ``--flag`` carries a credential (``--hub_token``, ``--token``, an abbreviation argparse expands to
    ``--hub_token`` such as ``--hub_tok``): its value is never written out."""
    name = flag.lstrip("-").lower().replace("-", "_")
    return flag.startswith("--") and (name.endswith("token") or (len(name) >= 5 and "hub_token".startswith(name)))


def portable_command(command: str) -> str:
    """``command`` with every absolute path made portable (:func:`portable_path`; paths outside the working directory
    and site-packages become ``<path>/<name>``), also inside ``--flag=/abs/path``: no machine paths in committed
    results or cards. The value of a credential flag (``--hub_token hf_...``, ``--token=...``) becomes
    ``<HUB_TOKEN>``, as ``training_args.json`` writes it: the command goes into ``results.json`` and the card, which
    ``push_to_hub`` uploads."""
    out, secret_next = [], False
    for token in command.split(" "):
        flag, eq, value = token.partition("=") if token.startswith("--") else ("", "", token)
        if secret_next and token:
            secret_next = False
            if not token.startswith("--"):
                out.append("<HUB_TOKEN>")
                continue
        if _secret_flag(flag or token):
            if eq:
                out.append(f"{flag}=<HUB_TOKEN>")
            else:
                out.append(token)
                secret_next = True
            continue
        out.append(f"{flag}{eq}{_no_machine_path(value)}")
    return " ".join(out)


_CARD_TRAINING_KEYS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "weight_decay",
                       "warmup_steps", "seed", "max_steps", "bf16", "gradient_accumulation_steps", "lr_scheduler_type",
                       "optim")


def _card_training_args(values: dict) -> dict:
    return {k: v for k, v in values.items() if k in _CARD_TRAINING_KEYS}


def _saved_training_args(model_dir, cache_dir: str | None = None) -> dict:
    """The training settings saved with a model this run did not train (its ``training_args.json``, in its folder or
    its Hub repository), else ``{}``: the card must not show this run's unused TrainingArguments as how the model was
    trained."""
    path = model_file(str(model_dir), "training_args.json", cache_dir)
    try:
        out = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _saved_backbone(model_dir, model, cache_dir: str | None = None) -> tuple[str | None, str | None]:
    """``(backbone, base_model)`` that the results card of a model this run did not train names: those of its
    folder's ``results.json`` (the card's backbone, else the checkpoint the recipe started from; the card's base
    model, else that checkpoint) when that file describes this very model (its ``model_sha256``: weights and bank),
    else ``(None, None)``. An evaluate-only run's card names what the model was trained from, not its folder; a
    results file left from an earlier model in the folder (retrained without --do_eval, a bank refitted) is not
    taken for it."""
    path = model_file(str(model_dir), "results.json", cache_dir)
    try:
        saved = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return None, None
    if not isinstance(saved, dict) or not saved.get("model_sha256") or saved["model_sha256"] != state_digest(model):
        return None, None
    meta = saved.get("model_card") if isinstance(saved.get("model_card"), dict) else {}
    args = saved.get("recipe_args") if isinstance(saved.get("recipe_args"), dict) else {}
    start = args.get("model_name_or_path")
    backbone, base = meta.get("backbone") or start, meta.get("base_model") or start
    return (backbone if isinstance(backbone, str) else None), (base if isinstance(base, str) else None)


def _drop_stale_outputs(out_dir: Path, evaluated: bool, predicted: bool, weights_changed: bool = True,
                        hint: str = "--do_eval / --do_predict write new ones") -> None:
    """After the model or its bank changed in ``out_dir``: remove the outputs that describe the one before and that
    this run did not write again (predictions, exit predictions, evaluation metrics, also inside all_results.json).
    ``results.json`` and the plot stay: the card, marked stale, names them as the earlier model's. A bank changed
    alone (``weights_changed=False``: ``hf-eenet fit-scheduler`` / ``rematch``) keeps the exits' predictions."""
    stale = ([] if predicted else ["predict_results.jsonl"]) + (
        [] if evaluated else ["eval_results.json"] + (["exit_predictions.safetensors"] if weights_changed else []))
    removed = [name for name in stale if (out_dir / name).is_file()]
    for name in removed:
        (out_dir / name).unlink()
    merged = out_dir / "all_results.json"
    if not evaluated and merged.is_file():
        try:
            metrics = json.loads(merged.read_text())
        except ValueError:
            metrics = None
        if isinstance(metrics, dict) and any(k.startswith("eval_") for k in metrics):
            merged.write_text(json.dumps({k: v for k, v in metrics.items() if not k.startswith("eval_")}, indent=4,
                                         sort_keys=True))
            removed.append("the eval_* metrics of all_results.json")
    if removed:
        logger.warning("removed %s: they described the model before this run (%s)", ", ".join(removed), hint)


def _dataset_label(data_args) -> str:
    """A short name for the data of a run: the Hub dataset id, a local dataset folder's name (not the machine's
    path), else the folder (or stem) of the first data file."""
    if data_args.dataset_name:
        name = data_args.dataset_name
        return Path(name).resolve().name if Path(name).exists() else name
    first = Path(data_args.train_file or data_args.validation_file or data_args.test_file)
    return first.resolve().parent.name or first.stem


def _no_machine_path(value):
    p = portable_path(value)
    return "<path>/" + Path(p).name if isinstance(p, str) and os.path.isabs(p) else p


def model_file(path: str, filename: str, cache_dir: str | None = None) -> Path | None:
    """``filename`` of the model at ``path``: a local folder's file, or a Hub repository's (from the cache, downloaded
    when online, as ``from_pretrained`` does; ``HF_HUB_OFFLINE`` keeps it to the cache). ``None`` when it has none or
    it cannot be reached: ``from_pretrained`` fetches only the config, weights and tokenizer, not the side files."""
    local = Path(path) / filename
    if local.is_file():
        return local
    if Path(path).is_dir():
        return None
    try:
        from transformers.utils.hub import cached_file

        found = cached_file(path, filename, cache_dir=cache_dir, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False, _raise_exceptions_for_gated_repo=False)
    except Exception:  # noqa: BLE001 - not a repo id, no cache, no network: the file is unknown, not an error
        return None
    return Path(found) if found and Path(found).is_file() else None


def checkpoint_pooling(path: str, cache_dir: str | None = None) -> str:
    """``"mean"`` when ``path`` is a sentence-transformers checkpoint pooled by the token mean (its
    ``1_Pooling/config.json``), else ``"cls"``. Local folders are read directly, Hub ids through :func:`model_file`
    (before, only from the cache: a first online run of a mean-pooled Hub checkpoint pooled by CLS)."""
    cfg_file = model_file(path, "1_Pooling/config.json", cache_dir)
    if cfg_file is None:
        return "cls"
    cfg = json.loads(cfg_file.read_text())
    return "mean" if cfg.get("pooling_mode_mean_tokens") else "cls"


def checkpoint_label_names(path: str, cache_dir: str | None = None) -> list[str] | None:
    """The class names, in id order, that a plain checkpoint's classifier was fine-tuned with (its config's
    ``id2label``), or ``None`` when it has none of its own (transformers' default ``LABEL_<i>`` names: a backbone, or
    a head trained without names)."""
    from transformers import AutoConfig

    id2label = getattr(AutoConfig.from_pretrained(path, cache_dir=cache_dir), "id2label", None) or {}
    try:
        names = [str(id2label[i]) for i in range(len(id2label))]
    except KeyError:  # ids that are not 0..C-1
        return None
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def read_data_for_checkpoint(path: str, data_args: DataArguments, seed: int, need, cache_dir: str | None = None,
                             new_head: bool = False):
    """The data of a run that starts from the plain checkpoint ``path``, its labels read as the classes the
    checkpoint's classifier was fine-tuned for where they are those: its head's row i is its class i, and naming the
    rows in the data's (sorted) order would silently swap the classes of a fine-tuned classifier (run_glue.py's
    ``label_name_to_id`` avoids the same).

    The data's classes (from its labels, a ``ClassLabel``, or ``--class_names``) are read first; then, unless the
    user named them (``--class_names``, which the loader takes for labels other than a ``ClassLabel``), they are read
    again as the checkpoint's classes (as a trained model reads data: ``label_names=``) where they are its names
    (all, or some: the head keeps every class it has; another case: the data's spelling, all of them only) or its ids
    ``0..C-1`` as ints (all of them: a subset of ids could be other classes; not where its names are numbers).
    ``new_head`` (``--ignore_mismatched_sizes``): data with another number of classes gets a new head for its own
    classes.
    Otherwise, where the checkpoint names other classes, a warning says that its head's rows now stand for the data's
    classes. Data whose first read fails because a validation or test split holds a class that train lacks is read
    with the checkpoint's names where they cover it (else the error names ``--class_names``)."""
    ckpt = checkpoint_label_names(path, cache_dir)
    if ckpt is None:  # a backbone, or a head trained without names: the data's own classes
        return load_text_classification(data_args, seed=seed, need=need)
    try:
        data = load_text_classification(data_args, seed=seed, need=need)
    except DataError as err:  # e.g. validation holds a class train lacks: the checkpoint's names may cover it
        if data_args.class_names is not None or new_head:
            raise
        try:  # its names only (ids are read as its classes only when all of 0..C-1 are there, as below)
            data = load_text_classification(data_args, seed=seed, label_names=ckpt, need=need, ids_into_names=False)
        except DataError:
            if "not among" not in str(err):  # not a label the first read did not know
                raise err from None
            raise DataError(f"{err}. If your classes are those of {path} ({', '.join(ckpt)}), give them with "
                            "--class_names in its order, spelt as in your data") from None
        _say_read_as(path, ckpt)
        return data
    names = list(data.label_names)
    if names == ckpt or (new_head and len(names) != len(ckpt)):
        return data
    if data.label_names_from == "class_names":  # the user's own names
        if [n.casefold() for n in names] != [n.casefold() for n in ckpt]:
            _warn_other_classes(path, ckpt, f"--class_names lists {names}")
        return data
    fold = {n.casefold(): n for n in names}
    order = None
    if set(names) <= set(ckpt):
        order = ckpt  # its names (all or some): every class of the head kept
    elif len(fold) == len(names) == len(ckpt) and set(fold) == {n.casefold() for n in ckpt}:
        order = [fold[n.casefold()] for n in ckpt]  # its names in another case: the data's spelling
    elif names == [str(i) for i in range(len(ckpt))] and not any(map(_is_number, ckpt)):  # its ids 0..C-1
        if data.label_names_from == "ints":  # read as ids, named by the checkpoint
            order = ckpt
        else:  # id strings, or a ClassLabel without names ("0".."C-1"): the rows are right, named by the data
            logger.warning("%s was fine-tuned with the classes %s (id order); the data's labels are their ids (row i "
                           "= class i) as text or a ClassLabel without names, so the model is named %s: give the "
                           "labels as ints, or name the classes in the data, to keep the checkpoint's names",
                           path, ckpt, names)
            return data
    if order is None:
        _warn_other_classes(path, ckpt, f"the data's classes are {names}")
        return data
    _say_read_as(path, ckpt)
    return load_text_classification(data_args, seed=seed, label_names=order, need=need)


def _say_read_as(path: str, ckpt: list[str]) -> None:
    logger.warning("%s was fine-tuned with the classes %s (id order): the data's labels are read as those classes, so "
                   "its classifier keeps them", path, ckpt)


def _warn_other_classes(path: str, ckpt: list[str], why: str) -> None:
    warnings.warn(f"{path} was fine-tuned with the classes {ckpt} (id order) but {why}: the checkpoint's classifier "
                  "row i now stands for the data's class i, whatever it was trained for. If the classes are its own "
                  "(or some of them), give --class_names with all of the checkpoint's classes in its order, spelt as "
                  "in your data (int labels are ids into them); if they are new, this is fine-tuning a head for them",
                  UserWarning, stacklevel=3)


def is_eenet_checkpoint(path: str) -> bool:
    from transformers import AutoConfig

    import hf_eenet  # noqa: F401  (registers the eenet model types)

    return AutoConfig.from_pretrained(path).model_type.startswith("eenet")


def load_backbone(path: str, num_labels: int, exit_layers=None, id2label=None, exit_pooling: str = "auto",
                  tokenizer_name: str | None = None, cache_dir: str | None = None,
                  ignore_mismatched_sizes: bool = False):
    """An EENet BERT or RoBERTa model (chosen from the checkpoint's model_type) plus its tokenizer.

    ``id2label``: a list of label names (id order) or a dict."""
    from transformers import AutoConfig, AutoTokenizer

    from .configuration_eenet import eenet_model_type, unsupported_model_type
    from .modeling_eenet import EENetBertForSequenceClassification, EENetRobertaForSequenceClassification

    model_type = AutoConfig.from_pretrained(path, cache_dir=cache_dir).model_type
    family = eenet_model_type(model_type)
    if family is None:  # (a DistilBERT / ELECTRA / ... checkpoint: none of its weights would load into ours)
        raise unsupported_model_type(model_type, path)
    cls = EENetRobertaForSequenceClassification if family == "eenet-roberta" else EENetBertForSequenceClassification
    if exit_pooling == "auto":
        exit_pooling = checkpoint_pooling(path, cache_dir)
    kw = {"num_labels": num_labels, "exit_pooling": exit_pooling}
    if exit_layers:
        kw["exit_layers"] = exit_layers
    if id2label:
        names = id2label if isinstance(id2label, dict) else dict(enumerate(id2label))
        kw["id2label"] = names
        kw["label2id"] = {n: i for i, n in names.items()}
    try:
        model = cls.from_pretrained(path, cache_dir=cache_dir, ignore_mismatched_sizes=ignore_mismatched_sizes, **kw)
    except RuntimeError as err:  # a checkpoint's head sized for other classes: a flag problem, said in one line
        if not ("size mismatch" in str(err) or "ignore_mismatched_sizes" in str(err)) or ignore_mismatched_sizes:
            raise
        raise ValueError(f"{path} has weights of other shapes than a model for {num_labels} classes (e.g. a "
                         f"classification head for another number of labels): pass --ignore_mismatched_sizes to "
                         f"start those layers afresh (transformers: {' '.join(str(err).split())[:300]})") from err
    return model, AutoTokenizer.from_pretrained(tokenizer_name or path, cache_dir=cache_dir)


def load_eenet(path: str, tokenizer_name: str | None = None):
    """A saved hf_eenet model folder and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_eenet  # noqa: F401

    model = AutoModelForSequenceClassification.from_pretrained(path)
    if not hasattr(model, "exit_forward"):
        raise ValueError(f"{path} is not an hf_eenet early-exit model ({type(model).__name__})")
    return model, AutoTokenizer.from_pretrained(tokenizer_name or path)


def model_label_names(model) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def parse_budgets(s) -> list[float]:
    """``--budgets`` as a list of fractions in (0, 1], each once (checked before anything is trained)."""
    if isinstance(s, (list, tuple)):
        out = [float(b) for b in s]
    else:
        try:
            out = [float(x) for x in str(s).split(",") if x.strip()]
        except ValueError as err:
            raise DataError(f"--budgets must be comma-separated numbers, got {s!r}") from err
    if not out:
        raise DataError("no budgets given")
    for b in out:
        try:
            check_budget_fraction(b, name="--budgets entry")
        except ValueError as err:
            raise DataError(str(err)) from err
    if len(set(out)) != len(out):
        raise DataError(f"--budgets lists a budget twice: {s!r}")
    return out


def parse_exit_layers(s) -> list[int]:
    """``--exit_layers "2,4,6"`` as ints (the config checks the layers themselves)."""
    try:
        return [int(x) for x in str(s).split(",") if x.strip()]
    except ValueError as err:
        raise DataError(f"--exit_layers must be comma-separated layer numbers (1-based), got {s!r}") from err


def _recipe_length(model, tokenizer, requested) -> int:
    """Tokens to truncate to: ``--max_seq_length`` when given, else the length an hf_eenet model was trained at
    (``config.max_seq_length``), else 128; capped at what the model's position table and tokenizer take (with a
    warning, as ``run_classification.py`` does)."""
    from .configuration_eenet import max_input_tokens

    if requested is None:
        requested = getattr(model.config, "max_seq_length", None) or 128
    limit = max_input_tokens(model.config, tokenizer, recorded=False)
    if int(requested) > limit:
        logger.warning("--max_seq_length %d is larger than the model takes (%d positions); using %d",
                       int(requested), limit, limit)
        return limit
    return int(requested)


def _reachable_budgets(budgets: list[float], costs: list[float], args, saved_to: str | None) -> list[float]:
    """The budgets a bank can be fitted for with exit ``costs``: a budget below the cheapest exit's cost is an error
    when the user asked for it (``--budgets``, or a config file's), and dropped with a warning when it is one of the
    defaults (``DEFAULT_BUDGETS`` start at 0.25; exits at layers 2 and 3 of 3 cost 0.67 and 1). ``saved_to``: the
    folder a trained model is saved to before the error (``None``: nothing trained; ``""``: checked before
    training)."""
    lo = costs[0] / costs[-1]
    unreachable = [b for b in budgets if not budget_reachable(b, [c / costs[-1] for c in costs])]
    if not unreachable:
        return budgets
    reachable = [b for b in budgets if b not in unreachable]
    if args.budgets is None and reachable:
        logger.warning("the default budgets %s are below the cheapest exit's cost (%.3f of the full model with "
                       "--cost_profile %s) and are not fitted; the bank serves %s", unreachable, lo,
                       args.cost_profile, reachable)
        return reachable
    where = ("" if saved_to is None else " Nothing was trained." if saved_to == "" else
             f" The trained model was saved to {saved_to} without a scheduler bank: fit one with `python -m hf_eenet "
             f"fit-scheduler {saved_to} --budgets {','.join(f'{b:g}' for b in reachable) or '0.5'} ...` (the same "
             "data flags), or rerun with reachable --budgets.")
    raise DataError(f"--budgets {unreachable} are below the cheapest exit's cost: with --cost_profile "
                    f"{args.cost_profile} exit 1 costs {lo:.3f} of the full model, so the reachable budgets are "
                    f"[{lo:.3f}, 1].{where}")


def budget_predictions(model, probs: np.ndarray, budgets=None) -> dict:
    """``{budget: (exit index [N], predicted class [N], score [N], cost [N])}`` from all-exit probabilities, using the
    model's fitted scheduler bank (``budgets`` default: every fitted budget; the full model under key ``1.0`` when
    the model has no bank)."""
    costs = np.asarray(model.config.exit_costs or [(k + 1) / model.config.num_exits
                                                   for k in range(model.config.num_exits)], dtype=np.float64)
    out = {}
    bank = dict(zip(model.config.scheduler_budgets or [], model.eenet_schedulers))
    if budgets is None:
        budgets = list(bank) or [1.0]
    for b in budgets:
        b = float(b)
        if bank:
            exit_idx = np.asarray(model.get_exit_policy(b).exit_index(probs))
        elif b == 1.0:
            exit_idx = np.full(len(probs), probs.shape[1] - 1)
        else:
            raise ValueError(f"budget {b}: the model has no fitted scheduler bank (run fit-scheduler first)")
        chosen = probs[np.arange(len(probs)), exit_idx]
        out[b] = (exit_idx, chosen.argmax(-1), chosen.max(-1), costs[exit_idx])
    return out


def write_predictions(path, model, probs: np.ndarray, budgets=None, labels=None, texts=None) -> int:
    """One JSON line per input: ``{"index", ["text"], ["true_label"], "predictions": [{"budget", "label", "score",
    "exit_layer", "cost"}, ...]}`` to the file ``path`` (replaced) or an open text stream (e.g. ``sys.stdout``,
    written to as it is: a ``>>`` redirect appends). Returns the number of rows."""
    preds = budget_predictions(model, probs, budgets)
    id2label = model.config.id2label
    layers = list(model.config.exit_layers)
    with (open(path, "w") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)) as f:
        for i in range(len(probs)):
            row = {"index": i}
            if texts is not None:
                row["text"] = texts[i]
            if labels is not None:
                row["true_label"] = id2label[int(labels[i])]
            row["predictions"] = [
                {"budget": b, "label": id2label[int(p[1][i])], "score": float(p[2][i]),
                 "exit_layer": int(layers[int(p[0][i])]), "cost": float(p[3][i])} for b, p in preds.items()]
            f.write(json.dumps(row) + "\n")
    return len(probs)


def eval_metrics(results: dict, split: str = "test") -> dict:
    """Flat ``eval_*`` metrics (per exit and per budget) from :func:`~hf_eenet.reporting.compare_policies` output."""
    from .reporting import budget_key

    m = {f"accuracy_exit_{k + 1}": float(a) for k, a in enumerate(results["per_exit_accuracy"])}
    m["accuracy_full_model"] = float(results["full_model"]["accuracy"])
    for name, rows in results["methods"].items():
        key = name.split(" ")[0].lower()
        for r in rows:
            m[f"{key}_accuracy@{budget_key(r['budget'])}"] = float(r["accuracy"])
            m[f"{key}_cost@{budget_key(r['budget'])}"] = float(r["mean_cost"])
    m["split"] = split
    return m


def scheduler_kwargs(args: SchedulerFitArguments) -> dict:
    """``EENetScheduler`` keyword arguments set by the ``--scheduler_*`` flags."""
    return args.scheduler_kwargs()


def _dist_broadcast_costs(costs: list[float]) -> list[float]:
    """Rank 0's measured costs on every rank (measurements differ between processes)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return costs
    t = torch.tensor(costs, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------------------------------ the recipe
def run(model_args: ModelArguments, data_args: DataArguments, args: EENetArguments, training_args,
        command: str | None = None, model_path: str | None = None) -> dict:
    """Run the recipe; returns the results dict on rank 0 (``{}`` on other ranks and when nothing is evaluated).

    ``model_path``: where to load ``model_args.model_name_or_path`` from (e.g. an offline copy of a Hub model);
    the results record the name."""
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding, set_seed

    from .costs import profile_exit_costs, set_exit_costs
    from .model_card import write_results_card
    from .reporting import compare_policies, results_table
    from .trainer import EENetTrainer

    t_start = time.perf_counter()
    set_seed(training_args.seed)
    if not model_args.model_name_or_path:
        raise ValueError("give --model_name_or_path (a BERT/RoBERTa checkpoint or an hf_eenet model folder)")
    budgets = parse_budgets(args.budgets or DEFAULT_BUDGETS)
    do_train, do_eval, do_predict = training_args.do_train, training_args.do_eval, training_args.do_predict
    if not (do_train or do_eval or do_predict or args.do_fit_scheduler):
        raise ValueError("nothing to do: give --do_train, --do_eval and/or --do_predict")
    show = not args.quiet
    need = {}  # split -> what needs it (said when it is missing)
    if do_train:
        need["train"] = "--do_train"
    if args.do_fit_scheduler or do_eval:
        need["validation"] = " and ".join(
            (["--do_eval (every policy is calibrated on it)"] if do_eval else [])
            + (["--do_fit_scheduler (on by default: the scheduler bank is fitted on it; --do_fit_scheduler false "
                "keeps an hf_eenet model's own bank, e.g. to predict with it)"] if args.do_fit_scheduler else []))
    if do_predict:
        need["test"] = "--do_predict"
    # ---- model and data
    path = model_path or model_args.model_name_or_path
    pretrained_eenet = is_eenet_checkpoint(path)
    if pretrained_eenet:
        model, tok = load_eenet(path, model_args.tokenizer_name)
        if model_args.exit_layers and parse_exit_layers(model_args.exit_layers) != list(
                model.config.exit_layers):
            raise DataError(f"--exit_layers {model_args.exit_layers} differs from the exits of the hf_eenet model at "
                            f"{path} ({model.config.exit_layers}); its exit heads are trained for those layers. "
                            "Start from the backbone to train other exits, or drop --exit_layers")
        data = load_text_classification(data_args, seed=training_args.seed, label_names=model_label_names(model),
                                        need=need)
    else:
        data = read_data_for_checkpoint(path, data_args, training_args.seed, need, model_args.cache_dir,
                                        new_head=model_args.ignore_mismatched_sizes)
        exit_layers = parse_exit_layers(model_args.exit_layers) if model_args.exit_layers else None
        model, tok = load_backbone(path, len(data.label_names), exit_layers,
                                   data.label_names, exit_pooling=model_args.exit_pooling,
                                   tokenizer_name=model_args.tokenizer_name, cache_dir=model_args.cache_dir,
                                   ignore_mismatched_sizes=model_args.ignore_mismatched_sizes)
    # how a model this run does not train was trained (read now: the output folder may be the model's own)
    saved_targs = None if do_train else _saved_training_args(path, model_args.cache_dir)
    if pretrained_eenet and not do_train and (args.card_backbone is None or args.card_base_model is None):
        backbone, base = _saved_backbone(path, model, model_args.cache_dir)  # what the model was trained from
        args.card_backbone = args.card_backbone if args.card_backbone is not None else backbone
        args.card_base_model = args.card_base_model if args.card_base_model is not None else base
    bank_budgets = list(model.config.scheduler_budgets or []) if pretrained_eenet else []
    if bank_budgets and not (do_train or args.do_fit_scheduler) and (do_eval or do_predict):  # served as fitted
        # a bank the model would refuse to serve (e.g. fitted for other weights) is not evaluated either: refused
        model.verify_scheduler_bank()  # here, before any save or prediction pass (a bank fitted in this run is fresh)
        if args.budgets is None or getattr(args, "_budgets_from_config", False):  # not given: the bank's
            budgets = [float(b) for b in bank_budgets]
            if show:
                print(f"--do_fit_scheduler false: evaluating the model's scheduler bank at its budgets {budgets}")
        missing = [b for b in budgets if not any(math.isclose(b, f, rel_tol=1e-9) for f in bank_budgets)]
        if missing:
            raise DataError(f"--budgets {missing} are not in the model's scheduler bank {bank_budgets}: with "
                            "--do_fit_scheduler false the bank is evaluated as fitted; pass budgets from the bank, or "
                            "fit these (--do_fit_scheduler true)")
        budgets = [next(f for f in bank_budgets if math.isclose(b, f, rel_tol=1e-9)) for b in budgets]
    # budgets the exits cannot reach: found before training, not after it (fitted, or compared in the evaluation)
    if args.do_fit_scheduler or (do_eval and (do_train or not bank_budgets)):
        if not pretrained_eenet or not model.config.exit_costs or args.reprofile_costs:
            layers = list(model.config.exit_layers)  # costs profiled after training: known now for "layers" only
            known = [x / layers[-1] for x in layers] if args.cost_profile == "layers" else None
        else:  # a fitted model keeps its own costs
            known = list(model.config.exit_costs)
        if known is not None:
            budgets = _reachable_budgets(budgets, known, args, "")
    if args.do_fit_scheduler:
        classes = set(data.splits["validation"]["label"])
        if len(classes) < 2:
            raise DataError(f"the validation split ({len(data.splits['validation'])} rows) has a single class "
                            f"({data.label_names[classes.pop()]!r}); the scheduler is fitted on right and wrong "
                            "exits of several classes: give a --validation_file with several classes, or more "
                            "validation rows (--validation_split_rows)")
    requested = data_args.max_seq_length
    data_args.max_seq_length = _recipe_length(model, tok, requested)
    if not (do_train or args.do_fit_scheduler):  # neither trained nor fitted here: the results are what it serves
        from .configuration_eenet import max_input_tokens

        served = max_input_tokens(model.config, tok)  # what the pipeline truncates to (also with no recorded length)
        if requested is None:
            data_args.max_seq_length = served
        elif data_args.max_seq_length != served:
            raise DataError(f"--max_seq_length {requested}: a model neither trained (--do_train) nor fitted "
                            f"(--do_fit_scheduler false) in this run is evaluated as it serves ({served} tokens, its "
                            "config); drop the flag, or fit the bank at that length (--do_fit_scheduler true), which "
                            "then becomes the length it serves")
    enc = data.tokenize(tok, data_args.max_seq_length)
    if not do_train:  # a model trained here reads the kind of input its training data give (recorded below)
        check_pairing(model.config, data.is_pair)
    if do_train or args.do_fit_scheduler:  # served (pipeline, early_exit_predict, CLI) at the length trained / fitted
        model.config.max_seq_length = int(data_args.max_seq_length)
    if do_train:
        model.config.sentence_pairs = bool(data.is_pair)
    push = training_args.push_to_hub
    if args.quiet:
        training_args.disable_tqdm = True
    training_args.push_to_hub = False  # push once, at the end, after results and card exist (not per checkpoint)
    trainer = EENetTrainer(model=model, args=training_args, train_dataset=enc.get("train"),
                           eval_dataset=enc.get("validation"), processing_class=tok,
                           data_collator=DataCollatorWithPadding(tok), self_distillation=args.self_distillation)
    out_dir = Path(training_args.output_dir)

    def save_model():
        """Save the model; where its weights or bank changed, the outputs that describe the one before go now, not
        at the end of a run that may still fail (its evaluation and predictions write new ones)."""
        trainer.save_model(training_args.output_dir)
        if trainer.is_world_process_zero() and (do_train or args.do_fit_scheduler):
            _drop_stale_outputs(out_dir, evaluated=False, predicted=False)

    train_info = {}
    if do_train:
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_info = {"train_seconds": time.perf_counter() - t0, "train_loss": out.training_loss,
                      "global_steps": out.global_step, "train_rows": len(enc["train"])}
        trainer.log_metrics("train", out.metrics)
        trainer.save_metrics("train", out.metrics)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    # ---- exit costs (measured on rank 0, shared by all ranks); a re-fitted model keeps its own costs
    profile = None
    if not pretrained_eenet or not model.config.exit_costs or args.reprofile_costs:
        if model.config.scheduler_budgets:
            if not args.do_fit_scheduler:
                raise ValueError("--reprofile_costs changes what every budget of the model's scheduler bank means: "
                                 "keep --do_fit_scheduler so the bank is refitted for the new costs")
            model.clear_scheduler_bank()  # refitted below for the new costs
        prof_split = data.splits["validation" if "validation" in data.splits else "train"]
        prof_texts = list(prof_split["text"][:64])
        prof_pairs = list(prof_split["text_pair"][:64]) if data.is_pair else None
        with tqdm(total=1, desc="profile exit costs", disable=not show) as bar:
            try:  # texts of median length among 64 validation rows (both segments of a pair), truncated as served
                profile = profile_exit_costs(model, tok, texts=prof_texts, text_pairs=prof_pairs,
                                             batch_size=args.profile_batch_size, repeats=30,
                                             max_length=data_args.max_seq_length,
                                             measure_latency=args.cost_profile == "latency")
            except BaseException:
                if do_train:  # never lose what was trained: save it (no bank) before the error propagates
                    save_model()
                    logger.error("exit-cost profiling failed; the trained model was saved to %s without a scheduler "
                                 "bank", training_args.output_dir)
                raise
            bar.update()
        costs = _dist_broadcast_costs(set_exit_costs(model, profile, args.cost_profile))
        model.config.exit_costs = [float(c) for c in costs]
    costs = list(model.config.exit_costs)
    if args.do_fit_scheduler or (do_eval and (do_train or not bank_budgets)):  # measured costs are known only now
        try:  # (a bank evaluated as fitted has only reachable budgets)
            budgets = _reachable_budgets(budgets, costs, args, training_args.output_dir if do_train else None)
        except DataError:
            if do_train:
                save_model()
            raise
    # ---- scheduler bank, then predictions; every rank predicts (Trainer.predict gathers the rows of all ranks),
    # the fit is deterministic so the banks agree; each split is run once (the model no longer changes)
    with trainer.reuse_exit_predictions():
        fit_info = {}
        if args.do_fit_scheduler:
            if show:
                print(f"fitting the EENet scheduler bank for budgets {budgets} on {len(enc['validation'])} "
                      "validation rows")
            try:
                # the rows were tokenized at --max_seq_length: rows piled at a shorter length are whole texts
                fit_info = trainer.fit_scheduler(budgets=budgets, seed=training_args.seed,
                                                 tokenized_max_length=data_args.max_seq_length,
                                                 **scheduler_kwargs(args))
            except BaseException:
                if do_train:  # never lose what was trained: save it (no bank) before the error propagates
                    model.clear_scheduler_bank()
                    save_model()
                    logger.error("fitting the scheduler bank failed; the trained model was saved to %s without a "
                                 "scheduler bank", training_args.output_dir)
                raise
        # a model this run did not train: every save (also the push's) writes how it was trained, not this run's
        # unused settings; none when they were not recorded (a model saved without them), rather than wrong ones
        trainer.training_args_record = saved_targs
        with warnings.catch_warnings():  # a card of the old model is marked stale by the save (so it never ships
            if do_eval:  # beside these weights, also if this run fails later); with --do_eval this run replaces it
                warnings.filterwarnings("ignore", message=".*held results of another model")
            save_model()  # rank 0 writes: weights, config, bank, tokenizer, code
        # ---- predictions on all ranks (Trainer.predict gathers them); reporting on rank 0 only
        val_probs = val_labels = test_probs = test_labels = None
        test_labelled = data.labelled.get("test", False)
        if do_eval:
            val_probs, val_labels = trainer.collect_exit_predictions(enc["validation"])
        if "test" in enc and (do_predict or (do_eval and test_labelled)):
            test_probs, test_labels = trainer.collect_exit_predictions(enc["test"], require_labels=False)
    is_main = trainer.is_world_process_zero()
    results: dict = {}
    res_dir = Path(args.results_dir or out_dir)
    bank = dict(zip(model.config.scheduler_budgets or [], model.eenet_schedulers))
    if is_main and do_eval:
        eval_on = "test" if test_labelled and test_probs is not None else "validation"
        e_probs, e_labels = (test_probs, test_labels) if eval_on == "test" else (val_probs, val_labels)
        eval_budgets = [b for b in budgets if b in bank] if bank else budgets
        results = compare_policies(val_probs, val_labels, e_probs, e_labels, costs, eval_budgets,
                                   seed=training_args.seed, schedulers=bank or None, progress=show,
                                   scheduler_kwargs=scheduler_kwargs(args))  # budgets the bank lacks: fitted so
        results_layers = {}
        if profile is not None and args.cost_profile != "layers":  # the same with layer-count costs (refitted)
            layer_costs = profile.normalised("layers")
            results_layers = compare_policies(val_probs, val_labels, e_probs, e_labels, layer_costs,
                                              [b for b in eval_budgets if b >= layer_costs[0]],
                                              seed=training_args.seed, progress=show,
                                              scheduler_kwargs=scheduler_kwargs(args))
        metrics = {f"eval_{k}": v for k, v in eval_metrics(results, eval_on).items()}
        metrics["eval_samples"] = len(e_labels)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)  # eval_results.json + all_results.json
        res_dir.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        tensors = {"val_probs": torch.as_tensor(val_probs).contiguous(), "val_labels": torch.as_tensor(val_labels)}
        if eval_on == "test":
            tensors.update(test_probs=torch.as_tensor(test_probs).contiguous(),
                           test_labels=torch.as_tensor(test_labels))
        save_file(tensors, str(out_dir / "exit_predictions.safetensors"))
        written = getattr(data_args, "_config_paths", {})  # a config file's data files as it writes them (read
        # from $EENET_DATA_DIR or its repository: recorded as written, so the results do not depend on where it ran)
        recipe_args = {k: _no_machine_path(written[k][1] if k in written and v == written[k][0] else v) for k, v in
                       {**asdict(model_args), **asdict(data_args), **asdict(args)}.items()}
        recipe_args["budgets"] = ",".join(repr(float(b)) for b in budgets)  # used (flag, config or bank), exact
        label = args.dataset_label or _dataset_label(data_args)
        hub_dataset = data_args.dataset_name if data_args.dataset_name and not Path(data_args.dataset_name).exists() \
            else None
        results.update(
            dataset=label, evaluated_on=eval_on, world_size=training_args.world_size,
            splits={s: len(d) for s, d in data.splits.items()},
            label_names=data.label_names, sentence_pairs=data.is_pair,
            data_fingerprints={s: data.fingerprint(s) for s in data.splits},
            notes=" ".join(args.card_notes), cost_profile=args.cost_profile,
            exit_cost_profile=profile.to_dict() if profile else None, exit_layers=list(model.config.exit_layers),
            exit_pooling=model.config.exit_pooling, results_with_layer_costs=results_layers,
            scheduler_fit={str(k): v for k, v in fit_info.items()},
            training=train_info if do_train else {"trained_in_this_run": False, "loaded_eenet_model": pretrained_eenet},
            training_args=_card_training_args(training_args.to_dict() if do_train else saved_targs),
            recipe_args=recipe_args, model_card={
                # a Hub dataset (--dataset_name that is no local folder) is the card's dataset unless the card names
                # one (a local folder or files: none; the card's results then say local:<name>)
                "dataset_id": args.card_dataset_id or hub_dataset,
                "dataset_type": args.card_dataset_id or hub_dataset or f"local:{label}",  # (the model-index type)
                "dataset_config": args.card_dataset_config or (data_args.dataset_config_name if hub_dataset
                                                               and not args.card_dataset_id else None),
                "dataset_name": args.card_dataset_name, "backbone": args.card_backbone,
                "base_model": args.card_base_model, "notes": list(args.card_notes)},
            versions=_versions(), seeds={"training": training_args.seed, "scheduler": training_args.seed},
            bank_budgets=list(model.config.scheduler_budgets or []), default_budget=model.config.default_budget,
            model_sha256=state_digest(model),  # what the card describes (weights and bank): saves tell a stale card
            command=portable_command(command or " ".join([os.path.basename(sys.executable), *sys.argv])),
            wall_seconds=time.perf_counter() - t_start,
        )
        (res_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
        card = write_results_card(results, res_dir)
        if res_dir.resolve() != out_dir.resolve():  # the model folder carries the card, plot and results too
            card.save(str(out_dir / "README.md"))
            for name in ("results.json", "accuracy_vs_cost.png"):
                (out_dir / name).write_bytes((res_dir / name).read_bytes())
        if show:
            print(results_table(results))
    if is_main and not do_eval and (do_train or args.do_fit_scheduler):  # no new card: the old one is stale
        from .model_card import mark_card_stale

        if do_train:
            mark_card_stale(str(out_dir), model, "retrained", subject="model")
        else:
            mark_card_stale(str(out_dir), model, "refitted")
    if is_main and (do_train or args.do_fit_scheduler):  # outputs of the model or bank this run replaced
        _drop_stale_outputs(out_dir, evaluated=do_eval, predicted=do_predict)
    if is_main and do_predict:
        pred_budgets = list(bank) if bank else None
        n = write_predictions(out_dir / "predict_results.jsonl", model, test_probs, pred_budgets,
                              labels=test_labels if test_labelled else None, texts=data.texts("test"))
        logger.info("wrote %d predictions to %s", n, out_dir / "predict_results.jsonl")
    _barrier()
    if push:
        training_args.push_to_hub = True
        trainer.push_to_hub(commit_message="hf_eenet: model, scheduler bank, code and card")
    return results


def check_pairing(config, is_pair: bool) -> None:
    """DataError when the data are sentence pairs and the model was trained on single texts, or the other way round
    (``config.sentence_pairs``; ``None``: not recorded, nothing to check)."""
    from .configuration_eenet import pairing_mismatch

    trained_on = pairing_mismatch(config, is_pair)
    if trained_on is None:
        return
    if trained_on == "pairs":
        raise DataError("the model was trained on sentence pairs but the data give one text column: name both "
                        "columns in --text_column_names (e.g. premise,hypothesis)")
    raise DataError("the model was trained on single texts but the data give a sentence pair: name one text column "
                    "in --text_column_names (or join columns with --text_column_delimiter)")


#: ``TrainingArguments`` flags of transformers 4 that transformers 5 removed: (what to do instead, the option that
#: advice needs or ``None``). A ``run_classification.py`` command from 4.x would otherwise stop at "arguments are not
#: used" (or at a check of the arguments it left at their defaults).
REMOVED_TRAINING_FLAGS = {
    "overwrite_output_dir": ("an existing --output_dir is written over (start from a checkpoint with "
                             "--resume_from_checkpoint)", "output_dir"),
    "evaluation_strategy": ("pass --eval_strategy", "eval_strategy"),
    "warmup_ratio": ("pass the fraction to --warmup_steps (a float < 1 is a fraction of the steps)", "warmup_steps"),
    "no_cuda": ("pass --use_cpu", "use_cpu"),
    "use_mps_device": ("drop it: an MPS device is used when there is one (--use_cpu keeps to the CPU)", "use_cpu"),
    "logging_dir": ("set the TENSORBOARD_LOGGING_DIR environment variable", "report_to"),
    "per_gpu_train_batch_size": ("pass --per_device_train_batch_size", "per_device_train_batch_size"),
    "per_gpu_eval_batch_size": ("pass --per_device_eval_batch_size", "per_device_eval_batch_size"),
    "include_inputs_for_metrics": ("pass --include_for_metrics inputs", "include_for_metrics"),
    "push_to_hub_model_id": ("pass --hub_model_id", "hub_model_id"),
    "push_to_hub_token": ("pass --hub_token", "hub_token"),
    "save_safetensors": ("drop it: weights are always saved as safetensors", None),
    "group_by_length": ("pass --train_sampling_strategy group_by_length", "train_sampling_strategy"),
    "split_batches": ("pass it in --accelerator_config", "accelerator_config"),
    "dispatch_batches": ("pass it in --accelerator_config", "accelerator_config"),
}


#: ``run_classification.py`` options this recipe does not take: what it does instead (the command stops naming it,
#: rather than at argparse's bare "arguments are not used")
RUN_CLASSIFICATION_ONLY_FLAGS = {
    "pad_to_max_length": "inputs are padded per batch (DataCollatorWithPadding) and truncated at --max_seq_length",
    "overwrite_cache": "datasets re-tokenizes whenever the data or the tokenizer change (its fingerprints)",
    "preprocessing_num_workers": "tokenization runs in one process",
    "metric_name": "accuracy is reported per exit and per budget",
    "shuffle_seed": "the training rows are shuffled (and a validation hold-out carved) with --seed",
    "remove_columns": "only the columns named by --text_column_names and --label_column_name are read",
    "use_fast_tokenizer": "the backbone's fast tokenizer is used",
    "config_name": "the configuration is the one at --model_name_or_path, with exit heads added",
    "trust_remote_code": "the backbone is loaded into hf_eenet's own BERT / RoBERTa classes, never remote code",
    "do_regression": "hf_eenet classifies (single-label); a regression task is not supported",
}


def _removed_flag(name: str) -> str | None:
    """The removed flag ``name`` stands for: itself, its ``--no_`` negation (a bool flag of transformers 4) or, on the
    command line, an abbreviation argparse would have expanded that keeps at least one ``_`` after any leading
    ``no_`` (``--overwrite_output``; not ``--split``, ``--no`` or ``--no_c``, more likely other options mistyped)."""
    key = name.lstrip("-").split("=", 1)[0].replace("-", "_")
    if key in REMOVED_TRAINING_FLAGS:
        return key
    if key.startswith("no_") and key[3:] in REMOVED_TRAINING_FLAGS:
        return key[3:]
    if name.startswith("--") and "_" in key.strip("_").removeprefix("no_"):
        hits = [k for k in REMOVED_TRAINING_FLAGS if k.startswith(key)]
        return hits[0] if len(hits) == 1 else None
    return None


def _refuse_removed_flags(parser, names) -> None:
    """One line naming what replaced a transformers-4 ``TrainingArguments`` flag (or config key) in ``names`` that
    transformers 5 removed, where this parser does not take it. ``names`` are the arguments the parser left over (or a
    config file's keys): a value or a text that looks like a flag is never among them."""
    dests = {a.dest for a in parser._actions}
    for name in names:
        key = name.lstrip("-").split("=", 1)[0].replace("-", "_")
        if key.startswith("no_") and key[3:] in RUN_CLASSIFICATION_ONLY_FLAGS:  # a 4.x negated bool flag
            key = key[3:]
        if key in RUN_CLASSIFICATION_ONLY_FLAGS and key not in dests:
            shown = f"--{key}" if name.startswith("-") else key
            parser.error(f"{shown} is a run_classification.py option that this recipe does not take: "
                         f"{RUN_CLASSIFICATION_ONLY_FLAGS[key]}; drop it")
        flag = _removed_flag(name)
        if flag is None or flag in dests:
            continue
        hint, needs = REMOVED_TRAINING_FLAGS[flag]
        if needs is not None and needs not in dests:
            hint = f"{parser.prog} does not take it (nor --{needs}); drop it"
        shown = f"--{flag}" if name.startswith("-") else flag
        parser.error(f"{shown} was removed from TrainingArguments in transformers 5: {hint}")


def _parse_dataclasses(parser, argv: list[str]):
    """``parser.parse_args_into_dataclasses``; a leftover transformers-4 flag is named with its replacement first,
    before the dataclasses' ``__post_init__`` checks (which a 4.x command can fail on a setting the removed flag meant
    to make); argparse's own errors (a missing required argument, a value of the wrong type) still come first."""
    _, rest = parser.parse_known_args(argv)
    before = argv[:argv.index("--")] if "--" in argv else argv  # after "--": arguments, never flags
    _refuse_removed_flags(parser, [a for a in rest if a.startswith("--") and a in before])
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


def parse_args_with_config(parser, argv: list[str], ignore_unknown: bool = False):
    """``parser.parse_args_into_dataclasses`` where the first argument may be a JSON config file (a preset): its
    values become defaults, and the flags after it override them. Keys the parser does not know are an error, or
    skipped with ``ignore_unknown`` (a CLI command reading only the data options of a recipe config)."""
    argv = list(argv)
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"cannot read the config file {path}: {err}")
        if not ignore_unknown:
            _refuse_removed_flags(parser, sorted(k for k in cfg if not k.startswith("_")))
        dests = {a.dest for a in parser._actions}
        unknown = sorted(k for k in cfg if k not in dests and not k.startswith("_"))
        if unknown and not ignore_unknown:
            parser.error(f"{path}: unknown option(s) {', '.join(unknown)}")
        cfg = {k: v for k, v in cfg.items() if k in dests}  # "_comment" keys are documentation
        config_paths = {}  # key -> (the file read, the config's own text)
        for key in ("train_file", "validation_file", "test_file"):
            if isinstance(cfg.get(key), str) and _config_data_path(cfg[key], path) != cfg[key]:
                config_paths[key] = (_config_data_path(cfg[key], path), cfg[key])
                cfg[key] = config_paths[key][0]
        parser.set_defaults(**cfg)
        for action in parser._actions:
            if action.dest in cfg:
                action.required = False
        parsed = _parse_dataclasses(parser, argv)
        given = _given_dests(parser, argv)
        _forget_preset_dataset(cfg, parsed, path, given)
        for obj in parsed:  # budgets from the config file: a bank evaluated as fitted serves its own (run())
            if hasattr(obj, "budgets") and "budgets" in cfg and "budgets" not in given:
                obj._budgets_from_config = True
            if is_dataclass(obj):  # what the config file set and the command line did not (CLI predict TEXTS)
                obj._from_config = {f.name for f in fields(obj) if f.name in cfg and f.name not in given}
            if hasattr(obj, "train_file"):
                obj._config_paths = {k: v for k, v in config_paths.items() if k not in given}
        return parsed
    return _parse_dataclasses(parser, argv)


_SHARED_DATA_PREFIX = "../shared/data/"


def _config_data_path(value: str, config_path) -> str:
    """A data file a config file names, as the recipe reads it. The presets' ``../shared/data/...`` (relative to the
    repository root): under ``$EENET_DATA_DIR`` when that is set, else, when not there from the working directory,
    from the repository the config lives in (``recipes/presets/x.json``) when it is there. Any other path as written
    (relative to the working directory, as ``run_classification.py`` reads a JSON config)."""
    if not value.startswith(_SHARED_DATA_PREFIX):
        return value
    if os.environ.get("EENET_DATA_DIR"):
        return str(Path(os.environ["EENET_DATA_DIR"]) / value[len(_SHARED_DATA_PREFIX):])
    if os.path.exists(value):
        return value
    beside = Path(config_path).resolve().parent.parent.parent / value
    return str(beside) if beside.exists() else value


#: where a preset's data come from, and what it says about them (card, results folder)
_DATA_SOURCE_KEYS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file")
_DATASET_TEXT_KEYS = ("dataset_label", "card_dataset_id", "card_dataset_config", "card_dataset_name", "card_notes",
                      "results_dir")
#: how a preset reads *its* data (a preset may join two columns into one text, or hold out a number of training
#: rows): another dataset's columns are yours to join or pair, its hold-out the documented default
_DATA_LAYOUT_KEYS = ("text_column_delimiter", "validation_split_rows", "validation_split_percentage")


def _given_dests(parser, argv: list[str]) -> set[str]:
    """The options the command line itself sets (argparse's abbreviations resolved), not the config file or the
    defaults: ``argv`` parsed again with every default suppressed."""
    saved = [(a, a.default, a.required) for a in parser._actions]
    defaults, parser._defaults = parser._defaults, {}
    try:
        for a, _, _ in saved:
            a.default, a.required = argparse.SUPPRESS, False
        ns, _ = parser.parse_known_args(argv)
    finally:
        parser._defaults = defaults
        for a, default, required in saved:
            a.default, a.required = default, required
    return set(vars(ns))


def _forget_preset_dataset(cfg: dict, parsed, path, given: set[str]) -> None:
    """A preset run on other data (a data-source flag after the config file names another file or dataset): the
    preset's dataset name, card notes and results folder describe *its* data, so the ones the command line does not
    set are reset to their defaults (the card then names the data actually used; results go to output_dir, not the
    preset's committed card folder). Other *training* data (``--train_file``, ``--dataset_name``,
    ``--dataset_config_name``) needs ``--output_dir`` (else DataError: the preset's folder holds its own model) and
    resets the preset's other data sources (its validation / test files) and class names: without a validation
    file the recipe holds rows of your train file out, and the preset's ``do_predict`` stops when no test split is
    left. Another validation or test file alone keeps them (trained on the preset's
    data, evaluated on yours); the CLI commands do not read a config file's files of splits they do not use
    (``cli._read_needed_files_only``). A file given on the command line is the preset's when it is the very file the
    preset names, read from the working directory, from the repository the preset lives in, or from
    ``$EENET_DATA_DIR`` for the presets' ``../shared/data/`` paths."""
    config_root = Path(path).resolve().parent.parent.parent  # recipes/presets/x.json -> the repository

    def preset_files(value):  # (the config's files are read by _config_data_path, $EENET_DATA_DIR included)
        return {os.path.realpath(value), os.path.realpath(config_root / value),
                os.path.realpath(_config_data_path(str(value), path))}

    def same(key, value):
        preset = cfg.get(key)
        if preset is None or value is None:
            return preset == value
        if key in ("dataset_name", "dataset_config_name"):
            return str(preset) == str(value)
        files = preset_files(os.path.expanduser(str(preset)))
        value = os.path.expanduser(str(value))  # as given, or read as the config's own paths are (from elsewhere)
        return bool({os.path.realpath(value), os.path.realpath(_config_data_path(value, path))} & files)

    values = {k: getattr(obj, k) for obj in parsed for k in _DATA_SOURCE_KEYS if hasattr(obj, k)}
    changed = [k for k in _DATA_SOURCE_KEYS if k in given and not same(k, values.get(k))]
    # your own training data: the preset's other splits and its class names are its data too, and mixing them with
    # yours (SST-2 dev and test under your dataset's name) would fit the bank and report on data the card does not
    # name. Another validation / test file alone (train on the preset's data, evaluate on yours) keeps its splits.
    own_training_data = bool({"train_file", "dataset_name", "dataset_config_name"} & set(changed))
    if own_training_data and cfg.get("output_dir") and "output_dir" not in given:
        raise DataError(f"--{' / --'.join(changed)} replace the preset's data, but {path} would still save the "
                        f"model to its own output_dir {cfg['output_dir']!r} (over a model trained on the preset's "
                        "data): give --output_dir")
    keys = (_DATA_SOURCE_KEYS + ("class_names",) + _DATA_LAYOUT_KEYS if own_training_data else ()) \
        + _DATASET_TEXT_KEYS
    reset = [k for k in keys if cfg.get(k) and k not in given
             and not (k == "dataset_name" and not {"dataset_name", "train_file"} & set(changed))  # another config
             # the preset's join goes with its text columns: kept where they are (its own columns in your file)
             and not (k == "text_column_delimiter" and "text_column_names" not in given)]
    if not changed or not reset:
        return
    for obj in parsed:
        defaults = {f.name: f.default for f in fields(obj) if f.default is not MISSING} if is_dataclass(obj) else {}
        for k in reset:
            if hasattr(obj, k):
                setattr(obj, k, defaults.get(k, [] if isinstance(getattr(obj, k), list) else None))
    # the preset's --do_predict read its test file: without one nothing is predicted (not an error asking for it);
    # a dataset (--dataset_name) brings its own test split
    stopped = []
    if ("test_file" in reset and cfg.get("do_predict") and "do_predict" not in given
            and not values.get("dataset_name")):
        for obj in parsed:
            if getattr(obj, "do_predict", False):
                obj.do_predict = False
                stopped = ["--do_predict (no test file)"]
    logger.warning("%s: --%s replace the preset's data, so its %s are not used (set them with the same flags)",
                   path, " / --".join(changed), ", ".join(reset + stopped))


def build_parser(prog: str = "run_eenet.py"):
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, EENetArguments, TrainingArguments), prog=prog,
                              description="Fine-tune a multi-exit BERT/RoBERTa, fit the EENet scheduler bank, "
                                          "evaluate and predict under compute budgets. The first argument may be a "
                                          "JSON config file (e.g. recipes/presets/sst2.json); flags after it override "
                                          "it.")
    # no --max_seq_length: an hf_eenet model's own length (config.max_seq_length), else 128 (_recipe_length)
    parser.set_defaults(max_seq_length=None)
    return parser


def main(argv=None, prog: str = "python recipes/run_eenet.py", resolve_model=None) -> dict:
    """Parse flags (or a JSON config plus overriding flags) and :func:`run`.

    ``resolve_model``: optional ``name -> local path`` hook (the presets use it for offline copies of Hub models);
    results record the name, not the path."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    model_args, data_args, args, training_args = parse_args_with_config(parser, argv)
    name = model_args.model_name_or_path
    path = resolve_model(name) if (resolve_model is not None and name) else None
    if path and path != name and args.card_base_model is None and "/" in name and not os.path.isabs(name):
        args.card_base_model = name
    return run(model_args, data_args, args, training_args, command=f"{prog} " + " ".join(argv), model_path=path)


__all__ = ["ModelArguments", "EENetArguments", "DataArguments", "DataError", "run", "main", "build_parser",
           "parse_args_with_config", "load_backbone", "load_eenet", "checkpoint_pooling", "portable_path", "portable_command",
           "budget_predictions", "write_predictions", "eval_metrics", "parse_budgets"]
