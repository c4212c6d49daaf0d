"""The evaluation matrix: every defense (row) under every attack (column), per sample.

Each attack targets the defense's own prediction: PGD's iterates are scored by every defense
(best iterate over iterates and restarts; one PGD run serves all defenses, since its iterates
depend only on the gradient path), and AutoAttack runs on the straight-through model of each
defense (value of the readout, gradient of the attack's path). Only samples a defense
classifies correctly count as attacked for it. With ``early_exit`` a column attacks, for each
defense, only the samples it has not lost yet (one PGD run serves every defense that still
needs a sample; AutoAttack runs against a defense only on its own), so strong attacks first
make the weak ones cheap.
Attacks act per sample, and their randomness (PGD's random starts) is drawn once per column
for every sample, not per batch (each column from its own seed), so an early-exit run gives
the same per-sample verdicts as the exhaustive one; AutoAttack draws its own randomness per
batch (equal in distribution), from a seed drawn per column as well.
Under ``torchrun`` each process attacks its shard of the samples
(:mod:`deqshield.sharding`) and every column's outcomes are merged.
Progress shows two bars: the columns done (no ETA: their costs differ by orders of magnitude,
a full-unroll APGD-T column costs hundreds of PGD-10 columns) and, below it, the current
column's samples, whose rate and ETA count only the samples attacked in this run (batches
replayed from the journal are its starting count, not its speed).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deqshield.convergence import records_convergence
from deqshield.attacks.base import AttackResult
from deqshield.models import Classifier, DEQClassifier
from deqshield.sharding import Shard, current_shard
from deqshield.evaluate.journal import column_key, current_journal, replayed
from deqshield.evaluate.specs import AttackSpec, defense_label
from deqshield.evaluate.verdicts import SURVIVED, VerdictTable, as_verdict
from deqshield.readouts.base import Readout, predicted_classes


def materialize(data: Dataset) -> tuple[Tensor, Tensor]:
    """All (x, y) of a data set as two tensors (evaluation sets fit in memory)."""
    xs, ys = zip(*DataLoader(data, batch_size=1024))
    return torch.cat(xs), torch.cat(ys)


def predict(model: Classifier, readout: Readout, x: Tensor, batch_size: int) -> Tensor:
    """The defense's predicted classes, computed in batches."""
    return torch.cat([predicted_classes(readout.logits(model, part))
                      for part in x.split(batch_size)])


def sharded_correct(model: Classifier, readout: Readout, x: Tensor, y: Tensor,
                    batch_size: int, shard: Shard) -> Tensor:
    """Per sample: the defense classifies x correctly (each process predicts its shard)."""
    correct = torch.zeros(len(y), dtype=torch.bool)
    mine = shard.owns(len(y))
    if mine.any():
        correct[mine] = predict(model, readout, x[mine], batch_size) == y[mine]
    return shard.merge(correct)


def column_starts(spec: AttackSpec, x_all: Tensor, seed: int) -> Optional[Tensor]:
    """The attack's per-sample randomness for every sample, drawn once per column from the
    run's ``seed`` and the column's title (a stable hash), so that the columns' random starts
    are independent of each other and equal in every process (None if the attack draws its
    own)."""
    column_seed = seed * 1_000_003 + zlib.crc32(spec.title.encode())
    return spec.attack.starts(x_all, torch.Generator().manual_seed(column_seed))


def nonconverged(model: Classifier, x: Tensor) -> Tensor:
    """Per sample: the forward solve of x does not converge (all False for explicit nets)."""
    if not isinstance(model, DEQClassifier):
        return torch.zeros(len(x), dtype=torch.bool)
    return ~model.trajectory(x, record_states=False).converged


def witness_nonconverged(model: Classifier, result: AttackResult) -> Tensor:
    """(D, B): the forward solve of each defense's witness does not converge. The final
    examples are solved once; only witnesses that differ from them are solved again."""
    final = nonconverged(model, result.x_adv)
    flags = final.expand(len(result.witnesses), -1).clone()
    for d, witnesses in enumerate(result.witnesses):
        differs = (witnesses != result.x_adv).flatten(1).any(dim=1)
        if differs.any():
            flags[d, differs] = nonconverged(model, witnesses[differs])
    return flags


