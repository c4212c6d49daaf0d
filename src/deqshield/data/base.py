"""Building blocks shared by the data set loaders.

:class:`ArrayDataset` is the in-memory container every loader returns. The helpers below find
a data set's files under a data directory, verify them against their published md5 checksums
and turn decoded ``uint8`` pixels into the ``float32`` tensors the models consume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from deqshield.errors import DataError, InputError


def split_name(dataset: str, split: str) -> str:
    """The name a loaded split carries, e.g. ``mnist/test`` (recorded with results)."""
    return f"{dataset}/{split}"

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
DEFAULT_ROOT = Path.home() / ".cache" / "deqshield" / "data"
DOWNLOAD_HINT = (
    "pass download=True (on the command line: deqshield train --download) to fetch the "
    "official files, or point the data directory (--data-dir) at an existing copy"
)


@dataclass(frozen=True, eq=False)
class ArrayDataset(torch.utils.data.Dataset):
    """A labelled image data set held in memory, usable as a ``torch.utils.data.Dataset``.

    Attributes:
        images: ``float32`` tensor of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: number of classes of the data set (not only those present here).
        name: data set name with its split, e.g. ``"mnist/train"``.
        class_names: one human-readable name per class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise InputError(
                f"{self.name}: images must be a float32 (N, C, H, W) tensor, "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise InputError(
                f"{self.name}: labels must be an int64 tensor of shape ({len(self.images)},), "
                f"got {self.labels.dtype} with shape {tuple(self.labels.shape)}"
            )
        if len(self.class_names) != self.num_classes:
            raise InputError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if len(self.labels) == 0:
            return
        low_label, high_label = torch.aminmax(self.labels)
        if low_label < 0 or high_label >= self.num_classes:
            raise InputError(f"{self.name}: labels outside [0, {self.num_classes})")
        low_value, high_value = torch.aminmax(self.images)
        if low_value < 0.0 or high_value > 1.0:
            raise InputError(f"{self.name}: image values outside [0, 1]")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        channels, height, width = self.images.shape[1:]
        return (channels, height, width)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor, name: str) -> ArrayDataset:
        """A new data set holding the examples at ``indices`` (in that order), called ``name``."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(
            self.images[index], self.labels[index], self.num_classes, name, self.class_names
        )


def check_split(split: str) -> Split:
    """Return ``split`` if it names a split (``"train"`` or ``"test"``), else raise InputError."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def resolve_root(root: str | Path | None) -> Path:
    """The data directory to use: ``root`` itself, or :data:`DEFAULT_ROOT` when it is None."""
    return DEFAULT_ROOT if root is None else Path(root).expanduser()


def find_directory(root: Path, subdirs: Sequence[str], required: Sequence[str]) -> Path | None:
    """The first of ``root / subdir`` (in order) that holds every file in ``required``, or None."""
    for subdir in subdirs:
        candidate = root / subdir
        if all((candidate / name).is_file() for name in required):
            return candidate
    return None


def missing_files_error(
    title: str, root: Path, subdirs: Sequence[str], required: Sequence[str]
) -> DataError:
    """The DataError for data set files that are in none of the searched directories."""
    searched = ", ".join(str(root / subdir) for subdir in subdirs)
    return DataError(
        f"{title}: could not find {', '.join(required)} in any of: {searched}. "
        f"To fix this, {DOWNLOAD_HINT}."
    )


def locate(name: str, split: str, root: str | Path | None, subdirs: Sequence[str],
           files: Mapping[str, Sequence[str]], download: bool,
           fetch: Callable[[Path], Path]) -> Path:
    """The directory holding the ``files[split]`` of data set ``name``: the first of
    ``root / subdir`` that has them all (``root`` None: :data:`DEFAULT_ROOT`); when none has,
    ``fetch(root)`` downloads them and returns their directory if ``download``, else a
    :func:`missing_files_error` is raised."""
    required = files[check_split(split)]
    root = resolve_root(root)
    directory = find_directory(root, subdirs, required)
    if directory is not None:
        return directory
    if not download:
        raise missing_files_error(f"{name} {split} split", root, subdirs, required)
    return fetch(root)


def md5_of_bytes(data: bytes) -> str:
    """Hex md5 digest of ``data`` (a checksum, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def checksum_error(path: Path, expected: str, actual: str) -> DataError:
    """The DataError for a file whose md5 differs from the published one."""
    return DataError(
        f"{path}: checksum mismatch, expected md5 {expected} but the file has md5 {actual}; "
        "it is truncated, corrupt or not the official release. "
        "Delete it and download it again, or replace it with an official copy."
    )


def read_verified(path: Path, expected_md5: str) -> bytes:
    """Read the whole file at ``path`` and return its bytes once their md5 is ``expected_md5``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error})") from error
    actual = md5_of_bytes(data)
    if actual != expected_md5:
        raise checksum_error(path, expected_md5, actual)
    return data


def to_unit_float(pixels: np.ndarray, max_value: float = 255.0) -> torch.Tensor:
    """Convert an ``(N, C, H, W)`` array of values in ``[0, max_value]`` to float32 in [0, 1]."""
    writable = np.require(pixels, requirements=["C", "W"])
    return torch.from_numpy(writable).to(torch.float32).div_(max_value)


def to_labels(labels: np.ndarray) -> torch.Tensor:
    """Convert a 1-D array of class indices to an int64 tensor."""
    return torch.from_numpy(np.require(labels, dtype=np.int64, requirements=["C", "W"]))
