"""EENetTrainer (GA parity, per-exit metrics, scheduler bank, resume), the budgeted pipeline, Hub export, DDP."""

import concurrent.futures
import fnmatch
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, ROOT, tiny_kwargs, tiny_model, write_csv
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments, pipeline

import hf_eenet

WORDS_POS = "good great fine lovely superb wonderful funny gripping".split()
WORDS_NEG = "bad awful dull boring stale thin poor weak".split()
FILL = "the a film plot story it was is and of movie this with".split()


def toy_texts(n, seed=0):
    """Sentiment toy task: label = which word list the cue words come from; some texts are made harder."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = int(rng.integers(0, 2))
        cue = WORDS_POS if y else WORDS_NEG
        other = WORDS_NEG if y else WORDS_POS
        words = list(rng.choice(FILL, size=int(rng.integers(3, 12))))
        n_cue = int(rng.integers(1, 4))
        for _ in range(n_cue):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
        if rng.random() < 0.3:
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(other)))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def toy_model(seed=0, layers=4, **over):
    torch.manual_seed(seed)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=layers, vocab_size=30522, **over),
                                   id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    return hf_eenet.EENetBertForSequenceClassification(cfg)


def toy_dataset(tok, n, seed=0):
    texts, labels = toy_texts(n, seed)
    ds = Dataset.from_dict({"text": texts, "labels": labels})
    return ds.map(lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])


def targs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no",
                per_device_eval_batch_size=64, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    """A tiny 4-exit model trained on the toy task, with a fitted scheduler bank, saved with the pipeline code."""
    tmp = tmp_path_factory.mktemp("trained")
    model = toy_model(seed=1)
    train, val = toy_dataset(tok, 768, seed=1), toy_dataset(tok, 384, seed=2)
    trainer = hf_eenet.EENetTrainer(
        model=model, args=targs(tmp, num_train_epochs=3, per_device_train_batch_size=32, learning_rate=3e-3),
        train_dataset=train, eval_dataset=val, processing_class=tok, data_collator=DataCollatorWithPadding(tok),
        self_distillation=True)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    info = trainer.fit_scheduler(budgets=[0.4, 0.6, 0.8], seed=0)
    d = tmp / "model"
    trainer.save_model(str(d))
    return {"trainer": trainer, "model": model.eval(), "dir": str(d), "before": before, "after": after, "info": info,
            "val": val}


# --------------------------------------------------------------------------------------------------- trainer


def test_training_learns_and_logs_per_exit_accuracy(trained):
    before, after = trained["before"], trained["after"]
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    keys = [f"eval_accuracy_exit_{k}" for k in range(1, 5)]
    assert all(k in after for k in keys), after.keys()
    assert after["eval_accuracy_exit_4"] > 0.8
    assert after["eval_accuracy"] == after["eval_accuracy_exit_4"]


def test_gradient_accumulation_parity(tok, tmp_path):
    data = toy_dataset(tok, 16, seed=3)
    states = []
    for bs, ga in ((16, 1), (8, 2)):
        model = toy_model(seed=4)
        args = targs(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
                     learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0)
        hf_eenet.EENetTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                              data_collator=DataCollatorWithPadding(tok)).train()
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    init = toy_model(seed=4).state_dict()
    moved = [k for k in init if not torch.equal(init[k], states[0][k])]
    assert moved, "the update must change the weights"
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], atol=1e-5, rtol=1e-4)


def test_resume_from_checkpoint_gives_same_result(tok, tmp_path):
    data = toy_dataset(tok, 64, seed=5)
    kw = dict(per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3, save_strategy="steps", save_steps=3,
              lr_scheduler_type="linear")
    full = toy_model(seed=6)
    hf_eenet.EENetTrainer(model=full, args=targs(tmp_path / "a", **kw), train_dataset=data, processing_class=tok,
                          data_collator=DataCollatorWithPadding(tok)).train()
    part = toy_model(seed=6)
    hf_eenet.EENetTrainer(model=part, args=targs(tmp_path / "b", **kw), train_dataset=data, processing_class=tok,
                          data_collator=DataCollatorWithPadding(tok)).train()
    ckpt = tmp_path / "b" / "out" / "checkpoint-3"
    assert (ckpt / "model.safetensors").exists()
    resumed = toy_model(seed=99)
    hf_eenet.EENetTrainer(model=resumed, args=targs(tmp_path / "b", **kw), train_dataset=data, processing_class=tok,
                          data_collator=DataCollatorWithPadding(tok)).train(resume_from_checkpoint=str(ckpt))
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=1e-5)


def test_training_a_model_with_a_bank_removes_the_stale_bank(trained, tok, tmp_path):
    """A bank is fitted on the exits' outputs: after more training it would serve budgets it no longer meets, so
    train() removes it (warning) and the saved model refuses budget= until it is refitted."""
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(trained["dir"])
    assert model.config.scheduler_budgets == [0.4, 0.6, 0.8]
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=2, per_device_train_batch_size=16,
                                                            learning_rate=1e-3, save_strategy="steps",
                                                            save_steps=1),
                                    train_dataset=toy_dataset(tok, 32, seed=7), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    with pytest.warns(UserWarning, match="removed"):
        trainer.train()
    assert model.config.scheduler_budgets == [] and len(model.eenet_schedulers) == 0
    ckpt = json.loads((tmp_path / "out" / "checkpoint-1" / "config.json").read_text())
    assert not ckpt["scheduler_budgets"]  # checkpoints written during training carry no stale bank either
    trainer.save_model(str(tmp_path / "again"))
    again = hf_eenet.EENetBertForSequenceClassification.from_pretrained(tmp_path / "again")
    batch = tok(["a good film"], return_tensors="pt")
    with pytest.raises(ValueError, match="no fitted EENet scheduler"):
        again(**batch, budget=0.6)
    trainer.fit_scheduler(eval_dataset=trained["val"], budgets=[0.6], seed=0)  # refitted: served again
    assert model.config.scheduler_budgets == [0.6]


def test_model_init_trains_a_model_without_the_old_bank_and_a_failed_train_keeps_it(trained, tok, tmp_path):
    """The bank is removed from the model that trains: with model_init that is the model train() builds (the stock
    Trainer replaces self.model), not the one the trainer held; a train() that fails before its first step (a
    mistyped checkpoint) leaves the bank as it was."""
    data = toy_dataset(tok, 32, seed=7)
    kw = dict(max_steps=2, per_device_train_batch_size=16, learning_rate=1e-3, save_strategy="steps", save_steps=1)
    trainer = hf_eenet.EENetTrainer(
        model_init=lambda: hf_eenet.EENetBertForSequenceClassification.from_pretrained(trained["dir"]),
        args=targs(tmp_path, **kw), train_dataset=data, processing_class=tok,
        data_collator=DataCollatorWithPadding(tok))
    with pytest.warns(UserWarning, match="removed"):
        trainer.train()
    assert trainer.model.config.scheduler_budgets == [] and len(trainer.model.eenet_schedulers) == 0
    assert not json.loads((tmp_path / "out" / "checkpoint-1" / "config.json").read_text())["scheduler_budgets"]
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(trained["dir"])
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path / "b", **kw), train_dataset=data,
                                    processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match="checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-typo"))
    assert model.config.scheduler_budgets == [0.4, 0.6, 0.8] and len(model.eenet_schedulers) == 3
    trainer.train_dataset = None  # fails when the dataloader is built, inside the training loop
    with pytest.raises(ValueError, match="train_dataset"):
        trainer.train()
    trainer.train_dataset = data.map(lambda b: {"labels": [[1] * (i % 3 + 1) for i in range(len(b["labels"]))]},
                                     batched=True)
    with pytest.raises(ValueError, match="create tensor"):  # the first batch does not collate (ragged labels)
        trainer.train()
    trainer.train_dataset = data.map(lambda b: {"labels": [7] * len(b["labels"])}, batched=True)
    with pytest.raises((ValueError, IndexError, RuntimeError)):  # the first forward fails (labels out of range)
        trainer.train()
    with pytest.raises((ValueError, FileNotFoundError)):  # the model's own folder is no Trainer checkpoint
        trainer.train(resume_from_checkpoint=trained["dir"])
    assert model.config.scheduler_budgets == [0.4, 0.6, 0.8] and len(model.eenet_schedulers) == 3
    # a streamed training set is not read ahead (the recorded length is checked on map-style datasets only)
    model.config.max_seq_length = 8
    stream = IterableDataset.from_generator(lambda: iter(data), features=data.features)
    streamer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path / "s", max_steps=1, per_device_train_batch_size=4),
                                     train_dataset=stream, processing_class=tok,
                                     data_collator=DataCollatorWithPadding(tok))
    with pytest.warns(UserWarning, match="removed"):
        streamer.train()
    assert streamer.state.global_step == 1 and model.config.max_seq_length == 8
    # steps that ran without the trainer hearing of them (its callback removed): the bank is not put back
    model.set_scheduler_bank({0.6: hf_eenet.EENetBertForSequenceClassification.from_pretrained(
        trained["dir"]).get_exit_policy(0.6)})
    model.config.max_seq_length = None
    deaf = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path / "d", max_steps=2, per_device_train_batch_size=8),
                                 train_dataset=data, processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    deaf.remove_callback(hf_eenet.trainer._FirstOptimizerStep)
    deaf.train()
    assert deaf.state.global_step == 2 and model.config.scheduler_budgets == []
    # resuming a model that has a bank: the bank goes before the checkpoint's weights are loaded (no missing-keys
    # report for it) and before the optimizer is built, so its state matches the checkpoint's
    import logging

    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        resumed = hf_eenet.EENetBertForSequenceClassification.from_pretrained(trained["dir"])
        again = hf_eenet.EENetTrainer(model=resumed, args=targs(tmp_path, **dict(kw, max_steps=3)),
                                      train_dataset=data, processing_class=tok,
                                      data_collator=DataCollatorWithPadding(tok))
        with pytest.warns(UserWarning, match="removed"):
            again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert again.state.global_step == 3 and resumed.config.scheduler_budgets == []
    assert not [r for r in records if "missing keys" in r.getMessage()]


def test_trainer_settings_columns_and_models_are_checked(tok, tmp_path):
    """Distillation settings are checked (a zero temperature or NaN weight trained NaN weights under a 0.0 logged
    loss); a stock model is refused by name; a dataset column named like a serving argument (a film's "budget") is
    not fed to forward, as the stock Trainer drops columns its model does not take."""
    bad = [dict(distill_temperature=0.0), dict(distill_temperature=-2.0), dict(distill_weight=float("nan")),
           dict(distill_weight=-1.0), dict(distill_start=1.5), dict(self_distillation="no")]
    for kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            hf_eenet.EENetTrainer(model=toy_model(), args=targs(tmp_path), **kw)
    from transformers import BertConfig, BertForSequenceClassification

    stock = BertForSequenceClassification(BertConfig(**tiny_kwargs(num_labels=2, layers=2, vocab_size=30522)))
    with pytest.raises(TypeError, match="hf_eenet multi-exit models; got BertForSequenceClassification"):
        hf_eenet.EENetTrainer(model=stock, args=targs(tmp_path))
    data = toy_dataset(tok, 48, seed=3)
    data = data.add_column("budget", [float(i) for i in range(len(data))])
    data = data.add_column("exit_policy", ["x"] * len(data))
    trainer = hf_eenet.EENetTrainer(model=toy_model(), args=targs(tmp_path, max_steps=1, per_device_train_batch_size=16),
                                    train_dataset=data, eval_dataset=data, processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    assert "eval_accuracy_exit_1" in trainer.evaluate()
    trainer.fit_scheduler(budgets=[0.6], restarts=1, max_epochs=2)
    assert trainer.model.config.scheduler_budgets == [0.6]


def test_fit_scheduler_reads_every_row_and_records_the_length_it_was_fitted_at(trained, tok, tmp_path):
    """dataloader_drop_last (a training setting) does not drop validation rows from the bank's data; rows truncated
    at a length are fitted and served at it (config.max_seq_length recorded: the pipeline serves the same rows at
    the fitted cost); rows longer than what the model serves are refused; untruncated rows record nothing."""
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(trained["dir"])
    val = trained["val"].select(range(50))
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, dataloader_drop_last=True,
                                                            per_device_eval_batch_size=32),
                                    processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    probs, _ = trainer.collect_exit_predictions(val)
    assert probs.shape[0] == 50
    trainer.fit_scheduler(eval_dataset=val, budgets=[0.6], restarts=1, max_epochs=2)
    assert model.config.max_seq_length is None  # toy rows up to 17 tokens, cut at 32: not truncated
    texts, labels = toy_texts(200, seed=11)
    texts = [t + " and the film was the film" for t in texts]
    cut = Dataset.from_dict({"text": texts, "labels": labels}).map(
        lambda b: tok(b["text"], truncation=True, max_length=8), batched=True, remove_columns=["text"])
    with pytest.warns(UserWarning, match="truncated at 8 tokens"):
        info = trainer.fit_scheduler(eval_dataset=cut, budgets=[0.6], restarts=1, max_epochs=2)
    assert model.config.max_seq_length == 8
    trainer.save_model(str(tmp_path / "m"))
    clf = pipeline("text-classification", model=str(tmp_path / "m"))
    served = np.mean([o["cost"] for o in clf(texts, budget=0.6)])
    assert served == pytest.approx(info[0.6]["validation"]["mean_cost"], abs=1e-6)
    longer = Dataset.from_dict({"text": texts, "labels": labels}).map(
        lambda b: tok(b["text"], truncation=True, max_length=16), batched=True, remove_columns=["text"])
    with pytest.raises(ValueError, match=r"up to 16 tokens long but the model serves at most 8"):
        trainer.fit_scheduler(eval_dataset=longer, budgets=[0.6])
    with pytest.raises(ValueError, match=r"up to 16 tokens long but the model serves at most 8"):  # streamed too
        trainer.fit_scheduler(eval_dataset=longer.to_iterable_dataset(), budgets=[0.6])
    assert model.config.max_seq_length == 8 and model.config.scheduler_budgets == [0.6]
    reads = []  # a streamed validation set is read twice: once by the length and pairing checks, once predicted

    def rows_read():
        reads.append(1)
        yield from cut

    streamed = IterableDataset.from_generator(rows_read, features=cut.features)
    trainer.fit_scheduler(eval_dataset=streamed, budgets=[0.6], restarts=1, max_epochs=2)
    assert len(reads) == 2 and model.config.scheduler_budgets == [0.6] and model.config.max_seq_length == 8
    with pytest.warns(UserWarning, match=r"truncated at 8 tokens .* but max_seq_length=16 is recorded"):
        trainer.fit_scheduler(eval_dataset=cut, budgets=[0.6], restarts=1, max_epochs=2, max_seq_length=16)
    trainer.fit_scheduler(eval_dataset=longer, budgets=[0.6], restarts=1, max_epochs=2, max_seq_length=16)
    assert model.config.max_seq_length == 16
    with pytest.raises(ValueError, match=r"extend=True: the bank serves at 16 tokens .* this fit at 24"):
        trainer.fit_scheduler(eval_dataset=longer, budgets=[0.8], extend=True, max_seq_length=24)
    with pytest.raises(ValueError, match=r"max_seq_length=65 is longer than this model takes \(64 tokens"):
        trainer.fit_scheduler(eval_dataset=longer, budgets=[0.6], max_seq_length=65)  # the toy model's positions
    # the lengths are read whatever the dataset's format (set_format("torch") as in the course)
    model.config.max_seq_length = None
    with pytest.warns(UserWarning, match="truncated at 8 tokens"):
        trainer.fit_scheduler(eval_dataset=cut.with_format("torch"), budgets=[0.6], restarts=1, max_epochs=2)
    assert model.config.max_seq_length == 8
    # a truncation that cuts few rows (as AG News at 128 tokens: 13 of 2,000 rows at 128, none at 127) is found; a
    # natural longest row or two is not
    rng = np.random.default_rng(0)
    natural = [int(x) for x in rng.integers(5, 56, size=2000)]  # (the toy model takes 64 tokens)
    for tail, found in (([60] * 13, 60), ([57, 57, 59], None)):
        rows = Dataset.from_dict({"attention_mask": [[1] * n for n in natural + tail]})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.config.max_seq_length = None
            assert trainer._fitting_length(model, rows, None) == found
        assert bool([w for w in caught if "look truncated" in str(w.message)]) == (found is not None)
    # a text repeated in the data counts once: 39 texts (lengths 5..42 and 44) listed 5 times each are not rows cut
    # at 44 tokens, while 6 more distinct texts at 44 (7 against none at 43) still are, listed 5 times or once
    ids = [[7 + (i % 3)] * n for i, n in enumerate([*range(5, 43), 44])]
    cut44 = [[9 + i] * 44 for i in range(6)]
    for rows_ids, found in ((ids * 5, None), ((ids + cut44) * 5, 44), (ids + cut44, 44)):
        rows = Dataset.from_dict({"input_ids": rows_ids, "attention_mask": [[1] * len(r) for r in rows_ids]})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.config.max_seq_length = None
            assert trainer._fitting_length(model, rows, None) == found
        assert bool([w for w in caught if "look truncated" in str(w.message)]) == (found is not None)
    # training on rows longer than the recorded length removes it (the next fit records its own)
    model.config.max_seq_length = 8
    trainer.train_dataset = toy_dataset(tok, 16, seed=3)
    trainer.args.max_steps = 1
    with pytest.warns(UserWarning, match=r"the recorded length was removed"):
        trainer.train()
    assert model.config.max_seq_length is None


def test_row_lengths_of_a_dataset_are_counted_as_its_rows_read_one_by_one():
    """The lengths a fit reads from a datasets.Dataset (counted in Arrow) equal the rows read one by one (as a list of
    rows is): padded or not, with or without masks, shuffled and selected, in torch format, a repeated text counted
    once where asked, first occurrences in row order; masks of other lengths than the ids are read row by row."""
    from hf_eenet.trainer import _arrow_row_lengths, _row_lengths

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 40))
        base = [[int(t) for t in rng.integers(1, 7, size=int(rng.integers(0, 7)))] for _ in range(max(1, n // 3))]
        rows = [list(base[int(rng.integers(0, len(base)))]) for _ in range(n)]
        width = max(len(r) for r in rows) + int(rng.integers(0, 3))
        padded = trial % 2 == 0
        data = {"input_ids": [r + [0] * (width - len(r)) if padded else r for r in rows]}
        if trial % 3:
            data["attention_mask"] = [[1] * len(r) + [0] * (width - len(r) if padded else 0) for r in rows]
        ds = Dataset.from_dict(data)
        if trial % 4 == 1:
            ds = ds.shuffle(seed=trial).select(range(int(rng.integers(1, n + 1))))
        listed = [dict(r) for r in ds]  # the rows one by one, in the dataset's order
        for distinct in (False, True):
            got = _row_lengths(ds.with_format("torch") if trial % 5 == 0 else ds, distinct=distinct)
            want = _row_lengths(listed, read_streams=True, distinct=distinct)
            assert got.tolist() == want.tolist(), (trial, distinct)
            assert _arrow_row_lengths(ds, distinct) is not None  # counted in Arrow, not read row by row
        if padded and "attention_mask" in data:  # padded (tokens 1..6, pad 0): one length per distinct text
            assert len(_row_lengths(ds, distinct=True)) == len({tuple(r) for r in ds["input_ids"]})
    assert _row_lengths(Dataset.from_dict({"input_ids": [[5, 6, 7], [5, 6, 7], [5]]}), max_rows=2).tolist() == [3, 3]
    odd = Dataset.from_dict({"input_ids": [[5, 6, 7], [5, 6]], "attention_mask": [[1, 1], [1, 1]]})
    assert _row_lengths(odd).tolist() == [2, 2]  # (the masks are summed, as before)
    # what Arrow cannot count is read row by row, as before: a null inside a mask, ids that are not integers
    holes = Dataset.from_dict({"input_ids": [[5, 6], [7, 8]], "attention_mask": [[1, None], [1, 1]]})
    assert _arrow_row_lengths(holes, False) is None
    floats = Dataset.from_dict({"input_ids": [[2.5], [2.7]]})
    assert _arrow_row_lengths(floats, True) is None and _row_lengths(floats, distinct=True).tolist() == [1, 1]


def test_rows_of_one_length_are_whole_texts_where_their_text_columns_say_so(tok, tmp_path):
    """Templated validation texts of one length (single texts or pairs), kept beside their tokens, are whole texts:
    nothing is recorded and nothing warns (they were taken for a truncation, recorded as config.max_seq_length, and
    the pipeline cut every served input to it). Texts cut at a length are confirmed by their text columns and
    recorded. Without the text columns the length guess stands, and its warning says how to state the length."""
    model = toy_model(seed=4)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=tok)
    texts = [f"the item number {i} is {'good' if i % 2 else 'bad'} today" for i in range(60)]
    labels = [i % 2 for i in range(60)]
    single = Dataset.from_dict({"text": texts, "labels": labels}).map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)
    pairs = Dataset.from_dict({"premise": texts, "hypothesis": texts[::-1], "labels": labels}).map(
        lambda b: tok(b["premise"], b["hypothesis"], truncation=True, max_length=64), batched=True)
    for rows in (single, pairs):
        assert len({sum(m) for m in rows["attention_mask"]}) == 1  # one length: it looks like a truncation
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.config.max_seq_length = None
            assert trainer._fitting_length(model, rows, None) is None
            model.config.max_seq_length = 64  # a recorded length: no false alarm either
            assert trainer._fitting_length(model, rows, None) is None
    longer = [t + " and then some more words follow here" for t in texts]
    cut = Dataset.from_dict({"premise": longer, "hypothesis": longer[::-1], "labels": labels}).map(
        lambda b: tok(b["premise"], b["hypothesis"], truncation=True, max_length=12), batched=True)
    model.config.max_seq_length = None
    with pytest.warns(UserWarning, match=r"are truncated at 12 tokens \(their text columns"):
        assert trainer._fitting_length(model, cut, None) == 12
    # one cut row decides, whatever the order: a whole 12-token text repeated first, or rows sorted by length
    whole = texts[0] + " one two three"
    assert len(tok(whole)["input_ids"]) == 12
    by_length = sorted(longer, key=lambda t: len(tok(t)["input_ids"]))
    for order in ([whole] * 20 + longer, [whole] + by_length):
        rows = Dataset.from_dict({"text": order, "labels": [0] * len(order)}).map(
            lambda b: tok(b["text"], truncation=True, max_length=12), batched=True)
        model.config.max_seq_length = None
        with pytest.warns(UserWarning, match=r"are truncated at 12 tokens"):
            assert trainer._fitting_length(model, rows, None) == 12
    length = sum(single["attention_mask"][0])
    model.config.max_seq_length = None
    with pytest.warns(UserWarning, match=rf"look truncated at {length} tokens .* if the rows are whole texts, pass "
                                         r"fit_scheduler\(tokenized_max_length="):
        assert trainer._fitting_length(model, single.remove_columns(["text"]), None) == length
    # the caller states the max_length the rows were tokenized at: nothing is guessed from their lengths
    bare = single.remove_columns(["text"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for recorded in (None, 64):  # rows below the stated length are whole texts: nothing recorded, no alarm
            model.config.max_seq_length = recorded
            assert trainer._fitting_length(model, bare, None, tokenized_max_length=64) is None
        model.config.max_seq_length = None  # the fit read the rows up to that length: it is the length recorded
        assert trainer._fitting_length(model, bare, None, tokenized_max_length=length) == length
        assert trainer._fitting_length(model, bare, None, tokenized_max_length=32) == 32
        # rows whose lengths cannot be read (a plain torch Dataset): the stated length holds all the same
        plain = torch.utils.data.TensorDataset(torch.ones(4, 3))
        assert trainer._fitting_length(model, plain, None, tokenized_max_length=32) == 32
        assert trainer._fitting_length(model, plain, None) is None
    model.config.max_seq_length = 64
    with pytest.warns(UserWarning, match=rf"tokenized at max_length {length} \(tokenized_max_length\) and reach it, "
                                         r"so some may be cut there while the model serves 64 tokens"):
        assert trainer._fitting_length(model, bare, None, tokenized_max_length=length) is None
    with pytest.raises(ValueError, match=rf"tokenized_max_length={length - 1}, but the validation rows are up to "
                                         rf"{length} tokens long"):
        trainer._fitting_length(model, bare, None, tokenized_max_length=length - 1)
    with pytest.raises(ValueError, match=r"tokenized_max_length must be"):
        trainer._fitting_length(model, bare, None, tokenized_max_length=0)
    # the guess's warning, where the model serves a recorded length, says how to state whole texts
    model.config.max_seq_length = 64
    with pytest.warns(UserWarning, match=rf"look truncated at {length} tokens .* while the model serves 64 tokens .* "
                                         r"if they are whole texts tokenized at max_length 64, pass "
                                         r"tokenized_max_length=64; if they were cut at"):
        assert trainer._fitting_length(model, bare, None) is None
    with pytest.warns(UserWarning, match=r"but max_seq_length=64 is recorded.* pass tokenized_max_length=64\)"):
        assert trainer._fitting_length(model, bare, 64) == 64  # a length stated without saying the rows' own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ... and with it: whole texts, no alarm
        assert trainer._fitting_length(model, bare, 64, tokenized_max_length=64) == 64
    # a validation split without one of the model's classes: fitted, and said so
    torch.manual_seed(0)
    names = {0: "contradiction", 1: "entailment", 2: "neutral"}
    three = hf_eenet.EENetBertForSequenceClassification(hf_eenet.EENetBertConfig(
        **tiny_kwargs(num_labels=3, layers=4, vocab_size=30522), id2label=names,
        label2id={v: k for k, v in names.items()}))
    trainer = hf_eenet.EENetTrainer(model=three, args=targs(tmp_path), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    with pytest.warns(UserWarning, match=r"no row of class\(es\) \['neutral'\]: the bank is fitted without them"):
        trainer.fit_scheduler(eval_dataset=pairs, budgets=[0.6], restarts=1, max_epochs=2)  # labels 0 and 1 only
    assert three.config.scheduler_budgets == [0.6]


def test_fit_scheduler_bank_and_budget_lookup(trained):
    model, info = trained["model"], trained["info"]
    assert model.config.scheduler_budgets == [0.4, 0.6, 0.8]
    assert model.config.default_budget == 0.4 or model.config.default_budget == 0.6
    assert len(model.eenet_schedulers) == 3
    for b, r in info.items():
        assert abs(r["validation"]["mean_cost"] - b) / b < 0.05, (b, r["validation"])
    # between grid points: the largest fitted budget not above the request
    assert model.get_exit_policy(0.7) is model.eenet_schedulers[1]
    assert model.get_exit_policy(0.8) is model.eenet_schedulers[2]
    with pytest.raises(ValueError, match=r"outside the fitted range \[0.4, 0.8\]"):
        model.get_exit_policy(0.3)
    k = model.config.num_exits  # above the bank: refused, and the error names the full model's policy, which runs
    with pytest.raises(ValueError, match=rf"the full model, .* pass exit_policy=hf_eenet.StaticPolicy\({k - 1}, {k}\)"):
        model.get_exit_policy(1.0)
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), exit_policy=hf_eenet.StaticPolicy(k - 1, k))
    assert out.exit_index.tolist() == [k - 1]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model.get_exit_policy(1.5)
    with pytest.raises(TypeError, match="number"):
        model.get_exit_policy("0.5")


def test_bank_fitted_after_bf16_training_is_fitted_on_the_fp32_outputs_it_serves(tok, tmp_path):
    """bf16 training patches the model's forward with autocast; the bank must still be fitted on what the saved model
    computes (fp32): same exits online (in memory and reloaded) as the fit planned, realised cost = planned."""
    model = toy_model(seed=2)
    train, val = toy_dataset(tok, 256, seed=3), toy_dataset(tok, 192, seed=4)
    trainer = hf_eenet.EENetTrainer(
        model=model, args=targs(tmp_path, bf16=True, num_train_epochs=2, per_device_train_batch_size=32,
                                learning_rate=3e-3, label_smoothing_factor=0.1, prediction_loss_only=True),
        train_dataset=train, eval_dataset=val, processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    trainer.fit_scheduler(budgets=[0.5], seed=0, restarts=1, max_epochs=5)
    assert trainer.model.forward.__func__ is not type(trainer.model).forward, "bf16 must have patched the forward"
    trainer.save_model(str(tmp_path / "m"))
    reloaded = type(model).from_pretrained(str(tmp_path / "m")).eval()
    batch = DataCollatorWithPadding(tok)([{k: val[i][k] for k in ("input_ids", "attention_mask")}
                                          for i in range(len(val))])
    sched = model.eenet_schedulers[0]
    with torch.no_grad():
        ref = model.eval().__class__.forward(model, **batch).exit_logits.float().softmax(-1)  # plain fp32 forward
        online = reloaded(**batch, budget=0.5).exit_index
    assert torch.equal(sched.exit_index(ref), online)
    costs = torch.tensor(reloaded.config.exit_costs)
    assert float(costs[online].mean()) == pytest.approx(sched.planned_cost, abs=1e-6)


def test_bank_is_fitted_on_the_very_probabilities_serving_decides_on(tok, tmp_path):
    """Saturated exits (p_max within a few float32 steps of 1): the probabilities the trainer fits on must be bit for
    bit the ones the served forward decides on (a float64 softmax rounded to float32 differs in the last bit for most
    of these rows, and blocks of tied rows then cross a threshold: the bank planned one cost and served another)."""
    model = toy_model(seed=3).eval()
    with torch.no_grad():  # confident exits, as a longer-trained model has them
        for head in model.exit_heads:
            head.out_proj.weight.mul_(900.0)
        model.classifier.weight.mul_(900.0)
    val = toy_dataset(tok, 160, seed=5)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, per_device_eval_batch_size=len(val)),
                                    eval_dataset=val, processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    probs, labels = trainer.collect_exit_predictions()
    batch = DataCollatorWithPadding(tok)([{k: val[i][k] for k in ("input_ids", "attention_mask")}
                                          for i in range(len(val))])
    with torch.no_grad():
        served = hf_eenet.modeling_eenet.exit_softmax(model(**batch).exit_logits).numpy()
    p_max = probs[:, 0].max(-1)
    assert float(np.median(p_max)) > 1 - 1e-4 and (p_max < 1).mean() > 0.5, "the exits must be saturated, below 1"
    assert probs.dtype == np.float32 and np.array_equal(probs, served)
    # hence the realised cost of the fitted bank on its own rows is its planned cost, each text served alone
    trainer.fit_scheduler(budgets=[0.5], seed=0, restarts=1, max_epochs=5)
    sched, costs = model.get_exit_policy(0.5), torch.tensor(model.config.exit_costs)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([val[i]["input_ids"]]), budget=0.5).exit_index
                           for i in range(len(val))])
    assert torch.equal(alone, sched.exit_index(torch.from_numpy(probs)))
    assert float(costs[alone].mean()) == pytest.approx(sched.planned_cost, abs=1e-6)


def test_trainer_loss_smooths_labels_and_refuses_compute_loss_func(tok, tmp_path):
    model = toy_model(seed=3)
    data = toy_dataset(tok, 32, seed=5)
    batch = DataCollatorWithPadding(tok)([data[i] for i in range(16)])
    losses = []
    for eps in (0.0, 0.3):
        trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, label_smoothing_factor=eps),
                                        train_dataset=data, processing_class=tok)
        losses.append(float(trainer.compute_loss(model.eval(), dict(batch))))
    assert losses[0] != pytest.approx(losses[1])
    smoothed = model.multi_exit_loss(model(**{k: v for k, v in batch.items() if k != "labels"}).exit_logits,
                                     batch["labels"], label_smoothing=0.3)
    assert losses[1] == pytest.approx(float(smoothed), rel=1e-5)
    with pytest.raises(ValueError, match="compute_loss_func"):
        hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), compute_loss_func=lambda *a, **k: 0.0)


def test_fit_scheduler_accepts_a_label_column_and_checks_default_budget_first(tok, tmp_path, trained):
    from hf_eenet.costs import ExitCostProfile

    model = toy_model(seed=4)
    val = toy_dataset(tok, 96, seed=6).rename_column("labels", "label")  # GLUE-style column name
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val, processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    profile = ExitCostProfile(exit_layers=[1, 2, 3, 4], layers=[1.0, 2.0, 3.0, 4.0], latency_ms=[4.0, 6.0, 8.0, 10.0])
    # extend=True on a model without a bank: a new bank with the profile's costs (was: every fit refused at the end)
    trainer.fit_scheduler(budgets=[0.5, 0.7], seed=0, restarts=1, max_epochs=3, extend=True,
                          cost_profile=(profile, "latency"))
    assert model.config.scheduler_budgets == [0.5, 0.7] and model.config.exit_costs == pytest.approx([.4, .6, .8, 1])
    with pytest.raises(ValueError, match="default_budget 0.95 is outside"):
        trainer.fit_scheduler(budgets=[0.6, 0.8], seed=0, restarts=1, max_epochs=3, default_budget=0.95)
    assert model.config.scheduler_budgets == [0.5, 0.7], "a refused call must leave the bank as it was"


def test_fit_scheduler_reads_class_labels_by_the_models_class_names(tok, tmp_path):
    """A ClassLabel column that counts the model's classes in another order is read by name (the bank was fitted on
    permuted labels before); names the model does not have are refused; a model without names reads ids as given
    (unless the column's names are those generic names, any case, a subset or in another order)."""
    from datasets import ClassLabel

    model = toy_model(seed=4)  # id2label {0: negative, 1: positive}
    val = toy_dataset(tok, 64, seed=7)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    _, want = trainer.collect_exit_predictions(val)
    flipped = val.map(lambda b: {"labels": [1 - y for y in b["labels"]]}, batched=True)
    for names in (["positive", "negative"], ["Positive", "NEGATIVE"]):
        _, got = trainer.collect_exit_predictions(flipped.cast_column("labels", ClassLabel(names=names)))
        assert np.array_equal(got, want), names
    streamed = flipped.cast_column("labels", ClassLabel(names=["positive", "negative"])).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"counts the classes in another order.*align_labels_with_mapping"):
        trainer.collect_exit_predictions(streamed)  # a stream cannot be re-encoded here: said so, not misread
    _, got = trainer.collect_exit_predictions(val.cast_column("labels", ClassLabel(names=["negative", "positive"])))
    assert np.array_equal(got, want)
    hidden = val.map(lambda b: {"labels": [-1] * len(b["labels"])}, batched=True).cast_column(
        "labels", ClassLabel(names=["positive", "negative"]))  # GLUE-style unlabelled test split: nothing to align
    probs, got = trainer.collect_exit_predictions(hidden, require_labels=False)
    assert got is None and probs.shape[0] == len(val)
    with pytest.raises(ValueError, match=r"ClassLabel with classes \['good', 'bad'\].*\['bad', 'good'\] are not among"):
        trainer.fit_scheduler(flipped.cast_column("labels", ClassLabel(names=["good", "bad"])), budgets=[0.5])
    assert not model.config.scheduler_budgets
    model.config.id2label, model.config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    _, got = trainer.collect_exit_predictions(flipped.cast_column("labels", ClassLabel(names=["good", "bad"])))
    assert np.array_equal(got, 1 - want)  # no names to read by: the ids as given
    for names in (["LABEL_1", "LABEL_0"], ["label_1", "label_0"]):  # the generic names in another order, any case
        _, got = trainer.collect_exit_predictions(flipped.cast_column("labels", ClassLabel(names=names)))
        assert np.array_equal(got, want), names  # read by name
    ones = flipped.filter(lambda r: r["labels"] == 0)  # a subset of the generic names: LABEL_1 alone
    _, got = trainer.collect_exit_predictions(ones.cast_column("labels", ClassLabel(names=["LABEL_1"])))
    assert len(got) == int(want.sum()) and (got == 1).all()
    # a split with some -1 labels in an out-of-order ClassLabel: refused by name (datasets' own re-encoding failed first)
    partial = flipped.map(lambda r, i: {"labels": -1 if i == 0 else r["labels"]}, with_indices=True).cast_column(
        "labels", ClassLabel(names=["LABEL_1", "LABEL_0"]))
    with pytest.raises(ValueError, match=r"label column 'labels': labels must lie in \[0, 2\).*every label -1"):
        trainer.collect_exit_predictions(partial, require_labels=False)


