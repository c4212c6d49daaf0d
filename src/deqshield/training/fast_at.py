"""Cheaper adversarial training: one-step attacks (fast AT) and free adversarial training.

* ``FastAT`` (one attack step per training step). The adversary is

      x' = clip_[lo, hi]( P( x + eta + alpha sign(d CE(h(z(x + eta)), y) / dx) ) ),
      eta ~ U[-n eps, n eps]^d,

  with alpha = ``step`` eps, n = ``noise``, and P the projection onto the eps-ball around x
  when ``project`` (else the identity). FGSM with a random start (Wong et al. 2020, "Fast is
  better than free": n = 1, alpha = 1.25 eps, projected) and N-FGSM (de Jorge et al. 2022:
  n = 2, alpha = eps, not projected -- the larger noise and the missing projection are what
  keep it clear of catastrophic overfitting) are the two presets. The gradient is taken in
  eval mode through ``FinalState(gradient)`` like PGD-AT's.
* ``FreeAT`` (Shafahi et al. 2019): every batch is replayed ``replays`` times (m); each replay
  is one optimizer step on CE(h(z(x + delta)), y), and the *same* backward pass gives the input
  gradient g, after which delta <- clip_[-eps, eps](delta + ``step`` eps sign(g)). delta is
  carried from one replay and one batch to the next (``StepRandomness.carry``), as in the
  paper; it is not checkpointed (a resumed run starts again from delta = 0).

Both combine with the DEQ terms of :mod:`deqshield.training.objectives`: random intermediate
states, the clean term (``clean_weight``), the eps warm-up, and the loop's Jacobian term.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.losses import cross_entropy
from deqshield.gradients import GradientSpec
from deqshield.paths import FinalState
from deqshield.settings import component
from deqshield.threat import project
from deqshield.training.adversary import Warmup, eval_mode, warmup_factor
from deqshield.training.forward import StepOutput, StepRandomness, training_forward
from deqshield.training.objectives import Standard, adversarial_loss

BOUNDS = (0.0, 1.0)


@component
class OneStepSettings:
    """What fast and free AT share: the radius ``eps``, the sign step ``step`` (a multiple of
    eps), the loss on random intermediate states, and the eps warm-up."""

    eps: Annotated[float, Field(ge=0)] = 0.3
    step: Annotated[float, Field(gt=0)] = 1.0
    random_intermediate: bool = False
    warmup: Optional[Warmup] = None


@component
class FastAT(OneStepSettings):
    """One-step adversarial training (module docstring); the defaults are N-FGSM."""

    name: Literal["fast-at"] = "fast-at"
    noise: Annotated[float, Field(ge=0)] = 2.0
    project: bool = False
    gradient: Optional[GradientSpec] = None
    clean_weight: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, eps: float,
                  generator: Optional[torch.Generator]) -> Tensor:
        """x' of the module docstring at radius ``eps`` (eval mode, mode restored)."""
        noise = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1).to(x.device)
        start = (x + self.noise * eps * noise).clamp(*BOUNDS)
        with eval_mode(model):
            grad = FinalState(gradient=self.gradient).input_gradient(model, start, y,
                                                                     cross_entropy)
        x_adv = start + self.step * eps * grad.sign()
        if self.project:
            return project(x_adv, x, eps, "linf", BOUNDS).detach()
        return x_adv.clamp(*BOUNDS).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        factor = warmup_factor(self.warmup, randomness.step)
        if factor == 0.0:
            return Standard(random_intermediate=self.random_intermediate).loss(
                model, x, y, randomness)
        x_adv = self.adversary(model, x, y, factor * self.eps, randomness.attack)
        return adversarial_loss(model, x, x_adv, y, self.clean_weight,
                                self.random_intermediate, randomness)


@component
class FreeAT(OneStepSettings):
    """Free adversarial training with ``replays`` replays per batch (module docstring)."""

    name: Literal["free-at"] = "free-at"
    replays: Annotated[int, Field(ge=1)] = 4

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        eps = warmup_factor(self.warmup, randomness.step) * self.eps
        delta = randomness.carry.get(self.name)
        if delta is None or delta.shape != x.shape:
            delta = torch.zeros_like(x)
        x_adv = (x + delta.clamp(-eps, eps)).clamp(*BOUNDS).requires_grad_()
        logits, trajectory = training_forward(model, x_adv, self.random_intermediate,
                                              randomness)
        loss = nn.functional.cross_entropy(logits, y)

        def update() -> None:
            if x_adv.grad is not None:
                step = delta + self.step * eps * x_adv.grad.sign()
                randomness.carry[self.name] = step.clamp(-eps, eps).detach()

        return StepOutput(loss, logits, trajectory, x_adv.detach(), robust=eps > 0,
                          after_backward=update)
