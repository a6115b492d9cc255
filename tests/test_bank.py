"""Integrity of the budget → scheduler bank (issue 10): what each scheduler was fitted for is recorded and verified on
load, add, cost changes and serving; saves are atomic; float64 through dtype casts; the Hub round trip honours
``budget=`` with and without hf_eenet; ``import hf_eenet`` leaves non-EENet pipelines alone."""

import copy
import json
import re
import math
import os
import socket
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import ROOT, random_batch, tiny_kwargs, tiny_model
from safetensors.torch import load_file, save_file

import hf_eenet
from hf_eenet.bank import BankIntegrityError, SchedulerBank, data_fingerprint
from hf_eenet.scheduler import EENetScheduler

FAST = dict(restarts=1, max_epochs=6)
BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_eenet" or name.startswith("hf_eenet."):
            raise ImportError("hf_eenet is blocked in this test")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", {root!r})]
"""


def clean_env(tmp_path):
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
            "HF_HOME": str(tmp_path / "hf_home")}


def all_exit_probs(model, batch):
    with torch.no_grad():
        return torch.softmax(model(**batch).exit_logits.float(), -1)


def fitted_model(budgets=(0.5, 0.8), seed=0, n=64, costs=None, **over):
    model = tiny_model(layers=4, num_labels=3, seed=seed, **over)
    batch = random_batch(n=n, seed=seed)
    probs = all_exit_probs(model, batch)
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    costs = costs or model.config.exit_costs
    scheds = {b: EENetScheduler(**FAST).fit(probs, labels, costs, b) for b in budgets}
    model.set_scheduler_bank(scheds, data_fingerprint=data_fingerprint(probs, labels))
    return model, batch, probs, labels


def outputs(model, batch, budget):
    with torch.no_grad():
        out = model(**batch, budget=budget)
    return out.exit_index.tolist(), out.logits


# ------------------------------------------------------------------------------------------------- 1: load / save
def test_records_saved_and_verified_roundtrip(tmp_path):
    model, batch, probs, labels = fitted_model()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert [r["budget"] for r in cfg["scheduler_bank"]] == cfg["scheduler_budgets"] == [0.5, 0.8]
    rec = cfg["scheduler_bank"][0]
    assert rec["costs"] == pytest.approx(model.config.exit_costs) and rec["num_exits"] == 4 and rec["num_classes"] == 3
    assert rec["data_fingerprint"] == data_fingerprint(probs, labels) and rec["state_sha256"]
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert outputs(loaded, batch, 0.5)[0] == outputs(model, batch, 0.5)[0]


def test_interrupted_save_leaves_old_state_loadable(tmp_path):
    old, batch, _, _ = fitted_model(budgets=(0.5, 0.8))
    old.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").write_text("{}")  # a file the model save does not write: kept
    expect = {b: outputs(old, batch, b)[0] for b in (0.5, 0.8)}
    new, _, _, _ = fitted_model(budgets=(0.4, 0.6, 0.9), seed=1)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    with mock.patch("transformers.modeling_utils.safe_save_file", boom), pytest.raises(OSError, match="disk full"):
        new.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary folder left behind
    loaded = type(old).from_pretrained(tmp_path / "m").eval()
    assert loaded.config.scheduler_budgets == [0.5, 0.8]
    assert {b: outputs(loaded, batch, b)[0] for b in (0.5, 0.8)} == expect
    new.save_pretrained(tmp_path / "m")  # a save that completes replaces the state and keeps the other files
    assert type(old).from_pretrained(tmp_path / "m").config.scheduler_budgets == [0.4, 0.6, 0.9]
    assert (tmp_path / "m" / "tokenizer.json").exists()


def test_save_through_a_symlink_updates_the_linked_folder(tmp_path):
    old, batch, _, _ = fitted_model(budgets=(0.5, 0.8))
    new, _, _, _ = fitted_model(budgets=(0.4, 0.6, 0.9), seed=1)
    old.save_pretrained(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    new.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink(), "the link must stay a link"
    assert type(old).from_pretrained(tmp_path / "real").config.scheduler_budgets == [0.4, 0.6, 0.9]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"], "no backup or temporary folder left behind"


@pytest.mark.parametrize("case", ["parent_not_writable", "mount_point"])
def test_save_where_the_folder_cannot_be_swapped_replaces_files_and_keeps_old_state_on_failure(tmp_path, case):
    """A folder whose parent is read-only, or a mount point (rename: EBUSY): the save still works (files replaced
    one by one), an interrupted write still leaves the old state, and stale weight files go."""
    import errno
    import tempfile

    old, batch, _, _ = fitted_model(budgets=(0.5, 0.8))
    new, _, _, _ = fitted_model(budgets=(0.4, 0.6, 0.9), seed=1)
    target = tmp_path / "m"
    old.save_pretrained(target)
    (target / "tokenizer.json").write_text("{}")
    (target / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    expect = {b: outputs(old, batch, b)[0] for b in (0.5, 0.8)}
    real_mkdtemp, real_rename = tempfile.mkdtemp, os.rename

    def mkdtemp(*a, dir=None, **k):
        if case == "parent_not_writable" and os.path.realpath(dir) == os.path.realpath(tmp_path):
            raise PermissionError(errno.EACCES, "read-only parent (simulated)", str(tmp_path))
        return real_mkdtemp(*a, dir=dir, **k)

    def rename(src, dst):
        if case == "mount_point" and os.path.realpath(src) == os.path.realpath(target):
            raise OSError(errno.EBUSY, "device or resource busy (simulated)", str(src))
        return real_rename(src, dst)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    with mock.patch("tempfile.mkdtemp", mkdtemp), mock.patch("os.rename", rename):
        with mock.patch("transformers.modeling_utils.safe_save_file", boom), pytest.raises(OSError, match="disk"):
            new.save_pretrained(target)
        assert {b: outputs(type(old).from_pretrained(target).eval(), batch, b)[0] for b in (0.5, 0.8)} == expect
        new.save_pretrained(target)
    assert type(old).from_pretrained(target).config.scheduler_budgets == [0.4, 0.6, 0.9]
    assert (target / "tokenizer.json").exists() and not (target / "model-00002-of-00002.safetensors").exists()
    assert not [e for e in os.listdir(target) if e.startswith(".")] and sorted(os.listdir(tmp_path)) == ["m"]


def _rewrite_weights(folder, edit):
    path = Path(folder) / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_scheduler_tensors_raise(tmp_path):
    model, _, _, _ = fitted_model()
    model.save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda t: [t.pop(k) for k in list(t) if k.startswith("eenet_schedulers.1.")])
    with pytest.raises(BankIntegrityError, match="missing"):
        type(model).from_pretrained(tmp_path)


def test_only_the_fitted_flag_missing_raises(tmp_path):
    model, _, _, _ = fitted_model()
    model.save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("eenet_schedulers.0.fitted"))
    with pytest.raises(BankIntegrityError, match="missing"):
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("key", ["exit_thresholds", "utility.1.weight"])
def test_nan_scheduler_state_raises_on_load(tmp_path, key):
    model, _, _, _ = fitted_model()
    model.save_pretrained(tmp_path)

    def poison(t):
        t[f"eenet_schedulers.0.{key}"] = t[f"eenet_schedulers.0.{key}"].clone().fill_(float("nan"))

    _rewrite_weights(tmp_path, poison)
    with pytest.raises(BankIntegrityError, match="NaN|not finite"):
        type(model).from_pretrained(tmp_path)


def test_edited_config_budgets_raise(tmp_path):
    model, _, _, _ = fitted_model()
    model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    edited = {**cfg, "scheduler_budgets": [0.3, 0.5]}
    cfg_path.write_text(json.dumps(edited))
    with pytest.raises(BankIntegrityError, match="scheduler_budgets"):
        type(model).from_pretrained(tmp_path)
    # budgets edited consistently in both lists: the schedulers themselves say what they were fitted for
    edited["scheduler_bank"] = [{**r, "budget": b} for r, b in zip(cfg["scheduler_bank"], [0.3, 0.5])]
    cfg_path.write_text(json.dumps(edited))
    with pytest.raises(BankIntegrityError, match="fitted for budget 0.5"):
        type(model).from_pretrained(tmp_path)
    # a default budget the bank does not serve: refused on load, not at the first call without budget=
    cfg_path.write_text(json.dumps({**cfg, "default_budget": min(cfg["scheduler_budgets"]) / 2}))
    with pytest.raises(BankIntegrityError, match="default_budget"):
        type(model).from_pretrained(tmp_path)


def test_bank_saved_before_new_config_keys_still_loads_but_edited_keys_do_not(tmp_path):
    """A bank saved by an earlier version has no ``selection_folds`` / ``selection_margin`` (fitting-only keys added
    later): it loads and serves the same exits. A changed value of a key it does have is still refused."""
    model, batch, _, _ = fitted_model()
    model.save_pretrained(tmp_path)
    before = outputs(model, batch, 0.5)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    new_keys = ("selection_folds", "selection_margin")
    assert all(k in cfg["scheduler_config"] for k in new_keys)
    old = {**cfg, "scheduler_config": {k: v for k, v in cfg["scheduler_config"].items() if k not in new_keys},
           "scheduler_bank": [{**r, "scheduler_config": {k: v for k, v in r["scheduler_config"].items()
                                                         if k not in new_keys}} for r in cfg["scheduler_bank"]]}
    cfg_path.write_text(json.dumps(old))
    loaded = type(model).from_pretrained(tmp_path)
    after = outputs(loaded, batch, 0.5)
    assert after[0] == before[0] and torch.allclose(after[1], before[1])
    edited = {**old, "scheduler_bank": [{**r, "scheduler_config": {**r["scheduler_config"], "rho": 3.0}}
                                        for r in old["scheduler_bank"]]}
    cfg_path.write_text(json.dumps(edited))
    with pytest.raises(BankIntegrityError, match="scheduler config"):
        type(model).from_pretrained(tmp_path)


def test_an_unrelated_optimizer_step_costs_a_sample_not_a_digest_and_a_moved_sample_is_digested():
    """After an optimizer step that held none of the model's parameters (another model, temperature scaling over a
    plain tensor), the next request compares a sample of the weights and digests them only when it moved: a served
    model is not re-hashed for every unrelated step. The sample holds an element of every row and every column of
    each matrix, so a master-copy step that trains a few new token rows, and a ``.data`` edit of a few rows or of one
    column followed by any step, are seen (matrices here are larger than the part of a tensor read whole)."""
    model, batch, _, _ = fitted_model(vocab_size=30522, intermediate_size=256)
    original = copy.deepcopy(model.state_dict())
    layer = model.bert.encoder.layer[1]
    assert min(layer.output.dense.weight.numel(), layer.intermediate.dense.weight.numel()) > 4096
    digests = []
    real = hf_eenet.bank._matches

    def unrelated_step():
        t = torch.nn.Parameter(torch.ones(3))
        t.grad = torch.ones_like(t)
        torch.optim.SGD([t], lr=0.1).step()

    with mock.patch.object(hf_eenet.bank, "_matches", lambda items, want: digests.append(1) or real(items, want)):
        model(**batch, budget=0.5)
        digests.clear()
        for unrelated in (torch.ones(3, requires_grad=True), torch.nn.Parameter(torch.ones(3))):
            for _ in range(3):
                unrelated.grad = torch.ones_like(unrelated)
                torch.optim.SGD([unrelated], lr=0.1).step()
                model(**batch, budget=0.5)
        assert digests == []
        embeddings = model.bert.embeddings.word_embeddings.weight
        edits = {
            "new token rows initialised": lambda: embeddings.data[-3:].normal_(generator=torch.Generator().manual_seed(1)),
            "an output neuron pruned": lambda: layer.intermediate.dense.weight.data[5].zero_(),
            "an input feature pruned": lambda: layer.output.dense.weight.data[:, 7].zero_(),
        }
        for name, edit in edits.items():
            model.load_state_dict(original)
            model(**batch, budget=0.5)
            digests.clear()
            edit()  # no event: the verdict stands until one (documented)
            model(**batch, budget=0.5)
            assert digests == [], name
            unrelated_step()
            with pytest.raises(BankIntegrityError, match="fitted for other weights"):
                model(**batch, budget=0.5)
            assert digests == [1], name
        # a master-copy step that trains 10 new token rows alone (AdamW without weight decay: the rest stays)
        model.load_state_dict(original)
        model(**batch, budget=0.5)
        master = embeddings.detach().clone().requires_grad_()
        master.grad = torch.zeros_like(master)
        master.grad[-10:] = 1.0
        torch.optim.AdamW([master], lr=1e-3, weight_decay=0.0).step()
        embeddings.data.copy_(master.detach())
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model(**batch, budget=0.5)


@pytest.mark.parametrize("shape", [(64, 100), (100, 64), (3, 4096), (587, 69), (4, 30, 50), (5000,), (1, 5000),
                                   (5000, 1)])
def test_the_weights_sample_sees_a_change_of_any_row_or_any_column(shape):
    """The sample behind the cheap check after an unrelated event holds an element of every row and every column of
    each tensor (seen as ``[rows, last dimension]``; small tensors and vectors whole), in either memory layout (a
    transposed or tied view): a change confined to one row or one column always moves it. Quantised tensors are
    refused (the caller runs the full check)."""
    from hf_eenet.weight_events import weight_sample

    base = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def check(t, grid):  # grid: a [rows, columns] view of t's elements (writes go to t)
        before = weight_sample([t])[0]
        assert torch.equal(weight_sample([t.clone()])[0], before)
        for axis in (0, 1):
            for i in range(grid.shape[axis]):
                line = grid[i] if axis == 0 else grid[:, i]
                saved = line.clone()
                line.add_(1.0)
                assert not torch.equal(weight_sample([t])[0], before), (axis, i)
                line.copy_(saved)
        assert torch.equal(weight_sample([t])[0], before)

    t = base.clone()
    check(t, t.view(-1, shape[-1]) if len(shape) > 1 else t.view(1, -1))
    if len(shape) == 2:
        transposed = base.t().contiguous().t()  # the same values, column-major
        check(transposed, transposed)
    with pytest.raises(TypeError, match="cannot sample"):
        weight_sample([torch.quantize_per_tensor(torch.ones(10), 0.1, 0, torch.qint8)])


def test_a_weight_event_is_published_after_the_records_of_its_step():
    """A request in another thread that sees a step's event count must also see which tensors the step held (else
    it keeps its verdict for that count, and the stale bank is served until the next event); records of dead tensors
    are pruned and an id reused by another tensor is not taken for the stepped one."""
    from hf_eenet import weight_events

    seen_at_write = []

    class Watch(dict):
        def __setitem__(self, key, value):
            seen_at_write.append((weight_events.events(), value[0]))
            super().__setitem__(key, value)

    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones_like(p)
    with mock.patch.object(weight_events, "_STEPPED", Watch(weight_events._STEPPED)):
        torch.optim.SGD([p], lr=0.1).step()
        assert seen_at_write and all(published < n for published, n in seen_at_write)
        assert weight_events.stepped_since([p], seen_at_write[0][1] - 1)
    with mock.patch.object(weight_events, "_STEPPED", {}), mock.patch.object(weight_events, "_PRUNE_AT", [8]):
        for _ in range(50):
            t = torch.ones(2, requires_grad=True)
            t.grad = torch.ones_like(t)
            torch.optim.SGD([t], lr=0.1).step()
            del t
        assert len(weight_events._STEPPED) <= 16
        q = torch.nn.Parameter(torch.ones(2))
        weight_events._STEPPED[id(q)] = (weight_events.events() + 1, weakref.ref(torch.ones(1)))  # a dead tensor's
        assert not weight_events.stepped_since([q], weight_events.events() - 1)


def test_a_bank_saved_before_weights_were_recorded_serves_unchecked_and_extending_it_says_so(tmp_path):
    """A bank from an older hf_eenet has no ``weights_sha256``: it loads and serves as before (its weights cannot be
    checked); a scheduler added to it warns that the bank stays unchecked until refitted whole, and a refit whole
    records the weights again."""
    model, batch, probs, labels = fitted_model()
    model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scheduler_bank"] = [{k: v for k, v in r.items() if k != "weights_sha256"} for r in cfg["scheduler_bank"]]
    cfg_path.write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = type(model).from_pretrained(tmp_path)
    loaded.classifier.bias.data.add_(0.5)  # other weights: not seen on a bank without the record
    loaded.verify_scheduler_bank()
    loaded(**batch, budget=0.5)
    with pytest.warns(UserWarning, match=r"budgets \[0\.8\] were saved before banks recorded the weights"):
        loaded.add_scheduler(copy.deepcopy(loaded.eenet_schedulers[0]), 0.5)
    loaded.verify_scheduler_bank()  # still unchecked, as the warning says
    loaded.set_scheduler_bank({0.5: copy.deepcopy(loaded.eenet_schedulers[0])})
    loaded.classifier.bias.data.add_(0.5)
    with pytest.raises(BankIntegrityError, match="fitted for other weights"):
        loaded.verify_scheduler_bank()
    # fitted where the weights could not be read (ZeRO-3 / FSDP shards): recorded as None, said so, not "older"
    cfg["scheduler_bank"] = [dict(r, weights_sha256=None) for r in cfg["scheduler_bank"]]
    cfg_path.write_text(json.dumps(cfg))
    loaded = type(model).from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"budgets \[0\.8\] were fitted where the model's weights could not be read"
                      ) as caught:
        loaded.add_scheduler(copy.deepcopy(loaded.eenet_schedulers[0]), 0.5)
    assert not any("older hf_eenet" in str(w.message) for w in caught)


def test_weights_from_another_save_are_detected(tmp_path):
    a, _, _, _ = fitted_model(seed=0)
    b, _, _, _ = fitted_model(seed=3)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(BankIntegrityError, match="not the ones recorded"):
        type(a).from_pretrained(tmp_path / "a")


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_a_model_that_is_not_single_label_is_refused_budgets_and_policies_at_every_entry_point(problem_type):
    """Exit decisions read a softmax over classes; a multi-label or regression model's outputs are not one, so every
    entry point refuses it by name (fit_scheduler always did; serving, adding and re-matching served it silently)."""
    model, batch, probs, _ = fitted_model()
    sched = copy.deepcopy(model.eenet_schedulers[0])
    model.config.problem_type = problem_type
    rows = {k: v.tolist() for k, v in batch.items()}
    calls = {
        "forward(budget=)": lambda: model(**batch, budget=0.5),
        "forward(exit_policy=)": lambda: model(**batch, exit_policy=hf_eenet.MaxProbPolicy([0.5] * 4)),
        "get_exit_policy": lambda: model.get_exit_policy(0.5),
        "early_exit_predict(budget=)": lambda: model.early_exit_predict(rows, budget=0.5),
        "early_exit_predict(exit_policy=)": lambda: model.early_exit_predict(
            rows, exit_policy=hf_eenet.MaxProbPolicy([0.5] * 4)),
        "add_scheduler": lambda: model.add_scheduler(sched, 0.5),
        "rematch_budgets": lambda: model.rematch_budgets(probs),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"single-label classifier.*{problem_type}"):
            call()
    with torch.no_grad():  # the all-exits forward (no decision) is still served
        assert model(**batch).exit_logits.shape[:2] == (64, 4)


def plain_master_step(params, lr=0.01):
    """One SGD step over a flat fp32 copy of ``params`` (a plain tensor, as DeepSpeed ZeRO-1/2 partitions are), written
    back through ``.data`` (no version counter bump); seeded random gradients."""
    master = torch.cat([p.detach().reshape(-1).float() for p in params]).requires_grad_()
    master.grad = torch.randn(master.shape, generator=torch.Generator().manual_seed(master.numel()))
    torch.optim.SGD([master], lr=lr).step()
    offset = 0
    for p in params:
        p.data.copy_(master.detach()[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def parameter_master_step(params, lr=0.01):
    """The same with one ``nn.Parameter`` master per weight (a separate fp32 master model, fairseq style)."""
    masters = [torch.nn.Parameter(p.detach().clone().float()) for p in params]
    for m in masters:
        m.grad = torch.randn(m.shape, generator=torch.Generator().manual_seed(m.numel()))
    torch.optim.SGD(masters, lr=lr).step()
    for p, m in zip(params, masters):
        p.data.copy_(m.detach())


def test_a_bank_fitted_for_other_weights_is_refused_however_the_weights_changed(tmp_path):
    """A bank records the weights it was fitted for (bfloat16/float16-rounded digests): trained after the fit without
    EENetTrainer (here: plain and fused optimizer loops, as transformers.Trainer runs), loaded from such a save, or
    edited in place, the model refuses to serve a budget by name (it served the old thresholds: another cost than
    asked); a cast for serving, other models' training and restoring the weights do not count."""
    model, batch, probs, labels = fitted_model()
    want = outputs(model, batch, 0.5)
    original = copy.deepcopy(model.state_dict())
    for cast in ("half", "bfloat16"):  # serving precision and back: still the weights the bank was fitted for
        model.float().load_state_dict(original)
        getattr(model, cast)()
        model(**batch, budget=0.5)
        model.verify_scheduler_bank()
        model.float()
        model.verify_scheduler_bank()
    model.load_state_dict(original)
    model.half()  # a scheduler added to a cast model joins the bank's record (the bank stays saveable)
    model.add_scheduler(copy.deepcopy(model.eenet_schedulers[0]), 0.5)
    model.save_pretrained(tmp_path / "cast")
    model.float().load_state_dict(original)
    other = tiny_model(layers=2, seed=5)  # another model's optimizer step: nothing changes here
    torch.optim.SGD(other.parameters(), lr=0.1).step()
    assert outputs(model, batch, 0.5)[0] == want[0]

    def train(fused):  # a plain training loop (the stock Trainer's, without hf_eenet's bank removal)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
        for _ in range(2):
            model(**batch, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()

    for fused in (False, True):  # a fused step keeps every tensor's version counter: the hook names the parameters
        model.load_state_dict(original)
        model(**batch, budget=0.5)
        train(fused)
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model(**batch, budget=0.5)
    for call in (lambda: model.get_exit_policy(0.8), lambda: model.verify_scheduler_bank(),
                 lambda: model.rematch_budgets(probs),
                 lambda: model.add_scheduler(copy.deepcopy(model.eenet_schedulers[0]), 0.5)):
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            call()
    with torch.no_grad():  # an explicit policy and the all-exits forward need no bank
        model(**batch, exit_policy=hf_eenet.MaxProbPolicy([0.9, 0.9, 0.9, 0.0]))
        model(**batch)
    with pytest.warns(UserWarning, match="saving a stale bank"):
        model.save_pretrained(tmp_path / "trained")
    with pytest.warns(UserWarning, match="fitted for other weights.*serving a budget raises"):
        loaded = type(model).from_pretrained(tmp_path / "trained")
    with pytest.raises(BankIntegrityError, match="fitted for other weights"):
        loaded(**batch, budget=0.5)
    # a step over fp32 master copies that the framework writes back through .data: plain tensors (DeepSpeed
    # ZeRO-1/2's flat partitions) or nn.Parameters (a separate master model); seen by the weights' sample
    for master_step in (plain_master_step, parameter_master_step):
        model.load_state_dict(original)
        model(**batch, budget=0.5)
        master_step([p for name, p in model.named_parameters() if not name.startswith("eenet_schedulers.")])
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model(**batch, budget=0.5)
    # the weights the bank was fitted for again: served as before. Changes outside an optimizer and the model's own
    # load_state_dict (a .data write, a submodule's load) are seen by the next check of the whole model
    model.load_state_dict(original)
    assert outputs(model, batch, 0.5)[0] == want[0]
    assert not model.verify_scheduler_bank() is None
    for edit in (lambda: model.classifier.bias.data.copy_(model.classifier.bias.data + 0.5),
                 lambda: model.bert.load_state_dict(other.bert.state_dict(), strict=False)):
        model.load_state_dict(original)
        model(**batch, budget=0.5)
        edit()
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model.verify_scheduler_bank()
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model(**batch, budget=0.5)  # the verdict stands once seen
    # weights rounded twice are other weights (documented); a refit records the weights as they are. A cast swaps
    # param.data (no weight event, no version bump): the verdict a request cached before it is not kept (review 104:
    # float16 then bfloat16 in memory was served, while the same weights saved and loaded were refused)
    # a cast of submodules is seen by the tensors' dtypes (review 105), and a cast there and back between two requests
    # by the model's own _apply; the refusal names the cast as a possible cause when the weights hold 16-bit values
    twice = "fitted for other weights.*weights are bfloat16 values.*rounded twice"
    for second_cast in (lambda m: m.bfloat16(), lambda m: [c.bfloat16() for c in m.children()],
                        lambda m: m.bfloat16().float()):
        model.float().load_state_dict(original)
        model(**batch, budget=0.5)
        model.half()
        model(**batch, budget=0.5)  # cast once: served
        second_cast(model)
        with pytest.raises(BankIntegrityError, match=twice):
            model(**batch, budget=0.5)
        with pytest.raises(BankIntegrityError, match=twice):
            model.verify_scheduler_bank()
    model.float().load_state_dict(original)
    model(**batch, budget=0.5)
    model.to("cpu")  # neither a cast nor a change: the verdict stands without a second check
    verdict = model.__dict__["_eenet_weights_check"]
    model(**batch, budget=0.5)
    assert model.__dict__["_eenet_weights_check"] is verdict
    with torch.no_grad():
        model.classifier.bias.add_(0.5)  # trained-like float32 weights: no cast named
    with pytest.raises(BankIntegrityError, match="fitted for other weights") as err:
        model(**batch, budget=0.5)
    assert "rounded twice" not in str(err.value)
    model.load_state_dict(original)
    model.half().bfloat16()
    model.float()
    new_probs = all_exit_probs(model, batch)
    model.set_scheduler_bank({0.5: EENetScheduler(**FAST).fit(new_probs, labels, model.config.exit_costs, 0.5)})
    model(**batch, budget=0.5)


def test_edits_without_an_optimizer_step_are_seen_by_the_next_request(tmp_path):
    """In-place writes under ``no_grad`` (``nn.init``, an EMA copy-back), a swapped head or Parameter and torch's own
    dynamic quantisation of the encoder change the weights without an optimizer step: the next request refuses the
    budget (they were served with the old thresholds: review 80, 36 of 300 SST-5 labels changed after
    ``quantize_dynamic``). Serving itself is no weight event: the verdict is reused request after request."""
    from hf_eenet import weight_events

    model, batch, _, _ = fitted_model()
    original = copy.deepcopy(model.state_dict())
    model.eval()
    outputs(model, batch, 0.5)
    before = weight_events.events()
    for _ in range(3):
        outputs(model, batch, 0.5)
        model.early_exit_predict(dict(batch), budget=0.8)
    assert weight_events.events() == before, "a request registered a module, parameter or buffer"

    def head_init():
        with torch.no_grad():
            torch.nn.init.normal_(model.exit_heads[0].out_proj.weight)

    def ema_copy_back():
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight * 0.5)

    def swap_head():
        model.exit_heads[1] = copy.deepcopy(tiny_model(layers=4, num_labels=3, seed=9).exit_heads[1])

    def new_parameter():
        model.classifier.weight = torch.nn.Parameter(model.classifier.weight.detach() + 0.5)

    def quantise_encoder():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            torch.ao.quantization.quantize_dynamic(model.bert, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

    for edit in (head_init, ema_copy_back, swap_head, new_parameter, quantise_encoder):
        model = fitted_model()[0].eval()
        outputs(model, batch, 0.5)  # the verdict is cached
        edit()
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            outputs(model, batch, 0.5)
    # the whole model quantised (the bank's own nets too): a clear error, and no save
    model = fitted_model()[0].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    with pytest.raises(BankIntegrityError, match="was quantised .*quantize_dynamic_int8"):
        outputs(model, batch, 0.5)
    with pytest.raises(ValueError, match="int8-quantised"):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    # the weights restored: served again
    model = fitted_model()[0].eval()
    head_init()
    with pytest.raises(BankIntegrityError):
        outputs(model, batch, 0.5)
    model.load_state_dict(original)
    outputs(model, batch, 0.5)


def test_a_model_built_under_inference_mode_installs_and_serves_a_bank():
    """Inference tensors have no version counter: the weights check must neither break the install (it left a
    half-installed bank) nor the serving."""
    with torch.inference_mode():
        model = tiny_model(layers=4, num_labels=3, seed=0)
    batch = random_batch(n=16, seed=0)
    with torch.inference_mode():
        probs = all_exit_probs(model, batch)
    labels = torch.arange(16) % 3
    model.set_scheduler_bank({0.5: EENetScheduler(**FAST).fit(probs.clone(), labels, model.config.exit_costs, 0.5)})
    with torch.inference_mode():
        model(**batch, budget=0.5)
    model.verify_scheduler_bank()
    # inference tensors are written (unseen by any version counter) only in inference mode: a load there is seen
    with torch.inference_mode():
        model.load_state_dict(tiny_model(layers=4, num_labels=3, seed=1).state_dict(), strict=False)
        with pytest.raises(BankIntegrityError, match="fitted for other weights"):
            model(**batch, budget=0.5)


class _ExtraState(torch.nn.Module):  # a module whose state_dict entry is not a tensor (``get_extra_state``)
    def get_extra_state(self):
        return ("version", 2)

    def set_extra_state(self, state):
        pass


def test_the_weights_check_skips_state_that_is_not_a_tensor():
    """(e.g. torch.ao dynamic quantisation's packed parameters): checked, served, never an AttributeError."""
    model, batch, _, labels = fitted_model()
    model.extra = _ExtraState()
    assert "extra._extra_state" in model.state_dict()
    model.eval()
    model(**batch, budget=0.5)
    model.verify_scheduler_bank()
    with torch.no_grad():
        model.classifier.bias.add_(0.5)
    with pytest.raises(BankIntegrityError, match="fitted for other weights"):
        model.verify_scheduler_bank()


# --------------------------------------------------------------------------------------------------- 2: costs drift
def test_add_scheduler_fitted_on_other_costs_raises():
    model, _, probs, labels = fitted_model()
    other = EENetScheduler(**FAST).fit(probs, labels, [0.1, 0.2, 0.3, 1.0], 0.6)
    with pytest.raises(BankIntegrityError, match="exit costs"):
        model.add_scheduler(other, 0.6)
    right = EENetScheduler(**FAST).fit(probs, labels, model.config.exit_costs, 0.6)
    with pytest.raises(BankIntegrityError, match="fitted for budget 0.6"):
        model.add_scheduler(right, 0.7)  # filed under a budget it was not fitted for
    with pytest.raises(BankIntegrityError, match="other validation data"):
        model.add_scheduler(right, 0.6, data_fingerprint="sha256:other")
    model.add_scheduler(right, 0.6, data_fingerprint=data_fingerprint(probs, labels))
    assert model.config.scheduler_budgets == [0.5, 0.6, 0.8]


def test_a_scheduler_loaded_under_inference_mode_joins_a_bank(tmp_path):
    model, batch, probs, labels = fitted_model(budgets=(0.5,))
    model.eenet_schedulers[0].save_pretrained(tmp_path / "s")
    with torch.inference_mode():
        loaded = EENetScheduler.from_pretrained(tmp_path / "s")
    other, _, _, _ = fitted_model(budgets=(0.8,))
    other.add_scheduler(loaded, 0.5)  # was: RuntimeError from autograd in the finite-weights check
    assert torch.equal(other.get_exit_policy(0.5).exit_index(probs), model.get_exit_policy(0.5).exit_index(probs))


def test_add_scheduler_refuses_costs_in_another_unit():
    """``fit`` takes costs in any unit (e.g. latency in ms), but a bank key is a fraction of the full model's cost and
    served policies report budget / planned cost / rematch in that unit: a scheduler fitted in ms is refused, whether
    its raw budget happens to equal the key (0.6 ms = half the cost) or its fraction does (0.72 ms = 60 %)."""
    model, _, probs, labels = fitted_model()
    ms = [c * 1.2 for c in model.config.exit_costs]  # the same exits, c_K = 1.2 ms
    for budget_ms in (0.6, 0.72):
        sched = EENetScheduler(**FAST).fit(probs, labels, ms, budget_ms)
        with pytest.raises(BankIntegrityError, match=r"exit costs in another unit \(last exit 1.2\)"):
            model.add_scheduler(sched, 0.6)
        with pytest.raises(BankIntegrityError, match="another unit"):
            model.set_scheduler_bank({0.6: sched})
    assert model.config.scheduler_budgets == [0.5, 0.8]  # unchanged


def test_set_exit_costs_after_fitting_raises_and_changes_nothing():
    model, _, _, _ = fitted_model()
    before = list(model.config.exit_costs)
    profile = hf_eenet.ExitCostProfile(exit_layers=[1, 2, 3, 4], layers=[1.0, 2.0, 3.0, 10.0])
    with pytest.raises(BankIntegrityError, match="fitted for exit costs"):
        hf_eenet.set_exit_costs(model, profile, "layers")
    assert model.config.exit_costs == before
    model.clear_scheduler_bank()
    assert hf_eenet.set_exit_costs(model, profile, "layers") == [0.1, 0.2, 0.3, 1.0]


def test_serve_check_is_cached_but_sees_in_place_edits():
    """The per-request check is cached per entry state; an in-place edit of a served scheduler or of the config's
    costs after a successful call is still refused before the next call serves it."""
    model, batch, _, _ = fitted_model()
    exits, logits = outputs(model, batch, 0.5)
    exits2, logits2 = outputs(model, batch, 0.5)  # second call: cached check, same answer
    assert exits2 == exits and torch.equal(logits2, logits)
    sched = model.get_exit_policy(0.5)
    with torch.no_grad():
        next(sched.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(BankIntegrityError, match="NaN|not finite"):
        model(**batch, budget=0.5)
    model, batch, _, _ = fitted_model()
    outputs(model, batch, 0.8)
    model.config.exit_costs = [c * 0.5 for c in model.config.exit_costs[:-1]] + [1.0]
    with pytest.raises(BankIntegrityError, match="exit costs"):
        model(**batch, budget=0.8)


def test_edited_costs_are_refused_on_load_and_before_serving(tmp_path):
    model, batch, _, _ = fitted_model()
    model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "exit_costs": [0.1, 0.2, 0.3, 1.0]}))
    with pytest.raises(BankIntegrityError, match="exit costs"):
        type(model).from_pretrained(tmp_path)
    model.config.exit_costs = [0.1, 0.2, 0.3, 1.0]  # edited in memory
    with pytest.raises(BankIntegrityError, match="exit costs"):
        model(**batch, budget=0.5)


