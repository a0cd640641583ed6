"""Any torchvision classification model, adapted to the data's channels, image size and class count.

``build_torchvision`` checks the image size before building (one line naming the smallest size the model
takes), builds ViT and MaxViT for that size, replaces the stem for inputs that are not RGB, drops the auxiliary
heads of GoogLeNet and Inception-V3 (so training returns plain logits) and makes three architectures loadable
and traceable: MNASNet accepts a state dict without version metadata (a safetensors file), ShuffleNet-V2's
channel shuffle is a module (traced as one operation), and the attention and window-partition modules of Swin
and MaxViT are opaque to the channel tracer (it knows them by name: :data:`netsift.selection.tracing.KNOWN_OPAQUE`).
:func:`load_weights_file` loads a local state dict (safetensors, or a ``.pth`` read with ``weights_only``).
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import NetsiftError

# smallest square input (px) by name prefix, measured on torchvision 0.2x; the rest take any size >= 1 px
MIN_SIZE = {"alexnet": 63, "convnext": 32, "densenet": 29, "googlenet": 15, "inception_v3": 75,
            "squeezenet1_0": 21, "squeezenet1_1": 17, "vgg": 32, "swin": 4}


def _size_problem(name: str, image_size: int) -> str | None:
    """Why torchvision's ``name`` cannot take ``image_size`` px images, or ``None``."""
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        if image_size % patch:
            near = patch * max(1, round(image_size / patch))
            return f"takes image sizes that are multiples of its {patch} px patch (e.g. {near})"
        return None
    if name.startswith("maxvit"):
        k = max(1, math.ceil(image_size / 224))
        if not 224 * k - 3 <= image_size <= 224 * k:
            return f"takes image sizes that are multiples of 224 px (its windows are 7 x 7 after 32x downsampling)"
        return None
    for prefix, least in MIN_SIZE.items():
        if name.startswith(prefix) and image_size < least:
            return f"needs images of at least {least} px"
    return None


def build_torchvision(name: str, in_channels: int, image_size: int, num_classes: int, width: float = 1.0,
                      pretrained: bool = False) -> nn.Module:
    """Build ``torchvision.models.<name>``: random init, or its published weights with ``pretrained=True``.

    The classifier is sized for ``num_classes`` and the first convolution for ``in_channels``; published
    weights are adapted to both (the classifier re-initialised, the RGB filters averaged for grey input).

    Raises:
        NetsiftError: unknown name, a width multiplier, an image size the model cannot take, or published
            weights that cannot be loaded (offline).
    """
    import torchvision

    if width != 1.0:
        raise NetsiftError("torchvision models take no width multiplier; use width 1.0")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise NetsiftError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    problem = _size_problem(name, image_size)
    if problem:
        raise NetsiftError(f"tv:{name} cannot take inputs of {image_size} px: it {problem}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_arch_kwargs(name, image_size))
    _adapt_architecture(model, in_channels)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    if pretrained:
        try:
            state = torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False)
        except Exception as e:  # offline machines fail in the downloader with various exception types
            raise NetsiftError(f"could not load published weights for {name}: {str(e).splitlines()[0]}") from None
        load_state(model, state, f"published weights of {name}")
    return model


def _arch_kwargs(name: str, image_size: int) -> dict:
    if name.startswith("vit_"):
        return {"image_size": image_size}
    if name.startswith("maxvit"):
        return {"input_size": (image_size, image_size)}
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("shufflenet"):
        return {"inverted_residual": _shuffle_block()}
    return {}


def _adapt_architecture(model: nn.Module, in_channels: int) -> None:
    import torchvision

    if isinstance(model, torchvision.models.MNASNet):
        model.__class__ = _mnasnet_class()
    if hasattr(model, "transform_input") and in_channels != 3:
        model.transform_input = False  # ImageNet RGB statistics; meaningless for other channel counts


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups if m.groups == 1 else in_channels, m.bias is not None)
            with torch.no_grad():
                new.weight.copy_(_adapt_channels(m.weight, in_channels))
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            parent = model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model
            setattr(parent, n.rsplit(".", 1)[-1], new)
            return


def _adapt_channels(w: Tensor, channels: int) -> Tensor:
    """Stem filters for ``channels`` inputs from filters for ``w.shape[1]``: the mean filter, repeated and
    scaled so a grey image repeated on every channel gives the same response."""
    return (w.sum(1, keepdim=True) / channels).repeat(1, channels, *(1,) * (w.dim() - 2))


# ------------------------------------------------------------------------------------------ architecture fixes

_CLASSES: dict[str, type] = {}


def _mnasnet_class() -> type:
    """MNASNet that loads a state dict without version metadata (safetensors keeps none) as its own layout."""
    if "mnasnet" not in _CLASSES:
        import torchvision

        class MNASNet(torchvision.models.MNASNet):
            def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
                local_metadata = {"version": self._version, **local_metadata}
                super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

        MNASNet.__module__ = __name__
        MNASNet.__qualname__ = "MNASNet"
        _CLASSES["mnasnet"] = MNASNet
    return _CLASSES["mnasnet"]


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle as a module (the tracer keeps it whole: the streams it mixes keep their
    widths; the channels inside each branch are pruned)."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.models.shufflenetv2 import channel_shuffle

        return channel_shuffle(x, self.groups)


