"""The record of one fixed-point solve: the trajectory z_0, z_1, ..., z_T of solver states.

Index convention (as in the papers): ``z_0`` is the initial state (zeros by default) and ``z_n``
is the state after ``n`` solver updates. The residual of a state is

    r_abs(z_n) = ||f(z_n) - z_n||_2,      r_rel(z_n) = ||f(z_n) - z_n||_2 / ||f(z_n)||_2

per sample (the relative error of Fig. 2b in closer-look-neurips22). Samples stop individually:
once a sample's residual is below the tolerance its state is frozen, so ``states[m]`` equals
``states[n]`` for that sample for every ``m > n``.

The trajectory holds the *raw iterates* z_n that attacks and readouts use. The lowest-residual
state seen ("best so far", which some libraries return instead) is kept apart in ``best``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Trajectory:
    """States and residuals of one batched solve.

    Attributes:
        initial: the initial state z_0 (always kept).
        final: the returned state z_T, shape (B, *state_shape).
        abs_residual: (T + 1, B) absolute residual of z_0..z_T; NaN where it was not evaluated
            (only the last row, when the solver was asked not to evaluate it).
        rel_residual: (T + 1, B) relative residual, NaN where unknown.
        iterations: (B,) number of updates each sample received before it stopped.
        converged: (B,) whether the sample's *returned* state met the tolerance. A sample whose
            last residual is unknown (NaN) is reported as not converged.
        best: (B, *state_shape) the lowest-relative-residual state seen (not a raw iterate).
        states: z_0..z_T when the solve recorded them, else an empty list.
        tol: the tolerance the solve used, and ``stop_mode`` which residual it applied to.
    """

    initial: Tensor
    final: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    iterations: Tensor
    converged: Tensor
    best: Tensor
    tol: float
    stop_mode: str
    states: list[Tensor] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """T, the number of solver updates (the trajectory has T + 1 states)."""
        return self.abs_residual.shape[0] - 1

    @property
    def residual(self) -> Tensor:
        """The residual the stopping rule uses (``rel`` or ``abs``), shape (T + 1, B)."""
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    @property
    def final_residual(self) -> Tensor:
        """(B,) residual of the returned state (NaN if it was not evaluated)."""
        return self.residual[-1]

    def state(self, n: int) -> Tensor:
        """z_n; negative n counts from the end. Needs a solve that recorded its states."""
        if not self.states:
            raise RuntimeError(
                "this trajectory kept no states; solve with record_states=True "
                "or read the states through a callback"
            )
        if not -len(self.states) <= n < len(self.states):
            raise IndexError(f"state index {n} out of range for a trajectory of "
                             f"{len(self.states)} states (z_0..z_{len(self.states) - 1})")
        return self.states[n]

    def summary(self) -> dict[str, float]:
        """Batch statistics of the final residual and convergence, for logs and reports."""
        res = self.final_residual
        known = res[~torch.isnan(res)]
        return {
            "steps": float(self.num_steps),
            "converged_fraction": float(self.converged.float().mean()),
            "final_residual_mean": float(known.mean()) if known.numel() else float("nan"),
            "final_residual_max": float(known.max()) if known.numel() else float("nan"),
            "iterations_mean": float(self.iterations.float().mean()),
        }
