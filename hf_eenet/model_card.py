"""Model cards with measured budget results (``huggingface_hub.ModelCard``; ``eval_results`` → ``model-index``)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_state import card_status, mark_card_stale, mark_card_stale_in_save  # noqa: F401 (re-exported)
from .reporting import EENET, budget_adherence_table, budget_key, plot_results, results_table

PLOT_FILE = "accuracy_vs_cost.png"

TEMPLATE = Path(__file__).with_name("model_card_template.md")
#: the usage example's input: one text, or (a model trained on sentence pairs, which refuses single texts) one pair
TEXT_EXAMPLE = '"a gripping , funny film"'
PAIR_EXAMPLE = '{"text": "a man is playing a guitar .", "text_pair": "someone is making music ."}'

def build_model_card(results: dict, *, dataset: str, base_model: str, setup: dict, limitations: list[str],
                     plot_file: str | None = None, model_name: str = "hf_eenet model", dataset_id: str | None = None,
                     dataset_config: str | None = None, dataset_name: str | None = None,
                     dataset_type: str | None = None) -> ModelCard:
    """A card whose ``model-index`` carries EENet's accuracy and realised cost at every budget.

    ``dataset``: short name; ``dataset_id`` / ``dataset_config``: the Hub dataset (listed under ``datasets:`` only when
    given; the eval results' dataset ``type``, which the Hub reads as a dataset id, is otherwise ``dataset_type`` or
    ``local:<dataset>``, so a local folder named like a Hub dataset does not link to it);
    ``dataset_name``: readable name (default: ``dataset``)."""
    ds_type, ds_name, ds_config = dataset_id or dataset_type or f"local:{dataset}", dataset_name or dataset, dataset_config
    split = results.get("evaluated_on", "test")
    eval_results = []
    for row in results["methods"][EENET]:
        b = row["budget"]
        for metric, value in (("accuracy", row["accuracy"]), ("mean_cost", row["mean_cost"])):
            eval_results.append(EvalResult(
                task_type="text-classification", dataset_type=ds_type, dataset_name=ds_name,
                dataset_config=ds_config, dataset_split=split, metric_type=metric,
                metric_name=f"{metric} @ budget {budget_key(b)}", metric_value=round(float(value), 4),
                metric_args={"budget": b},
            ))
    data = ModelCardData(
        base_model=base_model if _looks_like_hub_id(base_model) else None,
        datasets=[dataset_id] if dataset_id else None,  # Hub dataset ids only (a local folder name is not one)
        library_name="transformers", pipeline_tag="text-classification",
        tags=["early-exit", "eenet", "hf_eenet", "adaptive-inference"], model_name=model_name,
        eval_results=eval_results, license="apache-2.0",
    )
    per_exit = ", ".join(f"{100 * a:.2f}" for a in results["per_exit_accuracy"])
    bank = bank_budgets(results)
    if bank:
        bank_line = (f" and a fitted EENet scheduler bank for budgets {bank}: ask for a budget in [{bank[0]:g}, "
                     f"{bank[-1]:g}] (a fraction of the full model's cost) and every text exits as early as the "
                     "scheduler judges safe.")
        default = results.get("default_budget")  # the example asks for a budget the bank serves
        served = default is not None and any(abs(float(default) - b) < 1e-9 for b in bank)
        example = float(default) if served else min(bank, key=lambda b: abs(b - 0.5))
    else:
        bank_line = (". **It has no scheduler bank**: the EENet rows below come from schedulers fitted for this "
                     "evaluation and not saved, so `budget=` is refused until one is fitted "
                     "(`python -m hf_eenet fit-scheduler <this folder> --budgets 0.3,0.5,0.7 ...`).")
        example = 0.5
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE),
        model_name=model_name, dataset_name=ds_name, split=split, bank_line=bank_line, example_budget=f"{example:g}",
        example_input=(PAIR_EXAMPLE if results.get("sentence_pairs") else TEXT_EXAMPLE),
        results_table=results_table(results),
        per_exit_accuracy=per_exit,
        full_accuracy=f"{100 * results['full_model']['accuracy']:.2f}",
        setup="\n".join(f"- **{k}**: {v}" for k, v in setup.items()),
        limitations="\n".join(f"- {x}" for x in limitations),
        plot=f"![accuracy vs cost]({plot_file})" if plot_file else "",
        adherence_table=budget_adherence_table(results),
        layer_cost_section=_layer_cost_section(results),
        scheduler_fit=_scheduler_fit_line(results),
    )
    return card


def _layer_cost_section(results: dict) -> str:
    """The comparison re-run with layer-count costs, when the run made one (else no section: a card does not
    describe a table it does not have)."""
    if not results.get("results_with_layer_costs"):
        return ""
    return ("### The same comparison with layer-count costs\n\n"
            "Exit k costs ℓ_k / L, its encoder layer over the number of layers (no measurement); every policy, EENet "
            "included, is re-calibrated for these costs.\n\n"
            + results_table({"evaluated_on": results.get("evaluated_on", "test"), **results["results_with_layer_costs"]})
            + "\n\n")


def _looks_like_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a path of this machine (absolute, relative, an existing local folder, or the
    ``<path>/name`` a machine path is recorded as)."""
    if not name or name.count("/") != 1 or name.startswith((".", "/", "~", "<")):  # "<path>/x": a local path
        return False
    return not Path(name).exists()


