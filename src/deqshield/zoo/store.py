"""Where zoo models live and how one is loaded.

A zoo model is a folder ``ROOT/NAME/`` holding ``weights.safetensors`` (the model's state
dict), ``config.yaml`` (the experiment config of the run it came from) and ``card.json``
(:class:`~deqshield.zoo.cards.Card`). ``ROOT`` is the package's ``zoo/models/`` folder, or the
folder named by the environment variable ``DEQSHIELD_ZOO`` (read at every call, so a test or
a user can point the zoo elsewhere).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError
from torch import nn

from deqshield.io.config import ExperimentConfig, load_config
from deqshield.errors import CheckpointError, InputError
from deqshield.zoo.cards import Card, read_card

ENVIRONMENT = "DEQSHIELD_ZOO"
PACKAGED = Path(__file__).resolve().parent / "models"
WEIGHTS, CONFIG, CARD = "weights.safetensors", "config.yaml", "card.json"


def root() -> Path:
    """The zoo folder: ``$DEQSHIELD_ZOO`` if set, else the package's ``zoo/models/``."""
    return Path(os.environ.get(ENVIRONMENT) or PACKAGED)


def names() -> list[str]:
    """The names of the zoo's models, sorted (folders of :func:`root` holding a card)."""
    folder = root()
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if (entry / CARD).is_file())


def model_dir(name: str) -> Path:
    """The folder of model ``name``; :class:`InputError` listing the known names if unknown."""
    if name not in names():
        known = ", ".join(names()) or "none"
        raise InputError(f"no zoo model named {name!r} in {root()} (known: {known})")
    return root() / name


def card(name: str) -> Card:
    """The validated card of model ``name``."""
    return read_card(model_dir(name) / CARD)


def config(name: str) -> ExperimentConfig:
    """The experiment config model ``name`` was trained with."""
    return load_config(model_dir(name) / CONFIG)


def sha256_of_bytes(data: bytes) -> str:
    """The hex sha256 of ``data`` (what a card's ``sha256`` holds for the weights file)."""
    return hashlib.sha256(data).hexdigest()


def load(name: str) -> tuple[nn.Module, Card]:
    """Build model ``name`` from its config, check its weights' sha256 against the card, load
    them and return ``(model in eval mode, card)``. Raises :class:`CheckpointError` on a
    mismatching hash or weights that do not fit the model."""
    folder = model_dir(name)
    model_card = card(name)
    weights = folder / WEIGHTS
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{weights} is missing") from None
    digest = sha256_of_bytes(data)
    if digest != model_card.sha256:
        raise CheckpointError(f"{weights} has sha256 {digest}, but its card says "
                              f"{model_card.sha256}: the weights were changed or corrupted")
    model = config(name).model.build(model_card.input_shape, model_card.num_classes)
    try:
        model.load_state_dict(safetensors.torch.load(data))
    except (SafetensorError, RuntimeError) as error:
        raise CheckpointError(f"{weights} does not fit the model of {folder / CONFIG}: "
                              f"{error}") from None
    return model.eval(), model_card
