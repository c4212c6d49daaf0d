"""Shared machinery of the batched fixed-point solvers.

A solver finds z* with z* = f(z*) for a batch of independent problems. Every solver here:

* works on a batch (B, *state_shape), flattening each sample to a vector internally;
* stops per sample: a sample whose residual (``stop_mode`` "rel" or "abs") is <= ``tol`` is
  frozen while the others continue, and the loop ends when all samples stopped or after
  ``max_iter`` updates;
* returns a :class:`~deqshield.solvers.trajectory.Trajectory` with the raw iterates (kept, or
  streamed to ``callback(n, z_n)`` so memory stays O(1)) and the residual of every state;
* by default evaluates f once more at the last state so that its residual, and with it the
  convergence verdict, is known (``final_residual=False`` saves that evaluation; the last
  residual is then NaN and the sample is reported as not converged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional, Protocol

import torch
from pydantic import Field
from torch import Tensor

from deqshield.errors import InputError
from deqshield.settings import component
from deqshield.solvers.trajectory import Trajectory
from deqshield.validation import check_batch


class InverseJacobian(Protocol):
    """A linear map estimating (df/dz - I)^{-1} (Broyden's B_n): ``apply`` B x,
    ``apply_transpose`` B^T x."""

    def apply(self, x: Tensor) -> Tensor:
        ...

    def apply_transpose(self, x: Tensor) -> Tensor:
        ...


StateFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SolverStep:
    """What a solver streams to ``callback`` for each state z_n, n = 0..T.

    ``inverse_jacobian`` is Broyden's low-rank estimate B_n of (df/dz - I)^{-1} at z_n (None
    for other solvers); it is a view of the solver's buffers, valid only during the callback.
    """

    n: int
    state: Tensor
    inverse_jacobian: Optional[InverseJacobian] = None


StateCallback = Callable[[SolverStep], None]

_TINY = 1e-12


class FlatProblem:
    """f on flattened states: (B, d) -> (B, d), checking the first output's shape and dtype."""

    def __init__(self, f: StateFn, z0: Tensor):
        self.f = f
        self.shape = z0.shape
        self.batch = z0.shape[0]
        self.evaluations = 0

    def __call__(self, z_flat: Tensor) -> Tensor:
        out = self.f(z_flat.view(self.shape))
        if self.evaluations == 0:
            if not isinstance(out, Tensor) or out.shape != self.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise InputError(
                    f"the cell returned {got} for a state of shape {tuple(self.shape)}; "
                    "f(z) must have the shape of z"
                )
            if out.dtype != z_flat.dtype:
                raise InputError(f"the cell returned dtype {out.dtype} for a state of dtype "
                                 f"{z_flat.dtype}; f(z) must keep the dtype of z")
        self.evaluations += 1
        return out.reshape(self.batch, -1)

    def unflatten(self, z_flat: Tensor) -> Tensor:
        return z_flat.view(self.shape)


