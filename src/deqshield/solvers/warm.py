"""Warm starts for an attack's solves: an attack-side device that never touches the defended
prediction.

During PGD the input moves by at most the step size per iterate, so the equilibrium of iterate
t is an excellent starting point for the solve of iterate t + 1 (Gao et al. 2024 make the same
observation for serialized randomized smoothing). A :class:`WarmStarts` memory holds, per
sample of the attacked batch, the last state of the attack's previous solve. While it is
active (``with memory.active(rows)``), :meth:`deqshield.deq.DEQLayer.forward` -- the call
behind the final-state gradient paths -- starts from that state and runs the model's solver
for only ``steps`` updates (the first solve of a sample is a full solve from the model's own
z_0), then stores its last state. Nothing else reads it:

* readouts (the defended predictions every evaluation scores) and the trajectory paths (whose
  states z_i are defined from z_0) call :meth:`~deqshield.deq.DEQLayer.solve` directly, which
  ignores warm starts;
* attacks score their iterates outside the ``active`` block.

So the prediction an attack is scored against is always the model's deterministic solve from
its own z_0; only the attack's gradient estimate changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

import torch
from torch import Tensor

from deqshield.solvers.base import FixedPointSolver

_ACTIVE: ContextVar[Optional[tuple["WarmStarts", Tensor]]] = ContextVar("warm_starts",
                                                                         default=None)


class WarmStarts:
    """Per-sample start states for the solves of one attack run (``batch`` samples)."""

    def __init__(self, steps: int, batch: int):
        self.steps, self.batch = steps, batch
        self.states: Optional[Tensor] = None
        self.known = torch.zeros(batch, dtype=torch.bool)

    @contextmanager
    def active(self, rows: Tensor) -> Iterator["WarmStarts"]:
        """Warm-start the solves inside the block; ``rows``: which samples of the batch the
        solved inputs are."""
        token = _ACTIVE.set((self, rows.cpu()))
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def start(self, solver: FixedPointSolver, initial: Tensor,
              rows: Tensor) -> tuple[Tensor, FixedPointSolver]:
        """(z_0, solver) for a solve of the samples ``rows``: the stored states and ``steps``
        updates once every row has one, else the model's z_0 and solver."""
        if self.states is None or not self.known[rows].all():
            return initial, solver
        z0 = self.states[rows.to(self.states.device)].to(initial.dtype)
        return z0, dataclasses.replace(solver, max_iter=self.steps)

    def remember(self, final: Tensor, rows: Tensor) -> None:
        """Store the last states of a solve of the samples ``rows``."""
        if self.states is None:
            self.states = final.new_zeros((self.batch, *final.shape[1:]))
        self.states[rows.to(final.device)] = final.detach()
        self.known[rows] = True


def active_warm_starts() -> Optional[tuple[WarmStarts, Tensor]]:
    """The active memory and its rows, or None outside a ``WarmStarts.active`` block."""
    return _ACTIVE.get()
