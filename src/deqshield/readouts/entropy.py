"""Test-time input entropy reduction along the solver trajectory (regulating-dynamics-icml23,
Sec. 3.2, Algorithm 1, Eq. 7-8).

The trajectory is run in segments of T_f (``interval``) solver updates. The input x^(p) is
constant within a segment. At the end of a segment, with z^[t+1] its last state, the input is
updated by R (``steps``) projected sign-gradient steps that lower the prediction entropy

    x_i = Proj_{B_inf(x,eps) cap [lo,hi]}(x_{i-1} - beta sign grad_x H(head(f(z^[t+1]; x_{i-1})))),

with x_0 = x^(p), H(p) = -sum_c p_c log p_c (Eq. 6), the box centred on the *given* input x
(Eq. 7: u in [-eps, eps]) and clipped to the valid range; then z^[t+1] is recomputed from z^[t]
with the new input x^(p+1) = x_R (Algorithm 1, line 13) by one step of the model's solver.

Solver state across an input change: each segment is a fresh solve from the previous segment's
end state, so Anderson's history and Broyden's low-rank inverse estimate are rebuilt for the
new input and never mix residuals of two different maps (a secant pair across an input change
would be inconsistent). The recomputation step is the first step of such a fresh solve: the
damped step z^[t] + lambda (f(z^[t]; x^(p+1)) - z^[t]) with the solver's damping (Picard,
Anderson) or step size (Broyden, B_0 = -I). With R = 0 and a Picard solver the regulated
trajectory is the model's own trajectory.

The defense is deterministic (sign steps from the given input, no random start), so attacks
need no averaging over randomness. The regulated states are fed to a base readout (final,
early or ensemble), so the defense composes with each of them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Union

import torch
from pydantic import Field
from torch import Tensor

from deqshield.models import DEQClassifier
from deqshield.readouts.states import Early, Ensemble, Final
from deqshield.settings import component
from deqshield.threat import project
from deqshield.validation import check_bounds, check_eps, check_range
from deqshield.solvers import Broyden, FixedPointSolver, SolverStep


def prediction_entropy(logits: Tensor) -> Tensor:
    """H = -sum_c p_c log p_c per sample, p = softmax(logits)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@dataclasses.dataclass
class RegulatedTrajectory:
    """States z_0..z_N of the regulated dynamics and the input in force after each segment."""

    states: list[Tensor]
    inputs: list[Tensor]

    @property
    def final_input(self) -> Tensor:
        return self.inputs[-1]


@component
class EntropyReduction:
    """Entropy-reduction defense with frequency ``interval`` (T_f), ``steps`` (R) sign steps of
    size ``step_size`` (beta) in an ``eps`` box, read out by ``base``."""

    name: Literal["entropy-reduction"] = "entropy-reduction"
    interval: Annotated[int, Field(ge=1)] = 2
    steps: Annotated[int, Field(ge=0)] = 10
    step_size: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2 / 255
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)
    base: Annotated[Union[Final, Early, Ensemble], Field(discriminator="name")] = Final()

    def __post_init__(self) -> None:
        check_bounds(self.bounds, "EntropyReduction.bounds")
        check_eps(self.eps, self.bounds, "linf", "EntropyReduction.eps")

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        check_range(x, self.bounds)
        return self.read(model, self.regulate(model, x))

    def read(self, model: DEQClassifier, regulated: RegulatedTrajectory) -> Tensor:
        """The base readout of a regulated trajectory (keeps any autograd graph it carries)."""
        reader = self.base.reader(model, model.deq.solver.max_iter)
        for n, state in enumerate(regulated.states):
            reader.observe(SolverStep(n, state))
        return reader.logits()

    def regulate(self, model: DEQClassifier, x: Tensor, *,
                 differentiable: bool = False) -> RegulatedTrajectory:
        """Run Algorithm 1: the regulated states z_0..z_N and the inputs x^(0), x^(1), ....

        With ``differentiable=True`` the whole computation keeps its autograd graph from x, for
        adaptive attacks: each segment is unrolled as damped fixed-point steps (exactly the
        defense when the model's solver is ``Picard``; with another solver, the same dynamics
        with plain steps, a surrogate), and the input updates are differentiated exactly: the
        sign step has zero derivative almost everywhere, so x_R depends on x through the
        projection onto the box around x and through x_0 only.
        """
        solver = model.deq.solver
        total = solver.max_iter
        x_now = x if differentiable else x.detach()
        with torch.set_grad_enabled(differentiable):
            u = model.inject(x_now)
            states = [model.cell.initial_state(u)]
            inputs = [x_now]
            while len(states) - 1 < total:
                length = min(self.interval, total - (len(states) - 1))
                new = self._segment(model, u, states[-1], length, differentiable)
                if self.steps > 0 and length == self.interval:  # (t + 1) mod T_f == 0
                    x_now = self._reduce_entropy(model, new[-1], x_now, x)
                    u = model.inject(x_now)
                    previous = new[-2] if length > 1 else states[-1]
                    new[-1] = self._recompute(model, previous, u)
                    inputs.append(x_now)
                states += new
        return RegulatedTrajectory(states, inputs)

    @staticmethod
    def _segment(model: DEQClassifier, u: Tensor, z: Tensor, length: int,
                 differentiable: bool) -> list[Tensor]:
        """The next ``length`` states from z with injection u: a fresh solve of the model's
        solver, or (differentiable) damped fixed-point steps recorded by autograd."""
        solver = model.deq.solver
        if differentiable:
            rate = EntropyReduction._rate(solver)
            states = []
            for _ in range(length):
                fz = model.cell(z, u)
                z = fz if rate == 1.0 else z + rate * (fz - z)
                states.append(z)
            return states
        segment = model.deq.solve(u, z0=z, record_states=True,
                                  solver=dataclasses.replace(solver, max_iter=length))
        return segment.states[1:] + [segment.final] * (length - segment.num_steps)

    def _reduce_entropy(self, model: DEQClassifier, z: Tensor, x_start: Tensor,
                        x_given: Tensor) -> Tensor:
        """R projected sign steps on H(head(f(z; x'))) over x' (Eq. 8). The sign direction is a
        constant of the step (its derivative is zero almost everywhere), so the result keeps
        the graph of x_start and x_given only when they carry one."""
        x_now = x_start
        for _ in range(self.steps):
            x_var = x_now.detach().requires_grad_()
            with torch.enable_grad():
                entropy = prediction_entropy(model.head(model.cell(z.detach(),
                                                                   model.inject(x_var))))
                (grad,) = torch.autograd.grad(entropy.sum(), x_var)
            x_now = project(x_now - self.step_size * grad.sign(), x_given, self.eps, "linf",
                            self.bounds)
        return x_now

    @staticmethod
    def _rate(solver: FixedPointSolver) -> float:
        """The step of a fresh solve's first update: damping (Picard, Anderson) or step size
        (Broyden, B_0 = -I)."""
        return solver.step_size if isinstance(solver, Broyden) else solver.damping

    @staticmethod
    def _recompute(model: DEQClassifier, z_previous: Tensor, u: Tensor) -> Tensor:
        """One step of a fresh solve of the model's solver from z_previous with injection u."""
        rate = EntropyReduction._rate(model.deq.solver)
        fz = model.cell(z_previous, u)
        return fz if rate == 1.0 else z_previous + rate * (fz - z_previous)
