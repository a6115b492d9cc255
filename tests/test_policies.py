"""Baseline exit policies (BranchyNet, MSDNet, PABEE, static, oracle), their calibration, and evaluate_exits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_eenet.evaluation import evaluate_exits
from hf_eenet.policies import (
    EntropyPolicy,
    MaxProbPolicy,
    OraclePolicy,
    PatiencePolicy,
    ScoreThresholdPolicy,
    StaticPolicy,
    check_budget,
    check_costs,
    check_labels,
    entropy_confidence,
    geometric_shares,
    sequential_quantile_thresholds,
)

COSTS = [51.0, 91.4, 148.1, 188.9]  # upstream's BERT-base per-exit latencies (ms), K = 4
K = len(COSTS)
FRACS = (0.3, 0.5, 0.8)
N_CAL = 10000


def make_exit_probs(n: int, k: int = K, c: int = 5, seed: int = 0):
    """Synthetic all-exits softmax outputs with a known structure.

    Every sample has a difficulty d ~ U(0, 1); exit k adds a margin (k+1)/k_total * 5 * (1 - d) to the true class.
    Logit noise = a per-sample component shared by all exits + a per-exit component, so deeper exits are more
    accurate and more confident, and predictions are correlated across exits (argmax sometimes stays, sometimes
    flips). Scores are continuous (no ties). Returns ``(probs [n, k, c] float32, labels [n] long)``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    difficulty = torch.rand(n, generator=g)
    shared = torch.randn(n, 1, c, generator=g)
    own = torch.randn(n, k, c, generator=g)
    logits = 1.0 * shared + 0.7 * own
    margin = (torch.arange(k, dtype=torch.float32) + 1) / k * 5.0
    logits[torch.arange(n), :, labels] += margin[None, :] * (1 - difficulty[:, None])
    return torch.softmax(logits, -1), labels


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Small tensor ops only: one intra-op thread avoids OpenMP spin-waiting on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cal():
    return make_exit_probs(N_CAL, seed=1)


@pytest.fixture(scope="module")
def held():
    return make_exit_probs(N_CAL, seed=2)


def mean_cost(exits, costs=COSTS):
    return float(torch.tensor(costs, dtype=torch.float64)[exits].mean())


def accuracy(probs, labels, exits):
    return float((probs.argmax(-1)[torch.arange(len(labels)), exits] == labels).double().mean())


def run_online(policy, probs, order=None):
    """The early-exit loop as the model runs it: exit by exit, only on the rows still running, slicing the state."""
    n, k_total, _ = probs.shape
    idx = torch.arange(n) if order is None else torch.as_tensor(order)
    state = policy.init_state(idx.numel(), "cpu")
    out = torch.full((n,), -1, dtype=torch.long)
    for k in range(k_total):
        if k == k_total - 1:
            out[idx] = k
            break
        stop = policy.decide(k, probs[idx, k], state).bool()
        out[idx[stop]] = k
        keep = ~stop
        idx = idx[keep]
        state = {key: v[keep] for key, v in state.items()}
        if idx.numel() == 0:
            break
    return out


# ---------------------------------------------------------------------------------------------------------------------
# MSDNet / BranchyNet calibration
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MaxProbPolicy, EntropyPolicy])
@pytest.mark.parametrize("frac", FRACS)
def test_score_policy_calibration_meets_budget(cls, frac, cal, held):
    probs, labels = cal
    budget = frac * COSTS[-1]
    pol = cls.calibrate(probs, labels, COSTS, budget)
    assert isinstance(pol, cls) and isinstance(pol, ScoreThresholdPolicy)
    assert pol.budget == pytest.approx(budget) and pol.costs == COSTS and pol.num_exits == K
    realised = mean_cost(pol.exit_index(probs))
    assert pol.planned_cost == pytest.approx(realised, abs=1e-9)
    assert abs(realised - budget) <= 0.01 * budget
    one_sample = (COSTS[-1] - COSTS[0]) / N_CAL
    assert realised <= budget + one_sample + 1e-9
    assert pol.note is None
    assert pol.thresholds[-1] == -math.inf
    assert sum(pol.shares) == pytest.approx(1.0)
    # held-out draw from the same distribution
    hprobs, _ = held
    assert abs(mean_cost(pol.exit_index(hprobs)) - budget) <= 0.03 * budget
    # online loop with dropped rows = offline exit_index
    assert torch.equal(run_online(pol, hprobs[:500]), pol.exit_index(hprobs[:500]))


