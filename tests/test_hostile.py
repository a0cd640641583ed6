"""Hostile input, round 3 (one test per class, instances of our own): outputs never replace a run's files, every
read goes through its schema, the Python API refuses wrong types (nested configs too), non-finite values are refused
where they enter, budgets and memory are checked before work, SIGTERM ends a run like Ctrl-C, stale temporary files
are cleaned up, every ``NETSIFT_*`` variable is validated. Every refusal is one line (CLI: exit 2) that changes
nothing on disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import netsift
from netsift.cli import main
from netsift.errors import NetsiftError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["--data", "digits", "--batch-size", "64", "--max-steps", "2", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A train run and an extract run (with its compact export), built once."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--model", "lenet300", *DIGITS, "--out", str(root / "train"), "-q"]) == 0
    assert main(["extract", "--model", "lenet300", *DIGITS, "--out", str(root / "extract"), "-q"]) == 0
    assert main(["export", str(root / "extract"), "-q"]) == 0
    return root


@pytest.fixture()
def w(runs, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the runs to damage, as the working directory."""
    work = tmp_path / "w"
    shutil.copytree(runs, work, symlinks=True)
    monkeypatch.chdir(work)
    return work


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv, needle: str, root: Path | None = None) -> str:
    """Run the CLI: exit 2, one line naming ``needle``, nothing under ``root`` changed."""
    before = snapshot(root) if root is not None else None
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("netsift: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    if root is not None:
        assert snapshot(root) == before
    return err


# ------------------------------------------------------------------------------ 1. outputs and run files

@pytest.mark.parametrize("fmt, target, needle", [
    ("onnx", "train/config.json", "not its onnx export"),
    ("onnx", "train/metrics.jsonl", "not its onnx export"),
    ("compact", "extract/result.json", "not its compact export"),
    ("safetensors", "train/checkpoint.safetensors", "not its safetensors export"),
    ("safetensors", "extract/subnet.json", "not its safetensors export"),
    ("onnx", "train/.netsift.lock", "not its onnx export"),
    ("onnx", "extract/model.onnx", "not the run being exported"),  # a file of another run
    ("onnx", "extract", "is a folder"),  # a run folder itself
    ("onnx", "extract/exports/t.onnx", "not the run being exported"),  # below another run
])
def test_an_export_never_replaces_a_file_of_a_run(w, capsys, fmt, target, needle):
    src = "extract" if fmt == "compact" or target.startswith("extract/subnet") else "train"
    refused(capsys, ["export", src, "--format", fmt, "--out", target, "--overwrite"], needle, w)


@pytest.mark.slow
def test_an_export_replaces_its_own_kind_in_its_own_run_only(w, capsys):
    assert main(["export", "train", "--format", "onnx", "-q"]) == 0
    assert main(["export", "train", "--format", "onnx", "--out", "train/model.onnx", "--overwrite", "-q"]) == 0
    assert main(["export", "extract/model.nsc", "--format", "safetensors", "-q"]) == 0  # not model.*: dense.*
    assert (w / "extract/dense.safetensors").is_file()
    refused(capsys, ["export", "extract/model.nsc", "--format", "onnx", "--out", "extract/model.nsc", "--overwrite"],
            "is the file being exported", w)
    netsift.evaluate("train")  # the run still evaluates


def test_report_and_run_outputs_never_land_on_a_run(w, capsys):
    refused(capsys, ["report", "train", "--out", "train", "--no-plots"], "is a run folder", w)
    refused(capsys, ["report", "train", "--out", "extract/tables", "--no-plots"], "inside a run folder", w)
    (w / "rep").mkdir()
    os.symlink(w / "train/config.json", w / "rep/report.csv")  # a planted link is replaced, not written through
    before = (w / "train/config.json").read_bytes()
    assert main(["report", "train", "--out", "rep", "--no-plots", "-q"]) == 0
    assert (w / "train/config.json").read_bytes() == before and not (w / "rep/report.csv").is_symlink()
    for argv in (["train", "--model", "lenet300", *DIGITS, "--out", ""], ["export", "train", "--out", ""],
                 ["demo", "--out", ""]):
        refused(capsys, argv, "must name", w)
    (w / "holder").mkdir()
    shutil.copytree(w / "train", w / "holder/inner")
    refused(capsys, ["train", "--model", "lenet300", *DIGITS, "--out", "holder", "--overwrite", "--force"],
            "holds another run", w)


# ------------------------------------------------------------------------------ 2. every read through its schema

@pytest.mark.parametrize("damage, argv, needle", [
    (lambda w: (w / "train/result.json").write_bytes(b'{"test_acc": "\xff\xfe"}'), ["report", "train", "--out", "r"],
     "corrupt"),
    (lambda w: (w / "train/config.json").write_bytes(b"\xc3\x28{}"), ["eval", "train"], "corrupt"),
    (lambda w: (w / "train/checkpoint.json").write_text('"a string"'),
     ["train", "--model", "lenet300", *DIGITS, "--epochs", "2", "--out", "train", "--resume"], "must be an object"),
    (lambda w: (w / "train/checkpoint.json").write_text(json.dumps({**json.loads(
        (w / "train/checkpoint.json").read_text()), "processes": "two"})),
     ["train", "--model", "lenet300", *DIGITS, "--epochs", "2", "--out", "train", "--resume"], "processes"),
    (lambda w: (w / "train/metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n'),
     ["report", "train", "--out", "r"], "line 2"),
    (lambda w: (w / "train/metrics.jsonl").write_text('{"epoch": "first"}\n'), ["report", "train", "--out", "r"],
     "epoch must be an integer"),
    (lambda w: (w / "train/config.json").write_text("[]"), ["report", "train", "--out", "r"], "must be an object"),
])
def test_every_file_is_read_through_its_schema(w, capsys, damage, argv, needle):
    damage(w)
    refused(capsys, argv, needle, w)


def test_a_metrics_line_cut_short_is_left_out():
    from netsift.readers import read_metrics

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"metrics-{os.getpid()}.jsonl"
    try:
        path.write_bytes(b'{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2, "tra')
        assert [r["epoch"] for r in read_metrics(path)] == [1]
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ 3. the Python API's argument types

def _digits_module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


QUICK = dict(progress=False, latency_threads=None)


@pytest.mark.parametrize("call, needle", [
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, finetune={"bogus": 1}, **QUICK), "no field 'bogus'"),
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, finetune=[1], **QUICK), "finetune must be a TrainConfig"),
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, finetune={"lr": "high"}, **QUICK), "--lr"),
    (lambda: netsift.train("lenet300", "digits", config=7, **QUICK), "config must be a TrainConfig"),
    (lambda: netsift.train("lenet300", "digits", epochs=1, overwrite="yes", **QUICK), "overwrite must be True"),
    (lambda: netsift.train("lenet300", "digits", epochs=1, latency_threads=True, progress=False), "latency_threads"),
    (lambda: netsift.train("lenet300", "digits", epochs=1, log_with=3, **QUICK), "log_with"),
    (lambda: netsift.train("lenet300", "digits", epochs=1, out=5, **QUICK), "out must be a path"),
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, layer_density={"1": 2.0}, **QUICK), "kept fraction"),
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, example_input="x", **QUICK), "example_input"),
    (lambda: netsift.prune("lenet300", "digits", macs=0.5, ignored_layers=3, **QUICK), "ignored_layers"),
    (lambda: netsift.evaluate(None), "path must be a run folder, a compact file, a returned result or an nn.Module"),
    (lambda: netsift.export(5), "src must be a run folder, a compact file, a returned result or an nn.Module"),
    (lambda: netsift.export("x", fmt=["onnx"]), "fmt must be a string"),
    (lambda: netsift.load_model(5), "path must be a path"),
    (lambda: netsift.build_model("conv2", in_channels="3"), "in_channels must be an integer"),
    (lambda: netsift.save_model("x", "not a module"), "model must be an nn.Module"),
    (lambda: netsift.load_data("digits", val_fraction=1.5), "val_fraction must be a number"),
])
def test_the_api_refuses_wrong_types_in_one_line(call, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NetsiftError, match=needle):
        call()
    assert not any(tmp_path.iterdir())


