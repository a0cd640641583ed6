"""Safety guarantees through the Python API: errors are NetsiftError, resume is exact, nothing is unpickled,
checkpoints are consistent units, non-finite values are never saved, locks hold in one process too."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from torch import nn

import netsift
from netsift.checkpoint import load_checkpoint, save_checkpoint
from netsift.config import TrainConfig
from netsift.data import load_data
from netsift.errors import NetsiftError
from netsift.masks import MaskConfig
from netsift.measure import count_macs, evaluate
from netsift.rundir import RunLock
from netsift.schema import Int, Num, Obj, validate
from netsift.training import Callback, fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ wrong models

class _Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), None


class _TwoArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x, y):
        return self.fc(x)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
                                  lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)),
                                  _Tuple, _TwoArgs], ids=["linear-784", "conv-3ch", "tuple-output", "two-args"])
def test_model_for_the_wrong_input_raises_netsift_error(make, digits):
    cfg = TrainConfig(epochs=1, max_steps=1, lr=0.1)
    for call in (lambda m: fit(m, digits, cfg), lambda m: evaluate(m, digits.loader("test", 64)),
                 lambda m: count_macs(m, digits.input_shape), lambda m: netsift.train(m, digits, epochs=1)):
        with pytest.raises(NetsiftError):
            call(make())


def test_config_types_are_checked_in_python_too():
    for bad in ({"epochs": "5"}, {"epochs": 2.5}, {"epochs": True}, {"lr": "0.1"}, {"momentum": float("nan")},
                {"augment": "yes"}, {"batch_size": 10**13}, {"weight_decay": 11.0}):
        with pytest.raises(NetsiftError):
            TrainConfig(**bad)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    with pytest.raises(NetsiftError, match="--scale-lr"):
        MaskConfig(scale_lr=True)
    with pytest.raises(NetsiftError, match="width"):
        netsift.train("lenet300", "digits", width=float("nan"), epochs=1)
    with pytest.raises(NetsiftError, match="--tau"):
        netsift.extract("lenet300", "digits", tau=float("inf"), epochs=1)


def test_schema_messages_name_the_key():
    spec = Obj({"epoch": Int(0, 10), "acc": Num(0, 1)}, required=("epoch",))
    assert validate({"epoch": 3, "acc": 0.5, "more": []}, spec, "x") is not None
    for value, where in (({}, "epoch must be present"), ({"epoch": True}, "epoch must be an integer"),
                         ({"epoch": 11}, "epoch must be an integer in [0, 10]"),
                         ({"epoch": 1, "acc": float("nan")}, "acc must be a finite number"), ([], "an object")):
        with pytest.raises(NetsiftError, match=f"x is malformed: .*{where[:20]}"):
            validate(value, spec, "x")


# ------------------------------------------------------------------------------------------ checkpoints

def test_checkpoint_pair_survives_every_interrupted_state(tmp_path):
    stem = tmp_path / "ck"
    old, new = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    save_checkpoint(stem, old, {"n": 1})
    committed_old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save_checkpoint(stem, new, {"n": 2})
    committed_new = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    prev = tmp_path / ".ck.safetensors.prev"

    def state(json_of, main_of, prev_of):
        for p in tmp_path.iterdir():
            p.unlink()
        (tmp_path / "ck.json").write_bytes(json_of["ck.json"])
        if main_of is not None:
            (tmp_path / "ck.safetensors").write_bytes(main_of["ck.safetensors"])
        if prev_of is not None:
            prev.write_bytes(prev_of["ck.safetensors"])

    # killed after moving the committed tensors aside / after putting the new ones in place / after the commit
    for json_of, main_of, prev_of, want in ((committed_old, None, committed_old, 1),
                                             (committed_old, committed_new, committed_old, 1),
                                             (committed_new, committed_new, committed_old, 2)):
        state(json_of, main_of, prev_of)
        tensors, meta = load_checkpoint(stem)
        assert meta["n"] == want and torch.equal(tensors["w"], (old, new)[want - 1]["w"])
        save_checkpoint(stem, {"w": torch.full((3,), 7.0)}, {"n": 3})  # and the next save commits cleanly
        tensors, meta = load_checkpoint(stem)
        assert meta["n"] == 3 and tensors["w"][0] == 7 and not prev.exists()
    state(committed_old, committed_new, None)  # new tensors with the old record and no committed ones: corrupt
    with pytest.raises(NetsiftError, match="corrupt"):
        load_checkpoint(stem)


def test_non_finite_tensors_are_never_saved(tmp_path):
    save_checkpoint(tmp_path / "ok", {"w": torch.ones(2)}, {})
    before = _files(tmp_path)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NetsiftError, match="NaN or infinite"):
            save_checkpoint(tmp_path / "ok", {"w": torch.tensor([1.0, bad])}, {})
    assert _files(tmp_path) == before


class _InfGrad(nn.Module):
    """Finite loss, infinite gradient once ``q`` is 0 (d sqrt(q)/dq): the step leaves q non-finite."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.q = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.sqrt(self.q)


