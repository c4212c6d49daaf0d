"""Per-state diagnostics of a DEQ's trajectory on a data set.

For every solver state z_n (n = 0..N) the head's prediction is scored, giving the clean
accuracy per state (the "Clean Acc." row of Table 5 in closer-look-neurips22), the mean relative
residual ||f(z_n) - z_n|| / ||f(z_n)|| (Fig. 2b) and the mean prediction entropy
H(z_n) = -sum_c p_c log p_c with p = softmax(head(z_n)) (Eq. 6 of regulating-dynamics-icml23).
States are streamed through the solver's callback, so memory is O(1) in N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deqshield.models import DEQClassifier
from deqshield.solvers import FixedPointSolver, SolverStep


def prediction_entropy(logits: Tensor) -> Tensor:
    """H = -sum_c p_c log p_c per sample, p = softmax(logits)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@dataclass
class StateStatistics:
    """Per-state means over a data set (index n = state z_n)."""

    accuracy: list[float]
    relative_residual: list[float]
    entropy: list[float]
    converged_fraction: float
    samples: int

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "relative_residual": self.relative_residual,
                "entropy": self.entropy, "converged_fraction": self.converged_fraction,
                "samples": self.samples}


def state_statistics(model: DEQClassifier, data: Dataset, *, batch_size: int = 256,
                     solver: Optional[FixedPointSolver] = None) -> StateStatistics:
    """Accuracy, relative residual and entropy of every solver state over ``data``."""
    correct: list[Tensor] = []  # one (T_b + 1,) tensor of per-state sums per batch
    entropy: list[Tensor] = []
    residual: list[Tensor] = []
    converged = total = 0
    model.eval()
    for x, y in DataLoader(data, batch_size=batch_size):
        per_correct: list[Tensor] = []
        per_entropy: list[Tensor] = []

        def score(step: SolverStep) -> None:
            logits = model.head(step.state)
            per_correct.append((logits.argmax(1) == y).sum())
            per_entropy.append(prediction_entropy(logits).sum())

        with torch.no_grad():
            trajectory = model.trajectory(x, solver=solver, record_states=False, callback=score)
        correct.append(torch.stack(per_correct).double())
        entropy.append(torch.stack(per_entropy).double())
        residual.append(trajectory.rel_residual.double().nan_to_num(0.0).sum(dim=1))
        converged += int(trajectory.converged.sum())
        total += len(y)
    return StateStatistics(
        accuracy=_per_state_mean(correct, total),
        relative_residual=_per_state_mean(residual, total),
        entropy=_per_state_mean(entropy, total),
        converged_fraction=converged / total, samples=total)


def _per_state_mean(batch_sums: list[Tensor], total: int) -> list[float]:
    """Sum per-state batch sums over batches and divide by ``total``. A batch whose solve
    stopped early (all samples converged) keeps its last state for the remaining steps, so its
    sums are padded with their last value."""
    length = max(len(sums) for sums in batch_sums)
    padded = [torch.cat([sums, sums[-1:].expand(length - len(sums))]) for sums in batch_sums]
    return (torch.stack(padded).sum(dim=0) / total).tolist()
