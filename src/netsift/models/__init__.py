"""The model zoo: a registry of architectures that adapt to a data set's channels, image size and classes.

``build_model("conv4", in_channels=1, image_size=28, num_classes=10, width=0.5)`` builds a network; any
torchvision classification model is available as ``tv:<name>``, and any timm model as ``timm:<name>`` (with
the optional ``timm`` package). Register a new architecture with
:func:`register`. The built-in architectures are declared in :data:`ZOO` (name, module, description) and
their modules load on first use, so that importing this package (``netsift models``, ``--help``) needs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import NetsiftError
from ..schema import MANIFEST, MAX_PARAMS_ENV, max_params, validate

if TYPE_CHECKING:
    import torch
    from torch import nn

Builder = Callable[..., "nn.Module"]

ZOO: dict[str, tuple[str, str]] = {
    "lenet300": ("mlp", "LeNet-300-100: fully connected 300-100 with ReLU"),
    "conv2": ("convnets", "Conv-2: 64-64 3x3 convs, FC 256-256"),
    "conv4": ("convnets", "Conv-4: 64-64-128-128 3x3 convs, FC 256-256"),
    "conv6": ("convnets", "Conv-6: 64-64-128-128-256-256 3x3 convs, FC 256-256"),
    "conv8": ("convnets", "Conv-8: 64-64-128-128-256-256-512-512 3x3 convs, FC 256-256"),
    "vgg11": ("convnets", "VGG11 with batch norm, CIFAR style"),
    "vgg16": ("convnets", "VGG16 with batch norm, CIFAR style"),
    "resnet20": ("resnet", "ResNet-20, CIFAR style (16/32/64 channels, 1x1-conv shortcuts)"),
    "resnet56": ("resnet", "ResNet-56, CIFAR style (16/32/64 channels, 1x1-conv shortcuts)"),
    "mobilenetv2": ("mobilenet", "MobileNetV2, CIFAR style (stride 1 stem)"),
}
"""The built-in architectures: name -> (module of ``netsift.models`` that registers its builder, description)."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: its builder and a one-line description."""

    name: str
    builder: Builder
    description: str


_REGISTRY: dict[str, ModelInfo] = {}
_loaded = False


def _load_zoo() -> dict[str, ModelInfo]:
    """The registry, with every built-in architecture's module imported (they register themselves)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in dict.fromkeys(m for m, _ in ZOO.values()):
            importlib.import_module(f".{module}", __name__)
    return _REGISTRY


def __getattr__(name: str):
    if name == "REGISTRY":  # every registered architecture (the zoo loads on first access)
        return _load_zoo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str, description: str | None = None) -> Callable[[Builder], Builder]:
    """Decorator adding ``builder(in_channels, image_size, num_classes, width, **kw)`` to the zoo.

    ``description`` may be left out for a name declared in :data:`ZOO`.
    """
    if description is None:
        if name not in ZOO:
            raise ValueError(f"register({name!r}): give a description (only the ZOO's names have one)")
        description = ZOO[name][1]

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = ModelInfo(name, builder, description)
        return builder

    return wrap


EXTERNAL = ("tv:", "timm:")
"""Prefixes of the architectures built by other libraries: torchvision (``tv:``) and timm (``timm:``)."""


def is_model_name(name: object) -> bool:
    """Whether ``name`` names an architecture :func:`build_model` builds (zoo, ``tv:`` or ``timm:``)."""
    return isinstance(name, str) and (name.startswith(EXTERNAL) or name in _load_zoo())


def model_names() -> list[str]:
    """Names accepted by :func:`build_model` (``tv:<name>`` and ``timm:<name>`` are accepted too)."""
    return sorted(_load_zoo())


def zoo_descriptions() -> dict[str, str]:
    """Name -> description of the built-in and registered architectures, without importing torch when nothing
    else is registered."""
    out = {name: desc for name, (_, desc) in ZOO.items()}
    out.update({name: info.description for name, info in _REGISTRY.items()})
    return dict(sorted(out.items()))


def build_model(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                width: float = 1.0, **kwargs) -> nn.Module:
    """Build an architecture from the zoo, adapted to the input and class count.

    Raises:
        NetsiftError: unknown name, a non-positive width, or an input the architecture cannot take.
    """
    if width <= 0:
        raise NetsiftError(f"width multiplier must be positive, got {width}")
    if in_channels <= 0 or image_size <= 0 or num_classes <= 1:
        raise NetsiftError(f"impossible input: {in_channels} channels, {image_size}px images, {num_classes} classes")
    if name.startswith("tv:"):
        from .torchvision_models import build_torchvision

        return build_torchvision(name[3:], in_channels, image_size, num_classes, width=width, **kwargs)
    if name.startswith("timm:"):
        from .timm_models import build_timm

        if kwargs.pop("pretrained", False):
            raise NetsiftError("timm models are never downloaded: start from a local file with --weights FILE")
        return build_timm(name[5:], in_channels, image_size, num_classes, width=width, **kwargs)
    registry = _load_zoo()
    if name not in registry:
        raise NetsiftError(f"unknown model {name!r}; choose from: {', '.join(model_names())}, tv:<torchvision name> "
                           "or timm:<timm name>")
    return registry[name].builder(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                                  width=width, **kwargs)


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv2d layers of ``model``, in registration order, with their names."""
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def dtype_problem(model: nn.Module, dtype: torch.dtype) -> str | None:
    """Why ``model`` cannot take inputs of ``dtype`` (its floating-point weights are of another dtype), or ``None``."""
    have = sorted({str(t.dtype).removeprefix("torch.") for t in [*model.parameters(), *model.buffers()]
                   if t.is_floating_point()})
    want = str(dtype).removeprefix("torch.")
    if have and have != [want]:
        return (f"the model's weights are {' and '.join(have)} but its inputs are {want}: give them one dtype "
                f"(e.g. model.float())")
    return None