class _ZeroQ(Callback):
    def __init__(self, model):
        self.model = model

    def on_epoch_start(self, epoch):
        if epoch == 1:
            with torch.no_grad():
                self.model.q.zero_()


def test_non_finite_parameter_after_a_step_stops_the_run_and_keeps_the_last_checkpoint(digits, tmp_path):
    model = _InfGrad()
    cfg = TrainConfig(epochs=3, max_steps=3, lr=0.1, batch_size=64)
    with pytest.raises(NetsiftError, match="q became non-finite at epoch 2, step 1"):
        fit(model, digits, cfg, tmp_path, callbacks=[_ZeroQ(model)])
    tensors, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# ------------------------------------------------------------------------------------------ run folders

def test_overwrite_that_fails_leaves_the_earlier_run_and_no_debris(tmp_path):
    out = tmp_path / "run"
    netsift.train("lenet300", "digits", epochs=1, max_steps=3, batch_size=64, out=out)
    before = _files(tmp_path)
    with pytest.raises(NetsiftError, match="lower the learning rate"):
        netsift.train("lenet300", "digits", epochs=1, max_steps=3, batch_size=64, lr=1e5, momentum=0.99, out=out,
                      overwrite=True)
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    r = netsift.train("lenet300", "digits", epochs=1, max_steps=3, batch_size=64, seed=1, out=out, overwrite=True)
    assert r.run_dir == str(out) and json.loads((out / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_lock_refuses_a_second_writer_in_the_same_process_and_is_released_after_errors(tmp_path):
    out = tmp_path / "run"
    netsift.train("lenet300", "digits", epochs=1, max_steps=2, batch_size=64, out=out)
    lock = RunLock(out)
    try:
        with pytest.raises(NetsiftError, match="another netsift process"):
            netsift.train("lenet300", "digits", epochs=2, max_steps=2, batch_size=64, out=out, resume=True)
    finally:
        lock.release()
    with pytest.raises(NetsiftError, match="train.lr"):  # fails under the lock, which must be released after
        netsift.train("lenet300", "digits", epochs=2, max_steps=2, batch_size=64, lr=0.3, out=out, resume=True)
    netsift.train("lenet300", "digits", epochs=2, max_steps=2, batch_size=64, out=out, resume=True)


def _conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.slow
def test_prune_resume_skips_finished_groups_and_ends_identical(digits, tmp_path, monkeypatch):
    import importlib

    prune_module = importlib.import_module("netsift.pipelines.prune")
    from netsift.selection.base import SelectionContext

    kw = dict(method="gfs", macs=0.5, candidates=4, select_batch=64, holdout=200, finetune_epochs=2, max_steps=3,
              batch_size=64, progress=False, latency_threads=None)
    full = netsift.prune(_conv(), digits, out=tmp_path / "full", **kw)

    finished = []
    original_finish = SelectionContext.finish_group
    monkeypatch.setattr(SelectionContext, "finish_group",
                        lambda self, gi, *a, **k: (finished.append(gi), original_finish(self, gi, *a, **k))[1])
    original_save = prune_module.SelectionState.save

    def save_then_interrupt(self, ctx, plan, net):
        original_save(self, ctx, plan, net)
        if len(ctx.records) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prune_module.SelectionState, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        netsift.prune(_conv(), digits, out=tmp_path / "cut", **kw)
    assert finished == [0, 1]
    monkeypatch.setattr(prune_module.SelectionState, "save", original_save)
    finished.clear()
    resumed = netsift.prune(_conv(), digits, out=tmp_path / "cut", resume=True, **kw)
    assert finished and 0 not in finished and 1 not in finished  # the finished groups were not selected again
    assert resumed.groups == full.groups
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


class _Gated(nn.Module):
    """A per-channel gate outside any layer: Torch-Pruning prunes it as an "unwrapped" parameter."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x))) * self.gate.view(1, -1, 1, 1)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_extra_per_channel_parameter_is_recorded_and_reloads(digits, tmp_path):
    torch.manual_seed(0)
    r = netsift.prune(_Gated(), digits, method="l1", macs=0.5, finetune_epochs=0, out=tmp_path / "p",
                      progress=False, latency_threads=None)
    assert r.model.gate.shape[0] < 16
    manifest = json.loads((tmp_path / "p" / "model.json").read_text())["manifest"]
    assert manifest["modules"]["gate"] == {"type": "parameter", "shape": [r.model.gate.shape[0]]}
    back = netsift.load_weights(_Gated(), tmp_path / "p").eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), r.model.eval()(x))


@pytest.mark.slow
def test_nothing_is_unpickled(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    for target, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    out = tmp_path / "t"
    netsift.train("lenet300", "digits", epochs=1, max_steps=2, batch_size=64, out=out)
    netsift.train("lenet300", "digits", epochs=2, max_steps=2, batch_size=64, out=out, resume=True)
    assert netsift.evaluate(out)["test_acc"] > 0
    netsift.extract("lenet300", "digits", epochs=1, max_steps=2, batch_size=64, out=tmp_path / "e")
    netsift.export(tmp_path / "e", "compact")
    assert netsift.evaluate(tmp_path / "e" / "model.nsc")["test_acc"] > 0
    netsift.prune(out, method="l1", macs=0.5, finetune_epochs=1, max_steps=2, out=tmp_path / "p", progress=False)
    netsift.load_model(tmp_path / "p")


def test_guarantees_doc_cites_tests_that_exist_and_recorded_results():
    """docs/guarantees.md states each guarantee once, with the tests that check it: they must exist."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "guarantees.md").read_text()
    cited = re.findall(r"`(tests/\w+\.py)(?:::(\w+))?", doc)
    assert len(cited) >= 10
    for path, name in cited:
        text = (root / path).read_text()
        assert not name or f"def {name}(" in text, f"{path}::{name}"
    import test_faults

    assert "more than 140 cases" in doc and len(test_faults.CASES) > 140
    results = json.loads((root / "benchmarks" / "results" / "kill9.json").read_text())
    for name in ("train", "extract", "prune", "prune --layer-finetune", "train --overwrite"):
        row = results["summary"][name]
        assert row["instants"] >= 20 and row["identical"] and not row["problems"], name


def test_overwrite_without_atomic_exchange_and_its_repair(tmp_path, monkeypatch):
    """Where renameat2 is missing the swap is two renames; a run interrupted between them is repaired next time."""
    import shutil

    from netsift import rundir

    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    kw = dict(epochs=1, max_steps=2, batch_size=64, out=out)
    netsift.train("lenet300", "digits", **kw)
    netsift.train("lenet300", "digits", seed=1, overwrite=True, **kw)
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # killed between the two renames: the earlier run aside, the finished new one still beside
    shutil.copytree(out, tmp_path / ".run.netsift-new")
    (tmp_path / ".run.netsift-new" / rundir.REPLACING).write_text("replaces run\n")
    set_seed = json.loads((tmp_path / ".run.netsift-new" / "config.json").read_text())
    out.rename(tmp_path / ".run.netsift-old")
    netsift.train("lenet300", "digits", seed=1, resume=True, **kw)  # repairs first, then resumes the new run
    assert json.loads((out / "config.json").read_text()) == set_seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not (out / rundir.REPLACING).exists()
