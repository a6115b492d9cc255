"""hf_eenet.validation: one set of rules for probabilities, labels, costs, budgets and exit indices, used the same way
by the model, the pipeline, the policies' calibrate, the scheduler fit, evaluation and the trainer (issue 10 point 7);
plus the int8 entry point (point 3)."""

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_model

import hf_eenet
from hf_eenet import evaluation, policies, validation
from hf_eenet.scheduler import EENetScheduler
from hf_eenet.validation import ValidationTypeError

GOOD_BUDGETS = [0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64),
                np.array(0.5)]
INT_BUDGETS = [1, np.int64(1), torch.tensor(1)]
BAD_TYPES = [True, np.bool_(True), torch.tensor(True), "0.5", None, [0.5], torch.tensor([0.5]), complex(0.5, 0)]


def test_old_names_stay_importable_and_are_the_same_functions():
    assert policies.check_budget is validation.check_budget
    assert policies.check_costs is validation.check_costs
    assert policies.check_labels is validation.check_labels
    assert policies._as_probs_tensor is validation.as_probs_tensor
    assert policies._is_number is validation.is_number
    assert evaluation._check_exit_index is validation.check_exit_index


@pytest.mark.parametrize("b", GOOD_BUDGETS + INT_BUDGETS)
def test_number_forms_accepted(b):
    assert validation.check_budget_fraction(b) == float(b)


@pytest.mark.parametrize("b", BAD_TYPES)
def test_bools_and_non_numbers_rejected_with_both_error_types(b):
    with pytest.raises(TypeError, match="budget must be a number"):
        validation.check_budget_fraction(b)
    with pytest.raises(ValueError, match="budget must be a number"):  # ValidationTypeError is both
        validation.check_budget(b, [0.25, 0.5, 1.0])


@pytest.fixture(scope="module")
def fitted():
    model = tiny_model(layers=4, num_labels=3, vocab_size=30522)  # the MiniLM tokenizer's vocabulary
    batch = random_batch(n=48)
    with torch.no_grad():
        probs = torch.softmax(model(**batch).exit_logits, -1)
    labels = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(1))
    sched = EENetScheduler(restarts=1, max_epochs=5).fit(probs, labels, model.config.exit_costs, 0.5)
    model.set_scheduler_bank({0.5: sched})
    return model, batch, probs, labels


@pytest.mark.parametrize("b", GOOD_BUDGETS)
def test_budget_forms_consistent_across_model_policies_and_scheduler(fitted, b):
    model, batch, probs, labels = fitted
    costs = model.config.exit_costs
    ref = model(**batch, budget=0.5).exit_index
    assert torch.equal(model(**batch, budget=b).exit_index, ref)
    assert model.get_exit_policy(b) is model.get_exit_policy(0.5)
    assert hf_eenet.MaxProbPolicy.calibrate(probs, labels, costs, b).budget == 0.5
    assert hf_eenet.StaticPolicy.calibrate(probs, labels, costs, b).budget == 0.5
    EENetScheduler(restarts=1, max_epochs=2).fit(probs, labels, costs, b)
    assert evaluation.evaluate_exits(probs, labels, ref, costs, budget=b)["cost_ratio"] is not None


@pytest.mark.parametrize("b", [True, np.bool_(True), torch.tensor(True), "0.5"])
def test_budget_bools_rejected_everywhere(fitted, b):
    model, batch, probs, labels = fitted
    with pytest.raises(TypeError):
        model(**batch, budget=b)
    with pytest.raises(TypeError):
        model.get_exit_policy(b)
    with pytest.raises((TypeError, ValueError)):
        hf_eenet.MaxProbPolicy.calibrate(probs, labels, model.config.exit_costs, b)


def test_pipeline_accepts_numpy_and_tensor_budgets(fitted, minilm_dir):
    from transformers import AutoTokenizer, pipeline

    model = fitted[0]
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    tok.model_max_length = 64
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    ref = clf(["a good film", "bad"], budget=0.5)
    for b in GOOD_BUDGETS:
        assert clf(["a good film", "bad"], budget=b) == ref
    with pytest.raises(TypeError):
        clf("a good film", budget=True)


def test_exit_index_and_labels_rules():
    assert validation.check_exit_index([0, 2, 1.0], 3, 3).tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        validation.check_exit_index([0, 3, 1], 3, 3)
    with pytest.raises(ValueError, match="integer"):
        validation.check_exit_index([True, False, True], 3, 3)
    with pytest.raises(ValueError, match="shape"):
        validation.check_labels([0, 1], 3, 2)
    assert isinstance(ValidationTypeError("x"), TypeError) and isinstance(ValidationTypeError("x"), ValueError)


def test_costs_match_normalises():
    assert validation.costs_match([1, 2, 4], [0.25, 0.5, 1.0])
    assert not validation.costs_match([1, 2, 4], [0.25, 0.6, 1.0])
    assert not validation.costs_match([1, 2], [0.25, 0.5, 1.0])


