"""Training objectives: the loss a training step minimises.

Each objective is a validated settings object with
``loss(model, x, y, randomness) -> StepOutput``:

* ``Standard``: cross-entropy on clean inputs, CE(h(z(x)), y).
* ``PGDAT`` (Madry et al. 2018): min_theta E max_{||dx|| <= eps} CE(h(z(x + dx)), y), the inner
  max approximated by the ``attack`` (PGD) with the gradient path ``FinalState(gradient)``
  (``gradient=None``: the model's own training gradient, Table 7 of closer-look-neurips22).
  ``clean_weight`` w > 0 trains on w CE(h(z(x)), y) + (1 - w) CE(h(z(x')), y), the mixed
  objective of the original adversarial training (Goodfellow et al. 2015, w = 0.5): the clean
  input itself is never produced by a random-start attack, and a normalised DEQ trained only
  on perturbed inputs can lose its clean accuracy.
* ``TRADES`` (Zhang et al. 2019):
  CE(h(z(x)), y) + beta * KL(p(x) || p(x')),  x' = argmax_{||x' - x|| <= eps} KL(p(x) || p(x')),
  the inner max by the same PGD steps ascending the KL instead of the CE.
* ``FastAT`` (FGSM with a random start, N-FGSM) and ``FreeAT`` (free adversarial training):
  the one-step objectives of :mod:`deqshield.training.fast_at`.
* ``GaussianNoise`` (Cohen et al. 2019): CE(h(z(x + delta)), y), delta ~ N(0, sigma^2 I), the
  base classifier of randomized smoothing (:mod:`deqshield.training.noise`).
* ``Certified`` (CerDEQ Sec. 3.6 / Fast-IBP): the certified objective of
  :func:`deqshield.certify.certified_loss` at eps_now = schedule(step), the global optimizer
  step, for a :class:`~deqshield.certify.CertifiableClassifier` (CerDEQ or CNN-7).

Adversaries are generated in eval mode and warmed up in radius (:mod:`.adversary`); the random
intermediate states are read by :mod:`.forward`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.pgd import PGD
from deqshield.certify import (CertifiableClassifier, CertifiedObjective, EpsilonSchedule,
                               certified_objective)
from deqshield.errors import InputError
from deqshield.gradients import GradientSpec
from deqshield.paths import FinalState
from deqshield.settings import component
from deqshield.training.adversary import (KLToReference, Warmup, adversary_at, eval_mode,
                                          generate_in_eval_mode, kl_divergence)
from deqshield.training.forward import StepOutput, StepRandomness, training_forward
from deqshield.validation import INPUT_RANGE, check_eps


@component
class Standard:
    """Cross-entropy on clean inputs (optionally at a random intermediate state)."""

    name: Literal["standard"] = "standard"
    random_intermediate: bool = False

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        logits, trajectory = training_forward(model, x, self.random_intermediate, randomness)
        return StepOutput(nn.functional.cross_entropy(logits, y), logits, trajectory, x)


@component
class MultiStepSettings:
    """What PGD-AT and TRADES share: the inner maximiser ``attack`` with the gradient path
    ``FinalState(gradient)``, the loss on random intermediate states, and the warm-up."""

    attack: PGD = PGD()
    gradient: Optional[GradientSpec] = None
    random_intermediate: bool = False
    warmup: Optional[Warmup] = None

    def adversary(self, randomness: StepRandomness) -> Optional[PGD]:
        """The attack of this step (:func:`~deqshield.training.adversary.adversary_at`)."""
        return adversary_at(self.attack, self.warmup, randomness.step)

    def clean_loss(self, model: nn.Module, x: Tensor, y: Tensor,
                   randomness: StepRandomness) -> StepOutput:
        """The standard loss, for the steps the warm-up leaves clean."""
        return Standard(random_intermediate=self.random_intermediate).loss(model, x, y,
                                                                           randomness)


@component
class PGDAT(MultiStepSettings):
    """PGD adversarial training: CE on adversaries of ``attack`` with gradient ``gradient``
    (optionally with an adversarial ``warmup``)."""

    name: Literal["pgd-at"] = "pgd-at"
    clean_weight: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        attack = self.adversary(randomness)
        if attack is None:
            return self.clean_loss(model, x, y, randomness)
        x_adv = generate_in_eval_mode(model, attack, x, y, FinalState(gradient=self.gradient),
                                      randomness.attack)
        return adversarial_loss(model, x, x_adv, y, self.clean_weight,
                                self.random_intermediate, randomness)


def adversarial_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, clean_weight: float,
                     random_intermediate: bool, randomness: StepRandomness) -> StepOutput:
    """w CE(h(z(x)), y) + (1 - w) CE(h(z(x_adv)), y) with w = ``clean_weight`` (the clean
    term only when w > 0), at random intermediate states if asked."""
    logits, trajectory = training_forward(model, x_adv, random_intermediate, randomness)
    loss = nn.functional.cross_entropy(logits, y)
    if clean_weight > 0:
        clean = Standard(random_intermediate=random_intermediate)
        loss = clean_weight * clean.loss(model, x, y, randomness).loss + (1 - clean_weight) * loss
    return StepOutput(loss, logits, trajectory, x_adv, robust=True)


@component
class TRADES(MultiStepSettings):
    """TRADES: CE(clean) + beta KL(p(x) || p(x')), x' maximising the KL with ``attack``
    (optionally with an adversarial ``warmup``)."""

    name: Literal["trades"] = "trades"
    beta: Annotated[float, Field(ge=0)] = 6.0

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        attack = self.adversary(randomness)
        if attack is None:
            return self.clean_loss(model, x, y, randomness)
        with eval_mode(model), torch.no_grad():
            reference = nn.functional.log_softmax(model(x), dim=1)
        x_adv = generate_in_eval_mode(model, attack, x, y,
                                      KLToReference(reference, self.gradient), randomness.attack)
        clean_logits, _ = training_forward(model, x, self.random_intermediate, randomness)
        adv_logits, trajectory = training_forward(model, x_adv, self.random_intermediate,
                                                  randomness)
        clean_log_probs = nn.functional.log_softmax(clean_logits, dim=1)
        robust_term = kl_divergence(clean_log_probs, adv_logits).mean()
        loss = nn.functional.cross_entropy(clean_logits, y) + self.beta * robust_term
        return StepOutput(loss, adv_logits, trajectory, x_adv, robust=True)


@component
class Certified:
    """Certified training: L = (L_c + lambda_n L_n) / (1 + lambda_n) + lambda (L_t + L_r) at
    eps_now = ``schedule(step)``, lambda = lambda_0 (1 - eps_now / eps), eps =
    ``schedule.target`` (see :mod:`deqshield.certify.objective`; ``weights`` holds lambda_n,
    lambda_0, tau and the valid input range). The logits reported are the clean ones.

    ``test_eps`` is the radius the model is meant to be certified at: the dev selection's and
    ``certify``'s default (None: the training radius). Interval-bound training at a larger
    radius than the tested one tightens the bounds at the tested one (Gowal et al. 2018 train
    MNIST at eps 0.2 for eps 0.1)."""

    name: Literal["certified"] = "certified"
    schedule: EpsilonSchedule = EpsilonSchedule(target=8 / 255, length=1000)
    weights: CertifiedObjective = CertifiedObjective()
    test_eps: Optional[Annotated[float, Field(gt=0)]] = None

    def __post_init__(self) -> None:
        if not self.schedule.target > 0:
            raise InputError(f"certified training needs eps > 0, got {self.schedule.target}")
        if self.test_eps is not None:
            check_eps(self.test_eps, self.weights.clip or INPUT_RANGE, name="test_eps")

    @property
    def eps(self) -> float:
        """The training target radius eps."""
        return self.schedule.target

    @property
    def certified_eps(self) -> float:
        """The radius certified on the dev split and by default: ``test_eps`` or eps."""
        return self.eps if self.test_eps is None else self.test_eps

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        if not isinstance(model, CertifiableClassifier):
            raise InputError("certified training needs a certifiable model (cerdeq, cnn7), got "
                             f"{type(model).__name__}")
        result = certified_objective(model, x, y, self.schedule(randomness.step), self.eps,
                                     self.weights)
        return StepOutput(result.loss, result.logits.detach(), None, x)

