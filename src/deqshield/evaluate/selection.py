"""Early-state selection (closer-look-neurips22 Sec. 5.2): the Early index most robust under the
ready-made PGD-10 (final-state gradient) on the development split, then fixed."""

from __future__ import annotations

from collections.abc import Iterable

from torch.utils.data import Dataset

from deqshield.attacks.pgd import PGD, READY_MADE
from deqshield.models import DEQClassifier
from deqshield.paths import FinalState
from deqshield.evaluate.matrix import evaluate_matrix
from deqshield.evaluate.specs import AttackSpec, defense_label
from deqshield.readouts import Early



def select_early_index(model: DEQClassifier, dev_data: Dataset, indices: Iterable[int], *,
                       attack: PGD = READY_MADE, batch_size: int = 128, seed: int = 0,
                       progress: bool = False) -> tuple[int, dict[int, float]]:
    """(best index, robust accuracy per index); the smallest index wins ties."""
    candidates = {index: Early(index=index) for index in indices}
    spec = AttackSpec(attack=attack, path=FinalState(), label="ready-made")
    table = evaluate_matrix(model, dev_data, list(candidates.values()), [spec],
                            batch_size=batch_size, seed=seed, progress=progress)
    scores = {index: table.worst_case_accuracy(defense_label(readout))
              for index, readout in candidates.items()}
    best = max(sorted(scores), key=lambda index: scores[index])
    return best, scores
