"""Defenses as readouts of a DEQ trajectory."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.readouts.base import Readout, StateReader, StateReadout
from deqshield.readouts.entropy import EntropyReduction, RegulatedTrajectory
from deqshield.readouts.states import Early, Ensemble, Final

ReadoutSpec = Annotated[Union[Final, Early, Ensemble, EntropyReduction],
                        Field(discriminator="name")]

__all__ = ["Early", "Ensemble", "EntropyReduction", "Final", "Readout", "ReadoutSpec",
           "RegulatedTrajectory", "StateReader", "StateReadout"]
