"""What a user sees: progress in a log file, --quiet, the report over many runs, trackers, honest --help, a fast
start (no torch for --help, --version, models, datasets), and the light declarations behind it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import netsift
from netsift import progress

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NETSIFT_PROGRESS", "TQDM_DISABLE")}
    env.update({"PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- start-up


def test_startup_commands_do_not_import_torch():
    script = """
import sys, time
from netsift.cli import main
runs = [["--version"], ["models"], ["datasets"], ["--help"], ["train", "--help"], ["extract", "--help"],
        ["prune", "--help"], ["report", "--help"], ["export", "--help"], ["eval", "--help"]]
for argv in runs:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "numpy", "accelerate", "torch_pruning", "matplotlib") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr, out.stderr[-500:]
    assert "netsift 0." in out.stdout and "lenet300" in out.stdout and "fashion-mnist" in out.stdout


def test_light_declarations_match_the_implementations():
    """One declaration per method (masks/methods.py, selection/methods.py) and per zoo model (models.ZOO); each
    names an implementation that exists, and every implementation file is declared."""
    from netsift import masks, models, selection

    for spec in masks.METHODS.values():
        assert callable(spec.make), spec.name
        assert not hasattr(spec.implementation, "METHOD"), spec.name
    for spec in selection.METHODS.values():
        assert callable(spec.select), spec.name
    declared = {s.module for s in masks.METHODS.values()}
    for path in (ROOT / "src/netsift/masks").glob("*.py"):
        if re.search(r"^def make\(", path.read_text(), re.M):
            assert path.stem in declared, f"{path.name} implements a mask method missing from masks.METHODS"
    declared = {s.module for s in selection.METHODS.values()}
    for path in (ROOT / "src/netsift/selection").glob("*.py"):
        if re.search(r"^def select\(", path.read_text(), re.M):
            assert path.stem in declared, f"{path.name} implements a selection method missing from selection.METHODS"
    registry = models.REGISTRY
    for name, (module, description) in models.ZOO.items():
        assert registry[name].builder.__module__ == f"netsift.models.{module}", name
        assert registry[name].description == description
    builtin = {n for n, info in registry.items() if info.builder.__module__.startswith("netsift.models.")}
    assert builtin == set(models.ZOO)
    import importlib

    from netsift.commands import export as export_command

    assert export_command.FORMATS == importlib.import_module("netsift.pipelines.export").FORMATS


# ---------------------------------------------------------------------------------------------- help


def _subparsers():
    from netsift.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_help_lists_fixed_values_and_each_default_once_and_true():
    for command, parser in _subparsers().items():
        for action in parser._actions:
            help_text = action.help or ""
            flag = action.option_strings[-1] if action.option_strings else action.dest
            assert help_text.count("(default") <= 1, f"{command} {flag}: {help_text}"
            if action.choices and action.metavar is not None:  # (without a metavar argparse shows the choices)
                shown = f"{action.metavar} {help_text}"
                assert all(str(c) in shown for c in action.choices), f"{command} {flag} does not list its values"
            m = re.search(r"\(default: ([^)]*)\)", help_text)
            if m and action.default not in (None, "==SUPPRESS=="):
                value = m.group(1)
                if isinstance(action.default, bool):
                    assert value == ("on" if action.default else "off"), f"{command} {flag}"
                else:
                    assert value == str(action.default), f"{command} {flag}: shows {value}, is {action.default}"
    prune = " ".join(_subparsers()["prune"].format_help().split())
    assert "--method {gfs,backward,l1,taylor,bn-scale,random}" in prune
    assert "(default 0.02)" not in prune and "(default: 0.02 when --macs is not given)" in prune
    extract = " ".join(_subparsers()["extract"].format_help().split())
    assert "{digits,mnist,fashion-mnist,cifar10,cifar100,imagenet,synthetic}" in extract
    density = next(a for a in _subparsers()["extract"]._actions if "--density" in a.option_strings).help
    assert density.count("emergent") == 1 and density.count("edge-popup 0.5") == 1


