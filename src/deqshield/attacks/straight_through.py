"""A straight-through model: the defended prediction forward, a chosen gradient path backward.

Attacks that take a model (AutoAttack) must attack the very prediction that is scored, with the
gradient the evaluation chose. :class:`StraightThrough` returns the readout's logits
``r(x)`` (no graph) and, in the backward pass, the gradient path's vector-Jacobian product.

Exactness: let an attack's loss be ``L(r(x))`` and ``g = dL/dr`` at the forward value (what
autograd hands the backward). The backward returns the path's input gradient of the linear
per-sample loss ``l_b(s) = <g_b, s_b>`` on the path's logits ``s = p(x)``, i.e.
``J_p(x)^T g`` -- the chain rule for ``L(p(x))`` with ``p``'s Jacobian substituted for ``r``'s.
The loss needs no labels, so the wrapper is correct on any sub-batch an attack forms; the
path receives the defended prediction as labels, which a path must use only through the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deqshield.models import Classifier
from deqshield.paths.base import GradientPath
from deqshield.readouts.base import Readout


def _linear_loss(direction: Tensor):
    """Per-sample loss <direction_b, logits_b>; labels are ignored."""
    def loss(logits: Tensor, _labels: Tensor) -> Tensor:
        return (logits * direction).sum(dim=1)
    return loss


class _StraightThroughFn(torch.autograd.Function):
    """forward: readout logits; backward: J_path(x)^T g."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, model: Classifier, readout: Readout,
                path: GradientPath) -> Tensor:
        logits = readout.logits(model, x.detach())
        ctx.save_for_backward(x)
        ctx.model, ctx.path = model, path
        ctx.labels = logits.argmax(dim=1)
        return logits

    @staticmethod
    def backward(ctx: Any, grad_logits: Tensor) -> tuple[Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            grad = ctx.path.input_gradient(ctx.model, x.detach(), ctx.labels,
                                           _linear_loss(grad_logits.detach()))
        return grad, None, None, None


class StraightThrough(nn.Module):
    """``model`` as seen by an attack: value of ``readout``, gradient of ``path``."""

    def __init__(self, model: Classifier, readout: Readout, path: GradientPath):
        super().__init__()
        self.model = model
        self.readout = readout
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        return _StraightThroughFn.apply(x, self.model, self.readout, self.path)
