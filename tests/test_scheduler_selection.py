"""Honest selection (docs/method.md §5.3): internal stratified split, candidates, max-prob / static fallbacks."""

import torch

from hf_eenet.policies import MaxProbPolicy, StaticPolicy
from hf_eenet.scheduler import EENetScheduler
from hf_eenet.scheduler_fit import stratified_split
from test_scheduler import COSTS, K, accuracy, make_data, realized_cost


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = torch.tensor([0] * 100 + [1] * 300 + [2] * 200)
    fit_a, sel_a = stratified_split(labels, 0.3, seed=1)
    fit_b, sel_b = stratified_split(labels, 0.3, seed=1)
    assert torch.equal(sel_a, sel_b) and torch.equal(fit_a, fit_b)
    assert not torch.equal(sel_a, stratified_split(labels, 0.3, seed=2)[1])
    assert len(set(sel_a.tolist()) & set(fit_a.tolist())) == 0 and len(sel_a) + len(fit_a) == 600
    assert torch.bincount(labels[sel_a]).tolist() == [30, 90, 60]
    assert stratified_split(labels[:60], 0.3, seed=0) is None  # too few rows for an honest split
    assert stratified_split(labels, 0.0, seed=0) is None


def _static_world(n, seed):
    """Confidence carries no information at all (max prob and argmax noise independent of correctness), and the
    exits get much better with depth: the static split is the best rule, anything score-based ranks at random."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    acc = torch.tensor([0.3, 0.35, 0.5, 0.7, 0.85, 0.95])
    probs = torch.empty(n, K, 4)
    for k in range(K):
        right = torch.rand(n, generator=g) < acc[k]
        pred = torch.where(right, y, (y + torch.randint(1, 4, (n,), generator=g)) % 4)
        m = 0.3 + 0.6 * torch.rand(n, generator=g)
        rest = torch.full((n, 4), 1.0).scatter(1, pred[:, None], 0.0) / 3 * (1 - m)[:, None]
        probs[:, k] = rest.scatter(1, pred[:, None], m[:, None])
    return probs, y


def test_fallback_is_never_worse_than_baselines_on_the_selection_split():
    probs, labels = _static_world(1200, seed=1)
    for seed in range(3):
        sched = EENetScheduler(restarts=1, max_epochs=30, features="base").fit(probs, labels, COSTS, 0.5, seed=seed)
        info = sched.fit_info
        best_baseline = max(b["accuracy"] for b in info["selection_baselines"].values())
        assert info["val_accuracy"] >= best_baseline
        if info["fallback"]:
            assert info["fallback_reason"] and info["chosen_restart"] is None
            assert info["chosen"].split(" / ")[0] in info["selection_baselines"]


def test_static_fallback_serves_the_static_split():
    probs, labels = _static_world(3000, seed=2)
    test_probs, test_labels = _static_world(20000, seed=3)
    budget = 0.75  # c_4 = 2/3 < 0.75 < c_5 = 5/6: a mix of exits 4 and 5
    sched = EENetScheduler(restarts=1, max_epochs=20, features="base", shares="learned").fit(
        probs, labels, COSTS, budget, seed=0)
    info = sched.fit_info
    static = StaticPolicy.calibrate(probs, labels, COSTS, budget)
    mp = MaxProbPolicy.calibrate(probs, labels, COSTS, budget)
    e = sched.exit_index(test_probs)
    assert abs(realized_cost(e) - budget) / budget < 0.03
    acc = accuracy(test_probs, test_labels, e)
    # whatever was kept, it is not below the static rule and max-prob on unseen rows by more than noise
    assert acc >= accuracy(test_probs, test_labels, static.exit_index(test_probs)) - 0.015
    assert acc >= accuracy(test_probs, test_labels, mp.exit_index(test_probs)) - 0.015
    if info["chosen"].startswith("static"):
        assert set(e.unique().tolist()) <= {3, 4}


def test_selection_off_uses_fitting_rows():
    probs, labels = make_data(500, seed=3)
    sched = EENetScheduler(restarts=1, max_epochs=5, selection_fraction=0.0).fit(probs, labels, COSTS, 0.5)
    assert sched.fit_info["val_source"].startswith("fitting data") and sched.fit_info["selection_rows"] == 500
    no_fb = EENetScheduler(restarts=1, max_epochs=5, fallback=False).fit(probs, labels, COSTS, 0.5)
    assert not no_fb.fit_info["fallback"] and len(no_fb.fit_info["candidates"]) == 4  # 2 runs x 2 share plans
