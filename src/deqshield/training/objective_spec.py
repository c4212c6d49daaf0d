"""The objective section of a training config: one of the training objectives, by name."""

from typing import Annotated, Union

from pydantic import Field

from deqshield.training.fast_at import FastAT, FreeAT
from deqshield.training.noise import GaussianNoise
from deqshield.training.objectives import PGDAT, TRADES, Certified, Standard

ObjectiveSpec = Annotated[Union[Standard, PGDAT, TRADES, Certified, FastAT, FreeAT,
                                GaussianNoise], Field(discriminator="name")]
"""``{name: standard|pgd-at|trades|certified|fast-at|free-at|gaussian-noise, ...settings}``."""