def test_datasets_says_found_or_missing_and_where_it_looked(run_cli, tmp_path):
    from netsift.data import write_idx

    import numpy as np

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for stem, shape in [("train-images-idx3-ubyte", (4, 28, 28)), ("train-labels-idx1-ubyte", (4,)),
                        ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))]:
        write_idx(mnist / stem, np.zeros(shape, dtype=np.uint8))
    code, out, _ = run_cli("datasets", "--data-dir", tmp_path)
    assert code == 0
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("mnist "))
    assert " found " in lines[row] and str(mnist) in lines[row + 1]
    row = next(i for i, line in enumerate(lines) if line.startswith("cifar10 "))
    assert " missing " in lines[row] and "looked in:" in lines[row + 1] and str(tmp_path) in lines[row + 1]
    assert re.search(r"^digits\s+built in", out, re.M)


# ---------------------------------------------------------------------------------------------- progress


@pytest.mark.slow
def test_train_in_a_log_file_reports_every_epoch_while_it_runs(tmp_path):
    """Output to a pipe (a log file, CI): one line per epoch as it ends, and no silence longer than 10 s until the
    run's last line (then the interpreter exits: freeing torch can take seconds more on a loaded machine)."""
    cmd = [sys.executable, "-m", "netsift", "train", "--data", "digits", "--epochs", "6", "--batch-size", "64",
           "--out", str(tmp_path / "run")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[tuple[float, str, bool]] = []  # (arrival time, line, process still running)
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()))
    reader.start()
    for line in proc.stderr:
        lines.append((time.monotonic() - t0, line.rstrip(), proc.poll() is None))
    proc.wait(timeout=300)
    reader.join()
    end = time.monotonic() - t0
    assert proc.returncode == 0, "\n".join(l for _, l, _ in lines)
    epochs = [(t, l, running) for t, l, running in lines if re.search(r"epoch \d/6: train loss", l)]
    assert [re.search(r"epoch (\d)/6", l).group(1) for _, l, _ in epochs] == list("123456"), lines
    assert epochs[0][2], "the first epoch's line only arrived when the run had ended (buffered?)"
    for key in ("val acc", "lr", "img/s", "elapsed", "ETA"):
        assert key in epochs[0][1]
    times = [0.0] + [t for t, _, _ in lines]
    if times[-1] >= 10.0:  # a run of 10 s or more says when it is done
        assert re.fullmatch(r"netsift train: done in .*", lines[-1][1]), lines[-1]
    else:
        times.append(end)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 10.0, f"silent for {max(gaps):.1f} s: {lines}"
    assert "train loss" not in stdout[0] and "test_acc" in stdout[0]  # progress on stderr, results on stdout