def test_a_bank_fitted_on_another_exit_pooling_is_not_served(tmp_path):
    """Every exit's output depends on config.exit_pooling (and where the exits sit), not only on the weights: the
    records keep what the exits read when the bank was fitted. Loaded with another pooling, the model loads (to be
    refitted) with a warning and refuses budgets; so does a config edited in memory; loaded as fitted, or set back,
    it serves as before. Records saved before they kept it are not checked."""
    model, batch, probs, labels = fitted_model()
    assert [(r["exit_layers"], r["exit_pooling"]) for r in model.config.scheduler_bank] == [([1, 2, 3, 4], "cls")] * 2
    want = outputs(model, batch, 0.5)[0]
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"exit heads were trained at exit_pooling cls; loading it with "
                                         r"exit_pooling mean"):  # review 84: the heads would read otherwise
        type(model).from_pretrained(tmp_path, exit_pooling="mean")
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "exit_pooling": "mean"}))  # a config edited on disk
    with pytest.warns(UserWarning, match=r"config.exit_pooling is 'mean' but the bank was fitted with 'cls'.*The "
                                         r"model is loaded"):
        other = type(model).from_pretrained(tmp_path)
    with pytest.raises(BankIntegrityError, match=r"fitted on other exit outputs .*exit_pooling='cls'"):
        other(**batch, budget=0.5)
    with pytest.raises(BankIntegrityError, match="fitted on other exit outputs"):
        other.verify_scheduler_bank()
    mean_probs = all_exit_probs(other, batch)
    with pytest.raises(BankIntegrityError, match="fitted on other exit outputs"):  # not extended under the other
        other.add_scheduler(EENetScheduler(**FAST).fit(mean_probs, labels, other.config.exit_costs, 0.6), 0.6)
    with pytest.raises(BankIntegrityError, match="fitted on other exit outputs"):
        other.rematch_budgets(mean_probs)
    assert other.config.scheduler_budgets == [0.5, 0.8]
    other.config.exit_pooling = "cls"  # set back: served as fitted
    assert outputs(other, batch, 0.5)[0] == want
    model.config.exit_pooling = "mean"  # edited in memory after serving: refused at the next request
    with pytest.raises(BankIntegrityError, match="fitted on other exit outputs"):
        model(**batch, budget=0.5)
    model.config.exit_pooling = "cls"
    # a bank refitted under the new pooling records it and serves
    other.config.exit_pooling = "mean"
    other.set_scheduler_bank({0.5: EENetScheduler(**FAST).fit(mean_probs, labels, other.config.exit_costs, 0.5)})
    assert other.config.scheduler_bank[0]["exit_pooling"] == "mean"
    other(**batch, budget=0.5)
    # a bank saved before records kept what the exits read: served unchecked, as before
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scheduler_bank"] = [{k: v for k, v in r.items() if k not in ("exit_layers", "exit_pooling")}
                             for r in cfg["scheduler_bank"]]
    cfg_path.write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        legacy = type(model).from_pretrained(tmp_path, exit_pooling="mean")
    legacy(**batch, budget=0.5)


