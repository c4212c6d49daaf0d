"""Anderson acceleration (type II, Walker & Ni 2011) for z = f(z).

With the last h = min(n + 1, m) states z_{n-h+1..n} and their residuals g_i = f(z_i) - z_i,

    alpha = argmin_{1^T alpha = 1} || sum_i alpha_i g_i ||^2 + reg * ||alpha||^2
          = H^{-1} 1 / (1^T H^{-1} 1),      H = G G^T + reg * mean(diag(G G^T)) I,
    z_{n+1} = beta * sum_i alpha_i f(z_i) + (1 - beta) * sum_i alpha_i z_i.

With h = 1 this is the damped Picard step, so the first update needs no special case and every
state, z_1 and z_2 included, is recorded. The Gram matrix G G^T is updated one row per step
(O(m d) per step rather than O(m^2 d)); g_n is written straight into its history row and the
z_i are kept only when beta < 1. The regularisation (relative to the residual scale)
keeps H invertible; where a sample's system is still singular or gives a non-finite alpha, that
sample falls back to the damped Picard step from its newest state.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from deqshield.settings import component
from deqshield.solvers.base import FixedPointSolver, FlatProblem, SolveRecorder
from deqshield.solvers.scratch import scratch


@component
class Anderson(FixedPointSolver):
    """Anderson acceleration with memory ``memory``, mixing ``damping`` (beta) and
    Tikhonov regularisation ``regularization`` (relative to the mean squared residual)."""

    name: Literal["anderson"] = "anderson"
    memory: Annotated[int, Field(ge=1)] = 5
    damping: Annotated[float, Field(gt=0, le=1)] = 1.0
    regularization: Annotated[float, Field(ge=0)] = 1e-6

    def _iterate(self, f: FlatProblem, z: Tensor, rec: SolveRecorder) -> Tensor:
        batch, dim = z.shape
        history = (batch, self.memory, dim)
        # z_i is read only to damp (beta < 1); the history buffers are pooled (scratch.py)
        shapes = [history] * (2 if self.damping == 1.0 else 3)
        with scratch(z, shapes) as (fs, gs, *zs):
            return self._loop(f, z, rec, fs, gs, zs[0] if zs else None)

    def _loop(self, f: FlatProblem, z: Tensor, rec: SolveRecorder, fs: Tensor, gs: Tensor,
              zs: Optional[Tensor]) -> Tensor:
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

    def _weights(self, gram: Tensor, newest: int) -> Tensor:
        """Mixing weights alpha (B, h) summing to one; Picard weights where the system fails."""
        batch, h, _ = gram.shape
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
        eye = torch.eye(h, dtype=gram.dtype, device=gram.device)
        system = gram + (self.regularization * scale)[:, None, None] * eye
        ones = gram.new_ones(batch, h, 1)
        sol, info = torch.linalg.solve_ex(system, ones)
        sol = sol.squeeze(-1)
        total = sol.sum(dim=1, keepdim=True)
        alpha = sol / total
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1) & (total.squeeze(1).abs() > 1e-30)
        picard = torch.zeros_like(alpha)
        picard[:, newest] = 1.0
        return torch.where(ok[:, None], alpha, picard)
