"""EENet scheduler: learn *when* each sample leaves a multi-exit model under an average-cost budget.

Ilhan et al., "EENet: Learning to Early Exit for Adaptive Inference" (arXiv 2301.07099) / WACV 2024; the method as
written down in ``docs/eenet_method.md`` §3–§7. Fitted offline on the all-exits softmax outputs of a validation set,
then used online, exit by exit, through the :class:`~hf_eenet.policies.ExitPolicy` interface.

The method
----------
Notation: K exits, C classes, N fitting samples, ``p_{n,k}`` = softmax of exit k, ``c_k`` = cumulative cost up to
exit k (any unit), ``B`` = target *average* cost per sample, ``c_1 <= B <= c_K``.

§3  Features of sample n at exit k (only exit k's own probabilities enter)::

        x_{n,k} = [ p_{n,k} (C), max_c p_{n,k}, conf_{n,k}, q_{n,1..k-1} (detached) ]      length d_k = C + 2 + k - 1
        conf = 1 + sum_c p log p / log C

§4  One small module per exit:
      utility   q^_{n,k} = w_k^T x_{n,k}   (linear, no bias),   q = clamp(q^, 0, 1)  "P(exit k is right)"
      assignment r_{n,k} = MLP_k(x_{n,k}), one hidden layer of floor(rho * d_k) sigmoid units, unbounded output,
                 pi_{n,.} = softmax_k(r_{n,.})                                 the sample's distribution over exits

§5  Losses on a mini-batch (A_{n,k} = 1 if exit k's argmax is the label):
      L_bce  = (1/K) sum_k sum_n w_{n,k} BCE(q_{n,k}, A_{n,k}),   w_{n,k} = pi_{n,k} / sum_m pi_{m,k}  (pi detached)
      L_kl   = mean_n KL(t_n || pi_n),   t_{n,k} = q_{n,k}^beta / sum_j q_{n,j}^beta                     (q detached)
      L_cost = | mean_n sum_k pi_{n,k} c_k - B | / B                                                    (two-sided)
    Phases alternate every ``period`` epochs: q-phase minimises L_bce (utility heads only), r-phase minimises
    alpha_kl L_kl + alpha_cost L_cost (assignment heads only). Patience is counted only on epochs whose planned
    cost is within ``budget_tolerance`` (10 %) of B; the best such epoch (lowest L_bce + alpha_kl L_kl +
    alpha_cost L_cost) is kept. ``restarts`` runs from seed-derived initialisations; the run kept is the one with
    the best accuracy among runs within 10 % of B. Restart selection uses **the fitting data itself** (no internal
    split: the nets are tiny and the validation sets they are fitted on are small, e.g. SST-2 dev = 872 rows).

§6  Thresholds: with pi_bar_k = mean_n pi_{n,k}, planned counts n_k, then for k = 1..K-1 in order t_k = the n_k-th
    largest score among the rows not yet assigned (``sequential_quantile_thresholds``); t_K = -inf.

§7  Inference: a sample exits at the first k with q_k >= t_k (see deviation 5 for ties) and predicts argmax p_k.
    Exit k needs only exits <= k, so :meth:`EENetScheduler.decide` runs online, layer by layer, with the earlier
    clamped scores carried in the per-row ``state["q"]``.

Deliberate deviations from the authors' code (github.com/git-disl/EENet a5e80c8)
-------------------------------------------------------------------------------
1. Unbounded assignment logits (no final sigmoid): upstream's sigmoid squeezes pi into a band (K=4: [0.11, 0.48]),
   so budgets near c_1 or c_K are unreachable.
2. ``zero_grad`` every step: upstream never zeroes, so gradients accumulate across all steps.
3. The best state is deep-copied: upstream keeps a reference to the live model, i.e. returns the last state.
4. Clamped q is used everywhere (training loss, KL teacher, features of later exits, at fit and at test time);
   upstream trains on clamped scores but feeds unclamped ones at test time.
5. Ties at the clamp bounds: clamping makes q = 0 or q = 1 common, and a threshold sitting on such a tie cannot
   split it, so budgets could not be met. The comparison q_k >= t_k breaks ties by the raw score q^_k, which is the
   same as comparing q^_k >= t_k; thresholds are therefore stored on the raw-score scale.
6. The KL teacher t is built from detached q, so L_kl trains only the assignment heads (upstream detaches too;
   listed because the paper leaves it open, and a live teacher would let L_kl pull q towards pi).
7. t_K = -inf (upstream uses 0, which can leave a sample with nowhere to exit); and t_k = -inf whenever the plan
   sends *every* remaining row to exit k (so budget = c_1 sends all rows, even unseen ones, to exit 1).
8. Thresholds sit halfway between the n_k-th and the next lower fitting score (same split of the fitting data);
   scores are computed in float64. Batched and per-row evaluation then agree despite round-off.
9. Budget matching (after §6's pi_bar): the paper's shares only approximately meet B. We keep the learned share
   shape and tilt it, pi_k(lam) ~ pi_bar_k exp(-lam c_k / c_K), bisecting lam so the planned cost equals B, then
   round cumulative counts (planned cost on the fitting data = B up to half a row's cost). ``match_budget=False``
   gives the paper's plain pi_bar.
10. Optimiser: AdamW (decoupled weight decay) instead of Adam with L2: the r-phase loss is scaled by alpha 1e-3 /
    1e-2, so a coupled L2 term would dominate its gradient and shrink the assignment nets to uniform pi. Each phase
    steps only its own heads (upstream steps, and decays, all parameters in both phases).
11. L_kl is the per-sample KL averaged over samples (upstream's ``nn.KLDivLoss()`` also divides by K).
12. The utility heads start near q^ = 0.5 (w = 0.5 on the p part, since sum_c p = 1, plus small seeded noise):
    from the default init many rows start with q^ < 0 or > 1, where the clamp has zero gradient. The BCE input is
    clipped to [1e-6, 1 - 1e-6] (numerically safe BCE, same zero gradient outside [0, 1]).
13. Hyper-parameters (tuned on synthetic data only; paper values in comments at ``__init__``): lr 1e-2 (paper 3e-5,
    which barely moves the nets), mini-batches of ceil(N / 8) rows capped at 1024 (paper 512: a fixed size gives
    small validation sets, e.g. 872 rows, only 2 steps per epoch), at most 100 epochs (paper 1000) with patience
    20 = one q- plus one r-phase (paper 100), 3 restarts (paper 10; on synthetic data the spread between restarts
    was ~0.1 accuracy points, while 100 instead of 40 epochs gained ~1 point). A fit on N = 10,000, K = 6, C = 4
    takes ~10 s on 2 CPU cores (``benchmarks/bench_scheduler_fit.py``). rho, beta, alpha_kl, alpha_cost, period,
    weight decay and the 10 % budget tolerance are the paper's.
Numerics: training runs in float32; scores for thresholds and decisions are computed in float64.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from .policies import ExitPolicy, _as_probs_tensor, entropy_confidence, sequential_quantile_thresholds

WEIGHTS_NAME = "eenet_scheduler.safetensors"
CONFIG_NAME = "eenet_scheduler.json"

_BCE_EPS = 1e-6
_CONFIG_KEYS = (
    "num_exits", "num_classes", "rho", "beta", "alpha_kl", "alpha_cost", "period", "lr", "weight_decay",
    "batch_size", "max_epochs", "patience", "restarts", "budget_tolerance", "match_budget",
)


def _check_number(value, name, *, positive=False, nonneg=False, integer=False, allow_none=False):
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
    return value


def _static_features(p: torch.Tensor) -> torch.Tensor:
    """§3 the part of x_{n,k} that does not depend on the scheduler: [p, max_c p, conf]; p [..., C] -> [..., C+2]."""
    return torch.cat([p, p.max(-1, keepdim=True).values, entropy_confidence(p).unsqueeze(-1)], -1)


def _exit_features(p: torch.Tensor, q_prev: torch.Tensor) -> torch.Tensor:
    """§3 x_{n,k} = [p_{n,k}, max p_{n,k}, conf_{n,k}, q_{n,<k}] for one exit; p [b, C], q_prev [b, k]."""
    return torch.cat([_static_features(p), q_prev], -1)


class EENetScheduler(ExitPolicy, nn.Module):
    """EENet exit scheduler: per-exit utility scores q and thresholds t fitted to meet an average-cost budget.

    Args:
        num_exits, num_classes: build the networks now (e.g. to ``load_state_dict`` into them); otherwise they are
            built by :meth:`fit` from the data shapes.
        rho: hidden width factor of the assignment MLPs, hidden = floor(rho * d_k) (§4).
        beta: exponent of the KL teacher t = q^beta / sum q^beta (§5).
        alpha_kl, alpha_cost: weights of L_kl and L_cost in the r-phase (§5).
        period: epochs per phase; q-phase and r-phase alternate (§5).
        lr, weight_decay: AdamW learning rate and decoupled weight decay.
        batch_size: mini-batch rows (``None`` = auto: ceil(N / 8) capped at 1024, i.e. >= 8 steps per epoch).
        max_epochs, patience: epoch cap, and patience in epochs counted once the planned cost is within
            ``budget_tolerance`` of the budget.
        restarts: random restarts (seeded from ``fit(seed=...)``); the best by fitting-data accuracy is kept.
        budget_tolerance: relative cost gap under which an epoch / restart counts as meeting the budget (paper 0.1).
        match_budget: rescale the learned exit shares so the planned cost equals the budget (deviation 9).

    After :meth:`fit`: ``thresholds`` (K floats, raw-score scale, last = -inf), ``costs``, ``budget``,
    ``planned_cost`` and ``fit_info``. Everything decisions need is in ``state_dict()``.
    """

    def __init__(
        self,
        num_exits: int | None = None,
        num_classes: int | None = None,
        *,
        rho: float = 2.0,  # paper (NLP)
        beta: float = 1.0,  # paper
        alpha_kl: float = 1e-3,  # paper
        alpha_cost: float = 1e-2,  # paper
        period: int = 10,  # paper
        lr: float = 1e-2,  # paper 3e-5 (Adam): the nets barely move from their init
        weight_decay: float = 1e-2,  # paper (coupled L2 there, decoupled AdamW here)
        batch_size: int | None = None,  # paper 512; None = auto, ceil(N / 8) capped at 1024
        max_epochs: int = 100,  # paper 1000
        patience: int = 20,  # paper 100
        restarts: int = 3,  # paper 10
        budget_tolerance: float = 0.1,  # paper
        match_budget: bool = True,  # deviation 9; False = paper's plain mean-pi shares
    ):
        nn.Module.__init__(self)
        if (num_exits is None) != (num_classes is None):
            raise ValueError("give both num_exits and num_classes (to build the networks now) or neither")
        _check_number(num_exits, "num_exits", integer=True, allow_none=True)
        _check_number(num_classes, "num_classes", integer=True, allow_none=True)
        if num_exits is not None and num_exits < 2:
            raise ValueError(f"num_exits must be >= 2, got {num_exits}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.rho = float(_check_number(rho, "rho", positive=True))
        self.beta = float(_check_number(beta, "beta", positive=True))
        self.alpha_kl = float(_check_number(alpha_kl, "alpha_kl", nonneg=True))
        self.alpha_cost = float(_check_number(alpha_cost, "alpha_cost", nonneg=True))
        self.period = _check_number(period, "period", positive=True, integer=True)
        self.lr = float(_check_number(lr, "lr", positive=True))
        self.weight_decay = float(_check_number(weight_decay, "weight_decay", nonneg=True))
        self.batch_size = _check_number(batch_size, "batch_size", positive=True, integer=True, allow_none=True)
        self.max_epochs = _check_number(max_epochs, "max_epochs", positive=True, integer=True)
        self.patience = _check_number(patience, "patience", positive=True, integer=True)
        self.restarts = _check_number(restarts, "restarts", positive=True, integer=True)
        self.budget_tolerance = float(_check_number(budget_tolerance, "budget_tolerance", positive=True))
        if not isinstance(match_budget, bool):
            raise TypeError(f"match_budget must be a bool, got {match_budget!r}")
        self.match_budget = match_budget
        self.num_exits = None
        self.num_classes = None
        self.fit_info: dict = {}
        if num_exits is not None:
            self._build(num_exits, num_classes)

    # ------------------------------------------------------------------ construction / persistence
    def _build(self, num_exits: int, num_classes: int) -> None:
        """Create the per-exit heads (zero weights; :meth:`fit` initialises them) and the decision buffers."""
        self.num_exits, self.num_classes = int(num_exits), int(num_classes)
        dims = [self.num_classes + 2 + k for k in range(self.num_exits)]  # §3 d_k = C + 2 + (k-1), 0-based k here
        if any(int(math.floor(self.rho * d)) < 1 for d in dims):
            raise ValueError(f"rho={self.rho} gives an empty hidden layer; use rho >= 1/{dims[0]}")
        meta = dict(device="meta", dtype=torch.float32)  # no global-RNG draw from nn.Linear's default init
        # §4 utility q^_k = w_k^T x_k (no bias)
        self.utility = nn.ModuleList(nn.Linear(d, 1, bias=False, **meta) for d in dims)
        # §4 assignment r_k = MLP_k(x_k): floor(rho d_k) sigmoid units, unbounded output (deviation 1)
        self.assign = nn.ModuleList(
            nn.Sequential(nn.Linear(d, int(math.floor(self.rho * d)), **meta), nn.Sigmoid(),
                          nn.Linear(int(math.floor(self.rho * d)), 1, **meta))
            for d in dims
        )
        self.utility.to_empty(device="cpu")
        self.assign.to_empty(device="cpu")
        with torch.no_grad():
            for prm in self.parameters():
                prm.zero_()
        f64 = dict(dtype=torch.float64)
        self.register_buffer("exit_thresholds", torch.full((self.num_exits,), math.inf, **f64))  # §6, raw q^ scale
        self.register_buffer("exit_costs", torch.zeros(self.num_exits, **f64))
        self.register_buffer("budget_value", torch.tensor(math.nan, **f64))
        self.register_buffer("planned_cost_value", torch.tensor(math.nan, **f64))
        self.register_buffer("fitted", torch.tensor(False))

    def get_config(self) -> dict:
        """JSON-serialisable constructor kwargs (``from_config(get_config())`` rebuilds an equivalent module)."""
        return {key: getattr(self, key) for key in _CONFIG_KEYS}

    @classmethod
    def from_config(cls, config: dict) -> "EENetScheduler":
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown EENetScheduler config keys {unknown}; expected a subset of {list(_CONFIG_KEYS)}")
        return cls(**config)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; an unbuilt scheduler is first built from the tensors' shapes."""
        if self.num_exits is None and "exit_thresholds" in state_dict and "utility.0.weight" in state_dict:
            num_exits = int(state_dict["exit_thresholds"].shape[0])
            self._build(num_exits, int(state_dict["utility.0.weight"].shape[1]) - 2)
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    def save_pretrained(self, save_directory) -> None:
        """Write ``eenet_scheduler.safetensors`` (state_dict; fit_info as metadata) and ``eenet_scheduler.json``."""
        import json
        import os

        from safetensors.torch import save_file

        if self.num_exits is None:
            raise RuntimeError(
                "EENetScheduler has no networks yet: build it with num_exits/num_classes or call .fit(...)"
            )
        os.makedirs(save_directory, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME),
                  metadata={"format": "pt", "fit_info": json.dumps(self.fit_info)})
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(self.get_config(), fh, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory) -> "EENetScheduler":
        """Load what :meth:`save_pretrained` wrote (safetensors + JSON only; never pickle)."""
        import json
        import os

        from safetensors import safe_open

        config_path = os.path.join(directory, CONFIG_NAME)
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"EENet scheduler file not found: {path}")
        try:
            with open(config_path, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"could not read the EENet scheduler config {config_path}: {err}") from err
        try:
            sched = cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid EENet scheduler config in {config_path}: {err}") from err
        try:
            with safe_open(weights_path, framework="pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                metadata = fh.metadata() or {}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"could not read the EENet scheduler weights {weights_path}: {err}") from err
        try:
            sched.load_state_dict(tensors)
        except RuntimeError as err:
            raise ValueError(f"EENet scheduler weights {weights_path} do not match {config_path}: {err}") from err
        try:
            sched.fit_info = json.loads(metadata.get("fit_info", "{}"))
        except json.JSONDecodeError:
            sched.fit_info = {}
        return sched

    # ------------------------------------------------------------------ fitted state as plain Python values
    @property
    def is_fitted(self) -> bool:
        return self.num_exits is not None and bool(self.fitted.item())

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                "EENetScheduler is not fitted: call .fit(exit_probs, labels, costs, budget) first "
                "(or load a fitted one with from_pretrained / load_state_dict)"
            )

    @property
    def thresholds(self) -> list[float]:
        """K thresholds on the raw utility scale (q^_k >= t_k exits; see deviation 5); the last is -inf."""
        self._check_fitted()
        return [float(t) for t in self.exit_thresholds.tolist()]

    @property
    def costs(self) -> list[float]:
        self._check_fitted()
        return [float(c) for c in self.exit_costs.tolist()]

    @property
    def budget(self) -> float:
        self._check_fitted()
        return float(self.budget_value.item())

    @property
    def planned_cost(self) -> float:
        """Average cost per sample of the fitted thresholds on the fitting data (= budget up to half a row's cost,
        unless tied scores, e.g. duplicate rows, cannot be split; ``fit`` warns then)."""
        self._check_fitted()
        return float(self.planned_cost_value.item())

    # ------------------------------------------------------------------ §3-§4 forward
    def _utility_raw(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """§4 q^_{n,k} = w_k^T x_{n,k} (unclamped), in x's dtype/device."""
        w = self.utility[k].weight.to(dtype=x.dtype, device=x.device)[0]
        return (x * w).sum(-1)

    def _assign_logit(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """§4 r_{n,k} = MLP_k(x_{n,k}) (unbounded, deviation 1)."""
        lin1, _, lin2 = self.assign[k]
        cast = dict(dtype=x.dtype, device=x.device)
        h = torch.sigmoid(F.linear(x, lin1.weight.to(**cast), lin1.bias.to(**cast)))
        return F.linear(h, lin2.weight.to(**cast), lin2.bias.to(**cast)).squeeze(-1)

    def _forward(self, static: torch.Tensor, rows=None, *, with_assign=True, q_grad=False, r_grad=False):
        """All exits at once from ``static`` = ``_static_features(probs)`` laid out exit-major ``[K, N, C+2]``
        (``rows``: an optional mini-batch of row indices) -> (q^ raw, q clamped, r or None), each ``[n, K]``."""
        k_total = static.shape[0]
        n = static.shape[1] if rows is None else rows.shape[0]
        q_hat, q, r = [], [], []
        for k in range(k_total):
            q_prev = torch.stack(q, -1).detach() if k else static.new_zeros(n, 0)  # §3 earlier scores, detached
            # §3 x_{n,k} (same as _exit_features); per-exit gathers keep every tensor small (no intra-op threads)
            x = torch.cat([static[k] if rows is None else static[k][rows], q_prev], -1)
            with torch.set_grad_enabled(q_grad):
                q_hat.append(self._utility_raw(k, x))
                q.append(q_hat[-1].clamp(0.0, 1.0))  # §4 q = clamp(q^, 0, 1), used everywhere (deviation 4)
            if with_assign:
                with torch.set_grad_enabled(r_grad):
                    r.append(self._assign_logit(k, x))
        return torch.stack(q_hat, -1), torch.stack(q, -1), (torch.stack(r, -1) if with_assign else None)

    @torch.no_grad()
    def _scores64(self, probs: torch.Tensor, with_assign=False):
        static = _static_features(probs.detach().to(torch.float64)).transpose(0, 1).contiguous()
        return self._forward(static, with_assign=with_assign)

    # ------------------------------------------------------------------ ExitPolicy interface (§7)
    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per-row state: ``{"q": [b, K]}`` clamped utility scores of the exits passed so far (float64)."""
        self._check_fitted()
        return {"q": torch.zeros(int(batch_size), self.num_exits, dtype=torch.float64, device=device)}

    @torch.no_grad()
    def decide(self, exit_idx: int, probs: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """§7 rows of exit ``exit_idx`` (0-based) that stop: q^_k >= t_k. Stores clamped q_k in ``state["q"]``."""
        self._check_fitted()
        if isinstance(exit_idx, bool) or not isinstance(exit_idx, int) or not 0 <= exit_idx < self.num_exits:
            raise ValueError(f"exit_idx must be an int in [0, {self.num_exits - 1}], got {exit_idx!r}")
        if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[1] != self.num_classes:
            shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise ValueError(f"probs must be a [b, {self.num_classes}] tensor of softmax outputs, got {shape}")
        if "q" not in state or state["q"].shape != (probs.shape[0], self.num_exits):
            raise ValueError(f"state['q'] must have shape [{probs.shape[0]}, {self.num_exits}]: use init_state()")
        q_state = state["q"]
        x = _exit_features(probs.to(torch.float64), q_state[:, :exit_idx].to(device=probs.device, dtype=torch.float64))
        q_hat = self._utility_raw(exit_idx, x)
        q_new = q_state.clone()
        q_new[:, exit_idx] = q_hat.clamp(0.0, 1.0).to(device=q_new.device, dtype=q_new.dtype)
        state["q"] = q_new
        return q_hat >= self.exit_thresholds[exit_idx].to(q_hat.device)

    def exit_index(self, exit_probs) -> torch.Tensor:
        """Offline decisions on all-exits outputs ``[N, K, C]`` -> ``[N]`` 0-based exits (same ``decide`` calls)."""
        self._check_fitted()
        return super().exit_index(exit_probs)

    def utility_scores(self, exit_probs, *, raw: bool = False) -> torch.Tensor:
        """``[N, K]`` clamped utility scores q (``raw=True``: unclamped q^, the scale of ``thresholds``)."""
        self._check_fitted()
        probs = self._check_probs(exit_probs)
        q_hat, q, _ = self._scores64(probs)
        return q_hat if raw else q

    def assignment(self, exit_probs) -> torch.Tensor:
        """``[N, K]`` learned exit distribution pi = softmax_k(r) (§4)."""
        self._check_fitted()
        probs = self._check_probs(exit_probs)
        return torch.softmax(self._scores64(probs, with_assign=True)[2], -1)

    def _check_probs(self, exit_probs) -> torch.Tensor:
        probs = _as_probs_tensor(exit_probs)
        self.check_num_exits(probs.shape[1])
        if self.num_classes is not None and probs.shape[2] != self.num_classes:
            raise ValueError(
                f"exit_probs has {probs.shape[2]} classes but the scheduler was built for {self.num_classes}"
            )
        return probs

    # ------------------------------------------------------------------ §5 losses
    def _losses(self, q: torch.Tensor, r: torch.Tensor, correct: torch.Tensor, c: torch.Tensor, budget: float):
        k_total = q.shape[1]
        log_pi = torch.log_softmax(r, -1)
        pi = log_pi.exp()
        # §5 L_bce: BCE of q against A, weights w = pi / sum_batch pi per exit (pi detached)
        w = pi.detach()
        w = w / w.sum(0, keepdim=True)
        bce = F.binary_cross_entropy(q.clamp(_BCE_EPS, 1 - _BCE_EPS), correct, reduction="none")
        l_bce = (w * bce).sum() / k_total
        # §5 L_kl = KL(t || pi), teacher t = q^beta / sum_j q^beta from detached q
        tq = q.detach().pow(self.beta)
        t = tq / tq.sum(-1, keepdim=True).clamp_min(1e-12)
        l_kl = (torch.xlogy(t, t) - t * log_pi).sum(-1).mean()
        # §5 L_cost = |E[cost] - B| / B, two-sided
        planned = (pi * c).sum(-1).mean()
        l_cost = (planned - budget).abs() / budget
        return l_bce, l_kl, l_cost, planned

    # ------------------------------------------------------------------ fitting
    def fit(self, exit_probs, labels, costs, budget, seed: int = 0) -> "EENetScheduler":
        """Fit utility/assignment nets and thresholds on all-exits outputs of a validation set.

        Args:
            exit_probs: ``[N, K, C]`` softmax outputs of every exit.
            labels: ``[N]`` integer labels in ``[0, C)``.
            costs: ``[K]`` cumulative cost up to each exit (strictly increasing, > 0, any unit).
            budget: target average cost per sample, same unit, ``costs[0] <= budget <= costs[-1]``.
            seed: seeds initialisation and shuffling (local generators; global RNG untouched).
        Returns:
            ``self``. Fitting runs on CPU (tiny nets); a module that lives on another device is moved back after.
        """
        import time

        start_time = time.perf_counter()
        probs, correct, c, budget = self._validate_fit_inputs(exit_probs, labels, costs, budget, seed)
        n, k_total, n_classes = probs.shape
        if self.num_exits is None:
            self._build(k_total, n_classes)
        device = self.exit_thresholds.device
        self.cpu()
        try:
            self._fit(probs, correct, c, budget, seed, start_time)
        finally:
            self.to(device)
        return self

    def _fit(self, probs, correct, c, budget, seed, start_time):
        import time

        n = probs.shape[0]
        with torch.no_grad():
            self.fitted.fill_(False)  # a fit that fails half-way leaves an unfitted scheduler, not a mixed one
        # costs and budget are used relative to c_K (the cost loss and the tilt are scale-free)
        c_rel = c / c[-1]
        b_rel = budget / float(c[-1])
        c32 = c_rel.float()
        static32 = _static_features(probs).transpose(0, 1).contiguous()  # §3 [K, N, C+2], once; q_{<k} per step

        runs = []
        best = None  # (selection key, restart, state_dict copy, thresholds, planned counts, exits on fitting data)
        for restart in range(self.restarts):
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + restart) % (2**63))
            self._init_parameters(gen)
            epochs, best_epoch = self._train(static32, correct, c32, b_rel, gen)
            # evaluate the kept state on the fitting data (restart selection uses the fitting data itself)
            q_hat, _, r = self._scores64(probs, with_assign=True)
            log_pi_bar = torch.logsumexp(torch.log_softmax(r, -1), 0) - math.log(n)  # §6 log mean_n pi_{n,k}
            raw_planned = float((log_pi_bar.exp() * c_rel).sum())
            counts = self._plan_counts(log_pi_bar, c_rel, b_rel, n)
            thresholds = self._thresholds(q_hat, counts)
            exits = self._first_exit(q_hat, thresholds)
            acc = float(correct[torch.arange(n), exits].mean())
            gap = abs(raw_planned - b_rel) / b_rel
            within = gap < self.budget_tolerance
            runs.append({"restart": restart, "epochs": epochs, "best_epoch": best_epoch, "accuracy": acc,
                         "raw_planned_cost": raw_planned * float(c[-1]), "within_tolerance": within})
            key = (within, acc if within else -gap)  # best accuracy among runs within 10 % of B, else closest
            if best is None or key > best[0]:
                best = (key, restart, copy.deepcopy(self.state_dict()), thresholds, counts, exits)
        _, chosen, state, thresholds, counts, exits = best
        nn.Module.load_state_dict(self, state)

        planned = float((counts.double() * c).sum() / n)
        realized = float(c[exits].mean())
        if abs(realized - budget) > max(0.01 * budget, float(c[-1]) / n):
            import warnings

            warnings.warn(
                f"EENetScheduler: the thresholds give an average cost of {realized:.6g} on the fitting data instead "
                f"of the budget {budget:.6g}: tied utility scores (e.g. duplicate rows) cannot be split by thresholds",
                RuntimeWarning, stacklevel=3,
            )
        with torch.no_grad():
            self.exit_thresholds.copy_(torch.tensor(thresholds, dtype=torch.float64))
            self.exit_costs.copy_(c)
            self.budget_value.fill_(budget)
            self.planned_cost_value.fill_(realized)
            self.fitted.fill_(True)
        self.fit_info = {
            "seconds": time.perf_counter() - start_time,
            "restarts": len(runs),
            "chosen_restart": chosen,
            "epochs": runs[chosen]["epochs"],
            "val_accuracy": runs[chosen]["accuracy"],
            "val_source": "fitting data (no internal split)",
            "within_tolerance": runs[chosen]["within_tolerance"],
            "budget": budget,
            "raw_planned_cost": runs[chosen]["raw_planned_cost"],
            "planned_cost": planned,  # from the planned counts
            "realized_cost_fit": realized,  # what the thresholds give on the fitting data (differs only on ties)
            "exit_shares": (counts.double() / n).tolist(),
            "runs": runs,
            "seed": int(seed),
            "num_samples": n,
        }

    def _validate_fit_inputs(self, exit_probs, labels, costs, budget, seed):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        probs = _as_probs_tensor(exit_probs).cpu()
        n, k_total, n_classes = probs.shape
        if k_total < 2:
            raise ValueError(f"EENet needs at least 2 exits, exit_probs has K = {k_total}")
        if n_classes < 2:
            raise ValueError(f"EENet needs at least 2 classes, exit_probs has C = {n_classes}")
        if self.num_exits is not None and (k_total != self.num_exits or n_classes != self.num_classes):
            raise ValueError(
                f"exit_probs has K = {k_total} exits and C = {n_classes} classes but the scheduler was built for "
                f"num_exits = {self.num_exits}, num_classes = {self.num_classes}"
            )
        # labels
        if not isinstance(labels, torch.Tensor):
            try:
                labels = torch.as_tensor(labels)
            except Exception as err:  # noqa: BLE001
                raise TypeError(
                    f"labels must be a tensor or array of integer class ids, got {type(labels).__name__}"
                ) from err
        labels = labels.detach().cpu()
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must have shape [N] = [{n}], got {tuple(labels.shape)}")
        if labels.dtype == torch.bool or torch.is_floating_point(labels) or torch.is_complex(labels):
            raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
        labels = labels.long()
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"labels must be in [0, {n_classes - 1}] (C = {n_classes}), found {lo if lo < 0 else hi}")
        if lo == hi:
            raise ValueError(
                f"labels contain a single class ({lo}): the scheduler needs right and wrong exits to learn from"
            )
        # costs
        if isinstance(costs, (str, bytes)) or not hasattr(costs, "__len__"):
            raise TypeError(
                f"costs must be a sequence of {k_total} cumulative per-exit costs, got {type(costs).__name__}"
            )
        if len(costs) != k_total:
            raise ValueError(f"costs has {len(costs)} entries but exit_probs has K = {k_total} exits")
        vals = []
        for i, v in enumerate(costs.tolist() if isinstance(costs, torch.Tensor) else costs):
            try:
                if isinstance(v, (bool, str, bytes)):
                    raise TypeError
                v = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"costs[{i}] must be a number, got {v!r}") from None
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"costs must be positive and finite, costs[{i}] = {v}")
            vals.append(v)
        if any(b <= a for a, b in zip(vals, vals[1:])):
            raise ValueError(f"costs must be strictly increasing (cumulative cost up to each exit), got {vals}")
        c = torch.tensor(vals, dtype=torch.float64)
        # budget
        if isinstance(budget, torch.Tensor) and budget.numel() == 1 and not torch.is_complex(budget):
            budget = budget.item()
        if isinstance(budget, bool) or not (isinstance(budget, (int, float)) or
                                            (hasattr(budget, "__float__") and not isinstance(budget, (str, bytes)))):
            raise TypeError(f"budget must be a number (average cost per sample, unit of costs), got {budget!r}")
        budget = float(budget)
        if math.isnan(budget):
            raise ValueError("budget is NaN")
        if budget <= 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        lo_c, hi_c = vals[0], vals[-1]
        slack = 1e-9 * hi_c  # round-off such as 0.2 * c_K computed elsewhere
        if budget < lo_c - slack or budget > hi_c + slack:
            raise ValueError(f"budget {budget} is outside the reachable range [c_1, c_K] = [{lo_c}, {hi_c}]")
        budget = min(max(budget, lo_c), hi_c)
        correct = (probs.argmax(-1) == labels.unsqueeze(1)).float()  # §3 A_{n,k}
        return probs, correct, c, budget

    def _init_parameters(self, gen: torch.Generator) -> None:
        """Seeded init: utility near q^ = 0.5 (deviation 12), assignment MLPs like nn.Linear's default."""
        c_dim = self.num_classes
        with torch.no_grad():
            for lin in self.utility:
                d = lin.weight.shape[1]
                lin.weight.uniform_(-0.1 / math.sqrt(d), 0.1 / math.sqrt(d), generator=gen)
                lin.weight[0, :c_dim] += 0.5  # sum_c p = 1, so the p part contributes 0.5
            for mlp in self.assign:
                for lin in (mlp[0], mlp[2]):
                    bound = 1.0 / math.sqrt(lin.weight.shape[1])
                    lin.weight.uniform_(-bound, bound, generator=gen)
                    lin.bias.uniform_(-bound, bound, generator=gen)

    def _train(self, static, correct, c32, b_rel, gen):
        """§5 alternating q-/r-phases with AdamW; keeps the best epoch within tolerance. Returns (epochs, best)."""
        n = static.shape[1]
        batch = self._batch_rows(n)
        util_params = list(self.utility.parameters())
        assign_params = list(self.assign.parameters())
        # deviation 10: decoupled weight decay; params without a gradient (the other phase's heads) are skipped
        opt = torch.optim.AdamW(util_params + assign_params, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
        best_loss, best_state, best_epoch = math.inf, None, -1
        wait = self.patience
        epoch = 0
        for epoch in range(self.max_epochs):
            q_phase = (epoch // self.period) % 2 == 0  # §5 alternate phases every `period` epochs, q-phase first
            order = torch.randperm(n, generator=gen) if batch < n else None
            sums = torch.zeros(4, dtype=torch.float64)
            for start in range(0, n, batch):
                idx = order[start:start + batch] if order is not None else None
                _, q, r = self._forward(static, idx, q_grad=q_phase, r_grad=not q_phase)
                l_bce, l_kl, l_cost, planned = self._losses(q, r, correct if idx is None else correct[idx], c32, b_rel)
                loss = l_bce if q_phase else self.alpha_kl * l_kl + self.alpha_cost * l_cost
                opt.zero_grad(set_to_none=True)  # deviation 2
                loss.backward()
                opt.step()
                rows = q.shape[0]
                sums += torch.stack([l_bce.detach(), l_kl.detach(), l_cost.detach(), planned.detach()]).double() * rows
            l_bce, l_kl, l_cost, planned = (sums / n).tolist()
            if abs(planned - b_rel) / b_rel < self.budget_tolerance:  # patience only counts within 10 % of B
                total = l_bce + self.alpha_kl * l_kl + self.alpha_cost * l_cost
                if total < best_loss:
                    best_loss, best_epoch, wait = total, epoch, self.patience
                    best_state = copy.deepcopy(self.state_dict())  # deviation 3
                else:
                    wait -= 1
                    if wait <= 0:
                        break
        if best_state is not None:
            nn.Module.load_state_dict(self, best_state)
        return epoch + 1, best_epoch

    def _batch_rows(self, n: int) -> int:
        """Mini-batch size: ``batch_size`` (capped at N), or auto = ceil(N / 8) capped at 1024 (>= 8 steps/epoch)."""
        if self.batch_size is not None:
            return min(self.batch_size, n)
        return max(1, min(1024, -(-n // 8)))

    # ------------------------------------------------------------------ §6 thresholds
    def _plan_counts(self, log_pi_bar, c_rel, b_rel, n):
        """Per-exit planned counts [K] (long). ``match_budget``: pi_bar tilted to meet B exactly, cumulative rounding
        (deviation 9); else §6 as written, n_k = floor(pi_bar_k N) for k < K, the rest to K. At B = c_1 or B = c_K
        the only plan that meets B is used in both modes."""
        k_total = c_rel.shape[0]
        if b_rel <= float(c_rel[0]):
            shares = torch.zeros(k_total, dtype=torch.float64)
            shares[0] = 1.0
        elif b_rel >= 1.0:
            shares = torch.zeros(k_total, dtype=torch.float64)
            shares[-1] = 1.0
        elif not self.match_budget:
            counts = torch.floor(log_pi_bar.exp() * n + 1e-9).long()
            counts[-1] = 0
            counts[-1] = n - int(counts.sum())
            return counts
        else:
            def tilted(lam):
                return torch.softmax(log_pi_bar - lam * c_rel, 0)

            def excess(lam):  # planned cost - B, decreasing in lam
                return float((tilted(lam) * c_rel).sum()) - b_rel

            lo, hi = -1.0, 1.0
            while excess(lo) < 0 and lo > -1e12:
                lo *= 2
            while excess(hi) > 0 and hi < 1e12:
                hi *= 2
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if excess(mid) > 0:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-12 * max(1.0, abs(mid)):
                    break
            shares = tilted(0.5 * (lo + hi))
        cumulative = torch.round(torch.cumsum(shares, 0) * n).long().clamp(0, n)
        cumulative[-1] = n
        return torch.diff(cumulative, prepend=cumulative.new_zeros(1))

    @staticmethod
    def _thresholds(q_hat: torch.Tensor, counts: torch.Tensor) -> list[float]:
        """§6 sequential quantile thresholds for the planned counts, on raw scores, with deviations 7 and 8."""
        n, k_total = q_hat.shape
        shares = (counts.double() + 0.5) / n  # floor(share * N) == count in sequential_quantile_thresholds
        thresholds = sequential_quantile_thresholds(q_hat, shares)
        remaining = torch.ones(n, dtype=torch.bool)
        for k in range(k_total - 1):
            rows = remaining.nonzero(as_tuple=True)[0]
            if rows.numel() == 0 or math.isinf(thresholds[k]):
                continue
            if int(counts[k]) >= rows.numel():  # the plan sends every remaining row here (deviation 7)
                thresholds[k] = -math.inf
                remaining[:] = False
                continue
            s = q_hat[rows, k]
            t = thresholds[k]
            below = s[s < t]
            if below.numel():  # deviation 8: halfway to the next lower fitting score
                mid = 0.5 * (t + float(below.max()))
                if float(below.max()) < mid < t:
                    thresholds[k] = mid
            remaining[rows[s >= t]] = False
        thresholds[-1] = -math.inf  # §6 t_K = -inf (deviation 7)
        return thresholds

    @staticmethod
    def _first_exit(q_hat: torch.Tensor, thresholds) -> torch.Tensor:
        """§7 offline: first k with q^_k >= t_k (vectorised, for fitting-data evaluation)."""
        t = torch.as_tensor(thresholds, dtype=q_hat.dtype)
        stop = q_hat >= t
        stop[:, -1] = True
        return stop.to(torch.int8).argmax(-1)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        state = "fitted" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}(num_exits={self.num_exits}, num_classes={self.num_classes}, {state})"
