"""Per-exit cost profiles: measured latency on this device, analytic FLOPs, and plain layer counts.

All three are *cumulative* (cost of running up to and including exit k) and are also given normalised so the last
exit costs 1.0, which is the unit of ``config.exit_costs`` and of every ``budget=`` fraction.

Decision cost (docs/method.md §7.2): the measured latency of exit k includes the exit heads up to k, and by default
also the served policy's decisions at every exit passed: ``c_k = t_forward(k) + sum_{j <= k, j < K} d_j``, where
``d_j`` is the median time of ``policy.decide(j, ...)`` at the profiled batch size (the last exit makes no decision).
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from .configuration_eenet import flops_exit_costs, max_input_tokens
from .engine import input_device
from .policies import ExitPolicy


class ForcedExitPolicy(ExitPolicy):
    """Every row exits at exit ``target`` (0-based). Used to time each exit's cumulative latency; its per-exit work
    (softmax + a comparison) is what a threshold policy does, so the measured cost includes the decision overhead."""

    def __init__(self, target: int, num_exits: int):
        if not 0 <= target < num_exits:
            raise ValueError(f"target exit {target} out of range [0, {num_exits})")
        self.target, self.num_exits = target, num_exits

    def decide(self, exit_idx, probs, state):
        return torch.full((probs.shape[0],), exit_idx == self.target, dtype=torch.bool, device=probs.device)


@dataclass
class ExitCostProfile:
    """Cumulative per-exit costs of one model; ``normalised(kind)`` returns the ``kind`` costs (latency, flops or
    layers) divided by the last exit's cost."""

    exit_layers: list[int]
    latency_ms: list[float] | None = None
    flops: list[float] | None = None
    layers: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def normalised(self, kind: str) -> list[float]:
        values = {"latency": self.latency_ms, "flops": self.flops, "layers": self.layers}.get(kind)
        if values is None:
            raise ValueError(f"no '{kind}' costs in this profile (choose from latency, flops, layers)")
        return [v / values[-1] for v in values]

    def to_dict(self) -> dict:
        return asdict(self)


def _default_texts(n: int) -> list[str]:
    words = ("the film is a charming , often funny and ultimately moving portrait of a family that comes apart "
             "and finds its way back together over one long summer").split()
    return [" ".join(words[: 8 + (i * 5) % (len(words) - 8)]) for i in range(n)]


