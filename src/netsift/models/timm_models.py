"""timm's classification models as ``timm:<name>`` (an optional extra: ``pip install 'netsift[timm]'``).

:func:`build_timm` builds ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`` with random
weights (the weights never come from the Hugging Face hub: start from a local file with ``--weights FILE``,
loaded by :func:`netsift.models.torchvision_models.load_weights_file`). Models with a patch embedding are
built for the image size (``img_size``); the others take any size their strides allow.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import NetsiftError

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise NetsiftError("timm:<name> models need the timm package: pip install 'netsift[timm]'") from None
    return timm


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def build_timm(name: str, in_channels: int, image_size: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build timm's ``name`` with random weights for ``in_channels`` x ``image_size`` px inputs and
    ``num_classes`` outputs.

    Raises:
        NetsiftError: timm is not installed, an unknown name, a width multiplier, or a model timm cannot build
            for these inputs (one line).
    """
    timm = _timm()
    if width != 1.0:
        raise NetsiftError("timm models take no width multiplier; use width 1.0")
    if not timm.is_model(name):
        raise NetsiftError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                return timm.create_model(name, img_size=image_size, **kwargs)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
                return timm.create_model(name, **kwargs)  # no patch embedding: any size its strides allow
        except NetsiftError:
            raise
        except Exception as e:  # timm raises many exception types for inputs a model cannot take
            raise NetsiftError(f"timm:{name} cannot be built for {in_channels}x{image_size}x{image_size} inputs and "
                               f"{num_classes} classes: {_first_line(e)}") from None


def timm_version() -> str | None:
    """The installed timm's version, ``None`` without timm."""
    try:
        import timm
    except ImportError:
        return None
    return timm.__version__
