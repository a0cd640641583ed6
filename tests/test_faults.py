"""Fault injection over the command line: bad values, hostile files, bad paths, corrupt data, locked folders.

Every case runs ``netsift ...`` in-process on a fresh copy of a tree of real runs (a dense ``train`` run, an
``extract`` run with its compact export, a ``prune`` run, a folder that is not a run, small IDX/CIFAR data
sets), after its own damage to that tree. Each must end with exit status 2, exactly one line on stderr starting
``netsift: error:``, no traceback, and every file of the tree (hidden ones included) byte for byte as before:
nothing written, nothing lost. Warnings are shown as the real command line shows them, so a warning before the
error counts as a second line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from netsift.checkpoint import load_checkpoint
from netsift.cli import main
from netsift.data import write_idx

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = ["--data", "digits", "--batch-size", "64", "--max-steps", "3"]
TRAIN = ["train", "--model", "lenet300", *DIGITS, "--epochs", "1"]
EXTRACT = ["extract", "--model", "lenet300", *DIGITS, "--epochs", "1"]
PRUNE = ["prune", "--checkpoint", "train", "--method", "l1", "--macs", "0.5", "--finetune-epochs", "1",
         "--max-steps", "2", "--latency-threads", "1"]
STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _quiet(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tree every case starts from (built once)."""
    root = tmp_path_factory.mktemp("base")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert _quiet(*TRAIN, "--epochs", "2", "--out", "train") == 0
        assert _quiet(*EXTRACT, "--out", "extract") == 0
        assert _quiet("export", "extract") == 0
        assert _quiet(*PRUNE, "--out", "prune") == 0
    finally:
        os.chdir(cwd)
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("my own notes\n")
    (root / "afile").write_text("a plain file\n")
    g = np.random.default_rng(0)
    fm = root / "fm"
    fm.mkdir()
    for stem, n in zip(STEMS, (60, 60, 20, 20)):
        data = g.integers(0, 256, (n, 28, 28)) if "images" in stem else g.integers(0, 10, n)
        write_idx(fm / (stem + ".gz"), data)
    cifar = root / "cifar" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([g.integers(0, 10, (4, 1)), g.integers(0, 256, (4, 3072))], 1).astype(np.uint8)
        rec.tofile(cifar / name)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too, links not followed) with its type and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ damage helpers

def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(fn(data) or data, indent=2))


def set_key(path: Path, dotted: str, value) -> None:
    def key(node, k):
        return int(k) if isinstance(node, list) else k

    def fn(d):
        *head, last = dotted.split(".")
        node = d
        for k in head:
            node = node[key(node, k)]
        if value is DELETE:
            del node[key(node, last)]
        else:
            node[key(node, last)] = value
    edit_json(path, fn)


DELETE = object()


def rehash(stem: Path) -> None:
    """Make ``stem.json`` name the current ``stem.safetensors`` (a tampering that keeps the pair consistent)."""
    digest = hashlib.sha256(stem.with_suffix(".safetensors").read_bytes()).hexdigest()
    set_key(stem.with_suffix(".json"), "tensors_sha256", digest)


def replace_tensors(stem: Path, fn) -> None:
    from safetensors.torch import save

    tensors, _ = load_checkpoint(stem)
    stem.with_suffix(".safetensors").write_bytes(save(fn(tensors)))
    rehash(stem)