@pytest.mark.parametrize("cls", [MaxProbPolicy, EntropyPolicy])
def test_calibrated_thresholds_sit_between_calibration_scores(cls, cal):
    """A threshold equal to a calibration row's score decides that row on the last bit of its score (another batch
    shape can move it across): calibrated thresholds are midpoints (D8), and the rows that pass are the same as with
    the raw quantile thresholds (the realised cost is unchanged)."""
    probs, labels = cal
    probs = probs[:997]
    scores = cls.calibration_scores(probs)
    for frac in FRACS:
        pol = cls.calibrate(probs, labels[:997], COSTS, frac * COSTS[-1])
        exits = pol.exit_index(probs)
        for k in range(K - 1):
            t = torch.tensor(pol.thresholds[k], dtype=torch.float32)
            reach = exits >= k
            if math.isfinite(pol.thresholds[k]) and reach.any():
                assert not (scores[reach, k] == t).any(), (frac, k)
        raw = sequential_quantile_thresholds(scores, pol.exit_fractions)
        assert torch.equal(cls(raw).exit_index(probs), exits)


def test_entropy_policy_score_is_entropy_confidence(cal):
    probs, _ = cal
    pol = EntropyPolicy([0.5] * K)
    assert torch.allclose(pol.score(probs[:, 0]), entropy_confidence(probs[:, 0]))
    expected = (entropy_confidence(probs[:, 0]) >= 0.5)
    assert torch.equal(pol.decide(0, probs[:, 0], {}), expected)


def test_calibration_budget_extremes(cal):
    probs, labels = cal
    lo = MaxProbPolicy.calibrate(probs, labels, COSTS, COSTS[0])
    assert lo.planned_cost == pytest.approx(COSTS[0])
    hi = EntropyPolicy.calibrate(probs, labels, COSTS, COSTS[-1])
    assert hi.planned_cost == pytest.approx(COSTS[-1], abs=(COSTS[-1] - COSTS[0]) / N_CAL + 1e-9)


def _first_over_budget_cost(cls, probs, budget):
    """Upstream/MSDNet rule: walk q over the grid p/20 (p = 1..39) and keep the first share vector whose planned cost
    exceeds the budget."""
    scores = cls.calibration_scores(probs)
    for p in range(1, 40):
        shares = geometric_shares(math.log(p / 20), K)
        if sum(s * c for s, c in zip(shares, COSTS)) > budget:
            break
    th = sequential_quantile_thresholds(scores, shares)
    return mean_cost(cls(th).exit_index(probs))


@pytest.mark.parametrize("cls", [MaxProbPolicy, EntropyPolicy])
def test_bisection_beats_first_over_budget(cls, cal):
    probs, labels = cal
    one_sample = (COSTS[-1] - COSTS[0]) / N_CAL
    upstream_over = []
    for frac in (0.35, 0.45, 0.55, 0.65, 0.75):
        budget = frac * COSTS[-1]
        ours = cls.calibrate(probs, labels, COSTS, budget).planned_cost
        up = _first_over_budget_cost(cls, probs, budget)
        assert ours <= budget + one_sample + 1e-9
        assert abs(ours - budget) <= abs(up - budget) + 1e-9
        upstream_over.append(up - budget)
    assert max(upstream_over) > 10 * one_sample  # the grid walk overshoots by many samples


