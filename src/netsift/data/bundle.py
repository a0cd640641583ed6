"""A data set as every pipeline sees it: train / validation / test splits and the facts a model needs.

:func:`as_bundle` turns whatever the user passes as ``data`` into a :class:`DataBundle`: a bundle, a data-set
name (see :mod:`.sources`), a :class:`~netsift.config.DataConfig`, or a dict of ordinary ``DataLoader``\\ s or
data sets ``{"train": ..., "val": ..., "test": ...}`` (``val`` optional: carved from train when absent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import NetsiftError, choose
from .loaders import DatasetLoader, TensorDataset, TensorLoader, UserLoader, batch_stream, check_pair

SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    """Train/validation/test splits of one data set and the facts a model needs to adapt to it.

    Attributes:
        name: the data set's name (``"custom"`` for your own data).
        train, val, test: map-style data sets (:class:`~.loaders.TensorDataset` for the built-in ones).
        input_shape: shape of one input sample, e.g. ``(C, H, W)``.
        num_classes: number of classes (``None`` when unknown: the model's output width is used).
        mean, std: per-channel normalisation applied to in-memory images (``None``: samples used as they are).
        augment: the augmentation that suits the data: ``"crop"``, ``"crop-flip"``, ``"imagenet"`` or ``"none"``.
        loaders: ``DataLoader``\\ s given by the user, by split, used as they are (their batch size wins).
        config: how to load the data again (a ``DataConfig`` as a dict), ``None`` for user data.
        resize: side (px) the in-memory images are resized to, batch by batch (``None``: their own size).
    """

    name: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    num_classes: int | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str = "none"
    loaders: dict[str, Any] = field(default_factory=dict)
    config: dict | None = None
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None

    @property
    def in_channels(self) -> int:
        """Channels of an image input (the first dimension of :attr:`input_shape`)."""
        return self.input_shape[0]

    @property
    def image_size(self) -> int:
        """Side of a square image input (the last dimension of :attr:`input_shape`)."""
        return self.input_shape[-1]

    def size(self, split: str) -> int:
        """Number of samples in ``split``."""
        data = getattr(self, choose(split, SPLITS, "split"))
        return 0 if data is None else len(data)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0,
               drop_last: bool = False, num_shards: int = 1, shard_index: int = 0):
        """A loader over one split with ``set_epoch``; the user's own ``DataLoader`` when one was given."""
        choose(split, SPLITS, "split")
        if split in self.loaders and num_shards == 1:
            return UserLoader(self.loaders[split], split)
        dataset = getattr(self, split)
        if isinstance(dataset, TensorDataset):
            return TensorLoader(dataset, batch_size, self.mean, self.std, shuffle=shuffle,
                                augment=self.augment if augment else "none", seed=seed, drop_last=drop_last,
                                num_shards=num_shards, shard_index=shard_index, size=self.resize)
        return DatasetLoader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                             num_shards=num_shards, shard_index=shard_index,
                             check=split if self.name == "custom" else None, **self.loader_kwargs)

    def resized(self, size: int | None) -> "DataBundle":
        """This bundle with its images resized to ``size`` x ``size`` px as they are batched (``None``: as it is).

        Raises:
            NetsiftError: a size outside [1, 1024], or data other than netsift's in-memory images.
        """
        if size is None:
            return self
        size = check_image_size(size)
        splits = [getattr(self, s) for s in SPLITS if getattr(self, s) is not None and len(getattr(self, s))]
        if self.loaders or not all(isinstance(d, TensorDataset) and d.images.dim() == 4 for d in splits):
            raise NetsiftError("image_size resizes netsift's in-memory image data sets; resize your own data in its "
                               "transforms")
        config = {**self.config, "image_size": size} if self.config is not None else None
        return dataclasses.replace(self, input_shape=(self.input_shape[0], size, size), config=config, resize=size)

    def batches(self, split: str, batch_size: int, seed: int):
        """A function returning a fresh shuffled minibatch of ``split`` at each call (greedy selection steps)."""
        drop = self.size(split) >= batch_size
        return batch_stream(lambda: self.loader(split, batch_size, shuffle=True, seed=seed, drop_last=drop))

    def subset(self, split: str, index: Tensor) -> "DataBundle":
        """A bundle whose ``split`` keeps only the samples at ``index`` (the other splits are shared)."""
        data = getattr(self, split)
        part = data.subset(index) if hasattr(data, "subset") else torch.utils.data.Subset(data, index.tolist())
        loaders = {k: v for k, v in self.loaders.items() if k != split}
        return dataclasses.replace(self, **{split: part}, loaders=loaders)

    def tensors(self, split: str, limit: int | None = None, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
        """The first ``limit`` samples of ``split`` (all by default) as one normalised input and label tensor."""
        xs, ys, n = [], [], 0
        for x, y in self.loader(split, batch_size):
            xs.append(x)
            ys.append(y)
            n += len(y)
            if limit is not None and n >= limit:
                break
        if not xs:
            return torch.zeros(0, *self.input_shape), torch.zeros(0, dtype=torch.long)
        return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def check_image_size(size: Any) -> int:
    """``size`` as an image side in [1, 1024] px, or a one-line error."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1024:
        raise NetsiftError(f"image_size must be an integer from 1 to 1024 (px), got {size!r}")
    return size


def split_train_val(train, val_fraction: float, seed: int):
    """Split a training set deterministically from ``seed``; ``val_fraction`` of it becomes validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise NetsiftError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(train)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if hasattr(train, "subset"):
        return train.subset(perm[n_val:]), train.subset(perm[:n_val])
    return (torch.utils.data.Subset(train, perm[n_val:].tolist()),
            torch.utils.data.Subset(train, perm[:n_val].tolist()))


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
    from ..config import DataConfig
    from .sources import load_bundle, load_data

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
            datasets[split] = _fast(value.dataset)
            if split == "train":
                kwargs = {"collate_fn": value.collate_fn, "num_workers": value.num_workers}
        elif isinstance(value, torch.utils.data.Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
            datasets[split] = _fast(value)
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


def _fast(dataset):
    """A ``torch.utils.data.TensorDataset`` of (inputs, labels) as netsift's in-memory data set (batched fast)."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        if not y.is_floating_point() and y.dim() == 1:
            return TensorDataset(x, y)
    return dataset


def _check_sample(sample, split: str) -> tuple[Tensor, Any]:
    if not isinstance(sample, (tuple, list)) or len(sample) != 2 or not isinstance(sample[0], Tensor):
        raise NetsiftError(f"the {split} data set must yield (input tensor, label) pairs, got a "
                           f"{type(sample).__name__}")
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