def test_train_and_evaluate_read_class_labels_by_the_models_class_names(tok, tmp_path):
    """Training and evaluation read a ClassLabel column in another order by name, as the bank's fit does (they read
    the raw ids before: evaluate() said accuracy 1.0 on the data's ids while the bank was fitted on permuted labels,
    accuracy 0.0, and the pipeline served swapped labels)."""
    from datasets import ClassLabel

    def flipped(n, seed):
        return toy_dataset(tok, n, seed=seed).map(lambda b: {"labels": [1 - y for y in b["labels"]]}, batched=True
                                                  ).cast_column("labels", ClassLabel(names=["positive", "negative"]))

    model = toy_model(seed=1)  # id2label {0: negative, 1: positive}
    trainer = hf_eenet.EENetTrainer(
        model=model, args=targs(tmp_path, num_train_epochs=3, per_device_train_batch_size=32, learning_rate=3e-3),
        train_dataset=flipped(512, 1), eval_dataset=flipped(128, 2), processing_class=tok,
        data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    ev = trainer.evaluate()
    info = trainer.fit_scheduler(budgets=[0.8], restarts=1, max_epochs=2)
    assert ev["eval_accuracy"] > 0.8 and info[0.8]["validation"]["accuracy"] > 0.8, (ev, info)
    model.eval()
    enc = tok(["a good great superb film", "a bad awful boring film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in pred] == ["positive", "negative"]
    maps = [src for src, aligned, _ in trainer._label_aligned.values() if aligned is not src]
    assert len(maps) == 2  # each dataset re-encoded once (evaluation every epoch and the fit reuse it)
    test = flipped(32, 3)
    with pytest.warns(UserWarning, match=r"ClassLabel with classes \['positive', 'negative'\].*re-encoded in the "
                                         r"model's order.*predict\(\).label_ids"):
        out = trainer.predict(test)
    assert np.array_equal(out.label_ids, 1 - np.asarray(test["labels"]))  # the model's ids, as the warning says
    # a torch-formatted dataset, and one holding the ignore index -100 (datasets' own re-encoding failed on both)
    torch_rows = flipped(32, 5).with_format("torch")
    with pytest.warns(UserWarning, match="re-encoded in the model's order"):
        out = trainer.predict(torch_rows)
    assert np.array_equal(out.label_ids, 1 - np.asarray(list(torch_rows.with_format(None)["labels"])))
    assert torch_rows.format["type"] == "torch"
    ignored = flipped(32, 6).map(lambda b: {"labels": [-100] + b["labels"][1:]}, batched=True, batch_size=None,
                                 features=flipped(32, 6).features)
    with pytest.warns(UserWarning, match="re-encoded in the model's order"):
        out = trainer.predict(ignored)
    want = 1 - np.asarray(ignored["labels"])
    want[0] = -100
    assert np.array_equal(out.label_ids, want)
    # both `label` and `labels` in another order (the collators differ in which one they read): each re-encoded
    both = flipped(32, 7).map(lambda b: {"label": b["labels"]}, batched=True).cast_column(
        "label", ClassLabel(names=["positive", "negative"]))
    with pytest.warns(UserWarning, match="re-encoded in the model's order"):
        aligned = trainer._labels_in_model_order(both, strict=False)
    for column in ("label", "labels"):
        assert aligned[column] == [1 - y for y in both[column]], column
        assert aligned.features[column].names == ["negative", "positive"]
    # class names the model does not have (fine-tuning on another dataset's classes): read as given, as the stock
    # Trainer reads them (train / evaluate / predict were refused by name for a while); the bank's fit refuses them
    other = toy_dataset(tok, 64, seed=4).cast_column("labels", ClassLabel(names=["neg", "pos"]))
    trainer.train_dataset = other
    trainer.train()
    out = trainer.predict(other)
    assert np.array_equal(out.label_ids, np.asarray(other["labels"]))
    with pytest.raises(ValueError, match=r"\['neg', 'pos'\] are not among them"):
        trainer.fit_scheduler(other, budgets=[0.8])


def test_training_labels_out_of_range_are_named(tok, tmp_path):
    """Labels 1..C (or more classes than the model has) stop training, evaluation and the fit on a torch Dataset with
    an error that names the range and the fix (was torch's bare IndexError 'Target 2 is out of bounds')."""
    shifted = toy_dataset(tok, 32, seed=3).map(lambda b: {"labels": [y + 1 for y in b["labels"]]}, batched=True)
    trainer = hf_eenet.EENetTrainer(model=toy_model(seed=1), args=targs(tmp_path, max_steps=1), train_dataset=shifted,
                                    processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match=r"^the labels must be class ids in \[0, 2\).*run from [12] to 2.*subtract 1"):
        trainer.train()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(shifted)

        def __getitem__(self, i):
            return shifted[i]

    with pytest.raises(ValueError, match=r"^the labels must be class ids in \[0, 2\).*run from [12] to 2"):
        trainer.fit_scheduler(Rows(), budgets=[0.5])  # (batch by batch: a torch Dataset has no column to read)
    # the ignore index -100 is no class id; -1 (an unlabelled split) gets its own advice, also out of a ClassLabel
    # in another order (datasets' re-encoding failed on it first)
    ignored = shifted.map(lambda b: {"labels": [-100] * 8 + [2] + [0] * (len(b["labels"]) - 9)}, batched=True,
                          batch_size=None)
    whole = hf_eenet.EENetTrainer(model=toy_model(seed=1), args=targs(tmp_path, max_steps=1,
                                                                    per_device_train_batch_size=len(ignored)),
                                  train_dataset=ignored, processing_class=tok,
                                  data_collator=DataCollatorWithPadding(tok))  # one batch: every row in it
    with pytest.raises(ValueError, match=r"run from 0 to 2:"):
        whole.train()
    from datasets import ClassLabel

    hidden = shifted.map(lambda b: {"labels": [-1] * len(b["labels"])}, batched=True).cast_column(
        "labels", ClassLabel(names=["positive", "negative"]))
    for run in (lambda: trainer.predict(hidden), lambda: trainer.evaluate(hidden)):
        with pytest.raises(ValueError, match=r"labels -1 mark rows without a label .*drop the label column"):
            run()


def test_out_of_range_labels_are_named_as_batches_are_collated(tok, tmp_path, monkeypatch):
    """Class ids outside the model's classes are named on the host as the loader collates the batch, before any
    forward: on a GPU the loss raises no IndexError (CUDA's device-side assert stops the run without a message), so
    the check in compute_loss alone named nothing there. The check is picklable, for loader workers."""
    import pickle

    from hf_eenet.trainer import _LabelRangeCheck

    shifted = toy_dataset(tok, 32, seed=3).map(lambda b: {"labels": [y + 1 for y in b["labels"]]}, batched=True)
    model = toy_model(seed=1)
    calls = []
    monkeypatch.setattr(model, "multi_exit_loss", lambda logits, labels, **kw: calls.append(1) or logits.sum())
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=1), train_dataset=shifted,
                                    eval_dataset=shifted, processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    for run in (trainer.train, trainer.evaluate):  # a loss that does not raise, as on a GPU
        with pytest.raises(ValueError, match=r"^the labels must be class ids in \[0, 2\).*subtract 1"):
            run()
    assert not calls and trainer.data_collator.__class__ is DataCollatorWithPadding  # (the collator given back)
    check = pickle.loads(pickle.dumps(_LabelRangeCheck(DataCollatorWithPadding(tok), 2)))
    with pytest.raises(ValueError, match="run from 1 to 2"):
        check([shifted[i] for i in range(4)])
    fine = toy_dataset(tok, 8, seed=3)
    assert check([fine[i] for i in range(4)])["labels"].tolist() == fine["labels"][:4]
    # labels shaped [B, 1] (the loss reads labels.view(-1)): checked too (review 85: they went past)
    from hf_eenet.trainer import _refuse_labels_out_of_range

    column = _LabelRangeCheck(lambda rows: {"labels": torch.tensor([[r] for r in rows])}, 2)
    with pytest.raises(ValueError, match="run from 1 to 2"):
        column([1, 2])
    assert column([0, 1])["labels"].shape == (2, 1)
    with pytest.raises(ValueError, match="run from 0 to 2"):
        _refuse_labels_out_of_range(torch.tensor([[0], [2]]), model.config)


def test_a_model_trained_on_pairs_and_then_on_single_texts_reads_single_texts(tok, tmp_path):
    """Fine-tuning a pair model on single texts records single texts (config.sentence_pairs stayed True before: no bank
    could be fitted on the retrained model and its pipeline refused single texts); training on pairs again keeps it;
    a run that fails before a step leaves the record as it was."""
    texts, labels = toy_texts(64, seed=9)
    pairs = Dataset.from_dict({"a": texts, "b": texts[::-1], "labels": labels}).map(
        lambda b: tok(b["a"], b["b"], truncation=True, max_length=48), batched=True, remove_columns=["a", "b"])
    single = toy_dataset(tok, 64, seed=8)
    model = toy_model(seed=4)
    model.config.sentence_pairs = True
    for data, want in ((pairs, True), (single, False)):
        trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=2, per_device_train_batch_size=16),
                                        train_dataset=data, processing_class=tok,
                                        data_collator=DataCollatorWithPadding(tok))
        trainer.train()
        assert model.config.sentence_pairs is want
    trainer.fit_scheduler(single, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.scheduler_budgets == [0.5] and model.config.sentence_pairs is False
    model.config.sentence_pairs = True  # as loaded from a pair model
    broken = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=2), train_dataset=single,
                                   processing_class=tok, data_collator=lambda rows: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        broken.train()
    assert model.config.sentence_pairs is True and model.config.scheduler_budgets == [0.5]  # restored as it was


