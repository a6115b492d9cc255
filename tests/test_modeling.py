"""Multi-exit models: configs, loading, losses, real early exit and its parity with offline / bs=1 decisions."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, random_batch, tiny_kwargs, tiny_model
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import hf_eenet
from hf_eenet import MaxProbPolicy

# ---------------------------------------------------------------------------------------------------- configs


def test_config_defaults_and_roundtrip(tmp_path):
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(layers=4))
    assert cfg.model_type == "eenet-bert"
    assert cfg.exit_layers == [1, 2, 3, 4]
    assert cfg.exit_costs[-1] == 1.0 and all(a < b for a, b in zip(cfg.exit_costs, cfg.exit_costs[1:]))
    cfg2 = hf_eenet.EENetRobertaConfig(**tiny_kwargs(layers=6), exit_layers=[2, 4, 6])
    cfg2.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is hf_eenet.EENetRobertaConfig
    assert loaded.exit_layers == [2, 4, 6] and loaded.model_type == "eenet-roberta"
    assert loaded.to_diff_dict() == cfg2.to_diff_dict()


@pytest.mark.parametrize(
    "layers, err, match",
    [
        ([1, 2, 5], ValueError, "out of range"),
        ([0, 4], ValueError, "out of range"),
        ([2, 1, 4], ValueError, "strictly increasing"),
        ([2, 2, 4], ValueError, "strictly increasing"),
        ([1, 2], ValueError, "last exit layer"),
        ([], ValueError, "empty"),
        (["a", 4], TypeError, "ints"),
        ("1234", TypeError, "list of ints"),
    ],
)
def test_config_rejects_bad_exit_layers(layers, err, match):
    with pytest.raises(err, match=match):
        hf_eenet.EENetBertConfig(**tiny_kwargs(layers=4), exit_layers=layers)


def test_config_rejects_bad_costs_and_budgets():
    with pytest.raises(ValueError, match="exit_costs has 2 entries"):
        hf_eenet.EENetBertConfig(**tiny_kwargs(layers=4), exit_costs=[0.5, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        hf_eenet.EENetBertConfig(**tiny_kwargs(layers=2), exit_costs=[1.0, 0.5])
    with pytest.raises(ValueError, match="default_budget"):
        hf_eenet.EENetBertConfig(**tiny_kwargs(layers=2), default_budget=1.5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_mean_pooling_exits(kind, tmp_path):
    """exit_pooling="mean": every exit reads the mean of the non-padding tokens (padding never leaks in), it is not
    the first-token head, and the choice round-trips through save_pretrained."""
    with pytest.raises(ValueError, match="exit_pooling must be one of"):
        hf_eenet.EENetBertConfig(**tiny_kwargs(layers=2), exit_pooling="max")
    model = tiny_model(kind, seed=2, layers=3, exit_pooling="mean")
    cls_model = tiny_model(kind, seed=2, layers=3)
    pad = model.config.pad_token_id
    batch = random_batch(n=6, max_len=12, seed=4, pad_id=pad, token_types=False)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=False).exit_logits
        assert not torch.allclose(out, cls_model(**batch).exit_logits, atol=1e-3)
        # changing the padding tokens' ids changes nothing (they are masked in attention and in the mean)
        noisy = {k: v.clone() for k, v in batch.items()}
        noisy["input_ids"][batch["attention_mask"] == 0] = 7
        torch.testing.assert_close(model(**noisy).exit_logits, out, atol=1e-5, rtol=1e-5)
        # exit 1 == its head on the hand-computed masked mean of layer 1's output
        hidden = model.backbone(**batch, output_hidden_states=True).hidden_states[1]
        m = batch["attention_mask"].unsqueeze(-1).float()
        manual = model.exit_heads[0]((hidden * m).sum(1) / m.sum(1))
        torch.testing.assert_close(out[:, 0], manual, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    assert again.config.exit_pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).exit_logits, out)


def test_recipe_reads_sentence_transformers_pooling(minilm_dir, tmp_path):
    from hf_eenet.recipe import checkpoint_pooling, load_backbone

    assert checkpoint_pooling(minilm_dir) == "mean"  # all-MiniLM-L6-v2 ships 1_Pooling/config.json (mean tokens)
    assert checkpoint_pooling(str(tmp_path)) == "cls"
    model, _ = load_backbone(minilm_dir, 2)
    assert model.config.exit_pooling == "mean"
    model, _ = load_backbone(minilm_dir, 2, exit_pooling="cls")
    assert model.config.exit_pooling == "cls"


def test_hub_side_files_are_read_from_the_repository_not_only_from_a_local_folder(tmp_path):
    """A Hub id's 1_Pooling/config.json and training_args.json are not fetched by from_pretrained: the pooling was
    read only if something else had cached it, and a Hub model the recipe did not train got no training_args.json
    (how it was trained). Both now go through the Hub's file lookup (a cache laid out as the Hub client does;
    HF_HUB_OFFLINE keeps the lookup to it)."""
    import json

    from hf_eenet.recipe import _saved_training_args, checkpoint_pooling, model_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--mean-pooled"
    snap = repo / "snapshots" / commit
    (snap / "1_Pooling").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snap / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (snap / "training_args.json").write_text(json.dumps({"seed": 7, "learning_rate": 3e-5}))
    cache = str(tmp_path / "cache")
    assert checkpoint_pooling("someone/mean-pooled", cache) == "mean"
    assert _saved_training_args("someone/mean-pooled", cache) == {"seed": 7, "learning_rate": 3e-5}
    assert model_file("someone/mean-pooled", "missing.json", cache) is None
    assert _saved_training_args("someone/not-cached", cache) == {}  # unknown: none, not this run's settings
    assert checkpoint_pooling("someone/not-cached", cache) == "cls"
    (tmp_path / "local").mkdir()  # a local folder is never taken for a repository id
    assert model_file(str(tmp_path / "local"), "training_args.json", cache) is None


# ---------------------------------------------------------------------------------------------------- loading


def test_load_plain_minilm_checkpoint(minilm_dir):
    model, info = hf_eenet.EENetBertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, exit_layers=[1, 2, 3, 4, 5, 6], output_loading_info=True
    )
    assert model.config.exit_layers == [1, 2, 3, 4, 5, 6] and model.config.model_type == "eenet-bert"
    missing = set(info["missing_keys"])
    assert not [k for k in missing if k.startswith("bert.")], f"backbone keys missing: {missing}"
    assert missing == {f"exit_heads.{i}.{m}.{p}" for i in range(5) for m in ("dense", "out_proj")
                       for p in ("weight", "bias")} | {"classifier.weight", "classifier.bias"}
    ckpt = load_file(f"{minilm_dir}/model.safetensors")
    # the last exit reuses the pretrained pooler; the backbone is the checkpoint's
    torch.testing.assert_close(model.bert.pooler.dense.weight, ckpt["pooler.dense.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        model.bert.encoder.layer[3].output.dense.weight, ckpt["encoder.layer.3.output.dense.weight"], rtol=0, atol=0
    )
    # new heads are initialised by _init_weights (normal(0, initializer_range), zero bias), not left empty
    w = model.exit_heads[0].dense.weight
    assert torch.isfinite(w).all() and abs(w.std().item() - model.config.initializer_range) < 0.005
    assert torch.count_nonzero(model.exit_heads[0].dense.bias) == 0


def test_minilm_early_exit_end_to_end(minilm_dir, tmp_path):
    model = hf_eenet.EENetBertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(["a gripping , funny film", "dull", "it is long and it is boring , and nothing happens at all ."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(**batch)
        assert full.exit_logits.shape == (3, 6, 2) and full.logits.shape == (3, 2)
        torch.testing.assert_close(full.logits, full.exit_logits[:, -1])
        probs = full.exit_logits.softmax(-1)
        thr = [probs[:, k].max(-1).values.median().item() for k in range(6)]
        pol = MaxProbPolicy(thr)
        ee = model(**batch, exit_policy=pol)
        expect = pol.exit_index(probs)
        assert torch.equal(ee.exit_index, expect)
        torch.testing.assert_close(ee.logits, full.exit_logits[torch.arange(3), expect], atol=1e-4, rtol=1e-4)
        assert ee.exit_layer.tolist() == [model.config.exit_layers[i] for i in expect.tolist()]
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(again) is hf_eenet.EENetBertForSequenceClassification
    with torch.no_grad():
        assert torch.equal(again(**batch).exit_logits, full.exit_logits)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_save_reload_bit_exact_and_safetensors_only(kind, tmp_path):
    model = tiny_model(kind, exit_layers=[1, 3, 4])
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_eenet.")
    assert {"modeling_eenet.py", "configuration_eenet.py", "policies.py"} <= set(files)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    batch = random_batch(pad_id=model.config.pad_token_id)
    with torch.no_grad():
        assert torch.equal(model(**batch).exit_logits, again(**batch).exit_logits)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_last_exit_equals_stock_classifier(kind, tmp_path):
    """A fine-tuned stock classifier loads into the last exit unchanged (same logits)."""
    torch.manual_seed(0)
    if kind == "bert":
        stock = BertForSequenceClassification(BertConfig(**tiny_kwargs()))
        cls = hf_eenet.EENetBertForSequenceClassification
    else:
        stock = RobertaForSequenceClassification(RobertaConfig(**tiny_kwargs(pad_token_id=1)))
        cls = hf_eenet.EENetRobertaForSequenceClassification
    stock.save_pretrained(tmp_path)
    model, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert all(k.startswith("exit_heads.") for k in info["missing_keys"]), info["missing_keys"]
    batch = random_batch(pad_id=stock.config.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, stock.eval()(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_stock_config_of_a_plain_checkpoint_is_taken_as_ours(kind, tmp_path):
    """Review 99: ``from_pretrained(ckpt, config=AutoConfig.from_pretrained(ckpt, num_labels=...))`` (run_classification
    style; Auto gives the stock config of a plain checkpoint) and ``cls(stock_config)`` failed with AttributeError
    'exit_layers'. The stock config is converted (labels, dropout, attention implementation kept, default exits);
    another family's config is refused by name."""
    torch.manual_seed(0)
    names = {0: "neg", 1: "neu", 2: "pos"}
    if kind == "bert":
        stock = BertForSequenceClassification(BertConfig(**tiny_kwargs(id2label=names, classifier_dropout=0.25)))
        cls, other = hf_eenet.EENetBertForSequenceClassification, RobertaConfig(**tiny_kwargs())
    else:
        stock = RobertaForSequenceClassification(RobertaConfig(**tiny_kwargs(pad_token_id=1, id2label=names,
                                                                             classifier_dropout=0.25)))
        cls, other = hf_eenet.EENetRobertaForSequenceClassification, hf_eenet.EENetBertConfig(**tiny_kwargs())
    stock.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path, num_labels=3, attn_implementation="eager")
    assert type(config) is type(stock.config)
    model = cls.from_pretrained(tmp_path, config=config).eval()
    assert isinstance(model.config, cls.config_class) and model.config.model_type.startswith("eenet-")
    assert model.config.id2label == names and model.config.classifier_dropout == 0.25
    assert model.config._attn_implementation == "eager"
    assert model.config.exit_layers == [1, 2, 3, 4] and model.config.exit_costs[-1] == 1.0
    batch = random_batch(pad_id=stock.config.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, stock.eval()(**batch).logits, atol=1e-5, rtol=1e-5)
    built = cls(type(stock.config)(**tiny_kwargs(pad_token_id=stock.config.pad_token_id)))
    assert isinstance(built.config, cls.config_class) and built.config.num_exits == 4
    with pytest.raises(TypeError, match=rf"{cls.config_class.__name__} takes an {cls.config_class.__name__} \(or a "
                                        rf"{type(stock.config).__name__} or another config of model_type .*, "
                                        rf"converted\), got a {type(other).__name__}: it is of the eenet-\w+ family: "
                                        r"use EENet(Bert|Roberta)ForSequenceClassification"):
        cls(other)


