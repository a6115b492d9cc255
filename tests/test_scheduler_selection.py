"""Honest selection (docs/method.md §5.3): internal stratified split, candidates, max-prob / static fallbacks."""

import pytest
import torch

from hf_eenet.policies import MaxProbPolicy, StaticPolicy
from hf_eenet.scheduler import EENetScheduler
from hf_eenet.scheduler_fit import stratified_folds, stratified_split
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
    # many tiny classes: each rounds its share to 0 rows, so no honest split, and a fit selects on its fitting rows
    tiny = torch.arange(400) % 100  # 100 classes of 4 rows; 10 % asks for 40 rows, 0.4 per class rounds to 0
    assert stratified_split(tiny, 0.1, seed=0) is None
    probs = torch.softmax(3 * torch.randn(400, K, 100, generator=torch.Generator().manual_seed(0)), -1)
    info = EENetScheduler(restarts=0, max_epochs=2, selection_folds=0, selection_fraction=0.1).fit(
        probs, tiny, COSTS, 0.5).fit_info
    assert info["selection_rows"] == 400 and "no internal split" in info["val_source"]


def test_stratified_folds_partition_every_row_once_per_class_balance():
    labels = torch.tensor([0] * 101 + [1] * 299 + [2] * 200)
    folds = stratified_folds(labels, 5, seed=1)
    assert [torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=1))] == [True] * 5
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=2)))
    assert torch.equal(torch.sort(torch.cat(folds)).values, torch.arange(600))  # a partition: every row once
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for f in folds:  # each class spread evenly over the folds (within one row)
        counts = torch.bincount(labels[f], minlength=3).tolist()
        assert abs(counts[0] - 101 / 5) <= 1 and abs(counts[1] - 299 / 5) <= 1 and abs(counts[2] - 40) <= 1
    assert stratified_folds(labels[:100], 5, seed=0) is None  # 20-row folds: too few to judge a candidate
    assert stratified_folds(labels, 1, seed=0) is None


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


def test_fallback_is_never_worse_than_baselines_and_noise_does_not_beat_it():
    """Confidence is pure noise: whatever a trained run scores held out over the fallbacks is luck, and the margin
    (one paired standard error) keeps the simpler rule unless the evidence says otherwise."""
    probs, labels = _static_world(1000, seed=1)
    kept = []
    for seed in range(3):
        info = EENetScheduler(restarts=1, max_epochs=20, features="base").fit(probs, labels, COSTS, 0.5,
                                                                              seed=seed).fit_info
        best_baseline = max(b["accuracy"] for b in info["selection_baselines"].values())
        adv = info["selection_advantage"]
        assert info["selection_folds"] == 5 and adv["margin_se"] == 1.0 and adv["kept"] == info["chosen"]
        assert adv["gap_points"] <= adv["gap_se_points"]  # the kept rule is within one SE of the best candidate,
        assert 100 * (best_baseline - info["val_accuracy"]) <= adv["gap_se_points"] + 1e-4  # so of the baselines
        fixed = sorted((cd for cd in info["candidates"] if cd["name"] in info["selection_baselines"]),
                       key=lambda cd: ["max-prob (calibrated)", "static split"].index(cd["name"]))
        if info["fallback"]:
            assert info["fallback_reason"] and info["chosen_restart"] is None
            assert info["chosen"].split(" / ")[0] in info["selection_baselines"]
            rule = next(cd for cd in fixed if info["chosen"].startswith(cd["name"]))
            for simpler in fixed[:fixed.index(rule)]:  # every simpler rule was more than one SE behind
                assert simpler["gap_points"] > simpler["gap_se_points"]
        else:
            assert all(cd["gap_points"] > cd["gap_se_points"] for cd in fixed)
        kept.append(info["fallback"])
    assert sum(kept) >= 2
    # without the margin the most accurate candidate is kept: never below a fixed rule on the held-out rows
    info = EENetScheduler(restarts=1, max_epochs=20, features="base", selection_margin=0.0).fit(
        probs, labels, COSTS, 0.5, seed=0).fit_info
    assert info["val_accuracy"] >= max(b["accuracy"] for b in info["selection_baselines"].values())


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


def test_voting_fallback_reads_agreement_counts():
    probs, labels = make_data(600, seed=5)
    sched = EENetScheduler(restarts=1, max_epochs=5)
    sched.fit(probs, labels, COSTS, 0.5)
    assert set(sched.fit_info["selection_baselines"]) == {"max-prob (calibrated)", "static split",
                                                          "voting (calibrated)"}
    sched._set_readout("voting")
    q = sched.utility_scores(probs, raw=True)
    a, m = probs.argmax(-1), probs.amax(-1)
    for k in range(K):  # q^_k = (# earlier exits agreeing with exit k) + 1[previous exit agrees] + m_k / 2
        v = (a[:, :k] == a[:, k:k + 1]).sum(-1).float()
        g = (a[:, k - 1] == a[:, k]).float() if k else torch.zeros(len(a))
        assert torch.allclose(q[:, k], v + g + m[:, k] / 2, atol=1e-6)
    base = EENetScheduler(restarts=1, max_epochs=5, features="base").fit(probs, labels, COSTS, 0.5)
    assert "voting (calibrated)" not in base.fit_info["selection_baselines"]  # no agreement features to read