def test_save_pretrained_with_a_state_dict_keeps_the_bank_and_checks_its_weights(tmp_path):
    """``save_pretrained(state_dict=...)``: a state dict without the bank's tensors (built from named_parameters(),
    say) replaced a loading folder with one that failed (BankIntegrityError: scheduler tensors missing); one holding
    other weights saved silently. Now the bank's tensors are added from the model, and other weights are warned
    about as a stale bank (review 84)."""
    model, batch, _, _ = fitted_model()
    want = outputs(model, batch, 0.5)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("eenet_schedulers.")}
    model.save_pretrained(tmp_path / "a", state_dict=weights)
    got = outputs(type(model).from_pretrained(tmp_path / "a"), batch, 0.5)
    assert got[0] == want[0] and torch.equal(got[1], want[1])
    other = {k: (v + 1 if k.endswith("classifier.bias") else v) for k, v in weights.items()}
    with pytest.warns(UserWarning, match="saving a stale bank: the scheduler bank was fitted for other weights"):
        model.save_pretrained(tmp_path / "b", state_dict=other)
    with pytest.warns(UserWarning, match="fitted for other weights"):
        loaded = type(model).from_pretrained(tmp_path / "b")
    with pytest.raises(BankIntegrityError):
        loaded(**batch, budget=0.5)
    from hf_eenet.bank import state_dict_for_save

    assert state_dict_for_save(model, {}) == ({}, None)  # an empty gather (ZeRO-3 without gathering) is not "stale"
    part = {k: v for k, v in list(weights.items())[:3]}
    assert state_dict_for_save(model, part) == (part, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own weights, as a 16-bit gather would hold them: no warning
        model.save_pretrained(tmp_path / "c", state_dict={k: v.bfloat16() if v.is_floating_point() else v
                                                          for k, v in weights.items()})


def test_a_save_of_other_exits_removes_weights_of_other_variants(tmp_path):
    """A variant= save of a model with other exits beside older plain weights (or the reverse) replaced config.json and
    kept those weights: a plain load then put their heads into the new exits, with no error when the head count
    matched (review 88). They are removed with the config they belonged to, with a warning; other variants of the same
    layout stay."""
    old = tiny_model(layers=4, exit_layers=[1, 4])
    old.save_pretrained(tmp_path)
    new = tiny_model(layers=4, exit_layers=[2, 4])
    with pytest.warns(UserWarning, match=r"\['model.safetensors'\] are weights of another variant .*exit_layers "
                                         r"\[1, 4\] -> \[2, 4\]"):
        new.save_pretrained(tmp_path, variant="fp16")
    assert not (tmp_path / "model.safetensors").exists()
    with pytest.raises(OSError):  # no plain weights left to load into the wrong exits
        type(new).from_pretrained(tmp_path)
    loaded = type(new).from_pretrained(tmp_path, variant="fp16")
    assert loaded.config.exit_layers == [2, 4] and torch.equal(loaded.exit_heads[0].dense.weight,
                                                                new.exit_heads[0].dense.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new.save_pretrained(tmp_path)  # the same layout in plain: the fp16 variant stays beside it
    assert (tmp_path / "model.fp16.safetensors").exists() and (tmp_path / "model.safetensors").exists()


def test_reusing_a_banked_checkpoint_for_a_new_model_drops_the_bank_with_a_warning(tmp_path):
    """Re-heading a checkpoint for other classes (num_labels= / id2label=, ignore_mismatched_sizes) and building a
    new model from its config (from_config) give models without the bank (fitted for the saved weights and classes),
    that save, train with a stock Trainer's checkpoints and serve without a budget; the saved classes load as saved."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model, batch, _, _ = fitted_model()
    model.save_pretrained(tmp_path / "banked")
    cls = type(model)
    with pytest.warns(UserWarning, match=r"fitted for 3 classes; the model is loaded with 5, so the bank is not"):
        new = cls.from_pretrained(tmp_path / "banked", num_labels=5, ignore_mismatched_sizes=True)
    assert new.config.num_labels == 5 and not new.config.scheduler_budgets and len(new.eenet_schedulers) == 0
    with pytest.warns(UserWarning, match="bank is not loaded"):
        cls.from_pretrained(tmp_path / "banked", id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True)
    new.save_pretrained(tmp_path / "reheaded")
    assert cls.from_pretrained(tmp_path / "reheaded").config.num_labels == 5
    same = cls.from_pretrained(tmp_path / "banked", num_labels=3)  # the saved classes: the bank loads
    assert list(same.config.scheduler_budgets) == [0.5, 0.8]
    # run_classification.py re-heads through a config object: a copy of it loses the bank, the caller's keeps it
    cfg = AutoConfig.from_pretrained(tmp_path / "banked", num_labels=4)
    with pytest.warns(UserWarning, match="bank is not loaded"):
        four = cls.from_pretrained(tmp_path / "banked", config=cfg, ignore_mismatched_sizes=True)
    assert four.config.num_labels == 4 and not four.config.scheduler_budgets and cfg.scheduler_budgets == [0.5, 0.8]
    # from_config keeps the bank's modules (accelerate's init_empty_weights + load_checkpoint_and_dispatch, and
    # load_state_dict(assign=True) fill them); never filled, a save drops it with a warning instead of failing
    shared = AutoConfig.from_pretrained(tmp_path / "banked")
    fresh = AutoModelForSequenceClassification.from_config(shared)
    assert type(fresh) is cls and len(fresh.eenet_schedulers) == 2
    loaded = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tmp_path / "banked"))
    loaded.load_state_dict(model.state_dict())
    assert outputs(loaded.eval(), batch, 0.5)[0] == outputs(model, batch, 0.5)[0]
    with pytest.raises(BankIntegrityError, match="from_config; fit a bank"):
        with torch.no_grad():
            fresh.eval()(**batch, budget=0.5)
    with pytest.warns(UserWarning, match="saving without the scheduler bank: none of its 2 schedulers"):
        fresh.save_pretrained(tmp_path / "fresh")  # (a stock Trainer checkpoint is this save)
    assert not cls.from_pretrained(tmp_path / "fresh").config.scheduler_budgets
    # the model and the config object it shares with its caller (a model_init sweep) are left as they are
    assert fresh.config is shared and shared.scheduler_budgets == [0.5, 0.8] and len(fresh.eenet_schedulers) == 2
    # a fitted model saved with a state dict taken before its fit (unfitted flags there) keeps its bank
    fitted, *_ = fitted_model()
    before = {k: (torch.tensor(False) if k.endswith(".fitted") else v) for k, v in fitted.state_dict().items()}
    fitted.save_pretrained(tmp_path / "early_sd", state_dict=before)
    assert fitted.config.scheduler_budgets == [0.5, 0.8] and len(fitted.eenet_schedulers) == 2
    # a distributed Trainer's save passes the gathered weights: decided on them, and their bank tensors left out
    shell = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tmp_path / "banked"))
    with pytest.warns(UserWarning, match="saving without the scheduler bank"):
        shell.save_pretrained(tmp_path / "gathered", state_dict=shell.state_dict())
    _, info = cls.from_pretrained(tmp_path / "gathered", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    shell = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tmp_path / "banked"))
    with pytest.raises(BankIntegrityError, match="not fitted"):  # fitted bank tensors given: not dropped, refused
        shell.save_pretrained(tmp_path / "mixed", state_dict=model.state_dict())
    assert model.config.scheduler_budgets == [0.5, 0.8]  # the saved model's config is untouched


def test_from_pretrained_kwargs_are_validated(tmp_path):
    plain = tiny_model(layers=6)
    plain.save_pretrained(tmp_path / "plain")
    cls = type(plain)
    with pytest.raises(ValueError, match="exit_layers"):
        cls.from_pretrained(tmp_path / "plain", exit_layers=[2, 4, 5])
    with pytest.raises(ValueError, match=r"exit_pooling must be one of"):
        cls.from_pretrained(tmp_path / "plain", exit_pooling="bogus")
    # a checkpoint of ours asked for exits elsewhere: its heads would load into exits after other layers (review 84)
    moved = cls.config_class.from_pretrained(tmp_path / "plain", exit_layers=[2, 4, 6])
    moved.save_pretrained(tmp_path / "moved_config")
    for over in (dict(exit_layers=[2, 4, 6]), dict(config=moved), dict(config=str(tmp_path / "moved_config"))):
        with pytest.raises(ValueError, match=r"exit heads were trained at exit_layers \[1, 2, 3, 4, 5, 6\]; loading "
                                             r"it with exit_layers \[2, 4, 6\]"):
            cls.from_pretrained(tmp_path / "plain", **over)
    assert cls.from_pretrained(tmp_path / "plain", exit_layers=[1, 2, 3, 4, 5, 6]).config.exit_layers == [1, 2, 3, 4,
                                                                                                         5, 6]
    # a variant save of a model with fewer exits beside the older plain weights: a plain load read the old heads into
    # the new exits silently (review 87); the heads left over name the mix
    # (a save removes such weights now: a folder mixed by hand, or by an older save, is what is left to refuse)
    import shutil

    shutil.copytree(tmp_path / "plain", tmp_path / "mixed")
    tiny_model(layers=6, exit_layers=[3, 6]).config.save_pretrained(tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"weights hold exit heads the config does not place .*load with that variant"):
        cls.from_pretrained(tmp_path / "mixed")
    # the stock model's checkpoint gets new heads wherever asked
    from transformers import BertConfig, BertForSequenceClassification

    stock = BertForSequenceClassification(BertConfig(**{k: getattr(plain.config, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "num_labels")}))
    stock.save_pretrained(tmp_path / "stock")
    m = cls.from_pretrained(tmp_path / "stock", exit_layers=[2, 4, 6])
    assert m.config.exit_costs == pytest.approx(hf_eenet.configuration_eenet.flops_exit_costs(m.config, [2, 4, 6]))
    assert len(m.exit_heads) == 2
    with torch.no_grad():
        out = m(**random_batch(n=3), exit_policy=hf_eenet.StaticPolicy(1, 3))
    assert out.exit_cost.tolist() == pytest.approx([m.config.exit_costs[1]] * 3)
    # measured costs cannot be recomputed for new exits: an error asks for them
    lat = tiny_model(layers=6, exit_costs=[1, 2, 3, 4, 5, 6], exit_cost_profile="latency")
    lat.save_pretrained(tmp_path / "lat")
    with pytest.raises(ValueError, match="measured"):  # (the config alone: the model refuses other exits first)
        cls.config_class.from_pretrained(tmp_path / "lat", exit_layers=[2, 4, 6])
    # through the Auto class the config is built first: its error says that the checkpoint does not load with other
    # exits either way (review 96: it asked for exit_costs=, which then met the model's refusal)
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError, match=r"does not load with other exit_layers either way: its exit heads were "
                                         r"trained at exit_layers \[1, 2, 3, 4, 5, 6\]"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "lat", exit_layers=[2, 4, 6])
    # a fitted bank's model: the heads are named, not the costs (the bank's error advised refitting it on them)
    model, _, _, _ = fitted_model()
    model.save_pretrained(tmp_path / "fitted")
    with pytest.raises(ValueError, match=r"exit heads were trained at exit_layers \[1, 2, 3, 4\]"):
        cls.from_pretrained(tmp_path / "fitted", exit_layers=[2, 4])


# ------------------------------------------------------------------------------------------------------ 3: dtypes
@pytest.mark.parametrize("cast", ["half", "bfloat16", "to"])
def test_scheduler_state_stays_float64_through_casts(cast):
    model, batch, probs, _ = fitted_model()
    expect = [s.exit_index(probs).tolist() for s in model.eenet_schedulers]
    thresholds = [s.thresholds for s in model.eenet_schedulers]
    dtypes = [{n: t.dtype for n, t in s.state_dict().items()} for s in model.eenet_schedulers]
    if cast == "half":
        model.half()
    elif cast == "bfloat16":
        model.bfloat16()
    else:
        model.to(torch.float16)
    assert isinstance(model.eenet_schedulers, SchedulerBank)
    for s, e, t, d in zip(model.eenet_schedulers, expect, thresholds, dtypes):
        # every scheduler tensor keeps the dtype it was fitted in (costs/budget float64; thresholds float32 by design,
        # docs/method.md: midpoint thresholds make float32 decisions equal to float64 ones)
        assert {n: x.dtype for n, x in s.state_dict().items()} == d
        assert s.exit_costs.dtype == torch.float64
        assert s.utility[0].weight.dtype == torch.float32
        assert s.thresholds == t and s.exit_index(probs).tolist() == e
    assert model.bert.embeddings.word_embeddings.weight.dtype != torch.float32
    model.float()
    assert model(**batch, budget=0.5).exit_index is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_pretrained_low_precision_keeps_float64(tmp_path, dtype):
    """bf16 and fp16 loads (a dtype= argument, or dtype "auto" reading a half-precision save): the backbone in that
    dtype, the bank exactly as fitted (float32 heads, float64 thresholds and costs, bool flags)."""
    model, _, probs, _ = fitted_model()
    model.save_pretrained(tmp_path)
    m = type(model).from_pretrained(tmp_path, dtype=dtype)
    assert m.bert.embeddings.word_embeddings.weight.dtype == dtype
    half = copy.deepcopy(model).to(dtype)
    half.save_pretrained(tmp_path / "half")
    h = type(model).from_pretrained(tmp_path / "half")  # dtype "auto": the saved dtype
    assert h.bert.embeddings.word_embeddings.weight.dtype == dtype
    assert h.eenet_schedulers[0].exit_index(probs).tolist() == model.eenet_schedulers[0].exit_index(probs).tolist()
    s = m.eenet_schedulers[0]
    assert {n: x.dtype for n, x in s.state_dict().items()} == {
        n: x.dtype for n, x in model.eenet_schedulers[0].state_dict().items()}
    assert s.exit_costs.dtype == torch.float64
    assert s.exit_index(probs).tolist() == model.eenet_schedulers[0].exit_index(probs).tolist()


# ------------------------------------------------------------------------------------------------------- 7: forward
def test_forward_rejects_hidden_states_attentions_and_unknown_kwargs():
    model = tiny_model(layers=2)
    batch = random_batch(n=2)
    with pytest.raises(NotImplementedError, match="output_hidden_states"):
        model(**batch, output_hidden_states=True)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        model(**batch, output_attentions=True)
    with pytest.raises(TypeError, match="bugdet"):
        model(**batch, bugdet=0.5)
    assert model(**batch, output_hidden_states=False).logits.shape == (2, 3)


# ------------------------------------------------------------------------------------------------- 4: Hub round trip
@pytest.fixture(scope="module")
def hub_model(minilm_dir, tmp_path_factory):
    """A tiny EENet model with the MiniLM tokenizer and a fitted bank, saved with ``model.save_pretrained``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=tok.vocab_size))
    model = hf_eenet.EENetBertForSequenceClassification(cfg).eval()
    texts = [f"text number {i} is {'good' if i % 2 else 'bad'} " * (1 + i % 4) for i in range(80)]
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).exit_logits, -1)
    labels = torch.tensor([i % 2 for i in range(80)])
    model.set_scheduler_bank({b: EENetScheduler(**FAST).fit(probs, labels, cfg.exit_costs, b) for b in (0.5, 0.8)})
    d = tmp_path_factory.mktemp("hub") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return SimpleNamespace(model=model, tok=tok, dir=d, texts=texts[:10])


