"""Generic text-classification data, as in transformers' ``run_classification.py``: any Hub dataset or local files
(csv, tsv, json, jsonl, parquet), one text column or two (sentence pairs), labels taken from the data.

    args = DataArguments(train_file="train.csv", validation_file="dev.csv", text_column_names="review",
                         label_column_name="stars")
    data = load_text_classification(args, seed=0)
    data.splits            # DatasetDict: "text" (+ "text_pair") and, where labelled, "label" (a ClassLabel of ids)
    data.label_names       # ["bad", "good", ...] -> config.id2label
    enc = data.tokenize(tokenizer)   # input_ids, attention_mask (, token_type_ids), labels

Rules:
- Texts: kept as given (a served text is tokenized as given; a byte-level BPE reads surrounding spaces); with
  ``--text_column_delimiter`` the columns are joined raw; a blank text is an error. Without ``--text_column_names``
  the columns are found by name (``DEFAULT_PAIR_COLUMNS``, ``DEFAULT_TEXT_COLUMNS``), refused when ambiguous.
- Labels: ``ClassLabel`` names when the train split has them; else ``--class_names`` when given (their order is the id
  order; integer labels are then ids into it); else the sorted distinct train values (strings or ints).
  Label strings are stripped and integral floats read as ints (0.0 is "0"). A labelled split is read as a whole:
  its values are all names, or (names from a model, none of them a number) all ids into them; a row without a
  label (None, NaN, blank) in a labelled split and a column mixing numbers and words are errors.
- No validation split: a seeded, stratified hold-out of the train split (``--validation_split_percentage`` or
  ``--validation_split_rows``).
- The test split may be unlabelled (no label column, or every value empty): predictions only.
- Clear errors (``DataError``, a ``ValueError``) for a missing column (the existing ones are listed), a
  validation/test label never seen in train, an empty split, an unreadable file and fewer than 2 classes.
No dataset names here: presets live in ``recipes/presets``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "validation", "test")
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A problem with the user's data (missing column, unseen label, empty split, unreadable file, ...)."""


