"""Benchmark data sets in their official formats, checked against their published checksums.

Use :func:`load_dataset` with one of :data:`DATASETS`; every loader returns an
:class:`ArrayDataset` of float32 ``(N, C, H, W)`` images in ``[0, 1]`` and int64 labels.
:func:`dev_split` holds out a deterministic development part of a training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from deqshield.data.base import DEFAULT_ROOT, ArrayDataset, Split
from deqshield.data.cifar10 import load_cifar10
from deqshield.data.digits import load_digits
from deqshield.data.download import download_file
from deqshield.data.mnist import load_fashion_mnist, load_mnist
from deqshield.data.tiny_imagenet import load_tiny_imagenet
from deqshield.errors import InputError

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "ArrayDataset",
    "Split",
    "dev_split",
    "download_file",
    "load_dataset",
]


class Loader(Protocol):
    """Signature shared by the per-data-set loaders."""

    def __call__(
        self, split: str, root: str | Path | None = None, *, download: bool = False,
        mirrors: Sequence[str] | None = None,
    ) -> ArrayDataset: ...


DATASETS: dict[str, Loader] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "tiny-imagenet": load_tiny_imagenet,
    "digits": load_digits,
}
"""Loader of each data set, by name."""


def load_dataset(
    name: str,
    split: Split = "train",
    root: str | Path | None = None,
    download: bool = False,
    *,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load split ``split`` of data set ``name`` from the data directory ``root``.

    ``root`` points at an existing copy. Both layouts are accepted: the data set's files
    directly in ``root`` (e.g. ``root=".../data/mnist"`` holding the four ``.gz`` files), or
    in ``root/<name>/`` (e.g. ``root=".../data"``); see each loader for further locations it
    recognises. Every file is checked against its published md5 before it is parsed.

    Args:
        name: one of :data:`DATASETS`: ``mnist``, ``fashion-mnist``, ``cifar10``,
            ``tiny-imagenet``, ``digits``.
        split: ``"train"`` or ``"test"`` (for Tiny ImageNet, the official validation set).
        root: data directory; None means :data:`DEFAULT_ROOT` (``~/.cache/deqshield/data``).
            Ignored by ``digits``, which ships with scikit-learn.
        download: fetch missing files from the official mirrors into ``root/<name>/``.
        mirrors: base URLs to download from instead of the official ones.

    Raises:
        InputError: unknown ``name`` or ``split``.
        DataError: files missing (and ``download`` false), corrupt, or with a wrong md5; the
            message names the file(s), the directories searched and how to fix it.
    """
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name](split, root, download=download, mirrors=mirrors)


def dev_split(
    dataset: ArrayDataset, fraction: float, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``dataset`` into a training part and a held-out development part.

    The split is stratified: about ``fraction`` of the examples of every class (rounded, and
    at least one example overall) go to the development part. It depends only on the labels,
    ``fraction`` and ``seed``, so the same arguments always give the same split. Both parts
    keep the original order of the examples.

    Returns:
        ``(train_part, dev_part)``, named ``<name>/train-part`` and ``<name>/dev-part``.

    Raises:
        InputError: ``fraction`` not in ``(0, 1)``, or ``dataset`` too small to split.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"dev fraction must be in (0, 1), got {fraction}")
    if len(dataset) < 2:
        raise InputError(f"{dataset.name}: {len(dataset)} examples are too few to split")
    rng = np.random.default_rng(seed)
    labels = dataset.labels.numpy()
    dev_indices = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        dev_indices.append(members[: round(fraction * len(members))])
    is_dev = np.zeros(len(labels), dtype=bool)
    is_dev[np.concatenate(dev_indices)] = True
    if not is_dev.any():
        is_dev[rng.integers(len(labels))] = True
    if is_dev.all():
        is_dev[rng.integers(len(labels))] = False
    return (
        dataset.subset(np.flatnonzero(~is_dev), f"{dataset.name}/train-part"),
        dataset.subset(np.flatnonzero(is_dev), f"{dataset.name}/dev-part"),
    )
