"""The scikit-learn digits data set: 1797 8x8 grayscale handwritten digits, shipped offline.

Pixel values 0..16 are scaled to ``[0, 1]``. The data set has no official split, so a fixed
seeded permutation puts the last :data:`TEST_FRACTION` of it in the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits as sklearn_load_digits

from deqshield.data.base import ArrayDataset, check_split, split_name, to_labels, to_unit_float

NAME = "digits"
NUM_CLASSES = 10
MAX_PIXEL = 16.0
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(
    split: str, root: str | Path | None = None, *, download: bool = False,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a split of the scikit-learn digits as 1x8x8 images (1438 train, 359 test).

    ``root``, ``download`` and ``mirrors`` are accepted for a uniform loader signature and
    ignored: the data ships with scikit-learn.
    """
    split = check_split(split)
    bunch = sklearn_load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bunch.target))
    num_test = round(TEST_FRACTION * len(order))
    indices = np.sort(order[-num_test:] if split == "test" else order[:-num_test])
    return ArrayDataset(
        to_unit_float(bunch.images[indices, None], MAX_PIXEL),
        to_labels(bunch.target[indices]),
        NUM_CLASSES,
        split_name(NAME, split),
        tuple(str(digit) for digit in range(NUM_CLASSES)),
    )