# ---------------------------------------------------------------------------------------------------------------------
# Static
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frac", FRACS)
def test_static_calibration(frac, cal, held):
    probs, labels = cal
    budget = frac * COSTS[-1]
    pol = StaticPolicy.calibrate(probs, labels, COSTS, budget)
    k = max(i for i, c in enumerate(COSTS) if c <= budget)
    assert pol.exit_idx == k
    assert pol.mix_next == pytest.approx((budget - COSTS[k]) / (COSTS[k + 1] - COSTS[k]))
    assert pol.expected_cost == pytest.approx(budget, rel=1e-12)  # exact in expectation
    assert pol.planned_cost == pytest.approx(mean_cost(pol.exit_index(probs)))
    assert abs(pol.planned_cost - budget) <= 0.03 * budget
    assert pol.note is None  # distinct rows: the realised share is within sampling noise
    hprobs, _ = held
    exits = pol.exit_index(hprobs)
    assert set(exits.unique().tolist()) <= {k, k + 1}
    assert abs(mean_cost(exits) - budget) <= 0.03 * budget


def test_static_calibration_says_when_tied_rows_miss_the_budget():
    """Rows with identical exit-0 outputs get one pseudo-random draw: the mixed share goes all one way on them and the
    realised cost misses the budget by more than sampling noise, which the note says (as max-prob's does)."""
    uniform = torch.full((200, 2, 3), 1 / 3)
    pol = StaticPolicy.calibrate(uniform, torch.arange(200) % 3, [0.5, 1.0], 0.75)
    assert pol.planned_cost in (0.5, 1.0) and pol.expected_cost == pytest.approx(0.75)
    assert pol.note and "identical exit-0 outputs" in pol.note


def test_static_exact_cost_and_last_exit(cal):
    probs, labels = cal
    pol = StaticPolicy.calibrate(probs, labels, COSTS, COSTS[1])
    assert (pol.exit_idx, pol.mix_next) == (1, 0.0)
    assert torch.equal(pol.exit_index(probs), torch.ones(N_CAL, dtype=torch.long))
    pol = StaticPolicy.calibrate(probs, labels, COSTS, COSTS[-1])
    assert (pol.exit_idx, pol.mix_next) == (K - 1, 0.0)
    assert pol.planned_cost == pytest.approx(COSTS[-1])


def test_static_batch_equals_single_rows(held):
    probs, _ = held
    probs = probs[:300]
    pol = StaticPolicy(1, K, mix_next=0.4)
    batch = pol.exit_index(probs)
    single = torch.cat([pol.exit_index(probs[i : i + 1]) for i in range(probs.shape[0])])
    assert torch.equal(batch, single)
    perm = torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(pol.exit_index(probs[perm]), batch[perm])  # not tied to the batch position
    assert torch.equal(run_online(pol, probs), batch)
    assert 0 < (batch == 2).double().mean() < 1  # both exits used


def test_static_mixture_fraction_is_uniform(held):
    probs, _ = held
    for mix in (0.1, 0.5, 0.9):
        frac = (StaticPolicy(0, K, mix).exit_index(probs) == 1).double().mean().item()
        assert abs(frac - mix) < 0.03


# ---------------------------------------------------------------------------------------------------------------------
# PABEE
# ---------------------------------------------------------------------------------------------------------------------


def probs_from_argmax(seqs, c=3):
    """[N, K] argmax sequences -> [N, K, C] probabilities (0.6 on the argmax)."""
    seqs = torch.as_tensor(seqs)
    p = torch.full((*seqs.shape, c), 0.4 / (c - 1))
    p.scatter_(-1, seqs[..., None], 0.6)
    return p


ARGMAX_SEQS = [
    [0, 0, 0, 0, 0],
    [0, 1, 1, 1, 2],
    [0, 1, 0, 1, 0],
    [2, 2, 1, 1, 1],
    [1, 2, 2, 2, 2],
]
# expected exit per patience (rows as above), K = 5; patience >= 4 never exits early
EXPECTED_PATIENCE = {
    0: [0, 0, 0, 0, 0],
    1: [1, 2, 4, 1, 2],
    2: [2, 3, 4, 4, 3],
    3: [3, 4, 4, 4, 4],
    4: [4, 4, 4, 4, 4],
}


