"""Projected gradient descent (Madry et al. 2018) with a chosen gradient path.

For l_inf:  x_{k+1} = Proj_{B_inf(x, eps) cap [lo, hi]}(x_k + alpha sign(g_k)),
for l_2:    x_{k+1} = Proj_{B_2(x, eps) cap [lo, hi]}(x_k + alpha g_k / ||g_k||_2),
with g_k = d loss / dx at x_k from the gradient path (for a DEQ: final-state exact/phantom,
simultaneous adjoint, unrolled intermediate, or an ensemble). A random start draws uniformly
from the l_inf ball (or uniformly in direction and radius for l_2); ``restarts`` repeats the
attack from fresh random starts.

Scoring (:mod:`deqshield.attacks.base`): every iterate x_0, ..., x_K of every restart is scored
by each defense, and a sample counts as broken for a defense if any of them is misclassified
(best-iterate scoring, as in AutoAttack). A sample that every defense already misclassifies
leaves the batch: it is not attacked further (its verdicts cannot change). The iterates do not
depend on the defenses, so one run serves all of them. Every returned example is checked to lie
in the ball and the valid range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.base import AttackResult, Scoreboard
from deqshield.attacks.losses import LOSSES, LossName
from deqshield.paths.base import GradientPath
from deqshield.readouts.base import Readout
from deqshield.settings import component
from deqshield.solvers.warm import WarmStarts
from deqshield.threat import project
from deqshield.validation import check_bounds, check_eps, check_labels, check_range


@component
class PGD:
    """PGD with ``steps`` steps of size ``step_size`` in an ``eps`` ball (``norm``), from
    ``restarts`` random starts. ``warm_steps`` k: after each sample's first solve, the
    final-state paths' solves start from the previous iterate's state and take k solver
    updates (:mod:`deqshield.solvers.warm`; None: every solve from the model's z_0).
    As a training adversary a warm attack can be learned around: PGD-AT of the zoo's MNIST
    DEQ with k = 1 leaked the label into its perturbations within one epoch (its own adversaries
    100% correct, clean 45%, the cold attack 0%; ``benchmarks/README.md``)."""

    name: Literal["pgd"] = "pgd"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    step_size: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2 / 255
    steps: Annotated[int, Field(ge=0)] = 10
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True
    restarts: Annotated[int, Field(ge=1)] = 1
    warm_steps: Optional[Annotated[int, Field(ge=1)]] = None
    loss: LossName = "ce"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_bounds(self.bounds, "PGD.bounds")
        check_eps(self.eps, self.bounds, self.norm, "PGD.eps")

    @property
    def label(self) -> str:
        return f"PGD-{self.steps}" + (f" x{self.restarts}" if self.restarts > 1 else "")

    @property
    def gradient_free(self) -> bool:
        return False

    @property
    def cheap(self) -> bool:
        return True

    def at_radius(self, eps: float) -> "PGD":
        """The same attack at radius ``eps``, the step size scaled with it."""
        step_size = self.step_size * eps / self.eps if self.eps > 0 else self.step_size
        return dataclasses.replace(self, eps=eps, step_size=step_size)

    def capped(self, iterations: int, queries: int) -> "PGD":
        return self

    def starts(self, x: Tensor, generator: Optional[torch.Generator]) -> Optional[Tensor]:
        """Random starts (restarts, *x.shape); None without random starts."""
        if not self.random_start or self.eps == 0:
            return None
        return torch.stack([self._random_start(x, generator) for _ in range(self.restarts)])

    def run(self, model: nn.Module, path: GradientPath, x: Tensor, y: Tensor, *,
            defenses: Sequence[Readout] = (), start: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None,
            pending: Optional[Tensor] = None) -> AttackResult:
        """Attack (x, y) along ``path``, scoring every iterate with ``defenses``. ``start``:
        this batch's rows of :meth:`starts` (drawn here from ``generator`` if None). Without
        defenses, restarts cannot be compared and ``x_adv`` is the last restart's."""
        check_range(x, self.bounds)
        if hasattr(model, "num_classes"):
            check_labels(y, x.shape[0], model.num_classes)
        x = x.detach()
        starts = start if start is not None else self.starts(x, generator)
        board = Scoreboard(model, defenses, x, y, pending)
        x_adv = x.clone()
        for restart in range(self.restarts):
            index = board.alive().nonzero().squeeze(1)
            if not len(index):
                break
            current = x[index]
            if starts is not None:
                current = project(current + starts[restart][index], x[index], self.eps,
                                  self.norm, self.bounds)
            x_adv[index] = self._ascend(model, path, x, y, index, current, board)
        result = board.result(x_adv)
        result.check(x, self.eps, self.norm, self.bounds)
        return result

    def _ascend(self, model: nn.Module, path: GradientPath, x: Tensor, y: Tensor,
                index: Tensor, current: Tensor, board: Scoreboard) -> Tensor:
        """The iterates of one restart for the samples ``index``, from ``current``; a sample
        that every defense misclassifies stops. Returns each sample's last iterate."""
        loss = LOSSES[self.loss]
        final = current.clone()
        rows = torch.arange(len(index), device=index.device)
        warm = WarmStarts(self.warm_steps, len(index)) if self.warm_steps else None
        board.score(current, index)
        for _ in range(self.steps):
            keep = board.alive()[index[rows]]
            rows, current = rows[keep], current[keep]
            if not len(rows):
                break
            with warm.active(rows) if warm else nullcontext():
                grad = path.input_gradient(model, current, y[index[rows]], loss)
            current = project(current + self.step_size * self._direction(grad), x[index[rows]],
                              self.eps, self.norm, self.bounds)
            final[rows] = current
            board.score(current, index[rows])
        return final

    def _direction(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / norms.view(-1, *[1] * (grad.dim() - 1))

    def _random_start(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Uniform in the l_inf ball, or uniform in direction and radius^(1/d) for l_2."""
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        if self.norm == "linf":
            return self.eps * noise.to(x.device)
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype) ** (1 / x[0].numel())
        return (self.eps * radius.view(-1, *[1] * (x.dim() - 1)) * direction).to(x.device)


READY_MADE = PGD(steps=10)
"""The ready-made attack of the papers: PGD-10 with step eps / 4 and a random start, at
8/255 (``READY_MADE.at_radius(eps)`` for another radius). With the final-state gradient it is
the attack DEQ papers report, the early-state selection's attack and the training selection's
default."""
