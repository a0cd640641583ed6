"""A data set as every pipeline sees it: train / validation / test splits and the facts a model needs.

:func:`~.resolve.as_bundle` turns whatever the user passes as ``data`` into a :class:`DataBundle`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import NetsiftError, choose
from .loaders import DatasetLoader, TensorDataset, TensorLoader, UserLoader, batch_stream

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

    def holdout(self, n: int) -> tuple["DataBundle", tuple[Tensor, Tensor]]:
        """The last ``n`` training images held out as tensors (at most half), and a bundle of the rest."""
        size = self.size("train")
        n = min(n, size // 2)
        return self.subset("train", torch.arange(size - n)), self.subset("train", torch.arange(size - n, size)
                                                                          ).tensors("train")

    def record(self) -> dict:
        """What a run folder records about the data: how to load it again, or a description of user data."""
        if self.config is not None:
            return dict(self.config)
        return {"data": self.name, "train": self.size("train"), "val": self.size("val"), "test": self.size("test"),
                "input_shape": list(self.input_shape)}

    @property
    def side(self) -> int | None:
        """Side (px) of the square images the network is fed, ``None`` for other inputs."""
        shape = self.input_shape
        return int(shape[-1]) if len(shape) == 3 and shape[1] == shape[2] else None

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