def bank_budgets(results: dict) -> list[float]:
    """Budgets of the scheduler bank saved with the model (``bank_budgets``; older results: the budgets the recipe
    fitted, ``scheduler_fit``)."""
    if "bank_budgets" in results:
        return sorted(float(b) for b in results["bank_budgets"] or [])
    return sorted(float(b) for b in (results.get("scheduler_fit") or {}))


def _scheduler_fit_line(results: dict) -> str:
    fit = results.get("scheduler_fit") or {}
    secs = [v["fit_seconds"] for v in fit.values() if isinstance(v, dict) and "fit_seconds" in v]
    if not secs:
        return "not recorded"
    return (f"{len(secs)} budgets, {min(secs):.1f}–{max(secs):.1f} s per budget "
            f"({sum(secs):.1f} s in all) on {results.get('versions', {}).get('threads', '?')} CPU threads")


def card_from_results(results: dict, plot_file: str | None = PLOT_FILE) -> ModelCard:
    """The recipe's model card, built only from its ``results.json`` (so committed cards can be regenerated).

    Dataset ids and names, the backbone's description and dataset-specific notes come from the results'
    ``model_card`` block (the recipe's ``--card_*`` options, set by the presets); nothing here knows a dataset."""
    args = results.get("recipe_args", {})
    targs = results.get("training_args", {})
    train = results.get("training", {})
    meta = results.get("model_card") or {}
    backbone = args.get("model_name_or_path", "?")
    pooling = results.get("exit_pooling") or f"{args.get('exit_pooling', 'cls')} (resolved value not recorded)"
    splits = results.get("splits", {})
    setup = {
        "backbone": meta.get("backbone") or backbone,
        "exit layers": results.get("exit_layers"),
        "exit pooling": pooling,
        "training": _training_line(train, targs, args),
        "scheduler": (f"EENet bank fitted on validation ({splits.get('validation', '?')} rows) for budgets "
                      f"{bank_budgets(results)}" if bank_budgets(results) else
                      f"no bank saved; EENet fitted on validation ({splits.get('validation', '?')} rows) for this "
                      f"evaluation only") + (f"; {results.get('evaluated_on', 'test')} = "
                                             f"{splits.get(results.get('evaluated_on', 'test'), '?')} rows"),
        "scheduler fit time": _scheduler_fit_line(results),
        "exit costs": f"{results.get('cost_profile')}: {[round(c, 3) for c in results['costs']]}",
        "libraries": ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        "command": f"`{results.get('command', '?')}`",
    }
    if results.get("sentence_pairs"):
        setup["inputs"] = "sentence pairs (text, text_pair)"
    limitations = []
    if results.get("cost_profile") == "latency":
        limitations.append("Costs are measured on one CPU machine; realised speed-ups depend on hardware and batch "
                           "size.")
    if results.get("evaluated_on") == "validation":
        limitations.append("No labelled test split: every policy was calibrated and scored on the same validation "
                           "rows, so the numbers are in-sample (optimistic).")
    limitations += list(meta.get("notes") or [])
    name = results.get("dataset", "?")
    base_model = meta.get("base_model") or backbone
    # the model-index dataset type the recipe decided (a Hub dataset's id, local:<name>); results written before it
    # recorded one keep the type they were written with: the given --dataset_name, else local:<name>
    dataset_type = meta.get("dataset_type") if "dataset_type" in meta else \
        (name if not meta.get("dataset_id") and args.get("dataset_name") and args["dataset_name"] == name else None)
    return build_model_card(
        results, dataset=name, base_model=base_model, setup=setup, limitations=limitations, plot_file=plot_file,
        dataset_id=meta.get("dataset_id"), dataset_type=dataset_type,
        dataset_config=meta.get("dataset_config"),
        dataset_name=meta.get("dataset_name"),
        model_name=f"hf_eenet {name} ({Path(base_model).name})")


