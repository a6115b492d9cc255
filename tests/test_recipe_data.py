"""Bring-your-own-data: the generic loader (hf_eenet/data.py), the recipe's do_train/do_eval/do_predict through the
``hf-eenet`` CLI on a CSV with string labels and on a sentence-pair jsonl, the pushed folder, --help of every entry
point, CLI errors, DDP end to end, and the presets."""

import json
import re
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, ROOT, write_csv

import hf_eenet
from hf_eenet.data import DataArguments, DataError, load_text_classification

POS = "good great fine lovely superb wonderful funny gripping".split()
NEG = "bad awful dull boring stale thin poor weak".split()
FILL = "the a film plot story it was is and of movie this with".split()


def synth(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(FILL, size=int(rng.integers(3, 9)))) + [str(rng.choice(POS if y else NEG))]
        rng.shuffle(words)
        rows.append((" ".join(words), "good" if y else "bad"))
    return rows


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory, minilm_dir):
    """A plain (non-EENet) 4-layer BERT with random weights and the MiniLM tokenizer: what a user fine-tunes."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    return {"train": write_csv(d / "train.csv", ["review", "sentiment"], synth(96, 0)),
            "validation": write_csv(d / "dev.csv", ["review", "sentiment"], synth(64, 1)),
            "test": write_csv(d / "test.csv", ["review", "sentiment"], synth(40, 2)),
            "unlabelled": write_csv(d / "new.csv", ["review"], [(t,) for t, _ in synth(7, 3)]),
            "dir": d}


def common_flags(backbone, out):
    return ["--model_name_or_path", backbone, "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-3",
            "--budgets", "0.5,0.8", "--cost_profile", "layers", "--max_seq_length", "48", "--report_to", "none",
            "--use_cpu", "--save_strategy", "no", "--quiet", "--seed", "0", "--scheduler_max_epochs", "5",
            "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"]


class FakeHub:
    """Stands in for ``transformers.trainer.hf_api()``: records what would be pushed, no network."""

    def __init__(self):
        self.uploads, self.repos = [], []

    def __call__(self):
        return self

    def create_repo(self, repo_id, **kw):
        self.repos.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kw):
        files = {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in Path(folder_path).rglob("*")
                 if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "files": files, "ignore": kw.get("ignore_patterns")})


@pytest.fixture(scope="module")
def csv_run(tiny_backbone, csv_data, tmp_path_factory):
    """hf-eenet train on the CSV (custom columns, string labels): train, fit, eval, predict, push (mocked)."""
    import transformers.trainer

    from hf_eenet.cli import main

    out = tmp_path_factory.mktemp("csv_run") / "model"
    hub = FakeHub()
    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.trainer, "hf_api", hub)
    try:
        res = main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"],
                    "--test_file", csv_data["test"], "--text_column_names", "review",
                    "--label_column_name", "sentiment", "--do_train", "--do_eval", "--do_predict",
                    "--push_to_hub", "--hub_model_id", "someone/eenet-reviews", "--hub_token", "hf_NOT_A_REAL_TOKEN",
                    *common_flags(tiny_backbone, out)])
    finally:
        mp.undo()
    return {"out": out, "res": res, "hub": hub}


def test_csv_train_eval_predict_through_the_cli(csv_run, csv_data):
    out = csv_run["out"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "bad", "1": "good"} and cfg["scheduler_budgets"] == [0.5, 0.8]
    ev = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy_exit_1", "eval_accuracy_exit_4", "eval_eenet_accuracy@0.50", "eval_eenet_cost@0.80",
            "eval_static_accuracy@0.50"} <= set(ev)
    assert ev["eval_split"] == "test" and ev["eval_samples"] == 40
    allres = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in allres and "eval_eenet_accuracy@0.50" in allres
    rows = [json.loads(x) for x in (out / "predict_results.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and rows[0]["index"] == 0 and rows[0]["true_label"] in ("bad", "good")
    for r in rows:
        assert [p["budget"] for p in r["predictions"]] == [0.5, 0.8]
        for p in r["predictions"]:
            assert p["label"] in ("bad", "good") and 0.5 <= p["score"] <= 1 and p["exit_layer"] in (1, 2, 3, 4)
            assert p["cost"] == pytest.approx(p["exit_layer"] / 4)
    res = json.loads((out / "results.json").read_text())
    assert res["label_names"] == ["bad", "good"] and res["evaluated_on"] == "test" and not res["sentence_pairs"]
    assert res["splits"] == {"train": 96, "validation": 64, "test": 40}
    # the realised test cost of EENet's rows in the predictions file equals the evaluation's
    for i, b in enumerate((0.5, 0.8)):
        mean_cost = np.mean([r["predictions"][i]["cost"] for r in rows])
        assert mean_cost == pytest.approx(res["methods"]["EENet"][i]["mean_cost"])


def test_pushed_folder_has_weights_bank_code_and_the_eenet_card(csv_run, csv_data):
    hub = csv_run["hub"]
    assert len(hub.uploads) == 1 and hub.uploads[0]["repo_id"] == "someone/eenet-reviews"  # pushed once, at the end
    files = hub.uploads[0]["files"]
    assert {"model.safetensors", "config.json", "README.md", "modeling_eenet.py", "configuration_eenet.py",
            "pipeline_eenet.py", "tokenizer.json", "results.json", "accuracy_vs_cost.png",
            "eval_results.json", "predict_results.jsonl"} <= set(files)
    cfg = json.loads(files["config.json"])
    assert cfg["scheduler_budgets"] == [0.5, 0.8] and "AutoModelForSequenceClassification" in cfg["auto_map"]
    assert "text-classification" in cfg["custom_pipelines"]
    from safetensors import safe_open

    tmp = csv_run["out"].parent / "pushed.safetensors"
    tmp.write_bytes(files["model.safetensors"])
    with safe_open(str(tmp), "pt") as f:
        assert any(k.startswith("eenet_schedulers.1.") for k in f.keys())  # the bank travels with the weights
    card = files["README.md"].decode()
    from huggingface_hub import ModelCard

    index = ModelCard(card).data.eval_results
    assert len(index) == 4 and {r.metric_args["budget"] for r in index} == {0.5, 0.8}  # EENet card, not Trainer's
    assert "hf_eenet" in card and "bad" not in ModelCard(card).data.to_dict().get("datasets", [])
    # local data is no Hub dataset: the results' dataset type (read by the Hub as a dataset id) says so (review 96)
    assert {r.dataset_type for r in index} == {f"local:{Path(csv_data['train']).resolve().parent.name}"}
    assert run_card_example(csv_run["out"])[0]["label"] in ("bad", "good")  # the card's usage example runs
    # the token given on the command line is in no uploaded file (the card and results.json hold the command)
    assert [f for f, data in files.items() if b"hf_NOT_A_REAL_TOKEN" in data] == []
    assert "--hub_token <HUB_TOKEN>" in json.loads(files["results.json"])["command"]


def test_create_model_card_keeps_the_eenet_card(csv_run):
    """Trainer.create_model_card (called by push_to_hub) must not replace the card written from the results."""
    import hf_eenet
    from transformers import TrainingArguments

    out = csv_run["out"]
    before = (out / "README.md").read_text()
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out)
    trainer = hf_eenet.EENetTrainer(model=model, args=TrainingArguments(output_dir=str(out), report_to=[],
                                                                        use_cpu=True))
    trainer.create_model_card(model_name="x", tags=["t"])
    assert (out / "README.md").read_text() == before


def test_fit_scheduler_replaces_unless_extend_and_says_which(csv_run, csv_data, tmp_path, capsys):
    import shutil

    from hf_eenet.cli import main

    d = tmp_path / "m"
    shutil.copytree(csv_run["out"], d)
    data = ["--validation_file", csv_data["validation"], "--text_column_names", "review", "--label_column_name",
            "sentiment", "--max_seq_length", "48"]
    data += ["--scheduler_max_epochs", "5", "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"]
    kept = {n: (d / n).read_bytes() for n in ("exit_predictions.safetensors", "results.json") if (d / n).is_file()}
    assert (d / "predict_results.jsonl").is_file() and (d / "eval_results.json").is_file()
    main(["fit-scheduler", str(d), *data, "--budgets", "0.6"])
    assert "replaced the scheduler bank [0.5, 0.8] with [0.6]" in capsys.readouterr().out
    # the recipe's predictions and metrics of the replaced bank are gone; what the bank does not change stays
    assert not (d / "predict_results.jsonl").exists() and not (d / "eval_results.json").exists()
    assert not [k for k in json.loads((d / "all_results.json").read_text()) if k.startswith("eval_")]
    assert {n: (d / n).read_bytes() for n in kept} == kept
    assert json.loads((d / "config.json").read_text())["scheduler_budgets"] == [0.6]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit-scheduler", str(d), *data, "--budgets", "0.7", "--extend"])
    assert "extended the scheduler bank [0.6] -> [0.6, 0.7]" in capsys.readouterr().out
    # templated validation texts of one length: whole texts (tokenized at the served 48 tokens), no truncation alarm
    templated = write_csv(tmp_path / "templated.csv", ["review", "sentiment"],
                          [(f"the item number {i} is {'good' if i % 2 else 'bad'} today", "good" if i % 2 else "bad")
                           for i in range(40)])
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        main(["fit-scheduler", str(d), *[templated if a == csv_data["validation"] else a for a in data],
              "--budgets", "0.6"])
    assert not [w for w in caught + more if "truncated" in str(w.message)], [str(w.message) for w in more]
    assert json.loads((d / "config.json").read_text())["max_seq_length"] == 48
    main(["fit-scheduler", str(d), *data, "--budgets", "0.6"])
    main(["fit-scheduler", str(d), *data, "--budgets", "0.7", "--extend"])
    capsys.readouterr()
    assert json.loads((d / "config.json").read_text())["scheduler_budgets"] == [0.6, 0.7]
    # the recipe's card described the old bank: its model-index results are gone and a note says why
    from huggingface_hub import ModelCard

    assert ModelCard.load(csv_run["out"] / "README.md").data.eval_results
    card = ModelCard.load(d / "README.md")
    assert not card.data.eval_results and "hf_eenet" in card.data.tags
    assert card.text.startswith("> **Note:** the scheduler bank was extended") and "[0.6, 0.7]" in card.text
    assert card.text.count("> **Note:** the scheduler bank was") == 1  # refitted twice, one note
    # the folder still says how the model was trained (the CLI's evaluation-only arguments are not saved over it)
    assert (d / "training_args.json").read_text() == (csv_run["out"] / "training_args.json").read_text()


def test_evaluate_and_predict_a_file_through_the_cli(csv_run, csv_data, tmp_path, capsys):
    from hf_eenet.cli import main

    out = csv_run["out"]
    data = ["--text_column_names", "review", "--label_column_name", "sentiment", "--max_seq_length", "48"]
    res = main(["evaluate", str(out), "--validation_file", csv_data["validation"], "--test_file", csv_data["test"],
                *data, "--json", str(tmp_path / "ev.json")])
    assert json.loads((tmp_path / "ev.json").read_text())["budgets"] == [0.5, 0.8] == res["budgets"]
    saved = json.loads((out / "results.json").read_text())
    assert res["methods"]["EENet"] == saved["methods"]["EENet"]  # same model, same data: same numbers
    capsys.readouterr()
    # an unlabelled file: predictions only
    main(["predict", str(out), "--test_file", csv_data["unlabelled"], *data, "--budgets", "0.8",
          "--output_file", str(tmp_path / "p.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and "true_label" not in rows[0] and rows[0]["predictions"][0]["budget"] == 0.8


def test_a_single_class_validation_split_is_refused_before_training(tiny_backbone, csv_data, tmp_path):
    from hf_eenet.cli import main

    one = write_csv(tmp_path / "one.csv", ["review", "sentiment"], [(t, "good") for t, _ in synth(20, 4)])
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["train", "--train_file", csv_data["train"], "--validation_file", one, "--text_column_names", "review",
              "--label_column_name", "sentiment", "--do_train", "--do_eval", *common_flags(tiny_backbone, out)])
    assert not out.exists()  # refused before any training


def test_cli_refuses_pairs_for_a_single_text_model_and_reads_no_unknown_labels(csv_run, csv_data, tmp_path, capsys):
    from hf_eenet.cli import main

    out = csv_run["out"]
    assert json.loads((out / "config.json").read_text())["sentence_pairs"] is False
    pairs = write_csv(tmp_path / "pairs.csv", ["review", "other", "sentiment"],
                      [(t, t[::-1], y) for t, y in synth(30, 5)])
    with pytest.raises(SystemExit):
        main(["evaluate", str(out), "--validation_file", pairs, "--text_column_names", "review,other",
              "--label_column_name", "sentiment"])
    assert "trained on single texts but the data give a sentence pair" in capsys.readouterr().err
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out))
    with pytest.raises(ValueError, match="not sentence pairs"):
        clf({"text": "a good film", "text_pair": "it is"}, budget=0.5)
    assert clf(["a good film", "dull"], budget=0.5, batch_size=2)[0]["label"] in ("bad", "good")
    # predictions need no labels: a label the model does not know is left out with a note, not an error
    new = write_csv(tmp_path / "new.csv", ["review", "sentiment"], [(t, "neutral") for t, _ in synth(6, 6)])
    main(["predict", str(out), "--test_file", new, "--text_column_names", "review", "--label_column_name",
          "sentiment", "--output_file", str(tmp_path / "p.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and "true_label" not in rows[0]
    assert "labels not read" in capsys.readouterr().err
    # a validation hold-out of --train_file: the CLI says which rows these are
    d = tmp_path / "m"
    import shutil

    shutil.copytree(out, d)
    main(["fit-scheduler", str(d), "--train_file", csv_data["train"], "--text_column_names", "review",
          "--label_column_name", "sentiment", "--budgets", "0.6", "--scheduler_max_epochs", "5",
          "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"])
    assert "validation = a seeded hold-out of --train_file" in capsys.readouterr().err
    # training the single-text model further on pairs is a new training run, not a mismatch: it reads pairs now
    # (refused before the run started: "the model was trained on single texts but the data give a sentence pair")
    again = tmp_path / "on_pairs"
    main(["train", "--train_file", pairs, "--validation_file", pairs, "--text_column_names", "review,other",
          "--label_column_name", "sentiment", "--do_train", *common_flags(str(out), again)])
    assert json.loads((again / "config.json").read_text())["sentence_pairs"] is True


def test_model_serves_the_length_it_was_trained_and_fitted_at(csv_run, csv_data, tmp_path, capsys):
    """The recipe ran with --max_seq_length 48: the config records it, the pipeline truncates to it, and CLI commands
    without the flag read the data at it (the bank is never fitted on one length and served at another)."""
    from transformers import AutoTokenizer, pipeline

    from hf_eenet.cli import main
    from hf_eenet.configuration_eenet import max_input_tokens

    out = csv_run["out"]
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.max_seq_length == 48 and max_input_tokens(model.config, tok) == 48
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    long_text = " ".join(t for t, _ in synth(30, 9))
    assert len(tok(long_text)["input_ids"]) > 60
    served = clf(long_text, budget=0.5)
    assert served == clf(long_text, budget=0.5, truncation=True, max_length=48)
    assert served != clf(long_text, budget=0.5, truncation=True, max_length=60)
    # evaluate without --max_seq_length reads the data as served (48): the recipe's numbers
    data = ["--validation_file", csv_data["validation"], "--test_file", csv_data["test"], "--text_column_names",
            "review", "--label_column_name", "sentiment"]
    res = main(["evaluate", str(out), *data])
    assert res["methods"]["EENet"] == json.loads((out / "results.json").read_text())["methods"]["EENet"]
    # fit-scheduler with another explicit length: the bank is fitted at it, so the model now serves it
    d = tmp_path / "m"
    import shutil

    shutil.copytree(out, d)
    main(["fit-scheduler", str(d), "--validation_file", csv_data["validation"], "--text_column_names", "review",
          "--label_column_name", "sentiment", "--max_seq_length", "40", "--budgets", "0.6",
          "--scheduler_max_epochs", "5", "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"])
    assert json.loads((d / "config.json").read_text())["max_seq_length"] == 40
    with pytest.raises(SystemExit):  # a re-match always reads the traffic as served
        main(["rematch", str(d), "--test_file", csv_data["unlabelled"], "--text_column_names", "review",
              "--max_seq_length", "64"])
    assert "as the model serves it (40 tokens)" in capsys.readouterr().err


def test_evaluate_reports_what_the_model_serves_at_each_budget(csv_run, csv_data, capsys):
    """--budgets between bank entries: the EENet row is the scheduler the model serves (largest fitted <= B), never
    one fitted on the fly; outside the bank's range: refused."""
    from hf_eenet.cli import main

    out = csv_run["out"]
    data = ["--validation_file", csv_data["validation"], "--test_file", csv_data["test"], "--text_column_names",
            "review", "--label_column_name", "sentiment"]
    res = main(["evaluate", str(out), *data, "--budgets", "0.5,0.6"])
    assert res["eenet_served_by"] == {"0.5": 0.5, "0.6": 0.5}
    rows = {r["budget"]: r for r in res["methods"]["EENet"]}
    assert rows[0.6]["accuracy"] == rows[0.5]["accuracy"] and rows[0.6]["mean_cost"] == rows[0.5]["mean_cost"]
    assert "served by the bank's 0.5 scheduler" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(out), *data, "--budgets", "0.9"])
    assert "outside the fitted range" in capsys.readouterr().err


