"""Resolve a :class:`~.spec.Source` into what a run starts from: the data as a bundle and the network, checked.

The network may be the user's module, a zoo architecture built for the data from the seed, or (prune) the
network saved in a run folder, read with the run's own data and split (:func:`netsift.rundir.read_run`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import progress, rundir
from ..data import DataBundle, as_bundle
from ..errors import NetsiftError
from ..models import REGISTRY, build_for, check_input, manifest_of
from .spec import RunOptions, Source


@dataclass
class Start:
    """What a run starts from: the data, the network, the seeds and where they came from."""

    bundle: DataBundle
    net: nn.Module
    seed: int
    data_seed: int
    weights: dict | None = None  # the record of a --weights file (name, SHA-256, adaptations)
    source_dir: str | None = None  # the run folder the network was read from


def resolve(source: Source, opts: RunOptions, runs: bool = False) -> Start:
    """The bundle and the network of ``source``, with its ``--weights`` file loaded (``runs``: a run folder may
    hold the network)."""
    saved = _saved_run(source, runs)
    data, model = source.data, source.model
    if saved is not None:
        data = saved.data_for(source.data, source.image_size)
        model = saved.network()
    data_seed = opts.data_seed if opts.data_seed is not None else saved.data_seed if saved else opts.seed
    weights_path = check_weights(source.weights, model)
    bundle = as_bundle(data, seed=data_seed, image_size=source.image_size)
    if saved is not None:
        saved.check_fits(bundle)
    net = network_for(model, bundle, opts.seed, source.width)
    loaded = load_weights(net, weights_path) if weights_path else None
    return Start(bundle, net, opts.seed, data_seed, loaded, str(saved.path) if saved else None)


def _saved_run(source: Source, runs: bool) -> rundir.SavedRun | None:
    model = source.model
    if not runs or not isinstance(model, (str, Path)):
        return None
    if not rundir.is_run_folder(model):
        if "/" in str(model) or Path(model).exists():
            if not Path(model).exists():
                raise NetsiftError(f"checkpoint {model} does not exist")
            raise NetsiftError(f"{model} is not a run folder with a saved network (model.json missing)")
        if source.data is None:
            raise NetsiftError("give the data to prune on")
        return None
    return rundir.read_run(model)


def check_weights(weights: Any, model: Any) -> Path | None:
    """``weights`` as an existing file path (``None`` passes), refused unless ``model`` is a zoo / tv name."""
    if weights is None:
        return None
    from ..config import check_weights_path

    check_weights_path(str(weights) if isinstance(weights, Path) else weights)
    if not isinstance(model, str) or not (model.startswith("tv:") or model in REGISTRY):
        raise NetsiftError("weights apply to a network built by name (a zoo name or tv:<name>); load your own "
                           "module's state dict yourself")
    path = Path(weights)
    if not path.is_file():
        raise NetsiftError(f"weights file {path} does not exist" if not path.exists() else
                           f"weights file {path} is not a file")
    return path


def load_weights(net: nn.Module, path: Path) -> dict:
    """Load the state dict in ``path`` into ``net``; the record ``config.json`` keeps of it (name, SHA-256,
    adaptations made). The adaptations are also reported on stderr (with progress on)."""
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


def network_for(model: nn.Module | str, bundle: DataBundle, seed: int, width: float = 1.0) -> nn.Module:
    """``model`` itself, or the zoo architecture it names built for ``bundle`` from ``seed``; checked on one input."""
    if isinstance(model, str):
        if not model.startswith("tv:") and model not in REGISTRY:
            raise NetsiftError(f"unknown model {model!r}; choose from: {', '.join(sorted(REGISTRY))}, or tv:<name>")
        if bundle.num_classes is None:
            raise NetsiftError("the data does not say how many classes it has; build the model yourself")
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


def data_config(bundle: DataBundle) -> dict:
    """What ``config.json`` records about the data: how to load it again, or a description of user data."""
    if bundle.config is not None:
        return dict(bundle.config)
    return {"data": bundle.name, "train": bundle.size("train"), "val": bundle.size("val"),
            "test": bundle.size("test"), "input_shape": list(bundle.input_shape)}


def image_side(bundle: DataBundle) -> int | None:
    """Side (px) of the square images the network is fed, ``None`` for other inputs."""
    shape = bundle.input_shape
    return int(shape[-1]) if len(shape) == 3 and shape[1] == shape[2] else None


def arch_of(model: nn.Module) -> tuple[str, float | None]:
    """(architecture name, width) of a network for ``result.json``."""
    manifest = manifest_of(model)
    if manifest:
        return manifest["model"], manifest.get("width")
    return f"custom:{type(model).__qualname__}", None
