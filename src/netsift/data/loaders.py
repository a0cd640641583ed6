"""Batches for the training loop: fast in-memory loaders, seeded loaders over any data set, and user loaders.

Every loader here has ``set_epoch(e)`` and yields ``(input, label)`` pairs; the order of epoch ``e`` depends
only on ``(seed, e)``, so a resumed run sees the same batches as an uninterrupted one, and with ``num_shards``
> 1 each process sees its own disjoint share of every epoch.

* :class:`TensorLoader` batches a :class:`TensorDataset` held in memory without per-item overhead (much faster
  on a CPU than a per-item ``DataLoader``), converting, augmenting and normalising per batch.
* :class:`DatasetLoader` wraps any map-style ``Dataset`` in a ``torch.utils.data.DataLoader`` with a seeded,
  shardable sampler (image folders, your own data sets).
* :class:`UserLoader` uses a ``DataLoader`` you built as it is (its batch size, sampler and workers), checking
  that it yields ``(input, label)`` pairs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import NetsiftError


class TensorDataset(torch.utils.data.Dataset):
    """Samples (uint8 images in [0, 255] or floats) and integer labels held in memory as two tensors."""

    def __init__(self, images: Tensor, labels: Tensor, checked: bool = False):
        if images.ndim < 2:
            raise NetsiftError(f"samples must have shape (N, ...), got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise NetsiftError(f"{len(images)} samples but {len(labels)} labels")
        if labels.is_floating_point() or labels.is_complex():
            raise NetsiftError("labels must be integer class indices, got floating-point labels")
        if not checked:  # where the data enters: one pass over it (subsets of checked data skip it)
            check_values(images, labels, "the data set")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, index: Tensor) -> "TensorDataset":
        """The samples at ``index``, sharing no storage with this data set."""
        return TensorDataset(self.images[index].clone(), self.labels[index].clone(), checked=True)


def check_values(x: Tensor, y: Tensor, where: str) -> None:
    """Refuse NaN or infinite inputs and negative labels (one line naming ``where``); a cheap pass over a batch.

    Labels above the model's outputs are refused where the logits are known (:func:`netsift.measure.check_labels`).
    """
    if (x.is_floating_point() or x.is_complex()) and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NetsiftError(f"{where} holds NaN or infinite inputs ({bad:,} value{'s' if bad > 1 else ''}); clean "
                           "the data first")
    if y.dtype != torch.bool and y.numel() and int(y.min()) < 0:
        raise NetsiftError(f"{where} holds a negative label ({int(y.min())}); labels must be class indices 0..C-1")


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int, num_shards: int = 1, shard_index: int = 0) -> Tensor:
    """Indices of one epoch: a permutation seeded by ``(seed, epoch)`` (or ``0..n-1``), this shard's share."""
    if not shuffle:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return order[shard_index::num_shards]


def augment_batch(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Random-crop (pad by 1/8 of the size, reflect) and, for ``crop-flip``, horizontal flips of a batch."""
    if kind in ("none", "imagenet") or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < h else "constant")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if kind == "crop-flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def resize_batch(x: Tensor, size: int) -> Tensor:
    """A float image batch (N, C, H, W) resized to ``size`` x ``size`` (bilinear; antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=shrink)


class TensorLoader:
    """Batches a :class:`TensorDataset` without per-item overhead.

    Images are converted to float (uint8 / 255), resized to ``size`` x ``size`` px when given (bilinear, one
    batch at a time: the data set stays at its own size in memory), optionally augmented, and normalised per
    batch with ``mean``/``std`` (per channel; ``None`` leaves them as they are).
    """

    def __init__(self, data: TensorDataset, batch_size: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, shuffle: bool = False, augment: str = "none", seed: int = 0,
                 drop_last: bool = False, num_shards: int = 1, shard_index: int = 0, size: int | None = None):
        if batch_size <= 0:
            raise NetsiftError(f"batch size must be positive, got {batch_size}")
        if size is not None and data.images.dim() != 4:
            raise NetsiftError(f"only images (N, C, H, W) can be resized, got samples of shape "
                               f"{tuple(data.images.shape[1:])}")
        self.data, self.batch_size, self.shuffle, self.augment, self.size = data, batch_size, shuffle, augment, size
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.num_shards, self.shard_index = num_shards, shard_index
        self.mean = self.std = None
        if mean is not None:
            c = data.images.shape[1]
            if len(mean) != c:
                raise NetsiftError(f"normalisation has {len(mean)} channels but the images have {c}")
            view = (1, -1) + (1,) * (data.images.dim() - 2)
            self.mean = torch.tensor(mean).view(view)
            self.std = torch.tensor(std).view(view)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order (and augmentation draws) of ``epoch``."""
        self.epoch = epoch

    def _order(self) -> Tensor:
        return epoch_order(len(self.data), self.shuffle, self.seed, self.epoch, self.num_shards, self.shard_index)

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        # augmentation draws of (seed, epoch), and of the shard when the epoch is split across processes
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1 + 104729 * self.shard_index)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self.transform(self.data.images[idx], gen if self.augment != "none" else None), self.data.labels[idx]

    def transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Convert raw samples to normalised float, augmenting when a generator is given."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.size is not None:
            x = resize_batch(x, self.size)
        if generator is not None:
            x = augment_batch(x, self.augment, generator)
        return x if self.mean is None else (x - self.mean) / self.std


class _EpochSampler(torch.utils.data.Sampler):
    """The indices of :func:`epoch_order` for the current epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int, num_shards: int, shard_index: int):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.num_shards, self.shard_index = num_shards, shard_index

    def __iter__(self):
        return iter(epoch_order(self.n, self.shuffle, self.seed, self.epoch, self.num_shards,
                                self.shard_index).tolist())

    def __len__(self) -> int:
        return len(range(self.shard_index, self.n, self.num_shards))


