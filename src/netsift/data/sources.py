"""The built-in data sets: how they are read and split (what they are and where their files are looked for:
:mod:`.sets`).

Small image data sets (digits, MNIST, Fashion-MNIST, CIFAR) are loaded into memory as uint8 tensors;
ImageNet-style image folders go through torchvision's ``ImageFolder``. :func:`load_data` returns a
:class:`~.bundle.DataBundle` with a validation split carved deterministically from the training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import NetsiftError, choose
from .bundle import DataBundle, check_image_size, split_train_val
from .formats import read_cifar_binary, read_idx
from .loaders import TensorDataset
from .sets import (CIFAR_FILES, DATA_ENV, DATASETS, MNIST_STEMS, DatasetInfo, candidate_dirs, data_root,  # noqa: F401
                   find_files)

_MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def _load_mnist_like(name: str, root: Path, download: bool) -> tuple[TensorDataset, TensorDataset]:
    url = _MNIST_URLS[name]
    dirs = candidate_dirs(name, root)
    files = find_files(dirs, MNIST_STEMS)
    if files is None and download:
        from torchvision.datasets.utils import download_url

        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            for stem in MNIST_STEMS:
                download_url(url + stem + ".gz", str(target), filename=stem + ".gz")
        except Exception as e:  # network errors come in many types
            raise NetsiftError(f"could not download {name} from {url}: {e}") from None
        files = find_files([target], MNIST_STEMS)
    if files is None:
        hint = "apt-get install dataset-fashion-mnist, or " if name == "fashion-mnist" else ""
        raise NetsiftError(
            f"{name} not found: looked for {MNIST_STEMS[0]}[.gz] in {', '.join(str(d) for d in dirs)}; "
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


_CIFAR = {  # download address, label bytes per record, which of them is the label
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 1, 0),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", 2, 1),
}


def _load_cifar(name: str, root: Path, download: bool) -> tuple[TensorDataset, TensorDataset]:
    url, label_bytes, label_index = _CIFAR[name]
    folder, train_files, test_files = CIFAR_FILES[name]
    dirs = candidate_dirs(name, root)
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


def load_data(name: str, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1,
              download: bool = False, train_subset: int | None = None, image_size: int | None = None) -> DataBundle:
    """Load a data set by name and split off a validation set.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: where to look for files (default: :func:`data_root`).
        seed: seeds the train/validation split (and so which images a ``train_subset`` keeps).
        val_fraction: share of the training set held out for validation.
        download: allow torchvision's downloaders where files are missing.
        train_subset: keep only the first N training images after the split (a seed-dependent random subset).
        image_size: feed the images as ``image_size`` x ``image_size`` px (bilinear, resized batch by batch, so
            memory holds them at their own size; an image folder crops and resizes to it instead of 224).

    Raises:
        NetsiftError: unknown name, missing or corrupt files, labels outside the classes, a bad image size.
    """
    choose(name, DATASETS, "data set")
    if train_subset is not None and train_subset <= 0:
        raise NetsiftError(f"train_subset must be positive, got {train_subset}")
    if image_size is not None:
        check_image_size(image_size)
    info = DATASETS[name]
    root = data_root(data_dir)
    config = {"data": name, "data_dir": str(data_dir) if data_dir else None, "val_fraction": val_fraction,
              "train_subset": train_subset, "download": download}
    if name == "imagenet":
        if image_size is not None:
            config["image_size"] = image_size
        return _load_image_folder(root, info, seed, val_fraction, train_subset, config, image_size or 224)
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
                      info.augment, config=config).resized(image_size)


def load_bundle(cfg, seed: int = 0) -> DataBundle:
    """Load the data a :class:`~netsift.config.DataConfig` names, split with ``seed``."""
    return load_data(cfg.data, cfg.data_dir, seed=seed, val_fraction=cfg.val_fraction, download=cfg.download,
                     train_subset=cfg.train_subset, image_size=getattr(cfg, "image_size", None))


def _load_image_folder(root: Path, info: DatasetInfo, seed: int, val_fraction: float, train_subset: int | None,
                       config: dict, size: int = 224) -> DataBundle:
    """``root/train/<class>/*`` (train + a validation slice of it) and ``root/val/<class>/*`` (the test split),
    cropped to ``size`` px (evaluation: resized to ``size * 256 / 224``, then centre-cropped)."""
    from torchvision import datasets, transforms

    train_dir, test_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise NetsiftError(f"imagenet: expected image folders {train_dir} and {test_dir} (pass --data-dir DIR)")
    norm = transforms.Normalize(info.mean, info.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(max(size, round(size * 256 / 224))), transforms.CenterCrop(size),
                                  transforms.ToTensor(), norm])
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
    return DataBundle("imagenet", train, val, test, (3, size, size), len(train_all.classes), None, None, "imagenet",
                      config=config)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def load_image_dir(path: str | Path, input_shape: tuple[int, ...], mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None, max_images: int = 1_000_000) -> DataBundle:
    """Images in class folders ``path/<class>/*`` (classes in sorted order are labels 0, 1, ...) as the test split
    of a bundle, for measuring a saved network on them: each image converted to the network's channels (grey or
    RGB) and size, pixels in [0, 1], normalised with ``mean``/``std`` when given. The bundle's training split is
    the same images (nothing trains on it) and it has no validation split.

    Raises:
        NetsiftError: a missing folder, no class folders or images, an unreadable image, or an input shape that
            is not (1 or 3, H, W).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise NetsiftError(f"image folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise NetsiftError(f"an image folder feeds networks taking (1 or 3, H, W) inputs, not {tuple(input_shape)}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise NetsiftError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    c, h, w = input_shape
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if len(images) >= max_images:
                raise NetsiftError(f"{root} holds more than {max_images:,} images")
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if c == 1 else "RGB")
                    if im.size != (w, h):
                        im = im.resize((w, h), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as e:
                raise NetsiftError(f"cannot read image {f}: {e}") from None
            images.append(torch.from_numpy(a.copy()).view(h, w, c).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise NetsiftError(f"{root} has no images in its class folders ({', '.join(IMAGE_SUFFIXES)})")
    if (mean is None) != (std is None) or (mean is not None and (len(mean) != c or len(std) != c)):
        raise NetsiftError(f"give --mean and --std together, one value per channel ({c})")
    data = TensorDataset(torch.stack(images), torch.tensor(labels))
    empty = data.subset(torch.zeros(0, dtype=torch.long))
    return DataBundle("images", data, empty, data, (c, h, w), len(classes), mean, std, "none")