@pytest.mark.slow
def test_quiet_silences_progress_but_not_errors(tmp_path):
    cmd = [sys.executable, "-m", "netsift", "train", "--data", "digits", "--epochs", "2", "--quiet",
           "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(NETSIFT_PROGRESS_INTERVAL="0.5"), timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    bad = subprocess.run(cmd[:-2] + ["--width", "abc"], capture_output=True, text=True, env=_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "invalid float value: 'abc'" in bad.stderr


@pytest.mark.slow
def test_python_progress_argument_and_selection_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    netsift.train("lenet300", "digits", epochs=2, batch_size=64, progress=False, latency_threads=None)
    assert capsys.readouterr().err == ""
    dense = netsift.train("lenet300", "digits", epochs=2, batch_size=64, latency_threads=None, out=tmp_path / "d")
    err = capsys.readouterr().err
    assert "train lenet300 epoch 2/2: train loss" in err
    netsift.prune(tmp_path / "d", method="gfs", macs=0.5, candidates=4, finetune_epochs=0, latency_threads=None)
    err = capsys.readouterr().err
    assert re.search(r"gfs group 1/2 \(1\): kept \d+/300 channels, elapsed", err), err
    assert "gfs group 2/2 (3)" in err
    netsift.prune(tmp_path / "d", method="l1", tolerance=0.05, finetune_epochs=0, latency_threads=None)
    err = capsys.readouterr().err
    assert re.search(r"l1 group 2/2 \(3\): kept \d+/100 channels, held-out acc 0\.\d+ \(start 0\.\d+\)", err), err
    assert dense.test_acc > 0.5


def test_terminal_bars_keep_the_finished_lines(monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    with progress.task("train demo", total=4, unit="step") as t:
        for i in range(4):
            t.update(1, loss=0.5)
        t.log("train demo epoch 1/1: done")
    err = capsys.readouterr().err
    assert "train demo epoch 1/1: done\n" in err and "4/4" in err and "loss=0.5000" in err


@pytest.mark.slow
def test_heartbeat_and_stray_tasks(monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.5")
    with pytest.raises(RuntimeError):
        with progress.scope():
            t = progress.begin("slow step", total=10, unit="batch")
            t.update(3, loss=0.25)
            time.sleep(1.6)
            raise RuntimeError("boom")
    err = capsys.readouterr().err
    assert "slow step: 3/10 batches, loss 0.2500, elapsed" in err and "ETA" in err
    time.sleep(1.0)  # the stray task was ended by scope(): no more heartbeats
    assert capsys.readouterr().err == ""
    assert progress.duration(3725) == "1:02:05" and progress.duration(65) == "1:05"


# ---------------------------------------------------------------------------------------------- trackers


def test_log_with_csv_and_a_missing_tracker(run_cli, tmp_path):
    r = netsift.train("lenet300", "digits", epochs=3, batch_size=64, latency_threads=None, out=tmp_path / "t",
                      log_with="csv")
    rows = list(csv.DictReader(open(tmp_path / "t" / "logs" / "netsift" / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3] and float(rows[-1]["val_acc"]) == pytest.approx(
        json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[-1])["val_acc"])
    assert json.loads((tmp_path / "t" / "logs" / "netsift" / "hparams.json").read_text())["epochs"] == 3
    assert r.epochs_run == 3
    with pytest.raises(netsift.NetsiftError, match="unknown tracker 'nope'"):
        netsift.train("lenet300", "digits", epochs=1, log_with="nope")
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        code, _, err = run_cli("train", "--data", "digits", "--log-with", "tensorboard", "--out", tmp_path / "tb")
        assert code == 2 and err.count("\n") == 1 and "pip install tensorboard" in err
        assert not (tmp_path / "tb").exists()


# ---------------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small sweep: dense runs (2 seeds), masks (2 methods x 2 seeds), prunes (2 methods x 2 seeds, nested), and
    a 2-epoch fine-tune of each l1 selection kept inside its folder (as benchmarks/structured.py does)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    quick = {"epochs": 2, "batch_size": 64}
    for seed in (0, 1):
        netsift.train("lenet300", "digits", seed=seed, latency_threads=None, out=root / f"dense-s{seed}", **quick)
        for method, density in (("edge-popup", 0.3), ("gumbel", None)):
            netsift.extract("lenet300", "digits", method, density, seed=seed, out=root / f"{method}-s{seed}", **quick)
        for method in ("l1", "random"):
            netsift.prune(root / "dense-s0", method=method, macs=0.5, seed=seed, latency_threads=None,
                          out=root / "prunes" / f"{method}-s{seed}")
        selected = netsift.load_model(root / "prunes" / f"l1-s{seed}")[0]
        netsift.train(selected, "digits", seed=seed, latency_threads=None, out=root / "prunes" / f"l1-s{seed}" / "ft2",
                      **quick)
    torch.set_num_threads(old)
    return root


@pytest.mark.slow
def test_report_tables_and_plots(run_cli, sweep, tmp_path):
    from PIL import Image

    code, out, err = run_cli("report", sweep, "--out", tmp_path / "rep")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))
    assert len(rows) == 12
    assert sorted(r["kind"] for r in rows) == ["extract"] * 4 + ["fine-tune"] * 2 + ["prune"] * 4 + ["train"] * 2
    assert {r["run"] for r in rows} >= {"dense-s0", "prunes/l1-s1", "gumbel-s0", "prunes/l1-s1/ft2"}
    ft = next(r for r in rows if r["run"] == "prunes/l1-s1/ft2")
    assert ft["command"] == "train" and ft["parent"] == "prunes/l1-s1" and ft["series"] == "l1"
    assert ft["target"] == "0.5" and ft["finetune_budget"] == "2"
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and r["config.seed"] == r["seed"] in ("0", "1")
        assert r["config.train.batch_size"] == ("128" if r["command"] == "prune" else "64")
    summary = list(csv.DictReader(open(tmp_path / "rep" / "summary.csv")))
    assert len(summary) == 6 and all(s["n"] == "2" for s in summary)
    assert {(s["kind"], s["series"], s["finetune_epochs"]) for s in summary if s["series"] == "l1"} == {
        ("prune", "l1", "1"), ("fine-tune", "l1", "2")}
    l1 = next(s for s in summary if s["series"] == "l1" and s["kind"] == "prune")
    l1_runs = [float(r["test_acc"]) for r in rows if r["method"] == "l1" and r["kind"] == "prune"]
    assert float(l1["test_acc"]) == pytest.approx(sum(l1_runs) / 2)
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["accuracy_vs_density.png", "accuracy_vs_macs.png", "layer_densities.png", "layer_widths.png",
                    "training_curves.png"]
    for name in pngs:
        with Image.open(tmp_path / "rep" / name) as im:
            im.load()
            assert im.size[0] > 400 and im.size[1] > 200
            if name == "accuracy_vs_macs.png":  # one panel per fine-tune budget: 0 (selected), 1, 2 epochs
                assert im.size[0] > 3 * 600
    assert "| run | kind | series |" in out and "## Summary" in out and "0." in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert all(f"({name})" in md for name in pngs)


def test_report_of_one_run_and_errors(run_cli, sweep, tmp_path):
    code, out, _ = run_cli("report", sweep / "prunes" / "l1-s0", "--out", tmp_path / "one", "--no-plots")
    assert code == 0 and not list((tmp_path / "one").glob("*.png"))
    assert len(list(csv.DictReader(open(tmp_path / "one" / "report.csv")))) == 1
    code, _, err = run_cli("report", tmp_path / "nothing-here")
    assert code == 2 and "no such run folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", tmp_path / "empty")
    assert code == 2 and "no run folders" in err


def test_result_json_is_flat_enough(sweep):
    """Every key of result.json is a scalar, except `layers`, `groups` and `groups_skipped` (lists of flat records)
    and `input_shape` (a list of ints)."""
    for path in sweep.rglob("result.json"):
        result = json.loads(path.read_text())
        for key, value in result.items():
            if key == "input_shape":
                assert all(isinstance(v, int) for v in value)
            elif key in ("layers", "groups", "groups_skipped"):
                assert value is None or all(isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values())
                                            for v in value)
            else:
                assert not isinstance(value, (dict, list)), (path, key)
        assert result["width"] == 1.0 and result["model"] == "lenet300"


def test_published_runs_are_labelled_published_unless_a_setting_departs_from_it():
    """A --published run's label says published=true, not each setting it implies; a setting given on top of
    --published (here --candidates 10) still shows."""
    from pathlib import Path

    from netsift.report import Run, label_runs

    def run(**settings):
        row = {"command": "prune", "method": "gfs", "model": "vgg11", "width": 0.25, "data": "digits"}
        flat = {"prune.candidates": 50, "prune.select_batch": 128, "prune.published": False,
                "prune.bn_batch_stats": True, "prune.recalibrate_bn": 20, "prune.layer_finetune": 0.0}
        flat.update({f"prune.{k}": v for k, v in settings.items()})
        return Run(Path("x"), row, [], [], [], flat, kind="prune")

    published = dict(published=True, bn_batch_stats=False, recalibrate_bn=0, layer_finetune=0.1)
    labels = label_runs([run(), run(), run(**published), run(**published, candidates=10)])
    assert labels[0] == labels[1] == "gfs"
    assert labels[2] == "gfs published=true"
    assert labels[3] == "gfs candidates=10 published=true"