def test_serving_keywords_that_nothing_takes_are_refused_not_dropped(hub_model):
    """Review 78: a keyword neither the pipeline nor the tokenizer takes (a misspelt ``budgets=``, ``policy=``, the
    removed ``return_all_scores``) went to the tokenizer, which dropped it: the default budget was served. Refused by
    name, with what to pass; tokenizer options still work. An empty list gives [] (its budget= checked); a config
    with return_dict=False gets tuples, as the stock classifier does; int8 needs a float32 model."""
    from transformers import pipeline

    from hf_eenet.quantization import quantize_dynamic_int8

    model, tok, texts = hub_model.model, hub_model.tok, hub_model.texts
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    for bad, hint in (({"budgets": 0.5}, "budget="), ({"return_all_scores": True}, "top_k=None"),
                      ({"policy": hf_eenet.StaticPolicy(0, 4)}, "exit_policy=")):
        with pytest.raises(TypeError, match=rf"the pipeline got unexpected keyword argument\(s\) \['{next(iter(bad))}'\].*"
                                            + re.escape(hint)):
            clf(texts, **bad)
        with pytest.raises(TypeError, match=re.escape(hint)):
            model.early_exit_predict(texts, tokenizer=tok, **bad)
    alone = [clf(t, budget=0.5, truncation=True, max_length=8) for t in texts]  # tokenizer options: taken
    assert clf(texts, budget=0.5, truncation=True, max_length=8, batch_size=4) == [a[0] if isinstance(a, list) else a
                                                                                   for a in alone]
    assert clf([], budget=0.5) == [] and clf([], budget=0.5, batch_size=4, num_workers=0) == []
    with pytest.raises(ValueError, match="outside the fitted range"):
        clf([], budget=0.95)
    batch = tok(texts[:3], padding=True, return_tensors="pt")
    tupled = copy.deepcopy(model)
    tupled.config.return_dict = False
    with torch.no_grad():
        out, ref = tupled(**batch, budget=0.5), model(**batch, budget=0.5)
    assert isinstance(out, tuple) and torch.equal(out[0], ref.logits)
    assert [r["label"] for r in pipeline("text-classification", model=tupled, tokenizer=tok)(texts, budget=0.5)] == \
        [r["label"] for r in clf(texts, budget=0.5)]
    with pytest.raises(ValueError, match="int8 quantisation needs a float32 model; this one holds bfloat16"):
        quantize_dynamic_int8(copy.deepcopy(model).to(torch.bfloat16), refit=False, progress=False)


