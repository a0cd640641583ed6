"""The built-in data sets: where their files are looked for, how they are read, and how they are split.

Small image data sets (digits, MNIST, Fashion-MNIST, CIFAR) are loaded into memory as uint8 tensors;
ImageNet-style image folders go through torchvision's ``ImageFolder``. :func:`load_data` returns a
:class:`~.bundle.DataBundle` with a validation split carved deterministically from the training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import NetsiftError, choose
from .bundle import DataBundle, split_train_val
from .formats import read_cifar_binary, read_idx
from .loaders import TensorDataset

DATA_ENV = "NETSIFT_DATA"
"""Environment variable naming the data root (default ``~/.cache/netsift/data``)."""

SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": [Path("/usr/share/datasets/mnist")]}


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
    if xtr.ndim != 3 or xte.ndim != 3 or xtr.shape[1:] != xte.shape[1:] or min(xtr.shape[1:], default=0) < 1:
        raise NetsiftError(f"{name}: image files have unexpected shapes {xtr.shape} and {xte.shape}")
    for images, labels, f_img, f_lab in ((xtr, ytr, files[0], files[1]), (xte, yte, files[2], files[3])):
        if images.dtype != np.uint8:
            raise NetsiftError(f"{f_img} holds {images.dtype} values, not the 8-bit pixels of an image file")
        if labels.ndim != 1 or len(labels) != len(images):
            raise NetsiftError(f"{f_lab} holds labels of shape {labels.shape} for {len(images)} images in {f_img}")
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


@dataclass(frozen=True)
class DatasetInfo:
    """What netsift knows about a data set before loading it."""

    name: str
    description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    classes: int | None = None  # known class count (labels outside it mean a corrupt file)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", "scikit-learn's 8x8 digits, built in (1,797 images, 10 classes)", (0.3063,), (0.3933,), "crop", 10),
    "mnist": DatasetInfo("mnist", "MNIST 28x28 (IDX files)", (0.1307,), (0.3081,), "crop", 10),
    "fashion-mnist": DatasetInfo("fashion-mnist", "Fashion-MNIST 28x28 (IDX files; Debian: dataset-fashion-mnist)",
                                 (0.2860,), (0.3530,), "crop-flip", 10),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10 32x32 colour (binary version)", (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), "crop-flip", 10),
    "cifar100": DatasetInfo("cifar100", "CIFAR-100 32x32 colour, fine labels (binary version)",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop-flip", 100),
    "imagenet": DatasetInfo("imagenet", "an ImageNet-style folder: DIR/train/<class>/*, DIR/val/<class>/*",
                            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    "synthetic": DatasetInfo("synthetic", "random class templates plus noise, 1x16x16, 10 classes (for tests)",
                             (0.5,), (0.25,), "none"),
}


def load_data(name: str, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1,
              download: bool = False, train_subset: int | None = None) -> DataBundle:
    """Load a data set by name and split off a validation set.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: where to look for files (default: :func:`data_root`).
        seed: seeds the train/validation split (and so which images a ``train_subset`` keeps).
        val_fraction: share of the training set held out for validation.
        download: allow torchvision's downloaders where files are missing.
        train_subset: keep only the first N training images after the split (a seed-dependent random subset).

    Raises:
        NetsiftError: unknown name, missing or corrupt files, labels outside the classes.
    """
    choose(name, DATASETS, "data set")
    if train_subset is not None and train_subset <= 0:
        raise NetsiftError(f"train_subset must be positive, got {train_subset}")
    info = DATASETS[name]
    root = data_root(data_dir)
    config = {"data": name, "data_dir": str(data_dir) if data_dir else None, "val_fraction": val_fraction,
              "train_subset": train_subset, "download": download}
    if name == "imagenet":
        return _load_image_folder(root, info, seed, val_fraction, train_subset, config)
    if name == "digits":
        train, test = _load_digits()
    elif name == "synthetic":
        train, test = synthetic()
    elif name in _MNIST_URLS:
        train, test = _load_mnist_like(name, root, download)
    else:
        train, test = _load_cifar(name, root, download)
    for split, ds in (("training", train), ("test", test)):
        if not len(ds):
            raise NetsiftError(f"{name}: the {split} files hold no images")
    classes = info.classes or int(max(train.labels.max(), test.labels.max())) + 1
    for split, ds in (("training", train), ("test", test)):
        if len(ds) and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= classes):
            raise NetsiftError(f"{name}: the {split} labels must lie in 0..{classes - 1}, found "
                               f"{int(ds.labels.min())}..{int(ds.labels.max())} (corrupt label file?)")
    train, val = split_train_val(train, val_fraction, seed)
    if train_subset is not None:
        train = train.subset(torch.arange(min(train_subset, len(train))))
    return DataBundle(name, train, val, test, tuple(train.images.shape[1:]), classes, info.mean, info.std,
                      info.augment, config=config)


def load_bundle(cfg, seed: int = 0) -> DataBundle:
    """Load the data a :class:`~netsift.config.DataConfig` names, split with ``seed``."""
    return load_data(cfg.data, cfg.data_dir, seed=seed, val_fraction=cfg.val_fraction, download=cfg.download,
                     train_subset=cfg.train_subset)


def _load_image_folder(root: Path, info: DatasetInfo, seed: int, val_fraction: float, train_subset: int | None,
                       config: dict) -> DataBundle:
    """``root/train/<class>/*`` (train + a validation slice of it) and ``root/val/<class>/*`` (the test split)."""
    from torchvision import datasets, transforms

    train_dir, test_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise NetsiftError(f"imagenet: expected image folders {train_dir} and {test_dir} (pass --data-dir DIR)")
    norm = transforms.Normalize(info.mean, info.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    try:
        train_all = datasets.ImageFolder(str(train_dir), train_tf)
        train_eval = datasets.ImageFolder(str(train_dir), eval_tf)
        test = datasets.ImageFolder(str(test_dir), eval_tf)
    except (FileNotFoundError, OSError) as e:
        raise NetsiftError(f"imagenet: cannot read the image folders in {root}: {e}") from None
    if train_all.classes != test.classes:
        raise NetsiftError(f"imagenet: {train_dir} and {test_dir} have different class folders")
    perm = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(train_all) * val_fraction))
    keep = perm[n_val:] if train_subset is None else perm[n_val:n_val + train_subset]
    train = torch.utils.data.Subset(train_all, keep.tolist())
    val = torch.utils.data.Subset(train_eval, perm[:n_val].tolist())  # validation images without augmentation
    return DataBundle("imagenet", train, val, test, (3, 224, 224), len(train_all.classes), None, None, "imagenet",
                      config=config)
