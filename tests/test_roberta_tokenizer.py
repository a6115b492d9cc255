"""RoBERTa with a RoBERTa tokenizer (byte-level BPE, no token types, ``<s> a </s></s> b </s>`` pairs) through the
trainer and the pipeline: what the BERT tests read from token types is read from the separators, the truncation
evidence re-tokenizes with this tokenizer, and batched early exit equals each input alone. The tokenizer is built
offline from the byte alphabet (no merges: one token per byte), as no RoBERTa tokenizer files exist on this machine."""

import warnings

import pytest
import torch
from conftest import tiny_kwargs
from datasets import Dataset
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, RobertaTokenizer, TrainingArguments, pipeline

import hf_eenet
from hf_eenet.trainer import _rows_are_pairs, _separator_counts


@pytest.fixture(scope="module")
def rtok():
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = RobertaTokenizer(vocab=vocab, merges=[])
    assert tok("ab", "cd")["input_ids"] == [0, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), 2, 2,
                                            tok.convert_tokens_to_ids("c"), tok.convert_tokens_to_ids("d"), 2]
    assert "token_type_ids" not in tok("ab", "cd")
    return tok


def roberta_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = hf_eenet.EENetRobertaConfig(**tiny_kwargs(num_labels=2, pad_token_id=1, vocab_size=len(tok),
                                                    max_position_embeddings=90),
                                      id2label={0: "negative", 1: "positive"},
                                      label2id={"negative": 0, "positive": 1})
    return hf_eenet.EENetRobertaForSequenceClassification(cfg).eval()


def targs(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no",
                             per_device_eval_batch_size=16, disable_tqdm=True, seed=0, dataloader_num_workers=0)


TEXTS = [f"item {i} was {'good' if i % 2 else 'bad!'} today" for i in range(10, 70)]  # all of one length
LABELS = [i % 2 for i in range(10, 70)]


def rows(tok, pairs: bool, max_length=88, texts=TEXTS, **kw):
    data = {"premise": texts, "labels": LABELS[: len(texts)]}
    if pairs:
        data["hypothesis"] = texts[::-1]
    return Dataset.from_dict(data).map(
        lambda b: tok(b["premise"], b["hypothesis"] if pairs else None, truncation=True, max_length=max_length, **kw),
        batched=True)


