"""Model cards with measured budget results (``huggingface_hub.ModelCard``; ``eval_results`` → ``model-index``)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .reporting import EENET, results_table

TEMPLATE = Path(__file__).with_name("model_card_template.md")

DATASET_IDS = {"sst2": ("glue", "SST-2", "sst2"), "ag_news": ("ag_news", "AG News", None)}


def build_model_card(results: dict, *, dataset: str, base_model: str, setup: dict, limitations: list[str],
                     plot_file: str | None = None, model_name: str = "hf_eenet model") -> ModelCard:
    """A card whose ``model-index`` carries EENet's test accuracy and realised cost at every budget."""
    ds_type, ds_name, ds_config = DATASET_IDS.get(dataset, (dataset, dataset, None))
    eval_results = []
    for row in results["methods"][EENET]:
        b = row["budget"]
        for metric, value in (("accuracy", row["accuracy"]), ("mean_cost", row["mean_cost"])):
            eval_results.append(EvalResult(
                task_type="text-classification", dataset_type=ds_type, dataset_name=ds_name,
                dataset_config=ds_config, dataset_split="test", metric_type=metric,
                metric_name=f"{metric} @ budget {b:.2f}", metric_value=round(float(value), 4),
                metric_args={"budget": b},
            ))
    data = ModelCardData(
        base_model=base_model if "/" in base_model and not base_model.startswith("/") else None,
        datasets=[ds_type], library_name="transformers", pipeline_tag="text-classification",
        tags=["early-exit", "eenet", "hf_eenet", "adaptive-inference"], model_name=model_name,
        eval_results=eval_results, license="apache-2.0",
    )
    per_exit = ", ".join(f"{100 * a:.2f}" for a in results["per_exit_accuracy"])
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE),
        model_name=model_name, dataset_name=ds_name,
        results_table=results_table(results),
        per_exit_accuracy=per_exit,
        full_accuracy=f"{100 * results['full_model']['accuracy']:.2f}",
        setup="\n".join(f"- **{k}**: {v}" for k, v in setup.items()),
        limitations="\n".join(f"- {x}" for x in limitations),
        plot=f"![accuracy vs cost]({plot_file})" if plot_file else "",
    )
    return card


__all__ = ["build_model_card"]