def test_resuming_from_a_checkpoint_with_other_exits_is_refused(tok, tmp_path):
    """A checkpoint whose exits sit at other layers, pool otherwise or count other classes is refused by name (its
    heads loaded silently into the resuming model's exits before: a head trained for layer 2 served layer 1)."""
    data = toy_dataset(tok, 32, seed=5)
    kw = dict(per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=2)
    hf_eenet.EENetTrainer(model=toy_model(seed=6, exit_layers=[2, 4]), args=targs(tmp_path, **kw), train_dataset=data,
                          processing_class=tok, data_collator=DataCollatorWithPadding(tok)).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    cases = ((dict(exit_layers=[1, 4]), r"exit_layers \[2, 4\] differ from the model's exit_layers \[1, 4\]"),
             (dict(exit_layers=[2, 4], exit_pooling="mean"), r"exit_pooling cls differ .* exit_pooling mean"))
    for over, match in cases:
        model = toy_model(seed=9, **over)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path / "b", **dict(kw, max_steps=3)),
                                        train_dataset=data, processing_class=tok,
                                        data_collator=DataCollatorWithPadding(tok))
        with pytest.raises(ValueError, match=match):
            trainer.train(resume_from_checkpoint=str(ckpt))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing loaded
    swapped = toy_model(seed=9, exit_layers=[2, 4])
    swapped.config.id2label, swapped.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    trainer = hf_eenet.EENetTrainer(model=swapped, args=targs(tmp_path / "b", **dict(kw, max_steps=3)),
                                    train_dataset=data, processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match=r"id2label \['negative', 'positive'\] differ from the model's id2label "
                                         r"\['positive', 'negative'\]"):  # head row 0 is another class here
        trainer.train(resume_from_checkpoint=str(ckpt))
    # DeepSpeed / FSDP load the checkpoint inside the training loop, after prepare (not _load_from_checkpoint)
    other = hf_eenet.EENetTrainer(model=toy_model(seed=9, exit_layers=[1, 4]),
                                  args=targs(tmp_path / "d", **dict(kw, max_steps=3)), train_dataset=data,
                                  processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match=r"exit_layers \[2, 4\] differ"):
        other._inner_training_loop(batch_size=8, args=other.args, resume_from_checkpoint=str(ckpt))
    assert other.state.global_step == 0
    resumed = toy_model(seed=9, exit_layers=[2, 4])  # the checkpoint's own exits resume
    hf_eenet.EENetTrainer(model=resumed, args=targs(tmp_path / "c", **dict(kw, max_steps=3)), train_dataset=data,
                          processing_class=tok, data_collator=DataCollatorWithPadding(tok)).train(
        resume_from_checkpoint=str(ckpt))


