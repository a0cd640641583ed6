"""Crash-safe checkpoints as safetensors + JSON: no pickle anywhere.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` (every tensor) and ``NAME.json`` (everything else,
plus the SHA-256 of the tensor file). The JSON file is the commit record: a checkpoint is the tensors whose
SHA-256 ``NAME.json`` names. Saving goes

1. new tensors into a temporary file in the same folder (written and fsync'ed),
2. the committed tensors moved aside to ``.NAME.safetensors.prev`` (one rename),
3. the new tensors renamed to ``NAME.safetensors``,
4. the new ``NAME.json`` written to a temporary file and renamed over the old one (the commit),
5. ``.NAME.safetensors.prev`` deleted.

Every step is a single ``rename``/``unlink``, so a process killed at any instant leaves ``NAME.json`` naming
tensors that exist: before step 4 the old JSON and the old tensors (in ``NAME.safetensors`` or in the
``.prev`` file), after it the new JSON and the new tensors. :func:`load_checkpoint` picks whichever file
matches the JSON; a tensor file matching neither is reported as corrupt.

``NETSIFT_FAULT`` is a test-only hook (see :func:`fault_point`): ``kill:N`` sends SIGKILL to the process at
its N-th write step, ``sleep:S`` sleeps S seconds at every step (to widen the windows for a timed kill).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import NetsiftError

FAULT_ENV = "NETSIFT_FAULT"
"""Test-only fault injection: ``kill:N`` (SIGKILL at write step N), ``sleep:S`` (sleep S s at every step)."""

_steps = 0


def fault_point(where: str = "") -> None:
    """One step of a multi-step write: the places where the test-only ``NETSIFT_FAULT`` hook acts."""
    global _steps
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _steps += 1
    for part in spec.split(","):
        kind, _, arg = part.partition(":")
        if kind == "kill" and _steps == int(arg):
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "sleep":
            time.sleep(float(arg))


def fault_steps() -> int:
    """Write steps counted so far in this process (while ``NETSIFT_FAULT`` is set)."""
    return _steps


def reset_fault_steps() -> None:
    """Start counting write steps from zero again (tests)."""
    global _steps
    _steps = 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or we cannot tell: keep its files
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files a killed writer of ``path`` left beside it (``.NAME.PID[.RANDOM].tmp``).

    Only files of processes that no longer exist on this machine are removed, never a live writer's (nor this
    process's). Returns the files removed."""
    prefix, removed = f".{path.name}.", []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):-len(".tmp")].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new, fsync'ed temporary file beside ``path`` (permissions as the umask says); temporary
    files of killed writers of ``path`` are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _io_error(path: Path, e: OSError) -> NetsiftError:
    return NetsiftError(f"cannot write {path}: {e.strerror or e}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = None
    try:
        tmp = _write_temp(path, data)
        fault_point("temp written")
        os.replace(tmp, path)
        tmp = None
        fault_point("renamed")
        _fsync_dir(path.parent)
    except OSError as e:
        raise _io_error(path, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON netsift writes."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def read_json(path: str | os.PathLike, what: str = "file", schema: Any = None) -> Any:
    """Read a JSON file, raising a one-line :class:`NetsiftError` when it is missing or malformed.

    With ``schema`` (a :mod:`netsift.schema` spec) the contents are checked against it too.
    """
    path = Path(path)
    if not path.is_file():
        raise NetsiftError(f"{what} not found: {path}")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:  # before reading it: a planted 10 GB file is not read
            raise NetsiftError(f"{what} {path} is implausibly large ({path.stat().st_size:,} bytes)")
        data = path.read_bytes()
    except OSError as e:
        raise NetsiftError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_JSON_BYTES:
        raise NetsiftError(f"{what} {path} is implausibly large ({len(data):,} bytes)")
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise NetsiftError(f"{what} {path} is corrupt: {e}") from None
    if schema is not None:
        from .schema import validate

        validate(value, schema, f"{what} {path}")
    return value


MAX_JSON_BYTES = 256 * 2**20
"""JSON files netsift reads are far smaller than this; a larger one is refused before parsing."""


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _prev(stem: Path) -> Path:
    return stem.parent / f".{stem.name}.safetensors.prev"


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _committed_hash(json_file: Path) -> str | None:
    try:
        return json.loads(json_file.read_bytes()).get("tensors_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def check_finite_tensors(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to save NaN or infinite floating-point values (one line naming the first such tensor)."""
    for key, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise NetsiftError(f"{what}: {key} holds NaN or infinite values; nothing was saved (the last good "
                               "checkpoint is kept; lower the learning rate)")


def save_checkpoint(path_stem: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict,
                    allow_nonfinite: bool = False) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` as ``<stem>.safetensors`` + ``<stem>.json``, as one unit.

    See the module docstring for the steps; a kill at any instant leaves the previous or the new checkpoint.

    Raises:
        NetsiftError: a floating-point tensor holds NaN or infinity (unless ``allow_nonfinite``), or the folder
            cannot be written.
    """
    stem = Path(path_stem)
    tensors = _contiguous(tensors)
    if not allow_nonfinite:
        check_finite_tensors(tensors, f"checkpoint {stem.name}")
    blob = save_bytes(tensors)
    record = json_bytes({**meta, "tensors_sha256": hashlib.sha256(blob).hexdigest()})
    tensor_file, json_file, prev = stem.with_suffix(".safetensors"), stem.with_suffix(".json"), _prev(stem)
    tmp = None
    try:
        tmp = _write_temp(tensor_file, blob)
        fault_point("tensors written")
        if tensor_file.exists():
            # an earlier save killed between steps 2 and 4 left the committed tensors in .prev: keep them there
            keep_prev = prev.exists() and _sha256_file(prev) == _committed_hash(json_file)
            if not keep_prev:
                os.replace(tensor_file, prev)
                fault_point("committed tensors moved aside")
        os.replace(tmp, tensor_file)
        tmp = None
        fault_point("new tensors in place")
        atomic_write_bytes(json_file, record)  # the commit
        prev.unlink(missing_ok=True)
        fault_point("previous tensors removed")
        _fsync_dir(stem.parent)
    except OSError as e:
        raise _io_error(tensor_file, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def load_checkpoint(path_stem: str | os.PathLike, what: str = "checkpoint", schema: Any = None
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying the tensor file's SHA-256.

    ``schema`` (a :mod:`netsift.schema` spec) checks the JSON record before any tensor is read.
    """
    from .schema import CHECKPOINT_RECORD, validate

    stem = Path(path_stem)
    json_file, tensor_file = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for attempt in range(3):  # a writer may commit between our reads: read the record again
        meta = read_json(json_file, f"{what} metadata")
        validate(meta, CHECKPOINT_RECORD, f"{what} metadata {json_file}")
        if schema is not None:
            validate(meta, schema, f"{what} metadata {json_file}")
        found = False
        for candidate in (tensor_file, _prev(stem)):
            try:
                blob = candidate.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise NetsiftError(f"cannot read {candidate}: {e.strerror or e}") from None
            found = True
            if hashlib.sha256(blob).hexdigest() == meta["tensors_sha256"]:
                return load_tensors_bytes(blob, tensor_file), meta
        if not found:
            raise NetsiftError(f"{what} tensors not found: {tensor_file}")
        time.sleep(0.05 * (attempt + 1))
    raise NetsiftError(f"{what} {tensor_file} is corrupt: its SHA-256 does not match {json_file.name}")


def load_tensors_bytes(blob: bytes, origin: str | os.PathLike = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse safetensors bytes, turning any format error into a one-line :class:`NetsiftError`."""
    try:
        return load_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise NetsiftError(f"{origin} is not a valid safetensors file: {e}") from None


def flatten_state(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (an optimizer's ``state_dict``, say) into tensors and a JSON skeleton.

    Tensors go into ``tensors`` under dotted keys and are replaced by ``{"__tensor__": key}`` in the returned
    structure; :func:`unflatten_state` reverses it.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(f"{prefix}.k{i}", k, tensors), flatten_state(f"{prefix}.{i}", v, tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state` (a malformed skeleton raises ``KeyError``/``TypeError``/``ValueError``)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {_hashable(unflatten_state(k, tensors)): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict, torch.Tensor)):
        raise TypeError(f"a checkpoint state key must be a plain value, got {type(key).__name__}")
    return key

