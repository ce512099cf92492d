"""Data loaders read local folders in their real on-disk formats, and refuse bad ones clearly."""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import data
from models.data import DataError

pytestmark = pytest.mark.unit


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_mnist(folder: Path, n: int = 20, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), compress)


def test_real_mnist_test_set_matches_its_published_class_counts(mnist_dir):
    test = data.load("mnist", mnist_dir, train=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_any_folder_gz_or_raw(tmp_path, compress):
    make_mnist(tmp_path, compress=compress)
    train = data.load("mnist", tmp_path, train=True)
    assert train.images.shape == (20, 1, 28, 28) and train.labels.tolist()[:3] == [0, 1, 2]


def test_missing_and_truncated_mnist_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing train-images"):
        data.load("mnist", tmp_path, train=True)
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load("mnist", tmp_path, train=True)
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="cannot read"):
        data.load("mnist", tmp_path, train=True)


def test_corrupt_or_cut_gzip_is_a_data_error_naming_the_file(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    good = path.read_bytes()
    corrupt = bytearray(good)
    corrupt[(10 + len(good) - 8) // 2] = 0xFF  # mid-way between the 10-byte header and the 8-byte trailer
    with pytest.raises(zlib.error):  # a broken deflate stream, not a CRC mismatch
        gzip.decompress(bytes(corrupt))
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match=r"cannot read .*train-labels-idx1-ubyte\.gz: corrupt gzip"):
        data.load("mnist", tmp_path, train=True)
    path.write_bytes(good[:len(good) // 2])  # a partial download
    with pytest.raises(DataError, match=r"cannot read .*train-labels-idx1-ubyte\.gz: truncated gzip"):
        data.load("mnist", tmp_path, train=True)


def test_idx_file_shorter_than_its_header_is_refused(tmp_path):
    make_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 0x03, 0, 0]))  # says 3 dimensions, then stops mid-way through the first
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated or corrupt: truncated header"):
        data.load("mnist", tmp_path, train=True)


@pytest.mark.parametrize("bad", [10, 255])
def test_mnist_label_outside_the_ten_classes_is_refused(tmp_path, bad):
    make_mnist(tmp_path)
    labels = (np.arange(20) % 10).astype(np.uint8)
    labels[7] = bad
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    with pytest.raises(DataError, match=rf"train-labels-idx1-ubyte\.gz out of range: label {bad} at index 7"):
        data.load("mnist", tmp_path, train=True)
    assert data.load("mnist", tmp_path, train=False).labels.max() == 9  # the test split is untouched


def make_cifar_binary(folder: Path, per_batch: int = 4) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = (np.arange(per_batch) % 10).astype(np.uint8)[:, None]
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())


def test_cifar10_binary_batches(tmp_path):
    make_cifar_binary(tmp_path)
    train = data.load("cifar10", tmp_path, train=True)
    assert train.images.shape == (20, 3, 32, 32) and train.color_mode == "RGB"
    assert train.classes[0] == "airplane"
    test = data.load("cifar10", tmp_path, train=False)
    raw = (tmp_path / "test_batch.bin").read_bytes()
    assert test.images[0, 0, 0, :4].tolist() == list(raw[1:5])  # R plane first, row-major


def test_pickled_cifar_is_refused_without_unpickling(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"boom": 1}))
    with pytest.raises(DataError, match="never unpickles"):
        data.load("cifar10", tmp_path, train=True)


def test_image_folder_one_subfolder_per_class(tmp_path):
    for split in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), colour).save(tmp_path / split / cls / f"{i}.png")
    train = data.load("image-folder", tmp_path, train=True)
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images[0, :, 0, 0].tolist() == [255, 0, 0]
    (tmp_path / "val" / "dog" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        data.load("image-folder", tmp_path, train=False)


def make_split(root: Path, split: str, classes: list[str], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    for index, cls in enumerate(classes):
        (root / split / cls).mkdir(parents=True)
        for i in range(2):
            Image.new(mode, size, 40 * index).save(root / split / cls / f"{i}.png")


def test_val_is_labelled_by_train_class_list(tmp_path):
    make_split(tmp_path, "train", ["a", "b", "c"])
    make_split(tmp_path, "val", ["b", "c"])  # a val without class a: b is still label 1, never 0
    val = data.load("image-folder", tmp_path, train=False)
    assert val.classes == ["a", "b", "c"] and val.labels.tolist() == [1, 1, 2, 2]
    make_split(tmp_path, "val", ["x"])
    with pytest.raises(DataError, match=r"class folders in .*val that .*train lacks: x \(train's classes: a, b, c\)"):
        data.load("image-folder", tmp_path, train=False)


def test_val_images_must_have_train_shape(tmp_path):
    make_split(tmp_path, "train", ["cat", "dog"], size=(8, 8))
    make_split(tmp_path, "val", ["cat", "dog"], size=(16, 12))
    with pytest.raises(DataError, match=r"val are \(3, 12, 16\) .*train are \(3, 8, 8\)"):
        data.load("image-folder", tmp_path, train=False)
    other = tmp_path / "grey"
    make_split(other, "train", ["cat", "dog"], size=(8, 8))
    make_split(other, "val", ["cat", "dog"], size=(8, 8), mode="L")  # any colour mode is read as RGB
    assert data.load("image-folder", other, train=False).input_shape == (3, 8, 8)


def test_image_folder_needs_at_least_two_classes(tmp_path):
    make_split(tmp_path, "train", ["only"])
    make_split(tmp_path, "val", ["only"])
    for train in (True, False):
        with pytest.raises(DataError, match="only 1 class folder .*at least 2 classes"):
            data.load("image-folder", tmp_path, train=train)
    (tmp_path / "train" / "empty").mkdir()  # a second class folder with no images is still one class
    with pytest.raises(DataError, match="only class only in .*train has images; .*at least 2 classes"):
        data.load("image-folder", tmp_path, train=True)


def test_unknown_data_set_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'svhn'"):
        data.load("svhn", tmp_path, train=True)
    with pytest.raises(DataError, match="does not exist"):
        data.load("mnist", tmp_path / "nope", train=True)


def test_augmentation_keeps_shape_and_pixels_from_the_image():
    import torch

    batch = torch.rand(8, 3, 16, 16)
    out = data.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert float(out.max()) <= float(batch.max())
