"""``hf-eenet`` (or ``python -m hf_eenet``): train, fit-scheduler, evaluate, predict, rematch and demo.

Every data-reading command takes the recipe's data flags (``--train_file/--validation_file/--test_file``,
``--dataset_name``, ``--text_column_names``, ``--label_column_name``, ...) or a JSON config (e.g. a preset) right
after the model folder. Examples::

    hf-eenet demo                                                      # a few minutes on 2 CPU cores, offline
    hf-eenet train --model_name_or_path bert-base-uncased --train_file train.csv --validation_file dev.csv \\
        --text_column_names question,answer --output_dir outputs/mine --do_train --do_eval
    hf-eenet fit-scheduler outputs/mine --validation_file dev.csv --text_column_names question,answer \\
        --budgets 0.3,0.5,0.7                                          # replaces the bank (--extend adds to it)
    hf-eenet evaluate outputs/mine --validation_file dev.csv --test_file test.csv --json results.json
    hf-eenet predict outputs/mine "a gripping , funny film" "dull" --budget 0.5
    hf-eenet predict outputs/mine --test_file new.csv --text_column_names text --output_file preds.jsonl
    hf-eenet rematch outputs/mine --test_file traffic.csv --text_column_names text  # unlabelled sample of traffic

Value errors (bad data, budgets, paths) print one line ``hf-eenet COMMAND: error: ...`` and exit with code 2
(``HF_EENET_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .scheduler_config import SchedulerFitArguments

COMMANDS = {
    "train": "run the recipe: fine-tune, fit the scheduler bank, evaluate, predict (hf-eenet train --help)",
    "fit-scheduler": "fit the EENet scheduler bank on a validation split and save it (replaces the bank unless "
                     "--extend)",
    "evaluate": "EENet vs baselines vs oracle: calibrate on validation, report on test",
    "predict": "classify texts (arguments) or a test split (data flags) under budgets",
    "rematch": "re-match the bank's thresholds to its budgets on an unlabelled sample of your traffic (--test_file; "
               "labels not needed; inputs truncated as the pipeline serves them) and save it",
    "demo": "offline end-to-end demo on an SST-2 subset (a few minutes on 2 cores; needs the repository checkout)",
}


class CLIError(ValueError):
    """A user error the CLI reports in one line."""


@dataclass
class FitArguments(SchedulerFitArguments):
    budgets: str = field(default="0.3,0.4,0.5,0.6,0.7,0.8", metadata={
        "help": "comma-separated budgets, fractions of the full cost"})
    extend: bool = field(default=False, metadata={
        "help": "keep the schedulers already in the bank and add these budgets (default: replace the bank)"})
    seed: int | None = field(default=None, metadata={"help": "seed of the scheduler fit (and of a validation hold-out); default: the seed the model was trained "
                                                           "with (its training_args.json), so a hold-out is the "
                                                           "recipe's, else 0"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "batch size of the prediction pass"})


@dataclass
class EvaluateArguments:
    budgets: str | None = field(default=None, metadata={"help": "comma-separated budgets (default: the bank's)"})
    json: str | None = field(default=None, metadata={"help": "also write the results here (checked before work)"})
    seed: int | None = field(default=None, metadata={"help": "seed of a validation hold-out (the baselines' calibration is deterministic); default: the seed the model was trained "
                                                           "with (its training_args.json), so a hold-out is the "
                                                           "recipe's, else 0"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "batch size of the prediction pass"})


@dataclass
class PredictArguments:
    budget: float | None = field(default=None, metadata={
        "help": "one budget, a fraction of the full cost (default: texts the config's default budget, a test split "
                "every fitted budget)"})
    budgets: str | None = field(default=None, metadata={
        "help": "comma-separated budgets (texts: one line per text and budget)"})
    batch_size: int = field(default=8, metadata={"help": "batch size"})
    output_file: str | None = field(default=None, metadata={
        "help": "for a test split: write JSON lines here (default: stdout)"})
    seed: int | None = field(default=None, metadata={"help": "seed (of a validation hold-out, if any); default: the seed the model was trained "
                                                           "with (its training_args.json), so a hold-out is the "
                                                           "recipe's, else 0"})


def _check_writable(path: str | None, flag: str) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if not path:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file path")
    if not parent.is_dir():
        raise CLIError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CLIError(f"{flag} {path}: not writable")


def _parser(command: str, extra):
    from transformers import HfArgumentParser

    from .data import DataArguments

    p = HfArgumentParser((extra, DataArguments), prog=f"hf-eenet {command}",
                         description=COMMANDS[command] + ". A JSON config (e.g. recipes/presets/sst2.json) may follow "
                         "MODEL_DIR: its keys that are this command's options apply (the data options, --seed, and "
                         "fit-scheduler's --budgets; evaluate / predict use the bank's budgets unless --budgets is "
                         "given), flags override it, its other keys are ignored; texts to predict replace its data "
                         "files and text columns.")
    p.add_argument("model_dir", help="a folder written by the recipe / EENetTrainer.save_model")
    return p


def _parse(command: str, extra, argv: list[str]):
    from .recipe import parse_args_with_config

    parser = _parser(command, extra)
    # no --max_seq_length (flag or config file): inputs are truncated as the model serves them (_serving_length)
    parser.set_defaults(max_seq_length=None)
    if command == "predict":
        parser.add_argument("texts", nargs="*", help="texts to classify (else the test split of the data flags)")
    argv = list(argv)
    # a config file right after MODEL_DIR: move it first, where parse_args_with_config looks for it
    if len(argv) >= 2 and argv[1].endswith(".json") and not argv[0].startswith("-"):
        argv = [argv[1], argv[0], *argv[2:]]
    cmd_args, data_args, ns = parse_args_with_config(parser, argv, ignore_unknown=True)
    if command in ("evaluate", "predict") and getattr(cmd_args, "_budgets_from_config", False) and cmd_args.budgets:
        # a preset's budgets are what it fits; a fitted bank is evaluated / served at the budgets it was fitted for
        print(f"note: the config file's budgets ({cmd_args.budgets}) are not used (they are the budgets it fits; "
              "give --budgets on the command line to choose)", file=sys.stderr)
        cmd_args.budgets = None
    return cmd_args, data_args, ns


def _serving_length(model, tok, data_args, command: str) -> int:
    """Tokens to truncate to: the length the model serves (``max_input_tokens``: ``config.max_seq_length`` when the
    recipe recorded it) unless ``--max_seq_length`` was given; sets ``data_args.max_seq_length``."""
    from .configuration_eenet import max_input_tokens

    served = max_input_tokens(model.config, tok)
    if data_args.max_seq_length is None:
        data_args.max_seq_length = served
    limit = max_input_tokens(model.config, tok, recorded=False)  # the position table / tokenizer cap
    if data_args.max_seq_length > limit:
        print(f"note: --max_seq_length {data_args.max_seq_length} is larger than the model takes ({limit} "
              f"positions); using {limit}", file=sys.stderr)
        data_args.max_seq_length = limit
    if data_args.max_seq_length != served and command in ("evaluate", "predict"):
        print(f"note: inputs truncated to --max_seq_length {data_args.max_seq_length}; the model serves "
              f"{served} tokens (pipeline / early_exit_predict)", file=sys.stderr)
    return data_args.max_seq_length


def _drop_stale_bank_outputs(model_dir: str) -> None:
    """The recipe's predictions and evaluation metrics in the folder describe the bank this command replaced."""
    from .recipe import _drop_stale_outputs

    _drop_stale_outputs(Path(model_dir), evaluated=False, predicted=False, weights_changed=False,
                        hint="hf-eenet evaluate / predict write new ones")


