"""The intermediate-attack sweep of closer-look-neurips22 Sec. 6.4: unrolled gradients at every
state z_i with K = 1..9 unrolling steps and damping lambda in {0.5, 1}."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from deqshield.attacks.pgd import PGD
from deqshield.paths import UnrolledIntermediate
from deqshield.evaluate.specs import AttackSpec

SWEEP_STEPS: tuple[int, ...] = tuple(range(1, 10))
SWEEP_DAMPINGS: tuple[float, ...] = (0.5, 1.0)


def intermediate_sweep(indices: Iterable[int], attack: PGD = PGD(), *,
                       steps: Iterable[int] = SWEEP_STEPS,
                       dampings: Iterable[float] = SWEEP_DAMPINGS) -> Iterator[AttackSpec]:
    """Attack specs with ``UnrolledIntermediate(index=i, steps=K, damping=lambda)``."""
    steps, dampings = tuple(steps), tuple(dampings)
    for index in indices:
        for k in steps:
            for damping in dampings:
                path = UnrolledIntermediate(index=index, steps=k, damping=damping)
                yield AttackSpec(attack=attack, path=path, label=path.label)
