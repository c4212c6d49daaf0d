"""The evaluation matrix: every defense (row) under every attack (column), per sample.

Each attack targets the defense's own prediction: AutoAttack runs on the straight-through model
(value of the readout, gradient of the attack's path), and PGD's examples are scored with the
readout. Only samples the defense classifies correctly are attacked; with ``early_exit`` also
samples an earlier attack already broke are skipped. Attacks act per sample and PGD's random
starts are drawn once per cell for every sample (not per batch), so the per-sample worst case
of an early-exit run equals the exhaustive run's. AutoAttack draws its own randomness per
batch; with AutoAttack columns the two runs agree in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.attacks.pgd import PGD
from deqshield.convergence import records_convergence
from deqshield.models import Classifier, DEQClassifier
from deqshield.protocol.specs import AttackSpec, defense_label
from deqshield.protocol.verdicts import SURVIVED, VerdictTable, as_verdict
from deqshield.readouts.base import Readout


def materialize(data: Dataset) -> tuple[Tensor, Tensor]:
    """All (x, y) of a data set as two tensors (evaluation sets fit in memory)."""
    xs, ys = zip(*DataLoader(data, batch_size=1024))
    return torch.cat(xs), torch.cat(ys)


def predict(model: Classifier, readout: Readout, x: Tensor, batch_size: int) -> Tensor:
    """The defense's predicted classes, computed in batches."""
    return torch.cat([readout.logits(model, part).argmax(dim=1)
                      for part in x.split(batch_size)])


def attack_batch(model: Classifier, readout: Readout, spec: AttackSpec, x: Tensor, y: Tensor,
                 start: Optional[Tensor]) -> tuple[Tensor, tuple[str, ...]]:
    """Adversarial examples against ``readout`` and the attack's findings; ``start`` holds
    PGD's per-sample random starts."""
    if isinstance(spec.attack, AutoAttackBridge):
        outcome = spec.attack.perturb(model, readout, spec.path, x, y)
        return outcome.x_adv, outcome.findings
    return spec.attack.perturb(model, x, y, spec.path, start=start), ()


def random_starts(spec: AttackSpec, x_all: Tensor, seed: int) -> Optional[Tensor]:
    """PGD's random starts for every sample, drawn once per cell from ``seed``: a sample's
    start does not depend on which other samples share its batch, so an early-exit run gives
    the same per-sample verdicts as the exhaustive one."""
    if not isinstance(spec.attack, PGD):
        return None
    return spec.attack.random_start_for(x_all, torch.Generator().manual_seed(seed))


def nonconverged_count(model: Classifier, x: Tensor) -> int:
    """Samples whose forward solve does not converge (0 for explicit networks)."""
    if not isinstance(model, DEQClassifier):
        return 0
    return int((~model.trajectory(x, record_states=False).converged).sum())


@records_convergence  # the nonconverged fraction of every cell is recorded and flagged
def evaluate_matrix(model: Classifier, data: Dataset, defenses: Sequence[Readout],
                    attacks: Sequence[AttackSpec], *, batch_size: int = 128,
                    early_exit: bool = False, seed: int = 0,
                    progress: bool = True) -> VerdictTable:
    """Per-sample verdicts of every (defense, attack) cell, with clean accuracy per defense."""
    model.eval()
    x_all, y_all = materialize(data)
    rows = [defense_label(readout) for readout in defenses]
    columns = [spec.title for spec in attacks]
    if len(set(rows)) < len(rows) or len(set(columns)) < len(columns):
        raise ValueError(f"defense and attack labels must be unique: {rows}, {columns}")
    table = VerdictTable(rows, columns, {}, {})
    per_cell = math.ceil(len(y_all) / batch_size)
    bar = tqdm(total=len(rows) * len(columns) * per_cell, disable=not progress,
               desc="evaluate", unit="batch")
    for row, readout in zip(rows, defenses):
        clean = predict(model, readout, x_all, batch_size) == y_all
        table.clean[row] = clean
        alive = clean.clone()
        for column, spec in zip(columns, attacks):
            bar.set_postfix_str(f"{row} vs {column}")
            attacked = alive.clone() if early_exit else clean
            survived, findings, unconverged = _run_cell(
                model, readout, spec, x_all, y_all, attacked, batch_size, seed, bar.update)
            bar.update(per_cell - math.ceil(int(attacked.sum()) / batch_size))
            verdict = as_verdict(survived, attacked, clean)
            table.verdicts[row, column] = verdict
            table.findings[row, column] = findings
            table.nonconverged[row, column] = unconverged / max(1, int(attacked.sum()))
            alive &= verdict == SURVIVED
    bar.close()
    return table


def _run_cell(model: Classifier, readout: Readout, spec: AttackSpec, x_all: Tensor,
              y_all: Tensor, attacked: Tensor, batch_size: int,
              seed: int, tick: Callable[[int], object]) -> tuple[Tensor, list[str], int]:
    """Attack the ``attacked`` samples batch by batch; (survived, findings, non-converged
    count). ``tick(1)`` is called after each batch."""
    starts = random_starts(spec, x_all, seed)
    survived = torch.zeros_like(attacked)
    findings: list[str] = []
    unconverged = 0
    indices = attacked.nonzero().squeeze(1)
    for part in indices.split(batch_size) if len(indices) else ():  # split() of [] gives [[]]
        x, y = x_all[part], y_all[part]
        x_adv, found = attack_batch(model, readout, spec, x, y,
                                    None if starts is None else starts[part])
        survived[part] = readout.logits(model, x_adv).argmax(dim=1) == y
        findings.extend(f for f in found if f not in findings)
        unconverged += nonconverged_count(model, x_adv)
        tick(1)
    return survived, findings, unconverged


def cell_examples(model: Classifier, readout: Readout, spec: AttackSpec, x: Tensor, y: Tensor,
                  *, batch_size: int = 128, seed: int = 0) -> Tensor:
    """Adversarial examples of one attack against one defense for all of (x, y)."""
    starts = random_starts(spec, x, seed)
    parts = torch.arange(len(y)).split(batch_size)
    return torch.cat([attack_batch(model, readout, spec, x[part], y[part],
                                   None if starts is None else starts[part])[0]
                      for part in parts])