@pytest.mark.parametrize("patience", sorted(EXPECTED_PATIENCE))
def test_patience_semantics(patience):
    probs = probs_from_argmax(ARGMAX_SEQS)
    pol = PatiencePolicy(patience, 5)
    assert pol.exit_index(probs).tolist() == EXPECTED_PATIENCE[patience]
    assert run_online(pol, probs).tolist() == EXPECTED_PATIENCE[patience]


def test_patience_state_with_dropped_rows(held):
    probs, _ = held
    probs = probs[:400]
    for patience in range(K):
        pol = PatiencePolicy(patience, K)
        offline = pol.exit_index(probs)
        assert torch.equal(run_online(pol, probs), offline)
        perm = torch.randperm(400, generator=torch.Generator().manual_seed(patience))
        assert torch.equal(run_online(pol, probs, order=perm), offline)  # rows in another order
        single = torch.cat([run_online(pol, probs[i : i + 1]) for i in range(40)])
        assert torch.equal(single, offline[:40])


@pytest.mark.parametrize("frac", FRACS)
def test_patience_calibration_closest_from_below(frac, cal):
    probs, labels = cal
    budget = frac * COSTS[-1]
    pol = PatiencePolicy.calibrate(probs, labels, COSTS, budget)
    points = {p: mean_cost(PatiencePolicy(p, K).exit_index(probs)) for p in range(K)}
    feasible = {p: c for p, c in points.items() if c <= budget}
    assert pol.planned_cost <= budget
    assert pol.planned_cost == pytest.approx(max(feasible.values()))
    assert points[pol.patience] == pytest.approx(pol.planned_cost)
    assert pol.budget == pytest.approx(budget)
    assert [p for p, _ in pol.operating_points] == list(range(K))
    # integer patience often lands under the budget: a shortfall over 3 % is said, with the next point's cost
    if pol.planned_cost < 0.97 * budget:
        assert f"patience={pol.patience} spends" in pol.note and "under the budget" in pol.note
        nxt = min(c for c in points.values() if c > budget)
        assert f"costs {nxt:.6g}" in pol.note
    else:
        assert pol.note is None
    exact = PatiencePolicy.calibrate(probs, labels, COSTS, points[pol.patience])  # an operating point itself
    assert exact.patience == pol.patience and exact.note is None


def test_patience_calibration_at_lowest_budget(cal):
    probs, labels = cal
    # patience 0 costs c_1, so nothing below the budget only arises for a budget under c_1; validation forbids it
    with pytest.raises(ValueError, match="outside"):
        PatiencePolicy.calibrate(probs, labels, COSTS, COSTS[0] * 0.9)
    pol = PatiencePolicy.calibrate(probs, labels, COSTS, COSTS[0])
    assert pol.patience == 0 and pol.planned_cost == pytest.approx(COSTS[0])


# ---------------------------------------------------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------------------------------------------------


def test_oracle_hand_built():
    costs = [1.0, 2.0, 4.0]
    labels = torch.tensor([0, 0, 0, 0])
    # correct at exits: row0 [F,T,T], row1 [T,T,T], row2 [F,F,T], row3 never
    probs = probs_from_argmax([[1, 0, 0], [0, 0, 0], [1, 2, 0], [1, 1, 2]])
    assert OraclePolicy.calibrate(probs, labels, costs, None).exit_index(probs).tolist() == [1, 0, 2, 2]
    assert OraclePolicy.calibrate(probs, labels, costs, 3.0).exit_index(probs).tolist() == [1, 0, 2, 2]
    o = OraclePolicy.calibrate(probs, labels, costs, 2.0)
    assert o.exit_index(probs).tolist() == [1, 0, 2, 0]
    assert o.planned_cost == pytest.approx(2.0) and o.accuracy == pytest.approx(0.75)
    o = OraclePolicy.calibrate(probs, labels, costs, 1.5)
    assert o.exit_index(probs).tolist() == [1, 0, 0, 0]
    assert o.accuracy == pytest.approx(0.5)
    # greedy grants the cheapest first-correct exits first, whatever the row order
    probs = probs_from_argmax([[1, 1, 0], [1, 0, 0], [2, 0, 0], [1, 1, 1]])  # first correct: 2, 1, 1, never
    o = OraclePolicy.calibrate(probs, labels, costs, 1.5)
    assert o.exit_index(probs).tolist() == [0, 1, 1, 0]
    assert o.planned_cost == pytest.approx(1.5) and o.accuracy == pytest.approx(0.5)


