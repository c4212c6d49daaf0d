"""Prototypes of the remaining solver-loop fixes, for measurement only (not part of the package).

Each class subclasses the deqshield solver it prototypes and produces the same iterates,
residual rows and ``best`` state (up to float rounding); ``solver_overhead.py`` prints the
largest difference of the final states. The changes, all confined to
``src/deqshield/solvers/``, on top of commit ``96c93a5`` (long-dimension-last ``bmm``,
identity copies skipped, one host synchronisation per step):

* ``fast_check_state`` (``base.py``, ``check_state``): validate z0 with one ``aminmax`` pass
  instead of ``torch.isfinite(z).all()`` (three full-size passes and a bool tensor; ~1.4 ms
  against ~0.1 ms for a 128 x 8192 state).
* ``LeanRecorder.observe`` (``base.py``, ``SolveRecorder.observe``): accepts the residual
  ``g = f(z) - z`` when the solver already has it, instead of subtracting again.
* ``BufferPool`` (``anderson.py`` history buffers, ``broyden.py``
  ``LowRankInverse.identity``): reuse resident history buffers across solves. On CPU, glibc
  hands tens of MiB freed by the previous solve back to the kernel, and ``new_zeros`` then
  page-faults them in again on every solve (~5 ms per 20 MiB buffer here, i.e. a sizeable
  part of an 8-step Anderson solve). Only written slots are read, so no zeroing is needed.
* ``LeanAnderson`` (``anderson.py``): ``g`` written straight into its history slot with
  ``torch.sub(..., out=)`` and reused by ``observe``; no ``zs`` history when
  ``damping == 1`` (it is only read for damping).
* ``LeanBroyden`` (``broyden.py``): one low-rank product pair per step instead of three.
  The direction ``B_n g_n`` is carried over, so ``B_n dg = B_n g_{n+1} - B_n g_n`` needs one
  ``apply`` and the next direction is ``B_{n+1} g_{n+1} = B_n g_{n+1} + u (v . g_{n+1})``
  (a dot product and an axpy). ``InPlaceLowRankInverse`` subtracts x from the product in
  place instead of allocating ``-x`` and a sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deqshield.solvers import Anderson, Broyden, LowRankInverse, Picard, Trajectory
from deqshield.solvers.base import (
    FixedPointSolver,
    FlatProblem,
    SolveRecorder,
    StateCallback,
    StateFn,
    check_state,
)

_TINY = 1e-12


def fast_check_state(z: Tensor) -> None:
    """``check_state`` with one reduction pass: ``aminmax`` propagates NaN and +-Inf. Falls back
    to ``check_state`` for its error message."""
    if (isinstance(z, Tensor) and z.is_floating_point() and z.dim() >= 2 and z.numel() > 0
            and bool(torch.isfinite(torch.stack(torch.aminmax(z))).all())):
        return
    check_state(z)


class LeanRecorder(SolveRecorder):
    """``SolveRecorder`` that takes an already computed residual."""

    def observe(self, z: Tensor, fz: Tensor, g: Tensor | None = None) -> bool:
        """As ``SolveRecorder.observe``; ``g`` is f(z) - z when the caller already has it."""
        abs_res = (fz - z if g is None else g).norm(dim=1)
        rel_res = abs_res / (fz.norm(dim=1) + _TINY)
        self.abs_rows.append(abs_res)
        self.rel_rows.append(rel_res)
        res = rel_res if self.stop_mode == "rel" else abs_res
        improved = res < self.best_residual
        self.active = self.active & ~(res <= self.tol)
        any_active, self.all_active, all_improved = torch.stack(
            [self.active.any(), self.active.all(), improved.all()]).tolist()
        self.best = z if all_improved else torch.where(improved[:, None], z, self.best)
        self.best_residual = torch.where(improved, res, self.best_residual)
        return any_active


class LeanSolveMixin:
    """``FixedPointSolver.solve`` with ``fast_check_state`` and a :class:`LeanRecorder`."""

    def solve(self: FixedPointSolver, f: StateFn, z0: Tensor, *, record_states: bool = True,
              callback: StateCallback | None = None) -> Trajectory:
        fast_check_state(z0)
        problem = FlatProblem(f, z0)
        with torch.no_grad():
            z = z0.detach().reshape(z0.shape[0], -1).clone()
            recorder = LeanRecorder(z, problem, self.tol, self.stop_mode, record_states,
                                    callback)
            return recorder.finish(self._iterate(problem, z, recorder))


class LeanPicard(LeanSolveMixin, Picard):
    """Picard with ``fast_check_state`` (its loop is unchanged)."""


class BufferPool:
    """Resident history buffers reused across solves, keyed by shape, dtype and device.

    A solve takes its buffers for its duration and gives them back, so nested solves (a
    callback that solves) get buffers of their own. Contents are undefined.
    """

    def __init__(self) -> None:
        self.free: dict[tuple, list[Tensor]] = {}

    def take(self, like: Tensor, *shape: int) -> Tensor:
        stack = self.free.get((shape, like.dtype, like.device))
        return stack.pop() if stack else like.new_empty(shape)

    def give(self, *buffers: Tensor) -> None:
        for buffer in buffers:
            self.free.setdefault((tuple(buffer.shape), buffer.dtype, buffer.device),
                                 []).append(buffer)


POOL = BufferPool()


class LeanAnderson(LeanSolveMixin, Anderson):
    """Anderson with pooled buffers, in-place residuals and no unused history."""

    def _iterate(self, f: FlatProblem, z: Tensor, rec: LeanRecorder) -> Tensor:
        batch, dim = z.shape
        fs, gs = POOL.take(z, batch, self.memory, dim), POOL.take(z, batch, self.memory, dim)
        zs = None if self.damping == 1.0 else POOL.take(z, batch, self.memory, dim)
        try:
            return self._loop(f, z, rec, fs, gs, zs)
        finally:
            POOL.give(fs, gs, *([] if zs is None else [zs]))

    def _loop(self, f: FlatProblem, z: Tensor, rec: LeanRecorder, fs: Tensor, gs: Tensor,
              zs: Tensor | None) -> Tensor:
        m, beta = self.memory, self.damping
        gram = z.new_zeros(z.shape[0], m, m)
        rec.emit(z)
        fz = f(z)
        for n in range(self.max_iter):
            slot, h = n % m, min(n + 1, m)
            g = torch.sub(fz, z, out=gs[:, slot])
            if not rec.observe(z, fz, g):
                return z
            fs[:, slot] = fz
            row = torch.bmm(g[:, None], gs[:, :h].transpose(1, 2)).squeeze(1)
            gram[:, slot, :h] = row
            gram[:, :h, slot] = row
            alpha = self._weights(gram[:, :h, :h], slot)
            z_new = torch.bmm(alpha[:, None], fs[:, :h]).squeeze(1)
            if zs is not None:
                zs[:, slot] = z
                mixed_z = torch.bmm(alpha[:, None], zs[:, :h]).squeeze(1)
                z_new = beta * z_new + (1 - beta) * mixed_z
            z = rec.advance(z, z_new)
            rec.emit(z)
            if self._evaluates_after(n):
                fz = f(z)
        return self._close(rec, z, fz)


class InPlaceLowRankInverse(LowRankInverse):
    """``LowRankInverse`` computing -x + sum_i left_i (right_i . x) with one full-size
    allocation: the product's output is reused for the subtraction of x."""

    def _apply(self, left: Tensor, right: Tensor, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        k = min(self.count, left.shape[1])
        if not k:
            return -x
        coeff = torch.bmm(flat[:, None], right[:, :k].transpose(1, 2))  # (B, 1, k)
        return torch.bmm(coeff, left[:, :k]).squeeze(1).sub_(flat).view(x.shape)


class LeanBroyden(LeanSolveMixin, Broyden):
    """Broyden with pooled buffers and one ``apply`` and one ``apply_transpose`` per step."""

    def _iterate(self, f: FlatProblem, z: Tensor, rec: LeanRecorder) -> Tensor:
        batch, dim = z.shape
        memory = self.memory or self.max_iter
        us, vs = POOL.take(z, batch, memory, dim), POOL.take(z, batch, memory, dim)
        try:
            return self._loop(f, z, rec, InPlaceLowRankInverse(us, vs, 0))
        finally:
            POOL.give(us, vs)

    def _loop(self, f: FlatProblem, z: Tensor, rec: LeanRecorder,
              inverse: LowRankInverse) -> Tensor:
        rec.emit(z, inverse)
        fz = f(z)
        g = fz - z
        direction = -g  # B_0 g_0
        for n in range(self.max_iter):
            if not rec.observe(z, fz, g):
                return z
            z_new = rec.advance(z, torch.add(z, direction, alpha=-self.step_size))
            if not self._evaluates_after(n):
                rec.emit(z_new, inverse)
                rec.skip_final()
                return z_new
            fz = f(z_new)
            g_new = fz - z_new
            direction = self._update(inverse, z_new - z, g_new, direction, rec.active)
            z, g = z_new, g_new
            rec.emit(z, inverse)
        rec.observe(z, fz, g)
        return z

    @staticmethod
    def _update(inverse: LowRankInverse, dz: Tensor, g_new: Tensor, direction: Tensor,
                active: Tensor) -> Tensor:
        """Rank-one update of B (as ``LowRankInverse.update``) from B_n g_{n+1}; returns the
        next direction B_{n+1} g_{n+1} (without the term the update evicts, if memory is
        full)."""
        b_g_new = inverse.apply(g_new)
        b_dg = b_g_new - direction
        v = inverse.apply_transpose(dz)
        den = (dz * b_dg).sum(dim=1)
        ok = active & (den.abs() > 1e-12 * dz.norm(dim=1) * b_dg.norm(dim=1)) & (den != 0)
        safe_den = torch.where(ok, den, torch.ones_like(den))
        slot, zero = inverse.count % inverse.us.shape[1], dz.new_zeros(())
        if inverse.count >= inverse.us.shape[1]:
            old_u, old_v = inverse.us[:, slot], inverse.vs[:, slot]
            b_g_new = b_g_new - old_u * (old_v * g_new).sum(dim=1, keepdim=True)
        u = torch.where(ok[:, None], (dz - b_dg) / safe_den[:, None], zero,
                        out=inverse.us[:, slot])
        v = torch.where(ok[:, None], v, zero, out=inverse.vs[:, slot])
        inverse.count += 1
        return torch.addcmul(b_g_new, u, (v * g_new).sum(dim=1, keepdim=True))
