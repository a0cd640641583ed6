"""Data: the built-in data sets, their file formats, deterministic splits and fast loaders.

* :mod:`.sets` says what the built-in data sets are and where their files are looked for (torch-free),
* :mod:`.formats` reads IDX and CIFAR binary files (nothing is unpickled),
* :mod:`.sources` loads the built-in data sets (:func:`load_data`),
* :mod:`.bundle` holds :class:`DataBundle` (splits + what a model needs to know); :mod:`.resolve` has
  :func:`as_bundle`, which also takes your own ``DataLoader``\\ s or data sets,
* :mod:`.loaders` batches them (:class:`TensorLoader`, :class:`DatasetLoader`, :class:`UserLoader`).

Importing this package is cheap; torch loads on first use of a name that needs it.
"""

from .._lazy import lazy_exports
from .sets import DATA_ENV, DATASETS, DatasetInfo, data_root, locate


def make_loader(bundle, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, drop_last: bool = False, num_shards: int = 1, shard_index: int = 0):
    """A loader over one split of ``bundle`` (see :meth:`DataBundle.loader`)."""
    return bundle.loader(split, batch_size, shuffle=shuffle, augment=augment, seed=seed, drop_last=drop_last,
                         num_shards=num_shards, shard_index=shard_index)


def sample_batches(bundle, batch_size: int, seed: int, split: str = "train"):
    """A function returning a fresh random minibatch of ``split`` at each call (see :meth:`DataBundle.batches`)."""
    return bundle.batches(split, batch_size, seed)


_HEAVY = {
    **dict.fromkeys(["SPLITS", "DataBundle", "split_train_val"], ".bundle"),
    "as_bundle": ".resolve",
    **dict.fromkeys(["read_cifar_binary", "read_idx", "write_idx"], ".formats"),
    **dict.fromkeys(["DatasetLoader", "TensorDataset", "TensorLoader", "UserLoader", "augment_batch"], ".loaders"),
    **dict.fromkeys(["load_bundle", "load_data", "synthetic"], ".sources"),
}
__getattr__, __dir__ = lazy_exports(__name__, _HEAVY, globals())

__all__ = ["DATASETS", "DATA_ENV", "SPLITS", "DataBundle", "DatasetInfo", "DatasetLoader", "TensorDataset",
           "TensorLoader", "UserLoader", "as_bundle", "augment_batch", "data_root", "load_bundle", "load_data",
           "locate", "make_loader", "read_cifar_binary", "read_idx", "sample_batches", "split_train_val",
           "synthetic", "write_idx"]