def test_a_finetune_config_may_be_a_dict(runs):
    r = netsift.prune(runs / "train", method="l1", macs=0.5, finetune={"epochs": 1, "max_steps": 1}, **QUICK)
    assert r.finetuned and 0 <= r.test_acc <= 1


def test_prune_image_size_is_compared_with_the_runs_own(w, capsys):
    refused(capsys, ["prune", "--checkpoint", "train", "--image-size", "16", "--method", "l1", "--macs", "0.5",
                     "--out", "p"], "image_size=8, not 16", w)
    r = netsift.prune(w / "train", method="l1", macs=0.5, image_size=8, finetune_epochs=0, **QUICK)
    assert r.image_size == 8
    with pytest.raises(NetsiftError, match="image_size=8, not 12"):
        netsift.prune(w / "train", method="l1", macs=0.5, image_size=12, finetune_epochs=0, **QUICK)


# ------------------------------------------------------------------------------ 4. non-finite values where they enter

class _Items(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _poisoned_module(kind: str) -> nn.Module:
    m = _digits_module()
    with torch.no_grad():
        if kind == "weight":
            m[1].weight[3, 5] = float("nan")
        else:
            m.register_buffer("scale", torch.tensor([1.0, float("inf")]))
    return m


@pytest.mark.parametrize("kind", ["weight", "buffer"])
@pytest.mark.parametrize("pipeline", ["train", "prune", "extract"])
def test_a_model_with_a_non_finite_tensor_is_refused_before_any_work(kind, pipeline, tmp_path):
    call = {"train": lambda m: netsift.train(m, "digits", epochs=1, out=tmp_path / "o", **QUICK),
            "prune": lambda m: netsift.prune(m, "digits", method="l1", macs=0.5, out=tmp_path / "o", **QUICK),
            "extract": lambda m: netsift.extract(m, "digits", epochs=1, out=tmp_path / "o", progress=False)}[pipeline]
    name = "1.weight" if kind == "weight" else "scale"
    with pytest.raises(NetsiftError, match=f"NaN or infinite values in {'parameter' if kind == 'weight' else 'buffer'} "
                                           f"{name}"):
        call(_poisoned_module(kind))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("make, needle", [
    (lambda x, y, bad: {"train": TensorDataset(x, y), "test": TensorDataset(bad, y)}, "the test data set holds NaN"),
    (lambda x, y, bad: {"train": _Items(x, y), "test": _Items(torch.cat([x[:200], bad[200:]]), y)},
     "batch 1 of the test loader holds NaN"),
    (lambda x, y, bad: {"train": DataLoader(_Items(torch.cat([x[:250], bad[250:]]), y), batch_size=32),
                        "val": _Items(x, y), "test": _Items(x, y)}, "of the train loader holds NaN"),
    (lambda x, y, bad: {"train": TensorDataset(x, torch.where(torch.arange(300) == 7, -3, y)),
                        "test": TensorDataset(x, y)}, "negative label"),
    (lambda x, y, bad: {"train": _Items(x, torch.where(torch.arange(300) == 299, 11, y)), "val": _Items(x, y),
                        "test": _Items(x, y)}, "do not fit the model's 10 outputs"),
])
def test_non_finite_inputs_and_bad_labels_of_user_data_are_refused(make, needle):
    x, y = _data()
    bad = x.clone()
    bad[:, 0, 2, 2] = float("nan")
    with pytest.raises(NetsiftError, match=needle):
        netsift.train(_digits_module(), make(x, y, bad), epochs=1, batch_size=32, **QUICK)


@pytest.mark.parametrize("field, value, needle", [
    ("test_acc", float("nan"), "test_acc must be a finite number"),
    ("test_acc", 1.7, "test_acc must be a number in [0, 1]"),
    ("val_acc", -0.2, "val_acc must be a number in [0, 1]"),
    ("wall_s", float("inf"), "wall_s must be a finite number"),
    ("macs", "many", "macs must be an integer"),
    ("layers", [{"name": "1", "density": 3}], "layers[0].density"),
])
def test_report_range_checks_result_fields(w, capsys, field, value, needle):
    path = w / "train/result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    err = refused(capsys, ["report", "train", "--out", "r", "--no-plots"], needle, w)
    assert "train/result.json" in err


# ------------------------------------------------------------------------------ 5. budgets and memory before work

def test_an_unreachable_budget_names_the_smallest_reachable_one(w, capsys):
    err = refused(capsys, ["prune", "--checkpoint", "train", "--method", "l1", "--macs", "1e-6", "--out", "p"],
                  "smallest reachable budget is --macs", w)
    with pytest.raises(NetsiftError, match="largest reachable budget is --macs 0.02"):  # capped by a layer density
        netsift.prune(w / "train", method="l1", macs=0.5, layer_density={"1": 0.001}, **QUICK)
    smallest = err.rsplit("--macs ", 1)[1].strip()
    assert main(["prune", "--checkpoint", "train", "--method", "l1", "--macs", smallest, "--finetune-epochs", "0",
                 "--out", "p", "-q", "--latency-threads", "0"]) == 0


@pytest.mark.slow
def test_a_step_that_cannot_fit_is_refused_before_it_runs(w, capsys, monkeypatch):
    import resource

    monkeypatch.setenv("NETSIFT_MEMORY_LIMIT", "300M")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = refused(capsys, ["train", "--model", "resnet20", "--data", "digits", "--image-size", "512", "--batch-size",
                           "64", "--max-steps", "1", "--epochs", "1", "--out", "big"], "training step", w)
    assert "512x512 px" in err and "batches of 64" in err and "GB" in err and "300 MB of memory available" in err
    with pytest.raises(NetsiftError, match="a training step on 512x512 px inputs in batches of 64"):
        netsift.train("resnet20", "digits", image_size=512, batch_size=64, epochs=1, **QUICK)
    # a network whose weights alone would not fit is refused before it is built (conv2's first FC layer at 256 px)
    refused(capsys, ["train", "--model", "conv2", "--data", "digits", "--image-size", "256", "--out", "big"],
            "268,", w)
    # KiB: the refused step needs over 10 GB; what grew is imports (torch._dynamo) and one-sample checks
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 600_000


@pytest.mark.slow
def test_the_estimate_follows_the_batch_and_evaluation_batches_shrink_to_fit(monkeypatch):
    from netsift import memory
    from netsift.data import load_data
    from netsift.measure import measure
    from netsift.models import build_model

    net = build_model("conv2", 1, 32, 10, 1.0)
    small, large = (memory.estimate_step(net, (1, 32, 32), b, train=False).activations for b in (16, 64))
    assert 3 < large / small < 4.5  # activations grow with the batch
    train = memory.estimate_step(net, (1, 32, 32), 64)
    assert train.activations > large and train.state == sum(p.numel() * 4 for p in net.parameters())  # momentum
    assert 64 * 64 * 32 * 32 * 4 < large < 20 * 64 * 64 * 32 * 32 * 4  # at least one 64-channel map, a few at most
    bundle = load_data("digits").resized(32)
    full = measure(net, bundle)
    monkeypatch.setenv("NETSIFT_MEMORY_LIMIT", "60M")
    assert memory.fitting_batch(net, (1, 32, 32), 359) < 359
    assert measure(net, bundle)["test_acc"] == full["test_acc"]  # smaller batches, the same figures


# ------------------------------------------------------------------------------ 6. signals, temporary files, env

def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_sigterm_ends_a_run_like_ctrl_c_and_it_resumes(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "netsift", "train", "--model", "lenet300", "--data", "digits", "--batch-size", "16",
            "--epochs", "200", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(NETSIFT_PROGRESS="lines"))
    deadline = time.time() + 120
    while not (out / "checkpoint.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert lines[-1] == "netsift: terminated (SIGTERM); the last checkpoint is kept (continue with --resume)"
    assert not any("done in" in line for line in lines) and "Traceback" not in err
    done = subprocess.run([*argv[:-4], "--epochs", "2", "--out", str(out), "--resume"], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr


def test_no_done_in_line_before_an_error_or_an_interrupt(capsys, monkeypatch):
    from netsift import progress

    monkeypatch.setenv("NETSIFT_PROGRESS", "lines")
    for exc in (NetsiftError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), progress.session(True), progress.stage("netsift x", summary_after=0.0):
            raise exc
        assert "done in" not in capsys.readouterr().err
    with progress.session(True), progress.stage("netsift x", summary_after=0.0):
        pass
    assert "netsift x: done in" in capsys.readouterr().err


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, NetsiftError, None])
def test_an_interrupted_selection_does_not_say_done(interrupt, capsys, monkeypatch):
    """A slow selection ends with "l1 selection: done in ..." only when it finished (SIGTERM mid-GFS once wrote it
    before "terminated")."""
    import importlib

    from sklearn.datasets import load_digits

    l1 = importlib.import_module("netsift.selection.l1")
    original, real = l1.select, time.perf_counter

    def slow(ctx, **options):  # the clock jumps 10 s, past the report's 2 s threshold
        monkeypatch.setattr(time, "perf_counter", lambda: real() + 10.0)
        if interrupt is not None:
            raise interrupt("stopped")
        return original(ctx, **options)

    monkeypatch.setattr(l1, "select", slow)
    monkeypatch.setenv("NETSIFT_PROGRESS", "lines")
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y))
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    loaders = {"train": DataLoader(data, batch_size=64), "test": DataLoader(data, batch_size=256)}
    if interrupt is None:
        netsift.prune(model, loaders, method="l1", macs=0.5, latency_threads=None)
        assert "l1 selection: done in" in capsys.readouterr().err
    else:
        with pytest.raises(interrupt):
            netsift.prune(model, loaders, method="l1", macs=0.5, latency_threads=None)
        assert "selection: done in" not in capsys.readouterr().err


