"""Small test slices shipped with the package, for offline checks of zoo models.

``zoo/data/{mnist,fashion-mnist}-test-256.safetensors``: the first 256 images (uint8, 1x28x28)
and labels of the official MNIST / Fashion-MNIST test sets (sources, checksums and sha256:
``zoo/data/README.md``).
:func:`test_slice` checks the file's sha256 before it is used; :func:`slice_predictions` is
what a card records in ``slice_predictions``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch
from torch import nn

from deqshield.data import ArrayDataset
from deqshield.data.mnist import CLASS_NAMES
from deqshield.errors import DataError, InputError

DATA = Path(__file__).resolve().parent / "data"
SLICES: dict[str, tuple[str, str]] = {
    "mnist": ("mnist-test-256.safetensors",
              "ec5ca14252404c49ab1f08d1d989148999555739cae396cb6f34679e550e7d76"),
    "fashion-mnist": ("fashion-mnist-test-256.safetensors",
                      "3cc9e03372583e0b55c52d1c7edea249873edf46f9e63fda926aa2f835ebb4c2"),
}
"""File and sha256 of each data set's slice."""
PREDICTED = 64
"""Images of the slice whose predicted labels a card records."""


def test_slice(dataset: str) -> ArrayDataset:
    """The shipped test slice of ``dataset`` (float images in [0, 1], int64 labels), after
    checking its sha256; :class:`InputError` for a data set without a slice."""
    if dataset not in SLICES:
        raise InputError(f"no test slice for {dataset!r} (slices: {', '.join(SLICES)})")
    file, expected = SLICES[dataset]
    data = (DATA / file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(f"{DATA / file} has sha256 {digest}, expected {expected}")
    tensors = safetensors.torch.load(data)
    return ArrayDataset(tensors["images"].float() / 255, tensors["labels"].long(),
                        len(CLASS_NAMES[dataset]), f"{dataset}/test[:{len(tensors['labels'])}]",
                        CLASS_NAMES[dataset])


def slice_predictions(model: nn.Module, dataset: str) -> Optional[tuple[int, ...]]:
    """The labels ``model`` (in eval mode) predicts for the first :data:`PREDICTED` images of
    the slice of ``dataset`` (None when the data set has no slice)."""
    if dataset not in SLICES:
        return None
    with torch.no_grad():
        logits = model(test_slice(dataset).images[:PREDICTED])
    return tuple(int(label) for label in logits.argmax(dim=1))