def check_input(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
    """Run one sample of ``shape`` (float32 unless ``dtype``) through ``model``; raise a one-line error if it
    cannot take it, saying so when the problem is the dtype, not the shape."""
    import torch

    dtype = dtype or torch.float32
    problem = dtype_problem(model, dtype)
    if problem:
        raise NetsiftError(problem)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=_device(model), dtype=dtype))
    except Exception as e:  # shape errors surface as RuntimeError, AssertionError, ValueError, IndexError, ...
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NetsiftError(f"model cannot take inputs of shape {tuple(shape)}: {why}") from None
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    import torch

    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


MANIFEST_ATTR = "netsift_manifest"
"""Attribute under which a zoo-built network carries its manifest (what rebuilds its architecture)."""


def model_manifest(name: str, width: float, input_shape: tuple[int, ...], num_classes: int, **extra) -> dict:
    """What :func:`build_from_manifest` needs to rebuild a zoo architecture."""
    return {"model": name, "width": width, "in_channels": int(input_shape[0]), "image_size": int(input_shape[-1]),
            "num_classes": int(num_classes), **extra}


def manifest_of(model: nn.Module) -> dict | None:
    """The manifest a zoo-built (or loaded) network carries, ``None`` for any other module."""
    return getattr(model, MANIFEST_ATTR, None)


def build_for(name: str, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, seed: int = 0,
              **kwargs) -> nn.Module:
    """Build zoo architecture ``name`` for inputs of ``input_shape`` with weights initialised from ``seed``.

    The network carries its manifest (:func:`manifest_of`), so run folders can rebuild it. The global RNG
    is left as it was.

    Raises:
        NetsiftError: unknown name, bad width, or an input the architecture cannot take.
    """
    import torch

    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise NetsiftError(f"zoo models take square images (C, H, H), got input shape {tuple(input_shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, input_shape[0], input_shape[1], num_classes, width, **kwargs)
    check_input(model, input_shape)
    setattr(model, MANIFEST_ATTR, model_manifest(name, width, input_shape, num_classes))
    return model


def build_from_manifest(manifest: dict) -> nn.Module:
    """Rebuild an architecture from a manifest written by :func:`model_manifest`.

    A manifest may carry ``"modules"``: per-module constructor sizes that differ from the zoo's (a network
    whose channels were removed). Those modules are rebuilt at the recorded sizes, so a pruned network loads
    with plain PyTorch modules and no pruning code. The network carries the manifest (:func:`manifest_of`).
    """
    from ..surgery import apply_module_sizes

    check_manifest(manifest)  # types, required keys, sizes and the parameter count, before anything is built
    try:
        model = build_model(manifest["model"], manifest["in_channels"], manifest["image_size"],
                            manifest["num_classes"], manifest.get("width", 1.0), **manifest.get("kwargs", {}))
    except TypeError as e:
        raise NetsiftError(f"model manifest of {manifest['model']} has arguments its builder does not take: "
                           f"{str(e).splitlines()[0]}") from None
    if manifest.get("modules"):
        apply_module_sizes(model, manifest["modules"])
    setattr(model, MANIFEST_ATTR, dict(manifest))
    return model


def check_manifest(manifest: Any, what: str = "model manifest") -> dict:
    """Validate a manifest and bound the size of the network it describes, before anything real is built.

    The network is first built on PyTorch's ``meta`` device (no memory) to count its parameters and buffers.

    Raises:
        NetsiftError: a malformed manifest, or a network larger than :func:`max_params` elements.
    """
    validate(manifest, MANIFEST, what)
    if str(manifest["model"]).startswith("custom:"):
        return manifest
    n = _meta_numel(manifest)
    if n is not None and n > max_params():
        raise NetsiftError(f"{what} describes a network of {n:,} parameters and buffers, more than the "
                           f"{max_params():,} allowed (set ${MAX_PARAMS_ENV} to raise the bound)")
    return manifest


def network_numel(manifest: dict) -> int | None:
    """Parameters + buffers of a (validated) manifest's network, ``None`` when they cannot be counted."""
    if str(manifest.get("model", "")).startswith("custom:"):
        return None
    return _meta_numel(manifest)


def _meta_numel(manifest: dict) -> int | None:
    """Parameters + buffers of the manifest's network, counted on the meta device (``None``: cannot tell)."""
    import torch

    from ..surgery import apply_module_sizes

    def numel(model) -> int:
        return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())

    try:
        with torch.device("meta"):
            model = build_model(manifest["model"], manifest["in_channels"], manifest["image_size"],
                                manifest["num_classes"], manifest.get("width", 1.0), **manifest.get("kwargs", {}))
            built = numel(model)  # the network is built at the zoo's sizes first, then resized
            if manifest.get("modules"):
                apply_module_sizes(model, manifest["modules"])
    except NetsiftError:
        raise
    except TypeError as e:
        raise NetsiftError(f"model manifest of {manifest['model']} has arguments its builder does not take: "
                           f"{str(e).splitlines()[0]}") from None
    except (ValueError, KeyError) as e:
        raise NetsiftError(f"model manifest of {manifest['model']} cannot be built: {str(e).splitlines()[0]}") from None
    except (RuntimeError, NotImplementedError, AttributeError):
        return None  # a builder that cannot run on the meta device: the bounds above still hold
    return max(built, numel(model))
