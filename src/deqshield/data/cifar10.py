"""CIFAR-10 from the official python version (``cifar-10-python.tar.gz``).

The archive extracts to ``cifar-10-batches-py/``, whose ``data_batch_1`` .. ``data_batch_5``
(train) and ``test_batch`` (test) are pickled dicts (written by Python 2) with ``b'data'``, a
``(10000, 3072)`` uint8 numpy array of channel-major 3x32x32 images, and ``b'labels'``, a list
of 10000 ints in 0..9.

Unpickling can run arbitrary code, so every batch is checked against its published md5 first
and then read by :class:`BatchUnpickler`, which builds nothing but plain containers and numpy
arrays.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deqshield.data.base import (
    ArrayDataset,
    locate,
    read_verified,
    split_name,
    to_labels,
    to_unit_float,
)
from deqshield.data.download import fetch_archive
from deqshield.errors import DataError

NAME = "cifar10"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{index}" for index in range(1, 6)),
    "test": ("test_batch",),
}
"""Batch files of each split, in order."""

MD5SUMS: dict[str, str] = {
    ARCHIVE: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
"""Published md5 of the archive and of every batch file."""

MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
"""Base URLs serving the official archive, tried in order."""

SUBDIRS: tuple[str, ...] = ("", BATCHES_DIR, NAME, f"{NAME}/{BATCHES_DIR}")
"""Where the batch files may sit under the data directory, in search order."""

_RECONSTRUCT = np.zeros(0).__reduce__()[0]
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""The only globals a batch pickle may name: what it takes to rebuild a numpy array."""


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those in :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def load_cifar10(
    split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a split of CIFAR-10 as 3x32x32 images.

    The batch files are looked for directly in ``root`` (flat layout), then in
    ``root/cifar-10-batches-py/``, ``root/cifar10/`` and ``root/cifar10/cifar-10-batches-py/``.
    Each is checked against its published md5 before it is unpickled.

    Args:
        split: ``"train"`` (50000 images) or ``"test"`` (10000 images).
        root: data directory; None means :data:`deqshield.data.base.DEFAULT_ROOT`.
        download: when the batch files are missing, fetch the official archive into
            ``root/cifar10/``, check its md5 and extract it there.
        mirrors: base URLs to download from instead of :data:`MIRRORS`.

    Raises:
        DataError: files missing (and ``download`` false), corrupt, or with a wrong md5.
    """
    directory = locate(NAME, split, root, SUBDIRS, FILES, download,
                       lambda root: fetch_archive(ARCHIVE, MD5SUMS[ARCHIVE], mirrors or MIRRORS,
                                                  BATCHES_DIR, root / NAME))
    batches = [parse_batch(directory / filename) for filename in FILES[split]]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ArrayDataset(to_unit_float(images), to_labels(labels), len(CLASS_NAMES),
                        split_name(NAME, split), CLASS_NAMES)


def parse_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Verify and decode one batch file into uint8 images ``(N, 3, 32, 32)`` and labels ``(N,)``."""
    content = read_verified(path, MD5SUMS[path.name])
    try:
        batch = BatchUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as error:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    pixels_per_image = int(np.prod(IMAGE_SHAPE))
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == pixels_per_image
    ):
        raise DataError(f"{path}: b'data' is not a uint8 array of shape (N, {pixels_per_image})")
    if not (
        isinstance(labels, list)
        and len(labels) == len(data)
        and all(isinstance(label, int) and 0 <= label < len(CLASS_NAMES) for label in labels)
    ):
        raise DataError(
            f"{path}: b'labels' is not a list of {len(data)} ints in 0..{len(CLASS_NAMES) - 1}"
        )
    return data.reshape(len(data), *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)