@pytest.mark.parametrize("frac", FRACS)
def test_oracle_beats_every_baseline(frac, cal):
    probs, labels = cal
    budget = frac * COSTS[-1]
    oracle = OraclePolicy.calibrate(probs, labels, COSTS, budget)
    assert oracle.planned_cost <= budget + 1e-9
    baselines = [
        MaxProbPolicy.calibrate(probs, labels, COSTS, budget),
        EntropyPolicy.calibrate(probs, labels, COSTS, budget),
        PatiencePolicy.calibrate(probs, labels, COSTS, budget),
        StaticPolicy.calibrate(probs, labels, COSTS, budget),
    ]
    acc_oracle = accuracy(probs, labels, oracle.exit_index(probs))
    assert acc_oracle == pytest.approx(oracle.accuracy)
    for pol in baselines:
        exits = pol.exit_index(probs)
        acc = accuracy(probs, labels, exits)
        assert acc_oracle >= acc, type(pol).__name__
        # rigorous form: the oracle at exactly the baseline's realised cost
        spent = min(max(mean_cost(exits), COSTS[0]), COSTS[-1])
        o = OraclePolicy.calibrate(probs, labels, COSTS, spent)
        assert o.accuracy >= acc, type(pol).__name__


def test_oracle_unconstrained_and_labels(cal, held):
    probs, labels = cal
    correct_somewhere = (probs.argmax(-1) == labels[:, None]).any(1).double().mean().item()
    for budget in (None, COSTS[-1]):
        o = OraclePolicy.calibrate(probs, labels, COSTS, budget)
        assert o.accuracy == pytest.approx(correct_somewhere)
    o = OraclePolicy.calibrate(probs, labels, COSTS, 0.5 * COSTS[-1])
    hprobs, hlabels = held
    # other split, labels given
    ex = o.exit_index(hprobs, hlabels)
    assert mean_cost(ex) <= 0.5 * COSTS[-1] + 1e-9
    # same N: calibration labels reused unless given
    assert torch.equal(o.exit_index(probs), o.exit_index(probs, labels))
    with pytest.raises(ValueError, match="labels"):
        o.exit_index(hprobs[:10])
    with pytest.raises(ValueError):
        o.exit_index(hprobs[:10], hlabels[:9])
    with pytest.raises(RuntimeError, match="oracle needs labels; offline evaluation only"):
        o.decide(0, probs[:, 0], o.init_state(N_CAL))


# ---------------------------------------------------------------------------------------------------------------------
# evaluate_exits
# ---------------------------------------------------------------------------------------------------------------------


def _eval_example():
    costs = [1.0, 2.0, 4.0]
    labels = torch.tensor([0, 1, 1, 0])
    # correct: row0 [T,F,T], row1 [F,T,T], row2 [T,T,F], row3 [T,F,F]
    probs = probs_from_argmax([[0, 1, 0], [0, 1, 1], [1, 1, 0], [0, 1, 1]], c=2)
    return probs, labels, costs


def test_evaluate_exits_hand_built():
    probs, labels, costs = _eval_example()
    res = evaluate_exits(probs, labels, torch.tensor([1, 1, 0, 1]), costs, budget=2.5)
    assert res["accuracy"] == pytest.approx(0.5)
    assert res["mean_cost"] == pytest.approx(1.75)
    assert res["cost_ratio"] == pytest.approx(0.7)
    assert res["relative_cost"] == pytest.approx(0.4375)
    assert res["exit_fractions"] == pytest.approx([0.25, 0.75, 0.0])
    assert res["exit_accuracy"][:2] == pytest.approx([1.0, 1 / 3]) and res["exit_accuracy"][2] is None
    assert res["per_exit_accuracy"] == pytest.approx([0.75, 0.5, 0.5])
    assert res["n"] == 4
    assert set(res) == {
        "accuracy", "mean_cost", "cost_ratio", "relative_cost", "exit_fractions", "exit_accuracy",
        "per_exit_accuracy", "n",
    }
    json.dumps(res)  # plain Python
    assert all(type(v) in (float, int, list, type(None)) for v in res.values())
    res = evaluate_exits(probs.numpy(), labels.numpy(), [2, 2, 2, 2], costs)
    assert res["cost_ratio"] is None and res["accuracy"] == pytest.approx(0.5) and res["relative_cost"] == 1.0