def test_model_save_pretrained_writes_pipeline_code_and_custom_pipelines(hub_model):
    cfg = json.loads((hub_model.dir / "config.json").read_text())
    assert set(cfg["custom_pipelines"]) == {"text-classification"} and "auto_map" in cfg
    for name in ("pipeline_eenet.py", "modeling_eenet.py", "configuration_eenet.py", "bank.py", "validation.py"):
        assert (hub_model.dir / name).exists(), name


def test_push_to_hub_uploads_the_remote_and_pipeline_code(hub_model):
    seen = {}

    def fake_upload(self, working_dir, repo_id, **kw):
        seen["files"] = sorted(os.listdir(working_dir))
        seen["config"] = json.loads(Path(working_dir, "config.json").read_text())

    api = SimpleNamespace(create_repo=lambda repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    card = SimpleNamespace(save=lambda path: Path(path).write_text("card"))
    with mock.patch("transformers.utils.hub.hf_api", lambda: api), \
            mock.patch("transformers.utils.hub.create_and_tag_model_card", lambda *a, **k: card), \
            mock.patch.object(type(hub_model.model), "_upload_modified_files", fake_upload):
        hub_model.model.push_to_hub("someone/eenet-test")
    assert {"pipeline_eenet.py", "modeling_eenet.py", "bank.py", "validation.py"} <= set(seen["files"])
    assert "text-classification" in seen["config"]["custom_pipelines"]


@pytest.mark.parametrize("trust", [None, True])
def test_installed_pipeline_needs_no_trust_remote_code(hub_model, trust):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(hub_model.dir), trust_remote_code=trust)
    assert isinstance(clf, hf_eenet.EENetTextClassificationPipeline)
    out = clf(hub_model.texts, budget=0.5)
    assert all("exit_layer" in r for r in out)
    with pytest.raises(ValueError, match="outside the fitted range"):
        clf("good", budget=0.3)


