"""What every pipeline does first: turn ``data`` and ``model`` into a bundle and a network, and check them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data import DataBundle, as_bundle
from ..data.bundle import classes_from_labels
from ..errors import NetsiftError
from ..models import build_for, check_input, is_model_name, manifest_of, model_names

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63), or a one-line error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NetsiftError(f"{what} must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_width(width: Any) -> float:
    """``width`` as a float in (0, 64], or a one-line error."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 64:
        raise NetsiftError(f"width must be a number in (0, 64], got {width!r}")
    return float(width)


def bundle_for(data: Any, data_seed: int, val_fraction: float = 0.1, image_size: int | None = None) -> DataBundle:
    """The data as a :class:`DataBundle` (see :func:`netsift.data.as_bundle`), resized to ``image_size`` px."""
    return as_bundle(data, seed=data_seed, val_fraction=val_fraction, image_size=image_size)


def image_side(bundle: DataBundle) -> int | None:
    """Side (px) of the square images the network is fed, ``None`` for other inputs."""
    shape = bundle.input_shape
    return int(shape[-1]) if len(shape) == 3 and shape[1] == shape[2] else None


def check_weights(weights: Any, model: Any) -> Path | None:
    """``weights`` as an existing file path (``None`` passes), refused unless ``model`` is a zoo / tv name."""
    if weights is None:
        return None
    from ..config import check_weights_path

    check_weights_path(str(weights) if isinstance(weights, Path) else weights)
    if not is_model_name(model):
        raise NetsiftError("weights apply to a network built by name (a zoo name, tv:<name> or timm:<name>); load "
                           "your own module's state dict yourself")
    path = Path(weights)
    if not path.is_file():
        raise NetsiftError(f"weights file {path} does not exist" if not path.exists() else
                           f"weights file {path} is not a file")
    return path


def load_weights(net: nn.Module, path: Path) -> dict:
    """Load the state dict in ``path`` into ``net``; the record ``config.json`` keeps of it (name, SHA-256,
    adaptations made). The adaptations are also reported on stderr (with progress on)."""
    import hashlib

    from .. import progress
    from ..models.torchvision_models import load_weights_file

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    notes = load_weights_file(net, path)
    if progress.mode() != "off":
        for note in notes:
            progress.write(f"weights {path.name}: {note}")
    return {"file": path.name, "sha256": digest.hexdigest(), "adapted": notes}


def data_config(bundle: DataBundle) -> dict:
    """What ``config.json`` records about the data: how to load it again, or a description of user data."""
    if bundle.config is not None:
        return dict(bundle.config)
    return {"data": bundle.name, "train": bundle.size("train"), "val": bundle.size("val"),
            "test": bundle.size("test"), "input_shape": list(bundle.input_shape)}


def network_for(model: nn.Module | str, bundle: DataBundle, seed: int, width: float = 1.0) -> nn.Module:
    """``model`` itself, or the zoo architecture it names built for ``bundle`` from ``seed``; checked on one input."""
    if isinstance(model, str):
        if not is_model_name(model):
            raise NetsiftError(f"unknown model {model!r}; choose from: {', '.join(model_names())}, tv:<name> or "
                               "timm:<name>")
        if bundle.num_classes is None:
            bundle.num_classes = classes_from_labels(bundle)  # the data set does not say: read from its labels
        return build_for(model, bundle.input_shape, bundle.num_classes, width, seed)
    if not isinstance(model, nn.Module):
        raise NetsiftError(f"model must be an nn.Module or a model name, got {type(model).__name__}")
    check_input(model, bundle.input_shape)
    return model


def check_classes(model: nn.Module, bundle: DataBundle) -> None:
    """Refuse a network whose output width does not fit the data's classes (one line naming both)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(iter(model.parameters()), None)
            out = model(torch.zeros(1, *bundle.input_shape, device=p.device if p is not None else "cpu"))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise NetsiftError(f"the model must return (batch, classes) logits, got {type(out).__name__} "
                           f"{tuple(getattr(out, 'shape', ()))}")
    if bundle.num_classes is not None and out.shape[1] < bundle.num_classes:
        raise NetsiftError(f"the model has {out.shape[1]} outputs but the data has {bundle.num_classes} classes")


def arch_of(model: nn.Module) -> tuple[str, float | None]:
    """(architecture name, width) of a network for ``result.json``."""
    manifest = manifest_of(model)
    if manifest:
        return manifest["model"], manifest.get("width")
    return f"custom:{type(model).__qualname__}", None


def split_options(options: dict[str, Any], *groups: set[str]) -> list[dict[str, Any]]:
    """Split keyword options into one dict per group of names; an unknown name is a one-line error."""
    out = [{} for _ in groups]
    for k, v in options.items():
        for names, bucket in zip(groups, out):
            if k in names:
                bucket[k] = v
                break
        else:
            raise NetsiftError(f"unknown option {k!r}")
    return out


def is_run_folder(path: Any) -> bool:
    """Whether ``path`` names a run folder holding a saved network."""
    return isinstance(path, (str, Path)) and Path(path).is_dir() and (Path(path) / "model.json").is_file()
