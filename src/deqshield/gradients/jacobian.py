"""Jacobian regularisation (Bai et al. 2021): a Hutchinson estimate of ||df/dz||_F^2.

For v ~ N(0, I),  E ||v^T J||^2 = tr(J J^T) = ||J||_F^2,  so

    R(z) = (1 / (s d)) sum_{j=1..s} ||v_j^T (df(z; x)/dz)||^2

estimates ||J||_F^2 / d per sample with s probe vectors (d = state size). The estimate keeps
its graph (create_graph=True) so it can be added to a training loss.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from deqshield.gradients.base import CellFn


def jacobian_frobenius(f: CellFn, z: Tensor, samples: int = 1,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """Per-sample Hutchinson estimate of ||df/dz||_F^2 / d at z, shape (B,)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    z_in = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z_in)
        total = z.new_zeros(z.shape[0])
        for _ in range(samples):
            v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            (vjp,) = torch.autograd.grad(fz, z_in, v, create_graph=True)
            total = total + vjp.reshape(z.shape[0], -1).pow(2).sum(dim=1)
    return total / (samples * z[0].numel())