def test_predict_honours_budget_and_budgets_in_both_modes(csv_run, csv_data, tmp_path, capsys):
    from hf_eenet.cli import main

    out = csv_run["out"]
    main(["predict", str(out), "a good film", "dull", "--budgets", "0.5,0.8"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [(x["text"], x["budget"]) for x in lines] == [("a good film", 0.5), ("dull", 0.5), ("a good film", 0.8),
                                                         ("dull", 0.8)]
    data = ["--test_file", csv_data["unlabelled"], "--text_column_names", "review"]
    main(["predict", str(out), *data, "--budget", "0.8", "--output_file", str(tmp_path / "p.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all([p["budget"] for p in r["predictions"]] == [0.8] for r in rows)
    with pytest.raises(SystemExit):
        main(["predict", str(out), "dull", "--budget", "0.5", "--budgets", "0.8"])
    with pytest.raises(SystemExit):  # data flags do not apply to texts on the command line: not silently dropped
        main(["predict", str(out), "dull", "--text_column_names", "review"])
    assert "--text_column_names is for a test split" in capsys.readouterr().err
    # no --budget and no default budget in the config: the largest fitted budget is served, and said
    import shutil

    nodefault = tmp_path / "nodefault"
    shutil.copytree(out, nodefault)
    cfg_json = json.loads((nodefault / "config.json").read_text())
    (nodefault / "config.json").write_text(json.dumps({**cfg_json, "default_budget": None}))
    main(["predict", str(nodefault), "a good film", "dull"])
    plain = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    main(["predict", str(nodefault), "a good film", "dull", "--budget", "0.8"])
    at_08 = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert plain == at_08 and {x["budget"] for x in plain} == {0.8}
    # a config file (a preset) after the model: texts given replace its data files and text columns
    cfg = tmp_path / "preset.json"
    cfg.write_text(json.dumps({"test_file": csv_data["test"], "text_column_names": "review", "budgets": "0.25,0.5"}))
    main(["predict", str(out), str(cfg), "dull", "--budget", "0.8"])
    captured = capsys.readouterr()
    assert [(x["text"], x["budget"]) for x in map(json.loads, captured.out.strip().splitlines())] == [("dull", 0.8)]
    assert "config file's data options (test_file, text_column_names) are not used" in captured.err
    # the preset's budgets (what it fits; 0.25 is outside this bank) are not served: the bank's default is
    main(["predict", str(out), str(cfg), "dull"])
    captured = capsys.readouterr()
    assert [x["budget"] for x in map(json.loads, captured.out.strip().splitlines())] == [0.5]
    assert "the config file's budgets (0.25,0.5) are not used" in captured.err
    with pytest.raises(SystemExit):  # flags on the command line still count
        main(["predict", str(out), str(cfg), "dull", "--test_file", csv_data["test"]])
    assert "not both" in capsys.readouterr().err
    # your own file on the command line: the config file's other data files are not read (this one does not exist)
    cfg.write_text(json.dumps({"train_file": str(tmp_path / "absent.csv"), "test_file": csv_data["test"],
                               "text_column_names": "review"}))
    main(["predict", str(out), str(cfg), "--test_file", csv_data["unlabelled"], "--output_file",
          str(tmp_path / "mine.jsonl")])
    assert "not reading the config file's train_file (this command uses the test split)" in capsys.readouterr().err
    # a command-line file of one split keeps the config file's others: evaluate calibrates on the config's
    # validation file and reports on the test file given (not in-sample on validation)
    cfg.write_text(json.dumps({"validation_file": csv_data["validation"], "test_file": str(tmp_path / "absent.csv"),
                               "text_column_names": "review", "label_column_name": "sentiment"}))
    res = main(["evaluate", str(out), str(cfg), "--test_file", csv_data["test"]])
    assert res["evaluated_on"] == "test"
    # a config naming a dataset (never loaded here: the Hub is offline) beside a file on the command line
    cfg.write_text(json.dumps({"dataset_name": "someone/reviews", "dataset_config_name": "v2",
                               "text_column_names": "review"}))
    main(["predict", str(out), str(cfg), "--test_file", csv_data["unlabelled"], "--output_file",
          str(tmp_path / "hub.jsonl")])
    assert "not reading the config file's dataset_name" in capsys.readouterr().err
    assert len((tmp_path / "hub.jsonl").read_text().splitlines()) == 7
    cfg.write_text(json.dumps({"train_file": csv_data["train"], "text_column_names": "review"}))
    with pytest.raises(SystemExit):  # nothing this command uses: the loader names the split it needs
        main(["predict", str(out), str(cfg)])
    assert "this step needs the test split(s); give --test_file" in capsys.readouterr().err
    assert len((tmp_path / "mine.jsonl").read_text().splitlines()) == 7


def test_rematch_the_bank_on_an_unlabelled_file_through_the_cli(csv_run, csv_data, tmp_path, capsys):
    import shutil

    from hf_eenet.cli import main

    out = tmp_path / "model"
    shutil.copytree(csv_run["out"], out)
    traffic = write_csv(tmp_path / "traffic.csv", ["review"], [(t,) for t, _ in synth(50, 7)])
    info = main(["rematch", str(out), "--test_file", traffic, "--text_column_names", "review",
                 "--max_seq_length", "48"])
    assert sorted(info) == [0.5, 0.8] and all(r["rows"] == 50 for r in info.values())
    assert "re-matched the scheduler bank on 50 rows" in capsys.readouterr().out
    saved = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out)  # saved, and it verifies
    assert all(r["rematched_on"]["rows"] == 50 for r in saved.config.scheduler_bank)
    assert (out / "training_args.json").read_text() == (csv_run["out"] / "training_args.json").read_text()
    with pytest.raises(SystemExit):
        main(["rematch", str(out), "--validation_file", csv_data["validation"], "--text_column_names", "review"])
    assert "--test_file" in capsys.readouterr().err
    # traffic that carries a label column with labels the model does not know: labels are not needed, not read
    labelled = write_csv(tmp_path / "labelled.csv", ["review", "label"],
                         [(t, "brand-new-label") for t, _ in synth(40, 8)])
    info = main(["rematch", str(out), "--test_file", labelled, "--text_column_names", "review",
                 "--train_file", csv_data["train"]])
    assert all(r["rows"] == 40 for r in info.values())


def test_cli_value_errors_are_one_line_and_json_path_is_checked_first(csv_run, csv_data, monkeypatch, capsys):
    import hf_eenet.cli as cli

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before the --json path was checked")

    monkeypatch.setattr(cli, "_load_model", no_work)
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", str(csv_run["out"]), "--validation_file", csv_data["validation"],
                  "--json", "/nonexistent-dir/x/results.json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --json /nonexistent-dir/x/results.json" in err and "Traceback" not in err
    monkeypatch.undo()
    for argv, needle in (
        (["fit-scheduler", str(csv_run["out"]), "--validation_file", csv_data["validation"], "--budgets", "0.6,x"],
         "budgets must be comma-separated numbers"),
        (["evaluate", str(csv_run["out"]), "--validation_file", csv_data["validation"]],
         "no text column found in the validation split"),
        (["predict", str(csv_run["out"]) + "-missing", "hello"], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and "Traceback" not in err, err


def test_sentence_pairs_jsonl_end_to_end_and_pipeline_pairs(tiny_backbone, tmp_path):
    """Pairs: tokenised as pairs (token_type_ids), trained, bank fitted, predictions; the pipeline's
    {"text", "text_pair"} inputs with budget= give the same labels and exits as the offline predictions."""
    from transformers import pipeline

    from hf_eenet.cli import main

    rng = np.random.default_rng(0)
    labels = ["contradiction", "entailment", "neutral"]

    def pairs(n):
        out = []
        for _ in range(n):
            a, b = " ".join(rng.choice(FILL, 4)), " ".join(rng.choice(FILL, 3))
            y = labels[int(rng.integers(0, 3))]
            out.append({"premise": f"{a} {rng.choice(POS)}", "hypothesis": f"{b} {rng.choice(NEG)}", "gold": y})
        return out

    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", pairs(n)) for s, n in (("train", 64), ("dev", 48), ("test", 24))}
    out = tmp_path / "model"
    main(["train", "--train_file", files["train"], "--validation_file", files["dev"], "--test_file", files["test"],
          "--text_column_names", "premise,hypothesis", "--label_column_name", "gold", "--do_train", "--do_eval",
          "--ignore_mismatched_sizes",
          "--do_predict", *common_flags(tiny_backbone, out)])
    res = json.loads((out / "results.json").read_text())
    assert res["sentence_pairs"] and res["label_names"] == labels
    # the exit-cost profile timed a pair of median length (both segments), not the first premise alone
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    dev = [json.loads(x) for x in Path(files["dev"]).read_text().splitlines()]
    lengths = sorted(len(tok(r["premise"], r["hypothesis"])["input_ids"]) for r in dev)
    assert res["exit_cost_profile"]["info"]["seq_len"] == lengths[(len(lengths) - 1) // 2]
    rows = [json.loads(x) for x in (out / "predict_results.jsonl").read_text().splitlines()]
    assert rows[0]["text"].keys() == {"text", "text_pair"}
    clf = pipeline("text-classification", model=str(out))
    inputs = [r["text"] for r in rows]
    for i, b in enumerate((0.5, 0.8)):
        got = clf(inputs, budget=b, batch_size=5)
        single = [clf(x, budget=b) for x in inputs]  # batched == one at a time, exactly
        assert [(s["label"], s["exit_layer"]) for s in single] == [(g["label"], g["exit_layer"]) for g in got]
        # the predictions file applies the same bank to one all-exit pass (padded per batch, float64 softmax):
        # the same decisions up to float ties of this barely trained model's near-uniform outputs
        same = [(g["label"], g["exit_layer"]) == (r["predictions"][i]["label"], r["predictions"][i]["exit_layer"])
                for g, r in zip(got, rows)]
        print(b, sum(same), len(same))
        assert np.mean(same) >= 0.9
    # a pair model refuses single texts (one at a time and as a list), not classifying the premise alone
    for bad in ("a premise alone", ["a premise alone", "another"]):
        with pytest.raises(ValueError, match="trained on sentence pairs"):
            clf(bad, budget=0.5)
    assert run_card_example(out)[0]["exit_layer"] >= 1  # the card's usage example gives a pair


def run_card_example(folder):
    """Run the usage example of the card in ``folder`` (its python block, on the folder) and return its output."""
    card = (Path(folder) / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace('"<this folder or repo>"', repr(str(folder)))
    *setup, last = code.strip().splitlines()
    scope = {}
    exec("\n".join(setup), scope)  # noqa: S102 - the card's own example, run as a user would
    return eval(last.split("#")[0], scope)  # noqa: S307


# --------------------------------------------------------------------------------------------------- loader
def load(tmp_path, files: dict, **kw):
    args = DataArguments(**{f"{s}_file": p for s, p in files.items()}, **kw)
    return load_text_classification(args, seed=0)


def test_loader_labels_from_data_and_stratified_seeded_holdout(tmp_path):
    rows = [(f"text {i}", ["b", "a", "c"][i % 3]) for i in range(90)]
    train = write_csv(tmp_path / "t.csv", ["sentence", "label"], rows)
    d1 = load(tmp_path, {"train": train}, validation_split_percentage=20)
    assert d1.label_names == ["a", "b", "c"] and len(d1.splits["validation"]) == 18
    counts = np.bincount(d1.splits["validation"]["label"], minlength=3)
    assert counts.tolist() == [6, 6, 6]  # stratified
    d2 = load(tmp_path, {"train": train}, validation_split_percentage=20)
    assert list(d2.splits["validation"]["text"]) == list(d1.splits["validation"]["text"])  # seeded
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": f"x {i}", "label": [3, 1, 7][i % 3]} for i in range(30)])
    d3 = load(tmp_path, {"train": ints, "validation": ints})
    assert d3.label_names == ["1", "3", "7"]  # sorted distinct ints
    d4 = load(tmp_path, {"train": ints, "validation": ints}, class_names="a,b,c,d,e,f,g,h")
    assert d4.splits["train"].features["label"].names[3] == "d"  # ints are ids into --class_names


def test_text_columns_that_look_numeric_stay_text(tmp_path):
    """A csv text column whose cells are all numbers is read as the strings in the file ("007", not 7.0), under the
    default name and under --text_column_names; the label column keeps its own type."""
    rows = [("007", "0012", 1), ("3.10", "42", 0), ("42", "7", 1), ("0012", "1e3", 0)]
    f = write_csv(tmp_path / "n.csv", ["text", "other", "label"], rows)
    d = load(tmp_path, {"train": f, "validation": f})
    assert list(d.splits["train"]["text"]) == ["007", "3.10", "42", "0012"] and d.label_names == ["0", "1"]
    d = load(tmp_path, {"train": f, "validation": f}, text_column_names="other")
    assert list(d.splits["train"]["text"]) == ["0012", "42", "7", "1e3"]


@pytest.mark.parametrize("case, match", [
    ("missing_column", r"has no column 'body' \(columns: sentence, label\)"),
    ("unseen_label", "has label 'maybe', which is not among the labels learnt from train"),
    ("empty_split", "the validation split is empty"),
    ("empty_csv", r"the validation split is empty \(.*v\.csv is an empty file\)"),
    ("empty_jsonl", r"the test split is empty \(.*t\.jsonl is an empty file\)"),
    ("unreadable", "cannot be read as parquet"),
    ("one_class", "classification needs at least 2"),
    ("no_file", "no such file"),
    ("bad_format", "unsupported format '.xlsx'"),
])
def test_loader_errors_are_clear(tmp_path, case, match):
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [("good", "yes"), ("bad", "no")] * 3)
    files, kw = {"train": train}, {}
    if case == "missing_column":
        kw["text_column_names"] = "body"
    elif case == "unseen_label":
        files["validation"] = write_csv(tmp_path / "v.csv", ["sentence", "label"], [("fine", "maybe")])
    elif case == "empty_split":
        files["validation"] = write_csv(tmp_path / "v.csv", ["sentence", "label"], [])
    elif case == "empty_csv":
        (tmp_path / "v.csv").write_text("")
        files["validation"] = str(tmp_path / "v.csv")
    elif case == "empty_jsonl":
        (tmp_path / "t.jsonl").write_text("\n  \n")
        files["test"] = str(tmp_path / "t.jsonl")
    elif case == "unreadable":
        (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
        files["validation"] = str(tmp_path / "x.parquet")
    elif case == "one_class":
        files["train"] = write_csv(tmp_path / "one.csv", ["sentence", "label"], [("good", "yes")] * 4)
    elif case == "no_file":
        files["test"] = str(tmp_path / "nope.csv")
    elif case == "bad_format":
        (tmp_path / "a.xlsx").write_text("x")
        files["test"] = str(tmp_path / "a.xlsx")
    with pytest.raises(DataError, match=match):
        load(tmp_path, files, **kw)


def test_unlabelled_test_split_is_predictions_only_and_tsv_parquet_read(tmp_path):
    import pandas as pd

    pd.DataFrame({"q": ["a b", "c d", "e f", "g h"], "y": [0, 1, 0, 1]}).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "v.tsv").write_text('q\ty\n"quoted" text\t1\nnull\t0\n')
    (tmp_path / "test.tsv").write_text("q\nsomething\n")
    d = load(tmp_path, {"train": str(tmp_path / "t.parquet"), "validation": str(tmp_path / "v.tsv"),
                        "test": str(tmp_path / "test.tsv")}, text_column_names="q", label_column_name="y")
    assert d.labelled == {"train": True, "validation": True, "test": False}
    assert list(d.splits["validation"]["text"]) == ['"quoted" text', "null"]  # unquoted tsv, "null" stays text
    assert "label" not in d.splits["test"].column_names


# --------------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("cmd", [None, "train", "fit-scheduler", "evaluate", "predict", "rematch", "demo"])
def test_help_of_every_cli_command(cmd, capsys):
    from hf_eenet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(([cmd] if cmd else []) + ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: hf-eenet" in text
    if cmd in ("train", "fit-scheduler", "evaluate", "predict"):
        assert "--text_column_names" in text and "--train_file" in text  # the same data flags everywhere


def test_help_of_the_recipe_script():
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "run_eenet.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--validation_split_percentage" in res.stdout and "--do_predict" in res.stdout


# --------------------------------------------------------------------------------------------------- presets
def test_presets_parse_and_hold_no_dataset_text_in_the_library():
    from hf_eenet.recipe import build_parser, parse_args_with_config

    for name in ("sst2", "ag_news", "sst5"):
        margs, dargs, eargs, targs = parse_args_with_config(
            build_parser(), [str(ROOT / "recipes" / "presets" / f"{name}.json"), "--output_dir", "/tmp/x"])
        assert dargs.train_file.endswith("train.csv" if name != "sst2" else "train.tsv")
        assert targs.output_dir == "/tmp/x" and targs.do_train and targs.do_eval and eargs.dataset_label == name
    for name in ("data", "recipe", "cli", "model_card", "reporting", "trainer"):  # generic library code
        f = ROOT / "hf_eenet" / f"{name}.py"
        text = f.read_text().lower()
        assert "ag news" not in text and "10,429" not in text and "minilm" not in text, f.name


@pytest.mark.skipif(not (DATA_DIR / "sst5" / "validation.csv").exists(), reason="needs ../shared/data/sst5")
def test_sst5_preset_loads_five_named_classes():
    from recipes.presets import load_task

    ds = load_task("sst5", str(DATA_DIR))
    assert ds["train"].features["label"].names == ["very negative", "negative", "neutral", "positive",
                                                   "very positive"]
    assert {s: len(d) for s, d in ds.items()} == {"train": 8544, "validation": 1101, "test": 2210}


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (ROOT / "model_cards").glob("*/results.json")))
def test_committed_results_hold_no_machine_paths_and_resolved_pooling(name):
    """A fresh clone elsewhere regenerates the same cards: nothing is resolved from this machine's paths."""
    results = json.loads((ROOT / "model_cards" / name / "results.json").read_text())

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    assert not [s for s in strings(results) if s.startswith("/") or "/work/" in s or "site-packages" in s]
    assert results["exit_pooling"] in ("cls", "mean")


def test_portable_paths(tmp_path, monkeypatch):
    import site

    from hf_eenet.recipe import portable_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert portable_path(str(tmp_path / "data" / "a.csv")) == "data/a.csv"
    sp = site.getsitepackages()[0]
    assert portable_path(os.path.join(sp, "pkg", "model")) == "<site-packages>/pkg/model"
    assert portable_path("org/model") == "org/model"


# --------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_recipe_under_torchrun_two_processes(tiny_backbone, csv_data, tmp_path):
    """The whole recipe (train, collect predictions, fit the bank, save, results, card) under torchrun with gloo."""
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    import socket

    with socket.socket() as sock:  # a free port (a fixed one fails while another run, or its TIME_WAIT, holds it)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(ROOT / "recipes" / "run_eenet.py"), "--train_file", csv_data["train"],
           "--validation_file", csv_data["validation"], "--test_file", csv_data["test"],
           "--text_column_names", "review", "--label_column_name", "sentiment", "--do_train", "--do_eval",
           "--do_predict", "--ddp_backend", "gloo", "--disable_tqdm", "true", *common_flags(tiny_backbone, out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["splits"]["test"] == 40 and results["training"]["global_steps"] == 3
    assert json.loads((out / "config.json").read_text())["scheduler_budgets"] == [0.5, 0.8]
    assert len((out / "predict_results.jsonl").read_text().splitlines()) == 40  # all rows, gathered from 2 ranks
    assert json.loads((out / "eval_results.json").read_text())["eval_samples"] == 40
    assert "model-index" in (out / "README.md").read_text()


def test_hub_dataset_classlabel_names_and_pair_columns(monkeypatch):
    """--dataset_name goes through datasets.load_dataset (mocked: no network); ClassLabel names become the labels,
    sentence1/sentence2 are found as a pair, a missing validation split is held out of train."""
    import datasets
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feats = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                      "label": ClassLabel(names=["not_equivalent", "equivalent"])})
    rows = {"sentence1": [f"a {i}" for i in range(40)], "sentence2": [f"b {i}" for i in range(40)],
            "label": [i % 2 for i in range(40)]}
    calls = []

    def fake_load(name, config=None, **kw):
        calls.append((name, config))
        return DatasetDict(train=Dataset.from_dict(rows, features=feats),
                           test=Dataset.from_dict({**rows, "label": [-1] * 40}, features=feats))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = load_text_classification(DataArguments(dataset_name="glue", dataset_config_name="mrpc",
                                               validation_split_rows=10), seed=0)
    assert calls == [("glue", "mrpc")] and d.is_pair and d.label_names == ["not_equivalent", "equivalent"]
    assert len(d.splits["validation"]) == 10 and len(d.splits["train"]) == 30
    assert d.labelled["test"] is False  # GLUE-style hidden test labels (-1): predictions only


def test_cli_hold_out_seed_defaults_to_the_seed_the_model_was_trained_with(tmp_path):
    """Without --validation_file the CLI holds out validation rows from train: with the recipe's seed (read from the
    model's training_args.json) they are the rows the recipe held out, not rows it trained on."""
    from types import SimpleNamespace

    from hf_eenet.cli import _seed

    (tmp_path / "training_args.json").write_text(json.dumps({"seed": 42, "learning_rate": 1e-4}))
    assert _seed(SimpleNamespace(seed=None), str(tmp_path)) == 42
    assert _seed(SimpleNamespace(seed=7), str(tmp_path)) == 7  # an explicit --seed wins
    assert _seed(SimpleNamespace(seed=None), str(tmp_path / "none")) == 0  # no record: 0


def test_int_labels_are_ids_into_the_model_labels_when_they_are_not_names(tmp_path):
    """A model trained with --class_names on int labels: evaluating an int-labelled file later (names from the
    model, no --class_names) reads the ints as ids; a model whose names are the ints themselves keeps names first."""
    rows = [(f"text {i}", i % 3) for i in range(30)]
    f = write_csv(tmp_path / "i.csv", ["text", "label"], rows)
    d = load_text_classification(DataArguments(validation_file=f), seed=0, label_names=["agree", "disagree", "unsure"])
    assert d.splits["validation"]["label"][:3] == [0, 1, 2]
    d = load_text_classification(DataArguments(validation_file=f), seed=0, label_names=["2", "0", "1"])
    assert d.splits["validation"]["label"][:3] == [1, 2, 0]  # "0" is a name: name first
    bad = write_csv(tmp_path / "b.csv", ["text", "label"], [("x", 5), ("y", 0)])
    with pytest.raises(DataError, match="label 5, which is not among the model's labels"):
        load_text_classification(DataArguments(validation_file=bad), seed=0, label_names=["a", "b", "c"])


def test_console_script_exits_0_on_success(monkeypatch, capsys):
    """``hf-eenet`` is ``console_main``: a command that returns a results dict still exits with code 0."""
    import hf_eenet.cli as cli

    monkeypatch.setattr(cli, "main", lambda argv=None: {"some": "results"})
    assert cli.console_main() == 0
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hf-eenet"] == "hf_eenet.cli:console_main"


@pytest.mark.parametrize("phase", ["cost profile", "scheduler fit"])
def test_a_phase_failing_after_training_keeps_the_trained_model(tiny_backbone, csv_data, tmp_path, monkeypatch,
                                                                phase):
    import hf_eenet.costs
    from hf_eenet.cli import main

    def boom(*a, **k):
        raise RuntimeError(f"{phase} failed (simulated)")

    if phase == "cost profile":
        monkeypatch.setattr(hf_eenet.costs, "profile_exit_costs", boom)
    else:
        monkeypatch.setattr(hf_eenet.EENetTrainer, "fit_scheduler", boom)
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="simulated"):
        main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"],
              "--text_column_names", "review", "--label_column_name", "sentiment", "--do_train", "--do_eval",
              *common_flags(tiny_backbone, out)])
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out)  # trained weights, no bank
    assert model.config.scheduler_budgets == [] and model.config.id2label == {0: "bad", 1: "good"}
    assert model.config.max_seq_length == 48


def test_regression_and_multi_label_targets_are_refused_in_one_line(tmp_path):
    """Float labels (STS-B style) are a regression target, not one class per distinct value; list labels are
    multi-label: both refused naming the column and a row, before anything is trained."""
    floats = write_csv(tmp_path / "reg.csv", ["sentence", "label"], [("good", 1.86), ("bad", 0.85), ("ok", 2.0)] * 3)
    with pytest.raises(DataError, match=r"non-integral numbers \(row 0: 1.86\).*regression target"):
        load(tmp_path, {"train": floats})
    # numbers that are class names (half stars) read as before when the names are given
    halves = write_csv(tmp_path / "half.csv", ["sentence", "label"], [("good", 0.5), ("bad", 1.5), ("ok", 2.5)] * 3)
    d = load(tmp_path, {"train": halves}, class_names="0.5,1.5,2.5")
    assert d.label_names == ["0.5", "1.5", "2.5"]
    assert dict(zip(d.splits["train"]["text"], d.splits["train"]["label"])) == {"good": 0, "bad": 1, "ok": 2}
    write_jsonl(tmp_path / "ml.jsonl", [{"sentence": "good", "label": ["a", "b"]}, {"sentence": "bad", "label": ["a"]}])
    with pytest.raises(DataError, match=r"holds a list in row 0 .*multi-label data is not supported"):
        load(tmp_path, {"train": str(tmp_path / "ml.jsonl")})


def test_recipe_checks_budgets_and_exit_layers_before_training(tmp_path, capsys):
    from hf_eenet.recipe import main, parse_budgets, parse_exit_layers

    for bad, match in (("1.5", r"in \(0, 1\]"), ("0", r"in \(0, 1\]"), ("nan", r"in \(0, 1\]"),
                       ("0.5,0.5", "twice"), ("abc", "comma-separated numbers")):
        with pytest.raises(DataError, match=match):
            parse_budgets(bad)
    assert parse_budgets("0.3, 0.5,1") == [0.3, 0.5, 1.0]
    with pytest.raises(DataError, match="comma-separated layer numbers"):
        parse_exit_layers("2,a")
    # the recipe refuses before it loads a model or reads data (no such model, no such file: never reached)
    with pytest.raises(DataError, match=r"in \(0, 1\]"):
        main(["--model_name_or_path", str(tmp_path / "no-model"), "--train_file", str(tmp_path / "no.csv"),
              "--output_dir", str(tmp_path / "out"), "--do_train", "--budgets", "1.5"])
    assert not (tmp_path / "out").exists()
    # the script prints one line, no traceback
    r = subprocess.run([sys.executable, str(ROOT / "recipes" / "run_eenet.py"), "--model_name_or_path", "x",
                        "--train_file", "y.csv", "--output_dir", str(tmp_path / "o"), "--do_train",
                        "--budgets", "0.5,0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("run_eenet.py: error: --budgets lists a budget twice")


def test_recipe_length_defaults_to_the_model_and_is_capped_at_its_positions(csv_run, caplog):
    from transformers import AutoTokenizer

    from hf_eenet.recipe import _recipe_length

    out = csv_run["out"]
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert _recipe_length(model, tok, None) == 48  # the length it was trained and fitted at
    assert _recipe_length(model, tok, 32) == 32  # an explicit flag wins
    with caplog.at_level("WARNING"):
        assert _recipe_length(model, tok, 1000) == 64  # the position table (max_position_embeddings 64)
    assert "larger than the model takes (64 positions)" in caplog.text
    model.config.max_seq_length = None  # a model that records no length: 128, capped at its 64 positions
    assert _recipe_length(model, tok, None) == 64


def test_recipe_retraining_without_eval_marks_the_old_card_stale(csv_run, tiny_backbone, csv_data, tmp_path):
    import shutil

    from hf_eenet.recipe import main

    d = tmp_path / "model"
    shutil.copytree(csv_run["out"], d)
    assert "model-index" in (d / "README.md").read_text()
    flags = common_flags(tiny_backbone, d)
    flags[flags.index("--budgets") + 1] = "0.6"
    main(["--train_file", csv_data["train"], "--validation_file", csv_data["validation"], "--text_column_names",
          "review", "--label_column_name", "sentiment", "--do_train", "--do_eval", "false", *flags])
    card = (d / "README.md").read_text()
    assert "model-index" not in card
    assert "> **Note:** the model was retrained after this card was written; it now serves budgets [0.6]" in card


def test_predictions_go_to_an_open_stream_without_truncating_it(csv_run, csv_data, tmp_path):
    """`hf-eenet predict ... >> file` appends: the CLI writes to sys.stdout itself (opening /dev/stdout with "w"
    truncated the redirect target)."""
    out = tmp_path / "app.txt"
    out.write_text("EXISTING LINE\n")
    r = subprocess.run([sys.executable, "-m", "hf_eenet", "predict", str(csv_run["out"]), "--test_file",
                        csv_data["unlabelled"], "--text_column_names", "review", "--budget", "0.5"],
                       stdout=open(out, "a"), stderr=subprocess.PIPE, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "EXISTING LINE" and len(lines) == 1 + 7
    assert json.loads(lines[1])["predictions"][0]["budget"] == 0.5


def test_card_base_model_is_never_a_recorded_machine_path():
    from hf_eenet.model_card import _looks_like_hub_id

    assert not _looks_like_hub_id("<path>/tinybert")
    assert _looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2")


def test_an_empty_text_is_named_by_its_row_in_the_split(tmp_path):
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(1200)]
    rows[1100] = ("   ", "a")
    train = write_csv(tmp_path / "t.csv", ["sentence", "label"], rows)
    with pytest.raises(DataError, match=r"empty text in column 'sentence' \(row 1100\)"):
        load(tmp_path, {"train": train})
    pairs = [(f"premise {i}", f"hypothesis {i}", "a" if i % 2 else "b") for i in range(40)]
    pairs[7] = ("", "hypothesis 7", "a")  # only the premise is empty: only it is named
    train = write_csv(tmp_path / "p.csv", ["premise", "hypothesis", "label"], pairs)
    with pytest.raises(DataError, match=r"empty text in column 'premise' \(row 7\); remove empty rows"):
        load(tmp_path, {"train": train}, text_column_names="premise,hypothesis")
    pairs[7] = ("premise 7", " ", "a")
    train = write_csv(tmp_path / "p.csv", ["premise", "hypothesis", "label"], pairs)
    with pytest.raises(DataError, match=r"empty text in column 'hypothesis' \(row 7\)"):
        load(tmp_path, {"train": train}, text_column_names="premise,hypothesis")


# ------------------------------------------------------------------------------------------ own-data review mends
def test_minus_one_is_a_class_when_train_has_it_and_class_names_are_checked(tmp_path):
    """Polarity data labelled -1 / 1: a split whose rows are all -1 is labelled (GLUE's hidden-label -1 means "no
    label" only when -1 is not a class); --class_names needs distinct, non-empty names; a JSON list is accepted."""
    train = write_csv(tmp_path / "t.csv", ["text", "label"], [(f"t {i}", [-1, 1][i % 2]) for i in range(20)])
    neg = write_csv(tmp_path / "n.csv", ["text", "label"], [("x", -1), ("y", -1)])
    d = load(tmp_path, {"train": train, "validation": neg, "test": neg})
    assert d.label_names == ["-1", "1"] and d.labelled == {"train": True, "validation": True, "test": True}
    assert list(d.splits["test"]["label"]) == [0, 0]
    glue = write_csv(tmp_path / "g.csv", ["text", "label"], [(f"t {i}", i % 2) for i in range(20)])
    hidden = write_csv(tmp_path / "h.csv", ["text", "label"], [("x", -1), ("y", -1)])
    assert load(tmp_path, {"train": glue, "validation": glue, "test": hidden}).labelled["test"] is False
    for bad in ("neg,pos,", "neg,,pos", "neg,neg"):
        with pytest.raises(DataError, match="distinct, non-empty name"):
            DataArguments(train_file=train, class_names=bad)
    assert DataArguments(text_column_names=["premise", "hypothesis"]).text_column_names == "premise,hypothesis"
    words = write_csv(tmp_path / "w.csv", ["text", "label"], [("x", "neutral")])
    with pytest.raises(DataError, match=r"'neutral', which is not among --class_names \(neg, pos\)"):
        load(tmp_path, {"train": glue, "validation": words}, class_names="neg,pos")


def test_config_data_paths_follow_eenet_data_dir_and_the_config_repository(tmp_path, monkeypatch):
    """A preset run from another folder (review 96): its ``../shared/data`` files under ``$EENET_DATA_DIR``, as
    ``recipes.presets.data_arguments`` reads them; a config's relative path that is not there from the working
    directory, from the repository the config lives in; the file named again on the command line is still the
    config's own (its dataset is not forgotten)."""
    from hf_eenet.recipe import build_parser, parse_args_with_config

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("EENET_DATA_DIR", str(tmp_path / "data"))
    preset = str(ROOT / "recipes" / "presets" / "sst2.json")
    _, data, args, _ = parse_args_with_config(build_parser(), [preset])
    assert (data.train_file, data.test_file) == (str(tmp_path / "data" / "sst2" / "train.tsv"),
                                                 str(tmp_path / "data" / "sst2" / "test.tsv"))
    _, data, args, _ = parse_args_with_config(build_parser(), [preset, "--train_file", "../data/sst2/train.tsv"])
    assert args.dataset_label == "sst2" and data.validation_file == str(tmp_path / "data" / "sst2" / "validation.tsv")
    monkeypatch.delenv("EENET_DATA_DIR")
    repo = tmp_path / "repo"  # a clone at tmp_path/repo, its data at tmp_path/shared/data
    (elsewhere / "deeper").mkdir()
    monkeypatch.chdir(elsewhere / "deeper")  # (../shared/data is not there from here)
    (repo / "recipes" / "presets").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    rows = [("a fine film", "pos"), ("a dull film", "neg")] * 4
    write_csv(tmp_path / "shared" / "data" / "train.csv", ["text", "label"], rows)
    write_csv(repo / "train.csv", ["text", "label"], rows)
    config = repo / "recipes" / "presets" / "mine.json"
    config.write_text(json.dumps({"train_file": "../shared/data/train.csv", "test_file": "../shared/data/missing.csv",
                                  "validation_file": "train.csv", "output_dir": "out"}))
    _, data, _, _ = parse_args_with_config(build_parser(), [str(config)])
    assert data.train_file == str(repo / "../shared/data/train.csv")
    assert data.test_file == "../shared/data/missing.csv"  # nowhere: as written, for the loader to name
    # any other relative path is the working directory's, as run_classification.py reads a config (review 98: a
    # user's config was read from the folder above its own)
    assert data.validation_file == "train.csv"
    (elsewhere.parent / "shared" / "data" / "train.csv").unlink()
    (tmp_path / "x" / "shared" / "data").mkdir(parents=True)  # there from the working directory: read from there
    write_csv(tmp_path / "x" / "shared" / "data" / "train.csv", ["text", "label"], rows)
    monkeypatch.chdir(tmp_path / "x" / "shared")
    _, data, _, _ = parse_args_with_config(build_parser(), [str(config)])
    assert data.train_file == "../shared/data/train.csv"


def test_a_config_files_data_read_from_elsewhere_are_recorded_as_the_config_writes_them(tiny_backbone, csv_data,
                                                                                           tmp_path, monkeypatch):
    """(review 97) results.json records a config file's data files as written, not where they were read from
    ($EENET_DATA_DIR, the config's repository): the committed results must not depend on where a run sat."""
    import shutil

    from hf_eenet.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(csv_data[split], data / f"{split}.csv")
    config = tmp_path / "repo" / "recipes" / "presets" / "mine.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({**{f"{s}_file": f"../shared/data/{s}.csv" for s in ("train", "validation", "test")},
                                  "text_column_names": "review", "label_column_name": "sentiment"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EENET_DATA_DIR", str(data))
    out = tmp_path / "m"
    main(["train", str(config), "--do_train", "--do_eval", *common_flags(tiny_backbone, out)])
    res = json.loads((out / "results.json").read_text())
    assert [res["recipe_args"][f"{s}_file"] for s in ("train", "validation", "test")] == \
        [f"../shared/data/{s}.csv" for s in ("train", "validation", "test")]
    assert res["splits"] == {"train": 96, "validation": 64, "test": 40}  # (read from $EENET_DATA_DIR)


def test_a_preset_on_other_data_forgets_its_dataset_card_and_results_folder(tmp_path, monkeypatch):
    from hf_eenet.recipe import build_parser, parse_args_with_config

    monkeypatch.delenv("EENET_DATA_DIR", raising=False)  # (the preset's files as written: read from the root)

    def parse(*argv):
        return parse_args_with_config(build_parser(), [preset, *argv, "--output_dir", str(tmp_path / "out")])

    preset = str(ROOT / "recipes" / "presets" / "sst2.json")
    mine = write_csv(tmp_path / "mine.csv", ["review", "sentiment"], synth(8, 0))
    # your own training data would otherwise go to the preset's outputs/sst2, over its SST-2 model
    for flag, value in (("--train_file", mine), ("--dataset_name", str(tmp_path))):
        with pytest.raises(DataError, match=rf"--{flag[2:]} replace the preset's data, but .*sst2.json would still "
                                            r"save the model to its own output_dir 'outputs/sst2' .*give --output_dir"):
            parse_args_with_config(build_parser(), [preset, flag, value])
    _, _, targs = parse_args_with_config(build_parser(), [preset, "--test_file", mine])[1:]  # evaluated on yours
    assert targs.output_dir == "outputs/sst2"  # trained on the preset's data: its model, its folder
    _, data, args, _ = parse("--train_file", mine)
    assert data.train_file == mine
    assert (args.dataset_label, args.card_dataset_id, args.card_dataset_name, args.results_dir, args.card_notes) == \
        (None, None, None, None, [])
    # its SST-2 dev / test files and class names are its data too: not mixed with yours under your data's name; the
    # preset's --do_predict had only its test file to read
    _, data, _, targs = parse("--train_file", mine)
    assert (data.validation_file, data.test_file, data.class_names, targs.do_predict) == (None, None, None, False)
    _, data, _, targs = parse("--train_file", mine, "--test_file", mine)  # given on the command line: used
    assert data.test_file == mine and data.validation_file is None and targs.do_predict
    # another test (or validation) file alone: trained on the preset's data, evaluated on yours
    cfg = json.loads(Path(preset).read_text())
    _, data, args, targs = parse("--test_file", mine)
    assert (data.train_file, data.validation_file, data.class_names) == \
        (cfg["train_file"], cfg["validation_file"], cfg["class_names"])
    assert data.test_file == mine and targs.do_predict and args.results_dir is None
    # a dataset brings its own test split: --do_predict stays; another configuration is other training data too
    _, data, _, targs = parse("--dataset_name", str(tmp_path))
    assert data.test_file is None and targs.do_predict
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({"dataset_name": "glue", "dataset_config_name": "sst2", "class_names": "neg,pos"}))
    _, data, _, _ = parse_args_with_config(build_parser(), [str(hub), "--dataset_config_name", "cola"])
    assert data.dataset_name == "glue" and data.class_names is None
    _, _, args, _ = parse("--train_fi", mine)  # argparse's abbreviation
    assert args.results_dir is None
    _, _, args, _ = parse("--train_file", mine, "--dataset_label", "sst2")  # given again on the command line: kept
    assert args.dataset_label == "sst2" and args.card_dataset_id is None
    # how a preset reads its own data goes too: AG News joins two columns into one text (your two columns are a
    # sentence pair) and holds out 2,000 rows (yours: the documented 10 %); given on the command line: kept
    news = str(ROOT / "recipes" / "presets" / "ag_news.json")
    pairs = write_csv(tmp_path / "pairs.csv", ["premise", "hypothesis", "label"],
                      [("a b", "c d", i % 2) for i in range(8)])
    _, data, _, _ = parse_args_with_config(build_parser(), [news, "--train_file", pairs, "--text_column_names",
                                                            "premise,hypothesis", "--output_dir", str(tmp_path / "o")])
    assert (data.text_column_delimiter, data.validation_split_rows, data.validation_split_percentage) == \
        (None, None, 10.0)
    _, data, _, _ = parse_args_with_config(build_parser(), [news, "--train_file", pairs, "--text_column_delimiter", " ",
                                                            "--validation_split_rows", "3", "--output_dir", "o"])
    assert (data.text_column_delimiter, data.validation_split_rows) == (" ", 3)
    _, data, _, _ = parse_args_with_config(build_parser(), [news, "--test_file", pairs])  # evaluated on yours
    assert (data.text_column_delimiter, data.validation_split_rows) == (" ", 2000)
    # your file with the preset's own columns (the full AG News train file): its join goes with its columns
    _, data, _, _ = parse_args_with_config(build_parser(), [news, "--train_file", pairs, "--output_dir", "o"])
    assert (data.text_column_names, data.text_column_delimiter, data.validation_split_rows) == \
        ("title,description", " ", None)
    # the preset's own files: as written, resolved from the repository (a run from another directory, the demo) or
    # from $EENET_DATA_DIR; a user's file in a folder of the same name is not the preset's
    monkeypatch.chdir(tmp_path)
    for same in (cfg["train_file"], str((ROOT / cfg["train_file"]).resolve())):
        _, data, args, _ = parse("--train_file", same)
        assert args.dataset_label == "sst2" and args.results_dir == "model_cards/sst2", same
        # (read from the repository where the data are there: the working directory is elsewhere)
        assert data.validation_file in (cfg["validation_file"], str(ROOT / cfg["validation_file"]))
        assert data.class_names == cfg["class_names"]
    copy = tmp_path / "elsewhere" / "sst2"
    copy.mkdir(parents=True)
    (copy / "train.tsv").write_text("sentence\tlabel\n")
    _, _, args, _ = parse("--train_file", str(copy / "train.tsv"))
    assert args.dataset_label is None and args.results_dir is None
    monkeypatch.setenv("EENET_DATA_DIR", str(copy.parent))
    _, _, args, _ = parse("--train_file", str(copy / "train.tsv"))
    assert args.dataset_label == "sst2"


def test_recipe_on_a_local_dataset_folder_evaluates_and_writes_the_card(tiny_backbone, csv_data, tmp_path,
                                                                        monkeypatch):
    """--dataset_name (a dataset folder or Hub id, through datasets.load_dataset) with --do_eval: results, card and
    plot are written (the dataset's label was built from a file path that does not exist there)."""
    import shutil

    from hf_eenet.cli import main

    folder = tmp_path / "my_reviews"
    folder.mkdir()
    shutil.copy(csv_data["train"], folder / "train.csv")
    shutil.copy(csv_data["validation"], folder / "validation.csv")
    out = tmp_path / "model"
    monkeypatch.chdir(tmp_path)  # the folder by its bare name, as a Hub id would be given
    main(["train", "--dataset_name", "my_reviews", "--text_column_names", "review", "--label_column_name",
          "sentiment", "--do_train", "--do_eval", *common_flags(tiny_backbone, out)])
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "my_reviews" and (out / "README.md").is_file()
    # a local folder is no Hub dataset, also given by its bare name from its parent (reviews 96-98)
    from huggingface_hub import ModelCard

    assert res["model_card"]["dataset_type"] == "local:my_reviews" and res["model_card"]["dataset_id"] is None
    assert {r.dataset_type for r in ModelCard.load(out / "README.md").data.eval_results} == {"local:my_reviews"}


def test_predicting_with_a_models_own_bank_names_the_scheduler_fit_that_needs_validation(csv_run, csv_data, tmp_path,
                                                                                           capsys):
    """run_classification's --do_predict alone: the validation split it asks for is needed by the default scheduler
    fit, which the error says, with the way to keep the model's bank (review 96: the advice to give a validation file
    refitted the bank)."""
    from hf_eenet.cli import main

    flags = ["--model_name_or_path", str(csv_run["out"]), "--test_file", csv_data["test"], "--text_column_names",
             "review", "--label_column_name", "sentiment", "--do_predict", "--report_to", "none", "--use_cpu",
             "--quiet", "--output_dir", str(tmp_path / "p")]
    with pytest.raises(SystemExit):
        main(["train", *flags])
    err = capsys.readouterr().err
    assert "needs the validation split(s); give --validation_file; the validation split is needed by " \
           "--do_fit_scheduler (on by default" in err and "--do_fit_scheduler false keeps an hf_eenet model's own bank" in err
    res = main(["train", *flags, "--do_fit_scheduler", "false"])  # as the error says: predicted with its own bank
    assert res is not None and (tmp_path / "p" / "predict_results.jsonl").is_file()


def test_reevaluating_a_bank_serves_its_budgets_and_states_how_the_model_was_trained(csv_run, csv_data, tmp_path,
                                                                                       capsys):
    """--do_fit_scheduler false evaluates the bank as fitted: --budgets it does not hold are refused (they were
    dropped, leaving an empty table); no --budgets = the bank's. The card and training_args.json say how the loaded
    model was trained, not this run's unused TrainingArguments."""
    from hf_eenet.cli import main

    src = csv_run["out"]
    data = ["--validation_file", csv_data["validation"], "--test_file", csv_data["test"], "--text_column_names",
            "review", "--label_column_name", "sentiment"]
    flags = ["--model_name_or_path", str(src), "--do_eval", "--do_fit_scheduler", "false", "--report_to", "none",
             "--use_cpu", "--quiet"]
    from hf_eenet.recipe import DEFAULT_BUDGETS

    for asked, missing in (("0.6", "[0.6]"), (DEFAULT_BUDGETS, "[0.25, 0.3, 0.4, 0.6, 0.7, 0.9]")):
        with pytest.raises(SystemExit):  # given explicitly, even as the default list: refused, not replaced
            main(["train", *data, *flags, "--output_dir", str(tmp_path / "a"), "--budgets", asked])
        assert f"--budgets {missing} are not in the model's scheduler bank [0.5, 0.8]" in capsys.readouterr().err
    # evaluated as fitted, so at the length it serves (48): results at another length would not describe it
    with pytest.raises(SystemExit):
        main(["train", *data, *flags, "--output_dir", str(tmp_path / "c"), "--max_seq_length", "4"])
    assert ("--max_seq_length 4: a model neither trained (--do_train) nor fitted (--do_fit_scheduler false) in this "
            "run is evaluated as it serves (48 tokens" in capsys.readouterr().err)
    assert not (tmp_path / "c").exists()
    # a model with no recorded length is evaluated at what the pipeline serves it (here its 64 positions), with or
    # without the flag (before: 128 without it, capped to the position table; refused with --max_seq_length 128)
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["max_seq_length"]
    (bare / "config.json").write_text(json.dumps(cfg))
    bare_flags = [bare if f == str(src) else f for f in flags]
    import hf_eenet.configuration_eenet as ce

    real = ce.max_input_tokens
    with pytest.MonkeyPatch.context() as mp:  # it serves 40 (as a 512-position model serves 512, not the 128 the
        mp.setattr(ce, "max_input_tokens",  # recipe's default takes); the position table stays 64
                   lambda config, tok=None, recorded=True: min(40, real(config, tok)) if recorded else real(config, tok,
                                                                                                     recorded))
        main(["train", *data, *map(str, bare_flags), "--output_dir", str(tmp_path / "d")])
        main(["train", *data, *map(str, bare_flags), "--output_dir", str(tmp_path / "e"), "--max_seq_length", "40"])
    used = [json.loads((tmp_path / d / "results.json").read_text())["recipe_args"]["max_seq_length"] for d in "de"]
    assert used == [40, 40]
    out = tmp_path / "b"
    main(["train", *data, *flags, "--output_dir", str(out), "--max_seq_length", "48"])  # the length it serves
    res = json.loads((out / "results.json").read_text())
    assert res["budgets"] == [0.5, 0.8] and len(res["methods"]["EENet"]) == 2
    # the card names the backbone the model was trained from, not the folder it was evaluated from (review 96), in
    # its setup and its name (review 97)
    first = json.loads((src / "results.json").read_text())
    start = first["recipe_args"]["model_name_or_path"]
    assert res["model_card"]["backbone"] == res["model_card"]["base_model"] == start != str(src)
    card = (out / "README.md").read_text()
    assert f"**backbone**: {start}" in card and f"({Path(start).name})" in card and f"({src.name})" not in card
    # a results.json that describes another model (left in the folder by a retrain without --do_eval) is not read
    other = tmp_path / "other"
    shutil.copytree(src, other)
    old = json.loads((other / "results.json").read_text())
    (other / "results.json").write_text(json.dumps({**old, "model_sha256": "0" * 64,
                                                    "recipe_args": {**old["recipe_args"], "model_name_or_path": "x/y"}}))
    main(["train", *data, *[str(other) if f == str(src) else f for f in flags], "--output_dir",
          str(tmp_path / "o"), "--max_seq_length", "48"])
    assert "x/y" not in (tmp_path / "o" / "README.md").read_text()
    trained = json.loads((src / "training_args.json").read_text())
    assert json.loads((out / "training_args.json").read_text()) == trained
    # pushed: the push saves again, still with how the model was trained (not this run's unused lr / seed), which
    # the CLI reads back as the seed of a validation hold-out
    import transformers.trainer

    from hf_eenet.cli import _seed

    hub, pushed = FakeHub(), tmp_path / "pushed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.trainer, "hf_api", hub)
        main(["train", *data, *flags, "--output_dir", str(pushed), "--learning_rate", "0.5", "--seed", "7",
              "--push_to_hub", "--hub_model_id", "someone/re-evaluated"])
    assert json.loads((pushed / "training_args.json").read_text()) == trained
    assert json.loads(hub.uploads[-1]["files"]["training_args.json"]) == trained
    assert _seed(type("A", (), {"seed": None})(), str(pushed)) == trained["seed"] != 7
    # budgets a config file (a preset) lists are not "given": the bank's are evaluated
    config = tmp_path / "preset.json"
    config.write_text(json.dumps({"budgets": "0.25,0.3,0.9", "report_to": "none", "use_cpu": True}))
    res = main(["train", str(config), *data, "--model_name_or_path", str(src), "--do_eval", "--do_fit_scheduler",
                "false", "--quiet", "--output_dir", str(tmp_path / "c")])
    assert res["budgets"] == [0.5, 0.8] and res["recipe_args"]["budgets"] == "0.5,0.8"
    card = (out / "README.md").read_text()
    assert "not trained in this run" in card and f"lr {trained['learning_rate']}" in card


def test_cli_caps_max_seq_length_and_says_which_entry_serves_a_budget(csv_run, csv_data, tmp_path, capsys):
    from hf_eenet.cli import main

    out = csv_run["out"]
    long = write_csv(tmp_path / "long.csv", ["review"], [(" ".join(["good"] * 200),), ("bad",)])
    main(["predict", str(out), "--test_file", long, "--text_column_names", "review", "--max_seq_length", "100000",
          "--budget", "0.6", "--output_file", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert "--max_seq_length 100000 is larger than the model takes (64 positions); using 64" in err
    assert "inputs truncated to --max_seq_length 64; the model serves 48 tokens" in err  # both notes
    assert "budget 0.6 is served by the bank's 0.5 scheduler" in err
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["predictions"][0]["budget"] == 0.6


def test_refitting_in_place_without_do_eval_or_predict_removes_the_old_outputs(csv_run, csv_data, tmp_path):
    import shutil

    from hf_eenet.cli import main

    model = tmp_path / "model"
    shutil.copytree(csv_run["out"], model)
    assert (model / "predict_results.jsonl").is_file()
    main(["train", "--model_name_or_path", str(model), "--output_dir", str(model), "--validation_file",
          csv_data["validation"], "--text_column_names", "review", "--label_column_name", "sentiment",
          "--budgets", "0.6", "--report_to", "none", "--use_cpu", "--quiet", "--scheduler_max_epochs", "3",
          "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"])
    assert json.loads((model / "config.json").read_text())["scheduler_budgets"] == [0.6]
    for name in ("predict_results.jsonl", "eval_results.json", "exit_predictions.safetensors"):
        assert not (model / name).exists(), f"{name} of the replaced bank was left"
    assert not [k for k in json.loads((model / "all_results.json").read_text()) if k.startswith("eval_")]
    # the card is marked stale and names results.json (and its plot) as the earlier model's: they stay
    assert (model / "results.json").is_file() and (model / "accuracy_vs_cost.png").is_file()
    assert "describe the earlier model" in (model / "README.md").read_text()


def test_a_rerun_that_dies_after_saving_leaves_no_outputs_of_the_model_before(csv_run, csv_data, tiny_backbone,
                                                                              tmp_path, monkeypatch):
    """A run into a folder that holds an earlier run's model, interrupted after its save (here in the evaluation):
    the predictions, metrics and exit predictions of the model before are gone with it, not left beside the new
    weights (all_results.json would mix this run's train_loss with the old eval_* metrics); the card is marked stale."""
    import shutil

    import hf_eenet.reporting
    from hf_eenet.cli import main

    model = tmp_path / "model"
    shutil.copytree(csv_run["out"], model)
    assert (model / "predict_results.jsonl").is_file() and (model / "eval_results.json").is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("interrupted during the evaluation")

    monkeypatch.setattr(hf_eenet.reporting, "compare_policies", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"],
              "--test_file", csv_data["test"], "--text_column_names", "review", "--label_column_name", "sentiment",
              "--do_train", "--do_eval", "--do_predict", *common_flags(tiny_backbone, model), "--seed", "7"])
    for name in ("predict_results.jsonl", "eval_results.json", "exit_predictions.safetensors"):
        assert not (model / name).exists(), f"{name} of the model before was left"
    merged = json.loads((model / "all_results.json").read_text())
    assert "train_loss" in merged and not [k for k in merged if k.startswith("eval_")]
    assert "describe the earlier model" in (model / "README.md").read_text()


def test_evaluating_an_untrained_backbone_says_its_exit_heads_are_untrained(tiny_backbone, csv_data, tmp_path):
    from hf_eenet.cli import main

    out = tmp_path / "model"
    main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"],
          "--text_column_names", "review", "--label_column_name", "sentiment", "--do_eval",
          *common_flags(tiny_backbone, out)])
    card = (out / "README.md").read_text()
    assert "exit heads are freshly initialised (untrained)" in card
    assert not (out / "training_args.json").exists()  # this run's unused settings are not recorded as training


def test_every_scheduler_the_recipe_fits_takes_the_scheduler_flags(tiny_backbone, csv_data, tmp_path, monkeypatch):
    """Without a bank (--do_fit_scheduler false), --do_eval fits EENet per budget for the comparison: with the
    --scheduler_* flags, as the bank and the layer-cost table are (they were the defaults there)."""
    from hf_eenet.cli import main
    from hf_eenet.scheduler import EENetScheduler

    seen, fit = [], EENetScheduler.fit

    def recording_fit(self, *args, **kwargs):
        seen.append((self.max_epochs, self.restarts, self.selection_folds))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(EENetScheduler, "fit", recording_fit)
    main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"], "--test_file",
          csv_data["test"], "--text_column_names", "review", "--label_column_name", "sentiment", "--do_train",
          "--do_eval", "--do_fit_scheduler", "false", *common_flags(tiny_backbone, tmp_path / "m")])
    assert len(seen) == 2 and set(seen) == {(5, 1, 0)}


