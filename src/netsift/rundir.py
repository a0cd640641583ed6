"""Run folders: the one module that creates them, names them, locks them, checks them for resuming, and writes
into them.

A run folder holds ``config.json`` (one shape for every command: everything needed to rebuild the run),
``metrics.jsonl`` (one line per epoch), crash-safe checkpoints (:mod:`netsift.checkpoint`), ``model.safetensors``
+ ``model.json`` (the final network and its architecture manifest) and ``result.json`` (the schema of
:mod:`netsift.results`). Every kind of file a run folder may hold is registered in :data:`ARTIFACTS` with its
writer, and writers ask :func:`artifact` where to write. :class:`SavedRun` (:func:`read_run`) is the one reader
of what a saved run used (data, split, seed, image size) and produced (network, result); an output named by the
user never replaces a run's own files (:func:`check_output_file`).

* **One writer at a time.** :func:`prepare` takes an advisory lock (``fcntl.flock`` on ``DIR/.netsift.lock``)
  for as long as the run is written; a second writer gets a one-line error.
* **Nothing lost to ``--overwrite``.** A run that replaces an earlier one is built beside it, in
  ``.DIR.netsift-new``, and swapped into place (one atomic ``renameat2(RENAME_EXCHANGE)``) only when it has
  finished; until then ``DIR`` holds the earlier run, and an interrupted replacement continues with
  ``--resume``. ``--overwrite`` refuses a folder holding files that are not a netsift run (unless ``force``),
  an ``--out`` that is the run being read, and a symbolic link.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from . import distributed
from .checkpoint import atomic_write_bytes, fault_point, json_bytes, load_checkpoint, read_json, save_checkpoint
from .errors import NetsiftError
from .models import build_from_manifest, manifest_of
from .results import RESULT_KEYS
from .schema import (BEST_CHECKPOINT, MODEL_FILE, RESULT_FILE, RUN_CONFIG, SELECTION_STATE, TRAIN_CHECKPOINT,
                     validate)
from .surgery import apply_module_sizes, module_sizes
from .version import __version__

CONFIG, RESULT = "config.json", "result.json"
LOCK = ".netsift.lock"
"""The lock file of a run folder (empty; locked with ``flock`` while a process writes the folder)."""
REPLACING = ".netsift-replacing"
"""Marker inside ``.DIR.netsift-new``: an unfinished run that will replace ``DIR``."""



@dataclass(frozen=True)
class Artifact:
    """A kind of file netsift writes into a run folder, and who writes it."""

    files: tuple[str, ...]  # the file names (a safetensors pair: ``NAME.json`` + ``NAME.safetensors``)
    writer: str  # the module that writes it

    @property
    def stem(self) -> str:
        """The name without extension (what :func:`netsift.checkpoint.save_checkpoint` takes for a pair)."""
        return self.files[0].rsplit(".", 1)[0]


def _pair(stem: str, writer: str) -> Artifact:
    return Artifact((f"{stem}.json", f"{stem}.safetensors"), writer)


ARTIFACTS: dict[str, Artifact] = {
    "config": Artifact((CONFIG,), "rundir.prepare: every command, before any work"),
    "result": Artifact((RESULT,), "rundir.write_result: every command, when it has finished"),
    "metrics": Artifact(("metrics.jsonl",), "training.fit: one line per epoch"),
    "checkpoint": _pair("checkpoint", "training.fit: after every epoch (--resume)"),
    "best": _pair("best", "training.fit: the best validation epoch's weights"),
    "model": _pair("model", "rundir.save_model: the network a run produced"),
    "subnet": _pair("subnet", "pipelines.extract: the mask, one bit per weight of the regenerated network"),
    "selection": _pair("selection", "selection.state: after every channel group (prune --resume)"),
    "onnx": Artifact(("model.onnx",), "pipelines.prune --onnx, pipelines.export --format onnx"),
    "compact": Artifact(("model.nsc",), "pipelines.export --format compact"),
    "dense": _pair("dense", "pipelines.export --format safetensors"),
}
"""Every file netsift writes into a run folder, by kind: the writers ask :func:`artifact` for their path, so a
file of a run folder is always one of these (besides the lock, temporary files and the trackers' ``logs/``)."""


def artifact(run_dir: str | Path, kind: str) -> Path:
    """Where a writer puts its ``kind`` of file in ``run_dir`` (a pair's stem, else the file)."""
    if kind not in ARTIFACTS:
        raise ValueError(f"no run-folder artifact {kind!r}; register it in rundir.ARTIFACTS")
    a = ARTIFACTS[kind]
    return Path(run_dir) / (a.stem if len(a.files) == 2 else a.files[0])


_PAIRS = tuple(name for name, a in ARTIFACTS.items() if len(a.files) == 2)
RUN_FILES = frozenset({LOCK, REPLACING, *(f for a in ARTIFACTS.values() for f in a.files)})
"""Files netsift writes into a run folder (besides ``*.nsc``/``*.onnx`` exports and hidden temporary files)."""

RESUME_FILES = {"checkpoint": TRAIN_CHECKPOINT, "best": BEST_CHECKPOINT, "selection": SELECTION_STATE}


def default_name(command: str, config: dict) -> str:
    """``<command>-<hash of the settings>``, as open_lth names its runs (same settings, same folder)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return f"{command}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_config(command: str, method: str, seed: int, data_seed: int, model: dict, data: dict, train: dict | None,
               mask: dict | None = None, prune: dict | None = None, source: str | None = None,
               weights: dict | None = None) -> dict:
    """The ``config.json`` of any command (one shape: unused sections are ``null``; ``weights``, the record of a
    ``--weights`` file, only when one was given)."""
    config = {"command": command, "method": method, "seed": seed, "data_seed": data_seed, "model": model,
              "data": data, "train": train, "mask": mask, "prune": prune, "source": source}
    return {**config, "weights": weights} if weights is not None else config


def is_main_process() -> bool:
    """Whether this is the process that writes run folders (rank 0 under ``torchrun``/``accelerate launch``)."""
    return distributed.is_main()


# ------------------------------------------------------------------------------------------- what a folder holds

def _is_run_file(name: str) -> bool:
    return (name in RUN_FILES or name.endswith((".nsc", ".onnx"))
            or (name.startswith(".") and name.endswith((".tmp", ".prev"))))


def foreign_entries(path: Path) -> list[str]:
    """Entries of folder ``path`` that netsift does not write into a run folder (sorted)."""
    return sorted(e.name for e in path.iterdir() if e.is_symlink() or not e.is_file() or not _is_run_file(e.name))


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a folder netsift wrote a run into (a ``config.json`` naming a command, and only
    files netsift writes)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or foreign_entries(path):
        return False
    try:
        config = json.loads((path / CONFIG).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "command" in config


def _is_empty(path: Path) -> bool:
    """No entries, or only a lock file and temporary files left by an earlier netsift process."""
    return all(e.is_file() and not e.is_symlink() and (e.name == LOCK or (e.name.startswith(".") and
               e.name.endswith(".tmp"))) for e in path.iterdir())


def _staging(path: Path) -> Path:
    return path.parent / f".{path.name}.netsift-new"


def _old(path: Path) -> Path:
    return path.parent / f".{path.name}.netsift-old"


def _same_or_nested(a: Path, b: Path) -> bool:
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or a in b.parents or b in a.parents


def check_out(path: Path, sources: Iterable[str | Path] = (), flag: str = "--out") -> None:
    """Refuse an output path that is a symbolic link, exists but is no folder, or is (inside) a source run."""
    if path.is_symlink():
        target = os.readlink(path)
        state = "" if path.exists() else ", which points nowhere"
        raise NetsiftError(f"{flag} {path} is a symbolic link (to {target}{state}); give the real folder")
    if path.exists() and not path.is_dir():
        raise NetsiftError(f"{flag} {path} exists and is not a folder")
    for src in sources:
        if src is not None and Path(src).exists() and _same_or_nested(path, Path(src)):
            raise NetsiftError(f"{flag} {path} is the run being read ({src}); write the new run to another folder")


# ----------------------------------------------------------------------------------------------------- locking

class RunLock:
    """An exclusive advisory lock on a run folder (``flock`` on its ``.netsift.lock``), until :meth:`release`."""

    def __init__(self, folder: Path):
        self.folder, self.fd = folder, None
        path = folder / LOCK
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise NetsiftError(f"cannot write run folder {folder}: {e.strerror or e}") from None
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise NetsiftError(f"{folder} is being written by another netsift process; wait for it to finish "
                                   "or choose another --out") from None
            except OSError:
                pass  # a file system without locks: go on unlocked
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)  # the folder was swapped or removed while we waited: lock the one there now
        raise NetsiftError(f"{folder} keeps changing under us; is another netsift process replacing it?")

    def release(self) -> None:
        """Unlock (closing the file releases the lock)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _writable(path: Path) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise NetsiftError(f"cannot write run folder {path}: permission denied")


def _mkdir(path: Path) -> bool:
    """Create ``path`` (and parents); returns whether it was created."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise NetsiftError(f"--out {path} exists and is not a folder") from None
        return False
    except OSError as e:
        raise NetsiftError(f"cannot create run folder {path}: {e.strerror or e}") from None


def _rmtree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` in one atomic step (Linux ``renameat2``); ``False`` where unsupported."""
    if platform.system() != "Linux":
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _tidy(path: Path) -> None:
    """Under ``path``'s lock: finish the clean-up of a replacement killed after its swap (a marker left in
    ``path``, the earlier run left in ``.DIR.netsift-new`` without one)."""
    if (path / REPLACING).is_file():
        staged = _staging(path)
        if staged.is_dir() and not staged.is_symlink() and not (staged / REPLACING).is_file():
            _rmtree(staged)
        (path / REPLACING).unlink(missing_ok=True)


def recover(path: Path) -> None:
    """Finish or undo a replacement of ``path`` interrupted where atomic exchange was unavailable."""
    old, new = _old(path), _staging(path)
    if path.exists() or not old.is_dir():
        return
    if (new / RESULT).is_file() and (new / REPLACING).is_file():
        os.rename(new, path)
        (path / REPLACING).unlink(missing_ok=True)
        _rmtree(old)
    else:
        os.rename(old, path)


# ----------------------------------------------------------------------------------------------- run folders

class RunFolder:
    """A run folder being written: :attr:`path` is where to write now, :attr:`final` where the run lives.

    They differ while a run replaces an earlier one (``--overwrite``, :attr:`replacing`): the new run is built in
    ``.DIR.netsift-new`` and swapped into ``DIR`` by :meth:`commit`. Use it as a context manager: an exception
    releases the locks (and removes a replacement that has no checkpoint yet).
    """

    def __init__(self, path: Path, final: Path, locks: list[RunLock], replacing: bool = False,
                 created: bool = False, fresh: bool = False):
        self.path, self.final, self.locks, self.replacing = path, final, locks, replacing
        self.created, self.fresh = created, fresh  # we made the folder / it was empty before this run
        self.committed = False
        self.pending_config: dict | None = None  # a resumed run's settings, written when it finishes

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.final)!r}{', building in ' + str(self.path) if self.replacing else ''})"

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(cleanup=isinstance(exc, Exception))

    def _has_progress(self) -> bool:
        return any((self.path / f"{n}.json").is_file() for n in ("checkpoint", "selection", "model"))

    def commit(self) -> None:
        """The run is complete: swap a replacement into place, then release the locks."""
        if self.replacing and not self.committed and self.locks:
            fault_point("replacement complete")
            try:
                if _exchange(self.path, self.final):
                    fault_point("replacement swapped in")
                    (self.final / REPLACING).unlink(missing_ok=True)
                    _rmtree(self.path)  # now the earlier run
                else:
                    old = _old(self.final)
                    _rmtree(old)
                    os.rename(self.final, old)
                    fault_point("earlier run moved aside")
                    os.rename(self.path, self.final)
                    (self.final / REPLACING).unlink(missing_ok=True)
                    _rmtree(old)
            except OSError as e:
                raise NetsiftError(f"cannot move the new run into {self.final}: {e.strerror or e}") from None
        self.committed = True
        self.close()

    def abort(self, cleanup: bool = True) -> None:
        """The run failed: release the locks; with ``cleanup``, remove what it wrote if it holds no progress."""
        if cleanup and self.locks and not self.committed and not self._has_progress():
            if self.replacing:
                _rmtree(self.path)
            elif self.created:
                _rmtree(self.path)
            elif self.fresh:  # a folder that was empty: leave it empty
                for name in (CONFIG, "metrics.jsonl", LOCK):
                    (self.path / name).unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Release the locks (idempotent)."""
        for lock in self.locks:
            lock.release()
        self.locks = []


def prepare(out: str | Path | None, config: dict, overwrite: bool = False, resume: bool = False,
            resume_ignores: tuple[str, ...] = ("train.epochs",), force: bool = False,
            sources: Iterable[str | Path | None] = ()) -> RunFolder:
    """Create (or reopen with ``resume``) the run folder for ``config``, lock it and write its ``config.json``.

    Without ``out`` the folder is ``runs/<command>-<hash of config>``. A folder holding anything is refused unless
    ``overwrite`` (the new run is built beside it and replaces it when it finishes; a folder with files that are
    not a netsift run needs ``force`` too) or ``resume`` (it must hold a run with the same settings, except the
    dotted keys ``resume_ignores``). ``sources`` are runs the command reads: ``out`` may not be one of them.

    Nothing in an existing folder changes when this raises.

    Raises:
        NetsiftError: the folder is refused, locked by another writer, or cannot be written.
    """
    validate(config, RUN_CONFIG, "run config")
    path = Path(out) if out else Path("runs") / default_name(config["command"], config)
    precheck(path, overwrite, resume, force, sources, look=False)
    if not is_main_process():  # other ranks write nothing; resuming, they read where the main process writes
        staged = _staging(path)
        where = staged if (overwrite or (resume and (staged / REPLACING).is_file())) else path
        return RunFolder(where, path, [], replacing=where != path)
    try:
        recover(path)
    except OSError as e:
        raise NetsiftError(f"cannot repair {path} after an interrupted replacement: {e.strerror or e}") from None
    if resume:
        return _reopen(path, config, resume_ignores)
    if path.is_dir() and not _is_empty(path):
        precheck(path, overwrite, resume, force, sources)
        _writable(path)
        return _replace(path, config)
    created = _mkdir(path)
    _writable(path)
    lock = RunLock(path)
    run = RunFolder(path, path, [lock], created=created, fresh=True)
    try:
        if not _is_empty(path):  # another process wrote here between our look and our lock
            raise NetsiftError(f"--out {path} is not empty; pass --overwrite to replace it or --resume to continue it")
        _write_config(run, config)
    except BaseException:
        run.abort()
        raise
    return run


def precheck(out: str | Path, overwrite: bool = False, resume: bool = False, force: bool = False,
             sources: Iterable[str | Path | None] = (), look: bool = True) -> None:
    """The checks of :func:`prepare` that need no lock, to refuse a bad ``--out`` before any work; changes nothing.

    ``look=False`` checks only the flags and the path itself, not what the folder holds.
    """
    if overwrite and resume:
        raise NetsiftError("give --overwrite (start again) or --resume (continue), not both")
    path = Path(out)
    check_out(path, sources)
    if not look:
        return
    if resume:
        if not (path / CONFIG).is_file() and not (_staging(path) / REPLACING).is_file():
            raise NetsiftError(f"--resume: no run to resume in {path} ({CONFIG} missing)")
        return
    if path.is_dir() and not _is_empty(path):
        if not overwrite:
            raise NetsiftError(f"--out {path} is not empty; pass --overwrite to replace it or --resume to continue it")
        if not is_run(path) and not force:
            foreign = foreign_entries(path)
            what = f"{foreign[0]!r}" if foreign else "no config.json"
            raise NetsiftError(f"--out {path} holds files that are not a netsift run ({what}); pass --force to "
                               "replace it anyway")


def _write_config(run: RunFolder, config: dict) -> None:
    data = json_bytes(config)
    target = run.path / CONFIG
    if not (target.is_file() and target.read_bytes() == data):
        atomic_write_bytes(target, data)


def _replace(path: Path, config: dict) -> RunFolder:
    """Lock the earlier run in ``path`` and start the new one beside it (in ``.DIR.netsift-new``)."""
    old_lock = RunLock(path)
    staging = _staging(path)
    locks = [old_lock]
    try:
        _tidy(path)
        if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
            raise NetsiftError(f"{staging} is in the way of the new run; remove it")
        if staging.exists():  # an abandoned replacement: ours to discard once nobody writes it
            RunLock(staging).release()
            _rmtree(staging)
        _mkdir(staging)
        locks.append(RunLock(staging))
        atomic_write_bytes(staging / REPLACING, f"replaces {path.name}\n".encode())
        run = RunFolder(staging, path, locks, replacing=True)
        _write_config(run, config)
        return run
    except BaseException:
        for lock in locks:
            lock.release()
        if staging.is_dir() and not staging.is_symlink():
            _rmtree(staging)
        raise


def _reopen(path: Path, config: dict, ignores: tuple[str, ...]) -> RunFolder:
    """Reopen an interrupted run for ``--resume``: an unfinished replacement of ``path`` first, else ``path``."""
    staging = _staging(path)
    if (staging / REPLACING).is_file() and (staging / CONFIG).is_file() and not staging.is_symlink():
        try:
            check_resume_config(staging, config, ignores)
        except NetsiftError:
            pass  # not this command's replacement: resume the run in path itself
        else:
            locks = [RunLock(path)] if path.is_dir() else []
            try:
                locks.append(RunLock(staging))
                return _resumable(RunFolder(staging, path, locks, replacing=True), config, ignores)
            except BaseException:
                for lock in locks:
                    lock.release()
                raise
    if not (path / CONFIG).is_file():
        raise NetsiftError(f"--resume: no run to resume in {path} ({CONFIG} missing)")
    _writable(path)
    run = RunFolder(path, path, [RunLock(path)])
    try:
        _tidy(path)
        return _resumable(run, config, ignores)
    except BaseException:
        run.close()
        raise


def _resumable(run: RunFolder, config: dict, ignores: tuple[str, ...]) -> RunFolder:
    """Check (under the lock) that ``run`` holds this run and readable resume state; update its config."""
    check_resume_config(run.path, config, ignores)
    distributed.check_resume(run.path)  # the same number of processes as the checkpoint's
    for stem, schema in RESUME_FILES.items():
        if (run.path / f"{stem}.json").is_file():
            read_json(run.path / f"{stem}.json", f"{stem} metadata", schema)
    run.pending_config = config  # written when the run finishes: a resume that fails changes nothing
    return run


def check_resume_config(run_dir: Path, config: dict, ignore: tuple[str, ...] = ("train.epochs",)) -> None:
    """Refuse to resume a run whose saved settings differ from ``config`` (except the dotted keys ``ignore``)."""
    saved = read_run_config(run_dir)

    def walk(a: Any, b: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            raise NetsiftError(f"--resume: setting {path} was {a!r} in {run_dir}, now {b!r}")

    walk(saved, json.loads(json.dumps(config, default=str)), "")


def read_run_config(run_dir: str | Path) -> dict:
    """``config.json`` of a run folder, checked against its schema."""
    return read_json(Path(run_dir) / CONFIG, "run config", RUN_CONFIG)


def open_run(out: str | Path | bool | None, config: dict, **kwargs: Any):
    """:func:`prepare` when ``out`` names a folder (``True``: the default name), else a context yielding ``None``."""
    import contextlib

    if out is None or out is False:
        return contextlib.nullcontext(None)
    target = None if out is True else out
    if not distributed.active():
        return prepare(target, config, **kwargs)
    # one of several processes: the main one creates, locks and checks the folder (its refusal is every
    # process's); then the others learn where it writes (they write nothing there themselves)
    opened: list[RunFolder] = []
    distributed.on_main(lambda: opened.append(prepare(target, config, **kwargs)), "preparing the run folder")
    return opened[0] if opened else prepare(target, config, **kwargs)


# -------------------------------------------------------------------------------------------- models and results

def describe_model(model: nn.Module) -> dict:
    """The manifest of a zoo network, or ``{"model": "custom:<class>"}`` for any other module."""
    return manifest_of(model) or {"model": f"custom:{type(model).__qualname__}"}


def save_model(run_dir: str | Path, model: nn.Module, manifest: dict | None = None, name: str = "model") -> None:
    """Save ``model``'s weights as ``<name>.safetensors`` and its manifest (with every layer's size) as ``<name>.json``.

    A zoo network's manifest rebuilds it (:func:`load_model`); for your own module the file records the layer
    sizes, so :func:`load_weights` can resize a fresh instance of it and load the weights. Both files appear as
    one unit (:func:`netsift.checkpoint.save_checkpoint`); NaN or infinite weights are refused.
    """
    manifest = dict(manifest or describe_model(model))
    manifest["modules"] = module_sizes(model)
    save_checkpoint(Path(run_dir) / name, model.state_dict(), {"manifest": manifest, "netsift": __version__})


def _read_model(path: str | Path) -> tuple[dict, dict, Path]:
    path = Path(path)
    stem = path / "model" if path.is_dir() else path.with_suffix("")
    tensors, meta = load_checkpoint(stem, "model", MODEL_FILE)
    return tensors, meta["manifest"], stem


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild and load a network saved by :func:`save_model` (a run folder or the ``model`` stem inside one).

    The network is plain PyTorch modules at the saved sizes; no pruning code is needed.

    Raises:
        NetsiftError: missing, corrupt or tampered files, or a network of your own (use :func:`load_weights`).
    """
    tensors, manifest, stem = _read_model(path)
    if str(manifest.get("model", "")).startswith("custom:"):
        raise NetsiftError(f"{stem}.json holds your own module ({manifest['model'][7:]}): build it and load the "
                           "weights with netsift.load_weights(module, path)")
    model = build_from_manifest(manifest)
    _load_state(model, tensors, stem, manifest.get("model"))
    return model, manifest


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by :func:`save_model` into ``module``, first resizing its layers to the saved sizes.

    This is how a pruned network of your own class comes back: build it as before pruning, then load.
    """
    tensors, manifest, stem = _read_model(path)
    if manifest.get("modules"):
        apply_module_sizes(module, manifest["modules"])
    _load_state(module, tensors, stem, type(module).__name__)
    return module


def _load_state(model: nn.Module, tensors: dict, stem: Path, what: Any) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        # PyTorch's first line only says "Error(s) in loading state_dict"; the next one names the tensor
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise NetsiftError(f"{stem}.safetensors does not fit model {what}: {why}") from None


def write_result(run_dir: RunFolder | str | Path | None, result: dict) -> dict:
    """Complete ``result`` with the versions and write it as ``result.json`` (atomically) when there is a folder.

    For a :class:`RunFolder` this finishes the run: a replacement is swapped into place and the locks released.
    """
    unknown = set(result) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"result has keys outside the schema: {sorted(unknown)}")
    result = {**{k: None for k in RESULT_KEYS}, **result, "netsift_version": __version__,
              "torch_version": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "processes": distributed.world_size()}
    if run_dir is not None:
        final = run_dir.final if isinstance(run_dir, RunFolder) else run_dir
        result["run_dir"] = str(final)
        if is_main_process():
            if isinstance(run_dir, RunFolder) and run_dir.pending_config is not None:
                _write_config(run_dir, run_dir.pending_config)
            atomic_write_bytes(Path(run_dir) / RESULT, json_bytes(result))
        if isinstance(run_dir, RunFolder):
            run_dir.commit()
    return result


def read_json_if(path: str | Path, schema: Any = None, what: str = "file") -> Any:
    """A JSON file's contents, ``None`` when it does not exist (corrupt files are a one-line error)."""
    return read_json(path, what, schema) if Path(path).is_file() else None