def test_rounding_noise_below_zero_is_read_as_zero_everywhere():
    """Entries down to -1e-6 pass as rounding noise; they are read as the 0 a softmax gives, so the entropy feature
    (-sum p log p, -inf below 0) stays finite and the scheduler fits and decides as on the clean rows."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 3, 4, generator=g) * 3, -1)
    labels = torch.randint(0, 4, (200,), generator=g)
    noisy = probs.clone()
    noisy[0, :, 0] += noisy[0, :, 1] + 1e-7  # row 0: class 1 moved to class 0, then -1e-7 left in class 1
    noisy[0, :, 1] = -1e-7
    clean = noisy.clamp_min(0.0)
    assert torch.equal(validation.as_probs_tensor(noisy), clean)
    sched = EENetScheduler(restarts=0, max_epochs=3).fit(noisy, labels, [1 / 3, 2 / 3, 1.0], 0.6)
    assert torch.isfinite(sched.utility_scores(noisy, raw=True)).all()
    assert torch.equal(sched.exit_index(noisy), sched.exit_index(clean))
    again = EENetScheduler(restarts=0, max_epochs=3).fit(clean, labels, [1 / 3, 2 / 3, 1.0], 0.6)
    assert sched.thresholds == again.thresholds


def test_a_float32_budget_read_off_float32_costs_is_in_range():
    """as_number turns a float32 budget into its shortest decimal (0.3), while the costs keep their exact float32
    values (0.30000001...): a budget of exactly c_1 was refused as outside [c_1, c_K]."""
    from hf_eenet.policies import MaxProbPolicy
    from hf_eenet.validation import check_budget

    costs = np.array([0.3, 0.6, 1.0], np.float32)
    for b in (costs[0], torch.tensor(costs[0]), costs[-1]):
        assert check_budget(b, costs) in (float(costs[0]), float(costs[-1]))
    probs = torch.softmax(torch.randn(40, 3, 2, generator=torch.Generator().manual_seed(0)), -1)
    assert MaxProbPolicy.calibrate(probs, None, costs, costs[0]).planned_cost == pytest.approx(float(costs[0]))
    with pytest.raises(ValueError, match="outside the reachable range"):
        check_budget(0.2999, costs)
    # the slack is relative to the bound itself: a budget 1e-6 below a small c_1 stays refused (the bank compares
    # budgets within 1e-6 and would refuse a scheduler clipped to c_1 later, after the fit)
    with pytest.raises(ValueError, match="outside the reachable range"):
        check_budget(0.1 * (1 - 1e-6), [0.1, 0.5, 1.0])


def test_a_budget_inside_the_slack_is_the_bank_key_it_was_asked_for():
    """check_budget clips a budget within its slack to c_1; the bank then compares the scheduler's (clipped) budget
    with its key within relative 1e-6 / absolute 1e-9. With c_1 under ~0.4 % of c_K the slack was 1e-9 * c_K, as
    wide as the bank's match: a budget accepted here could be refused when put in the bank. The recipe's early
    refusal of budgets below c_1 uses the same test."""
    import math

    from hf_eenet.validation import budget_reachable, check_budget

    for lo in (1e-5, 1e-4, 1e-3, 4e-3, 0.05, 0.3):
        costs = [lo, 0.5, 1.0]
        slack = lo - max(2.4e-7 * lo, 5e-10)
        for b in (np.nextafter(slack, 1.0), lo - 0.999 * (lo - slack), lo * (1 - 1e-12)):
            clipped = check_budget(b, costs)
            assert budget_reachable(b, costs) and clipped == lo
            assert math.isclose(clipped, b, rel_tol=1e-6, abs_tol=1e-9), (lo, b)  # bank.check_scheduler's match
        below = lo - 1.01 * (lo - slack)
        assert not budget_reachable(below, costs)
        with pytest.raises(ValueError, match="outside the reachable range"):
            check_budget(below, costs)


def test_softmax_outputs_stored_as_bfloat16_are_probabilities():
    """Row sums of bfloat16 softmax outputs drift by up to ~3e-3 (8-bit mantissa): they were refused as "not
    probabilities ... pass probabilities, not logits". Logits still are."""
    from hf_eenet.policies import MaxProbPolicy
    from hf_eenet.validation import as_probs_tensor

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(200, 3, 3, generator=g) * 2, -1)
    y = torch.randint(0, 3, (200,), generator=g)
    pb = p.to(torch.bfloat16)
    assert (pb.double().sum(-1) - 1).abs().max() > 1e-3
    back = as_probs_tensor(pb)
    assert back.dtype == torch.float32 and torch.allclose(back.sum(-1), torch.ones(200, 3), atol=1e-3)
    assert torch.allclose(back, p, atol=1e-2)
    pol = MaxProbPolicy.calibrate(pb, y, [0.3, 0.6, 1.0], 0.5)
    assert torch.equal(pol.exit_index(pb), pol.exit_index(back))
    EENetScheduler(restarts=0, max_epochs=2).fit(pb, y, [0.3, 0.6, 1.0], 0.5)
    with pytest.raises(ValueError, match="not logits"):
        as_probs_tensor((torch.rand(4, 3, 3) * 3).to(torch.bfloat16))  # positive scores, not summing to 1
    assert torch.equal(as_probs_tensor(p), p)  # float32 softmax outputs: as they are
    # each row by its own sum: a row's values (and exit) never depend on the rows passed with it
    a = torch.tensor([[[0.5, 0.25, 0.2490]]], dtype=torch.bfloat16)
    b = torch.tensor([[[0.5, 0.25, 0.2480]]], dtype=torch.bfloat16)
    assert torch.equal(as_probs_tensor(torch.cat([a, b]))[:1], as_probs_tensor(a))
