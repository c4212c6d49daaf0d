"""Batched fixed-point solvers that return the whole trajectory of states.

``Picard`` (damped fixed-point iteration), ``Anderson`` (type-II Anderson acceleration) and
``Broyden`` (Broyden's method, exposing its inverse-Jacobian estimate) share one call shape::

    trajectory = solver.solve(f, z0, record_states=True, callback=None)
"""

from __future__ import annotations

import dataclasses
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


def swapped_solver(current: FixedPointSolver, name: str) -> FixedPointSolver:
    """The solver called ``name`` with every setting it shares with ``current`` (the shared
    ones: ``max_iter``, ``tol``, ``stop_mode``, ``final_residual``, and ``damping`` or
    ``memory`` where both have them); ``current`` itself if it is that solver already."""
    if current.name == name:
        return current
    target = type(solver_named(name))
    shared = {f.name for f in dataclasses.fields(target)} - {"name"}
    return solver_named(name, **{f.name: getattr(current, f.name)
                                 for f in dataclasses.fields(current) if f.name in shared})

__all__ = ["Anderson", "Broyden", "FixedPointSolver", "LowRankInverse", "Picard",
           "SOLVER_NAMES", "SolverSpec", "solver_named", "swapped_solver", "SolverStep",
           "Trajectory", "check_state", "release_scratch"]
