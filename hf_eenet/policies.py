"""Exit policies: objects the early-exit loop asks, exit by exit, which of the still-running rows stop.

Interface (shared by the online loop in ``modeling_eenet.py`` and the offline ``exit_index``):

* ``policy.check_num_exits(K)`` — raise ``ValueError`` if the policy was built for another number of exits.
* ``state = policy.init_state(batch_size, device)`` — a ``dict[str, Tensor]`` of *batch-first* per-row state
  (patience counters, earlier utility scores, ...). The loop slices every entry with the same row index when rows
  leave the batch, so a policy never sees rows that already exited.
* ``stop = policy.decide(k, probs, state)`` — ``k`` is the 0-based exit index, ``probs`` the softmax output of exit
  ``k`` for the rows still running, shape ``[b, C]``; returns a bool tensor ``[b]``. ``decide`` may update ``state``
  in place (``state["x"] = ...``). It is never called at the last exit: the last exit always accepts.

Because online and offline decisions go through the same ``decide`` calls, ``policy.exit_index(exit_probs)`` on the
all-exits output equals the exit the early-exit forward takes for every row.

Baselines (docs/method.md §8), each with ``Cls.calibrate(exit_probs, labels, costs, budget)`` returning an instance
with ``.budget``, ``.costs`` and ``.planned_cost`` (realised average cost on the calibration data):
:class:`MaxProbPolicy` (MSDNet), :class:`EntropyPolicy` (BranchyNet), :class:`PatiencePolicy` (PABEE),
:class:`StaticPolicy` and :class:`OraclePolicy` (labels-based upper bound, offline only). Input validators
(:func:`check_costs`, :func:`check_budget`, :func:`check_labels`, ...) live in :mod:`hf_eenet.validation` and are
re-exported here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# The validators live in hf_eenet.validation (one module for every rule); the old names stay importable from here.
from .validation import (  # noqa: F401 - re-exported
    ValidationTypeError,
    as_number,
    as_probs_tensor as _as_probs_tensor,
    check_budget,
    check_costs,
    check_exit_index,
    check_int,
    check_labels,
    check_thresholds as _check_thresholds,
    is_number as _is_number,
)


class ExitPolicy:
    """Base class of all exit policies. Subclasses implement :meth:`decide` (and :meth:`init_state` if stateful)."""

    #: number of exits the policy was built or calibrated for; ``None`` = any
    num_exits: int | None = None
    #: set by ``calibrate``: target average cost, cumulative per-exit costs, realised cost on the calibration data
    budget: float | None = None
    costs: list[float] | None = None
    planned_cost: float | None = None
    #: human-readable caveat from calibration (e.g. budget not reachable exactly), else ``None``
    note: str | None = None

    def check_num_exits(self, num_exits: int) -> None:
        if self.num_exits is not None and self.num_exits != num_exits:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_exits} exits but the model has {num_exits} exits "
                f"(config.exit_layers); give one value per exit"
            )

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {}

    def decide(self, exit_idx: int, probs: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def exit_index(self, exit_probs) -> torch.Tensor:
        """Offline decisions on all-exits outputs.

        Args:
            exit_probs: ``[N, K, C]`` softmax outputs of every exit.
        Returns:
            ``[N]`` long tensor, the 0-based exit each row takes (what the early-exit forward would pick).
        """
        probs = _as_probs_tensor(exit_probs)
        n, k_total, _ = probs.shape
        self.check_num_exits(k_total)
        state = self.init_state(n, probs.device)
        exit_idx = torch.full((n,), k_total - 1, dtype=torch.long)
        running = torch.ones(n, dtype=torch.bool)
        for k in range(k_total - 1):
            rows = running.nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                break
            sub = {key: v[rows] for key, v in state.items()}
            stop = self.decide(k, probs[rows, k], sub).to(device="cpu", dtype=torch.bool)  # rows are CPU indices
            for key, v in sub.items():  # write updated per-row state back
                if key in state:
                    state[key] = state[key].clone()
                    state[key][rows] = v.to(state[key].dtype)
                else:
                    full = torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)
                    full[rows] = v
                    state[key] = full
            exit_idx[rows[stop]] = k
            running[rows[stop]] = False
        return exit_idx

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}(num_exits={self.num_exits})"


def entropy_confidence(probs: torch.Tensor) -> torch.Tensor:
    """conf = 1 + Σ_c p log p / log C  (1 = one-hot, 0 = uniform); docs/method.md §3. Shape [..., C] → [...]."""
    c = probs.shape[-1]
    if c < 2:
        raise ValueError("entropy confidence needs at least 2 classes")
    p = probs.clamp_min(0)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    return 1.0 + plogp.sum(-1) / math.log(c)


def sequential_quantile_thresholds(scores: torch.Tensor, shares) -> list[float]:
    """Thresholds from exit shares, docs/method.md §6.

    Args:
        scores: ``[N, K]`` per-exit scores (higher = more confident).
        shares: ``[K]`` planned fraction of samples per exit (non-negative, sums to 1).
    Returns:
        ``K`` thresholds; ``t_K = -inf`` so every sample has an exit. Planned counts ``n_k = floor(share_k * N)``
        for ``k < K``; in order, among samples not yet assigned, ``t_k`` is the ``n_k``-th largest score
        (``+inf`` when ``n_k = 0``, ``-inf`` when ``n_k`` is every sample not yet assigned) and those ``n_k``
        samples are assigned to exit ``k``.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    n, k_total = scores.shape
    shares = torch.as_tensor(shares, dtype=torch.float64)
    if shares.shape != (k_total,):
        raise ValueError(f"shares must have one entry per exit ({k_total}), got shape {tuple(shares.shape)}")
    remaining = torch.ones(n, dtype=torch.bool)
    thresholds = []
    for k in range(k_total - 1):
        n_k = int(math.floor(float(shares[k]) * n + 1e-9))
        rows = remaining.nonzero(as_tuple=True)[0]
        n_k = min(n_k, rows.numel())
        if n_k <= 0:
            thresholds.append(math.inf)
            continue
        if n_k == rows.numel():  # the plan sends every remaining row here: so does the online rule for new rows
            thresholds.append(-math.inf)  # (docs/method.md D7), not the lowest fitting score
            remaining[rows] = False
            continue
        s = scores[rows, k]
        t = torch.topk(s, n_k).values[-1].item()
        thresholds.append(t)
        remaining[rows[s >= t]] = False  # ties at t exit too, exactly as the online rule q_k >= t_k does
    thresholds.append(-math.inf)
    return thresholds


