"""Per-state diagnostics of a DEQ's trajectory (the neural dynamics) on a data set.

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
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deqshield.attacks.pgd import PGD
from deqshield.models import DEQClassifier
from deqshield.paths.base import GradientPath
from deqshield.paths.final_state import FinalState
from deqshield.readouts.entropy import EntropyReduction, prediction_entropy
from deqshield.solvers import FixedPointSolver, SolverStep


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


def adversarial_dataset(model: nn.Module, data: Dataset, attack: PGD,
                        path: Optional[GradientPath] = None, *, batch_size: int = 256,
                        seed: int = 0) -> TensorDataset:
    """(x_adv, y) crafted by ``attack`` with ``path`` (default: the ready-made final-state
    gradient) against every batch of ``data``; reproducible through ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    model.eval()
    for x, y in DataLoader(data, batch_size=batch_size):
        xs.append(attack.run(model, path or FinalState(), x, y, generator=generator).x_adv)
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def robustness_accumulation(model: DEQClassifier, data: Dataset, attack: PGD,
                            path: Optional[GradientPath] = None, *, batch_size: int = 256,
                            seed: int = 0) -> dict[str, list[float]]:
    """Clean and robust accuracy of every state z_n under a ready-made attack (crafted once
    with the final-state gradient, scored at every state): Fig. 2a and Table 5 of
    closer-look-neurips22. Intermediate states that look more robust than the final one
    under a ready-made attack are the "robustness accumulation" sign of gradient obfuscation."""
    clean = state_statistics(model, data, batch_size=batch_size)
    adversarial = adversarial_dataset(model, data, attack, path, batch_size=batch_size,
                                      seed=seed)
    robust = state_statistics(model, adversarial, batch_size=batch_size)
    return {"clean_accuracy": clean.accuracy, "robust_accuracy": robust.accuracy,
            "clean_entropy": clean.entropy, "robust_entropy": robust.entropy,
            "relative_residual": clean.relative_residual,
            "robust_relative_residual": robust.relative_residual}


def dynamics_deviation(model: DEQClassifier, x: Tensor, x_perturbed: Tensor) -> list[float]:
    """Mean relative deviation ||z~_n - z_n|| / ||z_n|| of the perturbed from the clean
    trajectory at every state (Fig. 3c of regulating-dynamics-icml23; z_0 = 0 is skipped)."""
    clean = model.trajectory(x).states
    perturbed = model.trajectory(x_perturbed).states
    length = max(len(clean), len(perturbed))
    clean += [clean[-1]] * (length - len(clean))
    perturbed += [perturbed[-1]] * (length - len(perturbed))
    return [float(((p - c).flatten(1).norm(dim=1) / c.flatten(1).norm(dim=1).clamp_min(1e-12))
                  .mean()) for c, p in zip(clean[1:], perturbed[1:])]


def entropy_change(model: DEQClassifier, defense: EntropyReduction, x: Tensor) -> list[float]:
    """Mean change of prediction entropy H(z_n) per state caused by the entropy-reduction
    defense, Delta H(z_n) = H(regulated z_n) - H(plain z_n) (Fig. 3b of
    regulating-dynamics-icml23); negative values mean the defense lowered the entropy."""
    plain = model.trajectory(x).states
    plain += [plain[-1]] * (model.deq.solver.max_iter + 1 - len(plain))
    regulated = defense.regulate(model, x).states
    with torch.no_grad():
        return [float((prediction_entropy(model.head(r)) - prediction_entropy(model.head(p)))
                      .mean()) for p, r in zip(plain[1:], regulated[1:])]
