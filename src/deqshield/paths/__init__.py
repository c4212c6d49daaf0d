"""Gradient paths (attack surrogates) through a DEQ's trajectory."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.paths.base import GradientPath, LossFn
from deqshield.paths.final_state import FinalState, final_state_logits

PathSpec = Annotated[Union[FinalState], Field(discriminator="name")]

__all__ = ["FinalState", "GradientPath", "LossFn", "PathSpec", "final_state_logits"]