@pytest.mark.parametrize(
    "exit_index, match",
    [
        ([0, 1, 2], "shape"),
        ([[0, 1, 2, 0]], "shape"),
        ([0, 1, 3, 0], r"\[0, 3\)"),
        ([0, -1, 2, 0], r"\[0, 3\)"),
        ([0.5, 1, 2, 0], "integer"),
        (None, "required"),
    ],
)
def test_evaluate_exits_bad_exit_index(exit_index, match):
    probs, labels, costs = _eval_example()
    with pytest.raises(ValueError, match=match):
        evaluate_exits(probs, labels, exit_index, costs)


def test_evaluate_exits_bad_inputs():
    probs, labels, costs = _eval_example()
    idx = [0, 0, 0, 0]
    with pytest.raises(ValueError, match="labels"):
        evaluate_exits(probs, labels[:3], idx, costs)
    with pytest.raises(ValueError, match="labels"):
        evaluate_exits(probs, torch.tensor([0, 1, 2, 0]), idx, costs)
    with pytest.raises(ValueError, match="costs"):
        evaluate_exits(probs, labels, idx, costs[:2])
    with pytest.raises(ValueError, match="budget"):
        evaluate_exits(probs, labels, idx, costs, budget=5.0)
    with pytest.raises(ValueError, match="budget"):
        evaluate_exits(probs, labels, idx, costs, budget=float("nan"))
    with pytest.raises(ValueError):
        evaluate_exits(probs[:, :, :1] * 2, labels, idx, costs)  # not probabilities
    with pytest.raises(ValueError):
        evaluate_exits(probs[0], labels, idx, costs)  # not [N, K, C]


# ---------------------------------------------------------------------------------------------------------------------
# Validators and constructor errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget, match",
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-float("inf"), "finite"),
        (0.0, "> 0"),
        (-3.0, "> 0"),
        ("100", "number"),
        (None, "number"),
        (True, "number"),
        ([100.0], "number"),
        (50.0, r"\[51, 188.9\]"),
        (189.0, r"\[51, 188.9\]"),
    ],
)
def test_check_budget_errors(budget, match):
    with pytest.raises(ValueError, match=match):
        check_budget(budget, COSTS)


def test_check_budget_ok():
    assert check_budget(100, COSTS) == 100.0
    assert check_budget(np.float32(100.0), COSTS) == 100.0
    assert check_budget(torch.tensor(100.0), COSTS) == 100.0
    assert check_budget(1.0 * COSTS[-1] * (1 + 1e-12), COSTS) == COSTS[-1]


@pytest.mark.parametrize(
    "costs, match",
    [
        ([1.0, 2.0, 2.0, 3.0], "strictly increasing"),
        ([3.0, 2.0, 1.0, 4.0], "strictly increasing"),
        ([1.0, 2.0, 3.0], "expected 4"),
        ([1.0, 2.0, 3.0, 4.0, 5.0], "expected 4"),
        ([0.0, 1.0, 2.0, 3.0], "> 0"),
        ([-1.0, 1.0, 2.0, 3.0], "> 0"),
        ([1.0, float("nan"), 2.0, 3.0], "finite"),
        ([1.0, 2.0, 3.0, float("inf")], "finite"),
        ([1.0, "2", 3.0, 4.0], "number"),
        ("1234", "sequence"),
        (None, "sequence"),
        (5.0, "sequence"),
        (np.ones((2, 2)), "1-D"),
    ],
)
def test_check_costs_errors(costs, match):
    with pytest.raises(ValueError, match=match):
        check_costs(costs, 4)


