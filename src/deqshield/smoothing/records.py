"""Partial records of a smoothing certification, so that long runs survive interruption and
split across processes.

Each image's noise comes from its own generator, seeded by (seed, image index)
(:func:`image_generator`), so an image's certificate does not depend on which process certifies
it or on what was certified before: a resumed or sharded run gives the records one
uninterrupted process gives. While it runs, each process appends every finished record as one
JSON line to ``smoothing-records-RANK.jsonl`` in the output folder (first line: the header that
identifies the job by content: the run as named, the sha256 of the model's weights, the images,
the settings and the seed); ``--resume`` reads every such file whose header matches and
certifies only the images they lack, also on another machine or checkout. The files are removed once
``smoothing.json`` holds all records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from deqshield.errors import OutputError

PATTERN = "smoothing-records-*.jsonl"
"""The partial-record files of a certification in progress."""


def image_generator(seed: int, index: int) -> torch.Generator:
    """The noise generator of test image ``index`` under ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)


def partial_files(folder: Path) -> list[Path]:
    """The partial-record files in ``folder``, sorted."""
    return sorted(Path(folder).glob(PATTERN))


def load_partial(folder: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The records already written into ``folder`` by a job with this ``header``, by image
    index; :class:`OutputError` when a file there belongs to a different job."""
    done: dict[int, dict[str, Any]] = {}
    for path in partial_files(folder):
        lines = path.read_text().splitlines()
        if not lines:
            continue
        if json.loads(lines[0]) != json.loads(json.dumps(header)):
            raise OutputError(f"{path} holds a certification with other settings, seed, "
                              "images or weights; pass --force to start over, or choose "
                              "another folder")
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash: that image is redone
                continue
            done[int(record["index"])] = record
    return done


class RecordLog:
    """Appends this process's finished records to its partial file, durably, one per line;
    the file is started anew unless ``resume`` (its records were then read by
    :func:`load_partial`, which checked its header)."""

    def __init__(self, folder: Path, rank: int, header: dict[str, Any], resume: bool):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"smoothing-records-{rank}.jsonl"
        held = self.path.read_bytes() if resume and self.path.exists() else b""
        self.file = open(self.path, "a" if held else "w")
        if not held:
            self._write(header)
        elif not held.endswith(b"\n"):  # a line torn by a crash stays on its own line
            self.file.write("\n")

    def _write(self, item: dict[str, Any]) -> None:
        self.file.write(json.dumps(item) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        self._write(record)

    def close(self) -> None:
        self.file.close()


def remove_partial(folder: Path) -> None:
    """Delete the partial-record files in ``folder``."""
    for path in partial_files(folder):
        path.unlink(missing_ok=True)
