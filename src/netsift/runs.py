"""Run folders: creating them safely, saving and reloading models, and writing ``result.json``.

A run folder holds ``config.json`` (everything needed to rebuild the run), ``metrics.jsonl``, atomic
checkpoints, ``model.safetensors`` + ``model.json`` (the final network and its architecture manifest) and
``result.json`` (the contract of DESIGN.md §4).
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .checkpoint import atomic_write_json, load_checkpoint, read_json, save_checkpoint
from .config import DataConfig, ModelConfig, config_hash
from .data import DataBundle, load_data, make_loader
from .errors import NetsiftError
from .measure import count_macs, count_params, evaluate, latency, layer_table, sparse_macs
from .models import build_model, check_input

RESULT_FIELDS = ("command", "method", "model", "data", "seed", "test_acc", "val_acc", "density", "params",
                 "params_total", "macs", "wall_s", "layers")


def prepare_out_dir(out: str | Path | None, overwrite: bool = False, resume: bool = False,
                    default_name: str = "run") -> Path:
    """Return the run folder, creating it; refuse a non-empty one unless ``overwrite`` or ``resume``.

    ``overwrite`` empties the folder; ``resume`` keeps it (and requires a checkpoint there).
    """
    path = Path(out) if out else Path("runs") / default_name
    if path.exists() and not path.is_dir():
        raise NetsiftError(f"--out {path} exists and is not a folder")
    non_empty = path.is_dir() and any(path.iterdir())
    if resume:
        if not (path / "config.json").is_file():
            raise NetsiftError(f"--resume: no run to resume in {path} (config.json missing)")
        return path
    if non_empty and not overwrite:
        raise NetsiftError(f"--out {path} is not empty; pass --overwrite to replace it or --resume to continue it")
    if non_empty and overwrite:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_run_name(command: str, *configs: Any) -> str:
    """``<command>-<hash of the settings>``, as open_lth names its runs."""
    return f"{command}-{config_hash(*configs)}"


def check_resume_config(run_dir: Path, config: dict, ignore: tuple[str, ...] = ("epochs",)) -> None:
    """Refuse to resume a run whose saved settings differ from ``config`` (except ``ignore``d keys)."""
    saved = read_json(run_dir / "config.json", "run config")

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in ignore:
                    walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            raise NetsiftError(f"--resume: setting {path} was {a!r} in {run_dir}, now {b!r}")

    walk(saved, config, "")


def model_manifest(model_cfg: ModelConfig, bundle: DataBundle, **extra: Any) -> dict:
    """What :func:`build_from_manifest` needs to rebuild the architecture."""
    return {"model": model_cfg.model, "width": model_cfg.width, "in_channels": bundle.in_channels,
            "image_size": bundle.image_size, "num_classes": bundle.num_classes, **extra}


def build_from_manifest(manifest: dict) -> nn.Module:
    """Rebuild an architecture from a manifest written by :func:`model_manifest`.

    A manifest may carry ``"modules"``: per-module constructor sizes that differ from the zoo's (a network
    whose channels were removed). Those modules are rebuilt at the recorded sizes, so a pruned network loads
    with plain PyTorch modules and no pruning code.
    """
    try:
        model = build_model(manifest["model"], manifest["in_channels"], manifest["image_size"],
                            manifest["num_classes"], manifest.get("width", 1.0), **manifest.get("kwargs", {}))
    except KeyError as e:
        raise NetsiftError(f"model manifest lacks {e}") from None
    from .surgery import apply_module_sizes

    if manifest.get("modules"):
        apply_module_sizes(model, manifest["modules"])
    return model


def save_model(run_dir: Path, model: nn.Module, manifest: dict, name: str = "model") -> None:
    """Save ``model``'s weights as ``<name>.safetensors`` and its manifest as ``<name>.json``."""
    save_checkpoint(run_dir / name, model.state_dict(), {"manifest": manifest, "netsift": __version__})


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a network saved by :func:`save_model` (a run folder or the ``model`` stem inside one)."""
    path = Path(path)
    stem = path / "model" if path.is_dir() else path.with_suffix("")
    tensors, meta = load_checkpoint(stem)
    if "manifest" not in meta:
        raise NetsiftError(f"{stem}.json has no model manifest")
    model = build_from_manifest(meta["manifest"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise NetsiftError(f"{stem}.safetensors does not fit model {meta['manifest']['model']}: "
                           f"{str(e).splitlines()[0]}") from None
    return model, meta["manifest"]


def load_bundle(cfg: DataConfig, seed: int) -> DataBundle:
    """Load the data a :class:`DataConfig` names."""
    return load_data(cfg.data, cfg.data_dir, seed=seed, val_fraction=cfg.val_fraction, download=cfg.download,
                     train_subset=cfg.train_subset)


def build_for(model_cfg: ModelConfig, bundle: DataBundle, seed: int) -> nn.Module:
    """Build ``model_cfg``'s architecture for ``bundle`` with weights initialised from ``seed``."""
    torch.manual_seed(seed)
    model = build_model(model_cfg.model, bundle.in_channels, bundle.image_size, bundle.num_classes,
                        model_cfg.width, **({"pretrained": True} if model_cfg.pretrained else {}))
    check_input(model, bundle.input_shape)
    return model


def measure_model(model: nn.Module, bundle: DataBundle, batch_size: int = 512, with_latency: bool = False) -> dict:
    """Test and validation accuracy, density, parameter counts, MACs and the per-layer table.

    With ``with_latency``, also the median CPU latency at batch 1 and 64 (``latency_ms``).
    """
    device = next(model.parameters()).device
    test = evaluate(model, make_loader(bundle, "test", batch_size), device)
    val = evaluate(model, make_loader(bundle, "val", batch_size), device) if len(bundle.val) else {"acc": None}
    layers = layer_table(model)
    kept, total = sum(r["kept"] for r in layers), sum(r["total"] for r in layers)
    nonzero, params_total = count_params(model)
    return {"test_acc": test["acc"], "test_loss": test["loss"], "val_acc": val["acc"],
            "density": kept / total if total else 1.0, "params": nonzero, "params_total": params_total,
            "macs": count_macs(model, bundle.input_shape), "macs_sparse": sparse_macs(model, bundle.input_shape),
            "layers": [{"name": r["name"], "shape": r["shape"], "density": r["density"]} for r in layers],
            **({"latency_ms": cpu_latency(model, bundle.input_shape)} if with_latency else {})}


def cpu_latency(model: nn.Module, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 64),
                repeats: int = 20) -> dict:
    """Median CPU forward latency (ms) at each batch size, with the thread count used."""
    out = {}
    for bs in batch_sizes:
        r = latency(model, input_shape, batch_size=bs, repeats=repeats)
        out[f"batch{bs}"] = round(r["median_ms"], 4)
        out["threads"] = r["threads"]
    return out


def write_result(run_dir: Path, result: dict) -> dict:
    """Write ``result.json`` atomically after checking it has every contract field."""
    missing = [k for k in RESULT_FIELDS if k not in result]
    if missing:
        raise ValueError(f"result lacks fields {missing}")
    result = {**result, "netsift_version": __version__, "torch_version": torch.__version__,
              "machine": platform.machine(), "threads": torch.get_num_threads()}
    atomic_write_json(run_dir / "result.json", result)
    return result


def asdicts(**configs: Any) -> dict:
    """``{name: dataclasses.asdict(cfg)}`` for ``config.json``."""
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()}
