"""Worker for test_ddp_two_processes_identical_weights: a few EENetTrainer steps under torchrun (gloo, CPU)."""

import faulthandler
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import Dataset  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

import hf_eenet  # noqa: E402
from conftest import tiny_kwargs  # noqa: E402


def main():
    watchdog = float(os.environ.get("EENET_DDP_WATCHDOG_S", 0))
    if watchdog:  # a hung rendezvous or collective: print every thread's stack and exit instead of waiting forever
        faulthandler.dump_traceback_later(watchdog, exit=True)
    out = Path(os.environ["EENET_DDP_OUT"])
    torch.manual_seed(0)
    model = hf_eenet.EENetBertForSequenceClassification(hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2)))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (64, 12), generator=g)
    labels = (ids[:, 1] > 60).long()
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 64, "labels": labels.tolist()})
    args = TrainingArguments(output_dir=str(out / "run"), per_device_train_batch_size=8, max_steps=4,
                             learning_rate=1e-3, report_to=[], use_cpu=True, ddp_backend="gloo", save_strategy="no",
                             disable_tqdm=True, seed=0)
    trainer = hf_eenet.EENetTrainer(model=model, args=args, train_dataset=ds)
    result = trainer.train()
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    moved = any(not torch.equal(init[k], v) for k, v in model.state_dict().items())
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "checksum": h.hexdigest(), "steps": result.global_step, "moved": moved,
        "world_size": trainer.args.world_size}))
    import torch.distributed as dist

    if dist.is_initialized():  # shut the process group down before exit (its threads can abort a bare exit)
        dist.barrier()
        dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