class ScoreThresholdPolicy(ExitPolicy):
    """Exit at the first exit ``k`` whose score ``s_k(p_k) >= t_k``. Subclasses define :meth:`score`."""

    def __init__(self, thresholds):
        self.thresholds = _check_thresholds(thresholds)
        self.num_exits = len(self.thresholds)

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, exit_idx, probs, state):
        return self.score(probs) >= self.thresholds[exit_idx]

    @classmethod
    def calibration_scores(cls, exit_probs: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` scores of every exit, computed exactly as :meth:`decide` computes them (per exit, on a
        contiguous ``[N, C]`` slice). Override in subclasses whose constructor does not take ``thresholds`` only."""
        n, k_total, _ = exit_probs.shape
        probe = cls([0.0] * k_total)
        return torch.stack([probe.score(exit_probs[:, k].contiguous()) for k in range(k_total)], 1)

    @classmethod
    def calibrate(cls, exit_probs, labels, costs, budget):
        """Thresholds that meet an average-cost ``budget`` with geometric exit shares (docs/method.md §8).

        Args:
            exit_probs: ``[N, K, C]`` softmax outputs of all exits on the calibration (validation) split.
            labels: ``[N]`` class ids, validated but not used (``None`` is accepted).
            costs: ``[K]`` cumulative per-exit cost, strictly increasing and positive (any unit).
            budget: target *average* cost per sample, same unit, in ``[c_1, c_K]``.

        Shares are ``π_k ∝ q^k`` (k = 0..K-1). ``q`` is first bisected so that the planned cost ``Σ_k π_k c_k``
        equals ``budget`` (upstream instead keeps the first ``q`` on a grid whose cost *exceeds* it). Shares become
        thresholds via :func:`sequential_quantile_thresholds`, which quantises them (``floor`` of the counts, ties),
        so ``q`` is then bisected again against the *realised* cost on the calibration data. The result is the
        candidate whose realised cost is closest to the budget among those that exceed it by at most one sample's
        worth, ``(c_K - c_1) / N``; with many tied scores (saturated probabilities) that may be unreachable, and
        ``.note`` says so. The thresholds are then moved halfway to the next lower calibration score
        (:func:`refine_thresholds`, D8): the same rows pass, and no calibration row sits on a threshold, where the last
        bit of its score (another batch shape) would decide its exit.

        Returns:
            an instance with ``thresholds`` and ``budget``, ``costs``, ``planned_cost`` (realised average cost on the
            calibration data, via :meth:`exit_index`), ``q``, ``shares`` (planned), ``exit_fractions`` (realised),
            ``note``.
        """
        probs, costs, budget = _calibration_inputs(exit_probs, labels, costs, budget)
        probs = probs.cpu()  # fitted offline, on the host (as EENetScheduler.fit)
        n, k_total = probs.shape[:2]
        scores = cls.calibration_scores(probs)
        thresholds, log_q, note = _calibrate_geometric(scores, costs, budget)
        policy = cls(refine_thresholds(scores, thresholds))  # midpoints (D8): no calibration row sits on one
        exits = policy.exit_index(probs)  # the realised cost is measured with the online rule itself
        policy.budget = budget
        policy.costs = costs
        policy.planned_cost = _mean_cost(exits, costs)
        policy.q = math.exp(log_q)
        policy.shares = geometric_shares(log_q, k_total)
        policy.exit_fractions = torch.bincount(exits, minlength=k_total).double().div(n).tolist()
        policy.note = note
        return policy

    def __repr__(self) -> str:  # pragma: no cover
        return f"{type(self).__name__}(thresholds={self.thresholds})"


class MaxProbPolicy(ScoreThresholdPolicy):
    """MSDNet rule: exit at the first exit whose max softmax probability is ≥ its threshold. Calibrate to a budget
    with :meth:`ScoreThresholdPolicy.calibrate` (geometric exit shares, docs/method.md §8).

    Args:
        thresholds: one threshold per exit (the last one is ignored: the last exit always accepts).
    """

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.max(dim=-1).values


def _calibration_inputs(exit_probs, labels, costs, budget) -> tuple[torch.Tensor, list[float], float]:
    """The checked inputs of a baseline's ``calibrate``: ``exit_probs`` as a ``[N, K, C]`` tensor, ``costs`` (one per
    exit, increasing) and ``budget`` (within the exits' costs); ``labels`` (optional, ``[N]`` ids in ``0..C-1``) are
    only checked."""
    probs = _as_probs_tensor(exit_probs)
    n, k_total, num_classes = probs.shape
    costs = check_costs(costs, k_total)
    budget = check_budget(budget, costs)
    if labels is not None:
        check_labels(labels, n, num_classes)
    return probs, costs, budget


def _mean_cost(exit_idx: torch.Tensor, costs) -> float:
    c = torch.as_tensor(costs, dtype=torch.float64)
    return float(c[exit_idx.long()].mean().item())


# ----------------------------------------------------------------------------------------------------------------------
# Calibration of score-threshold policies with geometric exit shares (docs/method.md §8)
# ----------------------------------------------------------------------------------------------------------------------

_LOGQ_MIN, _LOGQ_MAX = -60.0, 60.0  # q = e^-60: everyone at exit 1; q = e^60: everyone at exit K


def geometric_shares(log_q: float, num_exits: int) -> list[float]:
    """Exit shares ``π_k ∝ q^k`` (k = 0..K-1) for ``q = exp(log_q)``, computed stably in log space."""
    logits = [k * float(log_q) for k in range(num_exits)]
    top = max(logits)
    w = [math.exp(x - top) for x in logits]
    total = math.fsum(w)
    return [x / total for x in w]


def _planned_cost(log_q: float, costs) -> float:
    shares = geometric_shares(log_q, len(costs))
    return float(sum(s * c for s, c in zip(shares, costs)))


def _first_exit(scores: torch.Tensor, thresholds) -> torch.Tensor:
    """Vectorised ``exit_index`` of a stateless score-threshold rule: first k with ``scores[:, k] >= t_k``."""
    n, k_total = scores.shape
    t = torch.tensor(thresholds[:-1], dtype=scores.dtype, device=scores.device)
    hit = scores[:, :-1] >= t  # [N, K-1]
    hit = torch.cat([hit, torch.ones(n, 1, dtype=torch.bool, device=scores.device)], 1)
    return hit.to(torch.int8).argmax(1)  # first True


def refine_thresholds(scores: torch.Tensor, thresholds: list[float]) -> list[float]:
    """D8 (docs/method.md): move every finite t_k (k < K) halfway to the next lower score among the rows that reach
    exit k, when a float32 value lies strictly between; the rows that pass are unchanged. ``scores`` [N, K] float32.

    A threshold equal to a fitting row's score decides that row on the last bit of its score: the same text scored
    in another batch shape (another padding, another kernel) can land either side. The midpoint leaves half a gap
    on both sides. Used by the EENet scheduler and by every baseline's ``calibrate``."""
    n, k_total = scores.shape
    out = list(thresholds)
    remaining = torch.ones(n, dtype=torch.bool)
    for k in range(k_total - 1):
        t = out[k]
        rows = remaining.nonzero(as_tuple=True)[0]
        if rows.numel() == 0 or math.isinf(t):
            if t == -math.inf:
                remaining[:] = False
            continue
        s = scores[rows, k]
        t32 = torch.tensor(t, dtype=torch.float32)
        passed = s >= t32
        below = s[~passed]
        if below.numel():
            lo = below.max()
            mid = torch.tensor(0.5 * (float(t32) + float(lo)), dtype=torch.float32)
            if lo < mid < t32:
                t32 = mid
        out[k] = float(t32)
        remaining[rows[passed]] = False
    out[-1] = -math.inf
    return out


def _calibrate_geometric(scores: torch.Tensor, costs: list[float], budget: float) -> tuple[list[float], float, str | None]:
    """Bisection on ``log q`` of geometric shares, first on planned then on realised cost. See ``calibrate``."""
    n, k_total = scores.shape
    if k_total == 1:
        return [-math.inf], 0.0, None
    s64 = scores.double()

    # 1) planned cost Σ π_k c_k is continuous and increasing in q (a geometric tilt towards later exits)
    lo, hi = _LOGQ_MIN, _LOGQ_MAX
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _planned_cost(mid, costs) < budget:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    log_q0 = 0.5 * (lo + hi)

    # 2) the realised cost (floor of the planned counts, ties at the thresholds) is a step function of q, monotone
    #    up to one-sample steps: bracket the budget around log_q0 and bisect on it, remembering every candidate
    cache: dict[float, tuple[float, list[float]]] = {}

    def realised(lq: float) -> float:
        if lq not in cache:
            th = sequential_quantile_thresholds(s64, geometric_shares(lq, k_total))
            cache[lq] = (_mean_cost(_first_exit(scores, th), costs), th)
        return cache[lq][0]

    step = 0.05
    if realised(log_q0) <= budget:
        lo = hi = log_q0
        while hi < _LOGQ_MAX and realised(hi) <= budget:
            lo, hi = hi, min(hi + step, _LOGQ_MAX)
            step *= 2
    else:
        lo = hi = log_q0
        while lo > _LOGQ_MIN and realised(lo) > budget:
            lo, hi = max(lo - step, _LOGQ_MIN), lo
            step *= 2
    one_sample = (costs[-1] - costs[0]) / n
    finest = min(b - a for a, b in zip(costs[:-1], costs[1:])) / n  # the smallest possible cost step
    if realised(lo) <= budget < realised(hi):
        for _ in range(100):
            if realised(hi) - realised(lo) <= finest * (1 + 1e-9) or hi - lo < 1e-12:
                break
            mid = 0.5 * (lo + hi)
            f = realised(mid)
            if f == budget:
                break
            if f < budget:
                lo = mid
            else:
                hi = mid

    eligible = [lq for lq, (c, _) in cache.items() if c <= budget + one_sample * (1 + 1e-9)]
    note = None
    if eligible:  # closest to the budget; on a tie prefer the cheaper side
        best = min(eligible, key=lambda lq: (abs(cache[lq][0] - budget), cache[lq][0] > budget))
    else:  # cannot happen for budget >= c_1 (q -> 0 puts everyone at exit 1), kept as a guard
        best = min(cache, key=lambda lq: cache[lq][0])
    cost = cache[best][0]
    if abs(cost - budget) > one_sample * (1 + 1e-9):
        note = (
            f"realised calibration cost {cost:.6g} differs from the budget {budget:.6g} by more than one sample's "
            f"worth ({one_sample:.3g}); usually many tied scores (saturated probabilities) make samples exit in blocks"
        )
    return cache[best][1], best, note


class EntropyPolicy(ScoreThresholdPolicy):
    """BranchyNet rule: exit at the first exit whose entropy confidence (:func:`entropy_confidence`,
    ``1 + Σ p log p / log C``: 1 = one-hot, 0 = uniform) is ≥ its threshold. Calibrate with
    :meth:`ScoreThresholdPolicy.calibrate`.

    Args:
        thresholds: one threshold per exit (the last one is ignored: the last exit always accepts).
    """

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        return entropy_confidence(probs)


class PatiencePolicy(ExitPolicy):
    """PABEE rule: exit once the prediction (argmax) has stayed the same for ``patience`` consecutive exits.

    Per-row state: ``prev`` (argmax at the previous exit, ``-1`` before exit 0) and ``count``. At every exit the
    counter increments if the argmax equals the previous exit's argmax and resets to 0 otherwise; the row exits when
    ``count >= patience``. So ``patience = 0`` exits everyone at the first exit, ``patience = p`` exits at exit ``k``
    when exits ``k-p..k`` agree, and ``patience >= K - 1`` never exits early.

    Args:
        patience: non-negative int.
        num_exits: number of exits ``K``.

    Integer patience gives only ``K`` operating points (patience 0..K-1), so :meth:`calibrate` rarely lands on the
    budget: it picks the patience whose calibration cost is closest to the budget from below.
    """

    #: relative shortfall below the budget from which :meth:`calibrate` leaves a ``.note``
    under_budget_tolerance = 0.03

    def __init__(self, patience: int, num_exits: int):
        self.patience = check_int(patience, "patience", 0)
        self.num_exits = check_int(num_exits, "num_exits", 1)

    def init_state(self, batch_size, device="cpu"):
        return {
            "prev": torch.full((batch_size,), -1, dtype=torch.long, device=device),
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def decide(self, exit_idx, probs, state):
        pred = probs.argmax(dim=-1)
        prev, count = state["prev"].to(pred.device), state["count"].to(pred.device)
        if exit_idx == 0:
            count = torch.zeros_like(count)
        else:
            count = torch.where(pred == prev, count + 1, torch.zeros_like(count))
        state["prev"] = pred
        state["count"] = count
        return count >= self.patience

    @classmethod
    def calibrate(cls, exit_probs, labels, costs, budget):
        """Patience whose realised cost on the calibration data is closest to ``budget`` from below.

        If no patience is at or below the budget (only possible with invalid inputs, since patience 0 costs
        ``c_1``), the cheapest one is returned and ``.note`` says so. ``.note`` also says when the chosen patience
        spends more than ``under_budget_tolerance`` (3 %) less than the budget because the next patience overspends. ``.operating_points`` lists
        ``(patience, cost)`` for every patience 0..K-1; ``.planned_cost`` is the chosen one's cost.
        """
        probs, costs, budget = _calibration_inputs(exit_probs, labels, costs, budget)
        k_total = probs.shape[1]
        points = [(p, _mean_cost(cls(p, k_total).exit_index(probs), costs)) for p in range(k_total)]
        slack = 1e-12 * costs[-1]
        feasible = [pc for pc in points if pc[1] <= budget + slack]
        note = None
        if feasible:
            patience, cost = max(feasible, key=lambda pc: (pc[1], -pc[0]))
            over = [pc for pc in points if pc[1] > budget + slack]
            if over and cost < (1 - cls.under_budget_tolerance) * budget:
                nxt, nxt_cost = min(over, key=lambda pc: (pc[1], pc[0]))
                note = (
                    f"patience={patience} spends {cost:.6g}, {100 * (1 - cost / budget):.1f} % under the budget "
                    f"{budget:.6g}: the next operating point, patience={nxt}, costs {nxt_cost:.6g} (integer "
                    f"patience has only {k_total} operating points, see .operating_points)"
                )
        else:
            patience, cost = min(points, key=lambda pc: (pc[1], pc[0]))
            note = (
                f"no patience meets the budget {budget:.6g}; using the cheapest, patience={patience} "
                f"(cost {cost:.6g})"
            )
        policy = cls(patience, k_total)
        policy.budget, policy.costs, policy.planned_cost = budget, costs, cost
        policy.operating_points = points
        policy.note = note
        return policy

    def __repr__(self) -> str:  # pragma: no cover
        return f"PatiencePolicy(patience={self.patience}, num_exits={self.num_exits})"


_HASH_STEP = 0.01  # nats: log-probabilities are quantised to this step before hashing


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pseudo_uniform(probs: torch.Tensor) -> torch.Tensor:
    """Deterministic per-sample pseudo-uniform ``u ∈ [0, 1)`` from a row's probabilities ``[b, C] → [b]``.

    ``log p`` (clamped at 1e-30) is rounded to steps of ``0.01`` nats and the integer vector is hashed with
    splitmix64. It depends only on the row itself, never on its batch position or batch size, so batched and
    single-row decisions agree. Quantising in log space keeps confident rows distinct (their small probabilities
    still differ) while absorbing float noise; noise can still flip a row whose log-probability lies within the noise
    (~1e-6 nats) of a rounding boundary, i.e. rarely.
    """
    logp = torch.log(probs.detach().double().clamp_min(1e-30)).cpu().numpy()
    q = np.rint(logp / _HASH_STEP).astype(np.int64).view(np.uint64)
    h = np.full(q.shape[0], 0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(q.shape[1]):
            h = _splitmix64(h ^ q[:, c])
    u = (h >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    return torch.from_numpy(u).to(probs.device)


class StaticPolicy(ExitPolicy):
    """Static exit: every row exits at ``exit_idx`` (0-based); with ``mix_next > 0`` a ``mix_next`` fraction of
    rows goes on to ``exit_idx + 1`` so that the two-exit mixture's expected cost meets a budget exactly.

    Which rows go on is decided per *sample*, not per batch position: at exit 0 :meth:`decide` computes
    ``u = pseudo_uniform(p_1)`` (a hash of the row's rounded exit-0 log-probabilities, see :func:`pseudo_uniform`)
    and keeps it in the state; a row continues past ``exit_idx`` iff ``u < mix_next``. Hence online batched
    decisions equal bs=1 decisions, and the realised fraction matches ``mix_next`` only in expectation.

    Args:
        exit_idx: 0-based exit, ``0 <= exit_idx < num_exits``.
        num_exits: number of exits ``K``.
        mix_next: fraction in ``[0, 1]`` of rows that go on to ``exit_idx + 1`` (must be 0 when ``exit_idx`` is the
            last exit).
    """

    def __init__(self, exit_idx: int, num_exits: int, mix_next: float = 0.0):
        self.num_exits = check_int(num_exits, "num_exits", 1)
        self.exit_idx = check_int(exit_idx, "exit_idx", 0)
        if self.exit_idx >= self.num_exits:
            raise ValueError(f"exit_idx must be in [0, {self.num_exits}), got {self.exit_idx}")
        if not _is_number(mix_next) or not math.isfinite(float(mix_next)) or not 0.0 <= float(mix_next) <= 1.0:
            raise ValueError(f"mix_next must be a number in [0, 1], got {mix_next!r}")
        self.mix_next = float(mix_next)
        if self.mix_next > 0 and self.exit_idx == self.num_exits - 1:
            raise ValueError("mix_next must be 0 when exit_idx is the last exit (there is no next exit)")
        self.expected_cost: float | None = None

    def init_state(self, batch_size, device="cpu"):
        return {"u": torch.zeros(batch_size, dtype=torch.float64, device=device)}

    def decide(self, exit_idx, probs, state):
        b = probs.shape[0]
        if exit_idx == 0 and self.mix_next > 0:
            state["u"] = pseudo_uniform(probs)
        if exit_idx < self.exit_idx:
            return torch.zeros(b, dtype=torch.bool, device=probs.device)
        if exit_idx == self.exit_idx:
            if self.mix_next <= 0:
                return torch.ones(b, dtype=torch.bool, device=probs.device)
            return (state["u"] >= self.mix_next).to(probs.device)
        return torch.ones(b, dtype=torch.bool, device=probs.device)

    @classmethod
    def calibrate(cls, exit_probs, labels, costs, budget):
        """Deepest exit ``k`` with ``c_k <= budget`` and ``mix_next = (budget - c_k) / (c_{k+1} - c_k)``.

        ``.expected_cost`` equals the budget (exact in expectation); ``.planned_cost`` is the realised cost on the
        calibration data (differs by the sampling noise of the per-sample hash).
        """
        probs, costs, budget = _calibration_inputs(exit_probs, labels, costs, budget)
        n, k_total = probs.shape[:2]
        slack = 1e-12 * costs[-1]
        k = max(i for i, c in enumerate(costs) if c <= budget + slack)
        mix = 0.0
        if k < k_total - 1:
            mix = min(max((budget - costs[k]) / (costs[k + 1] - costs[k]), 0.0), 1.0)
            if mix < 1e-12:
                mix = 0.0
        policy = cls(k, k_total, mix)
        policy.budget, policy.costs = budget, costs
        policy.expected_cost = costs[k] + (mix * (costs[k + 1] - costs[k]) if mix > 0 else 0.0)
        policy.planned_cost = _mean_cost(policy.exit_index(probs), costs)
        if mix > 0:  # the hash splits distinct rows; rows with identical exit-0 outputs all go the same way
            step = costs[k + 1] - costs[k]
            noise = 3 * math.sqrt(mix * (1 - mix) / n) * step + step / n  # 3 binomial SEs of the share, plus a row
            if abs(policy.planned_cost - policy.expected_cost) > noise:
                policy.note = (
                    f"realised cost {policy.planned_cost:.4g} on the calibration rows misses the budget {budget:.4g} "
                    "by more than sampling noise: rows with identical exit-0 outputs (duplicated or constant rows) "
                    "get the same pseudo-random draw, so the mixed share goes all one way on them")
        return policy

    def __repr__(self) -> str:  # pragma: no cover
        return f"StaticPolicy(exit_idx={self.exit_idx}, num_exits={self.num_exits}, mix_next={self.mix_next})"


def oracle_exit_index(exit_probs, labels, costs, budget=None) -> torch.Tensor:
    """Best achievable exits given the labels (an upper bound, not a deployable policy).

    Each sample's ideal exit is its first correct exit (never correct: the last exit). If ``budget`` is ``None`` or
    at least that assignment's average cost, that is returned. Otherwise greedy, which maximises the number of
    correct samples under the average-cost constraint: all samples start at exit 0; samples with a correct exit are
    granted their first correct exit in ascending order of its cost while the average cost stays ``<= budget``; the
    rest (and never-correct samples) stay at exit 0.
    """
    probs = _as_probs_tensor(exit_probs)
    n, k_total, num_classes = probs.shape
    costs = check_costs(costs, k_total)
    labels = check_labels(labels, n, num_classes)
    correct = probs.argmax(-1) == labels.to(probs.device)[:, None]
    any_correct = correct.any(1).cpu()
    first = correct.to(torch.int8).argmax(1).cpu()
    ideal = torch.where(any_correct, first, torch.full_like(first, k_total - 1)).long()
    c = torch.tensor(costs, dtype=torch.float64)
    if budget is None or c[ideal].mean().item() <= budget + 1e-12 * costs[-1]:
        return ideal
    exits = torch.zeros(n, dtype=torch.long)
    cand = any_correct.nonzero(as_tuple=True)[0]
    extra = c[first[cand]] - c[0]
    order = torch.argsort(extra, stable=True)
    allowed = n * (budget - costs[0]) + 1e-9 * costs[-1]
    granted = int((torch.cumsum(extra[order], 0) <= allowed).sum().item())
    rows = cand[order[:granted]]
    exits[rows] = first[rows].long()
    return exits


class OraclePolicy(ExitPolicy):
    """Upper bound for evaluation only: exits chosen with the labels (see :func:`oracle_exit_index`).

    Build with :meth:`calibrate`. :meth:`exit_index` takes ``labels`` (for a different split than calibration); if
    omitted it uses the calibration labels when N matches. :meth:`decide` raises ``RuntimeError``: the oracle cannot
    run online.
    """

    def __init__(self, costs, budget=None, labels=None):
        self.num_exits = len(costs)
        self.costs = check_costs(costs, self.num_exits)
        self.budget = None if budget is None else check_budget(budget, self.costs)
        self.labels = None if labels is None else torch.as_tensor(labels).long().cpu()
        self.accuracy: float | None = None

    def decide(self, exit_idx, probs, state):
        raise RuntimeError("oracle needs labels; offline evaluation only")

    @torch.no_grad()
    def exit_index(self, exit_probs, labels=None) -> torch.Tensor:
        probs = _as_probs_tensor(exit_probs)
        n, k_total, num_classes = probs.shape
        self.check_num_exits(k_total)
        if labels is None:
            if self.labels is None or self.labels.shape[0] != n:
                raise ValueError(
                    f"OraclePolicy.exit_index needs labels for these {n} samples (calibration labels "
                    f"{'absent' if self.labels is None else f'have N = {self.labels.shape[0]}'})"
                )
            labels = self.labels
        return oracle_exit_index(probs, labels, self.costs, self.budget)

    @classmethod
    def calibrate(cls, exit_probs, labels, costs, budget=None):
        """Oracle for ``budget`` (``None`` = unconstrained). ``.planned_cost`` and ``.accuracy`` are on these data."""
        probs = _as_probs_tensor(exit_probs)
        n, k_total, num_classes = probs.shape
        costs = check_costs(costs, k_total)
        budget = None if budget is None else check_budget(budget, costs)
        labels = check_labels(labels, n, num_classes)
        policy = cls(costs, budget, labels)
        exits = policy.exit_index(probs)
        policy.planned_cost = _mean_cost(exits, costs)
        pred = probs.argmax(-1)[torch.arange(n), exits].cpu()
        policy.accuracy = float((pred == labels).double().mean().item())
        return policy

    def __repr__(self) -> str:  # pragma: no cover
        return f"OraclePolicy(num_exits={self.num_exits}, budget={self.budget})"
