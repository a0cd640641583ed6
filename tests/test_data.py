import gzip

import numpy as np
import pytest
import torch

from netsift.data import (TensorLoader, augment_batch, load_data, make_loader, read_cifar_binary, read_idx,
                          sample_batches, write_idx)
from netsift.errors import NetsiftError


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    write_idx(tmp_path / "a-idx3-ubyte.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    # hand-check the header: magic 0x00000803, then the three big-endian dimensions
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 2 and int.from_bytes(raw[12:16], "big") == 4


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(NetsiftError, match="bad magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t", np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(NetsiftError, match="expected 16"):
        read_idx(tmp_path / "t")


def _write_fake_mnist(folder, n_train=40, n_test=20, size=28):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_mnist_loads_from_data_dir(tmp_path):
    _write_fake_mnist(tmp_path / "mnist")
    b = load_data("mnist", data_dir=str(tmp_path), seed=1, val_fraction=0.25)
    assert (b.in_channels, b.image_size, b.num_classes) == (1, 28, 10)
    assert len(b.train) == 30 and len(b.val) == 10 and len(b.test) == 20
    assert b.train.images.dtype == torch.uint8


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(NetsiftError) as e:
        load_data("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_cifar_binary_reader(tmp_path):
    recs = np.zeros((3, 1 + 3072), np.uint8)
    recs[:, 0] = [7, 1, 2]
    recs[1, 1:] = 255
    f = tmp_path / "batch.bin"
    recs.tofile(f)
    x, y = read_cifar_binary([f], 1, 0)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [7, 1, 2] and int(x[1].min()) == 255
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(NetsiftError, match="not a CIFAR"):
        read_cifar_binary([tmp_path / "bad.bin"], 1, 0)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(d / f"{i}.png")
    b = load_data("imagenet", data_dir=str(tmp_path))
    assert b.num_classes == 2 and b.input_shape == (3, 224, 224)
    x, y = next(iter(make_loader(b, "test", 4)))
    assert x.shape == (4, 3, 224, 224)


def test_split_is_deterministic_and_seed_dependent():
    a, b, c = (load_data("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # the test set does not move with the seed
    assert len(a.val) == round(0.1 * (len(a.train) + len(a.val)))


def test_loader_order_depends_only_on_seed_and_epoch():
    b = load_data("digits")
    l1 = make_loader(b, "train", 32, shuffle=True, augment=True, seed=3)
    l2 = make_loader(b, "train", 32, shuffle=True, augment=True, seed=3)
    l1.set_epoch(2)
    l2.set_epoch(2)
    x1, y1 = next(iter(l1))
    x2, y2 = next(iter(l2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    l2.set_epoch(3)
    assert not torch.equal(next(iter(l2))[1], y1)


def test_normalisation_and_augmentation_shapes():
    b = load_data("digits")
    x, _ = next(iter(make_loader(b, "train", 256)))
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(5, 3, 8, 8)
    out = augment_batch(raw, "crop-flip", g)
    assert out.shape == raw.shape


def test_sample_batches_gives_fresh_batches():
    b = load_data("digits")
    nxt = sample_batches(b, 64, seed=0)
    x1, y1 = nxt()
    x2, y2 = nxt()
    assert x1.shape == (64, 1, 8, 8) and not torch.equal(y1, y2)


def test_unknown_dataset():
    with pytest.raises(NetsiftError, match="unknown data set 'nope'"):
        load_data("nope")


@pytest.mark.needs_data
def test_real_fashion_mnist_if_installed():
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed")
    b = load_data("fashion-mnist", data_dir="/nonexistent")  # falls back to the Debian package's folder
    assert len(b.train) == 54000 and len(b.val) == 6000 and len(b.test) == 10000 and b.num_classes == 10