def _load_model(model_dir: str):
    from .recipe import load_eenet

    if not Path(model_dir).is_dir():
        raise CLIError(f"model folder {model_dir} does not exist")
    return load_eenet(model_dir)


def _seed(args, model_dir: str) -> int:
    """``--seed``, else the seed the recipe trained the model with (``training_args.json``), else 0: without
    ``--validation_file`` the validation hold-out then has the rows the recipe held out (not training rows)."""
    if args.seed is not None:
        return args.seed
    from .recipe import _saved_training_args

    seed = _saved_training_args(model_dir).get("seed")  # its folder or its Hub repository
    args.seed = int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0
    return args.seed


def _trainer_and_data(model, tok, data_args, model_dir: str, seed: int, batch_size: int, need, use_labels=True,
                      uses=None):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from .data import load_text_classification
    from .recipe import check_pairing, model_label_names
    from .trainer import EENetTrainer

    _read_needed_files_only(data_args, uses or need)  # uses: the splits read when present (need: must be)
    data = load_text_classification(data_args, seed=seed, label_names=model_label_names(model), need=need,
                                    use_labels=use_labels)
    check_pairing(model.config, data.is_pair)
    if "validation" in need and not (data_args.validation_file or data_args.dataset_name):
        print(f"note: validation = a seeded hold-out of --train_file (seed {seed}); its rows were held out of "
              "training only if the recipe trained this model on the same file with the same seed and hold-out "
              "flags (else give --validation_file)", file=sys.stderr)
    enc = data.tokenize(tok, data_args.max_seq_length)
    targs = TrainingArguments(output_dir=model_dir, per_device_eval_batch_size=batch_size, report_to=[],
                              use_cpu=not _has_cuda(), seed=seed)
    trainer = EENetTrainer(model=model, args=targs, eval_dataset=enc.get("validation"), processing_class=tok,
                           data_collator=DataCollatorWithPadding(tok))
    return trainer, data, enc


