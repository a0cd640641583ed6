"""A network to evaluate or export, whatever form it comes in: a run folder, a compact file, the result a
pipeline returned, or a module; and the data to measure it on.

:func:`open_network` gives the network with what its source records (input shape, classes, the data it was made
on, the split seed, the test accuracy it recorded). A network of your own class is rebuilt into the instance you
pass (``model=MyNet()``): a run folder's weights are loaded into it, a compact file's subnetwork after its
structure hash is checked. :func:`eval_bundle` picks the data: yours (``DataLoader``\\ s or data sets, only a
``test`` split needed), a built-in data set by name, an image folder, or the data the source recorded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import rundir
from .errors import NetsiftError


@dataclass
class Saved:
    """A network and what its source says about it."""

    model: nn.Module
    arch: str
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    data: dict | None  # the data settings it was made on ({"data": "custom", ...} for your own data)
    seed: int
    saved_acc: float | None
    origin: str


def open_network(src: Any, model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None) -> Saved:
    """The network of ``src``: a run folder, a compact ``.nsc`` file, a :class:`~netsift.results.Result` or an
    ``nn.Module``.

    ``model``: a fresh instance of your own module, for a run folder or compact file made from it (its weights
    are loaded into it). ``input_shape``: the shape of one sample, where the source does not record it.

    Raises:
        NetsiftError: a missing or damaged source, a network of your own without ``model``, or a ``model`` of
            another structure.
    """
    from .results import Result

    if isinstance(src, Result):
        if src.model is None:
            raise NetsiftError("the result holds no network")
        shape = tuple(src.input_shape) if src.input_shape else input_shape
        return Saved(src.model, src.arch, shape, None, {"data": src.data} if src.data else None,
                     src.data_seed or 0, src.test_acc, f"the {src.command or 'returned'} result")
    if isinstance(src, nn.Module):
        return Saved(src, _arch(src), tuple(input_shape) if input_shape else _shape_of(src), None, None, 0, None,
                     type(src).__qualname__)
    if not isinstance(src, (str, Path)):
        raise NetsiftError(f"expected a run folder, a compact file, a result or an nn.Module, got {type(src).__name__}")
    path = Path(src)
    if not path.exists():
        raise NetsiftError(f"no such run folder or file: {path}")
    return _open_compact(path, model) if path.is_file() else _open_run(path, model)


def _arch(model: nn.Module) -> str:
    from .models import manifest_of

    manifest = manifest_of(model)
    return manifest["model"] if manifest else f"custom:{type(model).__qualname__}"


def _shape_of(model: nn.Module) -> tuple[int, ...] | None:
    from .models import manifest_of

    m = manifest_of(model)
    return (m["in_channels"], m["image_size"], m["image_size"]) if m and "in_channels" in m else None


def _open_compact(path: Path, model: nn.Module | None) -> Saved:
    from .masks.compact import read_compact, rebuild

    subnet = read_compact(path)
    net = rebuild(subnet, str(path), model)
    m, info = subnet.manifest, subnet.info
    shape = tuple(info["input_shape"]) if info.get("input_shape") else (
        (m["in_channels"], m["image_size"], m["image_size"]) if "in_channels" in m else None)
    data = info.get("data_config") or ({"data": info["data"]} if info.get("data") else None)
    return Saved(net, m["model"], shape, info.get("num_classes", m.get("num_classes")), data, info.get("seed", 0),
                 info.get("test_acc"), str(path))


def _open_run(path: Path, model: nn.Module | None) -> Saved:
    run = rundir.read_run(path)
    if not run.config:
        raise NetsiftError(f"{path} is not a run folder ({rundir.CONFIG} missing)")
    if model is not None:
        manifest = _manifest_for(model, path)
        net = rundir.load_weights(model, path)
    else:
        if str(_manifest_for(None, path).get("model", "")).startswith("custom:"):
            raise NetsiftError(f"{path} holds your own module ({_manifest_for(None, path)['model'][7:]}): pass a "
                               "fresh instance of it (Python: model=MyNet(); CLI: --module FILE.py:MyNet)")
        net, manifest = rundir.load_model(path)
    result = run.result if isinstance(run.result, dict) else {}
    data = run.config.get("data") if isinstance(run.config.get("data"), dict) else None
    shape = result.get("input_shape") or (data or {}).get("input_shape") or _shape_of(net)
    return Saved(net.eval(), manifest.get("model", _arch(net)), tuple(shape) if shape else None,
                 manifest.get("num_classes"), data, run.data_seed, run.test_acc, str(path))


def _manifest_for(net: nn.Module | None, path: Path) -> dict:
    """The manifest of run ``path``'s network; with ``net``, checked to be of the class the run saved."""
    from .checkpoint import read_json
    from .schema import MODEL_FILE

    if not (path / "model.json").is_file():
        raise NetsiftError(f"{path / 'model.json'} not found: {path} holds no saved network")
    manifest = read_json(path / "model.json", "model", MODEL_FILE)["manifest"]
    name = str(manifest.get("model", ""))
    if net is not None and name.startswith("custom:") and name[7:] != type(net).__qualname__:
        raise NetsiftError(f"{path} holds a {name[7:]}, not a {type(net).__qualname__}")
    return manifest