def test_eval_metrics_keep_budgets_that_round_alike_apart():
    from hf_eenet.recipe import eval_metrics
    from hf_eenet.reporting import budget_key, results_table

    rows = [{"budget": b, "accuracy": a, "mean_cost": b} for b, a in ((0.3, 0.7), (0.6, 0.8), (0.604, 0.9))]
    m = eval_metrics({"per_exit_accuracy": [0.5, 0.9], "full_model": {"accuracy": 0.9},
                      "methods": {"EENet (ours)": rows, "Static": rows[:1]}})
    assert m["eenet_accuracy@0.30"] == 0.7 and m["static_accuracy@0.30"] == 0.7  # the grid's keys as before
    assert m["eenet_accuracy@0.60"] == 0.8 and m["eenet_accuracy@0.604"] == 0.9 and m["eenet_cost@0.604"] == 0.604
    assert [budget_key(b) for b in (0.25, 0.5, 1.0, 0.125)] == ["0.25", "0.50", "1.00", "0.125"]
    table = results_table({"budgets": [0.6, 0.604], "methods": {"EENet": rows[1:]}, "full_model": {"accuracy": 0.9},
                           "costs": [0.5, 1.0]})
    assert "| 0.60 |" in table and "| 0.604 |" in table


def test_a_head_for_another_number_of_classes_is_a_one_line_error_naming_the_flag(tiny_backbone):
    from hf_eenet.recipe import load_backbone

    with pytest.raises(ValueError, match=r"other shapes than a model for 3 classes .*pass --ignore_mismatched_sizes "
                                         r"to start those layers afresh \(transformers: ") as err:
        load_backbone(tiny_backbone, num_labels=3)  # its head has 2 outputs
    assert "\n" not in str(err.value)
    model, _ = load_backbone(tiny_backbone, num_labels=3, ignore_mismatched_sizes=True)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3


