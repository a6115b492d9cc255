"""``EENetTrainer``: joint training of all exits with the HF ``Trainer``, then fitting the EENet scheduler bank.

Training loss (docs/method.md §2): Σ_k w_k · CE(z_k, y), w_k ∝ k normalised, plus optional self-distillation in
the last ``distill_start`` fraction of training: + α · T² · KL(softmax(z_K/T) ‖ softmax(z_k/T)) for k < K with a
*detached* teacher z_K (the authors' code lets the students pull on the final exit).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import Trainer

from .evaluation import evaluate_exits
from .policies import check_budget, check_costs
from .scheduler import EENetScheduler


def softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _exit_logits_from_predictions(predictions) -> np.ndarray:
    """The ``[N, K, C]`` exit logits among the arrays ``Trainer.predict`` returns for our models."""
    preds = predictions if isinstance(predictions, (tuple, list)) else (predictions,)
    for p in preds:
        if isinstance(p, np.ndarray) and p.ndim == 3:
            return p
    raise ValueError("predictions hold no [N, K, C] exit logits: was the model run with all exits (no policy)?")


def compute_exit_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: accuracy of every exit (``accuracy_exit_<layer>``) and of the last one.

    Needs no Hub access (plain numpy; ``evaluate.load("accuracy")`` would download the metric script).
    """
    exit_logits = _exit_logits_from_predictions(eval_pred.predictions)
    labels = np.asarray(eval_pred.label_ids)
    if exit_logits.shape[-1] == 1:  # regression: report per-exit MSE
        return {f"mse_exit_{k + 1}": float(np.mean((exit_logits[:, k, 0] - labels) ** 2))
                for k in range(exit_logits.shape[1])}
    acc = (exit_logits.argmax(-1) == labels[:, None]).mean(0)
    out = {f"accuracy_exit_{k + 1}": float(a) for k, a in enumerate(acc)}
    out["accuracy"] = float(acc[-1])
    return out