@dataclass
class DataArguments:
    """Which data to train, fit the scheduler bank and evaluate on (flags of ``run_classification.py``)."""

    dataset_name: str | None = field(default=None, metadata={
        "help": "a dataset on the Hub (through the datasets library), e.g. glue"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration, e.g. mrpc"})
    train_file: str | None = field(default=None, metadata={"help": "training file: csv, tsv, json, jsonl or parquet"})
    validation_file: str | None = field(default=None, metadata={
        "help": "validation file (scheduler fitting, calibration); default: a stratified hold-out of train"})
    test_file: str | None = field(default=None, metadata={
        "help": "test file (reported results, predictions); may be unlabelled"})
    text_column_names: str | None = field(default=None, metadata={
        "help": "one text column, or two comma-separated columns for sentence pairs; default: a pair (text,text_pair, "
                "sentence1,sentence2, premise,hypothesis, question1,question2, question,sentence), else text or "
                "sentence; columns that allow several readings are refused"})
    text_column_delimiter: str | None = field(default=None, metadata={
        "help": "join the text columns with this string into one text instead of a sentence pair"})
    label_column_name: str = field(default="label", metadata={"help": "the label column"})
    class_names: str | None = field(default=None, metadata={
        "help": "comma-separated label names in id order; integer labels are then ids into this list"})
    train_split_name: str = field(default="train", metadata={"help": "Hub split used for training"})
    validation_split_name: str = field(default="validation", metadata={"help": "Hub split used for validation"})
    test_split_name: str = field(default="test", metadata={"help": "Hub split used for test"})
    validation_split_percentage: float = field(default=10.0, metadata={
        "help": "percent of train held out (seeded, stratified) when there is no validation split"})
    validation_split_rows: int | None = field(default=None, metadata={
        "help": "hold out this many train rows instead of a percentage"})
    max_seq_length: int = field(default=128, metadata={
        "help": "truncate inputs to this many tokens (recipe and CLI without the flag: an hf_eenet model's recorded "
                "length, else 128)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N validation rows"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "use only the first N test rows"})
    shuffle_train_dataset: bool = field(default=False, metadata={
        "help": "shuffle the training rows (seeded) before --max_train_samples"})
    data_cache_dir: str | None = field(default=None, metadata={"help": "cache folder of the datasets library"})

    def __post_init__(self):
        for name in ("text_column_names", "class_names"):  # a JSON config may give a list instead of "a,b"
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not all(isinstance(v, str) and "," not in v for v in value):
                    raise DataError(f"{name} must be a comma-separated string or a list of names without commas, "
                                    f"got {value!r}")
                setattr(self, name, ",".join(value))
        if self.class_names is not None:
            names = self.class_name_list()
            if not all(names) or len(set(names)) != len(names):
                raise DataError(f"--class_names {self.class_names!r}: every class needs a distinct, non-empty name "
                                "(comma-separated, in id order)")

    def class_name_list(self) -> list[str] | None:
        """``--class_names`` as a list (``None`` when not given)."""
        return None if self.class_names is None else [x.strip() for x in self.class_names.split(",")]

    def has_data(self) -> bool:
        return bool(self.dataset_name or self.train_file or self.validation_file or self.test_file)


# ------------------------------------------------------------------------------------------------ reading
def _read_files(args: DataArguments):
    from datasets import DatasetDict, load_dataset

    out = {}
    for split in SPLITS:
        path = getattr(args, f"{split}_file")
        if not path:
            continue
        p = Path(path)
        if not p.is_file():
            raise DataError(f"--{split}_file {path}: no such file")
        fmt = FILE_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise DataError(f"--{split}_file {path}: unsupported format {p.suffix!r}; use one of "
                            f"{', '.join(sorted(FILE_FORMATS))}")
        if fmt != "parquet" and not _has_text(p):  # a parser's own message for this names no cause
            raise DataError(f"the {split} split is empty ({path} is an empty file)")
        kw = {}
        if fmt == "csv":  # keep "null"/"NA" as text; GLUE-style tsv files are unquoted
            # text columns stay strings even when every cell looks like a number ("007" is not 7.0)
            kw = {"keep_default_na": False, "converters": {c: str for c in _candidate_text_columns(args)}}
            if p.suffix.lower() == ".tsv":
                kw.update(sep="\t", quoting=3)
        try:
            ds = load_dataset(fmt, data_files={split: str(p)}, cache_dir=args.data_cache_dir, **kw)[split]
        except Exception as err:  # datasets wraps parser errors in several exception types
            if "corresponds to no data" in str(err):
                raise DataError(f"the {split} split is empty ({path} has no rows)") from err
            raise DataError(f"--{split}_file {path}: cannot be read as {fmt} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from err
        out[split] = ds
    return DatasetDict(out)


def _has_text(path: Path) -> bool:
    """Whether a text file holds anything but whitespace (read in blocks: the first non-blank block decides)."""
    with path.open("rb") as f:
        while block := f.read(1 << 16):
            if block.strip():
                return True
    return False


def _read_hub(args: DataArguments):
    from datasets import DatasetDict, load_dataset

    kw = {}
    folder = Path(args.dataset_name)
    if folder.is_dir():  # a local folder of csv files: read as --train_file reads them ("007" and "NA" stay text)
        found = {Path(f).suffix.lower() for f in _folder_data_files(folder)}
        if found in ({".csv"}, {".tsv"}):
            kw = {"keep_default_na": False, "converters": {c: str for c in _candidate_text_columns(args)}}
            if found == {".tsv"}:
                kw.update(sep="\t", quoting=3)  # GLUE-style, unquoted, as a --train_file .tsv
    raw = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.data_cache_dir, **kw)
    names = {"train": args.train_split_name, "validation": args.validation_split_name, "test": args.test_split_name}
    return DatasetDict({s: raw[n] for s, n in names.items() if n in raw})


def _folder_data_files(folder: Path) -> list[str]:
    """The files ``datasets.load_dataset(folder)`` reads as splits (its own split patterns: hidden folders and side
    files such as a ``label_map.json`` are not among them); none when it cannot tell."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    readme = folder / "README.md"
    if readme.is_file() and "configs:" in readme.read_text(encoding="utf-8", errors="replace"):
        return []  # its dataset card names the data files (YAML configs): read as datasets reads them
    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception:  # noqa: BLE001 - no split files: datasets' own load says what is wrong
        return []
    return [str(f) for split_files in files.values() for f in split_files]


#: sentence-pair columns read as a pair without --text_column_names (the pipeline's own {"text", "text_pair"}
#: form first, then GLUE's), and the single-text columns
DEFAULT_PAIR_COLUMNS = (("text", "text_pair"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                        ("question1", "question2"), ("question", "sentence"))
DEFAULT_TEXT_COLUMNS = ("text", "sentence")


def _candidate_text_columns(args: DataArguments) -> list[str]:
    """The columns :func:`_text_columns` may read as text (read as strings from csv/tsv files)."""
    if args.text_column_names:
        return [c.strip() for c in args.text_column_names.split(",") if c.strip()]
    return list(dict.fromkeys([*DEFAULT_TEXT_COLUMNS, *(c for pair in DEFAULT_PAIR_COLUMNS for c in pair)]))


def _text_columns(args: DataArguments, columns: list[str], split: str) -> list[str]:
    if args.text_column_names:
        cols = [c.strip() for c in args.text_column_names.split(",") if c.strip()]
        if args.text_column_delimiter is None and len(cols) > 2:
            raise DataError(f"--text_column_names takes one column or two (a sentence pair), got {cols}; "
                            "give --text_column_delimiter to join more columns into one text")
    else:
        # every column a default could read as text: one reading must take them all, else say which is meant
        # ("text" beside "sentence1" + "sentence2", "sentence" beside "sentence2", "text" beside "sentence")
        pairs = [list(p) for p in DEFAULT_PAIR_COLUMNS if set(p) <= set(columns)]
        textual = [c for c in _candidate_text_columns(args) if c in columns]
        readings = [p for p in pairs if set(textual) <= set(p)] or (
            [[textual[0]]] if len(textual) == 1 and textual[0] in DEFAULT_TEXT_COLUMNS else [])
        if textual and not readings:
            options = [",".join(p) for p in pairs] + [c for c in textual if c in DEFAULT_TEXT_COLUMNS]
            if len(textual) == 2 and ",".join(textual) not in options:
                options.append(",".join(textual))
            if len(textual) == 1:
                options = textual
            what = (f"one column that is read only as part of a sentence pair ({textual[0]})" if len(textual) == 1
                    else f"several columns that could be its text(s) ({', '.join(textual)})")
            raise DataError(f"the {split} split has {what}: say which you mean with --text_column_names "
                            f"({' or '.join(options)})")
        cols = readings[0] if readings else None
        if cols is None:
            raise DataError(f"no text column found in the {split} split; give --text_column_names "
                            f"(columns: {', '.join(columns)})")
    missing = [c for c in cols if c not in columns]
    if missing:
        raise DataError(f"the {split} split has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(columns)})")
    if args.label_column_name in cols:
        raise DataError(f"--label_column_name {args.label_column_name!r} is also a text column "
                        f"({', '.join(cols)}): the model would read its labels; give other columns")
    return cols


_INDEX_COLUMNS = ("id", "idx", "index", "guid", "uid", "row")


def _holds_class_names(name: str, values, label_names, rows: int = 200) -> bool:
    """Whether a column looks like a label column by another name: its first ``rows`` values are all classes, as
    names (an integral float as its int) or as ids into word names. An index column (``id``, ``idx``, ...) is not."""
    if name.strip().lower() in _INDEX_COLUMNS:
        return False
    names = [str(n).strip() for n in label_names]
    words = not any(map(_is_number, names))

    def as_name(v):
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
        if words and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            return names[v]  # an id into word names
        return str(v).strip()

    head = [as_name(v) for v in list(values[:rows]) if v is not None]
    return bool(head) and all(v in names for v in head)


def _no_label(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _is_unlabelled(ds, label_col: str, label_names=None) -> bool:
    """No label column, or no value in it (None, NaN, empty strings, or -1 as in GLUE's hidden test labels, unless
    -1 is one of the classes, ``label_names``: polarity data labelled -1 / 1)."""
    if label_col not in ds.column_names:
        return True
    minus_one_missing = not label_names or "-1" not in {str(n).strip() for n in label_names}
    return all(_no_label(v) or (minus_one_missing and v == -1) for v in ds[label_col])


def _few(values, k: int = 3) -> str:
    values = sorted(set(values), key=str)
    return ", ".join(map(repr, values[:k])) + (f" (+{len(values) - k} more)" if len(values) > k else "")


def _label_values(values, split: str, col: str, feat) -> list:
    """The labels of a labelled split as values: ``ClassLabel`` ids as their names, strings stripped, integral floats
    as ints (a float column 0.0/1.0 means what an int column 0/1 does). A row without a label (None, NaN, blank, a
    ``ClassLabel`` -1) and a column mixing numbers and words are errors."""
    from datasets import ClassLabel

    out = []
    for i, v in enumerate(values):
        if isinstance(feat, ClassLabel):
            v = feat.names[v] if v is not None and v >= 0 else None
        elif isinstance(v, str):
            v = v.strip()
        elif isinstance(v, (list, tuple, dict)):
            raise DataError(f"the {split} split's label column {col!r} holds a {type(v).__name__} in row {i} "
                            f"({v!r}): multi-label data is not supported; hf_eenet trains single-label classifiers "
                            "(one label per row)")
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v)
    missing = [i for i, v in enumerate(out) if _no_label(v)]
    if missing:
        many = f"{len(missing)} rows with no label (first: row {missing[0]})" if len(missing) > 1 else \
            f"a row with no label (row {missing[0]})"
        raise DataError(f"the {split} split has {many} in column {col!r}; label every row or remove it "
                        "(only the test split may be unlabelled, as a whole)")
    words = [v for v in out if isinstance(v, str)]
    if words and len(words) < len(out):
        number = next(v for v in out if not isinstance(v, str))
        raise DataError(f"the {split} split's label column {col!r} mixes numbers and words (e.g. {number!r} and "
                        f"{words[0]!r}); use one kind")
    return out


def _label_ids(values: list, split: str, col: str, label_names: list[str], *, ids_are_ids: bool,
               ids_allowed: bool, where: str, raw: list | None = None) -> list[int]:
    """What a split's (cleaned) labels mean, decided for the whole split, never per value.

    ``ids_are_ids`` (``--class_names``): ints are ids into the names, strings are names. Else: if every value is a
    name (as a string, or a number equal to a name that is one), names; else, where ``ids_allowed`` (names from a
    model) and no name is a number, if every value is an int that is a valid id, ids; else a DataError naming a few
    of the values that do not fit. A model
    whose names are numbers (trained on int labels 1..5: names "1".."5") reads ints as names only: [1, 2, 0] could
    be two names and an id or three ids (every label shifted), so a value that is not a name is an error.

    A value is a name when its cleaned form, or its ``raw`` form as read (e.g. ``"1.0"`` of a float column), is one
    of ``label_names`` or of their stripped forms: models saved before labels were cleaned (names ``"1.0"`` or
    ``" pos"``) keep reading their own data."""
    n = len(label_names)
    name_to_id = {**{name.strip(): i for i, name in enumerate(label_names)},
                  **{name: i for i, name in enumerate(label_names)}}
    raw = values if raw is None else raw

    number_to_id = {}  # numbers as names: a value equal to one is that name (2 is "2.0" of a float-trained model)
    for i, name in enumerate(label_names):
        if _is_number(name):
            number_to_id.setdefault(float(name), i)

    def name_id(v, r):  # the id of the name this value spells (raw first: a model trained on floats has "1.0")
        for key in (str(r), str(r).strip(), str(v)):
            if key in name_to_id:
                return name_to_id[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and number_to_id:
            return number_to_id.get(float(v))
        return None

    named = [name_id(v, r) for v, r in zip(values, raw)]

    def is_id(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n

    if ids_are_ids and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        bad = [v for v in values if not is_id(v)]
        if bad and any(map(_is_number, label_names)) and all(i is not None for i in named):
            # --class_names 1,2,3,4,5 with star labels 1..5: read as ids, 5 is out of range (a split of 1..4 only
            # cannot be told from correct ids and reads as ids, as documented)
            raise DataError(f"the {split} split's int labels in column {col!r} all spell --class_names "
                            f"({', '.join(label_names)}), but with --class_names an int label is an id into them "
                            f"(0 = class {label_names[0]!r}), and label {bad[0]} is no id ({n} classes). If the "
                            "labels are the class names themselves, drop --class_names (classes are then read from "
                            "the data) or name them in words")
        if bad:
            raise DataError(f"the {split} split has label(s) {_few(bad)} in column {col!r}, not ids into "
                            f"--class_names ({', '.join(label_names)})")
        return list(values)
    not_names = [v for v, i in zip(values, named) if i is None]
    if not not_names:
        return named
    as_ids = ids_allowed and all(map(is_id, values))
    ids_allowed = ids_allowed and not any(map(_is_number, label_names))  # numbers as names: ints are names only
    if ids_allowed and as_ids:
        return list(values)
    # the values that are neither names nor ids (a split mixing names and ids never gets here: a column mixing
    # numbers and words is refused before, an int is a name only with number names, which allow no ids)
    neither = [v for v in not_names if not (ids_allowed and is_id(v))]
    many = len(set(neither)) > 1
    hint = ("; if they are ids into the names (a model trained with --class_names), pass --class_names "
            f"{','.join(label_names)} again" if as_ids and not ids_allowed else "")
    raise DataError(f"the {split} split has label{'s' if many else ''} {_few(neither)}, which "
                    f"{'are' if many else 'is'} not among {where} ({', '.join(label_names)})"
                    f"{' nor ids into them' if ids_allowed else ''} (column {col!r}){hint}")


def _is_number(name: str) -> bool:
    """A label name that spells a number ("3", "-1", "2.0"): the class of an int or float label column."""
    try:
        return math.isfinite(float(name))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ result
@dataclass
class TextClassificationData:
    """Loaded splits plus what the model config needs (``label_names`` → ``id2label``)."""

    splits: "object"  # datasets.DatasetDict
    label_names: list[str]
    is_pair: bool
    text_columns: list[str]
    labelled: dict[str, bool]
    #: where ``label_names`` come from: ``"model"`` (given by the caller), ``"class_names"`` (``--class_names``),
    #: ``"classlabel"`` (the train split's ``ClassLabel`` feature), ``"ints"`` (its distinct int labels, sorted) or
    #: ``"values"`` (its distinct other labels, sorted)
    label_names_from: str = "values"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_names)}

    def texts(self, split: str):
        """The model inputs of ``split`` as the pipeline takes them: strings, or ``{"text", "text_pair"}`` dicts."""
        ds = self.splits[split]
        if self.is_pair:
            return [{"text": a, "text_pair": b} for a, b in zip(ds["text"], ds["text_pair"])]
        return list(ds["text"])

    def tokenize(self, tokenizer, max_seq_length: int = 128, desc: str = "tokenize"):
        """``input_ids``/``attention_mask`` (``token_type_ids``) per split, plus ``labels`` where labelled."""

        def enc(batch):
            pair = (batch["text_pair"],) if self.is_pair else ()
            return tokenizer(batch["text"], *pair, truncation=True, max_length=max_seq_length)

        out = {}
        for split, ds in self.splits.items():
            cols = [c for c in ds.column_names if c != "label"]
            e = ds.map(enc, batched=True, remove_columns=cols, desc=f"{desc} {split}")
            out[split] = e.rename_column("label", "labels") if "label" in e.column_names else e
        from datasets import DatasetDict

        return DatasetDict(out)

    def fingerprint(self, split: str) -> str:
        """sha256 of the split's rows (texts and label names), to compare loaders."""
        h = hashlib.sha256()
        ds = self.splits[split]
        cols = ["text", "text_pair"] if self.is_pair else ["text"]
        labels = ds["label"] if "label" in ds.column_names else [None] * len(ds)
        for row in zip(*(ds[c] for c in cols), labels):
            *texts, y = row
            h.update(json.dumps([*texts, None if y is None else self.label_names[y]]).encode())
        return h.hexdigest()


def load_text_classification(args: DataArguments, seed: int = 0, label_names: list[str] | None = None,
                             need: tuple[str, ...] | dict[str, str] = (),
                             use_labels: bool = True, ids_into_names: bool = True) -> TextClassificationData:
    """Load, validate and normalise the splits of ``args`` (see the module docstring).

    Args:
        seed: seed of the stratified validation hold-out and of ``shuffle_train_dataset``.
        label_names: the label names (id order) of an already trained model: data labels are mapped onto them and a
            label the model does not know is an error. Default: derived from the train split.
        need: splits that must exist (e.g. ``("train", "validation")``), or a dict of them to what needs each (said
            in the error when one is missing, e.g. ``{"validation": "--do_fit_scheduler"}``).
        use_labels: ``False``: only the ``need`` splits are kept, read as unlabelled (a label column, if any, is not
            read or checked), for uses that need only the texts (re-matching a bank to traffic); needs ``label_names``.
        ids_into_names: with ``label_names``, int labels that are not names may be ids into them (a trained model's
            data); ``False``: names only.
    """
    from datasets import ClassLabel, DatasetDict, Features, Value

    if not args.has_data():
        raise DataError("no data: give --dataset_name (a Hub dataset) or --train_file/--validation_file/--test_file")
    if args.dataset_name and (args.train_file or args.validation_file or args.test_file):
        raise DataError("give either --dataset_name or data files, not both")
    raw = _read_hub(args) if args.dataset_name else _read_files(args)
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty")
    label_col = args.label_column_name
    if not use_labels:
        if label_names is None:
            raise ValueError("use_labels=False needs the model's label_names")
        raw = DatasetDict({split: ds for split, ds in raw.items() if split in need})
    # ---- label names
    train = raw.get("train")
    names_from_model = label_names is not None
    names_from = "model"
    if label_names is None:
        if train is None:
            raise DataError("label names come from the train split: give --train_file (or a model that has them)")
        if label_col not in train.column_names:
            raise DataError(f"the train split has no label column {label_col!r} (columns: "
                            f"{', '.join(train.column_names)}); set --label_column_name")
        feat = train.features[label_col]
        if isinstance(feat, ClassLabel):
            label_names, names_from = list(feat.names), "classlabel"
        elif args.class_names:
            label_names, names_from = args.class_name_list(), "class_names"
        else:  # the split's values are all strings or all numbers: sortable
            names_from = "values"
            values = ([] if _is_unlabelled(train, label_col)
                      else _label_values(train[label_col], "train", label_col, feat))
            fractional = next((i for i, v in enumerate(values) if isinstance(v, float) and math.isfinite(v)), None)
            if fractional is not None:  # 1.86, 0.85, ...: not one class per distinct value
                raise DataError(f"the train split's label column {label_col!r} holds non-integral numbers (row "
                                f"{fractional}: {values[fractional]!r}): that looks like a regression target, and "
                                "hf_eenet trains classifiers (one class per row). Map the values to classes first, "
                                "or, if these numbers are class names, list them with --class_names")
            label_names = [str(v) for v in sorted(set(values))]
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                names_from = "ints"
        if len(label_names) < 2:
            raise DataError(f"found {len(label_names)} class(es) ({label_names}) in the train split's "
                            f"{label_col!r} column; classification needs at least 2")
        if len(set(label_names)) != len(label_names):
            raise DataError(f"label names must be distinct, got {label_names}")
    where = ("the model's labels" if names_from_model else "--class_names" if args.class_names is not None
             else "the labels learnt from train")
    out, labelled, text_cols = {}, {}, None
    for split, ds in raw.items():
        cols = _text_columns(args, ds.column_names, split)
        text_cols = text_cols or cols
        if cols != text_cols:
            raise DataError(f"text columns differ between splits: {text_cols} vs {cols}")
        has_labels = use_labels and not _is_unlabelled(ds, label_col, label_names)
        if use_labels and split == "test" and label_col not in ds.column_names and label_names:
            others = [c for c in ds.column_names if c not in cols and _holds_class_names(c, ds[c], label_names)]
            if others:  # e.g. --label_column_name verdict, and this file calls its labels "label"
                warnings.warn(f"the {split} split has no label column {label_col!r} (--label_column_name) but "
                              f"column(s) ({', '.join(others)}) holding the class names: it is read as unlabelled "
                              "(no scores on it). "
                              "If one of them holds its labels, name the column alike in every split",
                              UserWarning, stacklevel=2)
        ids = None
        if has_labels:
            values = _label_values(ds[label_col], split, label_col, ds.features.get(label_col))
            ids = _label_ids(values, split, label_col, label_names, ids_are_ids=args.class_names is not None,
                             ids_allowed=names_from_model and ids_into_names, where=where,
                             raw=None if isinstance(ds.features.get(label_col), ClassLabel) else ds[label_col])
        if not has_labels and split != "test":
            raise DataError(f"the {split} split has no labels in column {label_col!r} (columns: "
                            f"{', '.join(ds.column_names)}); only the test split may be unlabelled")
        labelled[split] = has_labels
        delim = args.text_column_delimiter

        def norm(batch, rows, cols=cols, split=split, ids=ids, delim=delim):
            for c in cols:
                for i, t in enumerate(batch[c]):
                    if isinstance(t, (list, tuple, dict)):  # (str() would train on its Python text form)
                        raise DataError(f"the {split} split has a {type(t).__name__} in text column {c!r} (row "
                                        f"{rows[i]}: {t!r:.60}); text columns must hold strings")
            texts = [["" if t is None else str(t) for t in batch[c]] for c in cols]
            res = {}
            # texts as given, joined raw (as run_classification.py): the pipeline tokenizes what it is given, and a
            # byte-level BPE (RoBERTa) reads surrounding spaces as tokens, so stripping here would train and fit the
            # bank on other tokens than a served file's raw texts get (review 89)
            if delim is not None or len(cols) == 1:
                res["text"] = [(" " if delim is None else delim).join(parts) for parts in zip(*texts)]
            else:
                res["text"], res["text_pair"] = texts
            for key, values in res.items():
                for i, t in enumerate(values):
                    if not t.strip():
                        # the pair's own column, or the joined columns (all empty, or each empty after stripping)
                        where = [cols[0 if key == "text" else 1]] if len(res) == 2 else cols
                        raise DataError(f"the {split} split has an empty text in column{'s' if len(where) > 1 else ''}"
                                        f" {', '.join(map(repr, where))} (row {rows[i]}); remove empty rows")
            if ids is not None:
                res["label"] = [ids[i] for i in rows]
            return res

        keep = ["text", "text_pair"] if (delim is None and len(cols) == 2) else ["text"]
        # explicit output types: a removed input column of the same name (e.g. a numeric "text" column that is not
        # the text) must not impose its type on the new one
        types = Features({**{k: Value("string") for k in keep}, **({"label": Value("int64")} if has_labels else {})})
        new = ds.map(norm, batched=True, with_indices=True, remove_columns=ds.column_names, features=types,
                     desc=f"read {split}")
        new = new.select_columns(keep + (["label"] if has_labels else []))
        if has_labels:
            new = new.cast_column("label", ClassLabel(names=label_names))
        out[split] = new
    splits = DatasetDict(out)
    # ---- validation hold-out
    if "validation" not in splits and "train" in splits:
        n = len(splits["train"])
        rows = (args.validation_split_rows if args.validation_split_rows is not None
                else int(round(n * args.validation_split_percentage / 100)))
        if not 0 < rows < n:
            raise DataError(f"cannot hold out {rows} of {n} train rows for validation; give --validation_file")
        try:
            parts = splits["train"].train_test_split(test_size=rows, stratify_by_column="label", seed=seed)
        except ValueError:  # a class with a single row cannot be stratified
            parts = splits["train"].train_test_split(test_size=rows, seed=seed)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
        labelled["validation"] = True
    # ---- subsets (first N rows, like run_classification.py)
    if "train" in splits and args.shuffle_train_dataset:
        splits["train"] = splits["train"].shuffle(seed=seed)
    for split, n in (("train", args.max_train_samples), ("validation", args.max_eval_samples),
                     ("test", args.max_predict_samples)):
        if n is not None and split in splits:
            if n < 1:
                raise DataError(f"max samples for {split} must be >= 1, got {n}")
            splits[split] = splits[split].select(range(min(n, len(splits[split]))))
    missing = [s for s in need if s not in splits]
    if missing:
        why = "".join(f"; the {s} split is needed by {need[s]}" for s in missing if isinstance(need, dict) and need[s])
        raise DataError(f"this step needs the {', '.join(missing)} split(s); give "
                        + ", ".join(f"--{s}_file" for s in missing) + why)
    return TextClassificationData(splits=splits, label_names=list(label_names),
                                  is_pair=("text_pair" in next(iter(splits.values())).column_names),
                                  text_columns=list(text_cols or []), labelled=labelled, label_names_from=names_from)


__all__ = ["DataArguments", "DataError", "TextClassificationData", "load_text_classification", "FILE_FORMATS"]