def edit_nsc(path: Path, fn) -> None:
    """Edit the JSON header of a compact file and recompute its checksum (a careful forgery)."""
    data = path.read_bytes()
    magic, version, head_len = struct.unpack_from("<8sHI", data)
    header = json.loads(data[14:14 + head_len])
    header = fn(header) or header
    head = json.dumps(header).encode()
    body = struct.pack("<8sHI", magic, version, len(head)) + head + data[14 + head_len:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def gz_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_labels(path: Path, labels) -> None:
    write_idx(path, np.asarray(labels, dtype=np.uint8))


def hold_lock(folder: Path):
    from netsift.rundir import RunLock

    return RunLock(folder)


def readonly(path: Path):
    """Make ``path`` unwritable even for root (``chattr +i``), or skip."""
    path.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a folder read-only for root here")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


# ------------------------------------------------------------------------------------------------- the cases
# (id, damage(w) -> optional cleanup, argv, a fragment the one-line error must contain)

SEVENTY_DIGITS = "1" * 70
FM = ["--data", "fashion-mnist", "--data-dir", "fm", "--batch-size", "16", "--max-steps", "2", "--epochs", "1"]

CASES = [
    # --- 3/4: option values: finite, in range, sane bounds
    ("width-nan", None, [*TRAIN, "--width", "nan", "--out", "new"], "--width"),
    ("width-inf", None, [*TRAIN, "--width", "inf", "--out", "new"], "--width"),
    ("width-zero", None, [*TRAIN, "--width", "0", "--out", "new"], "--width"),
    ("width-huge", None, [*TRAIN, "--width", "1000", "--out", "new"], "--width"),
    ("momentum-negative", None, [*TRAIN, "--momentum", "-1", "--out", "new"], "--momentum"),
    ("momentum-nan", None, [*TRAIN, "--momentum", "nan", "--out", "new"], "--momentum"),
    ("momentum-one", None, [*TRAIN, "--momentum", "1", "--out", "new"], "--momentum"),
    ("weight-decay-negative", None, [*TRAIN, "--weight-decay", "-1", "--out", "new"], "--weight-decay"),
    ("weight-decay-nan", None, [*TRAIN, "--weight-decay", "nan", "--out", "new"], "--weight-decay"),
    ("lr-nan", None, [*TRAIN, "--lr", "nan", "--out", "new"], "--lr"),
    ("lr-inf", None, [*TRAIN, "--lr", "inf", "--out", "new"], "--lr"),
    ("lr-zero", None, [*TRAIN, "--lr", "0", "--out", "new"], "--lr"),
    ("lr-absurd", None, [*TRAIN, "--lr", "1e300", "--out", "new"], "--lr"),
    ("lr-not-a-number", None, [*TRAIN, "--lr", "fast", "--out", "new"], "invalid float"),
    ("seed-70-digits", None, [*TRAIN, "--seed", SEVENTY_DIGITS, "--out", "new"], "seed"),
    ("seed-negative", None, [*TRAIN, "--seed", "-1", "--out", "new"], "seed"),
    ("data-seed-2^63", None, [*TRAIN, "--data-seed", str(2**63), "--out", "new"], "data_seed"),
    ("epochs-zero", None, [*TRAIN, "--epochs", "0", "--out", "new"], "--epochs"),
    ("epochs-absurd", None, [*TRAIN, "--epochs", "10000000", "--out", "new"], "--epochs"),
    ("epochs-70-digits", None, [*TRAIN, "--epochs", SEVENTY_DIGITS, "--out", "new"], "--epochs"),
    ("batch-size-zero", None, [*TRAIN, "--batch-size", "0", "--out", "new"], "--batch-size"),
    ("batch-size-absurd", None, [*TRAIN, "--batch-size", "100000000", "--out", "new"], "--batch-size"),
    ("gamma-zero", None, [*TRAIN, "--gamma", "0", "--out", "new"], "--gamma"),
    ("label-smoothing-one", None, [*TRAIN, "--label-smoothing", "1", "--out", "new"], "--label-smoothing"),
    ("val-fraction-one", None, [*TRAIN, "--val-fraction", "1", "--out", "new"], "--val-fraction"),
    ("val-fraction-nan", None, [*TRAIN, "--val-fraction", "nan", "--out", "new"], "--val-fraction"),
    ("train-subset-zero", None, [*TRAIN, "--train-subset", "0", "--out", "new"], "--train-subset"),
    ("patience-negative", None, [*TRAIN, "--patience", "-1", "--out", "new"], "--patience"),
    ("step-every-absurd", None, [*TRAIN, "--step-every", "10000000", "--out", "new"], "--step-every"),
    ("optimizer-unknown", None, [*TRAIN, "--optimizer", "rmsprop", "--out", "new"], "invalid choice"),
    ("model-unknown", None, ["train", "--model", "nope", "--out", "new"], "unknown model"),
    ("data-unknown", None, ["train", "--data", "nope", "--out", "new"], "unknown data set"),
    ("model-wrong-input", None, ["train", "--model", "tv:squeezenet1_0", *DIGITS, "--out", "new"], "cannot take inputs"),
    ("tau-nan", None, [*EXTRACT, "--tau", "nan", "--out", "new"], "--tau"),
    ("tau-zero", None, [*EXTRACT, "--tau", "0", "--out", "new"], "--tau"),
    ("scale-lr-nan", None, [*EXTRACT, "--scale-lr", "nan", "--out", "new"], "--scale-lr"),
    ("mask-lr-nan", None, [*EXTRACT, "--lr", "nan", "--out", "new"], "--lr"),
    ("density-zero", None, [*EXTRACT, "--density", "0", "--out", "new"], "--density"),
    ("density-above-one", None, [*EXTRACT, "--density", "1.5", "--out", "new"], "--density"),
    ("density-nan", None, [*EXTRACT, "--density", "nan", "--out", "new"], "--density"),
    ("recalibrate-bn-negative", None, [*EXTRACT, "--recalibrate-bn", "-1", "--out", "new"], "--recalibrate-bn"),
    ("parametrization-unknown", None, [*EXTRACT, "--parametrization", "odd", "--out", "new"], "invalid choice"),
    ("option-of-another-method", None, [*EXTRACT, "--method", "edge-popup", "--tau", "2", "--out", "new"],
     "--tau applies to --method gumbel only"),
    ("latency-threads-100000", None, [*PRUNE, "--latency-threads", "100000", "--out", "new"], "--latency-threads"),
    ("latency-threads-negative", None, [*PRUNE, "--latency-threads", "-1", "--out", "new"], "--latency-threads"),
    ("macs-zero", None, [*PRUNE, "--macs", "0", "--out", "new"], "--macs"),
    ("macs-nan", None, [*PRUNE, "--macs", "nan", "--out", "new"], "--macs"),
    ("macs-and-tolerance", None, [*PRUNE, "--tolerance", "0.1", "--out", "new"], "not both"),
    ("tolerance-one", None, ["prune", "--checkpoint", "train", "--tolerance", "1", "--out", "new"], "--tolerance"),
    ("candidates-absurd", None, [*PRUNE, "--candidates", "10000000", "--out", "new"], "--candidates"),
    ("epsilon-zero", None, [*PRUNE, "--epsilon", "0", "--out", "new"], "--epsilon"),
    ("select-batch-zero", None, [*PRUNE, "--select-batch", "0", "--out", "new"], "--select-batch"),
    ("round-to-zero", None, [*PRUNE, "--round-to", "0", "--out", "new"], "--round-to"),
    ("layer-finetune-absurd", None, [*PRUNE, "--layer-finetune", "20", "--out", "new"], "--layer-finetune"),
    ("prune-width-nan", None, ["prune", "--model", "lenet300", "--width", "nan", "--out", "new"], "--width"),
    ("prune-width-nan-checkpoint", None, [*PRUNE, "--width", "nan", "--out", "new"], "--width"),
    ("prune-without-source", None, ["prune", "--out", "new"], "--checkpoint"),
    ("prune-missing-run-folder", None, ["prune", "no-such-run", "--macs", "0.5", "--out", "new"],
     "run folder no-such-run does not exist"),
    ("prune-run-folder-is-a-file", lambda w: (w / "weights.bin").write_bytes(b"x"),
     ["prune", "weights.bin", "--macs", "0.5", "--out", "new"], "is a file, not a run folder"),
    ("prune-share-prefix-env", lambda w: _setenv("NETSIFT_SHARE_PREFIX", "sometimes"),
     ["prune", "--checkpoint", "train", "--method", "gfs", "--macs", "0.5", "--out", "new"],
     "NETSIFT_SHARE_PREFIX must be auto, always or never"),
    ("prune-over-run-share-prefix-env", lambda w: _setenv("NETSIFT_SHARE_PREFIX", "yes"),
     [*PRUNE, "--out", "prune", "--overwrite"], "NETSIFT_SHARE_PREFIX"),
    ("prune-model-mismatch", None, [*PRUNE, "--model", "conv4", "--out", "new"], "holds a lenet300"),
    ("prune-data-mismatch", None, [*PRUNE, "--data", "synthetic", "--out", "new"], "trained with data='digits'"),

    # --- 2/6: paths, overwrite, resume, locks
    ("out-symlink-overwrite", lambda w: os.symlink("train", w / "link"), [*TRAIN, "--out", "link", "--overwrite"],
     "symbolic link"),
    ("out-dangling-symlink", lambda w: os.symlink("nowhere", w / "dangling"), [*TRAIN, "--out", "dangling"],
     "symbolic link"),
    ("out-is-a-file", None, [*TRAIN, "--out", "afile"], "not a folder"),
    ("out-not-empty", None, [*TRAIN, "--out", "train"], "not empty"),
    ("overwrite-foreign-folder", None, [*TRAIN, "--out", "foreign", "--overwrite"], "not a netsift run"),
    ("overwrite-and-resume", None, [*TRAIN, "--out", "train", "--overwrite", "--resume"], "not both"),
    ("overwrite-lr-nan", None, [*TRAIN, "--out", "train", "--overwrite", "--lr", "nan"], "--lr"),
    ("overwrite-momentum-negative", None, [*TRAIN, "--out", "train", "--overwrite", "--momentum", "-1"], "--momentum"),
    ("overwrite-then-nan-loss", None, [*TRAIN, "--out", "train", "--overwrite", "--lr", "1e5", "--momentum", "0.99"],
     "lower the learning rate"),
    ("new-run-nan-loss", None, [*TRAIN, "--out", "fresh", "--lr", "1e5", "--momentum", "0.99"],
     "lower the learning rate"),
    ("prune-into-its-source", None, [*PRUNE, "--out", "train", "--overwrite"], "run being read"),
    ("prune-into-its-source-forced", None, [*PRUNE, "--out", "train", "--overwrite", "--force"], "run being read"),
    ("prune-inside-its-source", None, [*PRUNE, "--out", "train/sub"], "run being read"),
    ("prune-above-its-source", None, [*PRUNE, "--out", ".", "--overwrite", "--force"], "run being read"),
    ("out-read-only", lambda w: readonly(w / "ro"), [*TRAIN, "--out", "ro/run"], "ro/run"),
    ("out-read-only-overwrite", lambda w: readonly(w / "train"), [*TRAIN, "--out", "train", "--overwrite"], "train"),
    ("export-out-is-a-folder", None, ["export", "extract", "--out", "foreign"], "is a folder"),
    ("export-out-symlink", lambda w: os.symlink("afile", w / "flink"), ["export", "extract", "--out", "flink",
                                                                           "--overwrite"], "symbolic link"),
    ("export-exists", None, ["export", "extract"], "--overwrite"),
    ("export-no-subnet", None, ["export", "train", "--out", "x.nsc"], "no subnet.json"),
    ("demo-out-is-a-file", None, ["demo", "--out", "afile"], "not a folder"),
    ("demo-out-symlink", lambda w: os.symlink("train", w / "dlink"), ["demo", "--out", "dlink"], "symbolic link"),
    ("demo-out-foreign", None, ["demo", "--out", "foreign"], "other files"),
    ("eval-missing", None, ["eval", "nowhere"], "no such run"),
    ("resume-nothing", None, [*TRAIN, "--out", "new", "--resume"], "no run to resume"),
    ("resume-changed-lr", None, [*TRAIN, "--epochs", "2", "--lr", "0.3", "--out", "train", "--resume"], "train.lr"),
    ("resume-other-command", None, [*EXTRACT, "--out", "train", "--resume"], "setting"),
    ("prune-resume-changed-macs", None, [*PRUNE, "--macs", "0.4", "--out", "prune", "--resume"], "prune.macs"),
    ("second-writer-resume", lambda w: hold_lock(w / "train").release,
     [*TRAIN, "--epochs", "2", "--out", "train", "--resume"], "another netsift process"),
    ("second-writer-overwrite", lambda w: hold_lock(w / "train").release, [*TRAIN, "--out", "train", "--overwrite"],
     "another netsift process"),

    # --- 5: hostile or damaged files read back
    ("model-json-width-string", lambda w: set_key(w / "train/model.json", "manifest.width", "wide"),
     ["eval", "train"], "width must be a number"),
    ("model-json-module-without-sizes", lambda w: set_key(w / "train/model.json", "manifest.modules.1",
                                                          {"type": "Linear"}), ["eval", "train"], "modules['1'].in"),
    ("model-json-list", lambda w: (w / "train/model.json").write_text("[1, 2, 3]"), ["eval", "train"], "an object"),
    ("model-json-manifest-list", lambda w: set_key(w / "train/model.json", "manifest", [1]), ["eval", "train"],
     "manifest must be an object"),
    ("model-json-unknown-kwargs", lambda w: set_key(w / "train/model.json", "manifest.kwargs", {"bogus": 1}),
     ["eval", "train"], "bogus"),
    ("model-json-image-size-100000", lambda w: set_key(w / "train/model.json", "manifest.image_size", 100000),
     ["eval", "train"], "image_size"),
    ("model-json-5e9-parameters", lambda w: set_key(w / "train/model.json", "manifest.image_size", 4096),
     ["eval", "train"], "parameters"),
    ("model-json-one-class", lambda w: set_key(w / "train/model.json", "manifest.num_classes", 1),
     ["eval", "train"], "num_classes"),
    ("model-json-channels-string", lambda w: set_key(w / "train/model.json", "manifest.in_channels", "1"),
     ["eval", "train"], "in_channels"),
    ("model-json-bad-groups", lambda w: set_key(w / "train/model.json", "manifest.modules.1",
                                                {"type": "Conv2d", "in": 3, "out": 4, "groups": 2}),
     ["eval", "train"], "multiple of groups"),
    ("model-json-unknown-layer-type", lambda w: set_key(w / "train/model.json", "manifest.modules.1.type", "LSTM"),
     ["eval", "train"], "type must be one of"),
    ("model-json-hash-missing", lambda w: set_key(w / "train/model.json", "tensors_sha256", DELETE),
     ["eval", "train"], "tensors_sha256"),
    ("model-tensors-flipped", lambda w: _flip(w / "train/model.safetensors"), ["eval", "train"], "corrupt"),
    ("model-tensors-garbage-rehashed", lambda w: ((w / "train/model.safetensors").write_bytes(b"\x10" * 64),
                                                  rehash(w / "train/model")), ["eval", "train"], "not a valid"),
    ("model-tensors-wrong-shape-rehashed", lambda w: replace_tensors(
        w / "train/model", lambda t: {**t, "1.weight": torch.zeros(3, 3)}), ["eval", "train"], "does not fit"),
    ("model-tensors-nan-rehashed", lambda w: replace_tensors(
        w / "train/model", lambda t: {**t, "1.weight": torch.full_like(t["1.weight"], float("nan"))}),
     ["export", "train", "--format", "safetensors", "--out", "copy.safetensors"], "NaN"),
    ("model-json-missing", lambda w: (w / "train/model.json").unlink(), ["eval", "train"], "not found"),
    ("config-json-missing-data", lambda w: set_key(w / "train/config.json", "data", DELETE), ["eval", "train"],
     "data must be present"),
    ("config-json-data-list", lambda w: set_key(w / "train/config.json", "data", ["digits"]),
     [*PRUNE, "--out", "new"], "data must be an object"),
    ("config-json-seed-string", lambda w: set_key(w / "train/config.json", "seed", "zero"),
     [*TRAIN, "--epochs", "2", "--out", "train", "--resume"], "seed must be an integer"),
    ("config-json-list-read-for-data-flags", lambda w: (w / "train/config.json").write_text("[1]"),
     [*PRUNE, "--data-dir", "elsewhere", "--out", "new"], "an object"),
    ("config-json-not-json", lambda w: (w / "train/config.json").write_text("{oops"), ["eval", "train"], "corrupt"),
    ("config-json-data-dir-int", lambda w: set_key(w / "train/config.json", "data.data_dir", 5), ["eval", "train"],
     "data_dir"),
    ("checkpoint-json-missing-rng", lambda w: set_key(w / "train/checkpoint.json", "rng", DELETE),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "rng must be present"),
    ("checkpoint-json-epoch-string", lambda w: set_key(w / "train/checkpoint.json", "epoch", "two"),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "epoch must be an integer"),
    ("checkpoint-json-bad-optimizer", lambda w: set_key(w / "train/checkpoint.json", "optimizers",
                                                        [{"__dict__": [[1]]}]),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "does not fit this run"),
    ("checkpoint-json-bad-rng", lambda w: set_key(w / "train/checkpoint.json", "rng.numpy", ["MT19937", [1, 2]]),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "does not fit this run"),
    ("checkpoint-tensors-truncated", lambda w: _truncate(w / "train/checkpoint.safetensors"),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "corrupt"),
    ("checkpoint-tensors-renamed-rehashed", lambda w: replace_tensors(
        w / "train/checkpoint", lambda t: {k.replace("model.1.", "model.9."): v for k, v in t.items()}),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "does not fit"),
    ("best-json-val-acc-string", lambda w: set_key(w / "train/best.json", "val_acc", "high"),
     [*TRAIN, "--epochs", "3", "--out", "train", "--resume"], "val_acc"),
    ("selection-json-tampered", lambda w: set_key(w / "prune/selection.json", "groups.0.kept", [99999]),
     [*PRUNE, "--out", "prune", "--resume"], "outside"),
    ("selection-json-other-groups", lambda w: set_key(w / "prune/selection.json", "groups.0.group", "nope"),
     [*PRUNE, "--out", "prune", "--resume"], "another selection"),
    ("subnet-json-seed-negative", lambda w: set_key(w / "extract/subnet.json", "init.seed", -1),
     ["export", "extract", "--out", "again.nsc"], "init.seed"),
    ("subnet-json-image-size-100000", lambda w: set_key(w / "extract/subnet.json", "manifest.image_size", 100000),
     ["export", "extract", "--out", "again.nsc"], "image_size"),
    ("nsc-image-size-100000-rehashed", lambda w: edit_nsc(w / "extract/model.nsc", lambda h: h["manifest"].update(
        image_size=100000)), ["eval", "extract/model.nsc"], "image_size"),
    ("nsc-5e9-parameters-rehashed", lambda w: edit_nsc(w / "extract/model.nsc", lambda h: h["manifest"].update(
        image_size=4096)), ["eval", "extract/model.nsc"], "parameters"),
    ("nsc-layer-shape-huge-rehashed", lambda w: edit_nsc(w / "extract/model.nsc", lambda h: h["layers"][0].update(
        shape=[10**7, 10**7])), ["eval", "extract/model.nsc"], "malformed"),
    ("nsc-codec-unknown-rehashed", lambda w: edit_nsc(w / "extract/model.nsc", lambda h: h.update(codec="bz2")),
     ["eval", "extract/model.nsc"], "codec"),
    ("nsc-raw-bytes-bomb-rehashed", lambda w: edit_nsc(w / "extract/model.nsc", lambda h: h.update(
        raw_bytes=2**35)), ["eval", "extract/model.nsc"], "payload bytes"),
    ("nsc-header-not-json-rehashed", lambda w: _nsc_header_bytes(w / "extract/model.nsc", b"{not json"),
     ["eval", "extract/model.nsc"], "not JSON"),
    ("nsc-header-length-past-end", lambda w: _nsc_header_len(w / "extract/model.nsc", 2**31),
     ["eval", "extract/model.nsc"], "runs past the end"),
    ("nsc-truncated", lambda w: _truncate(w / "extract/model.nsc"), ["eval", "extract/model.nsc"], "corrupt"),
    ("result-json-test-acc-string", lambda w: set_key(w / "train/result.json", "test_acc", "high"), ["eval", "train"],
     "test_acc"),

    # --- 7: corrupt data
    ("idx-gz-truncated", lambda w: gz_truncate(w / "fm/train-images-idx3-ubyte.gz"), [*TRAIN[:3], *FM, "--out", "new"],
     "cannot read IDX"),
    ("idx-labels-outside-classes", lambda w: write_labels(w / "fm/train-labels-idx1-ubyte.gz", [12] * 60),
     [*TRAIN[:3], *FM, "--out", "new"], "labels must lie in 0..9"),
    ("idx-label-count-mismatch", lambda w: write_labels(w / "fm/t10k-labels-idx1-ubyte.gz", [1] * 7),
     [*TRAIN[:3], *FM, "--out", "new"], "labels of shape"),
    ("idx-labels-2d", lambda w: write_idx(w / "fm/train-labels-idx1-ubyte.gz", np.ones((60, 2), np.uint8)),
     [*TRAIN[:3], *FM, "--out", "new"], "labels of shape"),
    ("idx-bad-magic", lambda w: _gz(w / "fm/train-images-idx3-ubyte.gz", b"\x01\x02\x03\x04" + b"\x00" * 100),
     [*TRAIN[:3], *FM, "--out", "new"], "not an IDX file"),
    ("idx-short-data", lambda w: _gz(w / "fm/t10k-images-idx3-ubyte.gz",
                                     bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 28, 28) + b"\x00" * 100),
     [*TRAIN[:3], *FM, "--out", "new"], "data bytes"),
    ("idx-huge-dims", lambda w: _gz(w / "fm/t10k-images-idx3-ubyte.gz",
                                    bytes([0, 0, 8, 3]) + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**32 - 1)),
     [*TRAIN[:3], *FM, "--out", "new"], "data bytes"),
    ("idx-no-images", lambda w: (write_idx(w / "fm/t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8)),
                                 write_labels(w / "fm/t10k-labels-idx1-ubyte.gz", [])),
     [*TRAIN[:3], *FM, "--out", "new"], "no images"),
    ("idx-files-missing", lambda w: (w / "fm/t10k-labels-idx1-ubyte.gz").unlink(),
     [*TRAIN[:3], *FM, "--data", "mnist", "--out", "new"], "not found"),
    ("cifar-wrong-size", lambda w: (w / "cifar/cifar-10-batches-bin/test_batch.bin").write_bytes(b"\x00" * 1000),
     ["train", "--model", "lenet300", "--data", "cifar10", "--data-dir", "cifar", "--out", "new"], "not a CIFAR"),
    ("cifar-labels-outside-classes", lambda w: _cifar_label(w / "cifar/cifar-10-batches-bin/data_batch_1.bin", 200),
     ["train", "--model", "lenet300", "--data", "cifar10", "--data-dir", "cifar", "--out", "new"],
     "labels must lie in 0..9"),
    ("data-dir-is-a-file", None, ["train", "--data", "mnist", "--data-dir", "afile", "--out", "new"], "not found"),
]


