"""Dev-set metrics during training (checkpoint selection, the overfit guard): clean, PGD and
certified accuracy with the full deterministic solver.

Always in eval mode on the model itself (never a random-depth readout); the PGD random start
draws from a fresh generator with a fixed seed, so evaluating never consumes training
randomness and the same weights always get the same score.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deqshield.attacks.pgd import PGD
from deqshield.certify import CertifiableClassifier, certify
from deqshield.paths import FinalState

EVAL_SEED = 0


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512,
             device: Optional[torch.device] = None) -> float:
    """Clean accuracy of ``model`` (eval mode, deterministic solver) on ``data``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device or x.device), y.to(device or y.device)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def robust_accuracy(model: nn.Module, data: Dataset, attack: PGD, batch_size: int = 256,
                    device: Optional[torch.device] = None) -> float:
    """Robust accuracy under ``attack`` with the ready-made final-state gradient in the model's
    own training-gradient mode (``FinalState(gradient=None)``), in eval mode. A sample counts
    only if both x and its adversary are classified correctly (x is in the ball, and a
    random-start attack never evaluates it), so the figure never exceeds clean accuracy."""
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device or x.device), y.to(device or y.device)
        x_adv = attack.run(model, FinalState(), x, y, generator=generator).x_adv
        with torch.no_grad():
            correct += int(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).sum())
        total += len(y)
    return correct / max(total, 1)


def certified_accuracy(model: CertifiableClassifier, data: Dataset, eps: float,
                       clip: Optional[tuple[float, float]] = (0.0, 1.0), batch_size: int = 256,
                       device: Optional[torch.device] = None) -> float:
    """Fraction of ``data`` whose eps-box :func:`~deqshield.certify.certify` certifies for the
    true label (eval mode)."""
    model.eval()
    certified = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device or x.device), y.to(device or y.device)
        certified += int(certify(model, x, y, eps, clip)[0].sum())
        total += len(y)
    return certified / max(total, 1)
