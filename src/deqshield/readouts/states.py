"""The three trajectory readouts of closer-look-neurips22 (Sec. 5.2).

* ``Final``: head(z_T), the usual DEQ output.
* ``Early(index=n)``: head(z_n), the early-state defense; n is chosen once on the development
  split (the state most robust under ready-made PGD-10) and then fixed.
* ``Ensemble``: head(mean_n z_n) over the states z_1..z_T (z_0 = 0 carries no information),
  the ensemble-state defense, accumulated as a running sum (O(1) memory).

A trajectory that stops early (all samples converged) repeats its last state, so an early or
ensemble readout of a shorter trajectory reads the frozen state, as the solver would.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from deqshield.models import DEQClassifier
from deqshield.settings import component
from deqshield.solvers import SolverStep


@component
class Final:
    """head(z_T)."""

    name: Literal["final"] = "final"

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        with torch.no_grad():
            return model.head(model.trajectory(x, record_states=False).final)


@component
class Early:
    """head(z_index): the early-state defense (``index`` >= 1)."""

    name: Literal["early"] = "early"
    index: Annotated[int, Field(ge=1)] = 1

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        picked: dict[str, Tensor] = {}

        def keep(step: SolverStep) -> None:
            if step.n <= self.index:
                picked["z"] = step.state

        with torch.no_grad():
            model.trajectory(x, record_states=False, callback=keep)
            return model.head(picked["z"])


@component
class Ensemble:
    """head(mean of z_1..z_N), with N the solver's ``max_iter`` (frozen states repeat)."""

    name: Literal["ensemble"] = "ensemble"
    first: Annotated[int, Field(ge=0)] = 1

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        total: dict[str, Optional[Tensor]] = {"sum": None, "last": None}
        count = {"n": 0}

        def accumulate(step: SolverStep) -> None:
            total["last"] = step.state
            if step.n >= self.first:
                total["sum"] = step.state.clone() if total["sum"] is None \
                    else total["sum"] + step.state
                count["n"] += 1

        with torch.no_grad():
            model.trajectory(x, record_states=False, callback=accumulate)
            expected = model.deq.solver.max_iter - self.first + 1
            if expected < 1:
                raise ValueError(f"Ensemble(first={self.first}) averages no state of a solver "
                                 f"with max_iter={model.deq.solver.max_iter}")
            missing = expected - count["n"]  # steps skipped because every sample converged
            state_sum = total["sum"] if total["sum"] is not None else 0 * total["last"]
            mean = (state_sum + missing * total["last"]) / expected
            return model.head(mean)