def test_installed_pipeline_serves_a_model_object_from_older_remote_code(hub_model, monkeypatch):
    """hf_eenet installed, the model built from its own Hub code saved by an earlier hf_eenet (here: code without the
    cuda_graphs argument): a list runs the depth-wave engine shipped with the model (its internals match), and no
    opt-in argument the old code lacks is passed. Results equal the installed model's."""
    import importlib
    import inspect

    from transformers import pipeline
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from hf_eenet.pipeline_eenet import _engine_of

    # the class of the model's own code (what a process gets that loaded the model before importing hf_eenet)
    cls = get_class_from_dynamic_module("modeling_eenet.EENetBertForSequenceClassification", str(hub_model.dir))
    remote = cls.from_pretrained(str(hub_model.dir)).eval()
    package = type(remote).__module__.rpartition(".")[0]
    assert package != "hf_eenet" and _engine_of(remote).__name__ == package + ".engine"
    # a user's subclass (defined elsewhere, e.g. in __main__ or a package with an unrelated engine module) runs the
    # engine of the model code it derives from
    sub_remote = type("MyRemote", (cls,), {"__module__": "myapp.models"})
    sub_ours = type("MyEENet", (hf_eenet.EENetBertForSequenceClassification,), {"__module__": "myapp.models"})
    assert _engine_of(sub_remote.__new__(sub_remote)).__name__ == package + ".engine"
    assert _engine_of(sub_ours.__new__(sub_ours)) is hf_eenet.engine
    for module in ("modeling_eenet", "myapp.modeling_eenet"):  # a user's own modeling_eenet.py, top-level or not
        wrapped = type("Wrapped", (cls,), {"__module__": module})
        assert _engine_of(wrapped.__new__(wrapped)).__name__ == package + ".engine", module
    old_engine = importlib.import_module(package + ".engine")
    calls, new_wave, new_forward = [], old_engine.depth_wave_forward, type(remote).forward

    def wave_without_graphs(model, rows, exit_policy=None, *, micro_batch_size=32, chunk_size=1024):
        calls.append(len(rows))
        return new_wave(model, rows, exit_policy, micro_batch_size=micro_batch_size, chunk_size=chunk_size)

    def forward_without_graphs(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                               inputs_embeds=None, labels=None, exit_policy=None, budget=None, return_dict=None):
        return new_forward(self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
                           exit_policy=exit_policy, budget=budget, return_dict=return_dict)

    assert "cuda_graphs" in inspect.signature(new_forward).parameters
    monkeypatch.setattr(old_engine, "depth_wave_forward", wave_without_graphs)
    monkeypatch.setattr(type(remote), "forward", forward_without_graphs)
    clf = pipeline("text-classification", model=remote, tokenizer=hub_model.tok)
    assert isinstance(clf, hf_eenet.EENetTextClassificationPipeline)
    mine = pipeline("text-classification", model=hub_model.model, tokenizer=hub_model.tok)
    texts = hub_model.texts
    want = [(r["label"], r["exit_layer"]) for r in mine(texts, budget=0.5, batch_size=4)]
    assert [(r["label"], r["exit_layer"]) for r in clf(texts, budget=0.5, batch_size=4)] == want
    assert calls == [len(texts)], "the list must run the model's own engine"
    assert [(r["label"], r["exit_layer"]) for r in (clf(t, budget=0.5)[0] for t in texts)] == want


def test_a_remote_copy_hands_a_model_of_another_copy_to_that_copys_pipeline(hub_model, tmp_path):
    """Review 80: without hf_eenet installed, the first remote-code copy loaded registers the dispatcher; a model
    object from another folder (saved by another hf_eenet version) was served by the first copy's pipeline, which
    does not know that model code's keywords (``budgets=`` was dropped: the default budget served). A copy now
    builds the pipeline shipped with the model's own code; the installed package serves every model itself."""
    import importlib
    import shutil
    import uuid

    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from hf_eenet.pipeline_eenet import _pipeline_class_of

    models, pipes = [], []
    for name in ("copy_a", "copy_b"):
        d = tmp_path / f"eenet_{name}_{uuid.uuid4().hex[:8]}"  # a folder's name is its module package's name
        shutil.copytree(hub_model.dir, d)
        cls = get_class_from_dynamic_module("modeling_eenet.EENetBertForSequenceClassification", str(d))
        models.append(cls.from_pretrained(str(d)).eval())
        pipes.append(importlib.import_module(cls.__module__.rpartition(".")[0] + ".pipeline_eenet"))
    (model_a, model_b), (pipe_a, pipe_b) = models, pipes
    assert pipe_a is not pipe_b and pipe_a.__name__ != "hf_eenet.pipeline_eenet"
    assert pipe_a._pipeline_class_of(model_b) is pipe_b.EENetTextClassificationPipeline
    assert pipe_a._pipeline_class_of(model_a) is pipe_a.EENetTextClassificationPipeline
    assert pipe_a._pipeline_class_of(hub_model.model) is hf_eenet.EENetTextClassificationPipeline  # its own code's
    assert _pipeline_class_of(model_b) is hf_eenet.EENetTextClassificationPipeline
    clf = pipe_a.TextClassificationDispatch(model=model_b, tokenizer=hub_model.tok)
    assert type(clf) is pipe_b.EENetTextClassificationPipeline
    want = [(r["label"], r["exit_layer"]) for r in
            hf_eenet.EENetTextClassificationPipeline(model=hub_model.model, tokenizer=hub_model.tok)(
                hub_model.texts, budget=0.5)]
    assert [(r["label"], r["exit_layer"]) for r in clf(hub_model.texts, budget=0.5)] == want


