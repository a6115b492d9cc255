"""Decision cost in the exit costs (hf_eenet/costs.py, docs/method.md §7.2)."""

import pytest

from conftest import tiny_model
from hf_eenet.costs import measure_decision_ms, profile_exit_costs
from hf_eenet.policies import MaxProbPolicy


def test_profile_adds_the_served_policys_decisions():
    model = tiny_model(num_labels=3, layers=4)
    prof = profile_exit_costs(model, repeats=3, warmup=1)
    info = prof.info
    dec, base = info["decision_ms"], info["latency_ms_without_decisions"]
    assert info["decision_policy"] == "EENetScheduler" and len(dec) == 3 and all(d > 0 for d in dec)
    # c_k = t_forward(k) + sum_{j <= k, j < K} d_j, then made non-decreasing
    expect = [t + sum(dec[: min(k + 1, 3)]) for k, t in enumerate(base)]
    for k in range(4):
        assert prof.latency_ms[k] >= expect[k] - 1e-12
    assert prof.latency_ms[-1] == pytest.approx(max(expect), rel=1e-5)
    plain = profile_exit_costs(model, repeats=3, warmup=1, decision_policy=None)
    assert "decision_ms" not in plain.info
    with pytest.raises(ValueError, match="decision_policy"):
        profile_exit_costs(model, repeats=1, warmup=0, decision_policy="bogus")


def test_measure_decision_ms_for_any_policy():
    ms = measure_decision_ms(MaxProbPolicy([0.5, 0.5, 0.5]), 3, 4, batch_size=2, repeats=5)
    assert len(ms) == 2 and all(m > 0 for m in ms)


def test_profile_uses_median_length_texts_both_pair_segments_and_truncates(minilm_dir):
    from unittest import mock

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = tiny_model(num_labels=3, layers=4, vocab_size=tok.vocab_size, max_position_embeddings=64)
    n_tokens = lambda *seg: len(tok(*seg)["input_ids"])  # noqa: E731
    long = " ".join(["word"] * 500)
    texts = [long, "short", "one two three four five six seven eight nine", "a b c d e f"]
    # not the first text (500 words), the one of median length (batch 1 of 4: the 2nd shortest)
    prof = profile_exit_costs(model, tok, texts=texts, measure_latency=False)
    assert prof.info["seq_len"] == n_tokens("a b c d e f")
    two = profile_exit_costs(model, tok, texts=texts, batch_size=2, measure_latency=False)
    assert two.info["seq_len"] == n_tokens("one two three four five six seven eight nine")
    # longer than the model takes: truncated to its 64 positions (was an IndexError after training)
    prof = profile_exit_costs(model, tok, texts=[long], repeats=1, warmup=0, decision_policy=None)
    assert prof.info["seq_len"] == 64 and len(prof.latency_ms) == 4
    assert profile_exit_costs(model, tok, texts=[long], max_length=20, measure_latency=False).info["seq_len"] == 20
    # sentence pairs: both segments are profiled
    pair = profile_exit_costs(model, tok, texts=["a b"], text_pairs=["c d e f g h i"], measure_latency=False)
    assert pair.info["seq_len"] == n_tokens("a b", "c d e f g h i") > n_tokens("a b")
    with pytest.raises(ValueError, match="non-empty"):
        profile_exit_costs(model, tok, texts=[], measure_latency=False)
    with pytest.raises(ValueError, match="one string per text"):
        profile_exit_costs(model, tok, texts=["a", "b"], text_pairs=["c"], measure_latency=False)
    with pytest.raises(ValueError, match="needs texts"):
        profile_exit_costs(model, tok, text_pairs=["c"], measure_latency=False)
    # a bad decision_policy is refused before any forward is timed
    with mock.patch.object(type(model), "forward", side_effect=AssertionError("forward ran")):
        with pytest.raises(ValueError, match="decision_policy"):
            profile_exit_costs(model, tok, texts=["a b"], decision_policy="entropy")


def test_costs_are_made_increasing_and_an_inversion_beyond_noise_is_said(monkeypatch):
    from hf_eenet import costs

    lat, worst = costs.monotone_latencies([38.3, 97.6, 123.0, 183.9, 218.0, 187.8])  # a profile taken on a busy CPU
    assert all(b > a for a, b in zip(lat, lat[1:])) and lat[:5] == [38.3, 97.6, 123.0, 183.9, 218.0]
    assert worst == pytest.approx((218.0 - 187.8) / 218.0)
    assert costs.monotone_latencies([1.0, 2.0, 3.0]) == ([1.0, 2.0, 3.0], 0.0)
    model = tiny_model(num_labels=3, layers=4)
    measured = iter([10.0, 20.0, 30.0, 25.0])  # the last exit 17 % of the full latency cheaper than the one before
    real_median = costs.statistics.median  # the four exits' timings, then the real median (later checks use it)
    monkeypatch.setattr(costs.statistics, "median", lambda samples: next(measured, None) or real_median(samples))
    with pytest.warns(RuntimeWarning, match="dominated by noise: an exit measured 17 %"):
        prof = profile_exit_costs(model, repeats=1, warmup=0, decision_policy=None)
    assert prof.info["largest_inversion"] == pytest.approx(5 / 30)
    assert prof.latency_ms[:3] == [10.0, 20.0, 30.0] and prof.latency_ms[3] > 30.0


def test_a_profile_whose_steps_disagree_is_said_to_be_noise(monkeypatch):
    """A disturbance that hits one exit's timings (here the last layer made 200 ms slower: far above what a busy
    machine adds to the other steps, so the check still sees it under load) gives a step far above the others per
    FLOP, which the interleaved medians do not remove and the inversion check does not see."""
    import time as _time

    from hf_eenet import costs

    model = tiny_model(num_labels=3, layers=4)
    last = model.backbone.encoder.layer[-1]
    plain = type(last).forward
    monkeypatch.setattr(last, "forward", lambda *a, **k: (_time.sleep(0.2), plain(last, *a, **k))[1])
    with pytest.warns(RuntimeWarning, match=r"dominated by noise: the time one exit adds .* is [0-9.]+x the typical"):
        prof = profile_exit_costs(model, repeats=3, warmup=1, decision_policy=None)
    assert prof.info["largest_step_ratio"] > costs.LATENCY_STEP_RATIO_TOLERANCE
    # the profile that served the AG News model: steps 1.8 / 5.4 / 2.1 / 5.6 / 45.6 ms for one layer each
    flops = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert costs.latency_step_ratio([6.3, 8.1, 13.5, 15.6, 21.2, 66.8], flops) == pytest.approx(45.6 / 5.4, rel=1e-2)
    assert costs.latency_step_ratio([1.81, 3.31, 4.78, 6.46, 8.06, 9.66], flops) < 1.2  # the same model, quiet CPU
    # three exits: two steps, the larger against the smaller (a median of two could never reach the tolerance)
    assert costs.latency_step_ratio([1.15, 1.16, 42.47], [1.0, 2.0, 3.0]) > costs.LATENCY_STEP_RATIO_TOLERANCE
    assert costs.latency_step_ratio([1.0, 2.1, 3.0], [1.0, 2.0, 3.0]) < 1.3
    assert costs.latency_step_ratio([1.0, 2.0], [1.0, 2.0]) == 1.0  # two exits: nothing to compare