def test_checkpoints_on_a_node_whose_rank_writes_no_model(tok, tmp_path, monkeypatch):
    """save_on_each_node=True on a multi-node run: args.should_save holds on every node's local rank 0, but
    transformers writes a model on global rank 0 only. Such a rank's checkpoints hold the trainer's state and no model
    files (review 85: the save was refused and the run stopped; no config / code without weights is written)."""
    model = toy_model(seed=2)
    monkeypatch.setattr(type(model), "should_save_on_this_rank", lambda self, is_main_process: False)
    calls, real = [], type(model).save_pretrained
    monkeypatch.setattr(type(model), "save_pretrained",
                        lambda self, d, *a, **k: calls.append(k.get("is_main_process")) or real(self, d, *a, **k))
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=2, per_device_train_batch_size=8,
                                                            save_strategy="steps", save_steps=2,
                                                            save_on_each_node=True),
                                    train_dataset=toy_dataset(tok, 16), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").exists()
    assert not [p.name for p in ckpt.iterdir() if p.name.endswith((".safetensors", ".py")) or p.name == "config.json"]
    # the stock save still runs there (a model sharded at load joins its gather / barrier: review 86), writing
    # nothing; the tokenizer is saved as the stock Trainer does
    assert calls == [False] and (ckpt / "tokenizer_config.json").exists()
    trainer.processing_class = None  # the stock fallback: the collator's tokenizer
    trainer.save_model(str(tmp_path / "fallback"))
    assert (tmp_path / "fallback" / "tokenizer_config.json").exists()


