"""``train(config, run_dir)``: a whole experiment from a config, single- or multi-process.

``run_dir`` receives ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (latest and best,
see :mod:`deqshield.io.checkpoint`). The training split is divided by ``data.dev_fraction`` into a
training part and the dev part used for best-checkpoint selection.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import yaml
from torch import nn

from deqshield.io.atomic import replace_atomically
from deqshield.io.checkpoint import best_checkpoint, latest_checkpoint
from deqshield.io.config import ExperimentConfig, dump_config, load_config
from deqshield.data import ArrayDataset, dev_split, load_dataset
from deqshield.errors import InputError
from deqshield.io.runs import check_resumable
from deqshield.io.weights import weights_digest
from deqshield.training.distributed import Context, setup, teardown
from deqshield.training.loop import TrainHistory, Trainer


@dataclass
class TrainResult:
    """The trained model (final weights), this call's history and the best checkpoint."""

    model: nn.Module
    history: TrainHistory
    best_checkpoint: Optional[Path]


def train(config: Union[ExperimentConfig, str, Path], run_dir: Union[str, Path], *,
          resume: bool = False, data_dir: Optional[str] = None, download: bool = False,
          device: Optional[str] = None, progress: bool = True,
          digest_dir: Optional[Path] = None,
          on_step: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train the experiment ``config`` (object or YAML path) into ``run_dir``.

    ``resume`` continues from the latest checkpoint of ``run_dir`` (starting afresh if it has
    none); without it an existing checkpoint is an error. A resumed config must have the run's
    model section, and its checkpoint must fit the model, both checked before ``config.yaml``
    is rewritten. ``data_dir``/``download`` override the config's data root and download flag;
    the run's ``config.yaml`` records the data root used, so ``evaluate`` and ``certify`` find
    the data without ``--data-dir``. ``device``: e.g. ``cpu``, ``cuda:0`` (default: CUDA when
    available). ``digest_dir``: every process writes ``rank-<r>.sha256``, the digest of its
    final weights (to check that distributed replicas agree). ``on_step(step)`` runs after
    every optimizer step. Launched by ``torchrun``, the processes train one model together.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if data_dir is not None:  # the run remembers where its data came from
        config = config.model_copy(update={"data": config.data.model_copy(
            update={"root": str(Path(data_dir).resolve())})})
    run_dir = Path(run_dir)
    if not resume and latest_checkpoint(run_dir) is not None:
        raise InputError(f"{run_dir} already holds checkpoints; pass resume (--resume) to "
                         "continue that run, or choose a new directory")
    if resume:
        check_resumable(run_dir, config)
    context = setup(device)
    try:
        seed_everything(config.train.seed)
        train_part, dev_part = load_splits(config, data_dir, download, context)
        model = config.model.build(train_part.input_shape, train_part.num_classes)
        trainer = Trainer(model, train_part, dev_part, config.train, context, run_dir,
                          run_dir / "metrics.jsonl", dump_config(config), progress, on_step)
        if resume:
            trainer.resume()  # a checkpoint that does not fit the model fails before any write
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            replace_atomically(run_dir / "config.yaml", yaml.safe_dump(dump_config(config)))
        history = trainer.run()
        if digest_dir is not None:
            Path(digest_dir).mkdir(parents=True, exist_ok=True)
            (Path(digest_dir) / f"rank-{context.rank}.sha256").write_text(weights_digest(model))
        return TrainResult(model, history, best_checkpoint(run_dir))
    finally:
        teardown(context)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(config: ExperimentConfig, data_dir: Optional[str], download: bool,
                context: Context) -> tuple[ArrayDataset, Optional[ArrayDataset]]:
    """(training part, dev part or None) of the config's data set, with the config's limits on
    the training part and ``train.selection.limit`` on the dev part. Only the main process
    downloads; the others wait for it."""
    data = config.data
    root = data_dir or data.root
    if context.is_main:
        full = load_dataset(data.name, "train", root, download or data.download)
    context.barrier()
    if not context.is_main:
        full = load_dataset(data.name, "train", root)
    if data.dev_fraction == 0:
        train_part, dev_part = full, None
    else:
        train_part, dev_part = dev_split(full, data.dev_fraction, data.seed)
    if data.limit_train is not None:
        train_part = train_part.subset(range(min(data.limit_train, len(train_part))),
                                       f"{train_part.name}[:{data.limit_train}]")
    limit = config.train.selection.limit
    if dev_part is not None and limit is not None:
        dev_part = dev_part.subset(range(min(limit, len(dev_part))), f"{dev_part.name}[:{limit}]")
    return train_part, dev_part