@pytest.mark.parametrize("kind", ["xlm-roberta", "camembert"])
def test_roberta_family_checkpoints_load_into_the_roberta_class_as_roberta(kind, tmp_path, minilm_dir):
    """Review 108: the recipe / CLI chose the BERT class for any model_type without "roberta" in it, so a CamemBERT
    checkpoint's weights were all dropped and a random BERT trained and saved; loaded into the RoBERTa class it kept
    model_type "camembert" in memory, so texts were truncated 2 tokens too long for its positions (IndexError), and
    ``config=AutoConfig(...)`` of XLM-R / CamemBERT was refused. Now the family is read from the model_type table."""
    from transformers import (CamembertConfig, CamembertForSequenceClassification, XLMRobertaConfig,
                              XLMRobertaForSequenceClassification)

    from hf_eenet.configuration_eenet import max_input_tokens
    from hf_eenet.recipe import load_backbone

    torch.manual_seed(0)
    cfg_cls, model_cls = ((XLMRobertaConfig, XLMRobertaForSequenceClassification) if kind == "xlm-roberta" else
                          (CamembertConfig, CamembertForSequenceClassification))
    stock = model_cls(cfg_cls(**tiny_kwargs(pad_token_id=1, type_vocab_size=1))).eval()
    stock.save_pretrained(tmp_path)
    batch = random_batch(pad_id=1, token_types=False)
    cls = hf_eenet.EENetRobertaForSequenceClassification
    with torch.no_grad():
        want = stock(**batch).logits
        for model in (cls.from_pretrained(tmp_path),
                      cls.from_pretrained(tmp_path, config=AutoConfig.from_pretrained(tmp_path))):
            assert model.config.model_type == "eenet-roberta"
            assert max_input_tokens(model.config) == 64 - 2  # RoBERTa positions start after the padding index
            torch.testing.assert_close(model.eval()(**batch).logits, want, atol=1e-5, rtol=1e-5)
    model, _ = load_backbone(str(tmp_path), 3, tokenizer_name=minilm_dir)  # the recipe's (any tokenizer does here)
    assert isinstance(model, cls)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, want, atol=1e-5, rtol=1e-5)


