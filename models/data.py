"""Data sets from local folders only (no network): MNIST IDX, CIFAR-10 binary, image folders.

Every loader returns uint8 arrays [N, C, H, W] and int64 labels; scaling to [0, 1] happens once,
on the batch, in :func:`to_float`. Errors are :class:`DataError` with a message a user can act on.

CIFAR-10 is read from its *binary* distribution (``data_batch_{1..5}.bin``, ``test_batch.bin``):
the "python" distribution is a pickle, and this project never unpickles anything.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


class DataError(ValueError):
    """A data set is missing, corrupt or not in the expected format."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    color_mode: str  # Pillow mode: "L" or "RGB"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self.labels):
            return self
        return Dataset(self.images[:n], self.labels[:n], self.classes, self.color_mode)


def _read_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except EOFError:  # the gzip stream ends early: a partial download
        raise DataError(f"cannot read {path}: truncated gzip file") from None
    except (OSError, gzip.BadGzipFile, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataError(f"cannot read {path}: corrupt gzip file ({exc})") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or raw): big-endian magic, dims, then unsigned bytes."""
    data = _read_maybe_gz(path)
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated or corrupt: truncated header ({len(data)} bytes, "
                        f"a {ndim}-dimensional IDX header is {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # exact: numpy's product of four 32-bit sizes can wrap around
    if len(data) - header != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(data) - header} data bytes, header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {stem}[.gz] in {folder}")


def load_mnist(folder: Path, train: bool) -> Dataset:
    prefix = "train" if train else "t10k"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}")
    classes = [str(d) for d in range(10)]
    if labels.max(initial=0) >= len(classes):
        at = int(np.argmax(labels >= len(classes)))
        raise DataError(f"MNIST labels in {labels_path} out of range: label {int(labels[at])} at index {at}; "
                        f"MNIST labels are 0-{len(classes) - 1}")
    return Dataset(images[:, None].copy(), labels.astype(np.int64), classes, "L")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(folder: Path, train: bool) -> Dataset:
    """The CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    for sub in (folder, folder / "cifar-10-batches-bin"):
        if all((sub / n).is_file() for n in names):
            folder = sub
            break
    else:
        if (folder / "cifar-10-batches-py").exists() or (folder / "data_batch_1").exists():
            raise DataError(f"{folder} holds the pickled 'python' CIFAR-10; use the binary version "
                            "(cifar-10-binary.tar.gz): this project never unpickles")
        raise DataError(f"missing CIFAR-10 binary batches ({', '.join(names)}) in {folder}")
    chunks = []
    for name in names:
        raw = (folder / name).read_bytes()
        if len(raw) % _CIFAR_RECORD:
            raise DataError(f"{folder / name} is truncated or corrupt ({len(raw)} bytes)")
        chunks.append(np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD))
    records = np.concatenate(chunks)
    labels = records[:, 0].astype(np.int64)
    if labels.max(initial=0) > 9:
        raise DataError(f"CIFAR-10 labels in {folder} out of range")
    return Dataset(records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels, CIFAR10_CLASSES, "RGB")


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"}


def _class_folders(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


def _image_paths(split: Path, classes: list[str]) -> Iterator[tuple[int, Path]]:
    """(label, path) for every image file under ``split/<class>/``, class by class, in sorted order."""
    for index, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                yield index, path


def _decode_rgb(path: Path) -> np.ndarray:
    """uint8 [3, H, W]: every image is converted to RGB, whatever its own mode (L, P, RGBA, ...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot decode {path}: {exc}") from None


def load_image_folder(folder: Path, train: bool) -> Dataset:
    """``folder/{train,val}/<class>/<image>``: one sub-folder per class (Tiny-ImageNet style).

    The class list, and so the label numbering, is train's: val is labelled by train's class folders,
    so a val without some class still gets the right labels, and a val class train lacks is refused.
    Val images must also have train's shape (the model's input shape).
    """
    layout = f"(expected {folder}/train/<class>/... and {folder}/val/<class>/...)"
    train_split, split = folder / "train", folder / ("train" if train else "val")
    if not split.is_dir():
        raise DataError(f"missing {split} {layout}")
    if not train_split.is_dir():
        raise DataError(f"missing {train_split}: val labels are numbered by train's class folders {layout}")
    classes = _class_folders(train_split)
    if not classes:
        raise DataError(f"no class folders in {train_split}")
    if len(classes) < 2:
        raise DataError(f"{train_split} has only 1 class folder ({classes[0]}); a classifier needs at least 2 classes")
    if not train:
        unknown = sorted(set(_class_folders(split)) - set(classes))
        if unknown:
            raise DataError(f"class folders in {split} that {train_split} lacks: {', '.join(unknown)} "
                            f"(train's classes: {', '.join(classes)}); the splits must use the same class names")
    images, labels = [], []
    for index, path in _image_paths(split, classes):
        images.append(_decode_rgb(path))
        labels.append(index)
    if not images:
        raise DataError(f"no images in {split}")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"images in {split} differ in size ({sorted(shapes)[:3]}...); resize them first")
    shape = images[0].shape
    if train:
        present = sorted({classes[i] for i in labels})
        if len(present) < 2:
            raise DataError(f"only class {present[0]} in {split} has images; a classifier needs at least 2 classes")
    else:
        first = next(_image_paths(train_split, classes), None)
        if first is None:
            raise DataError(f"no images in {train_split}")
        train_shape = _decode_rgb(first[1]).shape
        if shape != train_shape:
            raise DataError(f"images in {split} are {shape} (C, H, W) but those in {train_split} are {train_shape}; "
                            "resize them to train's size")
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes, "RGB")


LOADERS: dict[str, Callable[[Path, bool], Dataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "image-folder": load_image_folder,
}


def load(name: str, folder: str | Path, train: bool) -> Dataset:
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(LOADERS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    return LOADERS[name](folder, train)


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1]."""
    tensor = torch.as_tensor(images)
    return tensor.float().div_(255.0)


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard colour-data augmentation: random crop after zero padding, and horizontal flip."""
    n, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    cropped = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])
    flip = torch.rand(n, generator=generator) < 0.5
    cropped[flip] = cropped[flip].flip(-1)
    return cropped


AUGMENTED = {"cifar10", "image-folder"}  # colour data sets get crop + flip; MNIST none
