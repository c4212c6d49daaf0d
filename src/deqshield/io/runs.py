"""Load what ``deqshield train`` wrote: a run directory with ``config.yaml`` and checkpoints.

Wherever a run directory is accepted, ``zoo:NAME`` stands for the zoo model ``NAME``
(:mod:`deqshield.zoo`): its config, weights (sha256-checked) and the test data of its config.
A zoo model's package folder is no place to write: a command on it needs an output folder
(:func:`output_dir`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from torch import nn

from deqshield import zoo
from deqshield.io.checkpoint import CheckpointInfo, latest_checkpoint, load_checkpoint
from deqshield.io.config import ExperimentConfig, dump_config, load_config
from deqshield.data import ArrayDataset, load_dataset
from deqshield.errors import CheckpointError, ConfigError, InputError
from deqshield.zoo import store

ZOO_PREFIX = "zoo:"
RunPath = Union[str, Path]


@dataclass
class LoadedRun:
    """A trained model with its config, checkpoint record and test data."""

    config: ExperimentConfig
    model: nn.Module
    checkpoint: CheckpointInfo
    test: ArrayDataset


def zoo_name(run: RunPath) -> Optional[str]:
    """The model name of ``zoo:NAME``, or None for a run directory."""
    text = str(run)
    return text[len(ZOO_PREFIX):] if text.startswith(ZOO_PREFIX) else None


def output_dir(run: RunPath, out: Optional[RunPath], default: str = "") -> Path:
    """Where a command on ``run`` writes: ``out`` if given, else ``run/default``; a zoo model
    needs ``out`` (:class:`InputError` asking for ``--out``)."""
    if out is not None:
        return Path(out)
    if zoo_name(run) is not None:
        raise InputError(f"{run} is a packaged zoo model, not a folder to write in: pass --out")
    return Path(run) / default


def run_config(run_dir: RunPath) -> ExperimentConfig:
    """The config of a trained run (or zoo model), without loading anything else; raises
    :class:`CheckpointError` if ``run_dir`` is no run or has no checkpoint yet."""
    name = zoo_name(run_dir)
    if name is not None:
        return zoo.config(name)
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


def load_run(run_dir: RunPath, *, which: Literal["best", "latest"] = "best",
             data_dir: Optional[str] = None) -> LoadedRun:
    """Build the run's model from its config and load the ``which`` checkpoint (``best``
    falls back to ``latest`` for runs without selection), or load zoo model ``zoo:NAME``
    (its one set of weights: ``which`` must be ``best``). The model is returned in eval mode
    with the test data of the config (``data_dir`` overrides its root)."""
    name = zoo_name(run_dir)
    if name is not None and which != "best":
        raise InputError(f"{run_dir} holds the weights of its run's best checkpoint only; "
                         f"which={which!r} does not apply")
    config = run_config(run_dir)
    test = load_dataset(config.data.name, "test", data_dir or config.data.root,
                        config.data.download)
    if name is not None:
        model, card = zoo.load(name)
        info = CheckpointInfo(store.model_dir(name) / store.WEIGHTS, card.training.step,
                              card.training.epoch, dump_config(config), {})
        return LoadedRun(config, model, info, test)
    model = config.model.build(test.input_shape, test.num_classes)
    try:
        info = load_checkpoint(run_dir, model=model, which=which, restore_rng=False)
    except CheckpointError:
        if which != "best":
            raise
        info = load_checkpoint(run_dir, model=model, which="latest", restore_rng=False)
    model.eval()
    return LoadedRun(config, model, info, test)
