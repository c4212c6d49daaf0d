"""Validated experiment configuration files (YAML).

An experiment config has three sections; every key is checked and unknown keys are rejected
(a misspelt key is an error, never silently ignored)::

    data:  {name: digits, root: null, download: false, dev_fraction: 0.1, seed: 0}
    model: {name: conv-deq, channels: 16, solver: {name: anderson, max_iter: 12}, ...}
    train: {epochs: 10, batch_size: 64, lr: 1.0e-3, ...}

The ``model`` section is one of the model settings classes (see ``deqshield.models``), whose
fields are the model's constructor arguments, so the file and the Python API are the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deqshield.errors import ConfigError
from deqshield.models import ModelSpec


class Section(BaseModel):
    """Base of config sections: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """Which data set, where it lives, and the held-out development split."""

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    dev_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    seed: int = 0
    limit_train: Optional[Annotated[int, Field(ge=1)]] = None
    limit_test: Optional[Annotated[int, Field(ge=1)]] = None


class TrainConfig(Section):
    """Optimisation settings (Adam with cosine decay, as in the papers)."""

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Optional[Annotated[float, Field(gt=0)]] = None
    jacobian_weight: Annotated[float, Field(ge=0)] = 0.0
    jacobian_every: Annotated[int, Field(ge=1)] = 1
    seed: int = 0


class ExperimentConfig(Section):
    """A whole experiment: data, model and training."""

    data: DataConfig = DataConfig()
    model: ModelSpec
    train: TrainConfig = TrainConfig()


def parse_config(raw: Union[dict[str, Any], None], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming ``source`` and each error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections data/model/train, "
                          f"got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_config(path: Union[str, Path]) -> ExperimentConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(raw, str(path))


def dump_config(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain mapping (JSON/YAML-able) that ``parse_config`` reads back."""
    return config.model_dump(mode="json")