def _read_needed_files_only(data_args, need) -> None:
    """A config file's data files of splits this command does not use (a preset's SST-2 train file for ``predict
    --test_file mine.csv``) are not read: the model has its label names, so train is read only for a validation
    hold-out. Files given on the command line are read as given."""
    from_config = set(getattr(data_args, "_from_config", ()))
    files = [f"{split}_file" for split in ("train", "validation", "test")]
    if any(getattr(data_args, k) and k not in from_config for k in files):  # files on the command line: a config's
        for key in ("dataset_name", "dataset_config_name"):                 # dataset is not read beside them
            if key in from_config and getattr(data_args, key):
                setattr(data_args, key, None)
                print(f"note: not reading the config file's {key} (data files given on the command line)",
                      file=sys.stderr)
    needed = set(need) | ({"train"} if "validation" in need and not data_args.validation_file else set())
    skipped = [f"{split}_file" for split in ("train", "validation", "test")
               if split not in needed and f"{split}_file" in from_config and getattr(data_args, f"{split}_file")]
    if not any(getattr(data_args, k) for k in ("dataset_name", *files) if k not in skipped):
        return  # nothing this command uses is given: the loader says which split it needs
    for key in skipped:
        setattr(data_args, key, None)
    if skipped:
        print(f"note: not reading the config file's {', '.join(skipped)} (this command uses the "
              f"{' / '.join(s for s in ('train', 'validation', 'test') if s in needed)} split)", file=sys.stderr)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_fit_scheduler(argv) -> None:
    from .recipe import parse_budgets, scheduler_kwargs

    args, data_args, ns = _parse("fit-scheduler", FitArguments, argv)
    budgets = parse_budgets(args.budgets)
    model, tok = _load_model(ns.model_dir)
    # the bank serves inputs of the length it is fitted at: an explicit --max_seq_length becomes the model's
    model.config.max_seq_length = _serving_length(model, tok, data_args, "fit-scheduler")
    trainer, _, _ = _trainer_and_data(model, tok, data_args, ns.model_dir, _seed(args, ns.model_dir),
                                      args.per_device_eval_batch_size, need=("validation",))
    old = list(model.config.scheduler_budgets or [])
    # the rows were tokenized at the length the model serves (set above): rows piled at a shorter one are whole texts
    info = trainer.fit_scheduler(budgets=budgets, seed=args.seed, extend=args.extend,
                                 tokenized_max_length=data_args.max_seq_length, **scheduler_kwargs(args))
    model.save_pretrained(ns.model_dir)  # atomic; keeps the tokenizer and training_args.json (how it was trained)
    from .model_card import mark_card_stale

    mark_card_stale(ns.model_dir, model, "extended" if args.extend else "refitted")
    _drop_stale_bank_outputs(ns.model_dir)
    from .reporting import budget_key
    for b, r in info.items():
        print(f"budget {budget_key(b)}: validation accuracy {100 * r['validation']['accuracy']:.2f}, "
              f"cost {r['validation']['mean_cost']:.3f}, fit {r['fit_seconds']:.1f}s")
    new = list(model.config.scheduler_budgets)
    if args.extend:
        print(f"extended the scheduler bank {old} -> {new} (saved in {ns.model_dir})")
    else:
        print(f"replaced the scheduler bank {old} with {new} (saved in {ns.model_dir}; --extend keeps old entries)")


