"""What netsift knows about the built-in data sets before loading any: names, descriptions, normalisation,
and where their files are looked for. Torch-free, so that ``netsift datasets`` and ``--help`` start fast;
:mod:`.sources` loads the files."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DATA_ENV = "NETSIFT_DATA"
"""Environment variable naming the data root (default ``~/.cache/netsift/data``)."""

SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": [Path("/usr/share/datasets/mnist")]}
"""Folders of system packages (Debian's ``dataset-fashion-mnist``) searched after the data root."""


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

MNIST_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
"""The four IDX files of MNIST and Fashion-MNIST (each also found gzipped)."""

MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""torchvision's folder name of each (its files sit in ``<root>/<folder>/raw``)."""

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"]),
}
"""Folder, training files and test files of the binary CIFAR versions."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$NETSIFT_DATA``, else ``~/.cache/netsift/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    from ..env import get

    if get(DATA_ENV):  # validated in netsift.env
        return Path(get(DATA_ENV)).expanduser()
    return Path.home() / ".cache" / "netsift" / "data"


def candidate_dirs(name: str, root: Path) -> list[Path]:
    """The folders searched for ``name``'s files under ``root``, in order (then the system folders)."""
    if name in MNIST_FOLDERS:
        return [root, root / name, root / MNIST_FOLDERS[name] / "raw", *SYSTEM_DIRS.get(name, [])]
    if name in CIFAR_FILES:
        folder = CIFAR_FILES[name][0]
        return [root / folder, root / name / folder, root / name]
    if name == "imagenet":
        return [root]
    return []


def find_files(dirs: Sequence[Path], stems: Sequence[str], gz: bool = True) -> list[Path] | None:
    """The files ``stems`` (or ``stem.gz``) from the first folder of ``dirs`` that holds all of them."""
    for d in dirs:
        found = []
        for stem in stems:
            hit = next((d / (stem + ext) for ext in ("", ".gz") if (gz or not ext) and (d / (stem + ext)).is_file()),
                       None)
            if hit is None:
                break
            found.append(hit)
        if len(found) == len(stems):
            return found
    return None


@dataclass(frozen=True)
class Location:
    """Where a data set is (``found``), or where it was looked for (``looked``)."""

    name: str
    status: str  # "built in", "found" or "missing"
    found: Path | None
    looked: list[Path]


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Location:
    """Whether the files of data set ``name`` are on this machine, without reading them."""
    root = data_root(data_dir)
    dirs = candidate_dirs(name, root)
    if name == "digits":
        ok = importlib.util.find_spec("sklearn") is not None
        return Location(name, "built in" if ok else "missing", None, [])
    if name == "synthetic":
        return Location(name, "built in", None, [])
    if name in MNIST_FOLDERS:
        files = find_files(dirs, MNIST_STEMS)
        return Location(name, "found" if files else "missing", files[0].parent if files else None, dirs)
    if name in CIFAR_FILES:
        _, train, test = CIFAR_FILES[name]
        hit = find_files(dirs, train + test, gz=False)
        return Location(name, "found" if hit else "missing", hit[0].parent if hit else None, dirs)
    if name == "imagenet":
        ok = (root / "train").is_dir() and (root / "val").is_dir()
        return Location(name, "found" if ok else "missing", root if ok else None, [root / "train", root / "val"])
    return Location(name, "missing", None, dirs)
