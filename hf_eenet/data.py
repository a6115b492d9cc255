"""SST-2 and AG News with the splits of docs/method.md §9, from local files (``--data_dir``) or the Hub.

Local layout (``../shared/data`` or ``$EENET_DATA_DIR``)::

    sst2/{train,validation,test}.tsv     sentence<TAB>label   (test = labelled SST-2 test, 1,821 rows)
    ag_news/{train,test}.csv             label,title,description

Splits: SST-2 train = GLUE train, validation = GLUE dev (scheduler fitting), test = labelled test (reported).
AG News train = train minus a seeded, stratified hold-out of ``ag_news_val_size`` rows (validation), test = test.
Every split has the columns ``text`` and ``label`` (a ``ClassLabel``).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

LABELS = {"sst2": ["negative", "positive"], "ag_news": ["World", "Sports", "Business", "Sci/Tech"]}
DATASETS = tuple(LABELS)


def default_data_dir() -> str | None:
    """``$EENET_DATA_DIR`` if set, else ``../shared/data`` next to the repository if it exists, else ``None``."""
    env = os.environ.get("EENET_DATA_DIR")
    if env:
        return env
    guess = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(guess) if guess.is_dir() else None


def _require(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file: {path} (expected by --data_dir {path.parent.parent})")
    return str(path)


def _finish(ds: Dataset, name: str) -> Dataset:
    ds = ds.cast_column("label", ClassLabel(names=LABELS[name]))
    return ds.select_columns(["text", "label"])


def load_sst2(data_dir: str | None) -> DatasetDict:
    if data_dir:
        root = Path(data_dir) / "sst2"
        files = {s: _require(root / f"{s}.tsv") for s in ("train", "validation", "test")}
        raw = load_dataset("csv", data_files=files, sep="\t", quoting=3, keep_default_na=False)
        raw = raw.map(lambda b: {"text": [s.strip() for s in b["sentence"]]}, batched=True)
    else:  # the Hub; GLUE hides the test labels, so the labelled SST-2 test comes from SetFit/sst2
        glue = load_dataset("glue", "sst2")
        test = load_dataset("SetFit/sst2", split="test")
        raw = DatasetDict(train=glue["train"], validation=glue["validation"], test=test)
        raw = raw.map(lambda b: {"text": [s.strip() for s in (b.get("sentence") or b["text"])]}, batched=True)
    return DatasetDict({s: _finish(raw[s], "sst2") for s in ("train", "validation", "test")})


def load_ag_news(data_dir: str | None, val_size: int = 2000, seed: int = 0) -> DatasetDict:
    if data_dir:
        root = Path(data_dir) / "ag_news"
        files = {s: _require(root / f"{s}.csv") for s in ("train", "test")}
        raw = load_dataset("csv", data_files=files, keep_default_na=False)
        raw = raw.map(lambda b: {"text": [f"{t} {d}" for t, d in zip(b["title"], b["description"])]}, batched=True)
    else:
        raw = load_dataset("ag_news")
    train = _finish(raw["train"], "ag_news")
    split = train.train_test_split(test_size=val_size, stratify_by_column="label", seed=seed)
    return DatasetDict(train=split["train"], validation=split["test"], test=_finish(raw["test"], "ag_news"))


def load_task(name: str, data_dir: str | None = None, seed: int = 0, ag_news_val_size: int = 2000) -> DatasetDict:
    """Load ``name`` (``"sst2"`` or ``"ag_news"``) with train/validation/test splits (see the module docstring)."""
    if name == "sst2":
        return load_sst2(data_dir)
    if name == "ag_news":
        return load_ag_news(data_dir, val_size=ag_news_val_size, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


__all__ = ["LABELS", "DATASETS", "default_data_dir", "load_task", "load_sst2", "load_ag_news"]
