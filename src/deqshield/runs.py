"""Load what ``deqshield train`` wrote: a run directory with ``config.yaml`` and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from torch import nn

from deqshield.checkpoint import CheckpointInfo, latest_checkpoint, load_checkpoint
from deqshield.config import ExperimentConfig, dump_config, load_config
from deqshield.data import ArrayDataset, load_dataset
from deqshield.errors import CheckpointError, ConfigError


@dataclass
class LoadedRun:
    """A trained model with its config, checkpoint record and test data."""

    config: ExperimentConfig
    model: nn.Module
    checkpoint: CheckpointInfo
    test: ArrayDataset


def run_config(run_dir: Path) -> ExperimentConfig:
    """The config of a trained run, without loading anything else; raises
    :class:`CheckpointError` if ``run_dir`` is no run or has no checkpoint yet."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a deqshield run: {config_path} is missing")
    config = load_config(config_path)
    if latest_checkpoint(run_dir) is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet (train it first, or continue "
                              "it with deqshield train CONFIG --out RUN --resume)")
    return config


def check_resumable(run_dir: Path, config: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` unless ``config`` can continue the run in ``run_dir``: a run
    with checkpoints continues only with the model section it was trained with (other
    sections, e.g. more epochs, may change). Reads only the run's config.yaml."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir) is None or not (run_dir / "config.yaml").is_file():
        return
    saved = dump_config(load_config(run_dir / "config.yaml"))["model"]
    given = dump_config(config)["model"]
    changed = sorted(key for key in saved.keys() | given.keys()
                     if saved.get(key) != given.get(key))
    if changed:
        details = ", ".join(f"{key}: run {saved.get(key)!r}, config {given.get(key)!r}"
                            for key in changed)
        raise ConfigError(f"cannot resume {run_dir}: the config's model differs from the "
                          f"run's ({details}); resume with {run_dir / 'config.yaml'}")


def load_run(run_dir: Path, *, which: Literal["best", "latest"] = "best",
             data_dir: Optional[str] = None) -> LoadedRun:
    """Build the run's model from its config and load the ``which`` checkpoint (``best``
    falls back to ``latest`` for runs without selection). The model is returned in eval mode."""
    config = run_config(run_dir)
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
