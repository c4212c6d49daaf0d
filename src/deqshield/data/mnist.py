"""MNIST and Fashion-MNIST from the official gzip-compressed IDX files.

Both data sets ship the same four files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``).
Decompressed, an image file is a big-endian int32 header (magic 2051, count, rows, columns)
followed by ``count * rows * columns`` unsigned bytes; a label file is a header (magic 2049,
count) followed by ``count`` unsigned bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deqshield.data.base import (
    ArrayDataset,
    locate,
    read_verified,
    split_name,
    to_labels,
    to_unit_float,
)
from deqshield.data.download import download_file
from deqshield.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
NUM_CLASSES = 10

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
"""Image file and label file of each split."""

MD5SUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
"""Published md5 of every file, per data set."""

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
"""Base URLs serving the official files, tried in order."""

SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("", "mnist", "MNIST/raw"),
    "fashion-mnist": ("", "fashion-mnist", "FashionMNIST/raw"),
}
"""Where the files may sit under the data directory: flat, nested, torchvision layout."""

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(digit) for digit in range(NUM_CLASSES)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}


def load_mnist(
    split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """The MNIST split ``split`` as 1x28x28 images; see :func:`load_idx_dataset`."""
    return load_idx_dataset("mnist", split, root, download=download, mirrors=mirrors)


def load_fashion_mnist(
    split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """The Fashion-MNIST split ``split`` as 1x28x28 images; see :func:`load_idx_dataset`."""
    return load_idx_dataset("fashion-mnist", split, root, download=download, mirrors=mirrors)


def load_idx_dataset(
    name: str, split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a split of MNIST (``name="mnist"``) or Fashion-MNIST (``name="fashion-mnist"``).

    The two files of the split are looked for directly in ``root`` (flat layout), then in
    ``root/<name>/`` and in torchvision's ``root/MNIST/raw/`` or ``root/FashionMNIST/raw/``.
    Each file is checked against its published md5 before it is parsed.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        root: data directory; None means :data:`deqshield.data.base.DEFAULT_ROOT`.
        download: fetch missing files into ``root/<name>/`` instead of failing.
        mirrors: base URLs to download from instead of :data:`MIRRORS`.

    Raises:
        DataError: files missing (and ``download`` false), corrupt, or with a wrong md5.
    """
    def fetch(root: Path) -> Path:
        for filename in FILES[split]:
            download_file(filename, root / name, MD5SUMS[name][filename],
                          mirrors or MIRRORS[name])
        return root / name

    directory = locate(name, split, root, SUBDIRS[name], FILES, download, fetch)
    images_path, labels_path = (directory / filename for filename in FILES[split])
    md5sums = MD5SUMS[name]
    images = parse_idx_images(read_verified(images_path, md5sums[images_path.name]), images_path)
    labels = parse_idx_labels(read_verified(labels_path, md5sums[labels_path.name]), labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return ArrayDataset(
        to_unit_float(images[:, None]), to_labels(labels), NUM_CLASSES, split_name(name, split),
        CLASS_NAMES[name],
    )


def parse_idx_images(compressed: bytes, path: Path) -> np.ndarray:
    """Decode a gzip IDX image file into a ``uint8`` array of shape ``(count, rows, columns)``."""
    payload = _decompress(compressed, path)
    count, rows, columns = _read_header(payload, IMAGES_MAGIC, 3, path)
    pixels = _read_body(payload, 16, count * rows * columns, path)
    return pixels.reshape(count, rows, columns)


def parse_idx_labels(compressed: bytes, path: Path) -> np.ndarray:
    """Decode a gzip IDX label file into a ``uint8`` array of shape ``(count,)``."""
    payload = _decompress(compressed, path)
    (count,) = _read_header(payload, LABELS_MAGIC, 1, path)
    return _read_body(payload, 8, count, path)


def _decompress(compressed: bytes, path: Path) -> bytes:
    """The gunzipped content of the file at ``path``."""
    try:
        return gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a valid gzip file ({error})") from error


def _read_header(payload: bytes, magic: int, num_dims: int, path: Path) -> tuple[int, ...]:
    """The dimensions in the IDX header of ``payload``, after checking its magic number."""
    header_bytes = 4 * (1 + num_dims)
    if len(payload) < header_bytes:
        raise DataError(f"{path}: truncated IDX header ({len(payload)} bytes)")
    found, *dims = struct.unpack(f">{1 + num_dims}i", payload[:header_bytes])
    if found != magic:
        raise DataError(f"{path}: IDX magic number {found}, expected {magic}")
    if any(dim < 0 for dim in dims):
        raise DataError(f"{path}: negative size in IDX header {dims}")
    return tuple(dims)


def _read_body(payload: bytes, offset: int, size: int, path: Path) -> np.ndarray:
    """The ``size`` data bytes after the header, which must be all that follows it."""
    if len(payload) - offset != size:
        raise DataError(
            f"{path}: IDX header announces {size} data bytes but the file holds "
            f"{len(payload) - offset}"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=offset)
