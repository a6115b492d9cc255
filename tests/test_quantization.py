"""int8 serving (hf_eenet/quantization.py): per-token int8 linears, the refitted bank, exit probabilities."""

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_kwargs, tiny_model
from test_engine import _calibration, model_of, per_row

import hf_eenet
from hf_eenet.engine import depth_wave_forward, rows_from_encodings
from hf_eenet.quantization import Int8Linear, exit_probabilities, quantize_dynamic_int8, quantize_linears_int8


def test_int8_linear_rows_do_not_depend_on_the_batch_and_keep_their_own_scale():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40, bias=False)
    q = Int8Linear.from_linear(lin)
    # rows of very different magnitudes: one batch-wide activation scale would round the small rows to zero
    x = torch.randn(6, 7, 48) * torch.logspace(-3, 2, 6)[:, None, None]
    with torch.no_grad():
        y, ref = q(x), lin(x)
        assert y.shape == (6, 7, 40) and y.dtype == torch.float32
        for i in range(6):  # a row alone == the same row in the batch, bit for bit
            assert torch.equal(q(x[i]), y[i])
            assert torch.equal(q(x[i, 3:4]), y[i, 3:4])
        rel = (y - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert float(rel.max()) < 0.03, rel.max()
        # with a bias; an all-zero row gives the bias exactly; bf16 input computes in float32
        lb = torch.nn.Linear(48, 40)
        qb = Int8Linear.from_linear(lb)
        torch.testing.assert_close(qb(x), lb(x), atol=0.05 * float(x.abs().max()), rtol=0.03)
        assert torch.equal(qb(torch.zeros(2, 48)), lb.bias.expand(2, 40))
        assert qb(x.bfloat16()).dtype == torch.float32
    assert not list(q.parameters()) and q.weight_int8.dtype == torch.int8
    with pytest.raises(RuntimeError, match="CPU"):
        q(torch.zeros(2, 48, device="meta"))


def test_quantize_linears_int8_replaces_every_linear_below_a_module():
    nn = torch.nn
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)), nn.Linear(16, 3))
    assert quantize_linears_int8(net) == 3
    assert [type(m).__name__ for m in net] == ["Int8Linear", "GELU", "Sequential", "Int8Linear"]
    assert isinstance(net[2][0], Int8Linear) and isinstance(net[2][1], torch.nn.LayerNorm)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("name", ["eenet", "entropy", "maxprob", "patience"])
def test_int8_model_gives_each_text_what_it_gets_alone(name, kind):
    """Batched early exit of an int8 model (per-request loop and depth waves) == each text alone: same exits and
    labels, scores within int8 rounding of padding's last-bit changes (a batch-wide scale fails this)."""
    q = quantize_dynamic_int8(model_of(kind), refit=False, progress=False)  # a copy; no bank to refit
    probs, labels = _calibration(q, seed=11)
    costs = q.config.exit_costs
    if name == "eenet":
        policy = hf_eenet.EENetScheduler(restarts=1, max_epochs=20, fallback=False).fit(probs, labels, costs, 0.5,
                                                                                          seed=0)
    else:
        cls = {"entropy": hf_eenet.EntropyPolicy, "maxprob": hf_eenet.MaxProbPolicy,
               "patience": hf_eenet.PatiencePolicy}[name]
        policy = cls.calibrate(probs, labels, costs, 0.5)
    batch = random_batch(n=30, max_len=22, seed=5, pad_id=q.config.pad_token_id, min_len=2)
    ref_logits, ref_exits = per_row(q, batch, policy)
    if name != "patience":  # (patience on this model stops every row at one exit)
        assert len(set(ref_exits.tolist())) >= 2, "rows must spread over several exits for this test to bite"
    with torch.no_grad():
        loop = q(**batch, exit_policy=policy)
    waves_logits, waves_exits = depth_wave_forward(q, rows_from_encodings(batch), policy, micro_batch_size=4,
                                                   chunk_size=13)
    for logits, exits in ((loop.logits, loop.exit_index), (waves_logits, waves_exits)):
        assert torch.equal(exits, ref_exits)
        assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
        torch.testing.assert_close(logits, ref_logits, atol=2e-2, rtol=1e-3)



