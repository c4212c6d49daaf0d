"""Durable partial records of a long job, so that it survives interruption and splits across
processes (used by ``deqshield smooth`` and ``deqshield evaluate``).

While a job runs, each process appends every finished piece of work as one JSON line to
``STEM-RANK.jsonl`` in the output folder, flushed and synced at once. The first line of each
file is the job's *header*: what identifies the job by content (the sha256 of the model's
weights, the data, the settings, the seed), not by where its files lie, so that a job resumes
from another checkout or machine. Resuming reads every such file whose header matches (a file
of another job is an error, never silently mixed in) and redoes a line torn by a crash. The
files are removed once the job's results are written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from deqshield.errors import OutputError


class PartialRecords:
    """The partial-record files ``STEM-*.jsonl`` of one kind of ``job`` (a noun for messages,
    e.g. ``certification``) in ``folder``."""

    def __init__(self, folder: Path, stem: str, job: str):
        self.folder = Path(folder)
        self.stem = stem
        self.job = job

    def files(self) -> list[Path]:
        """The partial-record files in the folder, sorted."""
        return sorted(self.folder.glob(f"{self.stem}-*.jsonl"))

    def load(self, header: dict[str, Any]) -> list[dict[str, Any]]:
        """Every record written by a job with this ``header``, file by file in order;
        :class:`OutputError` when a file belongs to a different job."""
        records: list[dict[str, Any]] = []
        expected = json.loads(json.dumps(header))
        for path in self.files():
            lines = path.read_text().splitlines()
            if not lines:
                continue
            if json.loads(lines[0]) != expected:
                raise OutputError(f"{path} holds a {self.job} with other settings, seed, data "
                                  "or weights; pass --force to start over, or choose another "
                                  "folder")
            for line in lines[1:]:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a crash: that work is redone
                    continue
        return records

    def log(self, rank: int, header: dict[str, Any], resume: bool) -> RecordLog:
        """This process's log; it starts anew unless ``resume`` (whose records the caller
        read with :meth:`load`, which checked the header)."""
        return RecordLog(self.folder / f"{self.stem}-{rank}.jsonl", header, resume)

    def remove(self) -> None:
        """Delete the partial-record files."""
        for path in self.files():
            path.unlink(missing_ok=True)


class RecordLog:
    """Appends one process's finished records to its partial file, durably, one per line. A
    new file left by an error before its first record is deleted (nothing to resume)."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        held = path.read_bytes() if resume and path.exists() else b""
        self.file = open(path, "a" if held else "w")
        if not held:
            self.append(header)
        elif not held.endswith(b"\n"):  # a line torn by a crash stays on its own line
            self.file.write("\n")
        self.empty = not held  # True until the file holds a record besides the header

    def append(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.empty = False

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, error_type: Optional[type], *exc: object) -> None:
        self.close()
        if error_type is not None and self.empty:
            self.path.unlink(missing_ok=True)
