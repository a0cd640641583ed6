"""Any torchvision classification model, adapted to the data's channels and class count."""

from __future__ import annotations

from torch import nn

from ..errors import NetsiftError


def build_torchvision(name: str, in_channels: int, image_size: int, num_classes: int, width: float = 1.0,
                      pretrained: bool = False) -> nn.Module:
    """Build ``torchvision.models.<name>``: random init, or its published weights with ``pretrained=True``.

    With published weights the classifier is replaced when the class count differs, and the first
    convolution is replaced when the channel count differs (averaging the RGB filters for one channel).
    """
    import torchvision

    if width != 1.0:
        raise NetsiftError("torchvision models take no width multiplier; use width 1.0")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise NetsiftError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    if pretrained:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:  # offline machines fail in the downloader with various exception types
            raise NetsiftError(f"could not load published weights for {name}: {str(e).splitlines()[0]}") from None
        _replace_classifier(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    return model


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None or last.out_features == num_classes:
        return
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups if m.groups == 1 else in_channels, m.bias is not None)
            if in_channels == 1:
                new.weight.data.copy_(m.weight.data.mean(1, keepdim=True))
            parent = model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model
            setattr(parent, n.rsplit(".", 1)[-1], new)
            return
