"""Recording and re-applying layer sizes, so a network whose channels were removed reloads as plain modules.

:func:`module_sizes` lists the sizes of every resizable layer (Conv2d, Linear, BatchNorm, LayerNorm, GroupNorm,
PReLU, LSTM/GRU/RNN: the attributes their ``forward`` reads) and the shape of every parameter or (persistent) buffer that belongs
to no such layer (a layer-scale γ, a class token, a position embedding, a per-channel gate);
:func:`apply_module_sizes` resizes a freshly built model to those sizes in place: each layer keeps its class
(subclasses such as ``LayerNorm2d`` included) with its attributes updated and empty tensors of the recorded
shapes, ready for ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import NetsiftError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_STANDARD = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_KNOWN = (nn.Conv2d, nn.Linear, *_BN, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.RNNBase)


def _kind(m: nn.Module) -> str | None:
    for cls in _KNOWN:
        if isinstance(m, cls):
            return "RNN" if cls is nn.RNNBase else cls.__name__
    return None


def module_sizes(model: nn.Module) -> dict[str, dict]:
    """Sizes of each resizable layer and shapes of the loose parameters and buffers, by name."""
    sizes: dict[str, dict] = {}
    owned: set[int] = set()
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        # the tensors its sizes describe; others it holds (a ScaledStdConv2d's gain) are recorded by shape below
        standard = set(m._flat_weights_names) if kind == "RNN" else _STANDARD
        owned.update(id(t) for k, t in {**m._parameters, **m._buffers}.items() if t is not None and k in standard)
        if kind == "Conv2d":
            sizes[name] = {"type": kind, "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif kind == "Linear":
            sizes[name] = {"type": kind, "in": m.in_features, "out": m.out_features}
        elif kind == "LayerNorm":
            sizes[name] = {"type": kind, "shape": list(m.normalized_shape)}
        elif kind == "GroupNorm":
            sizes[name] = {"type": kind, "out": m.num_channels, "groups": m.num_groups}
        elif kind == "PReLU":
            sizes[name] = {"type": kind, "out": m.num_parameters}
        elif kind == "RNN":  # LSTM, GRU, RNN: the sizes forward checks, and each weight's shape
            sizes[name] = {"type": kind, "in": m.input_size, "hidden": m.hidden_size, "proj": m.proj_size,
                           "tensors": {w: list(getattr(m, w).shape) for w in m._flat_weights_names}}
        else:
            sizes[name] = {"type": kind, "out": m.num_features}
    saved = set(model.state_dict())  # a non-persistent buffer is derived state its module recomputes: not recorded
    for what, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if id(t) not in owned and name not in sizes and name in saved:
                sizes[name] = {"type": what, "shape": list(t.shape)}
    return sizes


def _empty(old: torch.Tensor | None, shape) -> torch.Tensor | None:
    if old is None:
        return None
    shape = tuple(shape)
    if tuple(old.shape) == shape:
        return old
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    return nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new


def _set(module: nn.Module, attr: str, shape) -> None:
    old = getattr(module, attr, None)
    new = _empty(old, shape)
    if new is old:
        return
    if isinstance(old, nn.Parameter):
        module._parameters[attr] = new
    else:
        module._buffers[attr] = new


def _resize(m: nn.Module, s: dict) -> None:
    kind = s["type"]
    if kind == "Conv2d":
        m.in_channels, m.out_channels, m.groups = s["in"], s["out"], s["groups"]
        k = tuple(m.weight.shape[2:])
        _set(m, "weight", (s["in"], s["out"] // s["groups"], *k) if m.transposed
             else (s["out"], s["in"] // s["groups"], *k))
        _set(m, "bias", (s["out"],))
    elif kind == "Linear":
        m.in_features, m.out_features = s["in"], s["out"]
        _set(m, "weight", (s["out"], s["in"]))
        _set(m, "bias", (s["out"],))
    elif kind == "LayerNorm":
        m.normalized_shape = tuple(s["shape"])
        _set(m, "weight", s["shape"])
        _set(m, "bias", s["shape"])
    elif kind == "GroupNorm":
        m.num_channels, m.num_groups = s["out"], s["groups"]
        _set(m, "weight", (s["out"],))
        _set(m, "bias", (s["out"],))
    elif kind == "PReLU":
        m.num_parameters = s["out"]
        _set(m, "weight", (s["out"],))
    elif kind == "RNN":
        m.input_size, m.hidden_size, m.proj_size = s["in"], s["hidden"], s["proj"]
        for attr, shape in s["tensors"].items():
            _set(m, attr, shape)
        m._init_flat_weights()  # the list its forward hands to the fused kernel
    else:  # batch norm
        m.num_features = s["out"]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _set(m, attr, (s["out"],))


def apply_module_sizes(model: nn.Module, sizes: dict[str, dict]) -> nn.Module:
    """Resize ``model``'s layers and loose tensors in place to ``sizes`` (from :func:`module_sizes`); resized
    weights are left empty.

    Raises:
        NetsiftError: the manifest names a layer or tensor this architecture does not have.
    """
    modules = dict(model.named_modules())
    for name, s in sizes.items():
        kind = s.get("type")
        if kind in ("parameter", "buffer"):
            owner_name, _, attr = name.rpartition(".")
            owner = modules.get(owner_name)
            store = None if owner is None else (owner._parameters if kind == "parameter" else owner._buffers)
            if store is None or attr not in store:
                raise NetsiftError(f"manifest names {kind} {name!r} that this architecture does not have")
            _set(owner, attr, s["shape"])
            continue
        m = modules.get(name)
        if m is None or _kind(m) != kind:
            raise NetsiftError(f"manifest names layer {name!r} ({kind}) that this architecture does not have")
        _resize(m, s)
    return model