class EENetTrainer(Trainer):
    """``Trainer`` for the multi-exit models.

    Args (on top of ``Trainer``'s):
        self_distillation (`bool`): add the self-distillation term in the last part of training.
        distill_start (`float`): fraction of training steps after which self-distillation is on (paper: 0.75).
        distill_temperature (`float`): T (paper: 3).
        distill_weight (`float`): α (paper: 0.01).

    Per-exit validation accuracy is logged by ``evaluate`` (``eval_accuracy_exit_<k>``) unless another
    ``compute_metrics`` is given.
    """

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps (GA-correct).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, self_distillation: bool = False, distill_start: float = 0.75,
                 distill_temperature: float = 3.0, distill_weight: float = 0.01, **kwargs):
        kwargs.setdefault("compute_metrics", compute_exit_metrics)
        super().__init__(*args, **kwargs)
        if not 0.0 <= distill_start <= 1.0:
            raise ValueError(f"distill_start must be in [0, 1], got {distill_start}")
        self.self_distillation = self_distillation
        self.distill_start = distill_start
        self.distill_temperature = distill_temperature
        self.distill_weight = distill_weight
        self.scheduler_fit_info: dict = {}

    # ------------------------------------------------------------------------------------------------ training
    def _distillation_active(self) -> bool:
        if not self.self_distillation or not self.model.training:
            return False
        max_steps = max(self.state.max_steps or 0, 1)
        return self.state.global_step >= self.distill_start * max_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        outputs = model(**inputs)
        if labels is None:
            raise ValueError("EENetTrainer needs `labels` in every batch")
        core = self.accelerator.unwrap_model(model)
        loss = core.multi_exit_loss(outputs.exit_logits, labels)
        if self._distillation_active() and outputs.exit_logits.shape[1] > 1:
            t = self.distill_temperature
            teacher = F.softmax(outputs.exit_logits[:, -1].detach().float() / t, dim=-1)  # detached teacher
            kl = sum(
                F.kl_div(F.log_softmax(outputs.exit_logits[:, k].float() / t, dim=-1), teacher, reduction="batchmean")
                for k in range(outputs.exit_logits.shape[1] - 1)
            )
            loss = loss + self.distill_weight * t * t * kl
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``Trainer._save`` minus pickles, plus what the Hub needs for the budgeted pipeline.

        Writes ``training_args.json`` instead of the pickled ``training_args.bin``, records the
        ``eenet-text-classification`` pipeline in ``config.custom_pipelines`` and copies its code next to the model
        code, so ``pipeline(model=folder, trust_remote_code=True)`` works without hf_eenet installed.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        model.config.custom_pipelines = {
            "eenet-text-classification": {"impl": "pipeline_eenet.EENetTextClassificationPipeline",
                                          "pt": ("AutoModelForSequenceClassification",), "type": "text"}}
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            pickled = os.path.join(output_dir, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)
            Path(output_dir, "training_args.json").write_text(self.args.to_json_string())
            shutil.copy(Path(__file__).with_name("pipeline_eenet.py"), Path(output_dir, "pipeline_eenet.py"))

    # ------------------------------------------------------------------------------------------------ scheduler
    def collect_exit_predictions(self, dataset=None) -> tuple[np.ndarray, np.ndarray]:
        """All-exit softmax outputs ``[N, K, C]`` and labels ``[N]`` on ``dataset`` (default: ``eval_dataset``)."""
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("no dataset: pass eval_dataset to the trainer or to fit_scheduler(eval_dataset=...)")
        pred = self.predict(dataset, metric_key_prefix="scheduler")
        probs = softmax_np(_exit_logits_from_predictions(pred.predictions).astype(np.float64))
        if pred.label_ids is None:
            raise ValueError("the dataset has no labels; the scheduler is fitted on a labelled validation split")
        return probs.astype(np.float32), np.asarray(pred.label_ids)

    def fit_scheduler(self, eval_dataset=None, budgets=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8), seed: int = 0,
                      default_budget: float | None = None, cost_profile=None, **scheduler_kwargs) -> dict:
        """Fit one EENet scheduler per budget on the all-exit predictions of ``eval_dataset`` (collected once).

        Args:
            budgets: fractions of the full model's cost in (0, 1], each within [c_1, c_K] of ``config.exit_costs``.
            cost_profile: optional :class:`~hf_eenet.costs.ExitCostProfile` (plus kind) to store as the model's
                exit costs first, e.g. ``(profile, "latency")``; by default the costs already in the config are used.
            default_budget: budget the pipeline uses when a call gives none (default: the fitted budget nearest 0.5).
            scheduler_kwargs: passed to :class:`EENetScheduler`.
        Returns:
            ``{budget: {"planned_cost", "validation": evaluate_exits(...), "fit_seconds", ...}}``, also stored in
            ``self.scheduler_fit_info``.
        """
        model = self.accelerator.unwrap_model(self.model)
        if cost_profile is not None:
            from .costs import set_exit_costs

            profile, kind = cost_profile if isinstance(cost_profile, tuple) else (cost_profile, "latency")
            set_exit_costs(model, profile, kind)
        costs = check_costs(model.config.exit_costs, model.config.num_exits)
        budgets = sorted(float(b) for b in budgets)
        if not budgets:
            raise ValueError("budgets is empty")
        for b in budgets:  # validate all before spending time on any fit
            if not (0 < b <= 1) or math.isnan(b):
                raise ValueError(f"budget {b} must be a fraction of the full cost in (0, 1]")
            check_budget(b, costs)
        probs, labels = self.collect_exit_predictions(eval_dataset)
        info = {}
        for b in budgets:
            t0 = time.perf_counter()
            sched = EENetScheduler(**scheduler_kwargs).fit(probs, labels, costs, b, seed=seed)
            secs = time.perf_counter() - t0
            model.add_scheduler(sched, b)
            info[b] = {
                "fit_seconds": secs,
                "planned_cost": float(sched.planned_cost),
                "validation": evaluate_exits(probs, labels, sched.exit_index(probs), costs, budget=b),
            }
        if default_budget is None and model.config.default_budget is None:
            default_budget = min(model.config.scheduler_budgets, key=lambda x: abs(x - 0.5))
        if default_budget is not None:
            model.get_exit_policy(default_budget)  # validates it is servable
            model.config.default_budget = float(default_budget)
        self.scheduler_fit_info = info
        return info


__all__ = ["EENetTrainer", "compute_exit_metrics", "softmax_np"]
