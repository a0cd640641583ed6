"""Data: the built-in data sets, their file formats, deterministic splits and fast loaders.

* :mod:`.formats` reads IDX and CIFAR binary files (nothing is unpickled),
* :mod:`.sources` locates and loads the built-in data sets (:func:`load_data`),
* :mod:`.bundle` holds :class:`DataBundle` (splits + what a model needs to know) and :func:`as_bundle`,
  which also takes your own ``DataLoader``\\ s or data sets,
* :mod:`.loaders` batches them (:class:`TensorLoader`, :class:`DatasetLoader`, :class:`UserLoader`).
"""

from .bundle import SPLITS, DataBundle, as_bundle, split_train_val
from .formats import read_cifar_binary, read_idx, write_idx
from .loaders import DatasetLoader, TensorDataset, TensorLoader, UserLoader, augment_batch
from .sources import DATA_ENV, DATASETS, DatasetInfo, data_root, load_bundle, load_data, synthetic


def make_loader(bundle: DataBundle, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, drop_last: bool = False, num_shards: int = 1, shard_index: int = 0):
    """A loader over one split of ``bundle`` (see :meth:`DataBundle.loader`)."""
    return bundle.loader(split, batch_size, shuffle=shuffle, augment=augment, seed=seed, drop_last=drop_last,
                         num_shards=num_shards, shard_index=shard_index)


def sample_batches(bundle: DataBundle, batch_size: int, seed: int, split: str = "train"):
    """A function returning a fresh random minibatch of ``split`` at each call (see :meth:`DataBundle.batches`)."""
    return bundle.batches(split, batch_size, seed)


__all__ = ["DATASETS", "DATA_ENV", "SPLITS", "DataBundle", "DatasetInfo", "DatasetLoader", "TensorDataset",
           "TensorLoader", "UserLoader", "as_bundle", "augment_batch", "data_root", "load_bundle", "load_data",
           "make_loader", "read_cifar_binary", "read_idx", "sample_batches", "split_train_val", "synthetic",
           "write_idx"]