@torch.inference_mode()
def profile_exit_costs(
    model,
    tokenizer=None,
    texts: list[str] | None = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    measure_latency: bool = True,
    decision_policy="eenet",
    text_pairs: list[str] | None = None,
    max_length: int | None = None,
) -> ExitCostProfile:
    """Measure the cumulative latency of every exit of ``model`` on its device, plus FLOPs and layer-count costs.

    Latency of exit k = median wall time of the early-exit forward where every row exits at k (embeddings, layers
    up to ℓ_k, every exit head up to k and the policy's decisions included), over ``repeats`` runs of
    ``batch_size`` inputs. Inputs are ``texts`` (with ``text_pairs`` for a sentence-pair task) tokenised by
    ``tokenizer``: the ``batch_size`` texts of *median* token length among those given (so the profile does not
    hang on whichever text happens to come first), truncated to ``max_length`` (default: what the model takes,
    ``max_input_tokens``), or padded/truncated to exactly ``seq_len`` if given. Without a tokenizer: random token ids
    of length ``seq_len`` (default 32).

    ``decision_policy``: the policy whose per-exit decision time is added to every exit passed (docs/method.md
    §7.2): ``"eenet"`` (default) times an EENet scheduler of the model's ``scheduler_config`` (the bank that will be
    served), an :class:`~hf_eenet.policies.ExitPolicy` instance times that policy, ``None`` adds nothing. The
    per-exit times are in ``info["decision_ms"]`` and the forced-exit latencies without them in
    ``info["latency_ms_without_decisions"]``.

    Returns an :class:`ExitCostProfile`; store one in the config with ``set_exit_costs(model, profile, "latency")``.
    """
    cfg = model.config
    k_total = cfg.num_exits
    if batch_size < 1 or repeats < 1:
        raise ValueError("batch_size and repeats must be >= 1")
    if decision_policy is not None and not isinstance(decision_policy, ExitPolicy) and decision_policy != "eenet":
        raise ValueError(f"decision_policy must be 'eenet', an ExitPolicy or None, got {decision_policy!r}")
    device = input_device(model)
    if tokenizer is not None:
        if texts is None:
            if text_pairs is not None:
                raise ValueError("text_pairs needs texts (one first segment per pair)")
            texts = _default_texts(batch_size)
        if isinstance(texts, str) or not len(texts) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings (or None for built-in sample texts)")
        texts = list(texts)
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts) or not all(isinstance(t, str) for t in text_pairs):
                raise ValueError(f"text_pairs must hold one string per text ({len(texts)}), got {len(text_pairs)}")
        limit = max_input_tokens(cfg, tokenizer) if max_length is None else int(max_length)
        kw = dict(truncation=True, max_length=seq_len or limit)
        if len(texts) > batch_size:  # the batch_size texts around the median token length
            lengths = [len(ids) for ids in tokenizer(texts, text_pairs, **kw)["input_ids"]]
            order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
            start = max(0, min(len(order) - batch_size, (len(order) - batch_size) // 2))
            pick = sorted(order[start: start + batch_size])
        else:  # repeat the given texts up to batch_size
            pick = [i % len(texts) for i in range(batch_size)]
        pair = None if text_pairs is None else [text_pairs[i] for i in pick]
        batch = dict(tokenizer([texts[i] for i in pick], pair, return_tensors="pt",
                               padding="max_length" if seq_len else True, **kw))
    else:
        length = seq_len or 32
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, cfg.vocab_size, (batch_size, length), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    used_len = int(batch["input_ids"].shape[1])
    profile = ExitCostProfile(
        exit_layers=list(cfg.exit_layers),
        flops=flops_exit_costs(cfg, cfg.exit_layers, used_len, normalise=False),
        layers=[float(x) for x in cfg.exit_layers],
    )
    profile.info = {"batch_size": batch_size, "seq_len": used_len, "repeats": repeats, "device": str(device),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "statistic": "median"}
    if not measure_latency:
        return profile
    was_training = model.training
    model.eval()
    policies = [ForcedExitPolicy(k, k_total) for k in range(k_total)]
    for _ in range(warmup):
        for pol in policies:
            model(**batch, exit_policy=pol)
    samples = [[] for _ in range(k_total)]
    for _ in range(repeats):  # interleave exits so drift hits all of them alike
        for k, pol in enumerate(policies):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**batch, exit_policy=pol)
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples[k].append((time.perf_counter() - t0) * 1000)
    lat = [statistics.median(s) for s in samples]
    if decision_policy is not None:
        policy = _eenet_timing_probe(cfg) if isinstance(decision_policy, str) else decision_policy
        dec = measure_decision_ms(policy, k_total, cfg.num_labels, batch_size=batch_size, repeats=max(repeats, 50),
                                  device=device)
        profile.info["latency_ms_without_decisions"] = list(lat)
        profile.info["decision_ms"] = dec
        profile.info["decision_policy"] = type(policy).__name__
        lat = [t + sum(dec[: min(k + 1, k_total - 1)]) for k, t in enumerate(lat)]
    lat, inversion = monotone_latencies(lat)
    profile.info["largest_inversion"] = inversion
    if inversion > LATENCY_INVERSION_TOLERANCE:
        warnings.warn(f"the latency profile is dominated by noise: an exit measured {100 * inversion:.0f} % of the "
                      "largest exit latency cheaper than the exit before it (a busy machine?), so exit costs were "
                      "clamped: profile again on a quiet machine or with more repeats, or use the 'flops' / "
                      "'layers' costs", RuntimeWarning, stacklevel=2)
    step_ratio = latency_step_ratio(lat, profile.flops)
    profile.info["largest_step_ratio"] = step_ratio
    if step_ratio > LATENCY_STEP_RATIO_TOLERANCE:
        warnings.warn(f"the latency profile is dominated by noise: the time one exit adds over the one before is "
                      f"{step_ratio:.1f}x the typical step for the same work (per FLOP), although the layers between "
                      "exits are alike (a busy machine?); every budget is a fraction of these costs, so profile "
                      "again on a quiet machine or with more repeats, or use the 'flops' / 'layers' costs",
                      RuntimeWarning, stacklevel=2)
    profile.latency_ms = lat
    profile.info["unit"] = "ms per batch"
    model.train(was_training)
    return profile


#: an inversion of measured cumulative latencies larger than this share of the largest is not timer noise
LATENCY_INVERSION_TOLERANCE = 0.05


#: a latency step (per FLOP) between consecutive exits more than this many times the median step is not timer noise
LATENCY_STEP_RATIO_TOLERANCE = 3.0


def latency_step_ratio(lat, flops) -> float:
    """Largest latency step between consecutive exits per FLOP of the step, exits 2..K (the first exit's latency also
    holds the embeddings and the per-call overhead), over the typical step: the median step, or the smaller one when
    there are only two (3 exits; the median of two would hide the larger). The layers between exits are alike, so on
    a steady machine every step costs about the same per FLOP (ratios 1.0-1.5 measured over exit spacings, batch
    sizes, RoBERTa and pairs); a step several times the typical one is a disturbance during the profile that the
    interleaved medians did not absorb (a profile taken while another job ran measured the last layer at 8x the
    others). Steps disturbed alike raise the median and hide each other, so this catches one outlying step (or a
    few), not a profile disturbed throughout. ``1.0`` with fewer than two steps (2 exits: nothing to compare)."""
    steps = [(lat[k] - lat[k - 1]) / (flops[k] - flops[k - 1]) for k in range(1, len(lat)) if flops[k] > flops[k - 1]]
    if len(steps) < 2:
        return 1.0
    typical = min(steps) if len(steps) == 2 else statistics.median(steps)
    return max(steps) / typical if typical > 0 else float("inf")


def monotone_latencies(lat) -> tuple[list[float], float]:
    """Cumulative per-exit latencies made strictly increasing (each at least the previous one times ``1 + 1e-6``):
    timer noise can invert two exits. Returns the latencies and the largest inversion as a share of the largest
    latency (``0.0`` when none), which :func:`profile_exit_costs` warns about above
    ``LATENCY_INVERSION_TOLERANCE``."""
    out = [float(t) for t in lat]
    top = max(out) if out else 1.0
    worst = 0.0
    for k in range(1, len(out)):
        if out[k] < out[k - 1]:
            worst = max(worst, (out[k - 1] - out[k]) / top)
        out[k] = max(out[k], out[k - 1] * (1 + 1e-6))
    return out, worst


def _eenet_timing_probe(cfg):
    """An EENet scheduler with the bank's configuration and random heads, thresholds +inf (nobody stops, so every
    exit is decided), for timing ``decide`` before the real bank is fitted (timing does not depend on the weights)."""
    import math

    from .scheduler import EENetScheduler

    sched_cfg = dict(cfg.scheduler_config or {"features": EENetScheduler().features})  # no bank yet: the default
    sched_cfg.update(num_exits=cfg.num_exits, num_classes=cfg.num_labels)
    probe = EENetScheduler.from_config(sched_cfg)
    gen = torch.Generator().manual_seed(0)
    probe._init_parameters(gen)
    with torch.no_grad():
        probe.exit_thresholds.fill_(math.inf)
        probe.exit_thresholds[-1] = -math.inf
        probe.fitted.fill_(True)
    probe._fitted_flag = True
    return probe


@torch.inference_mode()
def measure_decision_ms(policy: ExitPolicy, num_exits: int, num_classes: int, batch_size: int = 1,
                        repeats: int = 200, device="cpu") -> list[float]:
    """Median wall time (ms) of ``policy.decide(k, probs, state)`` for k = 0..K-2 on ``batch_size`` random softmax
    rows, with the state carried from exit to exit as in the exit loop. Returns K-1 values."""
    device = torch.device(device)
    if hasattr(policy, "to"):
        policy = policy.to(device)
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(num_exits, batch_size, num_classes, generator=gen), -1).to(device)
    samples = [[] for _ in range(num_exits - 1)]
    for rep in range(repeats + 5):
        state = policy.init_state(batch_size, device)
        for k in range(num_exits - 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            policy.decide(k, probs[k], state)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep >= 5:  # warm-up
                samples[k].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(s) for s in samples]


