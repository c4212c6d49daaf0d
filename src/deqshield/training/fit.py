"""``fit``: train a model in place from Python, without a config file or checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from deqshield.data import ArrayDataset
from deqshield.training.distributed import Context
from deqshield.training.loop import TrainHistory, Trainer
from deqshield.training.objective_spec import ObjectiveSpec
from deqshield.training.objectives import Standard


def fit(model: nn.Module, train_data: ArrayDataset, *, epochs: int, batch_size: int, lr: float,
        objective: ObjectiveSpec = Standard(), eval_data: Optional[ArrayDataset] = None,
        weight_decay: float = 0.0, grad_clip: Optional[float] = None,
        jacobian_weight: float = 0.0, jacobian_every: int = 1, seed: int = 0,
        metrics_path: Optional[Path] = None, progress: bool = True) -> TrainHistory:
    """Train ``model`` in place (single process, CPU) and return the per-epoch history; the dev
    metric is the clean accuracy on ``eval_data``. Use :func:`deqshield.training.run.train`
    for checkpoints, resume, robust selection and multiple processes."""
    from deqshield.io.config import SelectionConfig, TrainConfig

    settings = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, objective=objective,
                           weight_decay=weight_decay, grad_clip=grad_clip,
                           jacobian_weight=jacobian_weight, jacobian_every=jacobian_every,
                           seed=seed, selection=SelectionConfig(metric="clean"))
    trainer = Trainer(model, train_data, eval_data, settings, Context(0, 1, torch.device("cpu")),
                      metrics_path=metrics_path, progress=progress)
    return trainer.run()
