"""The network a run works on: a module given by the user or an architecture built by name for the data, its
starting weights from a local file, and the checks that it fits the data.

The ``bundle`` arguments are data bundles (:class:`~netsift.data.DataBundle`): only their ``input_shape`` and
``num_classes`` are read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import memory, progress
from ..checks import check_finite_model
from ..errors import NetsiftError
from . import build_for, check_input, is_model_name, manifest_of, model_names


def check_weights(weights: Any, model: Any) -> Path | None:
    """``weights`` as an existing file path (``None`` passes), refused unless ``model`` is a zoo / tv name."""
    if weights is None:
        return None
    text = str(weights) if isinstance(weights, Path) else weights
    if not isinstance(text, str) or not text or len(text) > 4096 or "\0" in text:
        raise NetsiftError(f"--weights must be a file path, got {weights!r}")
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
    from .torchvision_models import load_weights_file

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    notes = load_weights_file(net, path)
    check_finite_model(net, f"weights file {path}")
    if progress.mode() != "off":
        for note in notes:
            progress.write(f"weights {path.name}: {note}")
    return {"file": path.name, "sha256": digest.hexdigest(), "adapted": notes}


def network_for(model: nn.Module | str, bundle: Any, seed: int, width: float = 1.0) -> nn.Module:
    """``model`` itself, or the zoo architecture it names built for ``bundle`` from ``seed``; checked on one input."""
    if isinstance(model, str):
        if not is_model_name(model):
            raise NetsiftError(f"unknown model {model!r}; choose from: {', '.join(model_names())}, tv:<name> or "
                               "timm:<name>")
        if bundle.num_classes is None:
            from ..data.resolve import classes_from_labels

            bundle.num_classes = classes_from_labels(bundle)  # the data set does not say: read from its labels
        memory.check_new_network(model, lambda: build_for(model, bundle.input_shape, bundle.num_classes, width, seed),
                                 bundle.input_shape)  # its size checked on the meta device before it is built
        return build_for(model, bundle.input_shape, bundle.num_classes, width, seed)
    if not isinstance(model, nn.Module):
        raise NetsiftError(f"model must be an nn.Module or a model name, got {type(model).__name__}")
    check_finite_model(model)  # a NaN weight or buffer is refused before any work
    check_input(model, bundle.input_shape)
    return model


def check_classes(model: nn.Module, bundle: Any) -> None:
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