class SolveRecorder:
    """Bookkeeping shared by all solvers: residual rows, per-sample stopping, states, best."""

    def __init__(self, z0_flat: Tensor, problem: FlatProblem, tol: float, stop_mode: str,
                 record_states: bool, callback: Optional[StateCallback]):
        self.problem = problem
        self.tol = tol
        self.stop_mode = stop_mode
        self.record_states = record_states
        self.callback = callback
        batch = z0_flat.shape[0]
        self.active = torch.ones(batch, dtype=torch.bool, device=z0_flat.device)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=z0_flat.device)
        self.abs_rows: list[Tensor] = []
        self.rel_rows: list[Tensor] = []
        self.states: list[Tensor] = []
        self.initial = z0_flat
        self.best = z0_flat
        self.best_residual = torch.full((batch,), float("inf"), device=z0_flat.device,
                                        dtype=z0_flat.dtype)
        self.num_states = 0
        self.all_active = True

    def emit(self, z_flat: Tensor, inverse_jacobian: Optional[InverseJacobian] = None) -> None:
        """Publish the next state z_n (record it and/or stream it to the callback)."""
        if self.record_states:
            self.states.append(self.problem.unflatten(z_flat))
        if self.callback is not None:
            self.callback(SolverStep(self.num_states, self.problem.unflatten(z_flat),
                                     inverse_jacobian))
        self.num_states += 1

    def observe(self, z: Tensor, fz: Tensor, g: Optional[Tensor] = None) -> bool:
        """Record the residual of the newest state z (with fz = f(z), and g = fz - z when the
        solver already has it); freeze samples that met the tolerance. Returns whether any
        sample is still active."""
        abs_res = (fz - z if g is None else g).norm(dim=1)
        rel_res = abs_res / (fz.norm(dim=1) + _TINY)
        self.abs_rows.append(abs_res)
        self.rel_rows.append(rel_res)
        res = rel_res if self.stop_mode == "rel" else abs_res
        improved = res < self.best_residual
        self.active = self.active & ~(res <= self.tol)
        # one host synchronisation per step; the full-state copies below are skipped in the
        # common case (every sample improving / active), where they would be identities
        any_active, all_active, all_improved = torch.stack(
            [self.active.any(), self.active.all(), improved.all()]).tolist()
        self.all_active = all_active
        self.best = z if all_improved else torch.where(improved[:, None], z, self.best)
        self.best_residual = torch.where(improved, res, self.best_residual)
        return any_active

    def advance(self, z: Tensor, z_new: Tensor) -> Tensor:
        """Move active samples to z_new (frozen ones keep z). The caller emits the result.
        States are never written in place, so returning z_new itself is safe."""
        self.iterations += self.active.long()
        return z_new if self.all_active else torch.where(self.active[:, None], z_new, z)

    def skip_final(self) -> None:
        """Mark the last state's residual as not evaluated."""
        nan = torch.full_like(self.abs_rows[-1], float("nan"))
        self.abs_rows.append(nan)
        self.rel_rows.append(nan)

    def finish(self, z: Tensor) -> Trajectory:
        abs_residual = torch.stack(self.abs_rows)
        rel_residual = torch.stack(self.rel_rows)
        last = rel_residual[-1] if self.stop_mode == "rel" else abs_residual[-1]
        return Trajectory(
            initial=self.problem.unflatten(self.initial),
            final=self.problem.unflatten(z),
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            iterations=self.iterations,
            converged=last <= self.tol,
            best=self.problem.unflatten(self.best),
            tol=self.tol,
            stop_mode=self.stop_mode,
            states=self.states,
        )


@component
class FixedPointSolver:
    """Settings shared by every solver (subclasses are validated, frozen dataclasses).

    Args:
        max_iter: the most updates a sample receives (N in the papers).
        tol: stopping tolerance on the residual chosen by ``stop_mode``.
        stop_mode: "rel" for ||f(z)-z|| / ||f(z)||, "abs" for ||f(z)-z||.
        final_residual: evaluate f once more at the last state so its residual is known.
    """

    max_iter: Annotated[int, Field(gt=0)] = 30
    tol: Annotated[float, Field(ge=0)] = 1e-4
    stop_mode: Literal["rel", "abs"] = "rel"
    final_residual: bool = True

    def solve(self, f: StateFn, z0: Tensor, *, record_states: bool = True,
              callback: Optional[StateCallback] = None) -> Trajectory:
        """Run the solver from z0 and return its trajectory (no autograd graph is built)."""
        check_batch(z0, "initial state")
        problem = FlatProblem(f, z0)
        with torch.no_grad():
            z = z0.detach().reshape(z0.shape[0], -1).clone()
            recorder = SolveRecorder(z, problem, self.tol, self.stop_mode, record_states,
                                     callback)
            z = self._iterate(problem, z, recorder)
            return recorder.finish(z)

    def _evaluates_after(self, n: int) -> bool:
        """Whether f is evaluated at the state produced by update n (0-based): always but after
        the last update, where only ``final_residual`` asks for it."""
        return n + 1 < self.max_iter or self.final_residual

    def _close(self, rec: SolveRecorder, z: Tensor, fz: Tensor,
               g: Optional[Tensor] = None) -> Tensor:
        """Record the last state's residual (g = fz - z, if known) or mark it unknown, and
        return the state."""
        if self.final_residual:
            rec.observe(z, fz, g)
        else:
            rec.skip_final()
        return z

    def _iterate(self, f: FlatProblem, z: Tensor, rec: SolveRecorder) -> Tensor:
        """Run the updates from the flat z_0: for each state z_n (z_0 included) call
        ``rec.emit`` once, ``rec.observe`` with its residual, and ``rec.advance`` to move the
        active samples. Return the final flat state."""
        raise NotImplementedError