def test_default_budgets_below_the_first_exit_are_dropped_before_training(tiny_backbone, csv_data, tmp_path,
                                                                           caplog, capsys):
    """No --budgets: the defaults (0.25 ... 0.9) the exits cannot reach are left out with a warning (exits at layers
    3 and 4 of 4 cost 0.75 and 1); given ones are refused before anything is trained."""
    from hf_eenet.cli import main

    data = ["--train_file", csv_data["train"], "--validation_file", csv_data["validation"], "--text_column_names",
            "review", "--label_column_name", "sentiment", "--do_train", "--exit_layers", "3,4"]
    flags = common_flags(tiny_backbone, tmp_path / "given")
    with pytest.raises(SystemExit):
        main(["train", *data, *flags])
    assert ("--budgets [0.5] are below the cheapest exit's cost: with --cost_profile layers exit 1 costs 0.750 of "
            "the full model, so the reachable budgets are [0.750, 1]. Nothing was trained." in capsys.readouterr().err)
    assert not (tmp_path / "given").exists()
    i = flags.index("--budgets")
    del flags[i:i + 2]
    flags[flags.index("--output_dir") + 1] = str(tmp_path / "default")
    with caplog.at_level("WARNING", logger="hf_eenet.recipe"):
        main(["train", *data, *flags])
    assert "the default budgets [0.25, 0.3, 0.4, 0.5, 0.6, 0.7] are below the cheapest exit's cost" in caplog.text
    cfg = json.loads((tmp_path / "default" / "config.json").read_text())
    assert cfg["scheduler_budgets"] == [0.8, 0.9]


