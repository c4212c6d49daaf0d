"""Transfer attacks: examples crafted against (model A, defense A), scored on (model B,
defense B). A sample counts as robust if B classifies both its clean and adversarial input
correctly."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset

from deqshield.models import Classifier
from deqshield.evaluate.matrix import cell_examples, materialize, predict
from deqshield.evaluate.specs import AttackSpec
from deqshield.readouts.base import Readout


@dataclass(frozen=True)
class TransferResult:
    """Per-sample outcome on the target."""

    clean: Tensor
    robust: Tensor

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())


def transfer(source: tuple[Classifier, Readout], target: tuple[Classifier, Readout],
             spec: AttackSpec, data: Dataset, *, batch_size: int = 128,
             seed: int = 0) -> TransferResult:
    """Craft with ``spec`` against ``source`` = (model, defense); score on ``target``."""
    (source_model, source_readout), (target_model, target_readout) = source, target
    source_model.eval()
    target_model.eval()
    x, y = materialize(data)
    x_adv = cell_examples(source_model, source_readout, spec, x, y, batch_size=batch_size,
                          seed=seed)
    clean = predict(target_model, target_readout, x, batch_size) == y
    robust = clean & (predict(target_model, target_readout, x_adv, batch_size) == y)
    return TransferResult(clean, robust)