def test_one_word_validation_rows_are_not_taken_for_a_cut(tok, tmp_path):
    """Validation rows all of one word (the text column removed) pile up at 3 tokens, which is no cut anyone
    tokenizes at: warned about, nothing recorded (config.max_seq_length = 3 was recorded before, and the pipeline
    served '[CLS] <first word> [SEP]'); real cuts, also of rows shorter than the training rows, are recorded."""
    rng = np.random.default_rng(2)
    ys = rng.integers(0, 2, 64).tolist()
    words = [str(rng.choice(WORDS_POS if y else WORDS_NEG)) for y in ys]
    val = Dataset.from_dict({"text": words, "labels": ys}).map(
        lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
    model = toy_model(seed=1)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=2),
                                    train_dataset=toy_dataset(tok, 64, 1), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    with pytest.warns(UserWarning, match=r"look truncated at 3 tokens.*one token of text .*no length is recorded"):
        trainer.fit_scheduler(val, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.max_seq_length is None
    # validation rows tokenized shorter than the training rows (cut at 10, training rows up to 32): recorded
    texts, ys = toy_texts(200, seed=5)
    short = Dataset.from_dict({"text": texts, "labels": ys}).map(
        lambda b: tok(b["text"], truncation=True, max_length=10), batched=True, remove_columns=["text"])
    with pytest.warns(UserWarning, match=r"config.max_seq_length = 10 is recorded"):
        trainer.fit_scheduler(short, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.max_seq_length == 10
    # long validation texts really cut at 12 tokens (most training rows are shorter): still recorded
    texts, ys = toy_texts(200, seed=3)
    cut = Dataset.from_dict({"text": [" ".join([t] * 3) for t in texts], "labels": ys}).map(
        lambda b: tok(b["text"], truncation=True, max_length=12), batched=True, remove_columns=["text"])
    model.config.max_seq_length = None
    with pytest.warns(UserWarning, match=r"config.max_seq_length = 12 is recorded"):
        trainer.fit_scheduler(cut, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.max_seq_length == 12


def test_fit_scheduler_records_and_checks_sentence_pairs_and_names_string_labels(tok, tmp_path):
    """The bank is fitted on pairs or single texts (the rows' token types tell): a model recorded as the other kind
    is refused (its pipeline would never serve such inputs), an unrecorded one records what it was fitted on, and a
    label column of strings gets an error that says so (was: the collator's hint about padding)."""
    model = toy_model(seed=4)
    texts, labels = toy_texts(48, seed=9)
    single = toy_dataset(tok, 48, seed=8)
    pairs = Dataset.from_dict({"a": texts, "b": texts[::-1], "labels": labels}).map(
        lambda b: tok(b["a"], b["b"], truncation=True, max_length=48), batched=True, remove_columns=["a", "b"])
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    assert model.config.sentence_pairs is None
    trainer.fit_scheduler(pairs, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.sentence_pairs is True
    for rows in (single, single.to_iterable_dataset()):
        with pytest.raises(ValueError, match=r"trained on pairs .* the validation rows are single texts"):
            trainer.fit_scheduler(rows, budgets=[0.6])
    model.config.sentence_pairs = False
    with pytest.raises(ValueError, match=r"trained on single texts .* the validation rows are sentence pairs"):
        trainer.fit_scheduler(pairs, budgets=[0.6])
    assert model.config.scheduler_budgets == [0.5]
    strings = Dataset.from_dict({"text": texts, "label": [["negative", "positive"][y] for y in labels]}).map(
        lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
    with pytest.raises(ValueError, match=r"label column 'label' holds strings \(\['negative', 'positive'\]\)"):
        trainer.fit_scheduler(strings, budgets=[0.6])


def test_per_batch_predictions_work_for_metrics_and_the_bank(tok, tmp_path):
    """eval_do_concat_batches=False hands lists of per-batch outputs to compute_metrics and to the bank's
    predictions: the same per-exit metrics and exit probabilities as concatenated outputs."""
    model = toy_model(seed=5)
    val = toy_dataset(tok, 80, seed=7)
    outs = []
    for concat in (True, False):
        trainer = hf_eenet.EENetTrainer(
            model=model, args=targs(tmp_path, eval_do_concat_batches=concat, per_device_eval_batch_size=16),
            eval_dataset=val, processing_class=tok, data_collator=DataCollatorWithPadding(tok))
        metrics = trainer.evaluate()
        probs, labels = trainer.collect_exit_predictions(val)
        outs.append(({k: v for k, v in metrics.items() if "accuracy" in k}, probs, labels))
    assert outs[0][0] == outs[1][0] and len(outs[0][0]) == 5
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-6)
    assert np.array_equal(outs[0][2], outs[1][2])


def test_user_metric_hooks_get_stock_shaped_predictions_and_do_not_reach_the_bank(tok, tmp_path):
    """A tutorial compute_metrics (``preds, labels = p; np.argmax(preds, axis=1)``) and a memory-saving
    preprocess_logits_for_metrics work as with the stock model; fit_scheduler reads the exits whatever the hooks."""
    model = toy_model(seed=5)
    val = toy_dataset(tok, 48, seed=7)

    def tutorial(p):
        preds, labels = p
        return {"acc": float((np.argmax(preds, axis=1) == labels).mean())}

    ref = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val,
                                data_collator=DataCollatorWithPadding(tok))
    ref_metrics = ref.evaluate()
    assert isinstance(ref.predict(val).predictions, tuple)  # default metrics: every output kept
    ref_probs, _ = ref.collect_exit_predictions(val)
    for kwargs in ({"compute_metrics": tutorial},
                   {"compute_metrics": tutorial, "preprocess_logits_for_metrics": lambda logits, y: logits},
                   {"compute_metrics": None}):
        trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val,
                                        data_collator=DataCollatorWithPadding(tok), **kwargs)
        pred = trainer.predict(val)
        assert isinstance(pred.predictions, np.ndarray) and pred.predictions.shape == (48, 2)
        if kwargs["compute_metrics"] is not None:
            assert trainer.evaluate()["eval_acc"] == pytest.approx(ref_metrics["eval_accuracy"])
        else:  # asked for: every output
            assert isinstance(trainer.predict(val, ignore_keys=[]).predictions, tuple)
        info = trainer.fit_scheduler(val, budgets=[0.6])
        assert 0.6 in info
        probs, _ = trainer.collect_exit_predictions(val)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-6)
        assert trainer.compute_metrics is kwargs["compute_metrics"]  # hooks restored
    # a metric built on compute_exit_metrics asks for the exits' outputs (exit_outputs=True); without it, the error
    # says so
    wrapped = lambda p: {**hf_eenet.trainer.compute_exit_metrics(p), "n": 1.0}  # noqa: E731
    plain = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val, compute_metrics=wrapped,
                                  data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match=r"exit_outputs=True"):
        plain.evaluate()
    asked = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val, compute_metrics=wrapped,
                                  data_collator=DataCollatorWithPadding(tok), exit_outputs=True)
    got = asked.evaluate()
    assert got["eval_accuracy_exit_2"] == ref_metrics["eval_accuracy_exit_2"] and got["eval_n"] == 1.0