def test_int8_pipeline_over_a_list_at_batch_size_1_equals_text_by_text_bit_for_bit(minilm_dir):
    """Single-row layer calls have no padding: the int8 pipeline over a list (its default batch size) gives every
    text exactly the scores, labels and exits it gets alone."""
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = tiny_model(layers=4, vocab_size=tok.vocab_size, seed=4)
    q = quantize_dynamic_int8(model, refit=False, progress=False)
    probs, labels = _calibration(q, seed=3)
    policy = hf_eenet.EntropyPolicy.calibrate(probs, labels, q.config.exit_costs, 0.5)
    clf = pipeline("text-classification", model=q, tokenizer=tok)
    texts = ["a good film", "the plot is thin but the cast is lovely and warm", "dull", "it is what it is , i guess",
             "a story told with care , wit and a great deal of patience over two long hours"] * 3
    alone = [clf(t, exit_policy=policy)[0] for t in texts]
    assert clf(texts, exit_policy=policy) == alone


def test_quantize_dynamic_int8_keeps_budget_path_and_refits_bank(minilm_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=tok.vocab_size))
    model = hf_eenet.EENetBertForSequenceClassification(cfg).eval()
    texts = [f"sample {i} {'good' if i % 2 else 'bad'} " * (1 + i % 3) for i in range(64)]
    labels = [i % 2 for i in range(64)]
    hf_eenet.refit_scheduler_bank(model, tok, texts, labels, budgets=[0.5, 0.8], max_length=32, progress=False)
    with pytest.raises(ValueError, match="refit"):
        hf_eenet.quantize_dynamic_int8(model)
    q = hf_eenet.quantize_dynamic_int8(model, tok, texts, labels, max_length=32, progress=False)
    assert q is not model and q.config.scheduler_budgets == [0.5, 0.8]
    assert isinstance(q.bert.encoder.layer[0].attention.self.query, Int8Linear)
    assert isinstance(q.classifier, Int8Linear) and isinstance(q.exit_heads[0].dense, Int8Linear)
    assert not any(isinstance(m, torch.nn.Linear) for part in (q.bert, q.exit_heads) for m in part.modules())
    assert isinstance(q.eenet_schedulers[0].utility[0], torch.nn.Linear)  # the schedulers are untouched
    assert q.config.scheduler_bank[0]["data_fingerprint"] != model.config.scheduler_bank[0]["data_fingerprint"]
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        out = q(**enc, budget=0.5)
    assert out.exit_cost.mean().item() <= 0.5 + 0.1
    dropped = hf_eenet.quantize_dynamic_int8(model, refit=False)
    with pytest.raises(ValueError, match="no fitted EENet scheduler"):
        dropped(**enc, budget=0.5)
    with pytest.raises(ValueError, match="quantised"):
        q.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()
    # a bank re-matched on traffic: quantising without traffic says that the re-match is not carried over; with
    # traffic_texts the refitted bank is re-matched on the quantised model's outputs for that traffic
    traffic = [f"new {i} {'fine' if i % 3 else 'poor'} " * (1 + i % 4) for i in range(48)]
    model.rematch_budgets(hf_eenet.exit_probabilities(model, tok, traffic, max_length=32, progress=False))
    with pytest.warns(UserWarning, match="re-match"):
        hf_eenet.quantize_dynamic_int8(model, tok, texts, labels, max_length=32, progress=False)
    q2 = hf_eenet.quantize_dynamic_int8(model, tok, texts, labels, traffic_texts=traffic, max_length=32,
                                        progress=False)
    assert sorted(q2.eenet_quantization["rematch"]) == [0.5, 0.8]
    assert all(r["rematched_on"]["rows"] == 48 for r in q2.config.scheduler_bank)
    # matched on the *quantised* model's outputs for the traffic (compared offline on the all-exits outputs)
    q_probs = hf_eenet.exit_probabilities(q2, tok, traffic, max_length=32, progress=False)
    costs = torch.tensor(q2.config.exit_costs, dtype=torch.float64)
    for sched, rec in zip(q2.eenet_schedulers, q2.config.scheduler_bank):
        cost = float(costs[sched.exit_index(q_probs)].mean())
        assert cost == pytest.approx(q2.eenet_quantization["rematch"][rec["budget"]]["cost_after"], abs=1e-9)
    with pytest.raises(ValueError, match="refit=True"):
        hf_eenet.quantize_dynamic_int8(model, refit=False, traffic_texts=traffic)


