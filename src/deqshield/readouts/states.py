"""The three trajectory readouts of closer-look-neurips22 (Sec. 5.2).

* ``Final``: head(z_T), the usual DEQ output.
* ``Early(index=n)``: head(z_n), the early-state defense; n is chosen once on the development
  split (the state most robust under ready-made PGD-10) and then fixed.
* ``Ensemble``: head(mean_n z_n) over the states z_first..z_N (z_0 = 0 carries no information,
  so ``first`` = 1 by default), the ensemble-state defense, accumulated as a running sum.

A trajectory that stops early (all samples converged) repeats its last state, so an early or
ensemble readout of a shorter trajectory reads the frozen state, as the solver would.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.models import DEQClassifier
from deqshield.readouts.base import StateReadout
from deqshield.settings import component
from deqshield.errors import InputError
from deqshield.solvers import SolverStep
from deqshield.validation import check_index, check_range


class LastStateReader:
    """Keeps the newest state with index <= ``upto`` (None: the newest state)."""

    def __init__(self, model: DEQClassifier, upto: Optional[int] = None):
        self.model, self.upto = model, upto
        self.state: Optional[Tensor] = None

    def observe(self, step: SolverStep) -> None:
        if self.upto is None or step.n <= self.upto:
            self.state = step.state

    def logits(self) -> Tensor:
        assert self.state is not None, "no state observed"
        return self.model.head(self.state)


class MeanStateReader:
    """Running mean of z_first..z_steps; states missing after an early stop repeat the last."""

    def __init__(self, model: DEQClassifier, first: int, steps: int):
        if steps - first + 1 < 1:
            raise InputError(f"Ensemble(first={first}) averages no state of a solver with "
                             f"max_iter={steps}")
        self.model, self.first, self.steps = model, first, steps
        self.total: Optional[Tensor] = None
        self.last: Optional[Tensor] = None
        self.count = 0

    def observe(self, step: SolverStep) -> None:
        self.last = step.state
        if self.first <= step.n <= self.steps:
            self.total = step.state.clone() if self.total is None else self.total + step.state
            self.count += 1

    def logits(self) -> Tensor:
        assert self.last is not None, "no state observed"
        expected = self.steps - self.first + 1
        total = self.total if self.total is not None else 0 * self.last
        return self.model.head((total + (expected - self.count) * self.last) / expected)


@component
class Final(StateReadout):
    """head(z_T); for an explicit network, its output."""

    name: Literal["final"] = "final"

    def reader(self, model: DEQClassifier, steps: int) -> LastStateReader:
        return LastStateReader(model)

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        if isinstance(model, DEQClassifier):
            return super().logits(model, x)
        check_range(x)
        with torch.no_grad():
            return model(x)


@component(kw_only=True)
class Early(StateReadout):
    """head(z_index): the early-state defense (1 <= ``index`` <= the solver's ``max_iter``,
    required)."""

    name: Literal["early"] = "early"
    index: Annotated[int, Field(ge=1)]
    reads_equilibrium: ClassVar[bool] = False

    def reader(self, model: DEQClassifier, steps: int) -> LastStateReader:
        check_index("Early.index", self.index, steps)
        return LastStateReader(model, upto=self.index)


@component
class Ensemble(StateReadout):
    """head(mean of z_first..z_N), N = the solver's ``max_iter``."""

    name: Literal["ensemble"] = "ensemble"
    first: Annotated[int, Field(ge=0)] = 1

    def reader(self, model: DEQClassifier, steps: int) -> MeanStateReader:
        return MeanStateReader(model, self.first, steps)