def test_clean_process_pipeline_honours_budget_or_raises(hub_model, tmp_path):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(hub_model.dir))
    expect = {str(b): clf(hub_model.texts, budget=b, batch_size=4) for b in (0.5, 0.8)}
    script = BLOCK.format(root=str(ROOT)) + textwrap.dedent(f"""
        import json
        try:
            import hf_eenet
            raise SystemExit("hf_eenet should not be importable here")
        except ImportError:
            pass
        from transformers import pipeline
        res = {{}}
        for kw in ({{"task": "text-classification"}}, {{}}):
            clf = pipeline(model={str(hub_model.dir)!r}, trust_remote_code=True, **kw)
            assert "hf_eenet" not in type(clf).__module__ and type(clf).__name__ == "EENetTextClassificationPipeline"
            res[str(bool(kw))] = {{str(b): clf({hub_model.texts!r}, budget=b, batch_size=4) for b in (0.5, 0.8)}}
            try:
                clf("good", budget=0.3)
                res["low"] = "served"
            except ValueError as e:
                res["low"] = "raised: " + str(e)[:60]
        try:
            pipeline("text-classification", model={str(hub_model.dir)!r})
            res["untrusted"] = "loaded"
        except ValueError as e:
            res["untrusted"] = "raised"
        print(json.dumps(res))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                       env=clean_env(tmp_path), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    got = json.loads(last[last.index("{"):])  # after transformers' "Do you wish to run the custom code?" prompt
    for key in ("True", "False"):
        for b, rows in expect.items():
            assert [g["exit_layer"] for g in got[key][b]] == [e["exit_layer"] for e in rows]
            assert [g["label"] for g in got[key][b]] == [e["label"] for e in rows]
    assert got["low"].startswith("raised") and got["untrusted"] == "raised"


# ------------------------------------------------------------------------------------- 5: no side effects on others
def test_import_hf_eenet_changes_nothing_for_a_stock_bert(minilm_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**tiny_kwargs(num_labels=2, vocab_size=30522))).save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "m")
    script = textwrap.dedent(f"""
        import json, sys
        if sys.argv[1] == "with":
            sys.path.insert(0, {str(ROOT)!r})
            import hf_eenet
        from transformers import pipeline
        clf = pipeline("text-classification", model={str(tmp_path / "m")!r})
        cases = ["a fine film", "", "   ", [["first text", "its pair"]], {{"text": "a", "text_pair": "b"}},
                 " ".join(["good"] * 400), ["x", "y"], None]
        res = [type(clf).__module__ + "." + type(clf).__name__]
        for case in cases:
            try:
                res.append(clf(case))
            except Exception as e:
                res.append(["error", type(e).__name__, str(e)[:200]])
        for kw in ({{"top_k": None}}, {{"budget": 0.5}}, {{"truncation": True}}):
            try:
                res.append(clf("a fine film", **kw))
            except Exception as e:
                res.append(["error", type(e).__name__, str(e)[:200]])
        print(json.dumps(res))
    """)
    runs = {}
    for mode in ("without", "with"):
        r = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, cwd=str(tmp_path),
                           env=clean_env(tmp_path))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    # budget= only: the stock class hands it to the tokenizer, which drops it, and the full model answers as if a
    # budget had been served; with hf_eenet imported it is refused by name. Everything else is the same.
    budget_case = 1 + 8 + 1
    assert "error" not in runs["without"][budget_case]
    assert runs["with"][budget_case][:2] == ["error", "ValueError"]
    assert "budget= needs an hf_eenet early-exit model" in runs["with"][budget_case][2]
    del runs["with"][budget_case], runs["without"][budget_case]
    assert runs["with"] == runs["without"]
    assert runs["with"][0] == "transformers.pipelines.text_classification.TextClassificationPipeline"
    assert runs["with"][6][0] == "error"  # stock raises on an over-long text (no silent truncation)


# -------------------------------------------------------------------------------- trainer: replace vs extend, atomic
@pytest.fixture(scope="module")
def trainer_setup(minilm_dir, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    cfg = hf_eenet.EENetBertConfig(**tiny_kwargs(num_labels=2, layers=4, vocab_size=tok.vocab_size))
    model = hf_eenet.EENetBertForSequenceClassification(cfg)

    def dataset(seed, n=96):
        rng = np.random.default_rng(seed)
        texts = [" ".join(rng.choice(["good", "bad", "film", "plot", "the", "a"], size=int(rng.integers(2, 9))))
                 for _ in range(n)]
        ds = Dataset.from_dict({"text": texts, "labels": [int(rng.integers(0, 2)) for _ in range(n)]})
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])

    tmp = tmp_path_factory.mktemp("trainer")
    args = TrainingArguments(output_dir=str(tmp / "out"), report_to=[], use_cpu=True, save_strategy="no",
                             per_device_eval_batch_size=64, disable_tqdm=False, dataloader_num_workers=0)
    trainer = hf_eenet.EENetTrainer(model=model, args=args, eval_dataset=dataset(1), processing_class=tok,
                                    data_collator=DataCollatorWithPadding(tok))
    return SimpleNamespace(trainer=trainer, model=model, other=dataset(2), tmp=tmp)


def test_fit_scheduler_replaces_by_default_and_extends_when_told(trainer_setup, capsys):
    tr, model = trainer_setup.trainer, trainer_setup.model
    tr.fit_scheduler(budgets=[0.5, np.float32(0.8)], **FAST)
    assert model.config.scheduler_budgets == [0.5, 0.8] and tr.scheduler_fit_mode == "replaced"
    assert "EENet scheduler bank" in capsys.readouterr().err  # tqdm bar over the budgets
    tr.fit_scheduler(budgets=[0.6], **FAST)
    assert model.config.scheduler_budgets == [0.6] and tr.scheduler_fit_mode == "replaced"
    tr.fit_scheduler(budgets=[torch.tensor(0.7)], extend=True, **FAST)
    assert model.config.scheduler_budgets == [0.6, 0.7] and tr.scheduler_fit_mode == "extended"
    assert len({r["data_fingerprint"] for r in model.config.scheduler_bank}) == 1
    with pytest.raises(ValueError, match="other validation data"):
        tr.fit_scheduler(trainer_setup.other, budgets=[0.8], extend=True, **FAST)
    assert model.config.scheduler_budgets == [0.6, 0.7]
    with pytest.raises(TypeError):
        tr.fit_scheduler(budgets=[True], **FAST)


def test_trainer_save_is_atomic(trainer_setup):
    tr, model = trainer_setup.trainer, trainer_setup.model
    if not model.config.scheduler_budgets:
        tr.fit_scheduler(budgets=[0.6, 0.7], **FAST)
    d = trainer_setup.tmp / "saved"
    tr.save_model(str(d))
    before = sorted(os.listdir(d))
    assert "training_args.json" in before and "training_args.bin" not in before and "tokenizer.json" in before
    assert "pipeline_eenet.py" in before
    budgets = list(model.config.scheduler_budgets)
    tr.fit_scheduler(budgets=[0.4], **FAST)

    def boom(*a, **k):
        raise OSError("interrupted (simulated)")

    with mock.patch("transformers.modeling_utils.safe_save_file", boom), pytest.raises(OSError, match="interrupted"):
        tr.save_model(str(d))
    assert sorted(os.listdir(d)) == before
    assert type(model).from_pretrained(d).config.scheduler_budgets == budgets
    tr.save_model(str(d))
    assert type(model).from_pretrained(d).config.scheduler_budgets == [0.4]


# ------------------------------------------------------------------------- re-matching the budgets on unlabelled traffic
def test_rematch_budgets_updates_records_serves_the_budget_and_round_trips(tmp_path):
    model, batch, probs, labels = fitted_model(budgets=(0.5, 0.8), n=96)
    traffic = torch.softmax(probs.clamp_min(1e-12).log() / 1.5, -1)  # less confident than the validation rows
    before = [s.thresholds for s in model.eenet_schedulers]
    info = model.rematch_budgets(traffic)
    assert sorted(info) == [0.5, 0.8] and all(i["rows"] == 96 for i in info.values())
    recs = model.verify_scheduler_bank()
    assert all(r["rematched_on"]["rows"] == 96 for r in recs)
    assert len({r["rematched_on"]["fingerprint"] for r in recs}) == 1
    assert all(r["data_fingerprint"] == data_fingerprint(probs, labels) for r in recs)  # still the labelled fit's
    assert [s.thresholds for s in model.eenet_schedulers] != before
    c = torch.tensor(model.config.exit_costs, dtype=torch.float64)
    for b, sched in zip((0.5, 0.8), model.eenet_schedulers):  # on the traffic it was matched on: the budget
        assert float(c[sched.exit_index(traffic)].mean()) == pytest.approx(b * c[-1].item(), abs=1.0 / 96 + 1e-9)
        assert info[b]["cost_after"] == pytest.approx(sched.planned_cost)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    assert [s.thresholds for s in loaded.eenet_schedulers] == [s.thresholds for s in model.eenet_schedulers]
    assert outputs(loaded, batch, 0.5)[0] == outputs(model, batch, 0.5)[0]
    assert loaded.config.scheduler_bank[0]["rematched_on"] == recs[0]["rematched_on"]


def test_rematch_on_too_few_traffic_rows_warns_with_the_rows_it_needs():
    model, _, probs, _ = fitted_model(budgets=(0.5, 0.8), n=96)
    with pytest.warns(UserWarning, match=r"re-matched on 20 traffic rows: .* \(too few rows to estimate it\); use "
                                         r"more rows \(about \d+ for ± 3 %\)"):
        model.rematch_budgets(probs[:20])
    many = probs.repeat(40, 1, 1)  # 3,840 rows: the sampling error shrinks as 1 / sqrt(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = model.rematch_budgets(many)
    assert all(i["cost_standard_error"] / b <= 0.03 for b, i in info.items())


def test_rematch_budgets_refusals_leave_the_bank_as_it_was(tmp_path):
    model, batch, probs, labels = fitted_model(budgets=(0.5, 0.8))
    digests = [r["state_sha256"] for r in model.config.scheduler_bank]
    with pytest.raises(ValueError, match=r"shape \[N, 4, 3\]"):
        model.rematch_budgets(probs[:, :3])
    with pytest.raises(ValueError, match="sample of the traffic"):
        model.rematch_budgets(probs[:1])
    assert [r["state_sha256"] for r in model.config.scheduler_bank] == digests
    assert all("rematched_on" not in r for r in model.config.scheduler_bank)
    with pytest.raises(ValueError, match="no scheduler bank"):
        tiny_model(layers=4, num_labels=3).rematch_budgets(probs)
    # a re-matched bank takes no scheduler matched on validation data (it would mix two matchings)
    model.rematch_budgets(probs)
    extra = EENetScheduler(**FAST).fit(probs, labels, model.config.exit_costs, 0.6)
    with pytest.raises(BankIntegrityError, match="re-matched"):
        model.add_scheduler(extra, 0.6, data_fingerprint=data_fingerprint(probs, labels))
    # config.json whose records disagree about the re-matching is refused on load
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["scheduler_bank"][1]["rematched_on"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BankIntegrityError, match="re-matched on different traffic"):
        type(model).from_pretrained(tmp_path / "m")


def test_trainer_rematch_budgets_on_an_unlabelled_dataset(trainer_setup):
    tr, model = trainer_setup.trainer, trainer_setup.model
    tr.fit_scheduler(budgets=[0.5, 0.7], **FAST)
    traffic = trainer_setup.other.remove_columns(["labels"])
    info = tr.rematch_budgets(traffic)
    assert sorted(info) == [0.5, 0.7] and all(i["rows"] == len(traffic) for i in info.values())
    # labels are ignored, also ones the loss could not take (GLUE's hidden -1, another task's 7): the same matching
    for fake in (-1, 7):
        labelled = traffic.add_column("labels", [fake] * len(traffic))
        again = tr.rematch_budgets(labelled)
        assert [again[b]["cost_after"] for b in (0.5, 0.7)] == [info[b]["cost_after"] for b in (0.5, 0.7)]
    probs, labels = tr.collect_exit_predictions(traffic.add_column("labels", [-1] * len(traffic)),
                                                require_labels=False)
    assert labels is None and probs.shape[0] == len(traffic)  # all -1: an unlabelled split
    with pytest.raises(ValueError, match=r"label column 'labels': labels must lie in \[0, 2\) .*got min 0, max 7"):
        tr.collect_exit_predictions(traffic.add_column("labels", [7] + [0] * (len(traffic) - 1)))
    assert all(r["rematched_on"]["rows"] == len(traffic) for r in model.config.scheduler_bank)
    with pytest.raises(ValueError, match="re-matched"):
        tr.fit_scheduler(budgets=[0.6], extend=True, **FAST)
    tr.fit_scheduler(budgets=[0.5, 0.7], **FAST)  # a full refit replaces the re-matched bank
    assert all("rematched_on" not in r for r in model.config.scheduler_bank)


def test_a_loaded_bank_keeps_its_plans_and_one_saved_without_them_asks_for_a_refit(tmp_path):
    model, _, probs, _ = fitted_model(budgets=(0.5, 0.8))
    plans = [s.fit_info["plan"] for s in model.eenet_schedulers]
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert [r["plan"] for r in loaded.config.scheduler_bank] == plans
    assert [s.fit_info["plan"] for s in loaded.eenet_schedulers] == plans
    loaded.rematch_budgets(probs)  # works after a load (fit_info itself is not in the weights)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for rec in cfg["scheduler_bank"]:
        del rec["plan"]  # as written by earlier versions
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    old = type(model).from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="refit it"):
        old.rematch_budgets(probs)


def test_rematch_inside_inference_mode_leaves_a_servable_savable_bank(tmp_path):
    model, batch, probs, _ = fitted_model(budgets=(0.5, 0.8))
    with torch.inference_mode():
        model.rematch_budgets(torch.softmax(probs.log() / 1.3, -1))
    exits, _ = outputs(model, batch, 0.5)  # the per-request bank check reads version counters
    with torch.inference_mode():
        assert model(**batch, budget=0.5).exit_index.tolist() == exits
    model.save_pretrained(tmp_path / "m")
    model.rematch_budgets(probs)  # and again
    with pytest.raises(ValueError, match="floating point"):
        model.rematch_budgets(torch.zeros(8, 4, 3, dtype=torch.long))


def test_malformed_rematched_on_records_are_refused_on_load(tmp_path):
    model, _, probs, _ = fitted_model(budgets=(0.5, 0.8))
    model.rematch_budgets(probs)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for bad in (True, {}):
        for rec in cfg["scheduler_bank"]:
            rec["rematched_on"] = bad
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(BankIntegrityError, match="malformed"):
            type(model).from_pretrained(tmp_path / "m")


def test_exit_probabilities_truncate_as_the_pipeline_serves(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = tiny_model(layers=4, num_labels=3, vocab_size=tok.vocab_size, max_position_embeddings=300)
    texts = [" ".join(["word"] * 250), "short text"]
    probs = hf_eenet.exit_probabilities(model, tok, texts, progress=False)  # 250 + 2 tokens: not cut at 128
    enc = tok(texts, padding=True, truncation=True, max_length=300, return_tensors="pt")
    assert enc["input_ids"].shape[1] > 128
    with torch.no_grad():
        full = torch.softmax(model(**enc).exit_logits.float(), -1).numpy()
    assert np.allclose(probs, full, atol=1e-5)


def test_a_new_bank_that_does_not_serve_the_default_budget_says_which_it_serves_instead():
    """The pipeline's default budget (config.default_budget) outside a new bank used to become None silently, and
    the largest budget (0.8, not 0.5) was served by default: now the nearest fitted budget, with a warning."""
    model, batch, probs, labels = fitted_model(budgets=(0.4, 0.5))
    model.config.default_budget = 0.5
    new = {b: EENetScheduler(**FAST).fit(probs, labels, model.config.exit_costs, b) for b in (0.6, 0.8)}
    with pytest.warns(UserWarning, match=r"default_budget 0.5 is outside the new scheduler bank's budgets \[0.6, 0.8\]"
                                         r"; the pipeline's default budget is now 0.6"):
        model.set_scheduler_bank(new)
    assert model.config.default_budget == 0.6
    model.config.default_budget = 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a default the new bank serves: kept, no warning
        model.set_scheduler_bank({0.6: new[0.6], 0.8: new[0.8]})
    assert model.config.default_budget == 0.8


def interrupted_cwd_save(tmp_path, monkeypatch):
    """A model with bank [0.4, 0.6, 0.8] saved to tmp_path/m, then one with bank [0.5, 0.7] saved over it from inside
    (``save_pretrained(".")``), interrupted after the weights moved in, before config.json. Returns
    ``(target, new model, its batch)``; the cwd is back at tmp_path."""
    old, *_ = fitted_model(budgets=(0.4, 0.6, 0.8), seed=0)
    new, batch, _, _ = fitted_model(budgets=(0.5, 0.7), seed=1)
    old.config.default_budget, new.config.default_budget = 0.6, 0.7
    target = tmp_path / "m"
    old.save_pretrained(target)
    monkeypatch.chdir(target)
    real = os.replace

    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == "config.json":
            raise OSError(5, "I/O error (simulated)")
        return real(src, dst, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="simulated"):
            new.save_pretrained(".")
    monkeypatch.chdir(tmp_path)
    return target, new, batch


@pytest.mark.parametrize("how", ["class", "auto"])
def test_a_save_into_the_cwd_interrupted_while_moving_in_loads_as_the_new_save(tmp_path, monkeypatch, how):
    """save_pretrained(".") moves its files in one by one (the cwd folder is not swapped away); interrupted after
    the weights, before config.json, the folder held new weights beside the old config and no longer loaded
    (BankIntegrityError). from_pretrained now finishes the save first, also through AutoModel (whose config object
    was read from the old config.json; a config kwarg given to from_pretrained is kept)."""
    from transformers import AutoModelForSequenceClassification

    target, new, batch = interrupted_cwd_save(tmp_path, monkeypatch)
    assert json.loads((target / "config.json").read_text())["scheduler_budgets"] == [0.4, 0.6, 0.8]  # the mix
    if how == "class":
        loaded = type(new).from_pretrained(target)
    else:
        loaded = AutoModelForSequenceClassification.from_pretrained(target, classifier_dropout=0.25,
                                                                    default_budget=0.65)
        # the caller's config kwargs survive (default_budget is one the save changed too: 0.6 -> 0.7)
        assert loaded.config.classifier_dropout == 0.25 and loaded.config.default_budget == 0.65
    assert loaded.config.scheduler_budgets == [0.5, 0.7]
    assert [e for e in os.listdir(target) if e.startswith(".")] == [".eenet-finished.json"]  # until the next save
    loaded.eval()
    for b in (0.5, 0.7):
        assert outputs(loaded, batch, b)[0] == outputs(new.eval(), batch, b)[0]


def test_a_config_read_before_another_process_finished_the_save_is_brought_up_to_date(tmp_path, monkeypatch):
    """DDP ranks load one folder at once: each reads config.json (AutoConfig) before one of them finishes the
    interrupted save. The others' config objects still hold the old file's values: updated from the record the
    finish left, while what the caller set (a config kwarg, the attention implementation) stays."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    target, new, batch = interrupted_cwd_save(tmp_path, monkeypatch)
    read_before = AutoConfig.from_pretrained(target, default_budget=0.5, attn_implementation="eager")  # a rank
    assert read_before.scheduler_budgets == [0.4, 0.6, 0.8]
    assert hf_eenet.bank.finish_interrupted_save(target) is True  # another rank (a process of its own):
    record_file = target / ".eenet-finished.json"
    record = json.loads(record_file.read_text())
    assert record["by"] == [socket.gethostname(), os.getpid()]
    record_file.write_text(json.dumps({**record, "by": [socket.gethostname(), os.getpid() + 1]}))
    loaded = AutoModelForSequenceClassification.from_pretrained(target, config=read_before)
    assert loaded.config.scheduler_budgets == [0.5, 0.7] and loaded.config.default_budget == 0.5
    assert loaded.config._attn_implementation == "eager"
    loaded.eval()
    assert outputs(loaded, batch, 0.7)[0] == outputs(new.eval(), batch, 0.7)[0]
    # a later load (config read after the finish) that sets a value equal to the replaced file's keeps it
    later = AutoModelForSequenceClassification.from_pretrained(target, default_budget=0.6)
    assert later.config.default_budget == 0.6 and later.config.scheduler_budgets == [0.5, 0.7]
    # where no key a caller does not set changed (here only default_budget differs between the two files), a load
    # whose kwargs equal replaced values is left alone after this process's own finish, and after another
    # process's once past the racing window
    record = json.loads(record_file.read_text())
    old_cfg = json.loads(record["old_config"])
    old_cfg.update({k: v for k, v in json.loads(record["config"]).items() if k != "default_budget"})
    for by, window in (([socket.gethostname(), os.getpid()], 3600.0), ([socket.gethostname(), -1], 0.0)):
        record_file.write_text(json.dumps({**record, "old_config": json.dumps(old_cfg), "by": by}))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(hf_eenet.modeling_eenet, "_RACING_FINISH_S", window)
            assert AutoModelForSequenceClassification.from_pretrained(target, default_budget=0.6).config \
                .default_budget == 0.6
    # another writer of config.json: the record no longer applies
    cfg = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**cfg, "default_budget": 0.5}, indent=2))
    assert hf_eenet.bank.read_finished_record(target) is None