def check_pair(batch: Any, split: str, index: int | None = None) -> tuple[Tensor, Tensor]:
    """``batch`` as ``(input, label)`` tensors with finite inputs and integer, non-negative labels, or a one-line
    error saying what the loader yielded instead (``index``: the batch's position, for the message)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(t, Tensor) for t in batch):
        what = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise NetsiftError(f"the {split} loader must yield (input, label) tensor pairs, got a {what}")
    x, y = batch
    if y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
        raise NetsiftError(f"the {split} loader's labels must be a 1-D integer tensor of class indices, one per "
                           f"input; got {y.dtype} of shape {tuple(y.shape)} for {len(x)} inputs")
    check_values(x, y, f"batch {index + 1} of the {split} loader" if index is not None else f"the {split} loader")
    return x, y


class DatasetLoader:
    """A ``DataLoader`` over a map-style data set with a seeded, shardable order and ``set_epoch``."""

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 num_shards: int = 1, shard_index: int = 0, check: str | None = None, **loader_kwargs: Any):
        if batch_size <= 0:
            raise NetsiftError(f"batch size must be positive, got {batch_size}")
        self.sampler = _EpochSampler(len(dataset), shuffle, seed, num_shards, shard_index)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                                  drop_last=drop_last, **loader_kwargs)
        self.check = check

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        try:
            for i, batch in enumerate(self.loader):
                yield check_pair(batch, self.check, i) if self.check else batch
        except OSError as e:  # an unreadable or corrupt file of the data set (an image folder's JPEG, say)
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise NetsiftError(f"cannot read a sample of the data set ({e.strerror or e}){where}") from None


class UserLoader:
    """A ``DataLoader`` built by the user, used as it is; each batch is checked to be ``(input, label)``."""

    def __init__(self, loader, split: str):
        self.loader, self.split = loader, split

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the loader's sampler when it takes one (a ``DistributedSampler``, say)."""
        for sampler in (getattr(self.loader, "sampler", None),
                        getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise NetsiftError(f"the {self.split} loader has no length (an iterable data set?); give a map-style "
                               "data set or a DataLoader over one") from None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i, batch in enumerate(self.loader):
            yield check_pair(batch, self.split, i)


class BatchStream:
    """Returns the next batch of a loader at each call, epoch after epoch; its position can be saved and restored.

    :meth:`state` is ``{"epoch": e, "taken": n}`` (n batches of epoch e handed out); :meth:`restore` continues
    from such a state exactly (the skipped batches are drawn again and dropped), so an interrupted greedy
    selection resumes with the same minibatches.
    """

    def __init__(self, make_loader: Callable[[], Any]):
        self.loader = make_loader()
        self.epoch, self.taken, self._it = 0, 0, None

    def __call__(self) -> tuple[Tensor, Tensor]:
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.taken, self._it = self.epoch + 1, 0, None
                continue
            self.taken += 1
            return batch
        raise NetsiftError("the training split yields no batches")

    def _start(self, skip: int = 0) -> None:
        self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)
        for _ in range(skip):
            next(self._it)

    def state(self) -> dict:
        """Where the stream is: ``{"epoch": ..., "taken": ...}``."""
        return {"epoch": self.epoch, "taken": self.taken}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` of a stream over the same loader.

        Raises:
            NetsiftError: the state lies beyond the end of its epoch (it belongs to other data).
        """
        epoch, taken = int(state["epoch"]), int(state["taken"])
        if taken > len(self.loader):
            raise NetsiftError(f"saved position {taken} lies beyond the {len(self.loader)} batches of an epoch")
        self.epoch, self.taken = epoch, taken
        self._start(skip=taken)


def batch_stream(make_loader: Callable[[], Any]) -> BatchStream:
    """A function returning the next batch of ``make_loader()``'s loader at each call, epoch after epoch."""
    return BatchStream(make_loader)
