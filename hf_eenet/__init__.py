"""hf_eenet: early-exit BERT/RoBERTa text classifiers under a compute budget (EENet, Ilhan et al., WACV 2024).

``import hf_eenet`` registers the configs and models with ``AutoConfig`` / ``AutoModelForSequenceClassification``,
marks them for Hub export (``save_pretrained`` writes ``auto_map`` and copies the code files) and registers the
budgeted text-classification pipeline for EENet models only: other models get the stock pipeline, unchanged.
"""

from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .bank import BankIntegrityError, data_fingerprint
from .configuration_eenet import EENetBertConfig, EENetRobertaConfig
from .costs import ExitCostProfile, profile_exit_costs, set_exit_costs
from .evaluation import evaluate_exits
from .modeling_eenet import (
    EENetBertForSequenceClassification,
    EENetRobertaForSequenceClassification,
    EENetSequenceClassifierOutput,
    exit_head_modules,
)
from .pipeline_eenet import EENetTextClassificationPipeline, TextClassificationDispatch, register_text_classification
from .policies import (
    EntropyPolicy,
    ExitPolicy,
    MaxProbPolicy,
    OraclePolicy,
    PatiencePolicy,
    StaticPolicy,
)
from .quantization import exit_probabilities, quantize_dynamic_int8, refit_scheduler_bank
from .scheduler import EENetScheduler
from .trainer import EENetTrainer, compute_exit_metrics

__version__ = "0.1.0"

for _cfg, _model in (
    (EENetBertConfig, EENetBertForSequenceClassification),
    (EENetRobertaConfig, EENetRobertaForSequenceClassification),
):
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModelForSequenceClassification.register(_cfg, _model, exist_ok=True)
    _cfg.register_for_auto_class()
    _model.register_for_auto_class("AutoModelForSequenceClassification")


def _register_pipelines() -> None:
    # "text-classification": early-exit models get the budgeted pipeline; the dispatcher hands every other model the
    # stock TextClassificationPipeline itself (same class, same outputs and errors as without hf_eenet).
    register_text_classification(force=True)
    # the explicit task name (also what Pipeline.save_pretrained records for the pipeline's own code)
    PIPELINE_REGISTRY.register_pipeline(
        "eenet-text-classification", pipeline_class=EENetTextClassificationPipeline,
        pt_model=AutoModelForSequenceClassification, type="text",
    )


_register_pipelines()

__all__ = [
    "EENetBertConfig",
    "EENetRobertaConfig",
    "EENetBertForSequenceClassification",
    "EENetRobertaForSequenceClassification",
    "EENetSequenceClassifierOutput",
    "exit_head_modules",
    "EENetScheduler",
    "EENetTextClassificationPipeline",
    "EENetTrainer",
    "ExitPolicy",
    "MaxProbPolicy",
    "EntropyPolicy",
    "PatiencePolicy",
    "StaticPolicy",
    "OraclePolicy",
    "ExitCostProfile",
    "profile_exit_costs",
    "set_exit_costs",
    "evaluate_exits",
    "compute_exit_metrics",
    "BankIntegrityError",
    "data_fingerprint",
    "quantize_dynamic_int8",
    "refit_scheduler_bank",
    "exit_probabilities",
]
