"""Batched fixed-point solvers that return the whole trajectory of states.

``Picard`` (damped fixed-point iteration), ``Anderson`` (type-II Anderson acceleration) and
``Broyden`` (Broyden's method, exposing its inverse-Jacobian estimate) share one call shape::

    trajectory = solver.solve(f, z0, record_states=True, callback=None)
"""

from __future__ import annotations

import json
from typing import Annotated, Union, get_args

from pydantic import Field, TypeAdapter

from deqshield.solvers.anderson import Anderson
from deqshield.solvers.base import FixedPointSolver, SolverStep
from deqshield.solvers.broyden import Broyden, LowRankInverse
from deqshield.solvers.picard import Picard
from deqshield.solvers.scratch import release_scratch
from deqshield.solvers.trajectory import Trajectory
from deqshield.validation import check_batch as check_state

SolverSpec = Annotated[Union[Picard, Anderson, Broyden], Field(discriminator="name")]
"""A solver section of a config file: ``{name: picard|anderson|broyden, ...settings}``."""

SOLVER_NAMES: tuple[str, ...] = tuple(
    solver.__dataclass_fields__["name"].default for solver in get_args(get_args(SolverSpec)[0]))
"""The ``name`` of every solver of :data:`SolverSpec`."""


def solver_named(name: str, **settings: object) -> FixedPointSolver:
    """The solver called ``name`` (one of :data:`SOLVER_NAMES`) with ``settings``."""
    return TypeAdapter(SolverSpec).validate_json(json.dumps({"name": name, **settings}))

__all__ = ["Anderson", "Broyden", "FixedPointSolver", "LowRankInverse", "Picard",
           "SOLVER_NAMES", "SolverSpec", "solver_named", "SolverStep", "Trajectory", "check_state", "release_scratch"]