def test_batch_eval_metrics_and_multi_label_metrics(tok, tmp_path):
    model = toy_model(seed=5)
    val = toy_dataset(tok, 80, seed=7)
    full = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), eval_dataset=val,
                                 data_collator=DataCollatorWithPadding(tok)).evaluate()
    batched = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, batch_eval_metrics=True,
                                                             per_device_eval_batch_size=16),
                                    eval_dataset=val, data_collator=DataCollatorWithPadding(tok))
    assert isinstance(batched.compute_metrics, hf_eenet.trainer.BatchedExitMetrics)
    batched.compute_metrics._logits.append(np.zeros((3, 4, 2)))  # left by an evaluation that was interrupted
    batched.compute_metrics._labels.append(np.zeros(3, dtype=np.int64))
    got = batched.evaluate()
    for k in range(1, 5):
        assert got[f"eval_accuracy_exit_{k}"] == pytest.approx(full[f"eval_accuracy_exit_{k}"])
    assert batched.fit_scheduler(val, budgets=[0.6])  # the bank's predictions are kept under batch_eval_metrics
    # multi-label: exact-match accuracy per exit; the bank is refused with one clear message
    logits = np.array([[[2.0, -1.0, 3.0], [-2.0, -1.0, 3.0]], [[-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]]])
    labels = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    m = hf_eenet.trainer.compute_exit_metrics(hf_eenet.trainer.EvalPrediction(predictions=(logits[:, -1], logits),
                                                                              label_ids=labels))
    assert m == {"accuracy_exit_1": 1.0, "accuracy_exit_2": 0.5, "accuracy": 0.5}
    ml = toy_model(seed=5, problem_type="multi_label_classification")
    trainer = hf_eenet.EENetTrainer(model=ml, args=targs(tmp_path), eval_dataset=val,
                                    data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match="single-label classifier"):
        trainer.fit_scheduler(val, budgets=[0.6])


def test_fit_scheduler_names_the_problem_with_a_dict_of_eval_datasets(tok, tmp_path):
    val = toy_dataset(tok, 32, seed=7)
    trainer = hf_eenet.EENetTrainer(model=toy_model(seed=5), args=targs(tmp_path),
                                    eval_dataset={"val": val, "test": val}, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(ValueError, match=r"dict of several datasets \(\['test', 'val'\]\)"):
        trainer.fit_scheduler(budgets=[0.6])
    assert trainer.fit_scheduler(trainer.eval_dataset["val"], budgets=[0.6])


def test_save_drops_a_stale_pickle_and_checkpoint_pushes_carry_the_code(tok, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_args.bin").write_bytes(b"stale pickle from an earlier run")
    (out / "notes.txt").write_text("kept")
    trainer = hf_eenet.EENetTrainer(model=toy_model(seed=5), args=targs(tmp_path), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    trainer.save_model(str(out))
    assert not (out / "training_args.bin").exists() and (out / "training_args.json").exists()
    assert (out / "notes.txt").read_text() == "kept"
    # a push during training (hub_strategy every_save) uploads output_dir after copying files from the checkpoint:
    # the remote code and pipeline code go with them, so the pushed repo loads without hf_eenet; no pickle is
    # written or uploaded (not even a stale training_args.bin left in output_dir by a stock run)
    ckpt = tmp_path / "checkpoint-2"
    trainer.save_model(str(ckpt))
    for resume_state in ("optimizer.pt", "rng_state.pth"):  # what a Trainer checkpoint holds besides the model
        (ckpt / resume_state).write_bytes(b"resume state")
    push_dir = tmp_path / "push"
    trainer.args.output_dir = str(push_dir)
    uploads = []
    import transformers.trainer as stock_trainer

    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: True)
    assert trainer.args.hub_strategy == "every_save"  # the default: a push at every save
    trainer.hub_model_id = "user/toy"
    trainer.state.epoch = 1.0
    trainer.push_in_progress = None

    class FakeApi:
        def upload_folder(self, folder_path, ignore_patterns=(), path_in_repo=None, **kw):
            names = sorted(n for n in os.listdir(folder_path)
                           if not any(fnmatch.fnmatch(n, pat) for pat in ignore_patterns or ()))
            uploads.append((path_in_repo, names, kw["commit_message"]))
            done = concurrent.futures.Future()
            done.set_result(None)
            return done

    monkeypatch.setattr(stock_trainer, "hf_api", lambda: FakeApi())
    push_dir.mkdir()
    (push_dir / "training_args.bin").write_bytes(b"stale pickle from a stock run")
    trainer._push_from_checkpoint(str(ckpt))
    [(where, files, message)] = uploads
    assert where is None and message == "Training in progress, epoch 1"
    for needed in ("config.json", "model.safetensors", "modeling_eenet.py", "configuration_eenet.py",
                   "pipeline_eenet.py", "training_args.json", "tokenizer.json"):
        assert needed in files, (needed, files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], files
    assert (push_dir / "training_args.bin").read_bytes() == b"stale pickle from a stock run"  # not rewritten
    # hub_strategy="checkpoint" also uploads the checkpoint (with its resume state, as the stock push) minus the
    # pickle; "end" pushes nothing during training
    uploads.clear()
    (ckpt / "training_args.bin").write_bytes(b"pickle")
    trainer.args.hub_strategy = "checkpoint"
    trainer._push_from_checkpoint(str(ckpt))
    (_, files, _), (where, ckpt_files, message) = uploads
    assert where == "last-checkpoint" and message.endswith(", checkpoint")
    assert "optimizer.pt" in ckpt_files and "training_args.bin" not in ckpt_files + files
    uploads.clear()
    trainer.args.hub_strategy = "end"
    trainer._push_from_checkpoint(str(ckpt))
    assert uploads == []
    # the copy into output_dir is one save: a copy that fails halfway (disk full) leaves output_dir as it was, never
    # the checkpoint's config beside the old weights
    trainer.args.hub_strategy = "every_save"
    before = {n: (push_dir / n).read_bytes() for n in ("config.json", "model.safetensors")}
    other = tmp_path / "checkpoint-3"
    hf_eenet.EENetTrainer(model=toy_model(seed=8), args=targs(tmp_path), processing_class=tok).save_model(str(other))
    import hf_eenet.trainer as trainer_module

    real_copy = trainer_module.shutil.copy

    def copy(src, dst, *a, **kw):
        if os.path.basename(src) == "model.safetensors":
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(trainer_module.shutil, "copy", copy)
    with pytest.raises(OSError, match="No space left"):
        trainer._push_from_checkpoint(str(other))
    assert {n: (push_dir / n).read_bytes() for n in before} == before
    monkeypatch.setattr(trainer_module.shutil, "copy", real_copy)
    # a checkpoint save killed while it was written leaves .checkpoint-N.saving-* beside it: never uploaded
    (push_dir / ".checkpoint-4.saving-abcd1234").mkdir()
    (push_dir / ".checkpoint-4.saving-abcd1234" / "model.safetensors").write_bytes(b"half")
    uploads.clear()
    trainer._push_from_checkpoint(str(other))
    [(_, files, _)] = uploads
    assert ".checkpoint-4.saving-abcd1234" not in files and "model.safetensors" in files
    # the push at the end (the stock push_to_hub uploads output_dir as a whole) mends such leftovers first
    from transformers import Trainer

    seen = []
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, *a, **kw: seen.append(sorted(os.listdir(push_dir))))
    trainer.push_to_hub()
    assert seen and not [n for n in seen[0] if ".saving-" in n]


def test_saved_model_reloads_with_identical_decisions(trained, tok):
    from transformers import AutoModelForSequenceClassification

    d = trained["dir"]
    files = os.listdir(d)
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["scheduler_budgets"] == [0.4, 0.6, 0.8] and "auto_map" in cfg
    again = AutoModelForSequenceClassification.from_pretrained(d).eval()
    texts, _ = toy_texts(40, seed=9)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        for b in (0.4, 0.6, 0.8):
            o1, o2 = trained["model"](**batch, budget=b), again(**batch, budget=b)
            assert torch.equal(o1.exit_index, o2.exit_index)
            torch.testing.assert_close(o1.logits, o2.logits, atol=1e-6, rtol=1e-6)


def test_budget_early_exit_matches_offline_scheduler(trained, tok):
    model = trained["model"]
    texts, _ = toy_texts(48, seed=10)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).exit_logits.softmax(-1)
        for b in (0.4, 0.8):
            sched = model.get_exit_policy(b)
            online = model(**batch, budget=b).exit_index
            assert torch.equal(online, sched.exit_index(probs))
    assert len(set(model(**batch, budget=0.4).exit_index.tolist())) >= 2