def read_result(run_dir: str | Path) -> dict:
    """``result.json`` of a run folder."""
    return read_json(Path(run_dir) / RESULT, "result", RESULT_FILE)


# ------------------------------------------------------------------------------------------ reading a saved run

DATA_KEYS = ("data", "data_dir", "val_fraction", "train_subset", "download", "image_size")
"""The data settings a run records that load its data again (``DataConfig`` fields)."""
FREE_KEYS = ("data_dir", "download")
"""Data settings that may differ from a run's own when its network is read (the data may have moved)."""


class SavedRun:
    """What a run folder says about itself: its settings (``config.json``), its result and its network.

    The one reader of "what data, split, seed and image size did this run use?" for every command that reads a
    run (prune, eval, export, the compact reader).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        config, result = self.path / CONFIG, self.path / RESULT
        self.config: dict = read_json(config, "run config", RUN_CONFIG) if config.is_file() else {}
        self.result: dict | None = read_json(result, "result", RESULT_FILE) if result.is_file() else None

    @property
    def seed(self) -> int:
        """The run's seed (0 when it recorded none)."""
        return self.config.get("seed", 0)

    @property
    def data_seed(self) -> int:
        """The seed of the run's train/validation split."""
        return self.config.get("data_seed", self.seed)

    @property
    def data(self) -> dict | None:
        """The run's data settings when they load a built-in data set (``None`` for your own data)."""
        saved = self.config.get("data")
        if not isinstance(saved, dict) or saved.get("data") in (None, "custom"):
            return None
        return {k: v for k, v in saved.items() if k not in ("train", "val", "test", "input_shape")}

    @property
    def test_acc(self) -> float | None:
        """The test accuracy the run recorded."""
        return self.result.get("test_acc") if isinstance(self.result, dict) else None

    def data_config(self, given: dict | None = None, same: bool = False) -> Any:
        """The run's data settings with the ``given`` ones that are not ``None`` on top, as a ``DataConfig``.

        ``same``: refuse a given setting that differs from the run's (see :meth:`check_same`).
        """
        from .config import DataConfig

        given = {k: v for k, v in (given or {}).items() if v is not None}
        if self.data is None and "data" not in given:
            raise NetsiftError(f"{self.path} does not record a built-in data set; pass the data")
        if same:
            self.check_same(given)
        try:
            return DataConfig(**{**(self.data or {}), **given})
        except TypeError as e:
            raise NetsiftError(f"{self.path}/{CONFIG} has malformed data settings: {e}") from None

    def check_same(self, given: dict) -> None:
        """Refuse data settings that differ from the run's own (only ``data_dir``/``download`` may: the data may
        have moved); an image size equal to the one the network was built for is the run's own."""
        saved = self.data
        if saved is None:
            return
        for key, value in given.items():
            if key in FREE_KEYS or (key not in saved and key != "image_size"):
                continue
            own = saved.get(key)
            if key == "image_size" and own is None:
                own = (self.manifest or {}).get("image_size") if value is not None else None
            if value != own:
                raise NetsiftError(f"{self.path} was trained with {key}={own!r}, not {value!r}; leave "
                                   "the data settings out to use the run's (only --data-dir may differ)")

    def data_for(self, data: Any, image_size: int | None = None) -> Any:
        """The data a network read from this run is used with: ``data`` as given (a name or data settings are
        checked against the run's and completed by them; a bundle or loaders are the caller's), else the run's."""
        from .config import DataConfig

        if image_size is not None:
            self.check_same({"image_size": image_size})
        if isinstance(data, DataConfig):
            self.check_same(dataclasses.asdict(data))
            return data
        if data is None or isinstance(data, str) or (isinstance(data, dict) and set(data) <= set(DATA_KEYS)):
            return self.data_config({"data": data} if isinstance(data, str) else data, same=True)
        return data

    def network(self) -> nn.Module:
        """The network the run saved."""
        return load_model(self.path)[0]

    def check_arch(self, arch: str) -> None:
        """Refuse a run whose saved network is not architecture ``arch``."""
        have = (self.manifest or {}).get("model")
        if have != arch:
            raise NetsiftError(f"--checkpoint {self.path} holds a {have}, not a {arch}")

    def check_fits(self, bundle: Any) -> None:
        """Refuse data whose (channels, image size, classes) differ from the saved zoo network's."""
        manifest = self.manifest
        if manifest and "in_channels" in manifest:
            have = (manifest["in_channels"], manifest["image_size"], manifest["num_classes"])
            want = (bundle.in_channels, bundle.image_size, bundle.num_classes)
            if have != want:
                raise NetsiftError(f"{self.path} was trained on inputs (channels, size, classes) = {have}, but the "
                                   f"data {bundle.name} has {want}")

    @property
    def manifest(self) -> dict | None:
        """The saved network's manifest (``model.json``; ``None`` when the run saved no network)."""
        if not (self.path / "model.json").is_file():
            return None
        return read_json(self.path / "model.json", "model", MODEL_FILE)["manifest"]


