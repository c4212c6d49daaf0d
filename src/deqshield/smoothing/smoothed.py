"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): PREDICT and CERTIFY.

For a base classifier f (here a readout of a deqshield model: ``Final``, ``Early`` or
``Ensemble``; for an explicit network ``Final`` is its output) the smoothed classifier is

    g(x) = argmax_c P[f(x + delta) = c],   delta ~ N(0, sigma^2 I).

Theorem 1 of Cohen et al.: if P[f(x + delta) = c_A] >= p_A_lower > 1/2, then g(x + e) = c_A
for every ||e||_2 < R = sigma Phi^-1(p_A_lower). The probability is estimated by Monte Carlo:

* CERTIFY: n0 noise draws select the guess c_A (top count); n fresh draws give the count
  n_A of c_A; p_A_lower = Clopper-Pearson lower bound (level alpha) of n_A / n; abstain when
  p_A_lower < 1/2, else return (c_A, R). With probability >= 1 - alpha over the draws, a
  non-abstained answer is g(x) and g is constant on the ball of radius R.
* PREDICT: n draws, the two top counts n_A >= n_B; abstain unless the two-sided binomial
  test of n_A out of n_A + n_B against p = 1/2 has p-value <= alpha (then P[answer != g(x)]
  <= alpha).

f is the model's own deterministic forward pass: each noisy input is solved from the model's
z_0 with its full solver, independently of the other draws. The serialized (warm-started)
variant of Gao et al. (2024) lives in :mod:`deqshield.smoothing.serialized`; it estimates the
same f and corrects the bound for its shortcut.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Optional

import torch
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.smoothing.bounds import binomial_test_two_sided
from deqshield.smoothing.sampling import (CellCounter, IndependentSampler, LowerBound, Sampler,
                                          Smoothing)
from deqshield.smoothing.serialized import SerializedSampler

ABSTAIN = -1


@dataclasses.dataclass
class Certificate:
    """CERTIFY's answer for one input: ``prediction`` (ABSTAIN = -1), l2 ``radius`` (0 when
    abstaining), the bound it came from and the cell evaluations it cost (None: explicit net)."""

    prediction: int
    radius: float
    bound: LowerBound
    cell_evaluations: Optional[int]


def make_sampler(model: nn.Module, settings: Smoothing,
                 generator: Optional[torch.Generator]) -> Sampler:
    """The independent sampler, or the serialized chain when ``settings.serialized`` is set."""
    if settings.serialized is None:
        return IndependentSampler(model, settings, generator)
    return SerializedSampler(model, settings, generator)


def _check_one(model: nn.Module, x: Tensor) -> None:
    if x.dim() < 1 or x.shape[0] != 1:
        raise InputError(f"smoothing works on one input of shape (1, ...), got "
                         f"{tuple(x.shape)}")
    if hasattr(model, "check_input"):
        model.check_input(x)


def certify(model: nn.Module, x: Tensor, settings: Smoothing,
            generator: Optional[torch.Generator] = None) -> Certificate:
    """Cohen et al.'s CERTIFY for one input x of shape (1, ...) (see the module docstring);
    the model should be in eval mode."""
    _check_one(model, x)
    sampler = make_sampler(model, settings, generator)
    with CellCounter(model) as counter, torch.no_grad():
        top = int(sampler.counts(x, settings.n0).argmax())
        bound = sampler.lower_bound(x, settings.n, top, settings.alpha)
    if bound.p_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, bound, counter.count)
    return Certificate(top, radius_of(bound.p_lower, settings.sigma), bound, counter.count)


def predict(model: nn.Module, x: Tensor, settings: Smoothing,
            generator: Optional[torch.Generator] = None) -> int:
    """Cohen et al.'s PREDICT for one input x of shape (1, ...): g(x) or ABSTAIN. Always with
    independent solves (the binomial test needs i.i.d. predictions of f), ``settings.n``
    draws."""
    _check_one(model, x)
    with torch.no_grad():
        counts = IndependentSampler(model, settings, generator).counts(x, settings.n)
    top2 = counts.topk(2) if counts.numel() > 1 else counts.topk(1)
    n_a = int(top2.values[0])
    n_b = int(top2.values[1]) if counts.numel() > 1 else 0
    if binomial_test_two_sided(n_a, n_a + n_b) > settings.alpha:
        return ABSTAIN
    return int(top2.indices[0])


def radius_of(p_lower: float, sigma: float) -> float:
    """sigma Phi^-1(p_lower), 0 for p_lower <= 1/2 (no certificate), inf for p_lower = 1."""
    if p_lower <= 0.5:
        return 0.0
    return math.inf if p_lower >= 1.0 else sigma * NormalDist().inv_cdf(p_lower)
