"""The ready-made gradient: backpropagate the loss at the final state.

For a DEQ this uses a training-gradient mode at z_T: ``Implicit`` (exact, Eq. 2) or ``Phantom``
(unrolled, Eq. 4); ``gradient=None`` uses the model's own mode ("same with the gradient used in
training", Table 7 of closer-look-neurips22). For an explicit network it is plain autograd.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from deqshield.gradients import GradientSpec
from deqshield.models import DEQClassifier
from deqshield.paths.base import LossFn
from deqshield.settings import component


def final_state_logits(model: nn.Module, x: Tensor,
                       gradient: Optional[GradientSpec] = None) -> Tensor:
    """Differentiable logits at the final state with the given gradient mode."""
    if not isinstance(model, DEQClassifier) or gradient is None:
        return model(x)
    return model.head(model.deq(model.inject(x), gradient=gradient)[0])


@component
class FinalState:
    """Ready-made attack gradient at the final state."""

    name: Literal["final"] = "final"
    gradient: Optional[GradientSpec] = None

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        x_var = x.detach().requires_grad_()
        with torch.enable_grad():
            value = loss(final_state_logits(model, x_var, self.gradient), y).sum()
            (grad,) = torch.autograd.grad(value, x_var)
        return grad