def _minutes(seconds) -> str:
    if not seconds:
        return "time not recorded"
    return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"


def _training_line(train: dict, targs: dict, args: dict) -> str:
    """How the model was trained: this run's training, or (a run that only fitted / evaluated a trained model) the
    settings saved with that model, or that they are not recorded."""
    settings = (f"lr {targs.get('learning_rate')}, {_length(targs)}, batch {targs.get('per_device_train_batch_size')}, "
                f"weight decay {targs.get('weight_decay')}, seed {targs.get('seed')}")
    if train.get("trained_in_this_run") is False:
        if train.get("loaded_eenet_model") is False:
            return "not trained: a backbone was loaded and its exit heads are freshly initialised (untrained)"
        return ("not trained in this run (a trained hf_eenet model was loaded); " +
                (f"its saved training settings: {settings}" if targs else "its training settings are not recorded"))
    return (f"{train.get('train_rows', 'n/a')} rows, {train.get('global_steps', '?')} steps "
            f"({_minutes(train.get('train_seconds'))}), lr {targs.get('learning_rate')}, "
            f"{_length(targs)}, batch {targs.get('per_device_train_batch_size')}, "
            f"max length {args.get('max_seq_length', args.get('max_length'))}, {_optimizer(targs)}, weight decay "
            f"{targs.get('weight_decay')}, self-distillation {args.get('self_distillation')}, "
            f"seed {targs.get('seed')}")


def _optimizer(targs: dict) -> str:
    """The optimizer and learning-rate schedule as the run set them (``optim``, ``lr_scheduler_type``; results written
    before ``optim`` was recorded ran the default AdamW)."""
    optim = str(targs.get("optim") or "AdamW")
    schedule = targs.get("lr_scheduler_type")
    return optim if schedule in (None, "linear") else f"{optim}, {schedule} schedule"


def _length(targs: dict) -> str:
    """Training length as it was set: ``max_steps`` overrides the epoch count in the Trainer."""
    steps = targs.get("max_steps")
    if steps is not None and int(steps) > 0:
        return f"max_steps {int(steps)}"
    return f"{targs.get('num_train_epochs')} epoch(s)"


def write_results_card(results: dict, folder) -> ModelCard:
    """Write ``<folder>/accuracy_vs_cost.png`` and ``<folder>/README.md`` from a recipe's results dict."""
    folder = Path(folder)
    plot_results(results, str(folder / PLOT_FILE),
                 title=f"{results['dataset']} {results.get('evaluated_on', 'test')}: accuracy vs realised cost "
                       f"({results['cost_profile']} cost)")
    card = card_from_results(results, plot_file=PLOT_FILE)
    card.save(str(folder / "README.md"))
    return card


__all__ = ["build_model_card", "card_status", "card_from_results", "mark_card_stale", "mark_card_stale_in_save",
           "write_results_card"]
