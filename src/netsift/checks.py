"""Checks of what the Python API is handed: types and shapes of the arguments, and finite model tensors.

The pipelines (``netsift.train``, ``extract``, ``prune``, ``evaluate``, ``export``) take plain Python values; a
wrong type or shape anywhere in them, nested configs and dicts included, is a one-line
:class:`~netsift.errors.NetsiftError` naming the argument, raised before any work, never a ``TypeError`` from
deep inside. :func:`checked` is the one decorator that applies :data:`ARGUMENTS` to a pipeline's arguments by
name (a config given as a dict of its fields is turned into the config). :func:`check_finite_model` refuses a
network holding a NaN or infinite parameter or buffer, naming the tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from typing import Any, Callable

from torch import nn

from .errors import NetsiftError
from .results import Result


def _type_name(value: Any) -> str:
    return type(value).__name__


def as_config(value: Any, cls: type, name: str) -> Any:
    """``value`` as a ``cls`` config: ``None`` and ``cls`` instances pass; a dict of its fields is turned into
    one (its values checked by the config itself); anything else, or an unknown field, is a one-line error."""
    if value is None or isinstance(value, cls):
        return value
    fields = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(value, dict):
        raise NetsiftError(f"{name} must be a {cls.__name__} or a dict of its fields, got {_type_name(value)}")
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise NetsiftError(f"{name} has no field {unknown[0]!r}; {cls.__name__} fields: {', '.join(fields)}")
    return cls(**value)


def check_flag(value: Any, name: str, optional: bool = False) -> Any:
    """``value`` if it is ``True`` or ``False`` (or ``None`` when ``optional``), else a one-line error."""
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise NetsiftError(f"{name} must be True or False{' or None' if optional else ''}, got {_type_name(value)} "
                       f"{_short(value)}")


def check_path(value: Any, name: str, optional: bool = True) -> Any:
    """``value`` if it is a path (a non-empty ``str`` or ``os.PathLike``), or ``None`` when ``optional``."""
    if value is None and optional:
        return value
    if isinstance(value, os.PathLike):
        value_text = os.fspath(value)
    elif isinstance(value, str):
        value_text = value
    else:
        raise NetsiftError(f"{name} must be a path, got {_type_name(value)} {_short(value)}")
    if isinstance(value_text, bytes) or not value_text.strip() or "\0" in value_text or len(value_text) > 4096:
        raise NetsiftError(f"{name} must name a file or folder, got {_short(value_text)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _out(value: Any, name: str) -> Any:
    return value if value is None or isinstance(value, bool) else check_path(value, name, optional=False)


def _threads(value: Any, name: str) -> Any:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetsiftError(f"{name} must be an integer number of threads or None, got {_type_name(value)} "
                           f"{_short(value)}")
    from .measure import check_threads

    return check_threads(value, name)


def _image_size(value: Any, name: str) -> Any:
    if value is None:
        return value
    from .data.bundle import check_image_size

    return check_image_size(value)


def _tensor(value: Any, name: str) -> Any:
    import torch

    if value is None:
        return value
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        raise NetsiftError(f"{name} must be a batch tensor (N, ...) or None, got {_type_name(value)} "
                           f"{tuple(getattr(value, 'shape', ()))}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise NetsiftError(f"{name} holds NaN or infinite values")
    return value


def _layers(value: Any, name: str) -> Any:
    from torch import nn

    if value is None:
        return value
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, (nn.Module, str)) for v in value):
        raise NetsiftError(f"{name} must be a list of layers (modules or their names), got {_short(value)}")
    return value


def _layer_density(value: Any, name: str) -> Any:
    from torch import nn

    if value is None:
        return value
    if not isinstance(value, dict):
        raise NetsiftError(f"{name} must be a dict {{layer: kept fraction}}, got {_type_name(value)}")
    for k, v in value.items():
        if not isinstance(k, (nn.Module, str)):
            raise NetsiftError(f"{name} keys must be layers (modules or their names), got {_short(k)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 < v <= 1):
            raise NetsiftError(f"{name}[{_short(k)}] must be a kept fraction in (0, 1], got {_short(v)}")
    return value


def _source_measure(value: Any, name: str) -> Any:
    if value is None:
        return value
    if not isinstance(value, dict):
        raise NetsiftError(f"{name} must be the dict returned by netsift.measure.measure, got {_type_name(value)}")
    for key, lo, hi in (("test_acc", 0, 1), ("macs", 0, math.inf), ("params", 0, math.inf)):
        v = value.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and lo <= v <= hi):
            raise NetsiftError(f"{name}[{key!r}] must be a finite number in [{lo}, {hi}], got {_short(v)}")
    return value


def _str(value: Any, name: str, optional: bool = True) -> Any:
    if (value is None and optional) or (isinstance(value, str) and len(value) <= 1000):
        return value
    raise NetsiftError(f"{name} must be a string{' or None' if optional else ''}, got {_type_name(value)} "
                       f"{_short(value)}")


def _trackers(value: Any, name: str) -> Any:
    if value is None or isinstance(value, str) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        return value
    raise NetsiftError(f"{name} must be a tracker name or a list of them, got {_type_name(value)} {_short(value)}")


def _module(value: Any, name: str) -> Any:
    from torch import nn

    if not isinstance(value, nn.Module):
        raise NetsiftError(f"{name} must be an nn.Module, got {_type_name(value)} {_short(value)}")
    return value


def _int(lo: int, hi: int, optional: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        if optional and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise NetsiftError(f"{name} must be an integer in [{lo:,}, {hi:,}], got {_short(value)}")
        return value
    return check


def _number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
            (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
        if not ok:
            raise NetsiftError(f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                               f"{')' if hi_open else ']'}, got {_short(value)}")
        return float(value)
    return check


def _manifest(value: Any, name: str) -> Any:
    if value is not None and not isinstance(value, dict):
        raise NetsiftError(f"{name} must be a model manifest (a dict) or None, got {_type_name(value)}")
    return value


def _train_config(value: Any, name: str) -> Any:
    from .config import TrainConfig

    return as_config(value, TrainConfig, name)



def _source(value: Any, name: str) -> Any:
    """A saved network's source: a path (run folder, compact file), a returned :class:`Result` or a module."""
    if isinstance(value, (Result, nn.Module)):
        return value
    try:
        return check_path(value, name, optional=False)
    except NetsiftError:
        raise NetsiftError(f"{name} must be a run folder, a compact file, a returned result or an nn.Module, got "
                           f"{_type_name(value)} {_short(value)}") from None

