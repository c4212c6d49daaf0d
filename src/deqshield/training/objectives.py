"""Training objectives: the loss a training step minimises.

Each objective is a validated settings object with ``loss(model, x, y) -> StepOutput``.
``Standard`` is cross-entropy on the logits of the equilibrium (the model's forward pass, with
the model's own gradient mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from pydantic import Field
from torch import Tensor, nn

from deqshield.models import DEQClassifier
from deqshield.settings import component
from deqshield.solvers import Trajectory


@dataclass
class StepOutput:
    """A training step's loss, the logits it scored, and the DEQ trajectory (None for
    explicit models) whose equilibrium the Jacobian regulariser uses."""

    loss: Tensor
    logits: Tensor
    trajectory: Optional[Trajectory]


def forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Trajectory]]:
    """Logits and, for a DEQ, its forward trajectory."""
    if isinstance(model, DEQClassifier):
        return model.forward_with_trajectory(x)
    return model(x), None


@component
class Standard:
    """Cross-entropy on clean inputs."""

    name: Literal["standard"] = "standard"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        logits, trajectory = forward(model, x)
        return StepOutput(nn.functional.cross_entropy(logits, y), logits, trajectory)


ObjectiveSpec = Annotated[Union[Standard], Field(discriminator="name")]
