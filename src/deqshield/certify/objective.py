"""The certified training objective of CerDEQ Sec. 3.6 (Fast-IBP, Shi et al. 2021).

    L = (L_c + lambda_n L_n) / (1 + lambda_n) + lambda (L_t + L_r),
    lambda = lambda_0 (1 - eps_now / eps),

with L_c the cross-entropy on the worst-case logits (-lower bounds of the margins
logit_y - logit_j, Eq. 9), L_n the clean cross-entropy, and the Fast-IBP regularisers, active
during the eps warm-up only, with tolerance tau (0.5):

* tightness: L_t = mean_i ReLU(tau - r_0 / r_i) / tau, r_0 the mean radius of the input box and
  r_i the mean radius of the i-th pre-activation box (penalises bound growth beyond 1 / tau);
* ReLU balance: for pre-activation centres c with masks A (lower > 0, active) and I
  (upper < 0, inactive), the ratios of mean(c A) to -mean(c I) and of the spread
  sum((c - mean c)^2 A) to sum((c - mean c)^2 I), each folded to min(rho, 1 / rho) in (0, 1];
  L_r = mean_i [ReLU(tau - rho_mean) + ReLU(tau - rho_var)] / tau (a layer without inactive
  units contributes 0, as nothing pulls it away from activity; one without active units 2).

For DEQ layers the pre-activation boxes are those at the adjoint DEQ's fixed point.
eps_now follows :class:`EpsilonSchedule` (Xu et al. 2020's smoothed schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from deqshield.certify.intervals import Interval, input_box
from deqshield.certify.models import CertifiableClassifier
from deqshield.errors import InputError
from deqshield.settings import component
from deqshield.validation import check_labels


@component
class EpsilonSchedule:
    """eps_now(step): 0 for ``start`` steps, then a ramp of ``length`` steps to ``target``:
    a polynomial a t^p (p = ``exponent``, 4) over the first ``polynomial_fraction`` (1/4) of
    the ramp, then the linear continuation matching its value and slope, then ``target``.

    With m = fraction * length the ramp is continuously differentiable and reaches the target
    at t = length: a m^(p-1) (m + p (length - m)) = target.
    """

    target: Annotated[float, Field(ge=0)]
    length: Annotated[int, Field(gt=0)]
    start: Annotated[int, Field(ge=0)] = 0
    exponent: Annotated[float, Field(ge=1)] = 4.0
    polynomial_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25

    def __call__(self, step: int) -> float:
        t = step - self.start
        if t <= 0:
            return 0.0
        if t >= self.length:
            return self.target
        p, m = self.exponent, self.polynomial_fraction * self.length
        a = self.target / (m ** (p - 1) * (m + p * (self.length - m)))
        if t <= m:
            return a * t ** p
        return a * m ** p + a * p * m ** (p - 1) * (t - m)


@component
class CertifiedObjective:
    """Weights of the objective: ``natural_weight`` lambda_n (0.25), ``regularizer_weight``
    lambda_0 (0.5 / 0.75 / 1.25 in Table 10), ``tolerance`` tau (0.5), ``clip`` the valid
    input range."""

    natural_weight: Annotated[float, Field(ge=0)] = 0.25
    regularizer_weight: Annotated[float, Field(ge=0)] = 0.5
    tolerance: Annotated[float, Field(gt=0)] = 0.5
    clip: Optional[tuple[float, float]] = (0.0, 1.0)


def tightness_regularizer(box: Interval, preactivations: list[Interval], tolerance: float
                          ) -> Tensor:
    """L_t (see module docstring); 0 without pre-activation boxes."""
    if not preactivations:
        return box.radius.new_zeros(())
    reference = box.radius.mean()
    terms = [F.relu(tolerance - reference / pre.radius.mean().clamp_min(1e-12)) / tolerance
             for pre in preactivations]
    return torch.stack(terms).mean()


def _folded_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """min(rho, 1 / rho) in [0, 1] for rho = numerator / denominator, both >= 0."""
    ratio = numerator / denominator.clamp_min(1e-12)
    return torch.minimum(ratio, 1 / ratio.clamp_min(1e-12))


def relu_balance_regularizer(preactivations: list[Interval], tolerance: float) -> Tensor:
    """L_r (see module docstring); 0 without pre-activation boxes. A layer without inactive
    units contributes 0, one without active units the maximum 2."""
    if not preactivations:
        return torch.zeros(())
    terms = []
    for pre in preactivations:
        centre = pre.center
        inactive = (pre.upper < 0).to(centre.dtype)
        if not inactive.any():
            terms.append(centre.new_zeros(()))
            continue
        active = (pre.lower > 0).to(centre.dtype)
        spread = (centre - centre.mean()) ** 2
        mean_ratio = _folded_ratio((centre * active).mean(), -(centre * inactive).mean())
        var_ratio = _folded_ratio((spread * active).sum(), (spread * inactive).sum())
        terms.append((F.relu(tolerance - mean_ratio) + F.relu(tolerance - var_ratio))
                     / tolerance)
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class CertifiedLoss:
    """The objective L (scalar, differentiable), the clean logits (B, K) of the same forward
    pass and statistics (floats) for logging."""

    loss: Tensor
    logits: Tensor
    stats: dict[str, float]


def certified_loss(model: CertifiableClassifier, x: Tensor, y: Tensor, eps_now: float,
                   eps_target: float, settings: CertifiedObjective = CertifiedObjective()
                   ) -> tuple[Tensor, dict[str, float]]:
    """The objective L above for one batch, and statistics (floats) for logging."""
    result = certified_objective(model, x, y, eps_now, eps_target, settings)
    return result.loss, result.stats


def certified_objective(model: CertifiableClassifier, x: Tensor, y: Tensor, eps_now: float,
                        eps_target: float, settings: CertifiedObjective = CertifiedObjective()
                        ) -> CertifiedLoss:
    """The objective L above for one batch, with the clean logits of its single forward pass
    (so that a training step updates batch-norm statistics once).

    At eps_now = 0 no bounds are computed: L_c = L_n and the regularisers are 0.
    """
    if not eps_target > 0 or not 0 <= eps_now <= eps_target:
        raise InputError(f"need 0 <= eps_now <= eps_target and eps_target > 0, got "
                         f"{eps_now}, {eps_target}")
    check_labels(y, x.shape[0], model.num_classes)
    evaluation = model.evaluate(x)
    natural = F.cross_entropy(evaluation.logits, y)
    zero = natural.new_zeros(())
    robust, tightness, balance = natural, zero, zero
    certified_fraction = float("nan")
    if eps_now > 0:
        box = input_box(x, eps_now, settings.clip)
        trace: list[Interval] = []
        margins = model.margin_bounds(box, y, trace).lower
        robust = F.cross_entropy(-margins, y)
        tightness = tightness_regularizer(box, trace, settings.tolerance)
        balance = relu_balance_regularizer(trace, settings.tolerance).to(natural)
        others = margins.detach().scatter(1, y[:, None], float("inf"))
        certified_fraction = float(((others > 0).all(dim=1) & evaluation.valid).float().mean())
    weight = settings.regularizer_weight * (1 - eps_now / eps_target)
    lam = settings.natural_weight
    loss = (robust + lam * natural) / (1 + lam) + weight * (tightness + balance)
    stats = {
        "loss": loss.item(), "robust_loss": robust.item(), "natural_loss": natural.item(),
        "tightness": tightness.item(), "relu_balance": balance.item(),
        "regularizer_weight": weight, "eps": float(eps_now),
        "natural_accuracy": float((evaluation.logits.argmax(1) == y).float().mean()),
        "certified_fraction": certified_fraction,
        "abstained_fraction": float((~evaluation.valid).float().mean()),
    }
    return CertifiedLoss(loss, evaluation.logits, stats)
