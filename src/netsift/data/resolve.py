"""Whatever the user passes as ``data``, as a :class:`~.bundle.DataBundle`.

:func:`as_bundle` takes a bundle, a data-set name (see :mod:`.sources`), a :class:`~netsift.config.DataConfig`,
or a dict of ordinary ``DataLoader``\\ s or data sets ``{"train": ..., "val": ..., "test": ...}`` (``val``
optional: carved from train when absent).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import NetsiftError
from .bundle import SPLITS, DataBundle, check_image_size, split_train_val
from .loaders import TensorDataset, check_pair, check_values
from .sources import load_bundle, load_data


def as_bundle(data: Any, seed: int = 0, val_fraction: float = 0.1, image_size: int | None = None) -> DataBundle:
    """The :class:`DataBundle` for ``data``: a bundle, a data-set name, a ``DataConfig`` or a dict of splits.

    Args:
        data: see the module docstring.
        seed: seeds the train/validation split of a name (and of a dict without ``val``).
        val_fraction: share of the training set carved out for validation when a dict has no ``val``.
        image_size: resize the images to this side (px) as they are batched (built-in data sets and
            bundles of in-memory images; a ``DataConfig`` may carry it too, and must then agree).

    Raises:
        NetsiftError: unknown name, a dict without ``train``/``test``, splits that are not data sets or
            loaders, samples of different shapes across splits, or batches that are not ``(input, label)``.
    """
    if image_size is not None:
        check_image_size(image_size)
    if isinstance(data, DataBundle):
        return data.resized(image_size)
    if isinstance(data, str):
        return load_data(data, seed=seed, val_fraction=val_fraction, image_size=image_size)
    if isinstance(data, DataConfig):
        if image_size is not None and data.image_size not in (None, image_size):
            raise NetsiftError(f"image_size={image_size} conflicts with the DataConfig's image_size={data.image_size}")
        return load_bundle(dataclasses.replace(data, image_size=image_size or data.image_size), seed)
    if image_size is not None:
        raise NetsiftError("image_size resizes the built-in data sets; resize your own data in its transforms")
    if not isinstance(data, Mapping):
        raise NetsiftError(f"data must be a data-set name, a DataBundle or a dict of DataLoaders/datasets, got "
                           f"{type(data).__name__}")
    unknown = set(data) - set(SPLITS)
    if unknown:
        raise NetsiftError(f"data has unknown splits {sorted(unknown)}; use the keys train, val (optional), test")
    missing = [s for s in ("train", "test") if data.get(s) is None]
    if missing:
        raise NetsiftError(f"data lacks the {missing[0]!r} split")
    loaders, datasets, kwargs = {}, {}, {}
    for split, value in data.items():
        if value is None:
            continue
        if isinstance(value, torch.utils.data.DataLoader):
            if isinstance(value.dataset, torch.utils.data.IterableDataset):
                raise NetsiftError(f"the {split} loader reads an iterable data set; netsift needs a map-style one")
            loaders[split] = value
            datasets[split] = _fast(value.dataset, split)
            if split == "train":
                kwargs = {"collate_fn": value.collate_fn, "num_workers": value.num_workers}
        elif isinstance(value, torch.utils.data.Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
            datasets[split] = _fast(value, split)
        else:
            raise NetsiftError(f"data[{split!r}] must be a DataLoader or a map-style dataset, got {type(value).__name__}")
    if datasets.get("val") is None:
        if "train" in loaders and val_fraction > 0:
            loaders.pop("train")  # rebuilt below from the carved training set with the loader's settings
        datasets["train"], datasets["val"] = split_train_val(datasets["train"], val_fraction, seed)
    shapes = {}
    for split in SPLITS:
        if len(datasets[split]) == 0:
            if split == "val":
                continue
            raise NetsiftError(f"the {split} split is empty")
        batch = next(iter(loaders[split])) if split in loaders else datasets[split][0]
        x, _ = check_pair(batch, split) if split in loaders else _check_sample(batch, split)
        shapes[split] = tuple(x.shape[1:]) if split in loaders else tuple(x.shape)
    if len(set(shapes.values())) > 1:
        raise NetsiftError("the splits have samples of different shapes: " +
                           ", ".join(f"{k} {v}" for k, v in shapes.items()))
    return DataBundle("custom", datasets["train"], datasets["val"], datasets["test"], shapes["train"],
                      _num_classes(datasets["train"]), loaders=loaders, loader_kwargs=kwargs)


def classes_from_labels(bundle: DataBundle) -> int:
    """The number of classes of a data set that does not say (no ``classes``, ``labels`` or ``targets``): the
    largest label over every split, plus one. It reads every sample once."""
    from .. import progress

    top = -1
    with progress.stage("counting the classes from the labels (the data set does not say)"):
        for split in SPLITS:
            if bundle.size(split):
                for _, y in bundle.loader(split, 1024):
                    if len(y):
                        top = max(top, int(torch.as_tensor(y).max()))
    if top < 1:
        raise NetsiftError("the labels hold fewer than 2 classes")
    return top + 1


def _fast(dataset, split: str = "data"):
    """A ``torch.utils.data.TensorDataset`` of (inputs, labels) as netsift's in-memory data set (batched fast);
    its values are checked once here, where they enter (finite inputs, non-negative labels)."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        if not y.is_floating_point() and y.dim() == 1:
            check_values(x, y, f"the {split} data set")
            return TensorDataset(x, y, checked=True)
    return dataset


def _check_sample(sample, split: str) -> tuple[Tensor, Any]:
    if not isinstance(sample, (tuple, list)) or len(sample) != 2 or not isinstance(sample[0], Tensor):
        raise NetsiftError(f"the {split} data set must yield (input tensor, label) pairs, got a "
                           f"{type(sample).__name__}")
    label = sample[1]
    if isinstance(label, bool) or not isinstance(label, (numbers.Integral, Tensor)) or (
            isinstance(label, Tensor) and (label.numel() != 1 or label.is_floating_point() or label.is_complex())):
        raise NetsiftError(f"the {split} data set's labels must be integer class indices, got {type(label).__name__} "
                           f"{label!r:.40}")
    check_values(sample[0], torch.as_tensor(int(label)).reshape(1), f"the first sample of the {split} data set")
    return sample[0], sample[1]


def _num_classes(dataset) -> int | None:
    """Classes of a data set when it says (``classes``, ``labels`` or ``targets``), else ``None``."""
    for attr in ("classes", "labels", "targets"):
        value = getattr(dataset, attr, None)
        if attr == "classes" and value is not None:
            return len(value)
        if isinstance(value, Tensor) and value.numel():
            return int(value.max()) + 1
    return None
