"""Agreement features (hf_eenet/scheduler_features.py, docs/method.md §3) and the cheap float32 ``decide``."""

import math

import pytest
import torch

from hf_eenet.scheduler import EENetScheduler, all_exit_features, exit_features, feature_dim, init_feature_state
from test_scheduler import COSTS, C, K, make_agreement_data


def _onehot_probs(preds, num_classes=3, top=0.7):
    """[N, K, C] probs whose argmax per exit is ``preds`` [N, K]."""
    preds = torch.as_tensor(preds)
    rest = (1 - top) / (num_classes - 1)
    p = torch.full((*preds.shape, num_classes), rest)
    return p.scatter(-1, preds.unsqueeze(-1), top)


def test_agreement_equations_on_a_hand_made_row():
    # argmax per exit: 0, 1, 0, 0, 2  ->  v (earlier exits agreeing), g (agrees with the previous exit)
    probs = _onehot_probs([[0, 1, 0, 0, 2]])
    xs = all_exit_features(probs, "agreement")  # [K, N, C + 4]
    v, g = xs[:, 0, -2], xs[:, 0, -1]
    assert v.tolist() == [0.0, 0.0, 1.0, 2.0, 0.0]  # eq. 3.2
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # eq. 3.3
    # the rest of x: p, max p, entropy -sum p log p
    p = probs[0, 0]
    assert torch.allclose(xs[0, 0, :3], p)
    assert xs[0, 0, 3] == pytest.approx(0.7)
    assert xs[0, 0, 4].item() == pytest.approx(-float((p * p.log()).sum()), abs=1e-6)
    assert all_exit_features(probs, "base").shape == (5, 1, 5)
    assert feature_dim(3, 2, "agreement") == 3 + 2 + 2 + 2 and feature_dim(3, 2, "base") == 3 + 2 + 2


def test_online_features_are_row_independent_and_match_offline():
    probs, _ = make_agreement_data(300, seed=3)
    offline = all_exit_features(probs, "agreement")
    # online, one row at a time and in shuffled chunks: bit-identical to the all-rows computation
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    for rows in (perm[:1], perm[1:8], perm[8:]):
        state = init_feature_state(len(rows), K, C, "agreement")
        for k in range(K):
            x, upd = exit_features(k, probs[rows, k].contiguous(), state, "agreement")
            state.update(upd)
            assert torch.equal(x, offline[k, rows])
        assert torch.equal(state["votes"].sum(-1), torch.full((len(rows),), float(K)))
        assert torch.equal(state["prev"], probs[rows, -1].argmax(-1))


@pytest.fixture(scope="module")
def fitted_agreement():
    probs, labels = make_agreement_data(1500, seed=1)
    return EENetScheduler(restarts=1, max_epochs=30).fit(probs, labels, COSTS, 0.5, seed=0)


def test_state_is_batch_first_tensors(fitted_agreement):
    state = fitted_agreement.init_state(5)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == {
        "q": ((5, K), torch.float32), "votes": ((5, C), torch.float32), "prev": ((5,), torch.long)}
    probs, _ = make_agreement_data(5, seed=4)
    before = {k: v.clone() for k, v in state.items()}
    fitted_agreement.decide(0, probs[:, 0], state)
    assert set(state) == set(before) and all(state[k].shape[0] == 5 for k in state)
    assert torch.equal(state["prev"], probs[:, 0].argmax(-1))


def test_decide_has_no_host_sync(fitted_agreement, monkeypatch):
    """decide (and init_state, once the scheduler is known fitted) reads no tensor value on the host: .item(), .tolist(), bool(), float(), int() and .numpy() are
    forbidden while it runs (each would be a device synchronisation on a GPU)."""
    probs, _ = make_agreement_data(64, seed=5)
    state = fitted_agreement.init_state(64)
    fitted_agreement.decide(0, probs[:, 0], state)  # the first call may cache the fitted flag

    def forbidden(*_a, **_k):
        raise AssertionError("host sync in decide")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for k in range(1, K - 1):
        stop = fitted_agreement.decide(k, probs[:, k], state)
    fresh = fitted_agreement.init_state(8)  # each request / chunk starts one: no sync there either
    monkeypatch.undo()
    assert stop.dtype == torch.bool and stop.shape == (64,)
    assert fresh["q"].shape == (8, K)


