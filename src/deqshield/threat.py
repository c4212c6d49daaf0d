"""The threat model: eps-balls in l_inf or l_2 around an input, intersected with the valid
input range. Every attack and every input-changing defense projects with these functions,
and every adversarial example is checked with ``check_perturbation`` (from
:mod:`deqshield.validation`) before it is scored."""

from __future__ import annotations

from torch import Tensor

from deqshield.validation import check_perturbation

__all__ = ["check_perturbation", "project"]


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str,
            bounds: tuple[float, float]) -> Tensor:
    """Project onto the eps-ball around x (``norm`` "linf" or "l2") intersected with bounds.
    For l_2 the ball projection comes first, then clipping, which keeps the result in both
    (clipping towards a box that contains x never increases the distance to x)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
    return (x + delta).clamp(*bounds)