def test_checkpoints_of_another_family_or_of_neither_are_refused_by_name(tmp_path):
    """Review 108: a RoBERTa checkpoint loaded into the BERT class (or a DistilBERT one into either, or given to the
    recipe) loaded as a random model with only transformers' warning and load report; now refused, naming the
    class to use or the model types hf_eenet supports."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from hf_eenet.recipe import load_backbone

    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(**tiny_kwargs(pad_token_id=1))).save_pretrained(tmp_path / "rob")
    BertForSequenceClassification(BertConfig(**tiny_kwargs())).save_pretrained(tmp_path / "bert")
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                         max_position_embeddings=64)).save_pretrained(tmp_path / "db")
    with pytest.raises(ValueError, match="is a 'roberta' model, not of the eenet-bert family: load it with "
                                         "EENetRobertaForSequenceClassification"):
        hf_eenet.EENetBertForSequenceClassification.from_pretrained(tmp_path / "rob")
    with pytest.raises(ValueError, match="is a 'bert' model, not of the eenet-roberta family: load it with "
                                         "EENetBertForSequenceClassification"):
        hf_eenet.EENetRobertaForSequenceClassification.from_pretrained(tmp_path / "bert")
    for load in (hf_eenet.EENetBertForSequenceClassification.from_pretrained,
                 hf_eenet.EENetRobertaForSequenceClassification.from_pretrained,
                 lambda path: load_backbone(str(path), 2)):
        with pytest.raises(ValueError, match="is a 'distilbert' model: hf_eenet adds exits to BERT and RoBERTa-family "
                                             "encoders"):
            load(tmp_path / "db")


def test_mean_pooling_a_finetuned_stock_classifier_says_its_last_exit_changes(tmp_path, minilm_dir):
    """Review 99: exit_pooling="mean" on a fine-tuned stock classifier fed its first-token head the token mean, so the
    full model silently changed; now said at load. A backbone (no head) and the default pooling say nothing."""
    import warnings

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**tiny_kwargs())).save_pretrained(tmp_path)
    cls = hf_eenet.EENetBertForSequenceClassification
    with pytest.warns(UserWarning, match=r"is a fine-tuned BertForSequenceClassification, whose classifier reads the "
                                         r"first token; with exit_pooling='mean' .*no longer the checkpoint's model"):
        cls.from_pretrained(tmp_path, exit_pooling="mean")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = cls.from_pretrained(tmp_path)
        backbone = cls.from_pretrained(minilm_dir, num_labels=2, exit_pooling="mean")  # a BertModel: no head to keep
        reheaded = cls.from_pretrained(tmp_path, num_labels=2, ignore_mismatched_sizes=True, exit_pooling="mean")
    assert not [w for w in caught if "fine-tuned" in str(w.message)]
    # what EENetTrainer reads to tell a kept fine-tuned classifier (frozen on purpose) from a new one (review 100)
    assert kept._eenet_loaded_classifier == tuple(id(p) for p in kept.classifier.parameters())
    assert backbone._eenet_loaded_classifier is None and reheaded._eenet_loaded_classifier is None


# ---------------------------------------------------------------------------------------------------- losses


def test_multi_exit_loss_weights_and_regression():
    model = tiny_model("bert").train()
    batch = random_batch(n=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(**batch, labels=labels)
    k = model.config.num_exits
    w = [(i + 1) / (k * (k + 1) / 2) for i in range(k)]
    expect = sum(w[i] * torch.nn.functional.cross_entropy(out.exit_logits[:, i], labels) for i in range(k))
    torch.testing.assert_close(out.loss, expect)
    out.loss.backward()
    assert model.exit_heads[0].dense.weight.grad is not None and model.classifier.weight.grad is not None

    reg = tiny_model("roberta", num_labels=1).train()
    y = torch.randn(6)
    out = reg(**random_batch(n=6, pad_id=1), labels=y)
    assert reg.config.problem_type == "regression"
    expect = sum(w[i] * torch.nn.functional.mse_loss(out.exit_logits[:, i, 0], y) for i in range(k))
    torch.testing.assert_close(out.loss, expect)


# ---------------------------------------------------------------------------------------------------- early exit


def _mixed_thresholds(model, batch):
    """Per-exit max-prob thresholds halfway between the two middle values: the rows spread over several exits and
    no row sits on a threshold (where float rounding of a different batch shape could flip its decision)."""
    with torch.no_grad():
        probs = model(**batch).exit_logits.softmax(-1)
    thr = []
    for k in range(probs.shape[1]):
        v = probs[:, k].max(-1).values.sort().values
        mid = len(v) // 2
        thr.append(((v[mid - 1] + v[mid]) / 2).item())
    return thr, probs


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("token_types,pooling", [(True, "cls"), (False, "cls"), (True, "mean")])
def test_early_exit_parity(kind, attn, token_types, pooling):
    model = tiny_model(kind, attn=attn, seed=1, layers=6, exit_layers=[1, 2, 3, 4, 5, 6], exit_pooling=pooling)
    pad = model.config.pad_token_id
    batch = random_batch(n=16, max_len=24, seed=3, pad_id=pad, token_types=token_types)
    thr, probs = _mixed_thresholds(model, batch)
    policy = MaxProbPolicy(thr)
    offline = policy.exit_index(probs)
    assert len(set(offline.tolist())) >= 3, "test needs rows spread over several exits"
    with torch.no_grad():
        all_logits = model(**batch).exit_logits
        ee = model(**batch, exit_policy=policy)
        # (a) online early exit == all exits + same policy offline
        assert torch.equal(ee.exit_index, offline)
        torch.testing.assert_close(ee.logits, all_logits[torch.arange(16), offline], atol=1e-4, rtol=1e-4)
        # (b) == each sample alone (bs = 1, its own unpadded length)
        for i in range(16):
            n = int(batch["attention_mask"][i].sum())
            one = {k: v[i : i + 1, :n] for k, v in batch.items()}
            single = model(**one, exit_policy=policy)
            assert single.exit_index.item() == ee.exit_index[i].item()
            torch.testing.assert_close(single.logits[0], ee.logits[i], atol=1e-4, rtol=1e-4)


def test_rows_really_leave_the_batch():
    model = tiny_model("bert", layers=6, exit_layers=[2, 4, 6])
    batch = random_batch(n=10, max_len=16, seed=5)
    thr, probs = _mixed_thresholds(model, batch)
    policy = MaxProbPolicy(thr)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape[:2])))
             for layer in model.bert.encoder.layer]
    with torch.no_grad():
        out = model(**batch, exit_policy=policy)
    for h in hooks:
        h.remove()
    running = [(out.exit_index >= k).sum().item() for k in range(3)]  # rows alive after each exit
    assert [s[0] for s in seen] == [10, 10, running[1], running[1], running[2], running[2]]
    assert running[1] < 10, "some rows must exit at the first exit for this test"
    # an all-stop policy never runs the layers after the exit
    seen.clear()
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0])) for layer in model.bert.encoder.layer]
    with torch.no_grad():
        out = model(**batch, exit_policy=MaxProbPolicy([0.0, 0.0, 0.0]))
    for h in hooks:
        h.remove()
    assert seen == [10, 10] and out.exit_index.eq(0).all() and out.exit_layer.eq(2).all()


def test_trailing_padding_is_trimmed_after_shrink():
    model = tiny_model("bert", layers=4, exit_layers=[1, 4])
    batch = random_batch(n=4, max_len=20, seed=7, min_len=3)
    batch["attention_mask"][1:, 6:] = 0  # rows 1..3 are short; row 0 is long
    batch["input_ids"][1:, 6:] = 0
    lengths = []
    hooks = [layer.register_forward_hook(lambda m, a, o: lengths.append(a[0].shape[1])) for layer in model.bert.encoder.layer]

    class StopFirstRow(MaxProbPolicy):
        def init_state(self, batch_size, device="cpu"):
            return {"row": torch.arange(batch_size)}

        def decide(self, k, probs, state):
            return state["row"] == 0

    with torch.no_grad():
        model(**batch, exit_policy=StopFirstRow([0.0, 0.0]))
    for h in hooks:
        h.remove()
    assert lengths == [20, 6, 6, 6]


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("bert", layers=4)
    batch = random_batch(n=3)
    with pytest.raises(ValueError, match="built for 3 exits but the model has 4"):
        model(**batch, exit_policy=MaxProbPolicy([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        MaxProbPolicy([0.5, float("nan"), 0.5, 0.5])
    with pytest.raises(TypeError, match="thresholds"):
        MaxProbPolicy(0.5)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="empty batch"):
        model(input_ids=torch.zeros((0, 5), dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model(input_ids=[[1, 2, 3]])
    with pytest.raises(TypeError, match="ExitPolicy"):
        model(**batch, exit_policy=[0.5] * 4)
    with pytest.raises(ValueError, match="no fitted EENet scheduler"):
        model(**batch, budget=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model(**batch, budget=float("nan"))


# ---------------------------------------------------------------------------------------------------- Hub export


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_trust_remote_code_without_hf_eenet(kind, tmp_path):
    model = tiny_model(kind, layers=3)
    model.save_pretrained(tmp_path)
    batch = random_batch(n=5, pad_id=model.config.pad_token_id)
    with torch.no_grad():
        expect = model(**batch).exit_logits
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "batch.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hf_eenet" or name.startswith("hf_eenet."):
                    raise ImportError("hf_eenet is blocked in this test")
        sys.meta_path.insert(0, Block())
        sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        try:
            import hf_eenet
            raise SystemExit("hf_eenet should not be importable here")
        except ImportError:
            pass
        m = AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "hf_eenet" not in type(m).__module__, type(m).__module__
        b = load_file({str(tmp_path / "batch.safetensors")!r})
        with torch.no_grad():
            out = m(**b).exit_logits
        m.use_fused_cpu_layers()  # the saved code carries the fused CPU layers too
        with torch.inference_mode():
            fused = m(**b).exit_logits
        assert m._eenet_fused_cpu.layers and float((fused - out).abs().max()) < 1e-4
        from safetensors.torch import save_file
        save_file({{"out": out.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
        print(type(m).__name__)
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                         env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                              "HF_HOME": str(tmp_path / "hf_home")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert type(model).__name__ in res.stdout
    got = load_file(str(tmp_path / "out.safetensors"))["out"]
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-6)
    assert not math.isnan(got.sum().item())


def test_shipped_remote_code_imports_only_what_transformers_needs(tmp_path):
    """A Hub load with ``trust_remote_code`` checks the imports of *every* shipped file (a local folder only its top
    files): one that imports e.g. matplotlib (the reporting code) makes the model unloadable for a consumer without
    it. Every .py file a save writes must import only the standard library, torch and transformers' own
    dependencies (as transformers' ``get_imports`` reads them: imports under ``try`` do not count)."""
    from transformers.dynamic_module_utils import get_imports

    model = tiny_model("bert", layers=3)
    model.save_pretrained(tmp_path)
    shipped = sorted(tmp_path.glob("*.py"))
    assert {"modeling_eenet.py", "configuration_eenet.py", "pipeline_eenet.py"} <= {p.name for p in shipped}
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "huggingface_hub", "safetensors", "numpy",
                                              "tqdm", "packaging", "tokenizers", "regex", "yaml"}
    needs = {p.name: sorted(set(get_imports(str(p))) - allowed) for p in shipped}
    assert not any(needs.values()), needs


