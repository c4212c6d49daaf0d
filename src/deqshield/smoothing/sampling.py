"""Monte Carlo sampling of a base classifier under Gaussian noise, shared by plain and
serialized randomized smoothing: the settings, the noise draws, f itself, the independent
sampler (every draw solved by f from the model's z_0 with its full solver) and a counter of
cell evaluations.

f is a readout of a deqshield model (``Final``, ``Early`` or ``Ensemble``; for an explicit
network ``Final`` is its output): f(x) = argmax_c readout.logits(model, x)_c.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Iterator, Optional, Protocol, Union

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.readouts import Early, Ensemble, Final
from deqshield.settings import component
from deqshield.smoothing.bounds import clopper_pearson_lower
from deqshield.validation import all_finite, unbounded_inputs

BaseReadout = Annotated[Union[Final, Early, Ensemble], Field(discriminator="name")]


@component
class Serialized:
    """Serialized smoothing (SRS): each noise batch is solved with ``steps`` solver updates
    warm-started from the states of the first, cold-solved batch (``chained`` = False) or from
    the previous batch's final states (``chained`` = True, the chain of Gao et al.); ``checks``
    draws (uniform, with replacement) are also solved cold to bound the warm answers'
    disagreement with f."""

    steps: Annotated[int, Field(ge=1)] = 3
    checks: Annotated[int, Field(ge=1)] = 200
    chained: bool = False


@component(kw_only=True)
class Smoothing:
    """Settings of CERTIFY / PREDICT: noise level ``sigma``, ``n0`` selection and ``n``
    estimation draws, failure probability ``alpha``, ``batch`` draws per forward pass, the base
    ``readout``, and ``serialized`` (None: independent solves, Cohen et al.)."""

    sigma: Annotated[float, Field(gt=0, allow_inf_nan=False)]
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
    ``x`` is one input of shape (1, ...). A sigma so large that the draws overflow ``x``'s
    dtype is an :class:`InputError`."""
    for start in range(0, num, batch):
        size = min(batch, num - start)
        noise = torch.randn((size, *x.shape[1:]), generator=generator, dtype=x.dtype)
        draws = x + sigma * noise.to(x.device)
        if not all_finite(draws):
            raise InputError(f"sigma {sigma:g} is too large: the noisy inputs overflow "
                             f"{x.dtype} to Inf")
        yield draws


def base_predictions(model: nn.Module, readout: BaseReadout, x: Tensor) -> Tensor:
    """f(x): the readout's class for each input, from the model's own solve (z_0, full); the
    noisy inputs are not clipped to the data range."""
    with unbounded_inputs():
        return readout.logits(model, x).argmax(dim=1)


def class_counts(labels: Tensor, classes: int) -> Tensor:
    """How often each of ``classes`` classes occurs in ``labels`` (on the CPU)."""
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
