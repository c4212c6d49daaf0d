"""Broyden's method ("good" inverse update) for g(z) = f(z) - z = 0.

Eq. 7-8 of closer-look-neurips22:

    z_{n+1} = z_n - alpha B_n g(z_n),                         B_0 = -I,
    B_{n+1} = B_n + (dz - B_n dg) / (dz^T B_n dg) * dz^T B_n,
    dz = z_{n+1} - z_n,   dg = g(z_{n+1}) - g(z_n),

where B_n estimates the inverse Jacobian (dg/dz)^{-1} = (df/dz - I)^{-1}. B_n is stored in
low-rank form B_n = -I + sum_i u_i v_i^T (v_i = B_{i}^T dz_i) in buffers allocated once per solve,
so a step costs one evaluation of f plus O(m d). With ``memory`` < ``max_iter`` the oldest
rank-one term is overwritten (limited-memory Broyden). A step whose denominator vanishes
(including every step of a frozen sample) leaves B unchanged.

:class:`LowRankInverse` exposes B_n so that callers can apply B_n or B_n^T to other vectors:
the simultaneous adjoint (Eq. 9-10) reuses it through the solver's ``callback``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from deqshield.settings import component
from deqshield.solvers.base import FixedPointSolver, FlatProblem, SolveRecorder


class LowRankInverse:
    """B = -I + sum_{i<count} u_i v_i^T for each sample, with u, v of shape (B, m, d).

    ``apply`` and ``apply_transpose`` accept flat (B, d) vectors or vectors of the state's
    shape (B, *state_shape) and return the same shape.
    """

    def __init__(self, us: Tensor, vs: Tensor, count: int):
        self.us, self.vs, self.count = us, vs, count

    @classmethod
    def identity(cls, batch: int, memory: int, dim: int, like: Tensor) -> "LowRankInverse":
        """B_0 = -I with room for ``memory`` rank-one terms."""
        return cls(like.new_zeros(batch, memory, dim), like.new_zeros(batch, memory, dim), 0)

    def _apply(self, left: Tensor, right: Tensor, x: Tensor) -> Tensor:
        """-x + sum_i left_i (right_i . x); both products keep the long dimension d last,
        which torch's CPU ``bmm`` runs several times faster than the transposed layout."""
        flat = x.reshape(x.shape[0], -1)
        k = min(self.count, left.shape[1])
        out = -flat
        if k:
            coeff = torch.bmm(flat[:, None, :], right[:, :k].transpose(1, 2))  # (B, 1, k)
            out = out + torch.bmm(coeff, left[:, :k]).squeeze(1)
        return out.view(x.shape)

    def apply(self, x: Tensor) -> Tensor:
        """B x."""
        return self._apply(self.us, self.vs, x)

    def apply_transpose(self, x: Tensor) -> Tensor:
        """B^T x."""
        return self._apply(self.vs, self.us, x)

    def update(self, dz: Tensor, dg: Tensor, active: Tensor) -> None:
        """Rank-one update of Eq. 8 (in place) for the samples in ``active``."""
        b_dg = self.apply(dg)
        v = self.apply_transpose(dz)
        den = (dz * b_dg).sum(dim=1)
        ok = active & (den.abs() > 1e-12 * dz.norm(dim=1) * b_dg.norm(dim=1)) & (den != 0)
        safe_den = torch.where(ok, den, torch.ones_like(den))
        u = torch.where(ok[:, None], (dz - b_dg) / safe_den[:, None], torch.zeros_like(dz))
        slot = self.count % self.us.shape[1]
        self.us[:, slot] = u
        self.vs[:, slot] = torch.where(ok[:, None], v, torch.zeros_like(v))
        self.count += 1


@component
class Broyden(FixedPointSolver):
    """Broyden's method with step size ``step_size`` (alpha of Eq. 7) and ``memory`` rank-one
    terms (default: ``max_iter``, i.e. full-memory Broyden)."""

    name: Literal["broyden"] = "broyden"
    step_size: Annotated[float, Field(gt=0)] = 1.0
    memory: Optional[Annotated[int, Field(ge=1)]] = None

    def _iterate(self, f: FlatProblem, z: Tensor, rec: SolveRecorder) -> Tensor:
        batch, dim = z.shape
        inverse = LowRankInverse.identity(batch, self.memory or self.max_iter, dim, z)
        rec.emit(z, inverse)
        fz = f(z)
        g = fz - z
        for n in range(self.max_iter):
            if not rec.observe(z, fz):
                return z
            z_new = rec.advance(z, z - self.step_size * inverse.apply(g))
            last = n + 1 == self.max_iter
            if last and not self.final_residual:
                rec.emit(z_new, inverse)
                rec.skip_final()
                return z_new
            fz = f(z_new)
            g_new = fz - z_new
            inverse.update(z_new - z, g_new - g, rec.active)
            z, g = z_new, g_new
            rec.emit(z, inverse)
        rec.observe(z, fz)
        return z
