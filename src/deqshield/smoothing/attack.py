"""An empirical l2 attack on the smoothed classifier, and the soundness check it serves.

SmoothAdv (Salman et al. 2019, "Provably Robust Deep Learning via Adversarially Trained
Smoothed Classifiers") attacks the soft smoothed classifier G(x)_c = E_delta softmax(F(x +
delta))_c instead of the base classifier, with the expectation replaced by the mean over a
fixed set of m draws delta_1..delta_m ~ N(0, sigma^2 I):

    maximise  -log( (1/m) sum_j softmax(F(x' + delta_j))_y )   over ||x' - x||_2 <= eps,

by l2 PGD (:class:`deqshield.attacks.PGD` with ``norm="l2"``). The logits F are
differentiated at the final state with the model's gradient mode (plain autograd for an
explicit network), whatever readout the smoothed classifier uses: any gradient makes a valid
attack. A certificate (c_A, R) claims g(x') = c_A for ||x' - x|| < R; :func:`broken_certificates`
attacks each certified input at eps = R and counts answers of PREDICT other than c_A and
ABSTAIN, which must be 0 (up to the certificates' failure probability alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deqshield.attacks.pgd import PGD
from deqshield.paths.base import LossFn
from deqshield.paths.final_state import final_state_logits
from deqshield.smoothing.sampling import Smoothing
from deqshield.smoothing.smoothed import ABSTAIN, Certificate, predict


@dataclass(frozen=True)
class SmoothedSoftmax:
    """Gradient path: d/dx of -log mean_j softmax(F(x + noise_j))_y (``noise``: (m, ...) fixed
    draws). The loss PGD passes is replaced by this one, as ``KLToReference`` does for TRADES."""

    noise: Tensor
    name: str = "smoothed-softmax"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        x_var = x.detach().requires_grad_()
        draws = self.noise.shape[0]
        with torch.enable_grad():
            noisy = (x_var[:, None] + self.noise[None].to(x.device)).flatten(0, 1)
            logits = final_state_logits(model, noisy)
            probs = logits.softmax(dim=1).view(x.shape[0], draws, -1).mean(dim=1)
            value = -probs.gather(1, y[:, None]).clamp_min(1e-12).log().sum()
            (grad,) = torch.autograd.grad(value, x_var)
        return grad


def smoothed_attack(model: nn.Module, x: Tensor, y: Tensor, sigma: float, eps: float, *,
                    draws: int = 32, steps: int = 20, bounds: tuple[float, float] = (0.0, 1.0),
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """l2 PGD (``steps`` steps of 2.5 eps / steps, random start) on the soft smoothed
    classifier with ``draws`` fixed noise draws; adversarial examples within ``eps`` of x."""
    noise = sigma * torch.randn((draws, *x.shape[1:]), generator=generator, dtype=x.dtype)
    attack = PGD(eps=eps, step_size=2.5 * eps / max(steps, 1), steps=steps, norm="l2",
                 bounds=bounds)
    return attack.run(model, SmoothedSoftmax(noise), x, y, generator=generator).x_adv


def broken_certificates(model: nn.Module, x: Tensor, certificates: list[Certificate],
                        settings: Smoothing, *, draws: int = 32, steps: int = 20,
                        bounds: tuple[float, float] = (0.0, 1.0),
                        generator: Optional[torch.Generator] = None,
                        progress: bool = False) -> int:
    """How many certified inputs x[i] (radius > 0) the smoothed attack at eps = radius moves to
    a point where PREDICT answers a class other than the certified one (abstentions do not
    count as broken); ``progress`` shows a progress bar over the inputs."""
    broken = 0
    for i, certificate in enumerate(tqdm(certificates, disable=not progress, desc="attack",
                                         unit="image")):
        if certificate.prediction == ABSTAIN or certificate.radius <= 0:
            continue
        label = torch.tensor([certificate.prediction])
        x_adv = smoothed_attack(model, x[i:i + 1], label, settings.sigma,
                                min(certificate.radius, 1e6), draws=draws, steps=steps,
                                bounds=bounds, generator=generator)
        answer = predict(model, x_adv, settings, generator)
        broken += int(answer not in (ABSTAIN, certificate.prediction))
    return broken