def cmd_evaluate(argv) -> dict:
    from .recipe import parse_budgets
    from .reporting import compare_policies, results_table

    args, data_args, ns = _parse("evaluate", EvaluateArguments, argv)
    _check_writable(args.json, "--json")
    model, tok = _load_model(ns.model_dir)
    bank = dict(zip(model.config.scheduler_budgets or [], model.eenet_schedulers))
    if not bank:
        raise CLIError(f"{ns.model_dir} has no fitted scheduler bank to evaluate (hf-eenet fit-scheduler first)")
    budgets = parse_budgets(args.budgets) if args.budgets else list(bank)
    # EENet rows are what the model serves at each budget (get_exit_policy: the largest fitted budget <= B; outside
    # the fitted range it refuses), never a scheduler fitted here on the fly
    served, served_by = _served(model, budgets)
    _serving_length(model, tok, data_args, "evaluate")
    trainer, data, enc = _trainer_and_data(model, tok, data_args, ns.model_dir, _seed(args, ns.model_dir),
                                           args.per_device_eval_batch_size, need=("validation",),
                                           uses=("validation", "test"))
    val_probs, val_labels = trainer.collect_exit_predictions(enc["validation"])
    on = "test" if data.labelled.get("test") else "validation"
    probs, labels = trainer.collect_exit_predictions(enc[on]) if on == "test" else (val_probs, val_labels)
    res = compare_policies(val_probs, val_labels, probs, labels, list(model.config.exit_costs), budgets,
                           seed=args.seed, schedulers=served)
    res["evaluated_on"] = on
    res["eenet_served_by"] = {str(b): fb for b, fb in served_by.items()}
    print(f"evaluated on the {on} split ({len(labels)} rows)")
    print(results_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float))
    return res


def _served(model, budgets) -> tuple[dict, dict]:
    """The policy serving each budget (``get_exit_policy``: the largest fitted budget <= B, refused outside the
    fitted range) and the bank budget it was fitted for; a budget served by another entry is said on stderr."""
    bank = dict(zip(model.config.scheduler_budgets or [], model.eenet_schedulers))
    served = {b: model.get_exit_policy(b) for b in budgets}
    served_by = {b: next(fb for fb, s in bank.items() if s is served[b]) for b in budgets}
    for b, fb in served_by.items():
        if fb != b:
            print(f"budget {b:g} is served by the bank's {fb:g} scheduler", file=sys.stderr)
    return served, served_by


#: the data options that texts given to ``predict`` replace (data sources and their text columns)
_TEXTS_REPLACE = {"dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file",
                  "text_column_names", "text_column_delimiter"}


