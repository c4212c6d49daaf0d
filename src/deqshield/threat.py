"""The threat model: eps-balls in l_inf or l_2 around an input, intersected with the valid
input range. Every attack and every input-changing defense projects with these functions,
and every adversarial example is checked with ``check_perturbation`` before it is scored."""

from __future__ import annotations

from torch import Tensor


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


def check_perturbation(x_adv: Tensor, x: Tensor, eps: float, norm: str,
                       bounds: tuple[float, float], slack: float = 1e-6) -> None:
    """Raise if any example leaves the eps-ball or the valid range."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    if (size > eps + slack).any():
        raise RuntimeError(f"attack left the {norm} ball: max size {float(size.max())} > {eps}")
    if (x_adv < bounds[0] - slack).any() or (x_adv > bounds[1] + slack).any():
        raise RuntimeError(f"attack left the valid input range {bounds}")
