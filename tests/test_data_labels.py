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


# ---------------------------------------------------------------------------------------- text columns
def _rows(keys, n=6):
    return [{**{k: f"{k} {i}" for k in keys}, "label": ["a", "b"][i % 2]} for i in range(n)]


def _jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_default_text_columns_read_pairs_and_refuse_what_they_cannot_tell(tmp_path):
    """The pipeline's own {"text", "text_pair"} form (and GLUE's pairs) is a pair without --text_column_names; a
    single-text column next to another pair's second column is refused, not read as single texts; so is a label
    column named as a text column, and a list / dict where a text should be (str() of it is no text)."""
    d = load(train=_jsonl(tmp_path / "tp.jsonl", _rows(["text", "text_pair"])))
    tr = d.splits["train"]
    assert [p.split()[1] for p in tr["text_pair"]] == [t.split()[1] for t in tr["text"]] and tr["text_pair"][0][:9] == "text_pair"
    d = load(train=_jsonl(tmp_path / "nli.jsonl", _rows(["premise", "hypothesis"])))
    assert d.splits["train"]["text_pair"][0].startswith("hypothesis ")
    d = load(train=_jsonl(tmp_path / "qnli.jsonl", _rows(["question", "sentence", "idx"])))  # GLUE QNLI
    assert d.splits["train"]["text"][0].startswith("question ") and d.splits["train"]["text_pair"][0].startswith("sent")
    for name, keys, match in (
            ("s2", ["sentence", "sentence2"], r"\(sentence, sentence2\).*--text_column_names \(sentence or sentence,sentence2\)"),
            ("t12", ["text", "sentence1", "sentence2"], r"\(text, sentence1, sentence2\).*sentence1,sentence2 or text"),
            ("ts", ["text", "sentence"], r"\(text, sentence\).*\(text or sentence or text,sentence\)"),
            ("tps", ["text", "text_pair", "sentence"], r"\(text, sentence, text_pair\).*text,text_pair or text or"),
            ("tq", ["text", "question"], r"\(text, question\).*\(text or text,question\)")):
        with pytest.raises(DataError, match=r"several columns that could be its text\(s\) " + match):
            load(train=_jsonl(tmp_path / f"{name}.jsonl", _rows(keys)))
    with pytest.raises(DataError, match=r"one column that is read only as part of a sentence pair \(question\).*"
                                        r"--text_column_names \(question\)"):
        load(train=_jsonl(tmp_path / "q.jsonl", _rows(["question"])))
    ok = load_text_classification(DataArguments(train_file=str(tmp_path / "s2.jsonl"), text_column_names="sentence"),
                                  seed=0)
    assert "text_pair" not in ok.splits["train"].column_names
    with pytest.raises(DataError, match="--label_column_name 'label' is also a text column"):
        load_text_classification(DataArguments(train_file=str(tmp_path / "s2.jsonl"),
                                               text_column_names="sentence,label"), seed=0)
    bad = [{"text": ["the", "movie"] if i == 3 else f"t {i}", "label": ["a", "b"][i % 2]} for i in range(6)]
    with pytest.raises(DataError, match=r"a list in text column 'text' \(row 3"):
        load(train=_jsonl(tmp_path / "lists.jsonl", bad))


@pytest.mark.parametrize("ext, body, texts", [
    ("csv", "text,label\n007,a\n1e3,b\nNA,a\nnull,b\n", ["007", "1e3", "NA", "null"]),
    ("tsv", 'text\tlabel\n007\ta\n"q\tb\nNA\ta\nnull\tb\n', ["007", '"q', "NA", "null"])])
