"""Recording and re-applying layer sizes, so a network whose channels were removed reloads as plain modules.

:func:`module_sizes` lists the constructor sizes of every Conv2d, Linear and BatchNorm layer (and the shapes of
parameters and buffers outside them);
:func:`apply_module_sizes` replaces the layers of a freshly built zoo model whose sizes differ with new,
empty layers of the recorded sizes, ready for ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import NetsiftError


def module_sizes(model: nn.Module) -> dict[str, dict]:
    """Constructor sizes of each Conv2d, Linear and BatchNorm1d/2d layer, by module name, and the shape of every
    parameter or buffer that belongs to none of them (``{"type": "parameter"|"buffer", "shape": [...]}``: a
    per-channel gate or layer scale, which Torch-Pruning prunes as an "unwrapped" parameter)."""
    sizes: dict[str, dict] = {}
    owned: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            sizes[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            sizes[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            sizes[name] = {"type": type(m).__name__, "out": m.num_features}
        else:
            continue
        owned.update(id(t) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if id(t) not in owned and name not in sizes:
                sizes[name] = {"type": kind, "shape": list(t.shape)}
    return sizes


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def apply_module_sizes(model: nn.Module, sizes: dict[str, dict]) -> nn.Module:
    """Resize ``model``'s layers in place to ``sizes`` (from :func:`module_sizes`); weights are left empty."""
    modules = dict(model.named_modules())
    for name, s in sizes.items():
        if s["type"] in ("parameter", "buffer"):
            _resize_tensor(modules, name, s["type"], s["shape"])
            continue
        m = modules.get(name)
        if m is None or type(m).__name__ != s["type"]:
            raise NetsiftError(f"manifest names layer {name!r} ({s['type']}) that this architecture does not have")
        if isinstance(m, nn.Conv2d):
            if (m.in_channels, m.out_channels, m.groups) == (s["in"], s["out"], s["groups"]):
                continue
            new = nn.Conv2d(s["in"], s["out"], m.kernel_size, m.stride, m.padding, m.dilation, s["groups"],
                            m.bias is not None, m.padding_mode)
        elif isinstance(m, nn.Linear):
            if (m.in_features, m.out_features) == (s["in"], s["out"]):
                continue
            new = nn.Linear(s["in"], s["out"], m.bias is not None)
        else:
            if m.num_features == s["out"]:
                continue
            new = type(m)(s["out"], m.eps, m.momentum, m.affine, m.track_running_stats)
        _replace(model, name, new)
    return model


def _resize_tensor(modules: dict[str, nn.Module], name: str, kind: str, shape: list[int]) -> None:
    """Give the parameter or buffer ``name`` an empty tensor of ``shape`` (unchanged if it has that shape)."""
    owner_name, _, attr = name.rpartition(".")
    owner = modules.get(owner_name)
    store = None if owner is None else (owner._parameters if kind == "parameter" else owner._buffers)
    if store is None or store.get(attr) is None:
        raise NetsiftError(f"manifest names {kind} {name!r} that this architecture does not have")
    old = store[attr]
    if list(old.shape) == list(shape):
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    store[attr] = nn.Parameter(new, requires_grad=old.requires_grad) if kind == "parameter" else new
