"""Load what ``deqshield train`` wrote: a run directory with ``config.yaml`` and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from torch import nn

from deqshield.checkpoint import CheckpointInfo, load_checkpoint
from deqshield.config import ExperimentConfig, load_config
from deqshield.data import ArrayDataset, load_dataset
from deqshield.errors import CheckpointError


@dataclass
class LoadedRun:
    """A trained model with its config, checkpoint record and test data."""

    config: ExperimentConfig
    model: nn.Module
    checkpoint: CheckpointInfo
    test: ArrayDataset


def load_run(run_dir: Path, *, which: Literal["best", "latest"] = "best",
             data_dir: Optional[str] = None) -> LoadedRun:
    """Build the run's model from its config and load the ``which`` checkpoint (``best``
    falls back to ``latest`` for runs without selection). The model is returned in eval mode."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a deqshield run: {config_path} is missing")
    config = load_config(config_path)
    test = load_dataset(config.data.name, "test", data_dir or config.data.root,
                        config.data.download)
    model = config.model.build(test.input_shape, test.num_classes)
    try:
        info = load_checkpoint(run_dir, model=model, which=which, restore_rng=False)
    except CheckpointError:
        if which != "best":
            raise
        info = load_checkpoint(run_dir, model=model, which="latest", restore_rng=False)
    model.eval()
    return LoadedRun(config, model, info, test)