# --------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def clf(trained):
    return pipeline("text-classification", model=trained["dir"])


def test_pipeline_fields_budget_and_batch_parity(clf, trained):
    assert isinstance(clf, hf_eenet.EENetTextClassificationPipeline)
    texts, _ = toy_texts(20, seed=11)
    one = clf(texts, budget=0.4, batch_size=1)
    many = clf(texts, budget=0.4, batch_size=8)
    assert len(one) == 20 and set(one[0]) == {"label", "score", "exit_layer", "cost"}
    assert one[0]["label"] in ("negative", "positive")
    for a, b in zip(one, many):
        assert a["label"] == b["label"] and a["exit_layer"] == b["exit_layer"]
        assert math.isclose(a["score"], b["score"], abs_tol=1e-4)
    layers = {r["exit_layer"] for r in many}
    assert layers <= set(trained["model"].config.exit_layers)
    costs = dict(zip(trained["model"].config.exit_layers, trained["model"].config.exit_costs))
    # exactly the config's cost, as the CLI and the recipe's predictions write it (not a float32 rounding of it)
    assert all(r["cost"] == costs[r["exit_layer"]] for r in one + many)
    mean_lo = np.mean([r["cost"] for r in clf(texts, budget=0.4, batch_size=8)])
    mean_hi = np.mean([r["cost"] for r in clf(texts, budget=0.8, batch_size=8)])
    assert mean_lo < mean_hi
    # default budget from the config when none is given
    d = trained["model"].config.default_budget
    assert [r["exit_layer"] for r in clf(texts, batch_size=8)] == [r["exit_layer"] for r in clf(texts, budget=d, batch_size=8)]


def test_pipeline_top_k_and_truncation(clf):
    res = clf("a good film", budget=0.6, top_k=None)
    assert len(res) == 2 and {r["label"] for r in res} == {"negative", "positive"} and "exit_layer" in res[0]
    assert res[0]["score"] >= res[1]["score"]
    long_text = " ".join(["good"] * 10_000)
    out = clf(long_text, budget=0.6)
    assert out[0]["label"] in ("negative", "positive")


@pytest.mark.parametrize(
    "inputs, kwargs, err, match",
    [
        ("", {}, ValueError, "empty string"),
        ("   ", {}, ValueError, "empty string"),
        (None, {}, ValueError, "None"),
        (["ok", 3], {}, TypeError, r"must be str.*inputs\[1\]"),
        (["ok"] * 7 + [""] + ["ok"], {}, ValueError, r"inputs\[7\] is an empty string"),
        (["ok"] * 7 + [""] + ["ok"], {"batch_size": 4}, ValueError, r"inputs\[7\] is an empty string"),
        (["ok", None, "ok"], {}, ValueError, r"inputs\[1\] is None"),
        (["ok", {"text": "ok", "text_pair": " "}], {}, ValueError, r"inputs\[1\]\['text_pair'\] is an empty"),
        ("fine", {"budget": float("nan")}, ValueError, r"\(0, 1\]"),
        ("fine", {"budget": 0.0}, ValueError, r"\(0, 1\]"),
        ("fine", {"budget": 1.5}, ValueError, r"\(0, 1\]"),
        ("fine", {"budget": 0.2}, ValueError, "outside the fitted range"),
    ],
)
def test_pipeline_bad_input(clf, inputs, kwargs, err, match):
    with pytest.raises(err, match=match):
        clf(inputs, **kwargs)


def test_budget_on_model_without_scheduler_says_how_to_fit(tok):
    p = pipeline("text-classification", model=toy_model().eval(), tokenizer=tok)
    assert "exit_layer" in p("good")[0]  # no bank, no budget: the full model
    with pytest.raises(ValueError, match="fit_scheduler"):
        p("good", budget=0.5)


def test_pipeline_thread_safety(clf):
    texts, _ = toy_texts(24, seed=12)
    budgets = [0.4, 0.6, 0.8, 0.4]
    expected = [clf(texts, budget=b, batch_size=4) for b in budgets]
    got, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(3):
                got[i] = clf(texts, budget=budgets[i], batch_size=4)
                assert got[i] == expected[i]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == expected


