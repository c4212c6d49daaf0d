"""What a training step's loss reads, and the record it returns.

Random intermediate states (``random_intermediate=True``, Eq. 10 of
regulating-dynamics-icml23): the loss reads out h(z_i) for a state z_i of the forward solve
with i ~ U{1, ..., N} (N the solver's ``max_iter``), drawn once per loss
evaluation from ``randomness.depth``, a generator owned (and checkpointed) by the trainer, before
the solve, which keeps only z_i (a solve that stops early reads its frozen last state). The
gradient is attached at z_i by the model's gradient mode applied to the trajectory truncated at
z_i: ``Phantom`` unrolls k damped steps from z_i, ``Implicit`` backpropagates the adjoint
equation at z_i, ``Backprop`` unrolls i plain steps from z_0. The random depth lives only inside
the loss: adversary generation, validation attacks, checkpoint selection and evaluation call
the model itself (full deterministic solver).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.solvers import SolverStep, Trajectory


@dataclass
class StepOutput:
    """A training step's loss, the logits it scored, and the DEQ trajectory (None for explicit
    models) of ``inputs`` (the clean or adversarial batch scored), whose equilibrium the
    Jacobian regulariser uses. ``robust``: the logits belong to adversarial inputs."""

    loss: Tensor
    logits: Tensor
    trajectory: Optional[Trajectory]
    inputs: Tensor
    robust: bool = False
    after_backward: Optional[Callable[[], None]] = None
    """Called by the loop after ``loss.backward()`` (free AT reads the input gradient there)."""


@dataclass
class StepRandomness:
    """Generators a training step draws from (None means torch's global generator), and the
    step's position.

    ``depth``: the random intermediate index i; ``attack``: PGD random starts; ``step``: the
    number of optimizer steps taken before this one (for schedules such as eps warm-up);
    ``carry``: tensors an objective keeps from one step to the next (free AT's perturbation),
    owned by the trainer.
    """

    depth: Optional[torch.Generator] = None
    attack: Optional[torch.Generator] = None
    step: int = 0
    carry: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Trajectory]]:
    """Logits and, for a DEQ, its forward trajectory (full solver, model's gradient mode)."""
    if isinstance(model, DEQClassifier):
        return model.forward_with_trajectory(x)
    return model(x), None


def truncated_at(trajectory: Trajectory, i: int, z_i: Tensor) -> Trajectory:
    """The trajectory z_0..z_i of a solve (``final`` = z_i; the states are not kept)."""
    return dataclasses.replace(
        trajectory, final=z_i, states=[], abs_residual=trajectory.abs_residual[: i + 1],
        rel_residual=trajectory.rel_residual[: i + 1],
        iterations=trajectory.iterations.clamp(max=i))


def random_intermediate_forward(model: nn.Module, x: Tensor,
                                generator: Optional[torch.Generator]
                                ) -> tuple[Tensor, Trajectory]:
    """h(z_i) with i ~ U{1..N} (N the solver's ``max_iter``) and the gradient mode attached at
    z_i (``GradientMode.at_depth``: plain backprop unrolls i iterations); the full trajectory.
    The index is drawn before the solve and z_i is kept as the solver streams it, so no other
    state is stored (memory flat in N); a solve that stops at T < i has the frozen state
    z_i = z_T, as the readouts read it."""
    if not isinstance(model, DEQClassifier):
        raise InputError("random_intermediate needs a DEQ model, got "
                         f"{type(model).__name__}")
    u = model.inject(x)
    i = int(torch.randint(1, model.deq.solver.max_iter + 1, (1,), generator=generator))
    picked: dict[str, Tensor] = {}

    def keep(step: SolverStep) -> None:
        if step.n == i:
            picked["z"] = step.state.clone()

    trajectory = model.deq.solve(u, callback=keep)
    z_i = picked.get("z", trajectory.final)
    z = model.deq.gradient.at_depth(i).attach(model.deq.bind(u),
                                              truncated_at(trajectory, i, z_i))
    return model.head(z), trajectory


def training_forward(model: nn.Module, x: Tensor, random_intermediate: bool,
                     randomness: StepRandomness) -> tuple[Tensor, Optional[Trajectory]]:
    """The logits a loss uses: the equilibrium, or a random intermediate state (Eq. 10)."""
    if random_intermediate:
        return random_intermediate_forward(model, x, randomness.depth)
    return forward(model, x)