def cmd_predict(argv) -> None:
    from .data import DataArguments
    from .recipe import parse_budgets, write_predictions

    args, data_args, ns = _parse("predict", PredictArguments, argv)
    if ns.texts:  # texts to classify: a config file's data files and text columns (a preset's) are not needed
        from_config = sorted(set(getattr(data_args, "_from_config", ())) & _TEXTS_REPLACE)
        for name in from_config:
            setattr(data_args, name, DataArguments.__dataclass_fields__[name].default)
        if from_config:
            print(f"note: texts given: the config file's data options ({', '.join(from_config)}) are not used",
                  file=sys.stderr)
    if ns.texts and data_args.has_data():
        raise CLIError("give texts or data flags (--test_file / --dataset_name), not both")
    if not ns.texts and not data_args.has_data():
        raise CLIError("give texts to classify, or a test split (--test_file or --dataset_name)")
    _check_writable(args.output_file, "--output_file")
    if args.budget is not None and args.budgets:
        raise CLIError("give --budget (one budget) or --budgets (several), not both")
    model, tok = _load_model(ns.model_dir)
    max_length = _serving_length(model, tok, data_args, "predict")
    if ns.texts:
        from transformers import pipeline

        if args.output_file or data_args.text_column_names:
            flag = "--output_file" if args.output_file else "--text_column_names"
            raise CLIError(f"{flag} is for a test split (--test_file); texts given as arguments are classified as "
                           "they are and printed")
        if model.config.sentence_pairs:
            raise CLIError("the model was trained on sentence pairs: give them as a --test_file with two "
                           "--text_column_names (texts on the command line are single texts)")
        clf = pipeline("text-classification", model=model, tokenizer=tok)
        budgets = parse_budgets(args.budgets) if args.budgets else [args.budget]
        if model.config.scheduler_budgets:
            _served(model, [b for b in budgets if b is not None])
        cfg = model.config  # no budget: the pipeline's default, the config's default budget else the largest fitted
        default = cfg.default_budget if cfg.default_budget is not None else (
            cfg.scheduler_budgets[-1] if cfg.scheduler_budgets else None)
        for b in budgets:  # None: the default budget (the full model without a bank)
            kw = {"budget": b} if b is not None else {}
            out = clf(ns.texts, batch_size=args.batch_size, truncation=True, max_length=max_length, **kw)
            for text, res in zip(ns.texts, out):
                print(json.dumps({"text": text, "budget": b if b is not None else default, **res}))
        return
    from .data import DataError

    try:
        trainer, data, enc = _trainer_and_data(model, tok, data_args, ns.model_dir, _seed(args, ns.model_dir),
                                               args.batch_size, need=("test",))
    except DataError as err:  # predictions need no labels: labels the model cannot read are left out, not fatal
        if "label" not in str(err):
            raise
        trainer, data, enc = _trainer_and_data(model, tok, data_args, ns.model_dir, _seed(args, ns.model_dir),
                                               args.batch_size, need=("test",), use_labels=False)
        print(f"note: labels not read ({err}); writing predictions without true labels", file=sys.stderr)
    budgets = parse_budgets(args.budgets) if args.budgets else [args.budget] if args.budget is not None else None
    if budgets and model.config.scheduler_budgets:
        _served(model, budgets)
    probs, labels = trainer.collect_exit_predictions(enc["test"], require_labels=False)
    out = args.output_file or sys.stdout  # the stream itself: opening /dev/stdout with "w" truncates a >> target
    n = write_predictions(out, model, probs, budgets, labels=labels, texts=data.texts("test"))
    if args.output_file:
        print(f"wrote {n} predictions to {args.output_file}")


@dataclass
class RematchArguments:
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "batch size of the prediction pass"})
    seed: int | None = field(default=None, metadata={"help": "seed (of a hold-out, if the data flags make one); "
                                                           "default: the model's training seed, else 0"})


def cmd_rematch(argv) -> dict:
    args, data_args, ns = _parse("rematch", RematchArguments, argv)
    if not data_args.test_file and not data_args.dataset_name:
        raise CLIError("give the traffic sample as --test_file (or --dataset_name with its test split); labels are "
                       "not needed")
    model, tok = _load_model(ns.model_dir)
    if not model.config.scheduler_budgets:
        raise CLIError(f"{ns.model_dir} has no fitted scheduler bank to re-match (hf-eenet fit-scheduler first)")
    from .configuration_eenet import max_input_tokens

    # the traffic is truncated as the model serves it (max_input_tokens): a bank re-matched on other inputs than it
    # serves would miss its budget on long texts
    served = max_input_tokens(model.config, tok)
    if data_args.max_seq_length not in (None, served):
        raise CLIError(f"--max_seq_length {data_args.max_seq_length} (a flag or the config file): re-matching reads "
                       f"the traffic as the model serves it ({served} tokens); drop it")
    data_args.max_seq_length = served
    # labels are not needed (costs only): a label column, even with labels the model does not know, is not read
    trainer, _, enc = _trainer_and_data(model, tok, data_args, ns.model_dir, _seed(args, ns.model_dir),
                                        args.per_device_eval_batch_size, need=("test",), use_labels=False)
    info = trainer.rematch_budgets(enc["test"])
    model.save_pretrained(ns.model_dir)  # atomic; keeps the tokenizer and training_args.json (how it was trained)
    from .model_card import mark_card_stale

    mark_card_stale(ns.model_dir, model, f"re-matched on {len(enc['test'])} traffic rows")
    _drop_stale_bank_outputs(ns.model_dir)
    from .reporting import budget_key
    for b, r in info.items():
        print(f"budget {budget_key(b)}: cost on these {r['rows']} rows {r['cost_before'] / b:.3f} x budget with the "
              f"validation thresholds -> {r['cost_after'] / b:.3f} x re-matched (sampling error of these rows: "
              f"± {100 * r['cost_standard_error'] / b:.1f} % of the budget)")
    print(f"re-matched the scheduler bank on {len(enc['test'])} rows (saved in {ns.model_dir})")
    return info