def is_run_folder(path: Any) -> bool:
    """Whether ``path`` names a run folder holding a saved network."""
    return isinstance(path, (str, Path)) and Path(path).is_dir() and (Path(path) / "model.json").is_file()


def read_run(path: str | Path, what: str = "run folder") -> SavedRun:
    """The :class:`SavedRun` in folder ``path`` (one-line errors for a missing folder or corrupt files)."""
    path = Path(path)
    if not path.exists():
        raise NetsiftError(f"no such {what}: {path}")
    if not path.is_dir():
        raise NetsiftError(f"{path} is not a run folder")
    return SavedRun(path)


# =================================================================================================================
# User-named outputs (issue 22): what an output may replace. Kept apart from the rest of the module on purpose.
# =================================================================================================================

_OUTPUT_SUFFIXES = {"compact": (".nsc",), "onnx": (".onnx",), "safetensors": (".safetensors",)}
_RUN_COMMANDS = ("train", "extract", "prune")
_OWN_PAIRS = frozenset(p for p in _PAIRS if p != "dense")  # dense.* is the safetensors export's own name


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder netsift wrote (a lock or replacement marker, a ``config.json`` or
    ``result.json`` naming a command, or a training/selection checkpoint record), even with foreign files beside.
    A folder holding only a saved model pair (``save_model``, a safetensors export) is not a run."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / LOCK).is_file() or (folder / REPLACING).is_file():
        return True
    for name, key in [(CONFIG, "command"), (RESULT, "command"),
                      *((f"{p}.json", "tensors_sha256") for p in ("checkpoint", "best", "subnet", "selection"))]:
        try:
            if (folder / name).stat().st_size > 2**20:
                continue
            value = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(value, dict) and key in value:
            return True
    return False