ARGUMENTS: dict[str, Callable[[Any, str], Any]] = {
    "config": _train_config,
    "finetune": _train_config,
    "overwrite": check_flag,
    "resume": check_flag,
    "force": check_flag,
    "progress": lambda v, n: check_flag(v, n, optional=True),
    "out": _out,
    "weights": check_path,
    "src": lambda v, n: _source(v, n),
    "path": lambda v, n: check_path(v, n, optional=False),
    "data_dir": check_path,
    "latency_threads": _threads,
    "image_size": _image_size,
    "example_input": _tensor,
    "ignored_layers": _layers,
    "layer_density": _layer_density,
    "source_measure": _source_measure,
    "method": lambda v, n: _str(v, n, optional=False),
    "fmt": lambda v, n: _str(v, n, optional=False),
    "init": _str,
    "log_with": _trackers,
    # the helpers netsift exports (build_model, load_data, load_model, load_weights, save_model)
    "module": _module,
    "run_dir": lambda v, n: check_path(v, n, optional=False),
    "name": lambda v, n: _str(v, n, optional=False) if v != "" else _str(0, n, optional=False),
    "in_channels": _int(1, 4096),
    "num_classes": _int(2, 10**6),
    "width": _number(0, 64, lo_open=True),
    "seed": _int(0, 2**63 - 1),
    "val_fraction": _number(0, 1, hi_open=True),
    "download": check_flag,
    "train_subset": _int(1, 10**9, optional=True),
    "manifest": _manifest,
}
"""Argument name -> check (returns the value to use). Names a pipeline does not have are simply not used."""

BY_FUNCTION: dict[tuple[str, str], Callable[[Any, str], Any]] = {
    ("save_model", "model"): _module,
    ("evaluate", "path"): _source,
    ("build_model", "image_size"): lambda v, n: _image_size(_int(1, 1024)(v, n), n),
}
"""(function, argument) -> check, where an argument means something else than in :data:`ARGUMENTS`."""


def _check(fn: Callable, name: str, value: Any) -> Any:
    check = BY_FUNCTION.get((fn.__name__, name)) or ARGUMENTS.get(name)
    return value if check is None else check(value, name)


def checked(fn: Callable) -> Callable:
    """Decorator of the pipelines: every argument named in :data:`ARGUMENTS` is checked (configs given as dicts
    become configs) before the pipeline runs."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .env import check_all

        check_all()  # every NETSIFT_* variable, before any work
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise NetsiftError(f"{fn.__name__}(): {e}") from None
        for name, value in list(bound.arguments.items()):
            if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:  # keyword options: checked by name too
                bound.arguments[name] = {k: _check(fn, k, v) for k, v in value.items()}
            else:
                bound.arguments[name] = _check(fn, name, value)
        return fn(*bound.args, **bound.kwargs)

    return wrapper


def check_finite_model(model: Any, what: str = "the model") -> None:
    """Refuse a network whose parameters or floating-point buffers hold NaN or infinite values (one line naming
    the first such tensor), before any work is done with it."""
    import torch
    from torch.nn.parameter import is_lazy

    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if is_lazy(t):  # a lazy module's parameter: no values yet
                continue
            if t.is_floating_point() and t.numel() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise NetsiftError(f"{what} has NaN or infinite values in {kind} {name} ({bad:,} of {t.numel():,}); "
                                   "nothing was done with it")
