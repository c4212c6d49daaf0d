"""Projected gradient descent (Madry et al. 2018) with a chosen gradient path.

For l_inf:  x_{k+1} = Proj_{B_inf(x, eps) cap [lo, hi]}(x_k + alpha sign(g_k)),
for l_2:    x_{k+1} = Proj_{B_2(x, eps) cap [lo, hi]}(x_k + alpha g_k / ||g_k||_2),
with g_k = d loss / dx at x_k from the gradient path (for a DEQ: final-state exact/phantom,
simultaneous adjoint, unrolled intermediate, or an ensemble). A random start draws uniformly
from the l_inf ball (or uniformly in direction and radius for l_2) with a caller's generator,
so an evaluation is reproducible. Every returned example is checked to lie in the ball and the
valid range.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.losses import LOSSES, LossName
from deqshield.paths.base import GradientPath
from deqshield.paths.final_state import FinalState
from deqshield.settings import component
from deqshield.threat import check_perturbation, project
from deqshield.validation import check_bounds, check_eps, check_labels, check_range


@component
class PGD:
    """PGD with ``steps`` steps of size ``step_size`` in an ``eps`` ball (``norm``)."""

    name: Literal["pgd"] = "pgd"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    step_size: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2 / 255
    steps: Annotated[int, Field(ge=0)] = 10
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True
    loss: LossName = "ce"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_bounds(self.bounds, "PGD.bounds")
        check_eps(self.eps, self.bounds, self.norm, "PGD.eps")

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor,
                path: Optional[GradientPath] = None,
                generator: Optional[torch.Generator] = None,
                start: Optional[Tensor] = None) -> Tensor:
        """Adversarial examples for (x, y); ``path`` defaults to the final-state gradient.
        ``start`` gives each sample's random-start perturbation (from :meth:`random_start_for`
        on a larger batch, so that a sample's result does not depend on its batch); otherwise
        it is drawn here from ``generator``."""
        path = path or FinalState()
        loss = LOSSES[self.loss]
        check_range(x, self.bounds)
        if hasattr(model, "num_classes"):
            check_labels(y, x.shape[0], model.num_classes)
        x = x.detach()
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            delta = start if start is not None else self.random_start_for(x, generator)
            x_adv = project(x + delta, x, self.eps, self.norm, self.bounds)
        for _ in range(self.steps):
            grad = path.input_gradient(model, x_adv, y, loss)
            x_adv = project(x_adv + self.step_size * self._direction(grad), x, self.eps,
                            self.norm, self.bounds)
        check_perturbation(x_adv, x, self.eps, self.norm, self.bounds)
        return x_adv.detach()

    def _direction(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / norms.view(-1, *[1] * (grad.dim() - 1))

    def random_start_for(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """A random-start perturbation per sample of x: uniform in the l_inf ball, or
        uniform in direction and radius^(1/d) for l_2."""
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        if self.norm == "linf":
            return self.eps * noise.to(x.device)
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype) ** (1 / x[0].numel())
        return (self.eps * radius.view(-1, *[1] * (x.dim() - 1)) * direction).to(x.device)
