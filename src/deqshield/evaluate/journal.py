"""The evaluation journal: every attacked batch's outcome is kept at once, so that an
interrupted ``deqshield evaluate`` resumes where it stopped (``--resume``), also on another
machine, and a protocol that takes hours is never lost to a closed session.

Each process appends, per batch an attack finished, the samples, their verdicts per defense
(broken, witness unconverged) and the findings to ``evaluation-journal-RANK.jsonl`` in the
output folder (:mod:`deqshield.io.records`; header: the sha256 of the model's weights, its
solver and the evaluation's settings). A batch is filed under its column's *key*, a digest of
everything its outcome depends on besides the model: the evaluated images and labels, the
defenses, the attack with all its settings and its gradient path, the samples the column
attacks (with early exit: those no earlier column broke) and the seed of the random starts.
The matrix runs its columns in a fixed order and draws each column's random starts per sample
(:func:`~deqshield.evaluate.matrix.column_starts`), so replaying the journal recreates the
early-exit bookkeeping of the interrupted run and the resumed run attacks the remaining
samples with the starts the uninterrupted run would have used: the same per-sample verdicts
(AutoAttack draws its randomness per batch: equal in distribution).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from deqshield.evaluate.specs import AttackSpec, describe
from deqshield.io.records import PartialRecords, RecordLog


def evaluation_records(folder: Path) -> PartialRecords:
    """The journal files of an evaluation into ``folder``."""
    return PartialRecords(folder, "evaluation-journal", "evaluation")


class Journal:
    """The batches journaled so far, by column key, and this process's log (None: nothing is
    kept, the default outside :func:`journaling`)."""

    def __init__(self, records: Iterable[dict[str, Any]] = (),
                 log: Optional[RecordLog] = None):
        self.batches: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            self.batches.setdefault(record["key"], []).append(record)
        self.log = log

    def replay(self, key: str) -> list[dict[str, Any]]:
        """The journaled batches of the column with this key."""
        return self.batches.get(key, [])

    def keep(self, key: str, samples: Tensor, broken: Tensor, unconverged: Tensor,
             findings: Sequence[str]) -> None:
        """Journal one attacked batch: sample indices (B,), broken and unconverged (D, B)."""
        if self.log is not None:
            self.log.append({"key": key, "samples": samples.tolist(),
                             "broken": broken.int().tolist(),
                             "unconverged": unconverged.int().tolist(),
                             "findings": list(findings)})


_CURRENT: ContextVar[Journal] = ContextVar("deqshield_journal", default=Journal())


@contextmanager
def journaling(journal: Journal) -> Iterator[Journal]:
    """Make ``journal`` the one :func:`current_journal` returns inside the block."""
    token = _CURRENT.set(journal)
    try:
        yield journal
    finally:
        _CURRENT.reset(token)


def current_journal() -> Journal:
    """The journal of the evaluation running in this context."""
    return _CURRENT.get()


def column_key(x: Tensor, y: Tensor, defenses: Sequence[str], spec: AttackSpec,
               attacked: Tensor, seed: int) -> str:
    """The digest a column's batches are filed under (see the module docstring); ``attacked``
    is the (D, N) mask of the (defense, sample) pairs the column attacks, over all processes."""
    digest = hashlib.sha256()
    for tensor in (x, y, attacked):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr((list(defenses), describe(spec.attack), spec.title, seed)).encode())
    return digest.hexdigest()


def replayed(record: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """A journaled batch as tensors: samples (B,), broken and unconverged (D, B)."""
    return (torch.tensor(record["samples"], dtype=torch.long),
            torch.tensor(record["broken"], dtype=torch.bool),
            torch.tensor(record["unconverged"], dtype=torch.bool))
