"""Gaussian noise augmentation: the training objective of randomized smoothing.

Cohen, Rosenfeld & Kolter (2019) train the base classifier f on noisy inputs,

    min_theta E_{(x, y)} E_{delta ~ N(0, sigma^2 I)} CE(f_theta(x + delta), y),

with one draw of delta per example and step, at the sigma used for certification, so that f
classifies well under the noise that the smoothed classifier g averages over. The noise is not
clipped to the input range. The draws come from the trainer's ``randomness.attack`` generator
(checkpointed with the run), so a resumed run draws the same noise.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.settings import component
from deqshield.training.forward import StepOutput, StepRandomness
from deqshield.training.objectives import Standard


@component
class GaussianNoise:
    """Cross-entropy on x + delta, delta ~ N(0, ``sigma``^2 I) (optionally at a random
    intermediate state, as ``Standard``)."""

    name: Literal["gaussian-noise"] = "gaussian-noise"
    sigma: Annotated[float, Field(ge=0)] = 0.25
    random_intermediate: bool = False

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness) -> StepOutput:
        noise = torch.randn(x.shape, generator=randomness.attack, dtype=x.dtype)
        noisy = x + self.sigma * noise.to(x.device)
        return Standard(random_intermediate=self.random_intermediate).loss(model, noisy, y,
                                                                           randomness)
