"""Typed, validated constructor arguments of :class:`~hf_eenet.scheduler.EENetScheduler` (declared once, here).

Paper values (docs/method.md §5) are given in comments; where ours differ the method document lists the deviation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .validation import check_bool

#: feature sets of §3 (docs/method.md): extra per-exit features beyond [p, max p, conf]
FEATURE_SETS = {"base": 0, "agreement": 2, "legacy": 0}  # legacy: [p, max p, conf], files saved before issue 12
#: exit-share plans that turn utility scores into thresholds (§6): learned pi_bar, geometric (as the baselines), or
#: let the honest selection pick per candidate
SHARE_PLANS = ("learned", "geometric", "auto")


def _check_number(value, name, *, positive=False, nonneg=False, integer=False, allow_none=False, upper=None):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if upper is not None and value >= upper:
        raise ValueError(f"{name} must be < {upper}, got {value!r}")
    return value


@dataclass
class EENetSchedulerConfig:
    """Constructor arguments of the EENet scheduler (JSON round trip via ``asdict`` / ``from_dict``).

    Args:
        num_exits, num_classes: build the networks now (else :meth:`fit` builds them from the data shapes).
        rho: hidden width factor of the assignment MLPs, hidden = floor(rho * d_k) (§4).
        beta: exponent of the KL teacher t = q^beta / sum q^beta (§5).
        alpha_kl, alpha_cost: weights of L_kl and L_cost in the r-phase (§5).
        period: epochs per phase; q-phase and r-phase alternate (§5).
        lr, weight_decay: AdamW learning rate and decoupled weight decay.
        batch_size: mini-batch rows (``None`` = auto: ceil(N / 8) capped at 1024).
        max_epochs, patience: epoch cap, and patience counted once the planned cost is within ``budget_tolerance``.
        restarts: randomly initialised training runs; one more run starts at the max-prob ranking (§5.3).
        budget_tolerance: relative cost gap under which an epoch / run counts as meeting the budget (paper 0.1).
        match_budget: tilt the learned exit shares so the planned cost equals the budget (deviation D9).
        features: ``"agreement"`` (default: [p, max p, entropy in nats, vote count, agreement with the previous
            exit], docs/method.md eq. 3.1-3.3) or
            ``"base"`` (the feature set without the agreement/voting terms, §3); ``"legacy"`` only loads schedulers
            saved before issue 12 ([p, max p, conf]).
        shares: exit-share plan, ``"learned"`` (pi_bar of the assignment nets), ``"geometric"`` (pi_k ~ q^k bisected
            to the budget, as the baselines) or ``"auto"`` (the honest selection picks per candidate, §5.3).
        selection_folds: k of the seeded, stratified k-fold cross-selection that chooses among the candidates
            (§5.3): every candidate is trained on k-1 folds and judged on the held-out fold, so every fitting row
            is held out once; the kept candidate is then refitted on all rows. ``< 2`` uses ``selection_fraction``.
            ``None`` (default) = 5 folds below 4,000 fitting rows (where one hold-out is too small to tell
            candidates apart), else one ``selection_fraction`` hold-out (>= 1,200 rows; k-fold would cost k times
            the training time there).
        selection_fraction: with ``selection_folds < 2``: share of the fitting rows held out once; ``0`` selects on
            the fitting rows themselves (the paper's literal reading, optimistic).
        selection_margin: the one-standard-error rule of §5.3: the simplest candidate (max-prob < static < voting
            < trained) whose paired per-row held-out gap to the most accurate one is within this many standard
            errors, and which is no less accurate than a simpler candidate outside that margin, is kept (selection
            among many candidates favours lucky ones). ``0`` = the most accurate.
        fallback: keep the calibrated max-prob / static (and voting) rules as candidates (§5.3): a trained run is
            kept only when no simpler rule qualifies under that rule, so the kept scheduler is at most that margin
            below the best of them on the selection split, and never below a simpler rule it passed over (never
            below the best with ``selection_margin=0``).
    """

    num_exits: int | None = None
    num_classes: int | None = None
    rho: float = 2.0  # paper (NLP)
    beta: float = 1.0  # paper
    alpha_kl: float = 1e-3  # paper
    alpha_cost: float = 1e-2  # paper
    period: int = 10  # paper
    lr: float = 1e-2  # paper 3e-5 (Adam): the nets barely move from their init
    weight_decay: float = 1e-2  # paper (coupled L2 there, decoupled AdamW here)
    batch_size: int | None = None  # paper 512; None = auto
    max_epochs: int = 100  # paper 1000
    patience: int = 20  # paper 100
    restarts: int = 3  # paper 10
    budget_tolerance: float = 0.1  # paper
    match_budget: bool = True  # deviation D9
    features: str = "agreement"  # paper: max prob, entropy confidence and voting; "base" drops the voting terms
    shares: str = "auto"
    selection_folds: int | None = None  # paper: best trial on validation data; ours: k-fold cross-selection on it
    selection_fraction: float = 0.3  # single hold-out, used when selection_folds < 2
    selection_margin: float = 1.0
    fallback: bool = True

    def __post_init__(self):
        if (self.num_exits is None) != (self.num_classes is None):
            raise ValueError("give both num_exits and num_classes (to build the networks now) or neither")
        _check_number(self.num_exits, "num_exits", integer=True, allow_none=True)
        _check_number(self.num_classes, "num_classes", integer=True, allow_none=True)
        if self.num_exits is not None and self.num_exits < 2:
            raise ValueError(f"num_exits must be >= 2, got {self.num_exits}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        self.rho = float(_check_number(self.rho, "rho", positive=True))
        self.beta = float(_check_number(self.beta, "beta", positive=True))
        self.alpha_kl = float(_check_number(self.alpha_kl, "alpha_kl", nonneg=True))
        self.alpha_cost = float(_check_number(self.alpha_cost, "alpha_cost", nonneg=True))
        _check_number(self.period, "period", positive=True, integer=True)
        self.lr = float(_check_number(self.lr, "lr", positive=True))
        self.weight_decay = float(_check_number(self.weight_decay, "weight_decay", nonneg=True))
        _check_number(self.batch_size, "batch_size", positive=True, integer=True, allow_none=True)
        _check_number(self.max_epochs, "max_epochs", positive=True, integer=True)
        _check_number(self.patience, "patience", positive=True, integer=True)
        _check_number(self.restarts, "restarts", nonneg=True, integer=True)
        self.budget_tolerance = float(_check_number(self.budget_tolerance, "budget_tolerance", positive=True))
        for name in ("match_budget", "fallback"):
            check_bool(getattr(self, name), name)
        if self.features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got {self.features!r}")
        if self.shares not in SHARE_PLANS:
            raise ValueError(f"shares must be one of {list(SHARE_PLANS)}, got {self.shares!r}")
        self.selection_fraction = float(
            _check_number(self.selection_fraction, "selection_fraction", nonneg=True, upper=0.9)
        )
        _check_number(self.selection_folds, "selection_folds", nonneg=True, integer=True, allow_none=True)
        self.selection_margin = float(_check_number(self.selection_margin, "selection_margin", nonneg=True))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, config: dict) -> "EENetSchedulerConfig":
        """Build from a JSON dict. A dict without ``features`` was written before the agreement features existed:
        it describes a ``features="legacy"`` scheduler ([p, max p, conf] features, the shapes of ``"base"``)."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(cls.keys()))
        if unknown:
            raise ValueError(f"unknown EENetScheduler config keys {unknown}; expected a subset of {list(cls.keys())}")
        config = dict(config)
        config.setdefault("features", "legacy")
        return cls(**config)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SchedulerFitArguments:
    """The scheduler options of the command-line entry points (recipe and ``hf-eenet fit-scheduler``), declared once;
    unset ones keep :class:`EENetSchedulerConfig`'s defaults."""

    scheduler_max_epochs: int | None = field(default=None, metadata={
        "help": "epoch cap of each scheduler fit (default: EENetScheduler's)"})
    scheduler_restarts: int | None = field(default=None, metadata={
        "help": "random restarts of each scheduler fit (default: EENetScheduler's)"})
    scheduler_selection_folds: int | None = field(default=None, metadata={
        "help": "k of the scheduler's k-fold cross-selection (default: 5 below 4,000 validation rows, else one "
                "30%% hold-out; 0 = one hold-out, faster)"})

    def scheduler_kwargs(self) -> dict:
        """The ``EENetScheduler`` keyword arguments these flags set."""
        kw = {"max_epochs": self.scheduler_max_epochs, "restarts": self.scheduler_restarts,
              "selection_folds": self.scheduler_selection_folds}
        return {k: v for k, v in kw.items() if v is not None}


__all__ = ["EENetSchedulerConfig", "SchedulerFitArguments", "FEATURE_SETS", "SHARE_PLANS"]
