"""One training step's forward pass as a module, so DistributedDataParallel wraps all of it.

    loss = objective(model, x, y) + jacobian_weight * mean_b ||df/dz(z_b)||_F^2 / d

where the Jacobian term (Bai et al. 2021) is evaluated at the equilibrium of the inputs the
objective scored (adversarial ones for PGD-AT / TRADES) on the steps the loop asks for. During
pretraining the objective is clean cross-entropy (no adversarial training during pretraining,
Table 7 of closer-look-neurips22) and a DEQ's gradient mode is swapped for ``Backprop(steps=K)``
(the weight-tied network of K unrolled iterations; the autograd graph built in the forward
pass keeps the swapped mode for the backward pass). An explicit network is pretrained with the
same clean cross-entropy, so a DEQ and its baseline get the same schedule.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from deqshield.gradients import Backprop, jacobian_frobenius
from deqshield.models import DEQClassifier
from deqshield.training.objective_spec import ObjectiveSpec
from deqshield.training.forward import StepOutput, StepRandomness
from deqshield.training.objectives import Standard


class TrainStep(nn.Module):
    """Computes a step's total loss; ``model`` is the classifier being trained."""

    def __init__(self, model: nn.Module, objective: ObjectiveSpec, jacobian_weight: float):
        super().__init__()
        self.model = model
        self.objective = objective
        self.jacobian_weight = jacobian_weight

    def forward(self, x: Tensor, y: Tensor, randomness: StepRandomness, jacobian: bool,
                pretrain: Optional[Backprop]) -> tuple[Tensor, StepOutput]:
        """(total loss, the objective's output)."""
        if pretrain is None:
            output = self.objective.loss(self.model, x, y, randomness)
        else:
            output = self._pretrain_loss(x, y, pretrain)
        loss = output.loss
        if jacobian and self.jacobian_weight > 0 and output.trajectory is not None:
            assert isinstance(self.model, DEQClassifier)
            penalty = jacobian_frobenius(self.model.cell_map(output.inputs),
                                         output.trajectory.final)
            loss = loss + self.jacobian_weight * penalty.mean()
        return loss, output

    def _pretrain_loss(self, x: Tensor, y: Tensor, pretrain: Backprop) -> StepOutput:
        if not isinstance(self.model, DEQClassifier):
            return Standard().loss(self.model, x, y)
        trained_gradient = self.model.deq.gradient
        self.model.deq.gradient = pretrain
        try:
            return Standard().loss(self.model, x, y)
        finally:
            self.model.deq.gradient = trained_gradient