def eval_bundle(saved: Saved, data: Any = None, data_dir: str | None = None, image_size: int | None = None,
                images: str | Path | None = None, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None):
    """The data to measure ``saved`` on: ``data`` (a name, a ``DataConfig``, a bundle, or your ``DataLoader``\\ s /
    data sets: ``{"test": ...}`` is enough), an image folder ``images``, or the data set ``saved`` records.

    Raises:
        NetsiftError: no data given for a network made on your own data, or data whose samples do not fit.
    """
    from .config import DataConfig
    from .data import DataBundle, as_bundle, load_bundle
    from .data.sources import load_image_dir

    if images is not None:
        if data is not None:
            raise NetsiftError("give the data as a data set name or as an image folder, not both")
        if saved.input_shape is None:
            raise NetsiftError(f"{saved.origin} does not record its input shape; give input_shape")
        bundle = load_image_dir(images, saved.input_shape, mean, std)
    elif isinstance(data, Mapping) and "train" not in data and data.get("test") is not None:
        bundle = as_bundle({"train": data["test"], "test": data["test"], "val": data.get("val")}, val_fraction=0.0)
    elif data is not None and not isinstance(data, str):
        bundle = as_bundle(data, seed=saved.seed, image_size=image_size) if not isinstance(data, DataBundle) \
            else data.resized(image_size)
    else:
        recorded = saved.data or {}
        if data is None and recorded.get("data") in (None, "custom", "images"):
            raise NetsiftError(f"{saved.origin} was made on your own data: pass the data (Python: data={{'test': "
                               "loader}}; CLI: --data NAME or --images DIR)")
        values = {k: v for k, v in recorded.items() if k in rundir.DATA_KEYS} if recorded.get("data") != "custom" else {}
        given = {"data": data, "data_dir": data_dir, "image_size": image_size}
        try:
            cfg = DataConfig(**{**values, **{k: v for k, v in given.items() if v is not None}})
        except TypeError as e:
            raise NetsiftError(f"saved data settings are malformed: {e}") from None
        bundle = load_bundle(cfg, saved.seed)
    shape_ok = saved.input_shape is None or tuple(bundle.input_shape) == tuple(saved.input_shape)
    classes_ok = saved.num_classes is None or bundle.num_classes in (None, saved.num_classes)
    if not (shape_ok and classes_ok):
        raise NetsiftError(f"data {bundle.name} (samples {_shape(bundle.input_shape)}, {bundle.num_classes} classes) "
                           f"does not fit the saved model ({_shape(saved.input_shape)}, {saved.num_classes} classes)")
    return bundle


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "?"


