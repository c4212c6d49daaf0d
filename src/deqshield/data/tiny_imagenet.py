"""Tiny ImageNet (200 classes of 64x64 RGB JPEGs) from the ``tiny-imagenet-200/`` folder.

Layout of the official ``tiny-imagenet-200.zip``: ``wnids.txt`` (one WordNet id per class),
``words.txt`` (WordNet id, tab, class description), ``train/<wnid>/images/*.JPEG`` (500 per
class) and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file name, tab, WordNet id,
then a bounding box). The official test images have no labels, so the ``"test"`` split here is
the official validation set. Class ``k`` is the ``k``-th WordNet id in sorted order (the
``ImageFolder`` convention).

Decoding 100000 JPEGs takes minutes, so the decoded pixels of a split are cached as a uint8
``.npy`` file in the data folder, named after a fingerprint of the image list (names, labels,
sizes) so that a changed folder is decoded again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from deqshield.data.base import ArrayDataset, locate, split_name, to_labels, to_unit_float
from deqshield.data.download import fetch_archive
from deqshield.errors import DataError

NAME = "tiny-imagenet"
ARCHIVE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
REQUIRED: dict[str, tuple[str, ...]] = {
    "train": ("wnids.txt",),
    "test": ("wnids.txt", "val/val_annotations.txt"),
}
"""Index files that must exist for each split."""

MD5SUMS: dict[str, str] = {ARCHIVE: "90528d7ca1a48142e341f4ef8d21d0de"}
"""Published md5 of the archive."""

MIRRORS: tuple[str, ...] = ("http://cs231n.stanford.edu/",)
"""Base URLs serving the official archive, tried in order."""

SUBDIRS: tuple[str, ...] = ("", FOLDER, NAME, f"{NAME}/{FOLDER}")
"""Where the data folder may sit under the data directory, in search order."""


def load_tiny_imagenet(
    split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a split of Tiny ImageNet as 3x64x64 images.

    The folder contents (``wnids.txt`` ...) are looked for directly in ``root`` (flat layout),
    then in ``root/tiny-imagenet-200/``, ``root/tiny-imagenet/`` and
    ``root/tiny-imagenet/tiny-imagenet-200/``.

    Args:
        split: ``"train"`` (100000 images) or ``"test"`` (the 10000 validation images).
        root: data directory; None means :data:`deqshield.data.base.DEFAULT_ROOT`.
        download: when the folder is missing, fetch the official archive into
            ``root/tiny-imagenet/``, check its md5 and extract it there.
        mirrors: base URLs to download from instead of :data:`MIRRORS`.

    Raises:
        DataError: files missing (and ``download`` false), unreadable or malformed.
    """
    directory = locate(NAME, split, root, SUBDIRS, REQUIRED, download,
                       lambda root: fetch_archive(ARCHIVE, MD5SUMS[ARCHIVE], mirrors or MIRRORS,
                                                  FOLDER, root / NAME))
    wnids = read_wnids(directory / "wnids.txt")
    listing = list_train(directory, wnids) if split == "train" else list_val(directory, wnids)
    if not listing:
        raise DataError(f"{directory}: the {split} split has no images")
    pixels = load_cached_pixels(directory, split, listing)
    labels = np.array([label for _, label in listing], dtype=np.int64)
    return ArrayDataset(
        to_unit_float(pixels.transpose(0, 3, 1, 2)), to_labels(labels), len(wnids),
        split_name(NAME, split), read_class_names(directory / "words.txt", wnids),
    )


def read_wnids(path: Path) -> list[str]:
    """The sorted, distinct WordNet ids listed in ``wnids.txt``."""
    wnids = sorted({line.strip() for line in _read_lines(path) if line.strip()})
    if not wnids:
        raise DataError(f"{path}: lists no class")
    return wnids


def read_class_names(path: Path, wnids: Sequence[str]) -> tuple[str, ...]:
    """The description of each class from ``words.txt``, or its WordNet id where there is none."""
    descriptions = {}
    if path.is_file():
        for line in _read_lines(path):
            wnid, _, description = line.partition("\t")
            descriptions[wnid] = description.strip()
    return tuple(descriptions.get(wnid) or wnid for wnid in wnids)


def list_train(directory: Path, wnids: Sequence[str]) -> list[tuple[Path, int]]:
    """``(image path, label)`` of every training image, ordered by class then file name."""
    listing = []
    for label, wnid in enumerate(wnids):
        images_dir = directory / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: missing training folder of class {wnid}")
        names = sorted(
            entry.name for entry in os.scandir(images_dir) if entry.name.endswith(".JPEG")
        )
        listing.extend((images_dir / name, label) for name in names)
    return listing


def list_val(directory: Path, wnids: Sequence[str]) -> list[tuple[Path, int]]:
    """``(image path, label)`` of every validation image, in ``val_annotations.txt`` order."""
    annotations = directory / "val" / "val_annotations.txt"
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    listing = []
    for number, line in enumerate(_read_lines(annotations), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DataError(f"{annotations}, line {number}: no known WordNet id in {line!r}")
        listing.append((directory / "val" / "images" / fields[0], label_of[fields[1]]))
    return listing


def load_cached_pixels(
    directory: Path, split: str, listing: Sequence[tuple[Path, int]]
) -> np.ndarray:
    """The decoded uint8 ``(N, 64, 64, 3)`` pixels of ``listing``, from or into the cache."""
    cache = directory / f"deqshield-{split}-{_fingerprint(directory, listing)}.npy"
    expected_shape = (len(listing), IMAGE_SIZE, IMAGE_SIZE, 3)
    if cache.is_file():
        try:
            pixels = np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            pixels = None
        if pixels is not None and pixels.dtype == np.uint8 and pixels.shape == expected_shape:
            return pixels
    progress = tqdm(listing, desc=f"decoding {NAME} {split}", leave=False)
    pixels = np.stack([decode_image(path) for path, _ in progress])
    _save_atomically(cache, pixels)
    return pixels


def decode_image(path: Path) -> np.ndarray:
    """Decode one JPEG into a uint8 ``(64, 64, 3)`` RGB array (grayscale images are expanded)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: cannot decode the image ({error})") from error
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(
            f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]}, "
            f"expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return pixels


def _fingerprint(directory: Path, listing: Sequence[tuple[Path, int]]) -> str:
    """A short hash of the relative path, label and size of every image in ``listing``."""
    digest = hashlib.sha256()
    for path, label in listing:
        try:
            size = path.stat().st_size
        except OSError as error:
            raise DataError(f"{path}: missing image ({error})") from error
        digest.update(f"{path.relative_to(directory)}\t{label}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def _save_atomically(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` to ``path`` via a temporary file; warn and go on if that is impossible."""
    try:
        handle, temporary_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".part", dir=path.parent
        )
    except OSError as error:
        warnings.warn(f"cannot cache decoded images in {path.parent} ({error})", stacklevel=3)
        return
    try:
        with os.fdopen(handle, "wb") as sink:
            np.save(sink, pixels, allow_pickle=False)
        os.replace(temporary_name, path)
    except OSError as error:
        warnings.warn(f"cannot cache decoded images as {path} ({error})", stacklevel=3)
    finally:
        Path(temporary_name).unlink(missing_ok=True)


def _read_lines(path: Path) -> list[str]:
    """The lines of the UTF-8 text file at ``path``."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from error
