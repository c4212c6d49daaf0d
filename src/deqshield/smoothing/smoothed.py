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
from typing import Annotated, Iterator, Optional, Protocol, Union

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.readouts import Early, Ensemble, Final
from deqshield.settings import component
from deqshield.smoothing.bounds import binomial_test_two_sided, clopper_pearson_lower

ABSTAIN = -1
BaseReadout = Annotated[Union[Final, Early, Ensemble], Field(discriminator="name")]


@component
class Serialized:
    """Serialized smoothing (SRS): each noise batch is solved with ``steps`` solver updates
    warm-started from the previous batch's states; ``checks`` draws (uniform, with replacement)
    are also solved cold to bound the chain's disagreement with f."""

    steps: Annotated[int, Field(ge=1)] = 3
    checks: Annotated[int, Field(ge=1)] = 200


@component(kw_only=True)
class Smoothing:
    """Settings of CERTIFY / PREDICT: noise level ``sigma``, ``n0`` selection and ``n``
    estimation draws, failure probability ``alpha``, ``batch`` draws per forward pass, the base
    ``readout``, and ``serialized`` (None: independent solves, Cohen et al.)."""

    sigma: Annotated[float, Field(gt=0)]
    n0: Annotated[int, Field(ge=1)] = 100
    n: Annotated[int, Field(ge=1)] = 10_000
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.001
    batch: Annotated[int, Field(ge=1)] = 1000
    readout: BaseReadout = Final()
    serialized: Optional[Serialized] = None


@dataclasses.dataclass
class LowerBound:
    """A (1 - alpha) lower bound ``p_lower`` on P[f(x + delta) = c_A] from ``count`` of
    ``samples`` draws; serialized bounds also record their cold ``checks``, the
    ``disagreements`` found there and the disagreement-rate upper bound."""

    p_lower: float
    count: int
    samples: int
    checks: Optional[int] = None
    disagreements: Optional[int] = None
    disagreement_upper: Optional[float] = None


@dataclasses.dataclass
class Certificate:
    """CERTIFY's answer for one input: ``prediction`` (ABSTAIN = -1), l2 ``radius`` (0 when
    abstaining), the bound it came from and the cell evaluations it cost (None: explicit net)."""

    prediction: int
    radius: float
    bound: LowerBound
    cell_evaluations: Optional[int]


class Sampler(Protocol):
    """Draws noisy copies of one input and classifies them with (an estimate of) f."""

    def counts(self, x: Tensor, num: int) -> Tensor:
        """Class counts over ``num`` draws (selection)."""
        ...

    def lower_bound(self, x: Tensor, num: int, top: int, alpha: float) -> LowerBound:
        """A (1 - alpha) lower bound on P[f(x + delta) = top] from ``num`` fresh draws."""
        ...


def noisy_batches(x: Tensor, num: int, sigma: float, batch: int,
                  generator: Optional[torch.Generator]) -> Iterator[Tensor]:
    """``num`` draws x + delta, delta ~ N(0, sigma^2 I) i.i.d., in batches of <= ``batch``;
    ``x`` is one input of shape (1, ...)."""
    for start in range(0, num, batch):
        size = min(batch, num - start)
        noise = torch.randn((size, *x.shape[1:]), generator=generator, dtype=x.dtype)
        yield x + sigma * noise.to(x.device)


def base_predictions(model: nn.Module, readout: BaseReadout, x: Tensor) -> Tensor:
    """f(x): the readout's class for each input, from the model's own solve (z_0, full)."""
    return readout.logits(model, x).argmax(dim=1)


def class_counts(labels: Tensor, classes: int) -> Tensor:
    return torch.bincount(labels.cpu(), minlength=classes)


class IndependentSampler:
    """Every draw solved independently by f (Cohen et al.)."""

    def __init__(self, model: nn.Module, settings: Smoothing,
                 generator: Optional[torch.Generator]):
        self.model, self.settings, self.generator = model, settings, generator

    def counts(self, x: Tensor, num: int) -> Tensor:
        total = torch.zeros(self.model.num_classes, dtype=torch.long)
        for noisy in noisy_batches(x, num, self.settings.sigma, self.settings.batch,
                                   self.generator):
            labels = base_predictions(self.model, self.settings.readout, noisy)
            total += class_counts(labels, self.model.num_classes)
        return total

    def lower_bound(self, x: Tensor, num: int, top: int, alpha: float) -> LowerBound:
        count = int(self.counts(x, num)[top])
        return LowerBound(clopper_pearson_lower(count, num, alpha), count, num)


class CellCounter:
    """Counts cell evaluations per sample row (a forward hook on the DEQ cell): a batched
    call on B states counts B. For an explicit network ``count`` stays None."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.count: Optional[int] = 0 if isinstance(model, DEQClassifier) else None

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.count = (self.count or 0) + int(inputs[0].shape[0])

    def __enter__(self) -> "CellCounter":
        self.handle = (self.model.deq.cell.register_forward_hook(self._hook)
                       if isinstance(self.model, DEQClassifier) else None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


def make_sampler(model: nn.Module, settings: Smoothing,
                 generator: Optional[torch.Generator]) -> Sampler:
    """The independent sampler, or the serialized chain when ``settings.serialized`` is set."""
    if settings.serialized is None:
        return IndependentSampler(model, settings, generator)
    from deqshield.smoothing.serialized import SerializedSampler

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