def import_module_class(spec: str) -> nn.Module:
    """A fresh instance of your module named on the command line: ``FILE.py:Name`` or ``package.module:Name``
    (``Name`` is an ``nn.Module`` class, or a function returning one, called without arguments).

    Raises:
        NetsiftError: a malformed spec, a module that cannot be imported, or a name that gives no ``nn.Module``.
    """
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise NetsiftError(f"--module takes FILE.py:Name or package.module:Name, got {spec!r}")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise NetsiftError(f"--module: no such file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            sys.modules.setdefault(path.stem, module)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except NetsiftError:
        raise
    except Exception as e:  # the user's code may raise anything while importing
        raise NetsiftError(f"--module: cannot import {where}: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0]}") from None
    factory = getattr(module, name, None)
    if factory is None:
        raise NetsiftError(f"--module: {where} has no {name}")
    try:
        with torch.random.fork_rng(devices=[]):
            made = factory()
    except Exception as e:
        raise NetsiftError(f"--module: {name}() failed: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0]}") from None
    if not isinstance(made, nn.Module):
        raise NetsiftError(f"--module: {name}() gives a {type(made).__name__}, not an nn.Module")
    return made


# ------------------------------------------------------------------------------------------------ export


def write_dense(saved: Saved, fmt: str, out: Path) -> dict:
    """Write ``saved``'s network as safetensors (+ JSON manifest, :func:`netsift.save_model`) or ONNX."""
    from .checks import check_finite_model
    from .masks.compact import dense_bytes
    from .models import manifest_of

    check_finite_model(saved.model, f"the network in {saved.origin}")  # refused before anything is written

    if fmt == "safetensors":
        rundir.save_model(out.parent, saved.model, manifest_of(saved.model), name=out.with_suffix("").name)
        path = out.with_suffix(".safetensors")
    else:
        from .onnx_export import export_onnx

        if saved.input_shape is None:
            raise NetsiftError(f"{saved.origin} does not record its input shape: give input_shape=(C, H, W)")
        path = export_onnx(saved.model, tuple(saved.input_shape), out)
    return {"path": str(path), "bytes": path.stat().st_size, "dense_bytes": dense_bytes(saved.model)}


def export_source(src: Path, fmt: str, out: Path, model: nn.Module | None = None,
                  input_shape: tuple[int, ...] | None = None) -> dict:
    """Export run folder or compact file ``src`` as safetensors or ONNX (``model``: your module, for a network of
    your own; its safetensors export needs none: the saved tensors and manifest are copied)."""
    if fmt == "safetensors" and src.is_dir() and model is None and (src / "model.json").is_file() and \
            str(_manifest_for(None, src).get("model", "")).startswith("custom:"):
        from .checkpoint import load_checkpoint, save_checkpoint
        from .schema import MODEL_FILE

        tensors, meta = load_checkpoint(src / "model", "model", MODEL_FILE)
        save_checkpoint(out.with_suffix(""), tensors, {"manifest": meta["manifest"], "netsift": meta.get("netsift")})
        path = out.with_suffix(".safetensors")
        dense = sum(t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size() for t in tensors.values())
        return {"path": str(path), "bytes": path.stat().st_size, "dense_bytes": dense}
    return write_dense(open_network(src, model, input_shape), fmt, out)


def export_object(src: Any, fmt: str, out: Path, model: nn.Module | None = None,
                  input_shape: tuple[int, ...] | None = None) -> dict:
    """Export a network held in memory: a :class:`~netsift.results.Result` (``compact``: the subnetwork
    ``netsift.extract`` returned) or an ``nn.Module``."""
    from .masks.compact import write_compact, write_subnet
    from .results import Result

    if fmt != "compact":
        return write_dense(open_network(src, model, input_shape), fmt, out)
    if isinstance(src, Result) and src.compact is not None:
        return write_subnet(src.compact, out, model)
    if isinstance(src, Result) and src.run_dir and (Path(src.run_dir) / "subnet.json").is_file():
        return write_compact(src.run_dir, out, model)
    if isinstance(src, Result) and src.command == "extract":
        raise NetsiftError("this extract result has no compact subnetwork: its weights are not regenerated from a "
                           "seed (a weights file, init=None or train_weights); export it as safetensors or onnx")
    raise NetsiftError("compact export takes the result of netsift.extract (a mask over regenerated weights), "
                       "not a network's weights; export it as safetensors or onnx")
