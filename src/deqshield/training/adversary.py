"""The adversaries of adversarial training: generated in eval mode, warmed up in radius.

Adversaries are generated in **eval mode** (batch norm with running statistics, dropout off,
the full deterministic solver): the attack targets exactly the model that is evaluated and
selected, and the attack's forward passes do not update batch-norm statistics. The loss is then
computed in train mode.

Adversarial warm-up (``warmup``, PGD-AT, TRADES, fast and free AT): at optimizer step t the
adversary attacks at eps_t = r(t) eps with step size r(t) alpha, r ramping linearly from 0 at
step ``start`` to 1 at step ``start + length`` (clean inputs while r = 0). A large radius from
the first step can collapse a small network to a constant prediction (MNIST at eps 0.3, cf.
Madry et al. 2018 on capacity); the ramp is the usual remedy (Gowal et al. 2018). Checkpoint
selection and evaluation always attack at the full radius.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.pgd import PGD
from deqshield.certify import EpsilonSchedule
from deqshield.gradients import GradientSpec
from deqshield.paths import FinalState
from deqshield.paths.base import LossFn
from deqshield.settings import component


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; its previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_in_eval_mode(model: nn.Module, attack: PGD, x: Tensor, y: Tensor,
                          path: FinalState | KLToReference,
                          generator: Optional[torch.Generator]) -> Tensor:
    """``attack.run`` with the model in eval mode; the adversarial examples."""
    with eval_mode(model):
        return attack.run(model, path, x, y, generator=generator).x_adv


def kl_divergence(reference_log_probs: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL(p || q), p = exp(reference_log_probs), q = softmax(logits)."""
    log_q = nn.functional.log_softmax(logits, dim=1)
    p = reference_log_probs.exp()
    return (p * (reference_log_probs - log_q)).sum(dim=1)


@dataclass(frozen=True)
class KLToReference:
    """Gradient path for the TRADES inner maximisation: d KL(p(x) || p(x')) / dx' through
    ``FinalState(gradient)``. PGD passes its own loss and labels; this path replaces them by the
    KL to the fixed clean log-probabilities, so PGD's projection and steps are reused as is."""

    reference_log_probs: Tensor
    gradient: Optional[GradientSpec]
    name: str = "kl-to-reference"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        def kl(logits: Tensor, _: Tensor) -> Tensor:
            return kl_divergence(self.reference_log_probs, logits)

        return FinalState(gradient=self.gradient).input_gradient(model, x, y, kl)


@component
class Warmup:
    """Linear adversarial warm-up: r(t) = clip((t - ``start``) / ``length``, 0, 1)."""

    length: Annotated[int, Field(gt=0)]
    start: Annotated[int, Field(ge=0)] = 0

    def factor(self, step: int) -> float:
        """r(step) in [0, 1]: the certified-training ramp with target 1 and exponent 1, which
        is linear."""
        return EpsilonSchedule(target=1.0, length=self.length, start=self.start,
                               exponent=1.0)(step)


def warmup_factor(warmup: Optional[Warmup], step: int) -> float:
    """r(step) of the warm-up, 1 without one."""
    return 1.0 if warmup is None else warmup.factor(step)


def adversary_at(attack: PGD, warmup: Optional[Warmup], step: int) -> Optional[PGD]:
    """The attack of optimizer step ``step``: ``attack`` with eps and step size scaled by the
    warm-up factor r(step); None while r(step) = 0 (train on clean inputs)."""
    r = warmup_factor(warmup, step)
    return None if r == 0.0 else attack.at_radius(r * attack.eps)
