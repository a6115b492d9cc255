"""PEFT (LoRA) on the multi-exit models: every exit trains and is saved with the adapter, a failed run leaves the
wrapped model's bank where it was, a bank fitted with the adapter on is not served with it off, adapter saves say
that they hold no bank (review 95)."""

import copy
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_trainer_pipeline import targs, toy_dataset, toy_model, toy_texts
from transformers import AutoTokenizer, DataCollatorWithPadding

import hf_eenet
from hf_eenet import BankIntegrityError, exit_head_modules


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def banked(tok, tmp_path_factory):
    """A tiny 4-exit model trained a little, with a bank fitted at 0.5 and 0.7."""
    tmp = tmp_path_factory.mktemp("banked")
    model = toy_model(seed=1)
    trainer = hf_eenet.EENetTrainer(
        model=model, args=targs(tmp, max_steps=12, per_device_train_batch_size=32, learning_rate=3e-3),
        train_dataset=toy_dataset(tok, 384, seed=1), eval_dataset=toy_dataset(tok, 256, seed=2),
        processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    trainer.fit_scheduler(budgets=[0.5, 0.7], seed=0)
    return model.eval()


def _batch(tok, n=12, seed=5):
    texts, _ = toy_texts(n, seed=seed)
    return tok(texts, padding=True, return_tensors="pt")


def _trainer(model, tok, tmp_path, steps=3, **kw):
    return hf_eenet.EENetTrainer(
        model=model, args=targs(tmp_path, max_steps=steps, per_device_train_batch_size=32, learning_rate=3e-3),
        train_dataset=toy_dataset(tok, 96, seed=3), eval_dataset=toy_dataset(tok, 256, seed=2), processing_class=tok,
        data_collator=DataCollatorWithPadding(tok), **kw)


def test_exit_head_modules_names_every_exit():
    model = toy_model(seed=0)
    assert exit_head_modules(model) == ["exit_heads.0", "exit_heads.1", "exit_heads.2", "classifier"]
    assert exit_head_modules(model.config) == exit_head_modules(model)
    names = dict(model.named_modules())
    assert all(name in names for name in exit_head_modules(model))


def test_seq_cls_lora_freezes_early_exit_heads_and_the_trainer_says_so(tok, tmp_path):
    """PEFT's SEQ_CLS trains modules named classifier / score only: the early exits would stay random, silently."""
    pm = get_peft_model(toy_model(seed=1), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
    with pytest.warns(UserWarning, match=r"exit heads \['exit_heads.0', 'exit_heads.1', 'exit_heads.2'\] are frozen"):
        _trainer(pm, tok, tmp_path, steps=1).train()


def test_a_frozen_finetuned_last_exit_is_not_warned_about_but_a_frozen_early_exit_is(tok, tmp_path):
    """Review 99: training only the new exits on a frozen fine-tuned classifier (DeeBERT's second stage) warned that
    ``classifier`` was frozen, with PEFT advice; the last exit frozen alone is deliberate. An early exit frozen is
    still warned about, naming every frozen head, and so is a frozen last exit that was not loaded from a checkpoint
    (review 100: a backbone's new classifier, or a model built from its config, stays random)."""
    fresh = toy_model(seed=1)
    fresh.classifier.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"exit heads \['classifier'\] are frozen"):
        _trainer(fresh, tok, tmp_path / "fresh", steps=1).train()
    fresh.save_pretrained(tmp_path / "finetuned")
    model = type(fresh).from_pretrained(tmp_path / "finetuned")
    for p in [*model.backbone.parameters(), *model.classifier.parameters()]:
        p.requires_grad_(False)
    last = {n: p.detach().clone() for n, p in model.classifier.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(model, tok, tmp_path, steps=2).train()
    assert not [w for w in caught if "are frozen" in str(w.message)]
    assert all(torch.equal(p, last[n]) for n, p in model.classifier.named_parameters())
    model.exit_heads[1].requires_grad_(False)
    with pytest.warns(UserWarning, match=r"exit heads \['exit_heads.1', 'classifier'\] are frozen"):
        _trainer(model, tok, tmp_path / "again", steps=1).train()
    copied = copy.deepcopy(model)  # review 102: a copy of the loaded classifier is still the loaded one
    copied.exit_heads[1].requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(copied, tok, tmp_path / "copied", steps=1).train()
    assert not [w for w in caught if "are frozen" in str(w.message)]
    # review 101: a classifier replaced after the load is new (random), and one trained in this process is kept
    model.exit_heads[1].requires_grad_(True)
    model.classifier = torch.nn.Linear(model.config.hidden_size, model.config.num_labels).requires_grad_(False)
    with pytest.warns(UserWarning, match=r"exit heads \['classifier'\] are frozen"):
        _trainer(model, tok, tmp_path / "replaced", steps=1).train()
    stage1 = toy_model(seed=2)  # DeeBERT in one process: stage 1 trains everything, stage 2 freezes the full model
    _trainer(stage1, tok, tmp_path / "stage1", steps=1).train()
    for p in [*stage1.backbone.parameters(), *stage1.classifier.parameters()]:
        p.requires_grad_(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(stage1, tok, tmp_path / "stage2", steps=1).train()
    assert not [w for w in caught if "are frozen" in str(w.message)]
    stage2 = copy.deepcopy(stage1)  # review 103: a copy of a classifier trained in this process is a trained one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(stage2, tok, tmp_path / "stage2-copy", steps=1).train()
    assert not [w for w in caught if "are frozen" in str(w.message)]


def test_lora_with_exit_head_modules_trains_and_saves_every_exit(tok, tmp_path):
    model = toy_model(seed=1)
    pm = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"],
                                          modules_to_save=exit_head_modules(model)))
    before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(pm, tok, tmp_path, steps=4).train()
    assert not [w for w in caught if "are frozen" in str(w.message)]
    for k in range(3):  # every early exit's own (trainable) head copy moved
        moved = [n for n, p in pm.named_parameters()
                 if f"exit_heads.{k}.modules_to_save" in n and not torch.equal(p, before[n])]
        assert moved, k
    pm.save_pretrained(tmp_path / "adapter")
    # the adapter holds every exit: a fresh copy of the same base model with it loaded gives the same exit outputs
    again = PeftModel.from_pretrained(toy_model(seed=1), tmp_path / "adapter").eval()
    pm.eval()
    batch = _batch(tok)
    with torch.no_grad():
        want, got = pm(**batch).exit_logits, again(**batch).exit_logits
    torch.testing.assert_close(got, want)
    other = PeftModel.from_pretrained(toy_model(seed=2), tmp_path / "adapter").eval()
    with torch.no_grad():  # (a base model with other weights: the check above could fail)
        assert not torch.allclose(other(**batch).exit_logits, want)


def test_training_that_fails_first_puts_the_bank_back_inside_the_peft_wrapper(banked, tok, tmp_path):
    model = copy.deepcopy(banked)
    batch = _batch(tok)
    with torch.no_grad():
        want = model(**batch, budget=0.5)
    pm = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"],
                                          modules_to_save=exit_head_modules(model)))
    trainer = _trainer(pm, tok, tmp_path, steps=2)
    trainer.train_dataset = trainer.train_dataset.map(lambda r: {"labels": 7})  # fails in the first batch
    with pytest.raises(ValueError):
        trainer.train()
    assert "eenet_schedulers" not in pm._modules  # not registered on the wrapper
    assert len(model.eenet_schedulers) == 2 and model.config.scheduler_budgets == [0.5, 0.7]
    base = pm.unload().eval()  # the adapter taken out: the model as it was, serving its bank
    assert base is model
    with torch.no_grad():
        got = base(**batch, budget=0.5)
    assert torch.equal(got.exit_index, want.exit_index) and torch.equal(got.logits, want.logits)


