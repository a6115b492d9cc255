"""Worker for test_ddp_two_processes_identical_weights: a few EENetTrainer steps under torchrun (gloo, CPU)."""

import faulthandler
import os
from pathlib import Path

# before the heavy imports: the test kills ranks by these pids on a timeout (torchrun starts each rank in a session
# of its own, so killing the launcher's process group does not reach them), and a rank that hangs anywhere from here
# on (imports, rendezvous, collectives, shutdown) prints every thread's stack and exits
if os.environ.get("EENET_DDP_OUT"):
    (Path(os.environ["EENET_DDP_OUT"]) / f"pid.{os.getpid()}").write_text("")
if float(os.environ.get("EENET_DDP_WATCHDOG_S", 0)):
    faulthandler.dump_traceback_later(float(os.environ["EENET_DDP_WATCHDOG_S"]), exit=True)

import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import Dataset  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

import hf_eenet  # noqa: E402
from conftest import tiny_kwargs  # noqa: E402


def main():
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


if __name__ == "__main__":
    main()