def test_roberta_rows_are_told_pairs_or_single_texts_by_their_separators(rtok, minilm_dir, tmp_path):
    """RoBERTa rows carry no token types: the separators tell pairs from single texts (pairs confirmed by the rows'
    text columns, as one string may write a pair inline), so a bank fitted by the trainer on pairs records
    config.sentence_pairs (the pipeline then refuses one text, as it does for BERT and for the recipe), and rows of
    the other kind are refused before fitting."""
    pairs, single = rows(rtok, True), rows(rtok, False)
    assert "token_type_ids" not in pairs.column_names
    cfg = roberta_model(rtok).config
    assert cfg.type_vocab_size == 2  # EENetRobertaConfig's default: token types cannot be trusted to mark pairs
    assert _rows_are_pairs(pairs, cfg, rtok) is True
    assert _rows_are_pairs(single, cfg, rtok) is False
    assert _rows_are_pairs(pairs, cfg, None) is None  # no tokenizer: nothing to read the separators with
    assert _rows_are_pairs(pairs.remove_columns(["premise", "hypothesis"]), cfg, rtok) is None  # pairs unconfirmed
    assert _rows_are_pairs(single.remove_columns(["premise"]), cfg, rtok) is False  # one separator: one text
    # a RoBERTa tokenizer asked for token types gives a pair zeros throughout: the separators still tell
    typed = rows(rtok, True, return_token_type_ids=True)
    assert not any(any(t) for t in typed["token_type_ids"])
    assert _rows_are_pairs(typed, cfg, rtok) is True
    assert _rows_are_pairs(typed, cfg, None) is None  # ... and without a tokenizer they tell nothing (not "single")
    # a pair written inline in one string ("a</s></s>b") holds a pair's separators but is served as one string
    inline = rows(rtok, False, texts=[f"{a}</s></s>{b}" for a, b in zip(TEXTS, TEXTS[::-1])])
    assert inline["input_ids"] == pairs["input_ids"]
    assert _rows_are_pairs(inline, cfg, rtok) is False
    assert _rows_are_pairs(inline.remove_columns(["premise"]), cfg, rtok) is None
    both = inline.add_column("first", TEXTS).add_column("second", TEXTS[::-1])  # the inline string and its parts
    assert _rows_are_pairs(both, cfg, rtok) is None  # either reading gives these ids: nothing is recorded
    bare = rows(rtok, False, add_special_tokens=False)  # no separator at all: cannot tell
    assert _rows_are_pairs(bare, cfg, rtok) is None
    mixed = Dataset.from_dict({"input_ids": pairs["input_ids"][:3] + single["input_ids"][:3]})
    assert _rows_are_pairs(mixed, cfg, rtok) is None
    # counted in Arrow for a datasets.Dataset, row by row otherwise: the same counts; a selection is read as selected
    assert _separator_counts(mixed, 2) == {1, 3} and _separator_counts(mixed.select([4, 3, 5]), 2) == {1}
    assert _rows_are_pairs(mixed.select([4, 3, 5]), cfg, rtok) is False
    assert _rows_are_pairs(mixed.to_iterable_dataset(), cfg, rtok) is None
    assert _separator_counts(mixed.to_iterable_dataset(), 2) is None
    # padding is not read: a pad id equal to the separator's would otherwise count
    padded = Dataset.from_dict({"input_ids": [r + [2] * 4 for r in single["input_ids"][:4]],
                                "attention_mask": [[1] * len(r) + [0] * 4 for r in single["input_ids"][:4]]})
    assert _rows_are_pairs(padded, cfg, rtok) is False
    # a stream that can be read once: ids and masks come from the same reading
    once = iter([{"input_ids": r + [2] * 3, "attention_mask": [1] * len(r) + [0] * 3} for r in single["input_ids"][:5]])
    assert _rows_are_pairs(once, cfg, rtok) is False
    assert _rows_are_pairs(single.to_iterable_dataset(), cfg, rtok) is False
    # BERT rows whose token_type_ids were dropped: read by the separators too
    btok = AutoTokenizer.from_pretrained(minilm_dir)
    bcfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2))
    bert_pairs = rows(btok, True)
    assert _rows_are_pairs(bert_pairs, bcfg, btok) is True
    assert _rows_are_pairs(bert_pairs.remove_columns(["token_type_ids"]), bcfg, btok) is True
    assert _rows_are_pairs(rows(btok, False).remove_columns(["token_type_ids"]), bcfg, btok) is False
    for kind, data in (("pairs", pairs), ("single", single)):
        model = roberta_model(rtok)
        trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=rtok)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tied scores of a random model on few rows
            trainer.fit_scheduler(eval_dataset=data, budgets=[0.5, 0.7], restarts=1, max_epochs=2)
        assert model.config.sentence_pairs is (kind == "pairs")
        other = single if kind == "pairs" else pairs
        with pytest.raises(ValueError, match=r"trained on .* but the validation rows are .*\(their token types or "
                                             r"separators\)"):
            trainer.fit_scheduler(eval_dataset=other, budgets=[0.5], restarts=1, max_epochs=2)
    model.save_pretrained(tmp_path / "single")  # the last one: fitted on single texts
    rtok.save_pretrained(tmp_path / "single")
    clf = pipeline("text-classification", model=str(tmp_path / "single"))
    with pytest.raises(ValueError, match="trained on single texts"):
        clf({"text": "item 1", "text_pair": "was good"})
    # rows that write the pair inline are one string each: served as they were fitted
    model = roberta_model(rtok)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=rtok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit_scheduler(eval_dataset=inline, budgets=[0.5], restarts=1, max_epochs=2)
    assert model.config.sentence_pairs is False
    model.save_pretrained(tmp_path / "inline")
    rtok.save_pretrained(tmp_path / "inline")
    assert pipeline("text-classification", model=str(tmp_path / "inline"))("item 1</s></s>was good")[0]["label"]


def test_roberta_pipeline_batched_pairs_equal_each_pair_alone(rtok, tmp_path):
    """A RoBERTa pair model saved with its tokenizer and served by the pipeline: pairs in a list, at batch 1 and in
    batches, give the labels, scores and exits of each pair alone at every budget of its bank; one text is refused."""
    model = roberta_model(rtok, seed=1)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=rtok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit_scheduler(eval_dataset=rows(rtok, True), budgets=[0.4, 0.7], restarts=1, max_epochs=2)
    model.save_pretrained(tmp_path / "m")
    rtok.save_pretrained(tmp_path / "m")
    clf = pipeline("text-classification", model=str(tmp_path / "m"))
    inputs = [{"text": f"the film {i} {'is' * (i % 3)} fine", "text_pair": f"no {i}" * (1 + i % 4)} for i in range(9)]

    def key(results):
        return [(r["label"], r["exit_layer"], round(r["score"], 5)) for r in results]

    seen = set()
    for budget in (0.4, 0.7):
        alone = key([clf(x, budget=budget) for x in inputs])  # one pair in: one result out (a dict, as stock)
        seen |= {e for _, e, _ in alone}
        assert key(clf(inputs, budget=budget)) == alone
        assert key(clf(inputs, budget=budget, batch_size=4)) == alone
    assert len(seen) > 1, "the budgets must send pairs to more than one exit"
    with pytest.raises(ValueError, match="trained on sentence pairs"):
        clf("one text only", budget=0.4)


def test_roberta_truncation_evidence_reads_its_own_tokenizer(rtok, tmp_path):
    """Templated texts of one length tokenized by the RoBERTa tokenizer are whole texts (nothing recorded, no
    warning); the same texts cut at a length are confirmed as cut by their text columns and that length recorded."""
    model = roberta_model(rtok)
    trainer = hf_eenet.EENetTrainer(model=model, args=targs(tmp_path), processing_class=rtok)
    for pairs in (False, True):
        whole = rows(rtok, pairs)
        assert len({sum(m) for m in whole["attention_mask"]}) == 1  # one length: it looks like a truncation
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.config.max_seq_length = None
            assert trainer._fitting_length(model, whole, None) is None
        cut = rows(rtok, pairs, max_length=16)
        model.config.max_seq_length = None
        with pytest.warns(UserWarning, match=r"are truncated at 16 tokens \(their text columns"):
            assert trainer._fitting_length(model, cut, None) == 16


