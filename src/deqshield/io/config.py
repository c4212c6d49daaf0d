"""Validated experiment configuration files (YAML).

An experiment config has three sections; every key is checked and unknown keys are rejected
(a misspelt key is an error, never silently ignored)::

    data:  {name: digits, root: null, download: false, dev_fraction: 0.1, seed: 0}
    model: {name: conv-deq, channels: 16, solver: {name: anderson, max_iter: 12}, ...}
    train: {epochs: 10, batch_size: 64, lr: 1.0e-3, objective: {name: pgd-at, ...}, ...}

The ``model`` section is one of the model settings classes (see ``deqshield.models``), whose
fields are the model's constructor arguments, so the file and the Python API are the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deqshield.attacks.pgd import PGD, READY_MADE
from deqshield.certify import CerDEQSettings, CNN7Settings
from deqshield.errors import ConfigError
from deqshield.models import ModelSpec
from deqshield.training.objective_spec import ObjectiveSpec
from deqshield.training.objectives import Certified, Standard
from deqshield.validation import SEED_LIMIT


class Section(BaseModel):
    """Base of config sections: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]

class DataConfig(Section):
    """Which data set, where it lives, and the held-out development split."""

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    dev_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    seed: Seed = 0
    limit_train: Optional[Annotated[int, Field(ge=1)]] = None


class SelectionConfig(Section):
    """Best-checkpoint selection on the dev split, after every epoch: ``metric`` ``robust`` is
    the accuracy under ``attack`` (ready-made PGD-10 at the final state with the model's training
    gradient and the full deterministic solver), ``clean`` the clean accuracy, ``certified``
    the certified accuracy at the certified objective's ``test_eps`` (else its schedule's
    target; certified training only); on at most ``limit`` dev examples (None: all)."""

    metric: Literal["robust", "clean", "certified"] = "robust"
    attack: PGD = READY_MADE
    limit: Optional[Annotated[int, Field(ge=1)]] = 512
    batch_size: Annotated[int, Field(ge=1)] = 256


class OverfitGuard(Section):
    """Guard against catastrophic overfitting (one-step adversarial training, Wong et al.
    2020): when the dev robust accuracy of an epoch falls more than ``drop`` below the best so
    far, the best weights are restored and training stops (saying so). Needs
    ``selection.metric: robust``."""

    drop: Annotated[float, Field(gt=0, le=1)] = 0.2


class TrainConfig(Section):
    """Optimisation settings (Adam with per-step cosine decay, as in the papers).

    ``objective``: standard / pgd-at / trades / certified / gaussian-noise (see
    :mod:`deqshield.training.objectives`).
    Jacobian regularisation adds ``jacobian_weight * ||df/dz||_F^2 / d`` every
    ``jacobian_every`` steps in epochs before ``jacobian_stop_epoch`` (None: never stops).
    The first ``pretrain_steps`` steps train the weight-tied network of ``pretrain_depth``
    unrolled iterations (gradient ``Backprop(steps=pretrain_depth)``) on clean inputs.
    A checkpoint is written after every epoch and every ``checkpoint_every`` steps; the newest
    ``keep_last`` are kept, plus the best. The run stops (keeping the last good checkpoint)
    when the loss is not finite or the batch mean relative residual exceeds
    ``divergence_residual``.
    """

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Optional[Annotated[float, Field(gt=0)]] = None
    objective: ObjectiveSpec = Standard()
    jacobian_weight: Annotated[float, Field(ge=0)] = 0.0
    jacobian_every: Annotated[int, Field(ge=1)] = 1
    jacobian_stop_epoch: Optional[Annotated[int, Field(ge=1)]] = None
    pretrain_steps: Annotated[int, Field(ge=0)] = 0
    pretrain_depth: Annotated[int, Field(ge=1)] = 8
    checkpoint_every: Optional[Annotated[int, Field(ge=1)]] = None
    keep_last: Annotated[int, Field(ge=1)] = 2
    divergence_residual: Optional[Annotated[float, Field(gt=0)]] = None
    selection: SelectionConfig = SelectionConfig()
    overfit_guard: Optional[OverfitGuard] = None
    seed: Seed = 0

    @model_validator(mode="after")
    def _overfit_guard_needs_robust_selection(self) -> "TrainConfig":
        if self.overfit_guard is not None and self.selection.metric != "robust":
            raise ValueError("overfit_guard watches the dev robust accuracy: it needs "
                             "selection.metric 'robust'")
        return self

    @model_validator(mode="after")
    def _certified_selection_needs_certified_training(self) -> "TrainConfig":
        if self.selection.metric == "certified" and not isinstance(self.objective, Certified):
            raise ValueError("selection.metric 'certified' needs objective 'certified' (it "
                             "names the certified radius)")
        return self


class ExperimentConfig(Section):
    """A whole experiment: data, model and training."""

    data: DataConfig = DataConfig()
    model: ModelSpec
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _certified_training_needs_certifiable_model(self) -> "ExperimentConfig":
        if (isinstance(self.train.objective, Certified)
                and not isinstance(self.model, (CerDEQSettings, CNN7Settings))):
            raise ValueError("objective 'certified' needs a certifiable model (cerdeq, cnn7), "
                             f"got {self.model.name!r}")
        return self


def parse_config(raw: Union[dict[str, Any], None], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming ``source`` and each error.

    The mapping is validated as JSON data in strict mode: lists fill tuple fields, but a bool
    is no int and a string no number (``channels: true``, ``lr: "1e-3"`` are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections data/model/train, "
                          f"got {type(raw).__name__}")
    try:
        text = json.dumps(raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source} holds a value that is not plain data: {error}") from None
    try:
        return ExperimentConfig.model_validate_json(text)
    except ValidationError as error:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_config(path: Union[str, Path]) -> ExperimentConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"the config file is a folder: {path} (give the YAML file in it)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} cannot be read: {error}") from None
    return parse_config(raw, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML would
    keep the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and {line}); "
                                    "keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice."""


def dump_config(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain mapping (JSON/YAML-able) that ``parse_config`` reads back."""
    return config.model_dump(mode="json")
