"""EENet scheduler (docs/method.md): learn *when* each sample leaves a multi-exit model under an average-cost budget.

The scheduler is split over flat modules, in the order of the method (flat, not a package, because transformers'
remote-code export copies a model's relative imports as single files into the Hub repo, so a model saved with
``save_pretrained`` loads with ``trust_remote_code=True`` where hf_eenet is not installed):

* ``scheduler_config.py``    — :class:`EENetSchedulerConfig`, the typed constructor arguments (declared once).
* ``scheduler_features.py``  — §3 per-exit features incl. the agreement/voting terms, computable online row by row.
* ``scheduler_inference.py`` — §4 heads and §7 decisions: ``init_state``, ``decide`` (float32, vectorised, no host
  sync), ``exit_index``.
* ``scheduler_fit.py``       — §5 losses and training, §5.3 honest selection with max-prob / static fallbacks, §6
  thresholds.
* this module                — :class:`EENetScheduler`: construction, save/load, fitted state as Python values.

Equations cited as "eq. x.y" and deviations "Dn" are those of docs/method.md.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from .policies import ExitPolicy
from .scheduler_config import EENetSchedulerConfig, FEATURE_SETS
from .scheduler_features import feature_dim
from .scheduler_fit import _FitMixin
from .scheduler_inference import _InferenceMixin

WEIGHTS_NAME = "eenet_scheduler.safetensors"
CONFIG_NAME = "eenet_scheduler.json"


class EENetScheduler(_FitMixin, _InferenceMixin, ExitPolicy, nn.Module):
    """EENet exit scheduler: per-exit utility scores q and thresholds t fitted to meet an average-cost budget.

    Ilhan et al., "EENet: Learning to Early Exit for Adaptive Inference" (arXiv 2301.07099, WACV 2024), as described
    in docs/method.md. Fitted offline on the all-exits softmax outputs of a validation set (:meth:`fit`), used
    online, exit by exit, through the :class:`~hf_eenet.policies.ExitPolicy` interface (:meth:`init_state`,
    :meth:`decide`).

    Args: see :class:`~hf_eenet.scheduler_config.EENetSchedulerConfig` (the same keyword arguments).

    After :meth:`fit`: ``thresholds`` (K floats on the raw utility scale, last = -inf), ``costs``, ``budget``,
    ``planned_cost`` and ``fit_info``. Everything decisions need is in ``state_dict()``:
    ``utility.{k}.weight`` [1, d_k], ``assign.{k}.{0,2}.{weight,bias}``, ``exit_thresholds`` [K] float32,
    ``exit_costs`` [K] float64, ``budget_value``, ``planned_cost_value`` (float64 scalars), ``fitted`` (bool).
    """

    def __init__(self, num_exits: int | None = None, num_classes: int | None = None, **kwargs):
        nn.Module.__init__(self)
        cfg = EENetSchedulerConfig(num_exits=num_exits, num_classes=num_classes, **kwargs)
        for key, value in cfg.to_dict().items():
            if key not in ("num_exits", "num_classes"):
                setattr(self, key, value)
        self.num_exits = None
        self.num_classes = None
        self.fit_info: dict = {}
        self._fitted_flag = False
        if num_exits is not None:
            self._build(num_exits, num_classes)

    # ------------------------------------------------------------------ construction / persistence
    def _build(self, num_exits: int, num_classes: int) -> None:
        """Create the per-exit heads (zero weights; :meth:`fit` initialises them) and the decision buffers."""
        self.num_exits, self.num_classes = int(num_exits), int(num_classes)
        dims = [feature_dim(self.num_classes, k, self.features) for k in range(self.num_exits)]
        if any(int(math.floor(self.rho * d)) < 1 for d in dims):
            raise ValueError(f"rho={self.rho} gives an empty hidden layer; use rho >= 1/{dims[0]}")
        meta = dict(device="meta", dtype=torch.float32)  # no global-RNG draw from nn.Linear's default init
        # eq. 4.1 utility q^_k = w_k^T x_k (no bias)
        self.utility = nn.ModuleList(nn.Linear(d, 1, bias=False, **meta) for d in dims)
        # eq. 4.3 assignment r_k = MLP_k(x_k): floor(rho d_k) sigmoid units, unbounded output (D1)
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
        # eq. 7.1 thresholds on the raw q^ scale, float32 like the scores decide computes (D8)
        self.register_buffer("exit_thresholds", torch.full((self.num_exits,), math.inf, dtype=torch.float32))
        self.register_buffer("exit_costs", torch.zeros(self.num_exits, **f64))
        self.register_buffer("budget_value", torch.tensor(math.nan, **f64))
        self.register_buffer("planned_cost_value", torch.tensor(math.nan, **f64))
        self.register_buffer("fitted", torch.tensor(False))
        self._fitted_flag = False

    def get_config(self) -> dict:
        """JSON-serialisable constructor kwargs (``from_config(get_config())`` rebuilds an equivalent module)."""
        return {key: getattr(self, key) for key in EENetSchedulerConfig.keys()}

    @classmethod
    def from_config(cls, config: dict) -> "EENetScheduler":
        """Rebuild from :meth:`get_config`'s dict; a dict without ``features`` (written before the agreement
        features existed) gives a ``features="legacy"`` scheduler that reproduces the old decisions."""
        cfg = EENetSchedulerConfig.from_dict(config).to_dict()
        return cls(cfg.pop("num_exits"), cfg.pop("num_classes"), **cfg)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; an unbuilt scheduler is first built from the tensors' shapes (its
        ``features`` setting tells how many of utility.0's inputs are class probabilities)."""
        if self.num_exits is None and "exit_thresholds" in state_dict and "utility.0.weight" in state_dict:
            num_exits = int(state_dict["exit_thresholds"].shape[0])
            extra = 2 + FEATURE_SETS[self.features]
            self._build(num_exits, int(state_dict["utility.0.weight"].shape[1]) - extra)
        if "exit_thresholds" in state_dict:  # files written before float32 thresholds hold float64 ones
            state_dict = dict(state_dict)
            state_dict["exit_thresholds"] = state_dict["exit_thresholds"].to(torch.float32)
        out = nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)
        self._fitted_flag = bool(self.fitted.item()) if self.num_exits is not None else False
        return out

    def save_pretrained(self, save_directory) -> None:
        """Write ``eenet_scheduler.safetensors`` (state_dict; fit_info as metadata) and ``eenet_scheduler.json``.

        Atomic (``hf_eenet.bank.atomic_save_dir``): both files are written into a temporary folder that replaces
        ``save_directory`` (every other file in it is kept, a model's weights included), so a failed or interrupted
        save leaves the scheduler saved there before loadable, never new weights beside an old config."""
        from safetensors.torch import save_file

        from .bank import atomic_save_dir

        if self.num_exits is None:
            raise RuntimeError(
                "EENetScheduler has no networks yet: build it with num_exits/num_classes or call .fit(...)"
            )
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "fit_info": json.dumps(self.fit_info)}
        config = self.get_config()

        def write(tmp):
            save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata=metadata)
            with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as fh:
                json.dump(config, fh, indent=2, sort_keys=True)

        atomic_save_dir(save_directory, write, replaces_weights=False)  # a model folder keeps its weights

    @classmethod
    def from_pretrained(cls, directory) -> "EENetScheduler":
        """Load what :meth:`save_pretrained` wrote (safetensors + JSON only; never pickle)."""
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
        self._fitted_flag = True

    @property
    def thresholds(self) -> list[float]:
        """K thresholds on the raw utility scale (q^_k >= t_k exits; D5); the last is -inf."""
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
        """Average cost per sample of the thresholds on the rows they were set on — the fitting data, or the traffic
        sample of the last :meth:`rematch_budget` (= budget up to one row's cost, unless tied scores, e.g. duplicate
        rows, cannot be split; ``fit`` / ``rematch_budget`` warn then)."""
        self._check_fitted()
        return float(self.planned_cost_value.item())

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        state = "fitted" if self.is_fitted else "not fitted"
        return (f"{type(self).__name__}(num_exits={self.num_exits}, num_classes={self.num_classes}, "
                f"features={self.features!r}, {state})")


from .scheduler_config import SHARE_PLANS  # noqa: E402  (re-exported)
from .scheduler_features import all_exit_features, exit_features, init_feature_state  # noqa: E402

__all__ = [
    "EENetScheduler", "EENetSchedulerConfig", "WEIGHTS_NAME", "CONFIG_NAME", "FEATURE_SETS", "SHARE_PLANS",
    "all_exit_features", "exit_features", "feature_dim", "init_feature_state",
]