def _preset_backbones():
    """``recipes.presets.resolve_backbone`` of the repository checkout (offline copies of the presets' Hub
    backbones), or ``None`` outside a checkout (an installed package): names then go to ``from_pretrained`` as given."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "recipes" / "presets.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from recipes.presets import resolve_backbone
    except ImportError:
        return None
    return resolve_backbone


def cmd_train(argv) -> dict:
    from .recipe import main as recipe_main

    return recipe_main(argv, prog="hf-eenet train", resolve_model=_preset_backbones())


def cmd_demo(argv) -> None:
    """Run the recipe's SST-2 preset on a training subset, fit the bank, print the table, run the
    pipeline."""
    p = argparse.ArgumentParser(prog="hf-eenet demo", description=COMMANDS["demo"])
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--train_samples", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from transformers import pipeline

    from .recipe import main as recipe_main

    root = Path(__file__).resolve().parents[1]
    preset = root / "recipes" / "presets" / "sst2.json"
    if not preset.is_file():
        raise CLIError(f"the demo uses the SST-2 preset of the repository checkout ({preset} not found)")
    resolve_backbone = _preset_backbones()
    from recipes.presets import data_arguments

    data = data_arguments("sst2")
    t0 = time.perf_counter()
    out = args.output_dir
    recipe_main([str(preset), "--train_file", data.train_file, "--validation_file", data.validation_file,
                 "--test_file", data.test_file, "--output_dir", out, "--results_dir", out,
                 "--max_train_samples", str(args.train_samples), "--shuffle_train_dataset", "--do_predict", "false",
                 "--budgets", "0.3,0.4,0.5,0.6,0.7,0.8", "--learning_rate", "1e-4", "--logging_steps", "25",
                 "--seed", str(args.seed)], prog="hf-eenet demo", resolve_model=resolve_backbone)
    clf = pipeline("text-classification", model=out)
    examples = ["a gripping , funny and deeply moving film .", "the plot is thin and the jokes are stale .",
                "not the best of the series , but it has its moments ."]
    for budget in (0.3, 0.5, 0.8):
        print(f"\npipeline, budget {budget}:")
        for text, res in zip(examples, clf(examples, budget=budget, batch_size=3)):
            print(f"  {res['label']:8s} {res['score']:.3f}  exit layer {res['exit_layer']}  cost {res['cost']:.2f}"
                  f"  | {text}")
    print(f"\ndemo wall time: {time.perf_counter() - t0:.0f} s (model, results.json, plot and card in {out})")


HANDLERS = {"train": cmd_train, "fit-scheduler": cmd_fit_scheduler, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "rematch": cmd_rematch, "demo": cmd_demo}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (``hf-eenet --help``); each command parses its own flags (``hf-eenet CMD --help``)."""
    p = argparse.ArgumentParser(prog="hf-eenet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def console_main() -> int:
    """The ``hf-eenet`` console script: exit code 0 on success (``main`` returns results dicts for Python callers;
    ``sys.exit(dict)`` would print the dict and exit with 1)."""
    main()
    return 0


def main(argv=None):
    from .data import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in HANDLERS:
        build_parser().parse_args(argv)  # prints help / the usage error and exits
        return None
    try:
        return HANDLERS[argv[0]](argv[1:])
    except (CLIError, DataError, ValueError, OSError) as err:  # OSError: files, permissions, a model not found
        if os.environ.get("HF_EENET_TRACEBACK"):
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hf-eenet {argv[0]}: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
