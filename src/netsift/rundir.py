"""Run folders: the one module that creates them, names them, checks them for resuming, and writes into them.

A run folder holds ``config.json`` (one shape for every command: everything needed to rebuild the run),
``metrics.jsonl`` (one line per epoch), atomic checkpoints, ``model.safetensors`` + ``model.json`` (the final
network and its architecture manifest) and ``result.json`` (the schema of :mod:`netsift.results`). Every
pipeline writes through this module; nothing in ``masks/`` or ``selection/`` imports it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, distributed
from .checkpoint import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from .errors import NetsiftError
from .models import build_from_manifest, manifest_of
from .results import RESULT_KEYS
from .surgery import apply_module_sizes, module_sizes

CONFIG, RESULT = "config.json", "result.json"


def default_name(command: str, config: dict) -> str:
    """``<command>-<hash of the settings>``, as open_lth names its runs (same settings, same folder)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return f"{command}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_config(command: str, method: str, seed: int, data_seed: int, model: dict, data: dict, train: dict | None,
               mask: dict | None = None, prune: dict | None = None, source: str | None = None) -> dict:
    """The ``config.json`` of any command (one shape: unused sections are ``null``)."""
    return {"command": command, "method": method, "seed": seed, "data_seed": data_seed, "model": model,
            "data": data, "train": train, "mask": mask, "prune": prune, "source": source}


def prepare(out: str | Path | None, config: dict, overwrite: bool = False, resume: bool = False,
            resume_ignores: tuple[str, ...] = ("train.epochs",)) -> Path:
    """Create (or reopen with ``resume``) the run folder for ``config`` and write its ``config.json``.

    Without ``out`` the folder is ``runs/<command>-<hash of config>``. A non-empty folder is refused unless
    ``overwrite`` (it is emptied) or ``resume`` (it must hold a run with the same settings, except
    ``resume_ignores``).
    """
    path = Path(out) if out else Path("runs") / default_name(config["command"], config)
    if path.exists() and not path.is_dir():
        raise NetsiftError(f"--out {path} exists and is not a folder")
    if resume:
        if not (path / CONFIG).is_file():
            raise NetsiftError(f"--resume: no run to resume in {path} ({CONFIG} missing)")
        check_resume_config(path, config, resume_ignores)
        distributed.check_resume(path)  # the same number of processes as the checkpoint's
        atomic_write_json(path / CONFIG, config)
        return path
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise NetsiftError(f"--out {path} is not empty; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / CONFIG, config)
    return path


def check_resume_config(run_dir: Path, config: dict, ignore: tuple[str, ...] = ("train.epochs",)) -> None:
    """Refuse to resume a run whose saved settings differ from ``config`` (except the dotted keys ``ignore``)."""
    saved = read_json(run_dir / CONFIG, "run config")

    def walk(a: Any, b: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            raise NetsiftError(f"--resume: setting {path} was {a!r} in {run_dir}, now {b!r}")

    walk(saved, json.loads(json.dumps(config, default=str)), "")


def describe_model(model: nn.Module) -> dict:
    """The manifest of a zoo network, or ``{"model": "custom:<class>"}`` for any other module."""
    return manifest_of(model) or {"model": f"custom:{type(model).__qualname__}"}


def save_model(run_dir: str | Path, model: nn.Module, manifest: dict | None = None, name: str = "model") -> None:
    """Save ``model``'s weights as ``<name>.safetensors`` and its manifest (with every layer's size) as ``<name>.json``.

    A zoo network's manifest rebuilds it (:func:`load_model`); for your own module the file records the layer
    sizes, so :func:`load_weights` can resize a fresh instance of it and load the weights.
    """
    manifest = dict(manifest or describe_model(model))
    manifest["modules"] = module_sizes(model)
    save_checkpoint(Path(run_dir) / name, model.state_dict(), {"manifest": manifest, "netsift": __version__})


def _read_model(path: str | Path) -> tuple[dict, dict, Path]:
    path = Path(path)
    stem = path / "model" if path.is_dir() else path.with_suffix("")
    tensors, meta = load_checkpoint(stem)
    if not isinstance(meta.get("manifest"), dict):
        raise NetsiftError(f"{stem}.json has no model manifest")
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
        raise NetsiftError(f"{stem}.safetensors does not fit model {what}: {str(e).splitlines()[0]}") from None


def write_result(run_dir: str | Path | None, result: dict) -> dict:
    """Complete ``result`` with the versions and write it as ``result.json`` (atomically) when there is a folder."""
    unknown = set(result) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"result has keys outside the schema: {sorted(unknown)}")
    result = {**{k: None for k in RESULT_KEYS}, **result, "netsift_version": __version__,
              "torch_version": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "processes": distributed.world_size()}
    if run_dir is not None:
        result["run_dir"] = str(run_dir)
        atomic_write_json(Path(run_dir) / RESULT, result)
    return result


def read_json_if(path: str | Path) -> Any:
    """A JSON file's contents, ``None`` when it does not exist (corrupt files are a one-line error)."""
    return read_json(path, "file") if Path(path).is_file() else None


def read_result(run_dir: str | Path) -> dict:
    """``result.json`` of a run folder."""
    return read_json(Path(run_dir) / RESULT, "result")
