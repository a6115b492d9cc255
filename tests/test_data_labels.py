"""What a split's label column means (hf_eenet/data.py): names or ids decided per split, missing labels, integral
float labels, whitespace around label strings, columns mixing numbers and words. Loader only, tiny files, no model."""

import json
from pathlib import Path

import conftest
import pytest

from hf_eenet.data import DataArguments, DataError, load_text_classification


def write_csv(path, rows, header=("text", "label")):
    return conftest.write_csv(path, header, rows)


def write_jsonl(path, labels):
    # json.dumps writes float("nan") as NaN, as pandas' to_json of a float column with a missing value does
    Path(path).write_text("".join(json.dumps({"text": f"text {i}", "label": y}) + "\n" for i, y in enumerate(labels)))
    return str(path)


def load(label_names=None, **files):
    return load_text_classification(DataArguments(**{f"{s}_file": p for s, p in files.items()}), seed=0,
                                    label_names=label_names)


def names_of(d, split):
    return [d.label_names[i] for i in d.splits[split]["label"]]


# ---------------------------------------------------------------------------------------- 1. names or ids per split
def test_int_labels_are_all_names_or_all_ids_never_mixed_within_a_split(tmp_path):
    moods = ["neg", "mid", "pos"]  # a model trained on string labels: ints can only be ids
    mixed = write_jsonl(tmp_path / "mixed.jsonl", ["neg", "pos", "mid", "neg"])
    assert names_of(load(moods, validation=mixed), "validation") == ["neg", "pos", "mid", "neg"]
    as_ids = load(moods, validation=write_jsonl(tmp_path / "i.jsonl", [0, 1, 2, 0]))
    assert names_of(as_ids, "validation") == ["neg", "mid", "pos", "neg"]  # no value is a name, all valid ids: ids
    with pytest.raises(DataError, match=r"the test split has label 3, which is not among the model's labels "
                                        r"\(neg, mid, pos\) nor ids into them"):
        load(moods, test=write_jsonl(tmp_path / "b.jsonl", [0, 3, 1]))


def test_a_model_with_number_names_reads_ints_as_names_only(tmp_path):
    stars = ["1", "2", "3"]  # a model trained on int labels 1..3
    as_names = load(stars, validation=write_jsonl(tmp_path / "n.jsonl", [1, 2, 3, 3]))
    assert names_of(as_names, "validation") == ["1", "2", "3", "3"]  # every value is a name: names
    # [1, 2, 2, 0]: every value is also a valid id, and read as ids every label would shift ("2", "3", "3", "1")
    for labels in ([1, 2, 2, 0], [0, 1, 2, 0], [0, 1, 2, 3, 0, 3]):
        with pytest.raises(DataError, match=r"the validation split has label 0, which is not among the model's "
                                            r"labels \(1, 2, 3\) \(column 'label'\)") as err:
            load(stars, validation=write_jsonl(tmp_path / "x.jsonl", labels))
        assert "\n" not in str(err.value) and "nor ids" not in str(err.value)
        # all of them valid ids: the names may have come from --class_names, which says how to read them again
        assert str(err.value).endswith("pass --class_names 1,2,3 again") == (max(labels) < 3)
    with pytest.raises(DataError, match=r"the test split has labels 7, 9, which are not among the model's labels"):
        load(stars, test=write_jsonl(tmp_path / "b.jsonl", [1, 7, 9, 7]))
    floats = ["1.0", "2.0"]  # a model saved before labels were cleaned, trained on integral floats: 1 is "1.0"
    with pytest.raises(DataError, match=r"label 0, which is not among the model's labels \(1.0, 2.0\)"):
        load(floats, validation=write_jsonl(tmp_path / "g.jsonl", [0, 1]))  # and [0, 1] are no ids (read: "1.0", "2.0")


def test_labels_learnt_from_train_are_names_only(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [3, 1, 7, 3])
    with pytest.raises(DataError, match=r"validation split has label 0, which is not among the labels learnt"):
        load(train=train, validation=write_jsonl(tmp_path / "v.jsonl", [0, 1]))  # 0 is no id: names from train


# ---------------------------------------------------------------------------------------- 2. missing / float labels
def test_a_nan_label_in_train_or_validation_is_an_error_not_a_class(tmp_path):
    import pandas as pd

    good = write_jsonl(tmp_path / "good.jsonl", [0, 1] * 4)
    nan = write_jsonl(tmp_path / "nan.jsonl", [0, 1, float("nan"), 1, 0])
    with pytest.raises(DataError, match=r"the train split has a row with no label \(row 2\) in column 'label'"):
        load(train=nan, validation=good)
    with pytest.raises(DataError, match=r"the validation split has a row with no label"):
        load(train=good, validation=nan)
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0.0, None, 1.0, 1.0]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"the train split has a row with no label"):
        load(train=str(tmp_path / "p.parquet"), validation=good)
    empty_cell = write_csv(tmp_path / "e.csv", [("a", "good"), ("b", ""), ("c", "bad")])
    with pytest.raises(DataError, match=r"the validation split has a row with no label"):
        load(train=write_csv(tmp_path / "t.csv", [("x", "good"), ("y", "bad")]), validation=empty_cell)


def test_test_split_unlabelled_as_a_whole_but_not_in_part(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [0, 1] * 3)
    d = load(train=train, validation=train, test=write_jsonl(tmp_path / "none.jsonl", [float("nan")] * 3))
    assert d.labelled["test"] is False and "label" not in d.splits["test"].column_names
    with pytest.raises(DataError, match=r"the test split has 2 rows with no label \(first: row 1\)"):
        load(train=train, validation=train, test=write_jsonl(tmp_path / "part.jsonl", [1, None, 0, float("nan")]))


def test_integral_float_labels_are_named_like_ints(tmp_path):
    floats = write_jsonl(tmp_path / "f.jsonl", [0.0, 1.0, 1.0, 0.0])
    ints = write_jsonl(tmp_path / "i.jsonl", [1, 0])
    d = load(train=floats, validation=ints)
    assert d.label_names == ["0", "1"] and names_of(d, "validation") == ["1", "0"]
    d = load(["0", "1"], validation=floats)  # a model trained on an int column reads a float file
    assert names_of(d, "validation") == ["0", "1", "1", "0"]


# ---------------------------------------------------------------------------------------- 3. whitespace
def test_label_strings_are_stripped(tmp_path):
    train = write_csv(tmp_path / "t.csv", [("a", "good "), ("b", "good"), ("c", " bad"), ("d", "bad")])
    dev = write_csv(tmp_path / "v.csv", [("e", "bad  "), ("f", "\tgood")])
    d = load(train=train, validation=dev)
    assert d.label_names == ["bad", "good"]
    assert names_of(d, "train") == ["good", "good", "bad", "bad"] and names_of(d, "validation") == ["bad", "good"]
    assert names_of(load(["bad", "good"], test=dev), "test") == ["bad", "good"]


# ---------------------------------------------------------------------------------------- 4. numbers and words
def test_a_column_mixing_numbers_and_words_is_a_one_line_error(tmp_path):
    mixed = write_jsonl(tmp_path / "m.jsonl", ["neg", 1, "neg", 1])
    with pytest.raises(DataError, match=r"the train split's label column 'label' mixes numbers and words") as err:
        load(train=mixed)
    assert "\n" not in str(err.value)
    good = write_jsonl(tmp_path / "g.jsonl", ["neg", "pos"])
    with pytest.raises(DataError, match=r"the validation split's label column 'label' mixes numbers and words"):
        load(train=good, validation=mixed)


# ------------------------------------------------------------------------------- models saved before labels were cleaned
def test_models_with_float_or_spaced_label_names_read_their_own_data(tmp_path):
    """Names learnt before today's cleaning ("1.0" from a float column, " pos" from an unstripped csv) still match
    the files they came from, value for value (no shift to ids, no refusal)."""
    floats = write_jsonl(tmp_path / "f.jsonl", [1.0, 2.0, 1.0, 2.0])  # the top class 3.0 absent
    d = load(label_names=["1.0", "2.0", "3.0"], validation=floats)
    assert names_of(d, "validation") == ["1.0", "2.0", "1.0", "2.0"]
    ints = write_jsonl(tmp_path / "i.jsonl", [3, 2, 1])  # ints into such a model: the names they equal
    assert names_of(load(label_names=["1.0", "2.0", "3.0"], validation=ints), "validation") == ["3.0", "2.0", "1.0"]
    with pytest.raises(DataError, match=r"label 0, which is not among the model's labels \(1.0, 2.0, 3.0\) \("):
        load(label_names=["1.0", "2.0", "3.0"], validation=write_jsonl(tmp_path / "z.jsonl", [0, 2, 1]))  # not ids
    spaced = write_csv(tmp_path / "s.csv", [("good film", " pos"), ("bad film", " neg")])
    assert names_of(load(label_names=[" neg", " pos"], validation=spaced), "validation") == [" pos", " neg"]
    plain = write_csv(tmp_path / "p.csv", [("good film", "pos"), ("bad film", "neg")])
    assert names_of(load(label_names=[" neg", " pos"], validation=plain), "validation") == [" pos", " neg"]
