"""Defenses are readouts of the trajectory: which state(s) the prediction is made from.

A readout maps (model, x) to logits using the model's deterministic forward solver. It must be
deterministic (no randomness at evaluation: a random defense needs EOT, Athalye et al. 2018,
and would not be scored by one fixed prediction) and, because attacks score the very
prediction they attack, the protocol always scores a defense with the readout's own ``logits``.

A readout is built from a *state reader*: an object that observes the states z_0, z_1, ... as
the solver streams them (O(1) memory) and turns what it saw into logits. ``StateReadout``
runs the model's solver and feeds the reader; a defense that produces its own trajectory
(entropy reduction) feeds the same readers, so every readout composes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from deqshield.convergence import check_convergence
from deqshield.models import DEQClassifier
from deqshield.solvers import SolverStep
from deqshield.validation import check_range


NO_CLASS = -1
"""The prediction of a sample whose logits are not all finite: no class, so never correct."""


def predicted_classes(logits: Tensor) -> Tensor:
    """argmax of each row of ``logits``, ``NO_CLASS`` where a row holds NaN or Inf (argmax
    would pick the first NaN, i.e. class 0, and count a diverged solve on a class-0 sample as
    correct)."""
    finite = torch.isfinite(logits).all(dim=1)
    return torch.where(finite, logits.argmax(dim=1), torch.full_like(finite, NO_CLASS,
                                                                       dtype=torch.long))


class StateReader(Protocol):
    """Observes the states of one solve; ``logits()`` gives the readout's prediction."""

    def observe(self, step: SolverStep) -> None:
        ...

    def logits(self) -> Tensor:
        ...


@runtime_checkable
class Readout(Protocol):
    """A defense: logits of a DEQ for input x, read from its trajectory."""

    name: str

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        """Logits (B, classes), no autograd graph."""
        ...


class StateReadout:
    """A readout that reads the model's own forward trajectory with a state reader.

    Subclasses implement ``reader(model, steps)``: a fresh reader for a trajectory of ``steps``
    solver updates (states z_0..z_steps; a solve that stops early repeats its last state).
    Inputs must lie in the valid input range; a readout that ``reads_equilibrium`` applies the
    non-convergence policy of :mod:`deqshield.convergence` to the solve it ran."""

    reads_equilibrium: ClassVar[bool] = True

    def reader(self, model: DEQClassifier, steps: int) -> StateReader:
        raise NotImplementedError

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        return read_one_solve(model, [self], x)[0]


def read_one_solve(model: DEQClassifier, readouts: Sequence[StateReadout],
                   x: Tensor) -> list[Tensor]:
    """The logits of ``readouts`` from one forward solve of x that all their readers observe;
    the non-convergence policy applies once if any of them ``reads_equilibrium``."""
    readers = [readout.reader(model, model.deq.solver.max_iter) for readout in readouts]

    def observe(step: SolverStep) -> None:
        for reader in readers:
            reader.observe(step)

    check_range(x)
    with torch.no_grad():
        trajectory = model.trajectory(x, record_states=False, callback=observe)
        checked = [readout for readout in readouts if readout.reads_equilibrium]
        if checked:
            check_convergence(trajectory, f"readout {type(checked[0]).__name__}")
        return [reader.logits() for reader in readers]


def readouts_logits(model: nn.Module, readouts: Sequence[Readout], x: Tensor) -> list[Tensor]:
    """The logits of every readout for ``x``. On a DEQ the state readouts among them read one
    forward solve together (:func:`read_one_solve`): each reader observes the same trajectory,
    the one it would have had the solver run for it alone, so D trajectory defenses cost one
    solve instead of D. Other readouts (the entropy defense runs its own trajectory; an
    explicit network has none) compute theirs alone."""
    shared = ([i for i, readout in enumerate(readouts) if isinstance(readout, StateReadout)]
              if isinstance(model, DEQClassifier) else [])
    if len(shared) < 2:
        return [readout.logits(model, x) for readout in readouts]
    together = dict(zip(shared, read_one_solve(model, [readouts[i] for i in shared], x)))
    return [together[i] if i in together else readout.logits(model, x)  # type: ignore[arg-type]
            for i, readout in enumerate(readouts)]