def test_check_costs_ok():
    assert check_costs(np.array([1, 2, 3, 4]), 4) == [1.0, 2.0, 3.0, 4.0]
    assert check_costs(torch.tensor(COSTS), 4) == pytest.approx(COSTS)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, 2], "shape"),
        ([[0, 1, 2, 0]], "shape"),
        ([0, 1, 5, 0], r"\[0, 5\)"),
        ([0, -100, 1, 0], r"\[0, 5\)"),
        ([0.5, 1, 2, 0], "integer"),
        ([True, False, True, True], "integer"),
        (None, "required"),
    ],
)
def test_check_labels_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        check_labels(labels, 4, 5)


def test_check_labels_ok():
    assert check_labels(np.array([0, 4, 2, 1]), 4, 5).tolist() == [0, 4, 2, 1]
    assert check_labels([0.0, 1.0, 2.0, 3.0], 4, 5).dtype == torch.long


@pytest.mark.parametrize("cls", [MaxProbPolicy, EntropyPolicy, PatiencePolicy, StaticPolicy, OraclePolicy])
def test_calibrate_validates_inputs(cls, cal):
    probs, labels = cal
    probs, labels = probs[:200], labels[:200]
    good = 0.5 * COSTS[-1]
    for bad in (float("nan"), float("inf"), 0.0, -1.0, "x", 10.0, 1000.0):
        with pytest.raises(ValueError, match="budget"):
            cls.calibrate(probs, labels, COSTS, bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        cls.calibrate(probs, labels, [1.0, 3.0, 2.0, 4.0], 2.0)
    with pytest.raises(ValueError, match="expected 4"):
        cls.calibrate(probs, labels, COSTS[:3], good)
    with pytest.raises(ValueError, match="labels"):
        cls.calibrate(probs, labels[:150], COSTS, good)
    with pytest.raises(ValueError, match="labels"):
        cls.calibrate(probs, labels + 5, COSTS, good)
    if cls is not OraclePolicy:
        with pytest.raises(ValueError, match="budget"):
            cls.calibrate(probs, None, COSTS, None)
    pol = cls.calibrate(probs, labels, COSTS, good)
    with pytest.raises(ValueError, match="exits"):
        pol.exit_index(probs[:, :3] / probs[:, :3].sum(-1, keepdim=True), *([labels] if cls is OraclePolicy else []))


def test_constructor_errors():
    with pytest.raises(ValueError):
        PatiencePolicy(-1, 4)
    with pytest.raises(TypeError):
        PatiencePolicy(1.5, 4)
    with pytest.raises(ValueError):
        StaticPolicy(4, 4)
    with pytest.raises(ValueError):
        StaticPolicy(1, 4, mix_next=1.5)
    with pytest.raises(ValueError):
        StaticPolicy(1, 4, mix_next=float("nan"))
    with pytest.raises(ValueError):
        StaticPolicy(3, 4, mix_next=0.5)  # no next exit
    with pytest.raises(ValueError, match="strictly increasing"):
        OraclePolicy([2.0, 1.0])


def test_budget_at_the_first_exit_sends_new_rows_there_too():
    """At B = c_1 the plan puts every row at exit 1: its threshold is -inf (D7), so a new row with a lower score than
    any fitting row exits at 1 as well (it went to the last exit, at cost c_K)."""
    from hf_eenet.policies import sequential_quantile_thresholds

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 4, 3, generator=g) * 3, -1)
    costs = [0.25, 0.5, 0.75, 1.0]
    assert sequential_quantile_thresholds(torch.rand(50, 4, generator=g), [1.0, 0.0, 0.0, 0.0])[0] == -math.inf
    for cls in (MaxProbPolicy, EntropyPolicy):
        policy = cls.calibrate(probs, None, costs, 0.25)
        assert policy.thresholds[0] == -math.inf
        flat = torch.full((1, 4, 3), 1 / 3)  # less confident than every fitting row
        assert policy.exit_index(flat).tolist() == [0]