def test_pipeline_reloads_without_hf_eenet(clf, trained, tmp_path):
    """push_to_hub path: the folder carries auto_map, custom_pipelines and code; a clean process needs no hf_eenet."""
    d = tmp_path / "hub"
    clf.save_pretrained(str(d))
    cfg = json.loads((d / "config.json").read_text())
    assert list(cfg["custom_pipelines"]) == ["text-classification"] and "auto_map" in cfg
    assert (d / "pipeline_eenet.py").exists() and (d / "modeling_eenet.py").exists()
    texts, _ = toy_texts(12, seed=13)
    expect = clf(texts, budget=0.6, batch_size=4)
    script = textwrap.dedent(f"""
        import json, sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hf_eenet" or name.startswith("hf_eenet."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        clf = pipeline(model={str(d)!r}, trust_remote_code=True)
        assert "hf_eenet" not in type(clf).__module__
        out = clf({texts!r}, budget=0.6, batch_size=4)
        # a pipeline built from the model object (custom_pipelines is not read then) honours budget= too
        model = AutoModelForSequenceClassification.from_pretrained({str(d)!r}, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained({str(d)!r}, trust_remote_code=True)
        obj = pipeline("text-classification", model=model, tokenizer=tok)
        assert obj({texts!r}, budget=0.6, batch_size=4) == out, "model-object pipeline ignored budget="
        try:
            obj({texts!r}, budget=0.01)
            raise SystemExit("an unfitted budget was accepted")
        except ValueError:
            pass
        # every other model still gets the stock pipeline
        from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline
        plain = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1,
                                                         num_attention_heads=1, intermediate_size=8))
        stock = pipeline("text-classification", model=plain, tokenizer=tok)
        assert type(stock) is TextClassificationPipeline, type(stock)
        print("RESULT " + json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, res.stdout[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert [g["label"] for g in got] == [e["label"] for e in expect]
    assert [g["exit_layer"] for g in got] == [e["exit_layer"] for e in expect]


# --------------------------------------------------------------------------------------------------- DDP and data


def test_ddp_two_processes_identical_weights(tmp_path, minilm_dir):
    script = ROOT / "tests" / "ddp_worker.py"
    import signal
    import socket

    def kill(pid):
        for fn in (os.killpg, os.kill):  # a rank leads a session (and process group) of its own
            try:
                fn(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def run_once(out):
        """One torchrun launch. Returns ``(returncode or None on a timeout, stderr)``. On a timeout the launcher's
        process group and every rank (pids written by ddp_worker.py first thing) are killed, so no orphan rank keeps
        running or keeps the pipes open; each rank's watchdog (EENET_DDP_WATCHDOG_S, armed before its imports)
        normally ends a hang earlier, printing its stacks, which the failure message then shows."""
        out.mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "EENET_DDP_OUT": str(out),
               "EENET_DDP_WATCHDOG_S": "90"}
        with socket.socket() as sock:  # a free port (a fixed one fails when another run holds it)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_addr", "127.0.0.1", "--master_port", str(port), str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=150)
            return proc.returncode, err
        except subprocess.TimeoutExpired:
            kill(proc.pid)
            for f in out.glob("pid.*"):
                kill(int(f.suffix[1:]))
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                err = "(stderr unreadable: a process still holds the pipe)"
            return None, err

    def hung(code, err):  # the test's timeout, or a rank's watchdog (faulthandler prints "Timeout (h:mm:ss)!")
        return code is None or "Timeout (0:" in err

    # a gloo rendezvous on a loaded 2-core machine once hung: a hang (and only a hang) is retried once on a fresh
    # port; a rank that fails otherwise fails the test at once
    code, err = run_once(tmp_path / "try1")
    out = tmp_path / "try1"
    if hung(code, err):
        first = err
        code, err = run_once(tmp_path / "try2")
        out = tmp_path / "try2"
        outcome = "hung" if hung(code, err) else f"exit code {code}"
        err = f"first try hung:\n{first[-3000:]}\n--- retry ({outcome}) ---\n{err[-3000:]}"
    assert code == 0, err[-6500:]
    sums = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["world_size"] == 2 and sums[1]["world_size"] == 2
    assert sums[0]["steps"] == sums[1]["steps"] > 0
    assert sums[0]["moved"], "training must change the weights"
    assert sums[0]["checksum"] == sums[1]["checksum"]


@pytest.mark.skipif(not (DATA_DIR / "sst2" / "validation.tsv").exists(), reason="needs ../shared/data/sst2 (or EENET_DATA_DIR)")
def test_recipe_keeps_the_trained_model_when_a_budget_is_below_the_first_exit(tmp_path):
    """Measured (FLOPs, latency) costs are known only after training: an unreachable budget ends the run with a
    clear error, and the trained weights are on disk (loadable, no bank) for ``hf-eenet fit-scheduler``. Layer
    costs are known before: refused before anything is trained."""
    from hf_eenet.data import DataError
    from hf_eenet.recipe import main
    from recipes.presets import data_arguments, resolve_backbone

    files = data_arguments("sst2", str(DATA_DIR))

    def run(out, profile):
        main([str(ROOT / "recipes" / "presets" / "sst2.json"), "--train_file", files.train_file,
              "--validation_file", files.validation_file, "--output_dir", str(out), "--results_dir", str(out),
              "--do_predict", "false", "--max_steps", "1", "--per_device_train_batch_size", "8",
              "--max_train_samples", "16", "--max_eval_samples", "64", "--budgets", "0.1,0.5",
              "--cost_profile", profile, "--max_seq_length", "32", "--quiet", "--save_strategy", "no"],
             resolve_model=resolve_backbone)

    with pytest.raises(DataError, match=r"below the cheapest exit.*reachable budgets are \[0\.167, 1\]\. Nothing "
                                        r"was trained\."):
        run(tmp_path / "layers", "layers")
    assert not (tmp_path / "layers").exists()
    out = tmp_path / "flops"
    with pytest.raises(DataError, match=r"below the cheapest exit.*The trained model was saved to .*flops without a "
                                        r"scheduler bank"):
        run(out, "flops")
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(str(out))
    assert not model.config.scheduler_budgets and model.config.exit_costs[0] == pytest.approx(1 / 6, abs=0.02)


def _sentence_csvs(tmp_path, n_train=32, n_val=64):
    """Small sentence/label CSV files (two classes), for recipe runs that need no real dataset."""
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    return [write_csv(tmp_path / f"{name}.csv", ["sentence", "label"],
                      [(f"the film was {words[i % 6]} and {words[(i * 5) % 6]} at times {i}", i % 2) for i in range(n)])
            for name, n in (("train", n_train), ("dev", n_val))]


def test_recipe_evaluation_without_a_fit_leaves_out_default_budgets_the_exits_cannot_reach(tmp_path):
    """--do_fit_scheduler false with --do_eval compares the policies at the budgets: the defaults below the first
    exit's cost are left out (a warning) as with a fit, instead of an error after training."""
    from hf_eenet.recipe import main
    from recipes.presets import resolve_backbone

    train_file, validation_file = _sentence_csvs(tmp_path)  # no real dataset needed: runs from any clone path
    out = tmp_path / "run"
    res = main(["--model_name_or_path", "sentence-transformers/all-MiniLM-L6-v2", "--train_file", train_file,
                "--validation_file", validation_file, "--text_column_names", "sentence",
                "--output_dir", str(out), "--do_train", "--do_eval", "--use_cpu", "true", "--report_to", "none",
                "--do_predict", "false", "--do_fit_scheduler", "false", "--max_steps", "1",
                "--per_device_train_batch_size", "8", "--max_train_samples", "16", "--max_eval_samples", "64",
                "--exit_layers", "3,6", "--cost_profile", "layers", "--max_seq_length", "32", "--quiet",
                "--save_strategy", "no", "--scheduler_restarts", "1", "--scheduler_max_epochs", "2",
                "--scheduler_selection_folds", "0"], resolve_model=resolve_backbone)
    assert res["budgets"] == [0.5, 0.6, 0.7, 0.8, 0.9]  # 0.25 ... 0.4 are below exit 1 (layer 3 of 6)
    assert json.loads((out / "results.json").read_text())["budgets"] == res["budgets"]
    assert not json.loads((out / "config.json").read_text())["scheduler_budgets"]


def test_recipe_refuses_exit_layers_that_differ_from_an_eenet_checkpoint(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    from hf_eenet.data import DataError
    from hf_eenet.recipe import main
    ckpt = tmp_path / "ckpt"
    tiny_model(layers=4, vocab_size=30522).save_pretrained(str(ckpt))
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(str(ckpt))
    train_file, validation_file = _sentence_csvs(tmp_path)
    with pytest.raises(DataError, match="--exit_layers 2,4 differs"):
        main(["--model_name_or_path", str(ckpt), "--train_file", train_file, "--validation_file",
              validation_file, "--text_column_names", "sentence", "--output_dir", str(tmp_path / "out"),
              "--exit_layers", "2,4", "--quiet"])


@pytest.mark.skipif(not (DATA_DIR / "sst2" / "validation.tsv").exists(), reason="needs ../shared/data/sst2 (or EENET_DATA_DIR)")
def test_recipe_end_to_end_small(tmp_path):
    """The SST-2 preset (recipes/presets/sst2.json) with overrides: a few steps on 64 rows."""
    from hf_eenet.recipe import main
    from recipes.presets import data_arguments, resolve_backbone

    out = tmp_path / "run"
    files = data_arguments("sst2", str(DATA_DIR))
    res = main([str(ROOT / "recipes" / "presets" / "sst2.json"), "--train_file", files.train_file,
                "--validation_file", files.validation_file, "--test_file", files.test_file,
                "--output_dir", str(out), "--results_dir", str(out), "--do_predict", "false",
                "--max_steps", "3", "--per_device_train_batch_size", "8", "--max_train_samples", "64",
                "--max_predict_samples", "200", "--budgets", "0.5,0.8", "--max_seq_length", "48",
                "--quiet", "--per_device_eval_batch_size", "128", "--scheduler_max_epochs", "10",
                "--scheduler_restarts", "1", "--scheduler_selection_folds", "0"], resolve_model=resolve_backbone)
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) >= {"EENet", "BranchyNet (entropy)", "MSDNet (max-prob)", "PABEE (patience)",
                                    "Static", "Oracle (upper bound)"}
    assert data["budgets"] == [0.5, 0.8] and data["splits"]["test"] == 200 and res["budgets"] == [0.5, 0.8]
    assert (out / "accuracy_vs_cost.png").stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert "model-index" in card and "budget 0.50" in card
    assert "Budget adherence" in card and "layer-count costs" in card and "exit pooling**: mean" in card
    assert json.loads((out / "config.json").read_text())["scheduler_budgets"] == [0.5, 0.8]
    assert data["exit_pooling"] == "mean"  # all-MiniLM-L6-v2 is a mean-pooled sentence-transformers checkpoint
    # the card is a function of results.json alone (benchmarks/make_model_cards.py regenerates committed cards)
    from hf_eenet.model_card import card_from_results

    assert str(card_from_results(data)) == card
    # per-exit predictions saved (safetensors) for re-comparisons without another forward pass
    from safetensors.torch import load_file

    preds = load_file(str(out / "exit_predictions.safetensors"))
    assert tuple(preds["test_probs"].shape) == (200, 6, 2) and preds["val_labels"].shape[0] == data["splits"]["validation"]
    # the card describes this model (results.json records its digest): saving the same model keeps it; saving other
    # weights into the folder through the trainer API marks it stale (else it ships, and is pushed, as their results)
    from huggingface_hub import ModelCard

    from hf_eenet.bank import state_digest

    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(str(out))
    assert data["model_sha256"] == state_digest(model)
    tok = AutoTokenizer.from_pretrained(str(out))
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path, max_steps=1, per_device_train_batch_size=8),
                                    train_dataset=toy_dataset(tok, 8), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    trainer.save_model(str(out))
    assert ModelCard.load(str(out / "README.md")).data.eval_results
    with pytest.warns(UserWarning, match="removed"):
        trainer.train()
    with pytest.warns(UserWarning, match="held results of another model"):
        trainer.save_model(str(out))
    stale = ModelCard.load(str(out / "README.md"))
    assert not stale.data.eval_results and stale.text.lstrip().startswith("> **Note:** the model was changed")
    trainer.create_model_card()  # what push_to_hub calls: the marked card stays
    assert not ModelCard.load(str(out / "README.md")).data.eval_results
    # a later fit and save bring the note up to date (the budgets served now), without another warning
    trainer.fit_scheduler(eval_dataset=toy_dataset(tok, 64, seed=2), budgets=[0.6], restarts=1, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.save_model(str(out))
    assert "it now serves budgets [0.6]" in ModelCard.load(str(out / "README.md")).text
    assert not [w for w in caught if "held results" in str(w.message)]
    # results.json written before the digest: a model this trainer trained (or refitted) is another model
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "README.md").write_text(card)
    (legacy / "results.json").write_text(json.dumps({k: v for k, v in data.items() if k != "model_sha256"}))
    with pytest.warns(UserWarning, match="held results of another model"):
        trainer.save_model(str(legacy))
    assert not ModelCard.load(str(legacy / "README.md")).data.eval_results
    # a user's own card that merely opens with a note like ours is not ours to rewrite
    own = tmp_path / "own"
    own.mkdir()
    text = "---\ntags:\n- hf_eenet\n---\n> **Note:** the model was fine-tuned by me.\n\nContact: me@example.com\n"
    (own / "README.md").write_text(text)
    (own / "results.json").write_text(json.dumps(data))
    trainer.save_model(str(own))
    assert (own / "README.md").read_text() == text
    from hf_eenet.model_card import mark_card_stale

    mark_card_stale(str(own), model, "refitted")  # (the CLI's fit-scheduler / rematch): the user's note stays below
    assert "> **Note:** the model was fine-tuned by me." in (own / "README.md").read_text()
    # a README that is not a card we can read is left alone, and the save goes on
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "README.md").write_text("---\nkey: [unclosed\n---\ntext\n")
    (odd / "results.json").write_text(json.dumps(data))
    trainer.save_model(str(odd))
    assert (odd / "README.md").read_text().endswith("text\n") and (odd / "model.safetensors").exists()
    # the recipe writes (or marks) its own card: a rerun into the same folder gives no stale-card warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([str(ROOT / "recipes" / "presets" / "sst2.json"), "--train_file", files.train_file,
              "--validation_file", files.validation_file, "--test_file", files.test_file,
              "--output_dir", str(out), "--results_dir", str(out), "--do_predict", "false",
              "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_train_samples", "32",
              "--max_predict_samples", "100", "--budgets", "0.5", "--max_seq_length", "48",
              "--quiet", "--scheduler_max_epochs", "5", "--scheduler_restarts", "1", "--scheduler_selection_folds", "0",
              "--seed", "7"], resolve_model=resolve_backbone)
    assert not [w for w in caught if "held results" in str(w.message)]
    assert ModelCard.load(str(out / "README.md")).data.eval_results


def test_recipe_and_cli_refuse_to_evaluate_a_bank_fitted_for_other_weights(trained, tok, tmp_path):
    """A folder whose weights took a training step after its bank was fitted (by a stock Trainer, say): the recipe's
    --do_fit_scheduler false evaluation and the CLI refuse the bank, as serving does (the recipe wrote a card for it)."""
    from hf_eenet.cli import main as cli
    from hf_eenet.recipe import main as recipe

    model = type(trained["model"]).from_pretrained(trained["dir"])
    model.train()
    batch = DataCollatorWithPadding(tok)([{k: trained["val"][i][k] for k in ("input_ids", "attention_mask", "labels")}
                                          for i in range(16)])
    model(**batch).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    d = tmp_path / "stale"
    with pytest.warns(UserWarning, match="saving a stale bank"):
        model.save_pretrained(d)
    tok.save_pretrained(d)
    texts, labels = toy_texts(40, seed=11)
    dev = write_csv(tmp_path / "dev.csv", ["text", "label"], [(t, ["negative", "positive"][y])
                                                              for t, y in zip(texts, labels)])
    with pytest.raises(hf_eenet.BankIntegrityError, match="fitted for other weights"):
        recipe(["--model_name_or_path", str(d), "--validation_file", dev, "--text_column_names", "text",
                "--output_dir", str(tmp_path / "run"), "--do_eval", "--do_fit_scheduler", "false", "--use_cpu",
                "true", "--report_to", "none", "--quiet", "--save_strategy", "no"])
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    with pytest.raises((SystemExit, hf_eenet.BankIntegrityError)):
        cli(["predict", str(d), "a good film", "--budget", "0.6"])


def test_cli_help_and_predict(trained, capsys):
    from hf_eenet.cli import build_parser, main

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    helptext = capsys.readouterr().out
    assert all(cmd in helptext for cmd in ("train", "fit-scheduler", "evaluate", "predict", "demo"))
    main(["predict", trained["dir"], "a good film", "bad and dull", "--budget", "0.6", "--batch_size", "2"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["text"] for x in lines] == ["a good film", "bad and dull"]
    assert all({"label", "score", "exit_layer", "cost"} <= set(x) for x in lines)
    with pytest.raises(SystemExit):
        main(["predict"])  # missing model_dir and texts: argparse error, not a traceback