@records_convergence  # the nonconverged fraction of every cell is recorded and flagged
def evaluate_matrix(model: Classifier, data: Dataset, defenses: Sequence[Readout],
                    attacks: Sequence[AttackSpec], *, batch_size: int = 128,
                    early_exit: bool = False, seed: int = 0,
                    progress: bool = True) -> VerdictTable:
    """Per-sample verdicts of every (defense, attack) cell, with clean accuracy per defense;
    the columns run in the given order."""
    model.eval()
    x_all, y_all = materialize(data)
    rows = [defense_label(readout) for readout in defenses]
    columns = [spec.title for spec in attacks]
    if len(set(rows)) < len(rows) or len(set(columns)) < len(columns):
        raise ValueError(f"defense and attack labels must be unique: {rows}, {columns}")
    table = VerdictTable(rows, columns, {}, {})
    shard = current_shard()
    clean = torch.stack([sharded_correct(model, readout, x_all, y_all, batch_size, shard)
                         for readout in defenses])
    table.clean.update(zip(rows, clean))
    alive = clean.clone()
    shown = progress and shard.is_main
    bar = tqdm(total=len(columns), disable=not shown, desc="evaluate", unit="attack",
               bar_format="{desc}: {n}/{total} attacks [{elapsed}]{postfix}")
    for column, spec in zip(columns, attacks):
        bar.set_postfix_str(column)
        attacked = alive if early_exit else clean
        key = column_key(x_all, y_all, rows, spec, attacked, seed)
        pending = attacked & shard.owns(len(y_all))
        broken, unconverged, findings = _run_column(model, defenses, spec, x_all, y_all,
                                                    pending, batch_size, seed, shown, key)
        broken, unconverged = shard.merge(broken), shard.merge(unconverged)
        findings = shard.merge_lists(findings)
        bar.update()
        for d, row in enumerate(rows):
            attacked = (alive[d] if early_exit else clean[d]).clone()
            verdict = as_verdict(~broken[d], attacked, clean[d])
            table.verdicts[row, column] = verdict
            table.findings[row, column] = findings
            table.nonconverged[row, column] = (int((unconverged[d] & attacked).sum())
                                               / max(1, int(attacked.sum())))
            alive[d] &= verdict == SURVIVED
    bar.close()
    return table


def _run_column(model: Classifier, defenses: Sequence[Readout], spec: AttackSpec,
                x_all: Tensor, y_all: Tensor, pending: Tensor, batch_size: int, seed: int,
                progress: bool, key: str) -> tuple[Tensor, Tensor, list[str]]:
    """Attack the ``pending`` (defense, sample) pairs (D, N), batch by batch: (broken (D, N),
    unconverged (D, N): the witness's forward solve does not converge, findings). The batches
    the evaluation journal holds under ``key`` are replayed (the progress bar's starting
    count), the others attacked and journaled (:mod:`deqshield.evaluate.journal`)."""
    starts = column_starts(spec, x_all, seed)
    broken = torch.zeros(len(defenses), len(y_all), dtype=torch.bool)
    unconverged = torch.zeros_like(broken)
    findings: list[str] = []
    journal = current_journal()
    total = int(pending.any(dim=0).sum())
    pending = pending.clone()
    for record in journal.replay(key):
        part, part_broken, part_unconverged = replayed(record)
        mine = pending[:, part].any(dim=0)  # another process's batch is merged from it
        part = part[mine]
        broken[:, part] = part_broken[:, mine]
        unconverged[:, part] = part_unconverged[:, mine]
        pending[:, part] = False
        findings.extend(f for f in record["findings"] if f not in findings)
    indices = pending.any(dim=0).nonzero().squeeze(1)
    samples = tqdm(total=total, initial=total - len(indices), disable=not progress,
                   desc="  samples", unit="sample", leave=False)
    for part in indices.split(batch_size) if len(indices) else ():  # split() of [] gives [[]]
        result = spec.attack.run(model, spec.path, x_all[part], y_all[part], defenses=defenses,
                                 start=None if starts is None else starts[:, part],
                                 pending=pending[:, part])
        broken[:, part] = result.broken
        unconverged[:, part] = witness_nonconverged(model, result)
        findings.extend(f for f in result.findings if f not in findings)
        journal.keep(key, part, broken[:, part], unconverged[:, part], result.findings)
        samples.update(len(part))
    samples.close()
    return broken, unconverged, findings


def cell_examples(model: Classifier, readout: Readout, spec: AttackSpec, x: Tensor, y: Tensor,
                  *, batch_size: int = 128, seed: int = 0) -> Tensor:
    """Adversarial examples of one attack against one defense for all of (x, y): the first
    example that broke the defense, else the attack's final example."""
    starts = column_starts(spec, x, seed)
    parts = torch.arange(len(y)).split(batch_size)
    return torch.cat([spec.attack.run(model, spec.path, x[part], y[part], defenses=(readout,),
                                      start=None if starts is None else starts[:, part]
                                      ).witnesses[0]
                      for part in parts])