def _nested_run(folder: Path, limit: int = 200_000) -> Path | None:
    """A run folder strictly below ``folder`` (the first one found), ``None`` when there is none."""
    seen = 0
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for d in dirnames:
            seen += 1
            if _holds_run(Path(dirpath) / d) or seen > limit:
                return Path(dirpath) / d
    return None


def _as_out_path(path: Any, flag: str) -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise NetsiftError(f"{flag} must be a path, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text.strip() or "\0" in text or len(text) > 4096:
        raise NetsiftError(f"{flag} must name a file or folder, got {text!r}")
    return Path(text)


def check_output_file(path: Any, kind: str, overwrite: bool = False, source: str | Path | None = None,
                      flag: str = "--out") -> list[Path]:
    """Refuse a user-named output that would replace something belonging to a run; returns the paths to write.

    The rule: an output never replaces a file inside a run folder, nor a run folder itself, unless it is the
    command's own artifact of the same kind. ``kind`` says what is written:

    * ``"compact"``, ``"onnx"``, ``"safetensors"`` (an export; ``source`` is the run folder or file exported):
      inside a run folder only the run being exported, and only a file of the kind (``*.nsc``, ``*.onnx``, a
      ``NAME.safetensors`` + ``NAME.json`` pair other than the run's own ``model``/``checkpoint``/``best``/
      ``subnet``/``selection`` pairs); never the source itself, a folder, a symbolic link, or an existing file
      without ``overwrite``. Returns the files (two for safetensors).
    * ``"report"``: a folder of its own (not a run folder, nor inside one). Returns ``[path]``.
    * ``"train"``, ``"extract"``, ``"prune"`` (a run folder; :func:`prepare` checks the rest, and an ``out``
      that is, holds or lies in the run ``source`` being read): a non-empty path; with ``overwrite`` a folder
      holding run folders below it is refused, even with ``force``.

    Raises:
        NetsiftError: one line naming the output and what it would replace.
    """
    path = _as_out_path(path, flag)
    if kind in _RUN_COMMANDS:
        if source is not None and Path(source).exists() and _same_or_nested(path, Path(source)):
            return [path]  # the run being read: prepare() refuses it, naming it
        if overwrite and path.is_dir() and not path.is_symlink():
            nested = _nested_run(path)
            if nested is not None:
                raise NetsiftError(f"{flag} {path} holds another run ({nested}); netsift never replaces a folder "
                                   "holding runs: choose another --out")
        return [path]
    if kind == "report":
        if path.is_symlink():
            raise NetsiftError(f"{flag} {path} is a symbolic link; give the real folder")
        if path.exists() and not path.is_dir():
            raise NetsiftError(f"{flag} {path} exists and is not a folder")
        for folder in (path, *path.absolute().parents):
            if _holds_run(folder):
                raise NetsiftError(f"{flag} {path} is {'a' if folder == path else 'inside a'} run folder ({folder}); "
                                   "write the report to a folder of its own")
        return [path]
    if kind not in _OUTPUT_SUFFIXES:
        raise ValueError(f"unknown output kind {kind!r}")
    return _check_export_targets(path, kind, overwrite, source, flag)


def _check_export_targets(out: Path, kind: str, overwrite: bool, source: str | Path | None, flag: str) -> list[Path]:
    suffix = _OUTPUT_SUFFIXES[kind][0]
    if kind == "safetensors" and "." in out.with_suffix("").name:
        raise NetsiftError(f"{flag} {out}: name the safetensors file without extra dots, e.g. dense.safetensors")
    targets = [out.with_suffix(".safetensors"), out.with_suffix(".json")] if kind == "safetensors" else [out]
    src = Path(source) if source is not None else None
    for t in {out, *targets}:
        if t.is_symlink():
            raise NetsiftError(f"{flag} {t} is a symbolic link; give the real file name")
        if t.is_dir():
            raise NetsiftError(f"{flag} {t} is a folder; give a file name (e.g. {t / ('model' + suffix)})")
        if src is not None and t.exists() and src.exists() and os.path.samefile(t, src):
            raise NetsiftError(f"{flag} {t} is the file being exported; write the export to another file")
    folder = out.parent if str(out.parent) else Path(".")
    src_run = (src if src.is_dir() else src.parent) if src is not None and src.exists() else None
    owner = next((f for f in (folder, *folder.absolute().parents) if _holds_run(f)), None)
    if owner is not None and (src_run is None or not os.path.samefile(owner, src_run)):
        raise NetsiftError(f"{flag} {out} lies in run folder {owner}, which is not the run being exported; an "
                           "export never writes into another run: choose another folder")
    if owner is not None and _holds_run(folder):
        own_kind = out.name.endswith(suffix) and not out.name.startswith(".") and not (
            kind == "safetensors" and out.with_suffix("").name in _OWN_PAIRS)
        if not own_kind:
            example = "dense.safetensors" if kind == "safetensors" else "model" + suffix
            raise NetsiftError(f"{flag} {out} would replace or add a file of the run that is not its {kind} export "
                               f"({', '.join(t.name for t in targets)}); name a *{suffix} file such as {example}")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise NetsiftError(f"{existing[0]} exists; pass --overwrite to replace it")
    return targets
