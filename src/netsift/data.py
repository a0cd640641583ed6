"""Data sets, deterministic splits and fast in-memory loaders.

Every data set comes back as a :class:`DataBundle`: train / validation / test splits plus what a model needs
to adapt to it (channels, image size, class count). Small image data sets (digits, MNIST, Fashion-MNIST,
CIFAR) live in memory as tensors and are batched by :class:`TensorLoader`, which is much faster on a CPU
than a per-item ``DataLoader``. ImageNet-style image folders go through torchvision's ``ImageFolder``.

Files are read in formats that need no unpickling: IDX for (Fashion-)MNIST and the binary version of
CIFAR-10/100.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import NetsiftError, choose

DATA_ENV = "NETSIFT_DATA"
"""Environment variable naming the data root (default ``~/.cache/netsift/data``)."""

SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": [Path("/usr/share/datasets/mnist")]}


@dataclass
class DataBundle:
    """Train/validation/test splits of one data set and the facts a model needs to adapt to it."""

    name: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # kind of augmentation that suits the data: "crop", "crop-flip" or "none"
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(C, H, W)``."""
        return (self.in_channels, self.image_size, self.image_size)


class TensorDataset(torch.utils.data.Dataset):
    """Images (uint8 in [0, 255] or float in [0, 1]) and integer labels held in memory."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.ndim != 4:
            raise NetsiftError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise NetsiftError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, index: Tensor) -> "TensorDataset":
        """The samples at ``index``, sharing no storage with this data set."""
        return TensorDataset(self.images[index].clone(), self.labels[index].clone())


# ----------------------------------------------------------------------------------------------- file readers

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise NetsiftError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise NetsiftError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NetsiftError(f"{path} is truncated (header)")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise NetsiftError(f"{path} holds {len(raw) - header} data bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def read_cifar_binary(files: Sequence[Path], label_bytes: int, label_index: int) -> tuple[Tensor, Tensor]:
    """Read CIFAR binary batches: each record is ``label_bytes`` label bytes then 3×32×32 pixel bytes."""
    record = label_bytes + 3072
    images, labels = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size % record:
            raise NetsiftError(f"{f} is not a CIFAR binary batch (size {raw.size} is not a multiple of {record})")
        raw = raw.reshape(-1, record)
        labels.append(raw[:, label_index].astype(np.int64))
        images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


# ----------------------------------------------------------------------------------------------- locating files

def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$NETSIFT_DATA``, else ``~/.cache/netsift/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "netsift" / "data"


def _candidates(name: str, root: Path, torchvision_folder: str) -> list[Path]:
    return [root, root / name, root / torchvision_folder / "raw", *SYSTEM_DIRS.get(name, [])]


def _find_files(dirs: Sequence[Path], stems: Sequence[str]) -> list[Path] | None:
    for d in dirs:
        found = []
        for stem in stems:
            hit = next((d / (stem + ext) for ext in ("", ".gz") if (d / (stem + ext)).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        if len(found) == len(stems):
            return found
    return None


_MNIST_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_MNIST_URLS = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": ("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
}


def _load_mnist_like(name: str, root: Path, download: bool) -> tuple[TensorDataset, TensorDataset]:
    folder, url = _MNIST_URLS[name]
    dirs = _candidates(name, root, folder)
    files = _find_files(dirs, _MNIST_STEMS)
    if files is None and download:
        from torchvision.datasets.utils import download_url

        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            for stem in _MNIST_STEMS:
                download_url(url + stem + ".gz", str(target), filename=stem + ".gz")
        except Exception as e:  # network errors come in many types
            raise NetsiftError(f"could not download {name} from {url}: {e}") from None
        files = _find_files([target], _MNIST_STEMS)
    if files is None:
        hint = "apt-get install dataset-fashion-mnist, or " if name == "fashion-mnist" else ""
        raise NetsiftError(
            f"{name} not found: looked for {_MNIST_STEMS[0]}[.gz] in {', '.join(str(d) for d in dirs)}; "
            f"{hint}put the four IDX files there, or pass --download"
        )
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    if xtr.ndim != 3 or xte.ndim != 3 or xtr.shape[1:] != xte.shape[1:]:
        raise NetsiftError(f"{name}: image files have unexpected shapes {xtr.shape} and {xte.shape}")
    to = lambda x, y: TensorDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return to(xtr, ytr), to(xte, yte)


_CIFAR = {
    "cifar10": ("cifar-10-batches-bin", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0),
    "cifar100": ("cifar-100-binary", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                 ["train.bin"], ["test.bin"], 2, 1),
}


def _load_cifar(name: str, root: Path, download: bool) -> tuple[TensorDataset, TensorDataset]:
    folder, url, train_files, test_files, label_bytes, label_index = _CIFAR[name]
    dirs = [root / folder, root / name / folder, root / name]
    def locate():
        return next((d for d in dirs if all((d / f).is_file() for f in train_files + test_files)), None)
    found = locate()
    if found is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(url, str(root / name))
        except Exception as e:
            raise NetsiftError(f"could not download {name} from {url}: {e}") from None
        found = locate()
    if found is None:
        raise NetsiftError(
            f"{name} not found: looked for the binary version ({folder}/{train_files[0]}) in "
            f"{', '.join(str(d) for d in dirs)}; extract {url.rsplit('/', 1)[1]} there, or pass --download"
        )
    xtr, ytr = read_cifar_binary([found / f for f in train_files], label_bytes, label_index)
    xte, yte = read_cifar_binary([found / f for f in test_files], label_bytes, label_index)
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte)


def _load_digits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # fixed test set for every seed
    n_test = len(y) // 5
    full = TensorDataset(x, y)
    return full.subset(perm[n_test:]), full.subset(perm[:n_test])


def synthetic(n_train: int = 1024, n_test: int = 256, channels: int = 1, size: int = 16, classes: int = 10,
              seed: int = 1234) -> tuple[TensorDataset, TensorDataset]:
    """A learnable toy image task: each class is a fixed random template plus noise (for tests)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, channels, size, size, generator=g)

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, classes, (n,), generator=g)
        x = (0.7 * templates[y] + 0.3 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)
        return TensorDataset(x, y)

    return make(n_train), make(n_test)


