"""The training loop: Adam with cosine decay, an objective, optional Jacobian regularisation,
a progress bar, metrics as JSON lines, and a clear stop when the run diverges."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deqshield.errors import DEQShieldError
from deqshield.gradients import jacobian_frobenius
from deqshield.models import DEQClassifier
from deqshield.training.objectives import ObjectiveSpec, Standard


class TrainingDivergedError(DEQShieldError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    eval_accuracy: Optional[float]
    residual: Optional[float]


@dataclass
class TrainHistory:
    epochs: list[EpochRecord] = field(default_factory=list)


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Clean accuracy of ``model`` (eval mode, deterministic solver) on ``data``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def fit(model: nn.Module, train_data: Dataset, *, epochs: int, batch_size: int, lr: float,
        objective: ObjectiveSpec = Standard(), eval_data: Optional[Dataset] = None,
        weight_decay: float = 0.0, grad_clip: Optional[float] = None,
        jacobian_weight: float = 0.0, jacobian_every: int = 1, seed: int = 0,
        metrics_path: Optional[Path] = None, progress: bool = True) -> TrainHistory:
    """Train ``model`` in place and return the per-epoch history."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    history = TrainHistory()
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        sums = {"loss": 0.0, "correct": 0, "seen": 0, "residual": 0.0}
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False,
                   mininterval=0.5)
        for x, y in bar:
            output = objective.loss(model, x, y)
            loss = output.loss
            if jacobian_weight > 0 and step % jacobian_every == 0 and output.trajectory:
                assert isinstance(model, DEQClassifier)
                penalty = jacobian_frobenius(model.cell_map(x), output.trajectory.final)
                loss = loss + jacobian_weight * penalty.mean()
            if not math.isfinite(float(loss.detach())):
                raise TrainingDivergedError(
                    f"loss became {float(loss.detach())} at epoch {epoch}, step {step}; lower the "
                    "learning rate, add Jacobian regularisation or use more solver steps")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            sums["loss"] += float(output.loss) * len(y)
            sums["correct"] += int((output.logits.argmax(1) == y).sum())
            sums["seen"] += len(y)
            if output.trajectory is not None:
                sums["residual"] += float(output.trajectory.rel_residual[-1]
                                          .nan_to_num(0.0).sum())
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                            acc=f"{sums['correct'] / sums['seen']:.3f}")
        record = EpochRecord(
            epoch=epoch, loss=sums["loss"] / sums["seen"],
            train_accuracy=sums["correct"] / sums["seen"],
            eval_accuracy=accuracy(model, eval_data) if eval_data is not None else None,
            residual=(sums["residual"] / sums["seen"]
                      if isinstance(model, DEQClassifier) else None))
        history.epochs.append(record)
        if metrics_path is not None:
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record.__dict__) + "\n")
        if progress:
            tqdm.write(f"epoch {epoch}: loss {record.loss:.4f}  train acc "
                       f"{record.train_accuracy:.3f}"
                       + (f"  dev acc {record.eval_accuracy:.3f}"
                          if record.eval_accuracy is not None else "")
                       + (f"  residual {record.residual:.2e}"
                          if record.residual is not None else ""))
    model.eval()
    return history
