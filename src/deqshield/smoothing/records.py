"""Partial records of a smoothing certification, so that long runs survive interruption and
split across processes.

Each image's noise comes from its own generator, seeded by (seed, image index)
(:func:`image_generator`), so an image's certificate does not depend on which process certifies
it or on what was certified before: a resumed or sharded run gives the records one
uninterrupted process gives. While it runs, each process appends every finished image's record
to ``smoothing-records-RANK.jsonl`` in the output folder (:mod:`deqshield.io.records`; header:
the run as named, the sha256 of the model's weights, the images, the settings and the seed);
``--resume`` certifies only the images those files lack, also on another machine or checkout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deqshield.io.records import PartialRecords


def image_generator(seed: int, index: int) -> torch.Generator:
    """The noise generator of test image ``index`` under ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)


def smoothing_records(folder: Path) -> PartialRecords:
    """The partial records of a certification into ``folder``."""
    return PartialRecords(folder, "smoothing-records", "certification")
