"""Hostile inputs, round 3: new cases of every class of issue 22, each run as a real process and classified.

Every case starts from a fresh copy of a tree of real runs (a ``train`` run of lenet300 on digits, an
``extract`` run with its compact export, a ``prune`` run, a folder holding a run), damages it or not, then runs
one ``python -m netsift ...`` command or one Python API call in its own subprocess (``NETSIFT_PROGRESS=off``,
one thread), polling its resident memory. The outcome is one of

* ``clean``: as expected: a refusal is exit status 2 with exactly one line ``netsift: error: ...`` on stderr (API:
  :class:`netsift.NetsiftError`) naming what the case expects, and every file of the tree byte for byte as before
  with nothing new; an accepted case (``expect="ok"``) succeeds and its output passes the case's check;
* ``traceback``: a traceback, another exit status, or more than one line of error;
* ``silent garbage``: a bad input accepted (exit 0), or an accepted case whose output fails its check;
* ``lost``: a file that existed before changed or vanished (besides what an accepted case may replace);
* ``debris``: a refused command left a new file behind;
* ``unbounded``: the process ran past its time limit or its resident memory past :data:`RSS_LIMIT`.

    PYTHONPATH=src .venv/bin/python benchmarks/hostile.py     # writes benchmarks/results/hostile.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RSS_LIMIT = 3 * 2**30
"""A case whose process holds more than this much resident memory is unbounded (the tree's runs need < 0.5 GB)."""
TIME_LIMIT = 240.0
SMALL_MEMORY = {"NETSIFT_MEMORY_LIMIT": "2G"}
"""Memory cases model a machine with 2 GB free, so that they are refused (or not) the same way everywhere."""

DIGITS = ["--data", "digits", "--batch-size", "64", "--max-steps", "2", "--epochs", "1"]
TRAIN = ["train", "--model", "lenet300", *DIGITS]
PRUNE = ["prune", "--checkpoint", "train", "--method", "l1", "--macs", "0.5", "--finetune-epochs", "0",
         "--latency-threads", "1"]


# ------------------------------------------------------------------------------------------------ the tree

def build_base(root: Path) -> None:
    """The runs every case starts from."""
    env = _env()
    for argv in (["train", "--model", "lenet300", *DIGITS, "--epochs", "2", "--out", "train"],
                 ["extract", "--model", "lenet300", *DIGITS, "--out", "extract"], ["export", "extract"],
                 [*PRUNE[:-2], "--finetune-epochs", "1", "--out", "prune"],
                 ["train", "--model", "lenet300", *DIGITS, "--out", "holder/inner"]):
        subprocess.run([sys.executable, "-m", "netsift", *argv], cwd=root, env=env, check=True, capture_output=True)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = ("link:" + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else
                        hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSIFT_")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "NETSIFT_PROGRESS": "off",
            "TQDM_DISABLE": "1", **extra}


# ------------------------------------------------------------------------------------------------ damage

def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


def write(rel: str, data: bytes | str):
    return lambda w: (w / rel).write_bytes(data if isinstance(data, bytes) else data.encode())


def set_keys(rel: str, **values):
    return lambda w: edit_json(w / rel, **values)


def poison_model(rel_stem: str, value: float):
    """Put ``value`` in the first weight of a saved model and re-hash the pair (a careful forgery)."""
    def damage(w: Path) -> None:
        import torch
        from safetensors.torch import load, save

        stem = w / rel_stem
        tensors = load(stem.with_suffix(".safetensors").read_bytes())
        key = next(k for k in tensors if k.endswith("weight"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
        blob = save(tensors)
        stem.with_suffix(".safetensors").write_bytes(blob)
        edit_json(stem.with_suffix(".json"), tensors_sha256=hashlib.sha256(blob).hexdigest())
        del torch
    return damage


def history_strings(w: Path) -> None:
    edit_json(w / "train/checkpoint.json", history=["epoch one"])


def plant_link(w: Path) -> None:
    (w / "rep").mkdir()
    os.symlink(w / "train/result.json", w / "rep/report.md")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stale_temp(w: Path) -> None:
    (w / f"extract/.model.nsc.{dead_pid()}.0badf00d.tmp").write_bytes(b"half")


# ------------------------------------------------------------------------------------------------ checks

def evaluates(run: str):
    """An accepted case's check: the run still evaluates to a sane accuracy."""
    def check(w: Path, out: str) -> bool:
        r = subprocess.run([sys.executable, "-m", "netsift", "eval", run], cwd=w, env=_env(), capture_output=True,
                           text=True, timeout=120)
        return r.returncode == 0 and "test_acc" in r.stdout
    return check


def sane_result(w: Path, out: str) -> bool:
    data = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    acc = data.get("test_acc")
    return isinstance(acc, float) and 0 <= acc <= 1


def no_stale_temp(w: Path, out: str) -> bool:
    return not any(p.name.endswith(".tmp") for p in (w / "extract").iterdir())


def report_link_replaced(w: Path, out: str) -> bool:
    return not (w / "rep/report.md").is_symlink() and (w / "rep/report.md").is_file()


# ------------------------------------------------------------------------------------------------ API preamble

API = r"""
import json, sys, os, torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
import netsift
from netsift.errors import NetsiftError
torch.set_num_threads(1)
Q = dict(progress=False, latency_threads=None)
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
def bnnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))
g = torch.Generator().manual_seed(0)
X, Y = torch.randn(300, 1, 8, 8, generator=g), torch.randint(0, 10, (300,), generator=g)
class Items(Dataset):
    def __init__(self, x, y): self.x, self.y = x, y
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]
def with_(t, index, value):
    t = t.clone(); t.view(-1)[index] = value; return t
def poisoned(m, name, value):
    with torch.no_grad():
        dict(m.named_parameters(), **dict(m.named_buffers()))[name].view(-1)[0] = value
    return m
try:
    r = CALL
except NetsiftError as e:
    print(f"netsift: error: {e}", file=sys.stderr)
    sys.exit(2)
fields = r.to_dict() if hasattr(r, "to_dict") else r if isinstance(r, dict) else {}
print(json.dumps({k: v for k, v in fields.items() if isinstance(v, (int, float, str, type(None)))}))
"""


# ------------------------------------------------------------------------------------------------ the cases

def cli(cid, cls, argv, needle=None, damage=None, expect="error", check=None, allowed=(), env=None):
    return {"id": cid, "class": cls, "kind": "cli", "argv": argv, "needle": needle, "damage": damage,
            "expect": expect, "check": check, "allowed": set(allowed), "env": env or {}}


def api(cid, cls, call, needle=None, damage=None, expect="error", check=None, allowed=(), env=None):
    return {"id": cid, "class": cls, "kind": "api", "call": call, "needle": needle, "damage": damage,
            "expect": expect, "check": check, "allowed": set(allowed), "env": env or {}}


OUT = "1-outputs"
READ = "2-reads"
TYPES = "3-api-types"
FINITE = "4-non-finite"
BUDGET = "5-budgets-memory"
MISC = "6-signals-temps-env"

CASES = [
    # --- 1. an output never replaces a file of a run unless it is the command's own artifact of the same kind
    cli("export-onnx-over-best-json", OUT, ["export", "train", "--format", "onnx", "--out", "train/best.json",
                                            "--overwrite"], "not its onnx export"),
    cli("export-safetensors-over-model-pair", OUT, ["export", "train", "--format", "safetensors", "--out",
                                                    "train/model.safetensors", "--overwrite"], "not its safetensors"),
    cli("export-safetensors-over-best-pair", OUT, ["export", "prune", "--format", "safetensors", "--out",
                                                   "prune/best.safetensors", "--overwrite"], "not its safetensors"),
    cli("export-compact-over-metrics", OUT, ["export", "extract", "--out", "extract/metrics.jsonl", "--overwrite"],
        "not its compact export"),
    cli("export-compact-over-checkpoint-json", OUT, ["export", "extract", "--out", "extract/checkpoint.json",
                                                     "--overwrite"], "not its compact export"),
    cli("export-onnx-into-another-runs-file", OUT, ["export", "extract", "--format", "onnx", "--out",
                                                    "prune/model.onnx", "--overwrite"], "not the run being exported"),
    cli("export-onnx-new-file-in-another-run", OUT, ["export", "train", "--format", "onnx", "--out",
                                                     "extract/other.onnx"], "not the run being exported"),
    cli("export-onto-a-run-folder", OUT, ["export", "train", "--format", "onnx", "--out", "prune", "--overwrite"],
        "is a folder"),
    cli("export-nsc-to-subnet-pair", OUT, ["export", "extract/model.nsc", "--format", "safetensors", "--out",
                                           "extract/subnet.safetensors", "--overwrite"], "not its safetensors"),
    cli("export-nsc-over-itself", OUT, ["export", "extract/model.nsc", "--format", "onnx", "--out",
                                        "extract/model.nsc", "--overwrite"], "is the file being exported"),
    cli("export-over-lock-file", OUT, ["export", "train", "--format", "onnx", "--out", "train/.netsift.lock",
                                       "--overwrite"], "not its onnx export"),
    cli("export-onnx-own-kind-replaced", OUT, ["export", "prune", "--format", "onnx", "--out", "prune/model.onnx",
                                               "--overwrite"], expect="ok", check=evaluates("prune"),
        allowed={"prune/model.onnx"}),
    cli("report-into-a-run", OUT, ["report", "train", "--out", "prune", "--no-plots"], "is a run folder"),
    cli("report-inside-a-run", OUT, ["report", "train", "--out", "train/tables", "--no-plots"], "inside a run folder"),
    cli("report-through-a-planted-link", OUT, ["report", "train", "--out", "rep", "--no-plots"], damage=plant_link,
        expect="ok", check=report_link_replaced, allowed={"rep/report.md", "rep/report.csv", "rep/summary.csv"}),
    cli("train-out-a-run-file", OUT, [*TRAIN, "--out", "train/config.json"], "not a folder"),
    cli("overwrite-force-a-folder-of-runs", OUT, [*TRAIN, "--out", "holder", "--overwrite", "--force"],
        "holds another run"),
    cli("export-out-empty", OUT, ["export", "train", "--format", "onnx", "--out", ""], "must name"),
    cli("report-out-empty", OUT, ["report", "train", "--out", ""], "must name"),
    cli("extract-out-empty", OUT, ["extract", "--model", "lenet300", *DIGITS, "--out", ""], "must name"),
    cli("prune-out-empty", OUT, [*PRUNE, "--out", ""], "must name"),

    # --- 2. every file read through its schema (not UTF-8, valid JSON of the wrong shape)
    cli("result-not-utf8-report", READ, ["report", "train", "--out", "r"], "corrupt",
        write("train/result.json", b'{"command": "train", "model": "\xe9\xff"}')),
    cli("result-a-list-report", READ, ["report", "prune", "--out", "r"], "must be an object",
        write("prune/result.json", "[1, 2, 3]")),
    cli("config-not-utf8-eval", READ, ["eval", "train"], "corrupt", write("train/config.json", b"\xff\xfe\x00{")),
    cli("config-a-number-prune", READ, [*PRUNE, "--out", "p"], "must be an object", write("train/config.json", "42")),
    cli("checkpoint-json-array-resume", READ, [*TRAIN, "--epochs", "3", "--out", "train", "--resume"],
        "must be an object", write("train/checkpoint.json", "[]")),
    cli("checkpoint-processes-zero-resume", READ, [*TRAIN, "--epochs", "3", "--out", "train", "--resume"],
        "processes", set_keys("train/checkpoint.json", processes=0)),
    cli("checkpoint-history-strings-resume", READ, [*TRAIN, "--epochs", "3", "--out", "train", "--resume"],
        "history[0]", history_strings),
    cli("metrics-garbage-line-report", READ, ["report", "train", "--out", "r"], "line 1",
        write("train/metrics.jsonl", "%%%\n{\"epoch\": 1}\n")),
    cli("metrics-not-utf8-report", READ, ["report", "train", "--out", "r"], "corrupt",
        write("train/metrics.jsonl", b"\xff\xff\n{\"epoch\": 1}\n")),
    cli("metrics-row-a-list-report", READ, ["report", "train", "--out", "r"], "must be an object",
        write("train/metrics.jsonl", "[1, 2]\n")),
    cli("model-json-manifest-null-eval", READ, ["eval", "train"], "manifest", set_keys("train/model.json",
                                                                                          manifest=None)),
    cli("best-json-a-string-resume", READ, [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "best",
        write("train/best.json", '"best"')),
    cli("selection-json-list-resume", READ, [*PRUNE, "--out", "prune", "--resume"], "selection",
        write("prune/selection.json", "[]")),
    cli("subnet-json-not-utf8-export", READ, ["export", "extract", "--out", "again.nsc"], "corrupt",
        write("extract/subnet.json", b"{\"manifest\": \"\xc0\"}")),
    cli("result-groups-without-size-report", READ, ["report", "prune", "--out", "r"], "groups[0].size",
        lambda w: set_keys("prune/result.json", groups=[{"group": "1", "kept": 3}])(w)),
    cli("result-a-folder-report", READ, ["report", "train", "--out", "r"], "not found",
        lambda w: ((w / "train/result.json").unlink(), (w / "train/result.json").mkdir())),

    # --- 3. the Python API: wrong types and shapes, nested configs and dicts included
    api("prune-finetune-epochs-string", TYPES, 'netsift.prune("train", method="l1", macs=0.5, '
                                               'finetune={"epochs": "1"}, **Q)', "--epochs"),
    api("prune-finetune-unknown-field", TYPES, 'netsift.prune("train", method="l1", macs=0.5, '
                                               'finetune={"learning_rate": 0.1}, **Q)', "no field"),
    api("prune-finetune-namespace", TYPES, 'netsift.prune("train", method="l1", macs=0.5, '
                                           'finetune=type("C", (), {"epochs": 1})(), **Q)', "finetune must be"),
    api("train-config-dict-bad-lr", TYPES, 'netsift.train("lenet300", "digits", config={"epochs": 1, "lr": "x"}, **Q)',
        "--lr"),
    api("train-config-a-list", TYPES, 'netsift.train("lenet300", "digits", config=["epochs"], **Q)',
        "config must be"),
    api("extract-config-unknown-field", TYPES, 'netsift.extract("lenet300", "digits", config={"tau": 1}, '
                                               'progress=False)', "no field"),
    api("train-resume-a-string", TYPES, 'netsift.train("lenet300", "digits", epochs=1, out="n", resume="no", **Q)',
        "resume must be"),
    api("prune-layer-density-a-list", TYPES, 'netsift.prune("train", method="l1", macs=0.5, layer_density=[0.5], **Q)',
        "layer_density"),
    api("prune-ignored-layers-a-string", TYPES, 'netsift.prune("train", method="l1", macs=0.5, ignored_layers="fc", '
                                                '**Q)', "ignored_layers"),
    api("prune-example-input-1d", TYPES, 'netsift.prune("train", method="l1", macs=0.5, '
                                         'example_input=torch.zeros(3), **Q)', "example_input"),
    api("evaluate-path-a-float", TYPES, "netsift.evaluate(3.5)", "path must be"),
    api("export-out-an-int", TYPES, 'netsift.export("train", "onnx", out=3)', "out must be"),
    api("train-image-size-a-float", TYPES, 'netsift.train("lenet300", "digits", epochs=1, image_size=16.0, **Q)',
        "image_size"),
    api("prune-source-measure-bad", TYPES, 'netsift.prune("train", method="l1", macs=0.5, '
                                           'source_measure={"test_acc": "x"}, **Q)', "source_measure"),
    cli("prune-image-size-mismatch", TYPES, [*PRUNE, "--image-size", "12", "--out", "p"], "image_size=8, not 12"),
    cli("prune-image-size-own", TYPES, [*PRUNE, "--image-size", "8", "--out", "p"], expect="ok",
        check=evaluates("p"), allowed={"p"}),
    api("prune-api-image-size-own", TYPES, 'netsift.prune("train", method="l1", macs=0.5, image_size=8, '
                                           'finetune_epochs=0, **Q)', expect="ok", check=sane_result),

    # --- 4. non-finite values refused where they enter
    api("train-module-inf-bias", FINITE, 'netsift.train(poisoned(net(), "3.bias", float("-inf")), "digits", '
                                         'epochs=1, **Q)', "parameter 3.bias"),
    api("extract-module-nan-running-var", FINITE, 'netsift.extract(poisoned(bnnet(), "1.running_var", float("nan")), '
                                                  '"digits", epochs=1, init=None, progress=False)',
        "buffer 1.running_var"),
    api("prune-module-nan-weight-out", FINITE, 'netsift.prune(poisoned(net(), "1.weight", float("nan")), "digits", '
                                               'method="l1", macs=0.5, out="pn", **Q)', "parameter 1.weight"),
    api("train-tensor-data-inf-images", FINITE, 'netsift.train(net(), {"train": TensorDataset(with_(X, 99, '
                                                'float("inf")), Y), "test": TensorDataset(X, Y)}, epochs=1, **Q)',
        "train data set holds NaN or infinite"),
    api("train-dataset-nan-val-images", FINITE, 'netsift.train(net(), {"train": Items(X, Y), "val": Items(with_(X, '
                                                '5000, float("nan")), Y), "test": Items(X, Y)}, epochs=1, **Q)',
        "val loader holds NaN"),
    api("train-loader-float-labels", FINITE, 'netsift.train(net(), {"train": DataLoader(TensorDataset(X, Y.float()), '
                                             'batch_size=32), "test": Items(X, Y)}, epochs=1, **Q)', "labels"),
    api("train-labels-equal-to-outputs", FINITE, 'netsift.train(net(), {"train": Items(X, with_(Y, 250, 10)), '
                                                 '"val": Items(X, Y), "test": Items(X, Y)}, epochs=1, batch_size=32, '
                                                 '**Q)', "do not fit the model's 10 outputs"),
    cli("report-val-acc-two", FINITE, ["report", "train", "--out", "r"], "val_acc must be a number in [0, 1]",
        set_keys("train/result.json", val_acc=2.0)),
    cli("report-selected-acc-nan", FINITE, ["report", "prune", "--out", "r"], "test_acc_selected must be a finite",
        lambda w: (w / "prune/result.json").write_text((w / "prune/result.json").read_text().replace(
            '"test_acc_selected": 0', '"test_acc_selected": NaN, "x": 0'))),
    cli("report-density-negative", FINITE, ["report", "extract", "--out", "r"], "density must be a number in [0, 1]",
        set_keys("extract/result.json", density=-0.5)),
    cli("report-speedup-infinity", FINITE, ["report", "prune", "--out", "r"], "speedup_b64 must be a finite",
        lambda w: (w / "prune/result.json").write_text((w / "prune/result.json").read_text().replace(
            '"speedup_b64": ', '"speedup_b64": Infinity, "y": '))),
    cli("eval-run-with-nan-weight", FINITE, ["eval", "train"], "NaN or infinite", poison_model("train/model",
                                                                                             float("nan"))),
    cli("export-onnx-run-with-inf-weight", FINITE, ["export", "prune", "--format", "onnx", "--out", "x.onnx"],
        "NaN or infinite", poison_model("prune/model", float("inf"))),
    cli("prune-source-with-nan-weight", FINITE, [*PRUNE, "--out", "p"], "NaN or infinite",
        poison_model("train/model", float("nan"))),

    # --- 5. budgets and memory checked before work
    cli("prune-macs-1e-9", BUDGET, [*PRUNE[:5], "--macs", "1e-9", "--out", "p"], "smallest reachable budget"),
    cli("prune-macs-below-floor", BUDGET, [*PRUNE[:5], "--macs", "0.0005", "--out", "p"], "smallest reachable"),
    api("prune-layer-density-leaves-no-budget", BUDGET, 'netsift.prune("train", method="l1", macs=0.001, '
                                                        'layer_density={"1": 1.0}, **Q)', "smallest reachable"),
    api("prune-layer-density-caps-budget", BUDGET, 'netsift.prune("train", method="l1", macs=0.5, '
                                                   'layer_density={"1": 0.001}, **Q)', "largest reachable"),
    cli("train-resnet20-1024px", BUDGET, ["train", "--model", "resnet20", "--data", "digits", "--image-size", "1024",
                                          "--max-steps", "1", "--epochs", "1", "--out", "big"], "training step",
        env=SMALL_MEMORY),
    cli("train-conv2-1024px-width-0.05", BUDGET, ["train", "--model", "conv2", "--image-size", "1024", "--width",
                                                  "0.05", "--max-steps", "1", "--out", "big"], "1024x1024 px",
        env=SMALL_MEMORY),
    cli("extract-conv4-512px", BUDGET, ["extract", "--model", "conv4", "--data", "digits", "--image-size", "512",
                                        "--max-steps", "1", "--epochs", "1", "--out", "big"], "512x512 px",
        env=SMALL_MEMORY),
    cli("train-conv2-512px-huge-fc", BUDGET, ["train", "--model", "conv2", "--image-size", "512", "--out", "big"],
        "parameters", env=SMALL_MEMORY),
    cli("train-vgg11-256px-batch-1000", BUDGET, ["train", "--model", "vgg11", "--image-size", "256", "--batch-size",
                                                 "1000", "--max-steps", "1", "--out", "big"], "batches of 1000",
        env=SMALL_MEMORY),
    cli("prune-holdout-pass-too-big", BUDGET, ["prune", "--model", "resnet20", "--image-size", "512", "--method",
                                               "l1", "--macs", "0.5", "--out", "big"], "held-out or minibatch pass",
        env=SMALL_MEMORY),

    # --- 6. signals, temporary files of killed writers, NETSIFT_* variables
    cli("env-progress-number", MISC, ["eval", "train"], "NETSIFT_PROGRESS", env={"NETSIFT_PROGRESS": "2"}),
    cli("env-interval-zero", MISC, ["eval", "train"], "NETSIFT_PROGRESS_INTERVAL",
        env={"NETSIFT_PROGRESS": "lines", "NETSIFT_PROGRESS_INTERVAL": "0"}),
    cli("env-max-params-negative", MISC, ["eval", "train"], "NETSIFT_MAX_PARAMS", env={"NETSIFT_MAX_PARAMS": "-5"}),
    cli("env-dist-timeout-word", MISC, [*TRAIN, "--out", "n"], "NETSIFT_DIST_TIMEOUT",
        env={"NETSIFT_DIST_TIMEOUT": "abc"}),
    cli("env-graph-timeout-huge", MISC, [*PRUNE, "--out", "p"], "NETSIFT_GRAPH_TIMEOUT",
        env={"NETSIFT_GRAPH_TIMEOUT": "1e99"}),
    cli("env-share-prefix-one", MISC, [*PRUNE, "--out", "p"], "NETSIFT_SHARE_PREFIX",
        env={"NETSIFT_SHARE_PREFIX": "1"}),
    cli("env-memory-limit-zero", MISC, ["eval", "train"], "NETSIFT_MEMORY_LIMIT", env={"NETSIFT_MEMORY_LIMIT": "0"}),
    cli("env-data-empty", MISC, ["eval", "train"], "NETSIFT_DATA", env={"NETSIFT_DATA": " "}),
    cli("env-unknown-name", MISC, ["eval", "train"], "unknown environment variable NETSIFT_DEBUG",
        env={"NETSIFT_DEBUG": "1"}),
    api("env-bad-in-python", MISC, 'netsift.evaluate("train")', "NETSIFT_MAX_PARAMS",
        env={"NETSIFT_MAX_PARAMS": "many"}),
    cli("export-cleans-a-dead-writers-temp", MISC, ["export", "extract", "--overwrite"], damage=stale_temp,
        expect="ok", check=no_stale_temp, allowed={"extract/model.nsc", "extract/.model.nsc.*"}),
    {"id": "sigterm-train-then-resume", "class": MISC, "kind": "signal", "signal": signal.SIGTERM, "code": 143},
    {"id": "sigint-prune-no-done-line", "class": MISC, "kind": "signal", "signal": signal.SIGINT, "code": 130},
]


# ------------------------------------------------------------------------------------------------ running

def _run(cmd: list[str], cwd: Path, env: dict, send: tuple[int, Path] | None = None) -> tuple[int | None, str, str,
                                                                                              int, bool]:
    """Run ``cmd``; returns (exit status, stdout, stderr, peak RSS of the process tree, stopped by a limit)."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, t0, killed, sent = psutil.Process(proc.pid), 0, time.time(), False, False
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        if rss > RSS_LIMIT or time.time() - t0 > TIME_LIMIT:
            proc.kill()
            killed = True
            break
        if send and not sent and (cwd / send[1]).is_file():
            time.sleep(0.5)
            proc.send_signal(send[0])
            sent = True
        time.sleep(0.05)
    out, err = proc.communicate()
    return proc.returncode, out, err, peak, killed


def run_case(case: dict, base: Path, work: Path) -> dict:
    w = work / case["id"]
    shutil.copytree(base, w, symlinks=True)
    if case["kind"] == "signal":
        return run_signal(case, w)
    if case["damage"]:
        case["damage"](w)
    before = snapshot(w)
    env = _env(**case["env"])
    if case["kind"] == "cli":
        cmd = [sys.executable, "-m", "netsift", *case["argv"]]
    else:
        cmd = [sys.executable, "-c", API.replace("CALL", case["call"])]
    code, out, err, peak, killed = _run(cmd, w, env)
    after = snapshot(w)
    allowed = case["allowed"]

    def free(rel: str) -> bool:  # an allowed path, a folder's contents, or a prefix ending in "*"
        return any(rel == a or rel.startswith(a + "/") or (a.endswith("*") and rel.startswith(a[:-1]))
                   for a in allowed)

    changed = sorted(k for k in before if before[k] != after.get(k) and not free(k))
    new = sorted(k for k in after if k not in before and not free(k))
    lines = [line for line in err.strip().splitlines() if line]
    if killed:
        outcome = "unbounded"
    elif "Traceback" in err or code not in (0, 2):
        outcome = "traceback"
    elif changed:
        outcome = "lost"
    elif case["expect"] == "error":
        if code == 0:
            outcome = "silent garbage"
        elif len(lines) != 1 or not lines[0].startswith("netsift: error: "):
            outcome = "traceback"
        elif case["needle"] and case["needle"] not in lines[0]:
            outcome = "wrong message"
        else:
            outcome = "debris" if new else "clean"
    else:
        ok = code == 0 and (case["check"] is None or case["check"](w, out))
        outcome = "clean" if ok else ("silent garbage" if code == 0 else "traceback")
    return {"id": case["id"], "class": case["class"], "kind": case["kind"], "expect": case["expect"],
            "outcome": outcome, "exit": code, "stderr": err.strip()[-600:], "peak_rss_mb": round(peak / 2**20, 1),
            "changed": changed[:5], "new": new[:5]}


def run_signal(case: dict, w: Path) -> dict:
    """SIGTERM / SIGINT once the run has a checkpoint: the expected status, one line, no "done in" line before
    it, and ``--resume`` finishes the run."""
    if case["signal"] == signal.SIGTERM:
        argv = ["train", "--model", "lenet300", "--data", "digits", "--batch-size", "16", "--out", "sig"]
        first, again, marker = ["--epochs", "100"], ["--epochs", "2"], "sig/checkpoint.json"
    else:
        argv = ["prune", "--checkpoint", "train", "--method", "gfs", "--macs", "0.3", "--candidates", "0",
                "--batch-size", "16", "--latency-threads", "1", "--out", "sig"]
        first, again, marker = ["--finetune-epochs", "50"], ["--finetune-epochs", "1"], "sig/selection.json"
    env = _env(NETSIFT_PROGRESS="lines", NETSIFT_PROGRESS_INTERVAL="1")
    code, out, err, peak, killed = _run([sys.executable, "-m", "netsift", *argv, *first], w, env,
                                        send=(case["signal"], Path(marker)))
    lines = [line for line in err.strip().splitlines() if line.startswith("netsift")]
    last = lines[-1] if lines else ""
    done_before = len(lines) > 1 and "done in" in lines[-2]
    resumed = subprocess.run([sys.executable, "-m", "netsift", *argv, *again, "--resume"], cwd=w, env=_env(),
                             capture_output=True, text=True, timeout=TIME_LIMIT)
    if killed:
        outcome = "unbounded"
    elif "Traceback" in err or code != case["code"] or "continue with --resume" not in last or done_before:
        outcome = "traceback"
    elif resumed.returncode != 0:
        outcome = "lost"
    else:
        outcome = "clean"
    return {"id": case["id"], "class": case["class"], "kind": "signal", "expect": "interrupt", "outcome": outcome,
            "exit": code, "stderr": last, "peak_rss_mb": round(peak / 2**20, 1), "resume_exit": resumed.returncode,
            "done_in_before_message": done_before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results" / "hostile.json"))
    p.add_argument("--only", nargs="*", help="case ids (default: all)")
    p.add_argument("--merge", action="store_true", help="with --only: replace those cases' rows in --out")
    args = p.parse_args()
    cases = [c for c in CASES if not args.only or c["id"] in args.only]
    assert len({c["id"] for c in CASES}) == len(CASES)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="netsift-hostile-") as tmp:
        base, work = Path(tmp) / "base", Path(tmp) / "work"
        base.mkdir()
        work.mkdir()
        build_base(base)
        for i, case in enumerate(cases, 1):
            row = run_case(case, base, work)
            rows.append(row)
            print(f"[{i:3d}/{len(cases)}] {row['outcome']:14s} {row['class']:20s} {row['id']}"
                  + ("" if row["outcome"] == "clean" else f"  <- {row['stderr'][-200:]!r}"), flush=True)
            shutil.rmtree(work / case["id"], ignore_errors=True)
    rerun = None
    if args.merge and args.only:
        again, earlier = {r["id"]: r for r in rows}, json.loads(Path(args.out).read_text())
        rows = [again.get(r["id"], r) for r in earlier["rows"]]
        rerun, t0 = sorted(again), t0 - earlier["wall_s"]
        args.only = None  # write the merged file
    counts = Counter(r["outcome"] for r in rows)
    by_class = {cls: dict(Counter(r["outcome"] for r in rows if r["class"] == cls))
                for cls in sorted({r["class"] for r in rows})}
    result = {"what": "hostile cases of issue 22's classes, each a real netsift process on a fresh copy of real runs",
              "command": "PYTHONPATH=src .venv/bin/python benchmarks/hostile.py", "cases": len(rows),
              "outcomes": dict(counts), "by_class": by_class, "rss_limit_mb": RSS_LIMIT // 2**20,
              "time_limit_s": TIME_LIMIT, "wall_s": round(time.time() - t0, 1), "machine": platform.machine(),
              "python": platform.python_version(), "rerun_and_merged": rerun, "rows": rows}
    if not args.only:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows)} cases: {dict(counts)}" + ("" if args.only else f"; wrote {args.out}"))


if __name__ == "__main__":
    main()