def test_float32_decisions_equal_float64_scores_with_midpoint_thresholds(fitted_agreement):
    """Parity proof for the float32 hot path: with thresholds halfway between two fitting scores (D8), the float32
    decisions equal those of the same scores computed in float64 on the fitting rows (every fitting score is farther
    from its threshold than the float32 round-off) and on 20,000 unseen rows."""
    sched = fitted_agreement
    for seed, n in ((1, 1500), (2, 20000)):
        probs, _ = make_agreement_data(n, seed=seed)
        s32 = sched.utility_scores(probs, raw=True)
        # the same q^ in float64: features and heads in double precision, clamped q carried in double
        xs = all_exit_features(probs.double(), "agreement").double()
        s64, q64 = [], []
        for k in range(K):
            x = torch.cat([xs[k], torch.stack(q64, -1) if k else xs.new_zeros(n, 0)], -1)
            s64.append((x * sched.utility[k].weight[0].double()).sum(-1))
            q64.append(s64[-1].clamp(0, 1))
        s64 = torch.stack(s64, -1)
        assert (s32.double() - s64).abs().max() < 1e-5
        t = torch.tensor(sched.thresholds[:-1], dtype=torch.float64)
        exits32 = sched.exit_index(probs)
        stop64 = torch.cat([s64[:, :-1] >= t, torch.ones(n, 1, dtype=torch.bool)], 1)
        assert torch.equal(exits32, stop64.to(torch.int8).argmax(1))
        if seed == 1:  # fitting rows: the margin to every finite threshold exceeds the round-off
            finite = torch.isfinite(t)
            margin = (s64[:, :-1][:, finite] - t[finite]).abs().min()
            assert margin > 10 * (s32.double() - s64).abs().max()


def test_batched_and_single_row_decisions_agree(fitted_agreement):
    probs, _ = make_agreement_data(400, seed=6)
    batched = fitted_agreement.exit_index(probs)
    for n in range(0, 400, 13):
        state = fitted_agreement.init_state(1)
        e = K - 1
        for k in range(K - 1):
            if fitted_agreement.decide(k, probs[n:n + 1, k], state).item():
                e = k
                break
        assert e == batched[n].item()


def test_legacy_config_loads_with_legacy_features():
    """A bank saved before the agreement features (no ``features`` key, float64 thresholds, conf feature) loads as
    ``features="legacy"`` and decides as the old code did: q^ = w . [p, max p, 1 + sum p log p / log C, q_<k]."""
    probs, labels = make_agreement_data(400, seed=7)
    old = EENetScheduler(features="legacy", restarts=1, max_epochs=5).fit(probs, labels, COSTS, 0.5)
    cfg = old.get_config()
    legacy = {k: v for k, v in cfg.items() if k not in ("features", "shares", "selection_fraction", "fallback")}
    loaded = EENetScheduler.from_config(legacy)
    assert loaded.features == "legacy"
    state = old.state_dict()
    state["exit_thresholds"] = state["exit_thresholds"].double()  # old files stored float64 thresholds
    loaded.load_state_dict(state)
    assert torch.equal(loaded.exit_index(probs), old.exit_index(probs))
    # the old feature formula, by hand, in float64
    n = len(probs)
    conf = 1 + (probs.double() * probs.double().clamp_min(1e-30).log()).sum(-1) / math.log(C)
    q = []
    for k in range(K):
        x = torch.cat([probs[:, k].double(), probs[:, k].double().amax(-1, keepdim=True), conf[:, k:k + 1],
                       torch.stack(q, -1) if k else torch.zeros(n, 0, dtype=torch.float64)], -1)
        s = (x * loaded.utility[k].weight[0].double()).sum(-1)
        q.append(s.clamp(0, 1))
        assert torch.allclose(loaded.utility_scores(probs, raw=True)[:, k].double(), s, atol=1e-5)