def test_inputs_longer_than_the_model_takes_are_refused_naming_the_limit(rtok, tmp_path):
    """Review 108: an explicit max_length= past what the model takes (a RoBERTa takes its position table less the
    padding offset: 88 tokens of 90 here), truncation=False, or untruncated tensors failed inside the embeddings with
    "index 90 is out of bounds" on every path (per text, depth waves, early_exit_predict, forward), never naming the
    limit; return_overflowing_tokens=True served a text's first window alone, or another text's window in a batch.
    Each is refused by name; the default truncation and a RoBERTa batch padded past the limit still serve."""
    model = roberta_model(rtok)
    model.save_pretrained(tmp_path / "m")
    rtok.save_pretrained(tmp_path / "m")
    clf = pipeline("text-classification", model=str(tmp_path / "m"))
    policy = hf_eenet.MaxProbPolicy([0.6] * 4)
    long_text = "a long review " * 20  # 280 byte-level tokens
    too_long = "inputs of {} tokens are longer than this model takes \\(88 tokens, max_position_embeddings=90\\)"
    served = clf(long_text, exit_policy=policy)  # truncated by default to 88
    assert served == clf(long_text, exit_policy=policy, max_length=88)
    for call, n in [(lambda: clf(long_text, exit_policy=policy, max_length=89), 89),
                    (lambda: clf(long_text, exit_policy=policy, truncation=False), 282),
                    (lambda: clf([long_text, "ok"], exit_policy=policy, truncation=False, batch_size=2), 282),
                    (lambda: clf([long_text, "ok"], exit_policy=policy, truncation=False, batch_size=2, chunk_size=0),
                     282),
                    (lambda: model.early_exit_predict([long_text], exit_policy=policy, tokenizer=rtok, max_length=100),
                     100),
                    (lambda: model(**rtok([long_text], return_tensors="pt"), exit_policy=policy), 282),
                    (lambda: model(**rtok([long_text], return_tensors="pt")), 282)]:
        with pytest.raises(ValueError, match=too_long.format(n)):
            call()
    short = ["short one", "another"]
    plain = model(**rtok(short, padding=True, return_tensors="pt"), exit_policy=policy).logits
    with torch.no_grad():  # RoBERTa numbers only a row's own tokens: short rows padded past the limit, or past the
        # whole table (review 109), serve as stock serves them, with or without a mask, or with the caller's positions
        for width in (90, 100):
            padded = rtok(short, padding="max_length", max_length=width, return_tensors="pt")
            positions = torch.arange(1, 1 + width).expand(2, -1) * padded["attention_mask"] + 1  # as stock
            for kw in ({}, {"position_ids": positions}):
                torch.testing.assert_close(model(**{**padded, **kw}, exit_policy=policy).logits, plain,
                                           atol=1e-5, rtol=1e-5)
            unmasked = model(input_ids=padded["input_ids"], exit_policy=policy).logits  # (padding attended to)
            assert unmasked.shape == (2, 2) and bool(unmasked.isfinite().all())
            # positions follow the ids that are not padding, as stock numbers them, whatever the mask says and on
            # every path (review 110: an all-ones mask, or rows without a mask in early_exit_predict, were refused)
            ones = torch.ones_like(padded["attention_mask"])
            torch.testing.assert_close(model(input_ids=padded["input_ids"], attention_mask=ones,
                                             exit_policy=policy).logits, unmasked, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.early_exit_predict({"input_ids": padded["input_ids"]},
                                                                exit_policy=policy).logits, unmasked,
                                       atol=1e-5, rtol=1e-5)
        assert clf(short[0], exit_policy=policy, padding="max_length", max_length=100) == clf(short[0],
                                                                                               exit_policy=policy)
        embeds = model.backbone.embeddings.word_embeddings(padded["input_ids"][:, :89])
        with pytest.raises(ValueError, match="inputs 89 tokens wide \\(padding included\\) are longer than this model "
                                             "takes \\(88 tokens"):  # stock numbers inputs_embeds across the width
            model(inputs_embeds=embeds, attention_mask=padded["attention_mask"][:, :89], exit_policy=policy)
    for call in (lambda: clf(long_text, exit_policy=policy, return_overflowing_tokens=True, stride=4),
                 lambda: clf([long_text, long_text], exit_policy=policy, return_overflowing_tokens=True, stride=4,
                             batch_size=2, chunk_size=0),
                 lambda: model.early_exit_predict([long_text], exit_policy=policy, tokenizer=rtok,
                                                  return_overflowing_tokens=True)):
        with pytest.raises(ValueError, match="got return_overflowing_tokens=True: it splits a long text into several "
                                             "rows"):
            call()
