"""Interval bounds through a DEQ layer: CerDEQ's adjoint DEQ (Eq. 4-5, Prop. 3.1), made sound.

The layer is z = sigma(W z + h) with h = U x + b known to lie in a box [h_lo, h_up] (IBP of the
extractor), sigma monotone non-decreasing and 1-Lipschitz (ReLU). The interval map on pairs
b = (u, l) is (Eq. 5, W+ = max(W, 0), W- = min(W, 0))::

    T(u, l) = ( sigma(W+ u + W- l + h_up),  sigma(W- u + W+ l + h_lo) ),

computed in centre/radius form W+ u + W- l = W c + |W| r with c = (u + l)/2, r = (u - l)/2.

(M) Monotonicity (App. A): if l <= z <= u then sigma(W z + h) lies in T(u, l) for every h in
    the box, and damped steps (1 - lambda) b + lambda T(b), lambda in (0, 1], keep this order.
    So from b_0 = (0, 0), N damped interval steps bound the N-th damped Picard iterate z_N(h)
    from z_0 = 0, for any W (:func:`unrolled_interval`).

(C) Contraction: let L = ||W||_inf = max_i sum_j |W_ij|, which is the induced infinity norm of
    the block matrix [[W+, W-], [W-, W+]] (its rows have the l1-norms of W's rows). Then T is an
    L-contraction in the max norm over (u, l), and so is z -> sigma(W z + h). If L < 1:
      * T has a unique fixed point b* = (u*, l*) and, by (M) in the limit, l* <= z*(h) <= u*
        for the layer's fixed point z*(h) at every h in the box (Prop. 3.1);
      * for any b with r = ||T(b) - b||_inf:  ||T(b) - b*||_inf <= L r / (1 - L);
      * any state z with ||sigma(W z + h) - z||_inf <= delta has ||z - z*(h)||_inf
        <= delta / (1 - L).
    Hence, for the solver's final iterate b, whatever the solver (Anderson, early stop, a cap
    on iterations), with w = (L r + delta) / (1 - L)::

        l = T(b)_l - w  <=  z  <=  T(b)_u + w = u

    for every h in [h_lo, h_up] and every state z whose infinity-norm residual is <= delta:
    the model's own solver output, as long as the model checks that residual
    (:func:`equilibrium_interval`). L >= 1, or a non-finite bound, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from deqshield.certify.intervals import Interval
from deqshield.certify.orthogonal import infinity_norm
from deqshield.errors import InputError, NotConvergedError
from deqshield.gradients import Phantom, unroll
from deqshield.settings import component
from deqshield.solvers import Anderson, SolverSpec
from deqshield.validation import check_number

Activation = Callable[[Tensor], Tensor]


class FusionOperator:
    """The linear map z -> W z of a DEQ layer, and z -> |W| z (entrywise absolute weight)."""

    def __init__(self, weight: Tensor):
        self.weight = weight

    def apply(self, z: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def state_shape_ok(self, shape: torch.Size) -> bool:
        raise NotImplementedError

    def __call__(self, z: Tensor) -> Tensor:
        return self.apply(z, self.weight)

    def magnitude(self, z: Tensor) -> Tensor:
        return self.apply(z, self.weight.abs())

    def contraction(self) -> float:
        """L = ||W||_inf, in float64 (a float so that it never carries gradient)."""
        return float(infinity_norm(self.weight.detach().double()))


class DenseFusion(FusionOperator):
    """W z for states (B, d) and a square weight W of shape (d, d)."""

    def __init__(self, weight: Tensor):
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise InputError(f"a dense fusion weight must be square, got {tuple(weight.shape)}")
        super().__init__(weight)

    def apply(self, z: Tensor, weight: Tensor) -> Tensor:
        return F.linear(z, weight)

    def state_shape_ok(self, shape: torch.Size) -> bool:
        return len(shape) == 2 and shape[1] == self.weight.shape[0]


class ConvFusion(FusionOperator):
    """W z = conv2d(z, K, padding=k // 2) for states (B, C, H, W), K of shape (C, C, k, k)
    with k odd, so that W maps the state space to itself."""

    def __init__(self, weight: Tensor):
        if (weight.dim() != 4 or weight.shape[0] != weight.shape[1]
                or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0):
            raise InputError(f"a conv fusion kernel must be (C, C, k, k) with k odd, got "
                             f"{tuple(weight.shape)}")
        super().__init__(weight)

    def apply(self, z: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(z, weight, padding=weight.shape[2] // 2)

    def state_shape_ok(self, shape: torch.Size) -> bool:
        return len(shape) == 4 and shape[1] == self.weight.shape[0]


@component
class AdjointSolve:
    """How the adjoint DEQ is solved: ``solver`` from b_0 = (0, 0), then the damped steps
    b <- (1 - lambda) b + lambda T(b) of the phantom ``gradient`` (Geng et al. 2021), recorded
    by autograd; they carry the gradient and only shrink the residual."""

    solver: SolverSpec = Anderson(memory=5, max_iter=60, tol=1e-5, stop_mode="abs")
    gradient: Phantom = Phantom()


@dataclass(frozen=True)
class EquilibriumBound:
    """Result of :func:`equilibrium_interval`.

    Attributes:
        box: the certified bounds: they contain every state with infinity-norm residual
            <= ``delta`` of the layer, for every injection h in the given box.
        preactivation: (W+ u + W- l + h_up, W- u + W+ l + h_lo) at the final iterate, the
            bounds on the activation's input used by training regularisers (not certified).
        contraction: L = ||W||_inf < 1.
        residual: (B,) r = ||T(b) - b||_inf of the final iterate b.
        widening: (B,) w = (L r + delta) / (1 - L) added on both sides.
        solver_converged: (B,) whether the solver met its own tolerance (information only:
            the widening makes the box sound either way).
    """

    box: Interval
    preactivation: Interval
    contraction: float
    residual: Tensor
    widening: Tensor
    solver_converged: Tensor


def _check_injection(fusion: FusionOperator, injection: Interval) -> None:
    if not fusion.state_shape_ok(injection.shape):
        raise InputError(f"injection box of shape {tuple(injection.shape)} does not match the "
                         f"fusion weight {tuple(fusion.weight.shape)}")
    if not (torch.isfinite(injection.lower).all() and torch.isfinite(injection.upper).all()):
        raise InputError("the injection box contains NaN or Inf")


def _preactivation(fusion: FusionOperator, state: Tensor, injection: Interval) -> Interval:
    """Bounds on W z + h for l <= z <= u, h in the injection box; ``state`` is (B, 2, ...)."""
    upper, lower = state[:, 0], state[:, 1]
    centre = fusion((upper + lower) / 2)
    radius = fusion.magnitude((upper - lower) / 2)
    return Interval(centre - radius + injection.lower, centre + radius + injection.upper)


def interval_map(fusion: FusionOperator, injection: Interval, activation: Activation
                 ) -> Callable[[Tensor], Tensor]:
    """T on stacked states (B, 2, ...) with [:, 0] the upper and [:, 1] the lower bound."""

    def step(state: Tensor) -> Tensor:
        pre = _preactivation(fusion, state, injection)
        return torch.stack((activation(pre.upper), activation(pre.lower)), dim=1)

    return step


def _sup_norm(diff: Tensor) -> Tensor:
    return diff.abs().flatten(1).amax(dim=1)


def equilibrium_interval(fusion: FusionOperator, injection: Interval,
                         settings: AdjointSolve = AdjointSolve(), delta: float = 0.0,
                         activation: Activation = torch.relu) -> EquilibriumBound:
    """Sound bounds on the states of z = sigma(W z + h), h in ``injection``, whose
    infinity-norm residual ||sigma(W z + h) - z||_inf is at most ``delta`` (``delta = 0``:
    the exact fixed points z*(h)); see (C) in the module docstring.

    Raises:
        NotConvergedError: L = ||W||_inf >= 1 (no contraction certificate), or the bound is
            not finite.
    """
    _check_injection(fusion, injection)
    check_number("delta", delta, minimum=0)
    lipschitz = fusion.contraction()
    if not lipschitz < 1:
        raise NotConvergedError(
            f"the adjoint DEQ is not a certified contraction: ||W||_inf = {lipschitz:.6g} >= 1; "
            "no interval bound is returned")
    step = interval_map(fusion, injection, activation)
    start = torch.zeros((injection.shape[0], 2, *injection.shape[1:]),
                        dtype=injection.lower.dtype, device=injection.lower.device)
    trajectory = settings.solver.solve(step, start, record_states=False)
    state = settings.gradient.attach(step, trajectory)
    pre = _preactivation(fusion, state, injection)
    image = torch.stack((activation(pre.upper), activation(pre.lower)), dim=1)
    residual = _sup_norm(image.detach() - state.detach())
    widening = (lipschitz * residual + delta) / (1 - lipschitz)
    pad = widening.view(-1, *([1] * (injection.center.dim() - 1)))
    box = Interval(image[:, 1] - pad, image[:, 0] + pad)
    if not (torch.isfinite(box.lower).all() and torch.isfinite(box.upper).all()):
        raise NotConvergedError("the adjoint DEQ produced a non-finite bound")
    return EquilibriumBound(box=box, preactivation=pre, contraction=lipschitz,
                            residual=residual, widening=widening,
                            solver_converged=trajectory.converged)


def unrolled_interval(fusion: FusionOperator, injection: Interval, steps: int,
                      damping: float = 1.0, activation: Activation = torch.relu) -> Interval:
    """Exact-by-monotonicity bounds, for every h in ``injection``, on the N-th iterate of
    z_{n+1} = (1 - lambda) z_n + lambda sigma(W z_n + h) from z_0 = 0 (N = ``steps``,
    lambda = ``damping``): (M) in the module docstring. Needs no contraction."""
    _check_injection(fusion, injection)
    if steps < 0 or not 0 < damping <= 1:
        raise InputError(f"need steps >= 0 and damping in (0, 1], got {steps}, {damping}")
    step = interval_map(fusion, injection, activation)
    state = torch.zeros((injection.shape[0], 2, *injection.shape[1:]),
                        dtype=injection.lower.dtype, device=injection.lower.device)
    state = unroll(step, state, steps, damping)
    return Interval(state[:, 1], state[:, 0])