def test_exit_probabilities_run_in_eval_mode_and_restore_the_mode(minilm_dir):
    """A model straight out of training (train mode, dropout on) gives the serving probabilities, reproducibly."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = tiny_model(layers=2, vocab_size=30522, hidden_dropout_prob=0.5)
    texts = ["a good film", "a dull plot", "it is fine"] * 4
    model.train()
    a = exit_probabilities(model, tok, texts, progress=False)
    b = exit_probabilities(model, tok, texts, progress=False)
    assert model.training, "the caller's mode is restored"
    model.eval()
    assert np.array_equal(a, b) and np.array_equal(a, exit_probabilities(model, tok, texts, progress=False))


def test_a_failed_inplace_quantisation_leaves_the_model_as_it_was_and_int8_models_never_save(minilm_dir, tmp_path,
                                                                                              monkeypatch):
    """Inputs are checked before the model is touched; a failure during the refit (or Ctrl-C) puts the fp32
    Linears and the bank back: a half-quantised model served the fp32 bank and saved, reloading with re-initialised
    weights. A model with Int8Linear modules (also from quantize_linears_int8 alone) is refused on save."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = hf_eenet.EENetBertForSequenceClassification(
        hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=tok.vocab_size))).eval()
    texts = [f"sample {i} {'good' if i % 2 else 'bad'} " * (1 + i % 3) for i in range(64)]
    labels = [i % 2 for i in range(64)]
    hf_eenet.refit_scheduler_bank(model, tok, texts, labels, budgets=[0.5, 0.8], max_length=32, progress=False)
    # a model without a bank refitted at budgets= gets today's scheduler features, not the legacy set
    assert model.config.scheduler_config["features"] == hf_eenet.EENetScheduler().features
    bank, state = model.eenet_schedulers, {k: v.clone() for k, v in model.state_dict().items()}
    records = [dict(r) for r in model.config.scheduler_bank]

    def unchanged():
        assert not any(isinstance(m, Int8Linear) for m in model.modules())
        assert model.eenet_schedulers is bank and model.config.scheduler_bank == records
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    with pytest.raises(ValueError, match="one entry per text"):
        quantize_dynamic_int8(model, tok, texts, labels[:-1], inplace=True, max_length=32, progress=False)
    unchanged()
    model.config.sentence_pairs = False  # as the recipe records it
    with pytest.raises(ValueError, match="trained on single texts"):
        quantize_dynamic_int8(model, tok, texts, labels, text_pairs=texts, inplace=True, progress=False)
    unchanged()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_eenet.EENetScheduler, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize_dynamic_int8(model, tok, texts, labels, inplace=True, max_length=32, progress=False)
    unchanged()
    model.save_pretrained(tmp_path / "fp32")  # still the fp32 model: saves
    quantize_linears_int8(model.bert)
    with pytest.raises(ValueError, match="int8-quantised"):
        model.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_all_exit_passes_check_sentence_pairs_against_the_model(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = tiny_model(layers=2, vocab_size=30522)
    model.config.sentence_pairs = True
    with pytest.raises(ValueError, match="trained on sentence pairs: pass the second texts"):
        exit_probabilities(model, tok, ["a question"], progress=False)
    assert exit_probabilities(model, tok, ["a question"], text_pairs=["its passage"], progress=False).shape[0] == 1
    model.config.sentence_pairs = False
    with pytest.raises(ValueError, match="trained on single texts"):
        exit_probabilities(model, tok, ["a"], text_pairs=["b"], progress=False)