def test_a_copy_replaces_an_older_copys_pipeline_patches_and_keeps_a_current_ones():
    """Review 90: without hf_eenet installed, the copy of an older model loaded first registered a dispatcher (and
    patches) without the per-model pipeline class; a current copy kept it, so a current model's pipeline dropped a
    misspelt ``budgets=``. A copy now replaces an older version's patches and keeps those of its own version."""
    from transformers import TextClassificationPipeline
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_eenet import pipeline_eenet as pe

    stock = dict(PIPELINE_REGISTRY.supported_tasks["text-classification"])
    saved_new, saved_sanitize = TextClassificationPipeline.__new__, TextClassificationPipeline._sanitize_parameters
    stock_sanitize = saved_sanitize.__wrapped__

    class TextClassificationDispatch(TextClassificationPipeline):  # an older copy's: no version
        fallback = stock["impl"] if not hasattr(stock["impl"], "fallback") else stock["impl"].fallback

    def old_new(cls, *args, **kwargs):
        return object.__new__(cls)

    def old_sanitize(self, *args, **kwargs):
        return stock_sanitize(self, *args, **kwargs)

    old_new._eenet_route = old_sanitize._eenet_refuse = True
    old_sanitize.__wrapped__ = stock_sanitize
    try:
        PIPELINE_REGISTRY.supported_tasks["text-classification"] = {**stock, "impl": TextClassificationDispatch}
        TextClassificationPipeline.__new__ = staticmethod(old_new)
        TextClassificationPipeline._sanitize_parameters = old_sanitize
        pe.register_text_classification()  # as remote code calls it (no force)
        assert PIPELINE_REGISTRY.supported_tasks["text-classification"]["impl"] is pe.TextClassificationDispatch
        assert pe.TextClassificationDispatch.fallback is TextClassificationDispatch.fallback
        assert TextClassificationPipeline.__new__._eenet_version == pe._PATCH_VERSION
        assert TextClassificationPipeline._sanitize_parameters._eenet_version == pe._PATCH_VERSION
        assert TextClassificationPipeline._sanitize_parameters.__wrapped__ is stock_sanitize
        current = type("TextClassificationDispatch", (pe.TextClassificationDispatch,), {})  # same version: kept
        PIPELINE_REGISTRY.supported_tasks["text-classification"] = {**stock, "impl": current}
        pe.register_text_classification()
        assert PIPELINE_REGISTRY.supported_tasks["text-classification"]["impl"] is current
    finally:
        PIPELINE_REGISTRY.supported_tasks["text-classification"] = stock
        TextClassificationPipeline.__new__ = staticmethod(saved_new)
        TextClassificationPipeline._sanitize_parameters = saved_sanitize
        pe.register_text_classification(force=True)