def set_exit_costs(model, profile: ExitCostProfile, kind: str = "latency") -> list[float]:
    """Store ``profile``'s ``kind`` costs (normalised) as ``model.config.exit_costs``; returns them.

    A fitted scheduler bank means its budgets in these costs: if the model has one and the new costs differ from the
    ones it was fitted for, this raises ``BankIntegrityError`` and changes nothing (refit with
    ``EENetTrainer.fit_scheduler(cost_profile=...)``, or ``model.clear_scheduler_bank()`` first)."""
    from .bank import BankIntegrityError
    from .validation import check_costs, costs_match

    costs = profile.normalised(kind)
    if len(costs) != model.config.num_exits:
        raise ValueError(f"profile has {len(costs)} exits but the model has {model.config.num_exits}")
    costs = check_costs(costs, model.config.num_exits, name=f"{kind} costs")
    if model.config.scheduler_budgets:
        model.verify_scheduler_bank()
        if not costs_match(costs, model.config.exit_costs):
            raise BankIntegrityError(
                f"set_exit_costs: the scheduler bank (budgets {model.config.scheduler_budgets}) was fitted for exit "
                f"costs {[round(c, 6) for c in model.config.exit_costs]}; the new {kind} costs "
                f"{[round(c, 6) for c in costs]} would change what every budget means. Refit the bank "
                "(EENetTrainer.fit_scheduler(cost_profile=...)) or call model.clear_scheduler_bank() first")
    model.config.exit_costs = costs
    model.config.exit_cost_profile = kind
    model.config.exit_cost_info = {**profile.info, "raw": getattr(profile, {"latency": "latency_ms"}.get(kind, kind))}
    return costs


__all__ = ["ExitCostProfile", "ForcedExitPolicy", "profile_exit_costs", "set_exit_costs", "flops_exit_costs",
           "measure_decision_ms"]