def test_a_local_folder_of_csv_files_reads_as_the_same_files_given_one_by_one(tmp_path, ext, body, texts):
    """--dataset_name <folder> reads its csv (tsv) files as --train_file does: number-like and "NA" texts stay text
    (and a tsv is unquoted, GLUE-style)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.{ext}").write_text(body)
    by_files = load(train=str(folder / f"train.{ext}"), validation=str(folder / f"validation.{ext}"))
    by_folder = load_text_classification(DataArguments(dataset_name=str(folder)), seed=0)
    assert by_folder.splits["train"]["text"] == by_files.splits["train"]["text"] == texts


def test_a_test_file_without_the_label_column_but_with_other_columns_warns(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "verdict": ["a", "b"][i % 2]} for i in range(6)])
    test = _jsonl(tmp_path / "test.jsonl", [{"text": f"t {i}", "label": ["a", "b"][i % 2]} for i in range(4)])
    args = DataArguments(train_file=train, validation_file=train, test_file=test, label_column_name="verdict")
    with pytest.warns(UserWarning, match=r"test split has no label column 'verdict'.*\(label\) holding the class"):
        d = load_text_classification(args, seed=0)
    assert "label" not in d.splits["test"].column_names or set(d.splits["test"]["label"]) <= {-1}
    # a label column of ids into word names, or of integral floats of number names: warned too
    with pytest.warns(UserWarning, match=r"\(gold\) holding the class"):
        load_text_classification(DataArguments(train_file=train, validation_file=train, label_column_name="verdict",
                                               test_file=_jsonl(tmp_path / "ids.jsonl", [
                                                   {"text": f"t {i}", "gold": i % 2} for i in range(4)])), seed=0)
    nums = _jsonl(tmp_path / "nums.jsonl", [{"text": f"t {i}", "verdict": i % 2} for i in range(6)])
    with pytest.warns(UserWarning, match=r"\(gold\) holding the class"):
        load_text_classification(DataArguments(train_file=nums, validation_file=nums, label_column_name="verdict",
                                               test_file=_jsonl(tmp_path / "fl.jsonl", [
                                                   {"text": f"t {i}", "gold": float(i % 2)} for i in range(4)])), seed=0)
    # only texts, or an index column beside them (a GLUE / Kaggle test file, even with values 0, 1): no warning
    plain = _jsonl(tmp_path / "plain.jsonl", [{"idx": i % 2, "text": f"t {i}"} for i in range(2)])
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error", UserWarning)
        load_text_classification(DataArguments(train_file=train, validation_file=train, test_file=plain,
                                               label_column_name="verdict"), seed=0)


def test_texts_are_kept_as_given_and_blank_ones_refused(tmp_path):
    """Review 89: the loader stripped texts, the pipeline does not; a byte-level BPE reads the spaces as tokens, so
    training and the bank's fit saw other tokens than a served file's raw texts. Texts now load as given."""
    rows = [{"text": f" text {i} ", "text_pair": f"pair {i} ", "label": ["a", "b"][i % 2]} for i in range(6)]
    d = load(train=_jsonl(tmp_path / "sp.jsonl", rows), validation=_jsonl(tmp_path / "v.jsonl", rows))
    assert d.splits["validation"]["text"][0] == " text 0 " and d.splits["validation"]["text_pair"][0] == "pair 0 "
    rows[2]["text_pair"] = "  "
    with pytest.raises(DataError, match=r"empty text in column 'text_pair' \(row 2\)"):
        load(train=_jsonl(tmp_path / "blank.jsonl", rows))


def test_number_class_names_that_the_int_labels_spell_are_refused_not_shifted(tmp_path):
    """Review 89: --class_names 1,2,3,4,5 with star labels: as ids, 1..4 silently shifted by one class and 5 gave a
    self-contradictory error. Ids that the names spell otherwise are refused; ids that spell the same are fine."""
    def with_names(names, labels):
        return load_text_classification(DataArguments(train_file=write_jsonl(tmp_path / "s.jsonl", labels),
                                                      class_names=names), seed=0)

    with pytest.raises(DataError, match=r"int labels in column 'label' all spell --class_names \(1, 2, 3, 4, 5\).*"
                                        r"\(0 = class '1'\), and label 5 is no id \(5 classes\)"):
        with_names("1,2,3,4,5", [1, 2, 3, 4, 5] * 3)
    d = with_names("0,1,2", [0, 1, 2] * 4)  # ids and names agree
    assert sorted(set(names_of(d, "train"))) == ["0", "1", "2"]
    d = with_names("1,2,3", [0, 1, 2] * 4)  # 0 is no name: ids, as documented
    assert sorted(set(names_of(d, "train"))) == ["1", "2", "3"]
    d = with_names("1,2,3,4,5", [1, 2, 3] * 4)  # correct ids that a split without id 0 holds: ids, as documented
    assert sorted(set(names_of(d, "train"))) == ["2", "3", "4"]