def test_bank_fitted_with_the_adapter_on_is_not_served_with_it_off(banked, tok, tmp_path):
    model = copy.deepcopy(banked)
    pm = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], init_lora_weights=False,
                                          modules_to_save=exit_head_modules(model)))
    trainer = _trainer(pm, tok, tmp_path)
    trainer.fit_scheduler(budgets=[0.5], seed=0)
    pm.eval()
    batch = _batch(tok)
    with torch.no_grad():
        want = pm(**batch, budget=0.5)
        with pm.disable_adapter():
            with pytest.raises(BankIntegrityError, match="PEFT adapters in another state"):
                pm(**batch, budget=0.5)
            with pytest.raises(BankIntegrityError, match="PEFT adapters in another state"):
                model.verify_scheduler_bank()
        got = pm(**batch, budget=0.5)  # back on: served again, as before
        query = model.bert.encoder.layer[0].attention.self.query  # a LoRA layer, rescaled
        query.set_scale("default", 2.0)
        with pytest.raises(BankIntegrityError, match="PEFT adapters in another state"):
            pm(**batch, budget=0.5)
        query.set_scale("default", 1.0)
        again = pm(**batch, budget=0.5)
    assert torch.equal(got.exit_index, want.exit_index) and torch.equal(got.logits, want.logits)
    assert torch.equal(again.logits, want.logits)
    # the adapter's save holds no bank: said, and no pipeline code in an adapter folder
    with pytest.warns(UserWarning, match=r"holds the adapter only: its scheduler bank \(budgets \[0.5\]\) is not saved"):
        trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "pipeline_eenet.py").exists()
    # merged into the model, the weights are others: refused, naming the merge
    merged = pm.merge_and_unload().eval()
    with torch.no_grad(), pytest.raises(BankIntegrityError, match="PEFT adapter added to it or merged into it"):
        merged(**batch, budget=0.5)


def test_model_init_of_a_model_that_is_not_ours_is_refused_by_name(tok, tmp_path):
    """(The frozen-head check runs first in train(): it must leave a stock model to the refusal that names it.)"""
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import tiny_kwargs

    built = []

    def model_init():  # ours when the trainer is built, a stock model when train() builds it again
        built.append(1)
        if len(built) == 1:
            return toy_model(seed=0)
        return BertForSequenceClassification(BertConfig(**tiny_kwargs(num_labels=2, vocab_size=30522)))

    trainer = hf_eenet.EENetTrainer(
        model_init=model_init,
        args=targs(tmp_path, max_steps=1, per_device_train_batch_size=8), train_dataset=toy_dataset(tok, 16, seed=3),
        processing_class=tok, data_collator=DataCollatorWithPadding(tok))
    with pytest.raises(TypeError, match="EENetTrainer trains hf_eenet multi-exit models"):
        trainer.train()


def test_adapters_through_transformers_integration_save_the_adapter_only_and_say_so(banked, tok, tmp_path):
    """model.add_adapter (transformers' own PEFT integration, review 97): the stock save writes the adapter only, so
    the bank is not in it (said)."""
    model = copy.deepcopy(banked)
    model.add_adapter(LoraConfig(target_modules=["query", "value"], init_lora_weights=False))
    with pytest.warns(UserWarning, match=r"holds PEFT adapters, so its save holds the adapter only: its scheduler "
                                         r"bank \(budgets \[0.5, 0.7\]\) is not saved"):
        model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and "config.json" not in files
