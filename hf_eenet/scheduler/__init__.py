"""EENet scheduler (docs/method.md): learn *when* each sample leaves a multi-exit model under an average-cost budget.

Modules, in the order of the method:

* ``config.py``    — :class:`EENetSchedulerConfig`, the typed constructor arguments (declared once).
* ``features.py``  — §3 per-exit features incl. the agreement/voting terms, computable online row by row.
* ``inference.py`` — §4 heads and §7 decisions: ``init_state``, ``decide`` (float32, vectorised, no host sync),
  ``exit_index``.
* ``fit.py``       — §5 losses and training, §5.3 honest selection with max-prob / static fallbacks, §6 thresholds.
* ``core.py``      — :class:`EENetScheduler`: construction, save/load, fitted state as Python values.
"""

from .config import FEATURE_SETS, SHARE_PLANS, EENetSchedulerConfig
from .core import CONFIG_NAME, WEIGHTS_NAME, EENetScheduler
from .features import all_exit_features, exit_features, feature_dim, init_feature_state

__all__ = [
    "EENetScheduler", "EENetSchedulerConfig", "WEIGHTS_NAME", "CONFIG_NAME", "FEATURE_SETS", "SHARE_PLANS",
    "all_exit_features", "exit_features", "feature_dim", "init_feature_state",
]