def _setenv(name: str, value: str):
    """Set an environment variable for one case; returns the clean-up."""
    old = os.environ.get(name)
    os.environ[name] = value
    return lambda: os.environ.pop(name, None) if old is None else os.environ.__setitem__(name, old)


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _gz(path: Path, raw: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(raw)


def _cifar_label(path: Path, label: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[0] = label
    path.write_bytes(bytes(blob))


def _nsc_header_bytes(path: Path, head: bytes) -> None:
    data = path.read_bytes()
    magic, version, head_len = struct.unpack_from("<8sHI", data)
    body = struct.pack("<8sHI", magic, version, len(head)) + head + data[14 + head_len:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def _nsc_header_len(path: Path, length: int) -> None:
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<8sHI", data)
    body = struct.pack("<8sHI", magic, version, length) + data[14:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_the_suite_is_large_and_covers_every_class():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    for prefix in ("width", "lr", "seed", "tau", "latency-threads", "overwrite", "out-", "prune-into", "export-",
                   "demo-", "second-writer", "model-json", "config-json", "checkpoint-json", "nsc-", "subnet-json",
                   "idx-", "cifar-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_fault_is_one_line_exit_2_and_changes_nothing(case, base, tmp_path, capsys, monkeypatch):
    name, damage, argv, needle = case
    w = tmp_path / "w"
    shutil.copytree(base, w, symlinks=True)
    monkeypatch.chdir(w)
    cleanup = damage(w) if damage else None
    try:
        before = snapshot(w)
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = warnings._showwarning_orig  # as the command line shows them: on stderr
            code = main([str(a) for a in argv])
        out = capsys.readouterr()
        after = snapshot(w)
    finally:
        if callable(cleanup):
            cleanup()
    assert code == 2, (code, out.err)
    assert out.err.startswith("netsift: error: ") and out.err.count("\n") == 1, out.err
    assert "Traceback" not in out.err + out.out
    assert needle in out.err, out.err
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed: {changed}"