def test_recipe_takes_templated_validation_rows_for_whole_texts(tiny_backbone, csv_data, tmp_path, monkeypatch):
    """The recipe tokenizes the validation rows at --max_seq_length and says so to the fit (tokenized_max_length):
    templated texts of one shorter length (their text columns are not kept) are whole texts, not a truncation, so
    nothing warns and the model keeps serving the length it was trained at."""
    from hf_eenet.cli import main

    stated = []
    fit = hf_eenet.EENetTrainer.fit_scheduler

    def recording_fit(self, *args, **kwargs):
        stated.append(kwargs.get("tokenized_max_length"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(hf_eenet.EENetTrainer, "fit_scheduler", recording_fit)
    templated = write_csv(tmp_path / "templated.csv", ["review", "sentiment"],
                          [(f"the item number {i} is {'good' if i % 2 else 'bad'} today", "good" if i % 2 else "bad")
                           for i in range(40)])
    out = tmp_path / "model"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["train", "--train_file", csv_data["train"], "--validation_file", templated, "--text_column_names",
              "review", "--label_column_name", "sentiment", "--do_train", *common_flags(tiny_backbone, out)])
    assert not [w for w in caught if "truncated" in str(w.message)], [str(w.message) for w in caught]
    config = json.loads((out / "config.json").read_text())
    assert config["max_seq_length"] == 48 and config["scheduler_budgets"] == [0.5, 0.8]
    assert stated == [48]  # the length the rows were tokenized at, said to the fit (not a warning silenced)


@pytest.mark.parametrize("flag, hint", [
    (["--overwrite_output_dir"], r"--overwrite_output_dir was removed from TrainingArguments in transformers 5: an "
                                 r"existing --output_dir is written over"),
    (["--warmup_ratio", "0.1"], r"--warmup_ratio was removed .* pass the fraction to --warmup_steps"),
    (["--evaluation_strategy=epoch"], r"--evaluation_strategy was removed .* pass --eval_strategy"),
    (["--no_cuda"], r"--no_cuda was removed .* pass --use_cpu"),
    (["--overwrite_output"], r"--overwrite_output_dir was removed"),  # an abbreviation, as transformers 4 took it
    (["--save_safetensors", "true"], r"--save_safetensors was removed .* always saved as safetensors"),
    (["--no_save_safetensors"], r"--save_safetensors was removed"),  # a transformers-4 negated bool flag
    # a 4.x command whose other flags fail a TrainingArguments check without the removed one: the hint comes first
    (["--evaluation_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end"],
     r"--evaluation_strategy was removed .* pass --eval_strategy"),
    # run_classification.py's own options that the recipe does not take: said so, with what it does instead
    (["--pad_to_max_length"], r"--pad_to_max_length is a run_classification.py option that this recipe does not "
                              r"take: inputs are padded per batch"),
    (["--do_regression", "true"], r"--do_regression is a run_classification.py option .* regression task is not "
                                  r"supported; drop it"),
    (["--preprocessing_num_workers", "4"], r"--preprocessing_num_workers is a run_classification.py option"),
    (["--no_pad_to_max_length"], r"--pad_to_max_length is a run_classification.py option"),  # 4.x negated bool
])
def test_transformers_4_training_flags_are_refused_naming_their_replacement(flag, hint, tmp_path, capsys):
    """A run_classification.py command written for transformers 4 stops with one line saying what replaced the
    removed TrainingArguments flag, on the command line and in a config file, for the recipe and the CLI."""
    from hf_eenet.recipe import build_parser, parse_args_with_config

    with pytest.raises(SystemExit):
        parse_args_with_config(build_parser(), ["--output_dir", str(tmp_path), *flag])
    assert re.search(hint, capsys.readouterr().err)
    config = tmp_path / "run.json"
    key = re.match(r"--(\w+)", hint).group(1)  # a config file names the key in full
    config.write_text(json.dumps({"output_dir": str(tmp_path), key: True}))
    with pytest.raises(SystemExit):
        parse_args_with_config(build_parser(), [str(config)])
    assert re.search(hint.replace("--", "", 1), capsys.readouterr().err)
    from hf_eenet.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--output_dir", str(tmp_path), *flag])
    assert re.search(hint, capsys.readouterr().err)


def test_removed_flag_check_reads_only_leftover_flags_and_hints_what_the_command_takes(tmp_path, capsys):
    """A text after ``--`` (or a value) that looks like a removed flag is an argument, not refused; a CLI command
    that does not take the replacement says so instead of sending the user to it."""
    from hf_eenet.cli import EvaluateArguments, PredictArguments, _parse
    from hf_eenet.recipe import build_parser, parse_args_with_config

    *_, ns = _parse("predict", PredictArguments, [str(tmp_path), "--", "--no_cuda"])
    assert ns.texts == ["--no_cuda"]
    *_, training_args = parse_args_with_config(build_parser(), ["--output_dir", str(tmp_path), "--run_name=--no_cuda"])
    assert training_args.run_name == "--no_cuda"
    with pytest.raises(SystemExit):
        _parse("evaluate", EvaluateArguments, [str(tmp_path), "--no_cuda"])
    assert "--no_cuda was removed from TrainingArguments in transformers 5: hf-eenet evaluate does not take it (nor " \
           "--use_cpu); drop it" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # advice that needs an option the command does not take: drop it
        _parse("evaluate", EvaluateArguments, [str(tmp_path), "--overwrite_output_dir"])
    assert "hf-eenet evaluate does not take it (nor --output_dir); drop it" in capsys.readouterr().err
    # other unknown flags (a short or negated mistyped option too) keep the stock error
    for flag in ("--no_such_flag", "--split"):
        with pytest.raises(ValueError, match=rf"not used by the HfArgumentParser: \['{flag}'\]"):
            parse_args_with_config(build_parser(), ["--output_dir", str(tmp_path), flag])
    for flag in ("--no", "--no_c"):
        with pytest.raises(ValueError, match=rf"not used by the HfArgumentParser: \['{flag}'\]"):
            _parse("evaluate", EvaluateArguments, [str(tmp_path), flag])
    # after "--" a parser without positional texts leaves the arguments over: the stock error, not a removed flag
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \[.*'--overwrite_output_dir'\]"):
        _parse("evaluate", EvaluateArguments, [str(tmp_path), "--", "--overwrite_output_dir"])


@pytest.fixture(scope="module")
def finetuned_classifier(tmp_path_factory, minilm_dir):
    """A user's own fine-tuned (here: random) stock ``BertForSequenceClassification`` whose classes are named in
    another order than the data's sorted names (``bad`` < ``good``): id 0 is ``good``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, id2label={0: "good", 1: "bad"},
                     label2id={"good": 0, "bad": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(d)
    return str(d)


def test_a_finetuned_classifier_keeps_its_classes_in_the_recipe(finetuned_classifier, csv_data, tmp_path, caplog):
    """Review 99: the recipe named a plain checkpoint's classes in the data's sorted order, so a fine-tuned head's
    rows swapped meaning silently (AG News: 0.877 -> 0.043). Now the data's labels are read in the checkpoint's
    order and its last exit is the stock classifier, with the stock labels."""
    import logging

    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_eenet.cli import main

    out = tmp_path / "model"
    flags = [f for f in common_flags(finetuned_classifier, out) if f not in ("--quiet",)]
    flags[flags.index("--learning_rate") + 1] = "0"  # the stock head stays as it was fine-tuned
    flags[flags.index("--max_steps") + 1] = "1"
    with caplog.at_level(logging.WARNING, logger="hf_eenet.recipe"):
        main(["train", "--train_file", csv_data["train"], "--validation_file", csv_data["validation"],
              "--text_column_names", "review", "--label_column_name", "sentiment", "--do_train",
              "--do_fit_scheduler", "false", *flags])
    assert "fine-tuned with the classes ['good', 'bad']" in caplog.text
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "good", 1: "bad"}
    stock = BertForSequenceClassification.from_pretrained(finetuned_classifier).eval()
    tok = AutoTokenizer.from_pretrained(finetuned_classifier)
    enc = tok(["a gripping funny film", "dull and thin"], padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**enc, exit_policy=hf_eenet.StaticPolicy(model.config.num_exits - 1, model.config.num_exits))
        torch.testing.assert_close(last.logits, stock(**enc).logits, rtol=0, atol=1e-6)
    # the data's ids follow the checkpoint's: "good" rows are class 0
    from hf_eenet.recipe import read_data_for_checkpoint

    args = DataArguments(train_file=csv_data["train"], validation_file=csv_data["validation"],
                         text_column_names="review", label_column_name="sentiment")
    data = read_data_for_checkpoint(finetuned_classifier, args, 0, ())
    assert data.label_names == ["good", "bad"]
    rows = data.splits["train"]
    assert all((r["label"] == 0) == (t == "good") for r, (_, t) in zip(rows, synth(96, 0)))


def test_a_checkpoints_classes_are_matched_by_name_any_case_subset_or_ids(tmp_path):
    """Reviews 99-101: how the recipe reads data for a plain checkpoint whose classifier names its classes. Its names
    (all, some, or in another case), ints 0..C-1 (its ids), a ClassLabel with --class_names (which the loader does not
    take) and a validation class that train lacks are read as its classes; the user's --class_names in another order,
    other classes, id subsets and numbers that are its names but not the data's are read as before, with a warning;
    id strings keep the rows right; nothing here fails that read before the mend."""
    from datasets import ClassLabel, Dataset, Features, Value
    from transformers import BertConfig

    from hf_eenet.recipe import read_data_for_checkpoint

    def ckpt(names):
        d = tmp_path / ("ckpt-" + "-".join(n.replace("/", "_") for n in names))
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                   id2label=dict(enumerate(names))).save_pretrained(d)
        return str(d)

    texts = [t for t, _ in synth(60, 0)]

    def read(path, labels, new_head=False, validation=None, **kw):
        f = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        f.mkdir()
        write_jsonl(f / "train.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels)])
        if validation is not None:
            write_jsonl(f / "dev.jsonl", [{"text": t, "label": y} for t, y in zip(texts, validation)])
        args = DataArguments(train_file=str(f / "train.jsonl"), validation_split_percentage=25,
                             validation_file=str(f / "dev.jsonl") if validation is not None else None, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = read_data_for_checkpoint(path, args, 0, (), new_head=new_head)
        truth = dict(zip(texts, labels))
        named = [data.label_names[r["label"]] for r in data.splits["train"]]
        return data.label_names, named == [str(truth[r["text"]]) for r in data.splits["train"]], \
            [str(w.message) for w in caught if "fine-tuned with the classes" in str(w.message)]

    three = ckpt(["World", "Sports", "Business"])
    cycle = lambda names: [names[i % len(names)] for i in range(len(texts))]  # noqa: E731
    assert read(three, cycle(["Sports", "World", "Business"])) == (["World", "Sports", "Business"], True, [])
    assert read(three, cycle(["sports", "world", "business"])) == (["world", "sports", "business"], True, [])
    assert read(three, cycle(["Sports", "World"])) == (["World", "Sports", "Business"], True, [])  # some: all kept
    assert read(three, cycle(["Sports", "World"]), new_head=True) == (["Sports", "World"], True, [])
    names, _, said = read(three, cycle([0, 1, 2]))  # ints 0..2: its ids
    assert names == ["World", "Sports", "Business"] and not said
    names, _, said = read(three, cycle([0, 1]))  # a subset of ids could be other classes: as before, said
    assert names == ["0", "1"] and "the data's classes are ['0', '1']" in said[0]
    assert read(three, cycle(["0", "1", "2"]))[:2] == (["0", "1", "2"], True)  # id strings: rows right
    names, _, said = read(three, cycle(["Sports", "World"]), class_names="Sports,World")
    assert names == ["Sports", "World"] and "--class_names lists ['Sports', 'World']" in said[0]
    assert read(three, cycle(["sports", "world", "business"]), class_names="world,sports,business")[2] == []
    names, _, said = read(three, cycle(["Sports", "World"]), validation=cycle(["Business", "World"]))
    assert names == ["World", "Sports", "Business"] and not said  # validation's class is the checkpoint's
    with pytest.raises(DataError, match=r"not among the labels learnt from train.*give them with --class_names"):
        read(three, cycle([0, 1]), validation=cycle([0, 2]))  # ids, some of them: not read as its classes (review 102)
    with pytest.raises(DataError, match=r"not among the labels learnt from train.*give them with --class_names"):
        read(three, cycle(["sports", "world"]), validation=cycle(["business"]))
    numbered = ckpt(["1", "2", "3"])  # run_glue's names for int labels 1..3
    assert read(numbered, cycle([3, 1, 2]))[:2] == (["1", "2", "3"], True)
    names, _, said = read(numbered, cycle([0, 1, 2]))
    assert names == ["0", "1", "2"] and said  # 0..2 are not its names (1..3): as before, said
    collide = ckpt(["pos", "Pos"])
    assert read(collide, cycle(["Pos", "pos"]))[:2] == (["pos", "Pos"], True)
    backbone = tmp_path / "backbone"  # transformers' LABEL_<i> names: no fine-tuned classes
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(
        backbone)
    assert read(str(backbone), cycle(["b", "a"])) == (["a", "b"], True, [])
    # ClassLabel data: --class_names is not what named it (the loader reads the ClassLabel's names)
    two = ckpt(["pos", "neg"])
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]}, features=feats).to_parquet(
        tmp_path / "cl.parquet")
    args = DataArguments(train_file=str(tmp_path / "cl.parquet"), validation_split_percentage=25,
                         class_names="pos,neg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_data_for_checkpoint(two, args, 0, ())
    assert data.label_names == ["pos", "neg"] and not [w for w in caught if "fine-tuned" in str(w.message)]
    truth = {t: ["neg", "pos"][i % 2] for i, t in enumerate(texts)}
    assert all(data.label_names[r["label"]] == truth[r["text"]] for r in data.splits["train"])