def test_selection_off_uses_fitting_rows():
    probs, labels = make_data(500, seed=3)
    sched = EENetScheduler(restarts=1, max_epochs=5, selection_folds=0, selection_fraction=0.0).fit(
        probs, labels, COSTS, 0.5)
    assert sched.fit_info["val_source"].startswith("fitting data") and sched.fit_info["selection_rows"] == 500
    single = EENetScheduler(restarts=1, max_epochs=5, selection_folds=0).fit(probs, labels, COSTS, 0.5)
    info = single.fit_info
    assert info["selection_folds"] == 1 and info["selection_rows"] == 150 and info["fit_rows"] == 500
    no_fb = EENetScheduler(restarts=1, max_epochs=5, fallback=False).fit(probs, labels, COSTS, 0.5)
    assert not no_fb.fit_info["fallback"] and len(no_fb.fit_info["candidates"]) == 4  # 2 runs x 2 share plans


def test_auto_folds_by_fitting_rows():
    """selection_folds=None: 5-fold cross-selection below 4,000 rows, one 30 % hold-out above (k trainings each)."""
    auto = EENetScheduler()
    splits, source = auto._selection_splits(torch.arange(3999) % 3, 0)
    assert len(splits) == 5 and source.startswith("5-fold")
    assert sorted(torch.cat([held for _, held in splits]).tolist()) == list(range(3999))
    splits, source = auto._selection_splits(torch.arange(4000) % 3, 0)
    assert len(splits) == 1 and len(splits[0][1]) == 1200 and len(splits[0][0]) == 2800
    splits, _ = EENetScheduler(selection_folds=3)._selection_splits(torch.arange(4000) % 3, 0)
    assert len(splits) == 3


def test_single_hold_out_reports_held_out_means_not_means_over_all_rows():
    """With one hold-out split the selection figures in fit_info are means over the held-out rows (they were
    averaged over all rows with zeros elsewhere: a 30 % hold-out showed 0.3x the accuracy and cost)."""
    probs, labels = make_data(400, seed=11)
    s = EENetScheduler(restarts=1, max_epochs=5, selection_folds=0).fit(probs, labels, COSTS, 0.5, seed=0)
    info = s.fit_info
    assert info["selection_folds"] == 1 and info["selection_rows"] < 400
    for name, b in info["selection_baselines"].items():
        assert b["cost"] == pytest.approx(0.5, abs=0.06), (name, b)
        assert b["accuracy"] > 0.5, (name, b)
    assert all(cd["cost"] == pytest.approx(0.5, abs=0.08) for cd in info["candidates"])


