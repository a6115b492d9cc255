"""``hf-eenet`` (or ``python -m hf_eenet``): train, fit-scheduler, evaluate, predict and demo.

Examples::

    hf-eenet demo                                        # ~10 min on 2 CPU cores, fully offline
    hf-eenet train --dataset sst2 --output_dir outputs/sst2 --do_train --num_train_epochs 1
    hf-eenet fit-scheduler outputs/sst2 --dataset sst2 --budgets 0.3,0.5,0.7
    hf-eenet evaluate outputs/sst2 --dataset sst2 --budgets 0.3,0.5,0.7
    hf-eenet predict outputs/sst2 "a gripping , funny film" "dull" --budget 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _budgets(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"budgets must be comma-separated numbers, got {s!r}") from err


def _load(model_dir: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_eenet  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if not hasattr(model, "exit_forward"):
        raise SystemExit(f"{model_dir} is not an hf_eenet early-exit model ({type(model).__name__})")
    return model, AutoTokenizer.from_pretrained(model_dir)


def _eval_trainer(model, tok, dataset, args):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from .data import default_data_dir, load_task
    from .trainer import EENetTrainer

    ds = load_task(dataset, args.data_dir or default_data_dir(), seed=args.seed)
    enc = ds.map(lambda b: tok(b["text"], truncation=True, max_length=args.max_length), batched=True,
                 remove_columns=["text"]).rename_column("label", "labels")
    targs = TrainingArguments(output_dir=args.model_dir, per_device_eval_batch_size=64, report_to=[], use_cpu=True)
    trainer = EENetTrainer(model=model, args=targs, eval_dataset=enc["validation"], processing_class=tok,
                           data_collator=DataCollatorWithPadding(tok))
    return trainer, enc


def cmd_fit_scheduler(args) -> None:
    model, tok = _load(args.model_dir)
    trainer, _ = _eval_trainer(model, tok, args.dataset, args)
    info = trainer.fit_scheduler(budgets=args.budgets, seed=args.seed)
    model.save_pretrained(args.model_dir)
    for b, r in info.items():
        print(f"budget {b:.2f}: validation accuracy {100 * r['validation']['accuracy']:.2f}, "
              f"cost {r['validation']['mean_cost']:.3f}, fit {r['fit_seconds']:.1f}s")


def cmd_evaluate(args) -> None:
    from .reporting import compare_policies, results_table

    model, tok = _load(args.model_dir)
    trainer, enc = _eval_trainer(model, tok, args.dataset, args)
    val_probs, val_labels = trainer.collect_exit_predictions(enc["validation"])
    test_probs, test_labels = trainer.collect_exit_predictions(enc["test"])
    bank = dict(zip(model.config.scheduler_budgets, model.eenet_schedulers))
    budgets = args.budgets or list(model.config.scheduler_budgets)
    res = compare_policies(val_probs, val_labels, test_probs, test_labels, list(model.config.exit_costs), budgets,
                           seed=args.seed, schedulers=bank)
    print(results_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=float)


def cmd_predict(args) -> None:
    from transformers import pipeline

    model, tok = _load(args.model_dir)
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    kw = {"budget": args.budget} if args.budget is not None else {}
    for text, res in zip(args.texts, clf(args.texts, batch_size=args.batch_size, **kw)):
        print(json.dumps({"text": text, **res}))


def cmd_train(rest: list[str]) -> None:
    from .recipe import main as recipe_main

    recipe_main(rest)


def cmd_demo(args) -> None:
    """Fine-tune a 6-exit MiniLM on an SST-2 subset, fit the bank, print the table, run the pipeline."""
    from transformers import TrainingArguments, pipeline

    from .recipe import EENetArguments, run

    t0 = time.perf_counter()
    out = args.output_dir
    rargs = EENetArguments(dataset="sst2", data_dir=args.data_dir, max_train_samples=args.train_samples,
                           max_length=64, budgets="0.3,0.4,0.5,0.6,0.7,0.8", cost_profile="latency")
    targs = TrainingArguments(output_dir=out, do_train=True, num_train_epochs=1, per_device_train_batch_size=32,
                              per_device_eval_batch_size=128, learning_rate=1e-4, warmup_steps=0.06,
                              weight_decay=0.01, logging_steps=25, save_strategy="no", eval_strategy="no",
                              report_to=[], seed=args.seed, use_cpu=True, dataloader_num_workers=0)
    run(rargs, targs, command="hf-eenet demo " + " ".join(sys.argv[2:]))
    clf = pipeline("text-classification", model=out)
    examples = ["a gripping , funny and deeply moving film .", "the plot is thin and the jokes are stale .",
                "not the best of the series , but it has its moments ."]
    for budget in (0.3, 0.5, 0.8):
        print(f"\npipeline, budget {budget}:")
        for text, res in zip(examples, clf(examples, budget=budget, batch_size=3)):
            print(f"  {res['label']:8s} {res['score']:.3f}  exit layer {res['exit_layer']}  cost {res['cost']:.2f}"
                  f"  | {text}")
    print(f"\ndemo wall time: {time.perf_counter() - t0:.0f} s (model, results.json, plot and card in {out})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-eenet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run the recipe (all flags: hf-eenet train --help)", add_help=False)

    def common(sp, budgets_required=False):
        sp.add_argument("model_dir", help="a folder written by the recipe / EENetTrainer.save_model")
        sp.add_argument("--dataset", default="sst2", choices=["sst2", "ag_news"])
        sp.add_argument("--data_dir", default=None, help="local data folder (default $EENET_DATA_DIR / ../shared/data)")
        sp.add_argument("--budgets", type=_budgets, default=None if not budgets_required else [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                        help="comma-separated fractions of the full cost")
        sp.add_argument("--max_length", type=int, default=128)
        sp.add_argument("--seed", type=int, default=0)

    fs = sub.add_parser("fit-scheduler", help="fit the EENet scheduler bank on the validation split and save it")
    common(fs, budgets_required=True)
    ev = sub.add_parser("evaluate", help="EENet vs baselines vs oracle on the test split")
    common(ev)
    ev.add_argument("--json", default=None, help="also write the results here")
    pr = sub.add_parser("predict", help="classify texts with the budgeted pipeline")
    pr.add_argument("model_dir")
    pr.add_argument("texts", nargs="+")
    pr.add_argument("--budget", type=float, default=None, help="fraction of the full cost (default: config's)")
    pr.add_argument("--batch_size", type=int, default=8)
    de = sub.add_parser("demo", help="offline end-to-end demo on an SST-2 subset (a few minutes on 2 cores)")
    de.add_argument("--output_dir", default="outputs/demo")
    de.add_argument("--data_dir", default=None)
    de.add_argument("--train_samples", type=int, default=6000)
    de.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    {"fit-scheduler": cmd_fit_scheduler, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo}[
        args.command](args)


if __name__ == "__main__":
    main()