@pytest.mark.parametrize("name", ["entropy", "maxprob", "patience", "static", "eenet"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_policy_online_equals_offline_and_bs1(name, kind):
    """Each calibrated policy (baselines and the EENet scheduler) decides the same online, offline and at bs = 1."""
    model = tiny_model(kind, seed=2, layers=6, exit_layers=[1, 2, 3, 4, 5, 6])
    batch = random_batch(n=24, max_len=20, seed=4, pad_id=model.config.pad_token_id)
    with torch.no_grad():
        probs = model(**batch).exit_logits.softmax(-1)
    labels = probs[:, 2].argmax(-1)  # exit 3 is "right": gives the calibrations something to fit
    labels[::5] = (labels[::5] + 1) % probs.shape[-1]
    costs = model.config.exit_costs
    budget = 0.5
    if name == "eenet":
        policy = hf_eenet.EENetScheduler(restarts=1, max_epochs=30, fallback=False).fit(probs, labels, costs, budget, seed=0)
    else:
        cls = {"entropy": hf_eenet.EntropyPolicy, "maxprob": MaxProbPolicy, "patience": hf_eenet.PatiencePolicy,
               "static": hf_eenet.StaticPolicy}[name]
        policy = cls.calibrate(probs, labels, costs, budget)
    offline = policy.exit_index(probs)
    if name in ("entropy", "maxprob", "eenet"):
        assert len(set(offline.tolist())) >= 2, "rows must spread over several exits for this test"
    with torch.no_grad():
        online = model(**batch, exit_policy=policy)
        assert torch.equal(online.exit_index, offline)
        for i in range(0, 24, 3):
            n = int(batch["attention_mask"][i].sum())
            one = model(**{k: v[i : i + 1, :n] for k, v in batch.items()}, exit_policy=policy)
            assert one.exit_index.item() == offline[i].item()
            torch.testing.assert_close(one.logits[0], online.logits[i], atol=1e-4, rtol=1e-4)
            # the same row alone but still padded to the batch width (the one-row path with a padding mask)
            padded = model(**{k: v[i : i + 1] for k, v in batch.items()}, exit_policy=policy)
            assert padded.exit_index.item() == offline[i].item()
            torch.testing.assert_close(padded.logits[0], online.logits[i], atol=1e-4, rtol=1e-4)


def test_an_encoder_shorter_than_its_exits_is_refused_on_every_path():
    """Layers removed after the model was built: the deepest exit can never run, so every path raises (before, a
    batch returned uninitialised logits for the rows that reached it)."""
    model = tiny_model(layers=4, exit_layers=[1, 2, 3, 4])
    model.backbone.encoder.layer = model.backbone.encoder.layer[:3]
    batch = random_batch(n=3, max_len=10, seed=2)
    never = MaxProbPolicy([1.1, 1.1, 1.1, 0.0])  # no row stops before the last exit
    with torch.no_grad():
        for call in (lambda: model(**batch, exit_policy=never),
                     lambda: model(**{k: v[:1] for k, v in batch.items()}, exit_policy=never),
                     lambda: model(**batch),
                     lambda: model.early_exit_predict(batch, exit_policy=never, batch_size=2)):
            with pytest.raises(ValueError, match=r"encoder has 3 layers but config.exit_layers \[1, 2, 3, 4\]"):
                call()


def test_exit_layer_and_cost_outputs_follow_config_edits():
    """The forward's exit layer / cost tables are kept between calls: a new ``exit_costs`` list, an in-place edit of
    it, or another default dtype must never serve the old values."""
    model = tiny_model(layers=4, exit_layers=[2, 4])
    batch = random_batch(n=5, max_len=12, seed=1)
    policy = hf_eenet.StaticPolicy(0, 2)  # every row at exit 1 (layer 2)
    with torch.no_grad():
        out = model(**batch, exit_policy=policy)
        assert out.exit_layer.tolist() == [2] * 5
        assert out.exit_cost.tolist() == pytest.approx([model.config.exit_costs[0]] * 5)
        model.config.exit_costs = [0.25, 1.0]
        assert model(**batch, exit_policy=policy).exit_cost.tolist() == pytest.approx([0.25] * 5)
        model.config.exit_costs[0] = 0.375  # in place: the same list object
        assert model(**{k: v[:1] for k, v in batch.items()}, exit_policy=policy).exit_cost.tolist() == [0.375]
        assert model.early_exit_predict(batch, exit_policy=policy).exit_cost.tolist() == pytest.approx([0.375] * 5)
        previous = torch.get_default_dtype()  # a new default dtype gives what torch.tensor gives under it
        torch.set_default_dtype(torch.float64)
        try:
            assert model(**batch, exit_policy=policy).exit_cost.dtype == torch.float64
        finally:
            torch.set_default_dtype(previous)
        assert model(**batch, exit_policy=policy).exit_cost.dtype == previous
    # the tables are plain tensors: a later forward with autograd on (training) reads them as well
    model.train()
    out = model(**batch, exit_policy=policy)
    assert out.exit_cost.tolist() == pytest.approx([0.375] * 5)


@pytest.mark.parametrize("repo_id", [None, "someone/eenet-sst2"])
def test_save_pretrained_push_to_hub_uploads_the_finished_folder(repo_id, tmp_path, monkeypatch):
    """``save_pretrained(d, push_to_hub=True)`` (Hub mocked): the repo is named after ``d`` (or ``repo_id``), not after
    the temporary folder of the atomic save, and the upload holds the pipeline code and ``custom_pipelines``."""
    from types import SimpleNamespace

    from transformers import modeling_utils

    seen = {}
    api = SimpleNamespace(create_repo=lambda rid, **kw: seen.setdefault("repo", SimpleNamespace(repo_id=rid)))
    monkeypatch.setattr(modeling_utils, "hf_api", lambda: api)
    monkeypatch.setattr(modeling_utils, "create_and_tag_model_card",
                        lambda *a, **k: SimpleNamespace(save=lambda path: open(path, "w").write("card")))

    def upload(self, working_dir, rid, timestamps, **kw):
        seen.update(upload_repo=rid, files=sorted(os.listdir(working_dir)),
                    config=json.loads(open(os.path.join(working_dir, "config.json")).read()))

    model = tiny_model(layers=2)
    monkeypatch.setattr(type(model), "_upload_modified_files", upload)
    target = tmp_path / "my-eenet-model"
    kw = {"repo_id": repo_id} if repo_id else {}
    model.save_pretrained(str(target), push_to_hub=True, **kw)
    want = repo_id or "my-eenet-model"
    assert seen["repo"].repo_id == want and seen["upload_repo"] == want
    assert "pipeline_eenet.py" in seen["files"] and "modeling_eenet.py" in seen["files"]
    assert list(seen["config"]["custom_pipelines"]) == ["text-classification"]
    assert not [p for p in tmp_path.iterdir() if p.name != "my-eenet-model"], "temporary folders left behind"


def _results_card(folder, digest):
    """A results card of ours (tags hf_eenet, model-index results) and the results.json it was written from."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = ModelCardData(tags=["hf_eenet"], model_name="m", eval_results=[EvalResult(
        task_type="text-classification", dataset_type="sst2", dataset_name="sst2", metric_type="accuracy",
        metric_value=0.9, metric_name="accuracy @ budget 0.5")])
    ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\nResults.\n").save(str(folder / "README.md"))
    (folder / "results.json").write_text(json.dumps({"model_sha256": digest}))


def test_save_pretrained_pushes_what_it_wrote_and_marks_a_card_of_other_weights(tmp_path, monkeypatch):
    """``save_pretrained(d, push_to_hub=True)`` into a folder holding other files uploads what the save wrote and the
    card, as the stock save does (review 84: every file went up - a stock run's pickled training_args.bin, checkpoint
    optimizer / rng pickles, the old model's results); a results card of other weights is marked stale first (it was
    kept as this model's results by save_pretrained, only EENetTrainer marked it)."""
    from types import SimpleNamespace

    from huggingface_hub import ModelCard
    from transformers import modeling_utils
    from transformers.utils import hub

    from hf_eenet.bank import state_digest

    uploaded = []
    api = SimpleNamespace(create_repo=lambda rid, **kw: SimpleNamespace(repo_id=rid),
                          create_commit=lambda repo_id, operations, **kw: uploaded.extend(
                              o.path_in_repo for o in operations))
    monkeypatch.setattr(modeling_utils, "hf_api", lambda: api)
    monkeypatch.setattr(hub, "hf_api", lambda: api)
    model = tiny_model(layers=2)
    target = tmp_path / "m"
    model.save_pretrained(target)
    (target / "training_args.bin").write_bytes(b"a stock Trainer's pickle")
    (target / "checkpoint-500").mkdir()
    (target / "checkpoint-500" / "optimizer.pt").write_bytes(b"pickle")
    (target / "eval_results.json").write_text("{}")
    _results_card(target, "0" * 64)  # the results of other weights
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    with pytest.warns(UserWarning, match="held results of another model .*marked stale"):
        model.save_pretrained(target, push_to_hub=True, repo_id="me/m")
    assert "README.md" in uploaded and "config.json" in uploaded and "pipeline_eenet.py" in uploaded
    assert any(f.endswith(".safetensors") for f in uploaded)
    assert not {"training_args.bin", "eval_results.json", "results.json"} & set(uploaded), uploaded
    assert not [f for f in uploaded if f.startswith("checkpoint-")], uploaded
    card = ModelCard.load(str(target / "README.md"))
    assert not card.data.eval_results and card.text.lstrip().startswith("> **Note:** the model was changed")
    assert (target / "training_args.bin").exists() and (target / "checkpoint-500" / "optimizer.pt").exists()
    # a card of these very weights stays as it is
    _results_card(target, state_digest(model))
    text = (target / "README.md").read_text()
    model.save_pretrained(target)
    assert (target / "README.md").read_text() == text


def test_a_save_on_a_rank_that_writes_no_checkpoint_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """transformers writes on global rank 0 only (should_save_on_this_rank): the same save_pretrained on another rank
    swapped in a temporary folder holding no weights, and the folder no longer loaded (review 84)."""
    model = tiny_model(layers=2)
    model.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(type(model), "should_save_on_this_rank", lambda self, is_main_process: False)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # EENetTrainer.save_model there (save_on_each_node: args.should_save on every node's local rank 0): nothing
    # written either (review 85: the save refused, stopping the run)
    from transformers import TrainingArguments

    trainer = hf_eenet.EENetTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                                                                       report_to=[], save_on_each_node=True))
    assert trainer.args.should_save
    trainer.save_model(str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    monkeypatch.undo()
    loaded = type(model).from_pretrained(tmp_path)
    assert not torch.equal(loaded.classifier.bias, model.classifier.bias)


def test_a_bert_batch_wider_than_its_position_table_is_refused_naming_the_limit():
    """Reviews 108/109: a BERT numbers positions across the batch width (padding included), so a batch wider than its
    table failed inside the embeddings without naming the limit; at the limit it serves, and with the caller's own
    position_ids (all inside the table) a wider batch serves as stock serves it."""
    model = tiny_model()  # max_position_embeddings 64
    policy = hf_eenet.MaxProbPolicy([0.5] * model.config.num_exits)
    at_limit = random_batch(n=3, max_len=64)
    with torch.no_grad():
        assert model(**at_limit, exit_policy=policy).logits.shape[0] == 3
        wide = {k: torch.cat([v, torch.zeros_like(v[:, :6])], 1) for k, v in at_limit.items()}  # padded to 70
        with pytest.raises(ValueError, match=r"inputs 70 tokens wide \(padding included\) are longer than this model "
                                             r"takes \(64 tokens, max_position_embeddings=64\)"):
            model(**wide, exit_policy=policy)
        short = random_batch(n=3, max_len=20)
        padded = {k: torch.cat([v, torch.zeros(3, 50, dtype=v.dtype)], 1) for k, v in short.items()}  # width 70
        positions = torch.arange(70).clamp(max=63).expand(3, -1)
        torch.testing.assert_close(model(**padded, position_ids=positions, exit_policy=policy).logits,
                                   model(**short, exit_policy=policy).logits, atol=1e-5, rtol=1e-5)
