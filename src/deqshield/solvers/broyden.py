"""Broyden's method ("good" inverse update) for g(z) = f(z) - z = 0.

Eq. 7-8 of closer-look-neurips22:

    z_{n+1} = z_n - alpha B_n g(z_n),                         B_0 = -I,
    B_{n+1} = B_n + (dz - B_n dg) / (dz^T B_n dg) * dz^T B_n,
    dz = z_{n+1} - z_n,   dg = g(z_{n+1}) - g(z_n),

where B_n estimates the inverse Jacobian (dg/dz)^{-1} = (df/dz - I)^{-1}. B_n is stored in
low-rank form B_n = -I + sum_i u_i v_i^T (v_i = B_{i}^T dz_i) in buffers lent once per solve,
so a step costs one evaluation of f plus two low-rank products (B_n g_{n+1} and B_n^T dz; the
direction B_n g_n is carried from the previous step) and O(d) vector work. With ``memory`` <
``max_iter`` the oldest rank-one term is overwritten (limited-memory Broyden). A step whose
denominator vanishes (including every step of a frozen sample) leaves B unchanged.

:class:`LowRankInverse` exposes B_n so that callers can apply B_n or B_n^T to other vectors:
the simultaneous adjoint (Eq. 9-10) reuses it through the solver's ``callback``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from deqshield.settings import component
from deqshield.solvers.base import FixedPointSolver, FlatProblem, SolveRecorder
from deqshield.solvers.scratch import scratch


class LowRankInverse:
    """B = -I + sum_{i<count} u_i v_i^T for each sample, with u, v of shape (B, m, d).

    ``apply`` and ``apply_transpose`` accept flat (B, d) vectors or vectors of the state's
    shape (B, *state_shape) and return the same shape.
    """

    def __init__(self, us: Tensor, vs: Tensor, count: int):
        self.us, self.vs, self.count = us, vs, count

    @property
    def rank(self) -> int:
        """The number of rank-one terms held (at most the memory m)."""
        return min(self.count, self.us.shape[1])

    def _apply(self, left: Tensor, right: Tensor, x: Tensor) -> Tensor:
        """-x + sum_i left_i (right_i . x); both products keep the long dimension d last,
        which torch's CPU ``bmm`` runs several times faster than the transposed layout, and x
        is subtracted in place from the product (no extra full-size temporaries)."""
        flat = x.reshape(x.shape[0], -1)
        k = self.rank
        if not k:
            return -x
        coeff = torch.bmm(flat[:, None, :], right[:, :k].transpose(1, 2))  # (B, 1, k)
        return torch.bmm(coeff, left[:, :k]).squeeze(1).sub_(flat).view(x.shape)

    def apply(self, x: Tensor) -> Tensor:
        """B x."""
        return self._apply(self.us, self.vs, x)

    def apply_transpose(self, x: Tensor) -> Tensor:
        """B^T x."""
        return self._apply(self.vs, self.us, x)

    def update(self, steps: Tensor, b_g_new: Tensor, g_new: Tensor, active: Tensor) -> Tensor:
        """Rank-one update of Eq. 8 (in place) for the samples in ``active``.

        ``steps`` (B, 2, d) holds dz = z_{n+1} - z_n and B_n dg = B_n g_{n+1} - B_n g_n (the
        solver carries B_n g_n, so B_n dg costs no product), ``b_g_new`` is B_n g_{n+1}; one
        Gram product over ``steps`` gives the denominator dz^T B_n dg and both norms. Returns
        the next direction B_{n+1} g_{n+1} = B_n g_{n+1} + u (v . g_{n+1}), less the term a
        full memory evicts (``b_g_new`` is overwritten)."""
        dz, b_dg = steps[:, 0], steps[:, 1]
        gram = torch.bmm(steps, steps.transpose(1, 2))
        den = gram[:, 0, 1]
        ok = active & (den.abs() > 1e-12 * (gram[:, 0, 0] * gram[:, 1, 1]).sqrt()) & (den != 0)
        scale = torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)),
                            torch.zeros_like(den))
        slot = self.count % self.us.shape[1]
        if self.count >= self.us.shape[1]:
            evicted = _dot(self.vs[:, slot], g_new)
            b_g_new.addcmul_(self.us[:, slot], evicted, value=-1.0)
        v = self.apply_transpose(dz)
        u = torch.sub(dz, b_dg, out=self.us[:, slot]).mul_(scale[:, None])
        v = torch.mul(v, ok[:, None], out=self.vs[:, slot])
        self.count += 1
        return b_g_new.addcmul_(u, _dot(v, g_new))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise a . b as (B, 1), without a full-size temporary."""
    return torch.bmm(a[:, None], b[:, :, None]).squeeze(2)


@component
class Broyden(FixedPointSolver):
    """Broyden's method with step size ``step_size`` (alpha of Eq. 7) and at most ``memory``
    rank-one terms (27 by default, as in the MDEQ code the papers build on; older terms are
    overwritten), so the solver's memory is O(min(max_iter, memory) B d)."""

    name: Literal["broyden"] = "broyden"
    step_size: Annotated[float, Field(gt=0)] = 1.0
    memory: Annotated[int, Field(ge=1)] = 27

    def _iterate(self, f: FlatProblem, z: Tensor, rec: SolveRecorder) -> Tensor:
        batch, dim = z.shape
        terms = (batch, min(self.memory, self.max_iter), dim)
        with scratch(z, [terms, terms, (batch, 2, dim), (2, batch, dim)]) as buffers:
            us, vs, steps, residuals = buffers
            return self._loop(f, z, rec, LowRankInverse(us, vs, 0), steps, residuals)

    def _loop(self, f: FlatProblem, z: Tensor, rec: SolveRecorder, inverse: LowRankInverse,
              steps: Tensor, residuals: Tensor) -> Tensor:
        """One ``apply`` and one ``apply_transpose`` per step: the direction B_n g_n is
        carried from the previous update. g_n alternates between the two ``residuals`` rows;
        ``steps`` receives dz and B_n dg."""
        rec.emit(z, inverse)
        fz = f(z)
        g = torch.sub(fz, z, out=residuals[0])
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
            g = torch.sub(fz, z_new, out=residuals[(n + 1) % 2])
            b_g = inverse.apply(g)
            torch.sub(z_new, z, out=steps[:, 0])
            torch.sub(b_g, direction, out=steps[:, 1])
            direction = inverse.update(steps, b_g, g, rec.active)
            z = z_new
            rec.emit(z, inverse)
        rec.observe(z, fz, g)
        return z