# ----------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class DatasetInfo:
    """What netsift knows about a data set before loading it."""

    name: str
    description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", "scikit-learn's 8x8 digits, built in (1,797 images, 10 classes)", (0.3063,), (0.3933,), "crop"),
    "mnist": DatasetInfo("mnist", "MNIST 28x28 (IDX files)", (0.1307,), (0.3081,), "crop"),
    "fashion-mnist": DatasetInfo("fashion-mnist", "Fashion-MNIST 28x28 (IDX files; Debian: dataset-fashion-mnist)",
                                 (0.2860,), (0.3530,), "crop-flip"),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10 32x32 colour (binary version)", (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), "crop-flip"),
    "cifar100": DatasetInfo("cifar100", "CIFAR-100 32x32 colour, fine labels (binary version)",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop-flip"),
    "imagenet": DatasetInfo("imagenet", "an ImageNet-style folder: DIR/train/<class>/*, DIR/val/<class>/*",
                            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    "synthetic": DatasetInfo("synthetic", "random class templates plus noise, 1x16x16, 10 classes (for tests)",
                             (0.5,), (0.25,), "none"),
}


def split_train_val(train: TensorDataset, val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Split a training set deterministically from ``seed``; ``val_fraction`` of it becomes validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise NetsiftError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(train)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def load_data(name: str, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1,
              download: bool = False, train_subset: int | None = None) -> DataBundle:
    """Load a data set by name and split off a validation set.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: where to look for files (default: :func:`data_root`).
        seed: seeds the train/validation split.
        val_fraction: share of the training set held out for validation.
        download: allow torchvision's downloaders where files are missing.
        train_subset: keep only the first N training images after the split (a seed-dependent random subset).
    """
    choose(name, DATASETS, "data set")
    info = DATASETS[name]
    root = data_root(data_dir)
    if name == "imagenet":
        return _load_image_folder(root, info)
    if name == "digits":
        train, test = _load_digits()
    elif name == "synthetic":
        train, test = synthetic()
    elif name in _MNIST_URLS:
        train, test = _load_mnist_like(name, root, download)
    else:
        train, test = _load_cifar(name, root, download)
    train, val = split_train_val(train, val_fraction, seed)
    if train_subset is not None:
        if train_subset <= 0:
            raise NetsiftError(f"train_subset must be positive, got {train_subset}")
        train = train.subset(torch.arange(min(train_subset, len(train))))
    c, h, w = train.images.shape[1:]
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    return DataBundle(name, train, val, test, c, h, classes, info.mean, info.std, info.augment)


def _load_image_folder(root: Path, info: DatasetInfo) -> DataBundle:
    from torchvision import datasets, transforms

    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise NetsiftError(f"imagenet: expected image folders {train_dir} and {val_dir} (pass --data-dir DIR)")
    norm = transforms.Normalize(info.mean, info.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train = datasets.ImageFolder(str(train_dir), train_tf)
    val = datasets.ImageFolder(str(val_dir), eval_tf)
    # ImageNet's labelled validation set serves as the test set; model selection uses a slice of it too.
    return DataBundle("imagenet", train, val, val, 3, 224, len(train.classes), info.mean, info.std, "imagenet",
                      extra={"normalized": True})


# ----------------------------------------------------------------------------------------------- loading batches

def augment_batch(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Random-crop (pad by 1/8 of the size, reflect) and, for ``crop-flip``, horizontal flips of a batch."""
    if kind in ("none", "imagenet"):
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


class TensorLoader:
    """Batches a :class:`TensorDataset` without per-item overhead.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same batches as an
    uninterrupted one. Images are converted to float, optionally augmented, and normalised per batch.
    """

    def __init__(self, data: TensorDataset, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = False, augment: str = "none", seed: int = 0, drop_last: bool = False,
                 num_shards: int = 1, shard_index: int = 0):
        if batch_size <= 0:
            raise NetsiftError(f"batch size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.num_shards, self.shard_index = num_shards, shard_index
        c = data.images.shape[1]
        if len(mean) != c:
            raise NetsiftError(f"normalisation has {len(mean)} channels but the images have {c}")
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order (and augmentation draws) of ``epoch``."""
        self.epoch = epoch

    def _order(self) -> Tensor:
        n = len(self.data)
        if not self.shuffle:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        return order[self.shard_index::self.num_shards]

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self.transform(self.data.images[idx], gen if self.augment != "none" else None), self.data.labels[idx]

    def transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Convert raw images to normalised float, augmenting when a generator is given."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if generator is not None:
            x = augment_batch(x, self.augment, generator)
        return (x - self.mean) / self.std


def make_loader(bundle: DataBundle, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, drop_last: bool = False, num_shards: int = 1, shard_index: int = 0,
                workers: int = 0):
    """A loader over one split (``train``, ``val`` or ``test``) of ``bundle``."""
    dataset = getattr(bundle, choose(split, ("train", "val", "test"), "split"))
    if isinstance(dataset, TensorDataset):
        return TensorLoader(dataset, batch_size, bundle.mean, bundle.std, shuffle=shuffle,
                            augment=bundle.augment if augment else "none", seed=seed, drop_last=drop_last,
                            num_shards=num_shards, shard_index=shard_index)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                       num_workers=workers, generator=g)


def sample_batches(bundle: DataBundle, batch_size: int, seed: int, split: str = "train") -> Callable[[], tuple[Tensor, Tensor]]:
    """A function returning a fresh random minibatch of ``split`` at each call (for greedy selection steps)."""
    loader = make_loader(bundle, split, batch_size, shuffle=True, seed=seed, drop_last=len(getattr(bundle, split)) >= batch_size)
    state = {"epoch": 0, "it": None}

    def next_batch():
        while True:
            if state["it"] is None:
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(state["epoch"])
                state["it"] = iter(loader)
            try:
                return next(state["it"])
            except StopIteration:
                state["epoch"] += 1
                state["it"] = None

    return next_batch
