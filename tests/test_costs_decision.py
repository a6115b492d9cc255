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
