"""Batched fixed-point solvers that return the whole trajectory of states.

``Picard`` (damped fixed-point iteration), ``Anderson`` (type-II Anderson acceleration) and
``Broyden`` (Broyden's method, exposing its inverse-Jacobian estimate) share one call shape::

    trajectory = solver.solve(f, z0, record_states=True, callback=None)
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.solvers.anderson import Anderson
from deqshield.solvers.base import FixedPointSolver, SolverStep
from deqshield.solvers.broyden import Broyden, LowRankInverse
from deqshield.solvers.picard import Picard
from deqshield.solvers.scratch import release_scratch
from deqshield.solvers.trajectory import Trajectory
from deqshield.validation import check_batch as check_state

SolverSpec = Annotated[Union[Picard, Anderson, Broyden], Field(discriminator="name")]
"""A solver section of a config file: ``{name: picard|anderson|broyden, ...settings}``."""

__all__ = ["Anderson", "Broyden", "FixedPointSolver", "LowRankInverse", "Picard",
           "SolverSpec", "SolverStep", "Trajectory", "check_state", "release_scratch"]