def _shuffle_block() -> type:
    if "shuffle" not in _CLASSES:
        from torchvision.models.shufflenetv2 import InvertedResidual

        class ShuffleBlock(InvertedResidual):
            """torchvision's ShuffleNet-V2 block with the shuffle as a :class:`ChannelShuffle` module."""

            def __init__(self, inp: int, oup: int, stride: int):
                super().__init__(inp, oup, stride)
                self.shuffle = ChannelShuffle(2)

            def forward(self, x: Tensor) -> Tensor:
                if self.stride == 1:
                    x1, x2 = x.chunk(2, dim=1)
                    out = torch.cat((x1, self.branch2(x2)), dim=1)
                else:
                    out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
                return self.shuffle(out)

        ShuffleBlock.__module__ = __name__
        _CLASSES["shuffle"] = ShuffleBlock
    return _CLASSES["shuffle"]


# --------------------------------------------------------------------------------------------- weights files


def load_weights_file(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local state dict file into ``model``, adapting it where the architecture was adapted.

    ``path`` is a ``.safetensors`` file or a file written by ``torch.save`` (read with ``weights_only=True``:
    tensors and plain containers only, never arbitrary objects). A state dict nested under ``"state_dict"``
    or ``"model"`` and a ``"module."`` prefix (DataParallel) are accepted. Where the class count differs the
    classifier keeps its fresh initialisation; where the input channel count differs the stem's filters are
    averaged over the file's channels; a ViT position embedding is interpolated to the model's image size.
    Returns one line per adaptation made.

    Raises:
        NetsiftError: the file is missing, unreadable, not a state dict, or does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise NetsiftError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:
            raise NetsiftError(f"weights file {path} is not a readable safetensors file: "
                               f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    else:
        try:
            with warnings.catch_warnings():  # torch's notes on the pickle protocol would break the one-line error
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):  # not a refused object: bad bytes
                raise NetsiftError(f"weights file {path} cannot be read: it is not a file written by torch.save "
                                   "or a safetensors file") from None
            raise NetsiftError(f"weights file {path} holds Python objects other than tensors; refusing to "
                               "unpickle it (save model.state_dict() instead)") from None
        except Exception as e:
            raise NetsiftError(f"weights file {path} cannot be read: "
                               f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return load_state(model, state, f"weights file {path}")


def _as_state_dict(obj, origin: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise NetsiftError(f"{origin} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state(model: nn.Module, state, origin: str = "state dict") -> list[str]:
    """Load ``state`` (a state dict) into ``model`` with the adaptations of :func:`load_weights_file`."""
    state = _as_state_dict(state, origin)
    own = model.state_dict()
    notes: list[str] = []
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    # the classifier: the last Linear, or the last convolution where there is none (SqueezeNet)
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] or convs
    stem = f"{convs[0]}." if convs else None
    head = f"{heads[-1]}." if heads else None
    # tensors of parts this model switched off (auxiliary heads set to None) are ignored
    extra = [k for k in state if k not in own and getattr(model, k.split(".", 1)[0], 0) is not None]
    missing = [k for k in own if k not in state]
    if extra or missing:
        what = f"lacks {_few(missing)}" if missing else f"has tensors the model does not: {_few(extra)}"
        raise NetsiftError(f"{origin} does not fit {type(model).__name__}: it {what}")
    fixed = {}
    for key, want in own.items():
        got = state[key]
        if got.shape == want.shape:
            fixed[key] = got
        elif head and key.startswith(head) and key.count(".") == head.count(".") and got.shape[1:] == want.shape[1:]:
            fixed[key] = want
            if key.endswith("weight"):
                notes.append(f"{heads[-1]}: classifier re-initialised ({got.shape[0]} -> {want.shape[0]} classes)")
        elif stem and key == stem + "weight" and got.dim() == 4 and got.shape[0] == want.shape[0] \
                and got.shape[2:] == want.shape[2:]:
            fixed[key] = _adapt_channels(got.float(), want.shape[1]).to(got.dtype)
            notes.append(f"{convs[0]}: {got.shape[1]}-channel filters averaged for {want.shape[1]} channels")
        elif key in ("encoder.pos_embedding", "pos_embed") and got.dim() == 3 and got.shape[2] == want.shape[2]:
            fixed[key] = _interpolate_positions(got, want.shape[1])
            notes.append(f"{key}: position embedding interpolated ({got.shape[1]} -> {want.shape[1]} tokens)")
        else:
            raise NetsiftError(f"{origin} does not fit {type(model).__name__}: {key} has shape "
                               f"{tuple(got.shape)} there, {tuple(want.shape)} in the model")
    try:
        model.load_state_dict(fixed)
    except Exception as e:
        raise NetsiftError(f"{origin} does not fit {type(model).__name__}: "
                           f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    return notes


def _interpolate_positions(pos: Tensor, tokens: int) -> Tensor:
    """A ViT position embedding (1, 1 + g², D) resized to ``tokens`` = 1 + h² (bicubic over the grid)."""
    old, new = int(math.isqrt(pos.shape[1] - 1)), int(math.isqrt(tokens - 1))
    if old * old != pos.shape[1] - 1 or new * new != tokens - 1:
        raise NetsiftError(f"position embedding of {pos.shape[1]} tokens is not a class token plus a square grid")
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=True)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], 1)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")