def _weakly_informative(n, seed, k_total=6, num_classes=4):
    """Exits whose correctness is barely related to their max prob; accuracy rises slowly with depth."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    torch.rand(n, generator=g)  # (a draw the scenario below was found with)
    acc = torch.linspace(0.55, 0.7, k_total)
    probs = torch.empty(n, k_total, num_classes)
    for k in range(k_total):
        right = torch.rand(n, generator=g) < acc[k]
        pred = torch.where(right, y, (y + torch.randint(1, num_classes, (n,), generator=g)) % num_classes)
        m = (0.4 + 0.5 * torch.rand(n, generator=g) + 0.08 * right).clamp(max=0.97)
        noise = torch.softmax(0.3 * torch.randn(n, num_classes, generator=g), -1).scatter(1, pred[:, None], 0.0)
        probs[:, k] = (noise / noise.sum(-1, keepdim=True) * (1 - m)[:, None]).scatter(1, pred[:, None], m[:, None])
    return probs, y


def test_the_one_se_rule_never_keeps_a_rule_less_accurate_than_a_simpler_one_it_rejected():
    """Each candidate's gap has its own paired SE: here the static split (62.6 %, SE 1.7 pt) was within it while
    max-prob (63.0 %, SE 0.6 pt), simpler and more accurate, was not, and static was kept."""
    costs = [k / 6 for k in range(1, 7)]
    probs, y = _weakly_informative(1000, 31)
    s = EENetScheduler(restarts=0, max_epochs=20, features="base").fit(probs, y, costs, 0.3, seed=31)
    cands = s.fit_info["candidates"]
    kept = next(c for c in cands if f"{c['name']} / {c['plan']} shares" == s.fit_info["chosen"])
    rejected = [c for c in cands if c["gap_points"] > c["gap_se_points"]]
    assert rejected and all(kept["accuracy"] >= c["accuracy"] for c in rejected)
    static = next(c for c in cands if c["name"] == "static split")
    assert static["gap_points"] <= static["gap_se_points"] and static["accuracy"] < max(c["accuracy"] for c in rejected)
    assert s.fit_info["chosen"] != "static split / static shares"
    assert s.fit_info["selection_advantage"]["passed_over"] == ["static split"]  # and said so


def test_candidates_that_ties_keep_off_the_budget_are_named_in_fit_info():
    """Tied scores (duplicate rows) cannot be split by thresholds, so a candidate spends more or less than B held
    out and the §5.3 comparison is not at equal cost: fit_info says which candidates and by how much (before, only a
    RuntimeWarning about the final thresholds hinted at it). Clean data has no note."""
    import warnings

    probs, labels = make_data(600, seed=3)
    clean = EENetScheduler(restarts=0, max_epochs=3).fit(probs, labels, COSTS, 0.5)
    assert clean.fit_info["selection_cost_note"] is None
    # learned shares without budget matching do not aim at B (by design, not ties): not named
    plain = EENetScheduler(restarts=0, max_epochs=3, match_budget=False, selection_folds=0).fit(probs, labels, COSTS,
                                                                                                0.5).fit_info
    assert any(cd["plan"] == "learned" and abs(cd["cost"] - 0.5) > 0.05 for cd in plain["candidates"])
    assert plain["selection_cost_note"] is None
    # small data, 5 folds: each fold's thresholds round to a row of that fold (40 rows), not of all 200
    small_p, small_y = make_data(200, seed=1)
    small = EENetScheduler(restarts=0, max_epochs=3).fit(small_p, small_y, COSTS, 0.37).fit_info
    assert small["selection_folds"] == 5 and small["selection_cost_note"] is None
    dup = probs.clone()
    dup[:360] = probs[0]  # 60 % of the rows are one row: every rule scores them alike at every exit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        info = EENetScheduler(restarts=0, max_epochs=3).fit(dup, labels, COSTS, 0.5).fit_info
    note = info["selection_cost_note"]
    assert note is not None and "not compared at equal cost" in note
    one_row = COSTS[-1] / (info["selection_rows"] // info["selection_folds"])  # a row of the smallest fold
    off = [cd for cd in info["candidates"] if abs(cd["cost"] - 0.5) > max(0.005, one_row)]
    assert off and all(f"{cd['name']} / {cd['plan']} shares spent {cd['cost'] / 0.5:.3f}x" in note for cd in off)


def test_a_fit_on_too_few_rows_to_meet_its_budget_says_so():
    """A handful of fitting rows cannot average to the budget (one row moves the mean by the last exit's cost / n):
    every miss over 1 % of B warns and names the number of rows, whichever plan is kept (learned shares compared
    the realised cost with their own rounded counts, so 5 rows at B = 0.5 spent 0.533 without a word; a 2-row fit
    spent 0.625 so before the tie warning's one-row margin). Enough rows: no warning."""
    import warnings

    probs, labels = make_data(4, seed=2)
    with pytest.warns(RuntimeWarning, match=r"instead of the budget 0.37 .*with 4 rows one row moves the average"):
        s = EENetScheduler(restarts=0, max_epochs=2, selection_folds=0).fit(probs, labels, COSTS, 0.37)
    assert abs(realized_cost(s.exit_index(probs)) - 0.37) > 0.01 * 0.37
    plans, missed = set(), 0
    for n in (3, 5, 9, 13, 20):
        for seed in range(3):
            probs, labels = make_data(n, seed=seed)
            for b in (0.37, 0.5, 0.63):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    s = EENetScheduler(restarts=0, max_epochs=2, selection_folds=0).fit(probs, labels, COSTS, b)
                if abs(realized_cost(s.exit_index(probs)) - b) > 0.01 * b:
                    missed += 1
                    plans.add(s.fit_info["plan"])
                    assert any(f"with {n} rows one row moves" in str(w.message) for w in caught), (n, seed, b)
    assert missed and "learned" in plans  # the case that was silent is among them
    probs, labels = make_data(600, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        EENetScheduler(restarts=0, max_epochs=2).fit(probs, labels, COSTS, 0.37)


def test_rematching_on_too_few_traffic_rows_to_meet_the_budget_says_so():
    """rematch_budget on a handful of rows warns like the fit when their average cannot come within 1 % of B."""
    probs, labels = make_data(400, seed=4)
    s = EENetScheduler(restarts=0, max_epochs=2, selection_folds=0).fit(probs, labels, COSTS, 0.5)
    with pytest.warns(RuntimeWarning, match=r"rematch_budget \(budget 0.5\).*instead of the budget 0.5 .*with 5 rows"):
        s.rematch_budget(probs[:5])