@pytest.mark.slow
def test_temporary_files_of_dead_writers_are_cleaned_up_but_not_a_live_ones(w):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [w / f".model.nsc.{dead.pid}.1a2b3c4d.tmp", w / f".model.onnx.{dead.pid}.tmp"]
        kept = [w / f".model.nsc.{live.pid}.5e6f7a8b.tmp", w / f".model.onnx.{live.pid}.tmp"]
        for p in stale + kept:
            (w / "extract" / p.name).write_bytes(b"half-written")
        assert main(["export", "extract", "--overwrite", "-q"]) == 0
        assert main(["export", "extract", "--format", "onnx", "--overwrite", "-q"]) == 0
        assert not any((w / "extract" / p.name).exists() for p in stale)
        assert all((w / "extract" / p.name).exists() for p in kept)
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("name, value, needle", [
    ("NETSIFT_PROGRESS", "loud", "auto, bar, lines or off"),
    ("NETSIFT_PROGRESS_INTERVAL", "soon", "NETSIFT_PROGRESS_INTERVAL must be a number"),
    ("NETSIFT_PROGRESS_INTERVAL", "-1", "NETSIFT_PROGRESS_INTERVAL"),
    ("NETSIFT_MAX_PARAMS", "1e9", "NETSIFT_MAX_PARAMS must be an integer"),
    ("NETSIFT_DIST_TIMEOUT", "inf", "NETSIFT_DIST_TIMEOUT"),
    ("NETSIFT_GRAPH_TIMEOUT", "-5", "NETSIFT_GRAPH_TIMEOUT"),
    ("NETSIFT_SHARE_PREFIX", "often", "auto, always or never"),
    ("NETSIFT_MEMORY_LIMIT", "lots", "NETSIFT_MEMORY_LIMIT"),
    ("NETSIFT_DATA", "", "NETSIFT_DATA"),
    ("NETSIFT_FAULT", "explode:1", "NETSIFT_FAULT"),
    ("NETSIFT_PROGRES", "off", "did you mean NETSIFT_PROGRESS"),
])
def test_every_netsift_variable_is_validated(w, capsys, monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    refused(capsys, ["eval", "train"], needle, w)
    with pytest.raises(NetsiftError, match=needle.split(" must")[0]):
        netsift.evaluate("train")
