"""Atomic checkpoints as safetensors + JSON: no pickle anywhere.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` (every tensor) and ``NAME.json`` (everything else,
plus the SHA-256 of the tensor file). Both are written to temporary files and moved into place with
``os.replace``, the JSON last, so a crash leaves either the old checkpoint or the new one, never a mix; a
tensor file that does not match its JSON is reported as corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import NetsiftError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, raising a one-line :class:`NetsiftError` when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise NetsiftError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NetsiftError(f"{what} {path} is corrupt: {e}") from None


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_checkpoint(path_stem: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` as ``<stem>.safetensors`` + ``<stem>.json``."""
    stem = Path(path_stem)
    blob = save_bytes(_contiguous(tensors))
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    atomic_write_json(stem.with_suffix(".json"), {**meta, "tensors_sha256": hashlib.sha256(blob).hexdigest()})


def load_checkpoint(path_stem: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying the tensor file's hash."""
    stem = Path(path_stem)
    meta = read_json(stem.with_suffix(".json"), "checkpoint metadata")
    tensor_file = stem.with_suffix(".safetensors")
    if not tensor_file.is_file():
        raise NetsiftError(f"checkpoint tensors not found: {tensor_file}")
    blob = tensor_file.read_bytes()
    if meta.get("tensors_sha256") not in (None, hashlib.sha256(blob).hexdigest()):
        raise NetsiftError(f"checkpoint {tensor_file} is corrupt: its SHA-256 does not match {stem.with_suffix('.json').name}")
    return load_tensors_bytes(blob, tensor_file), meta


def load_tensors_bytes(blob: bytes, origin: str | os.PathLike = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse safetensors bytes, turning any format error into a one-line :class:`NetsiftError`."""
    try:
        return load_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
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
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj
