"""Attack screening: rank the attacks on a few samples, run the strongest on all.

Which gradient path breaks a DEQ depends on the model (the final state for one, the full
unroll from z_0 or an intermediate state for another), and trying every path with every attack
on every sample is what makes a white-box protocol expensive. The screening runs each *cheap*
gradient attack (PGD with each path of the protocol, including the sweep's (i, K, lambda)
points) on the first ``samples`` evaluation samples against every defense, and ranks the
columns by the number of (defense, sample) pairs they break (stable: the protocol's order
breaks ties). The full run then uses

* the ``keep`` strongest cheap columns, strongest first (with early exit, the later and weaker
  attacks only see what the stronger ones left), then every exact column (a defense's own
  gradient, ``AttackSpec.exact``) not among them;
* each *expensive* gradient attack of the protocol (APGD-CE/T) fed each of the ``follow``
  strongest distinct gradient paths (instead of the paths the protocol listed);
* the gradient-free attacks (Square) as listed.

Nothing ranked weak is dropped silently: its screening verdicts join the table as columns
tested on the screened samples only (``UNTESTED`` elsewhere), so every sample it broke there
counts in the per-sample worst case, and the report lists the ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset, Subset

from deqshield.models import Classifier
from deqshield.evaluate.matrix import evaluate_matrix
from deqshield.evaluate.specs import AttackSpec, Screening
from deqshield.evaluate.verdicts import BROKEN, VerdictTable
from deqshield.readouts.base import Readout


@dataclass(frozen=True)
class ScreeningOutcome:
    """The full run's columns (``order``), the cheap columns ranked weak (``dropped``), the
    screening's verdicts and the strength (broken (defense, sample) pairs) of each column."""

    order: list[AttackSpec]
    dropped: list[AttackSpec]
    table: VerdictTable
    strength: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """The ranking for results.json."""
        kept = {spec.title for spec in self.order}
        return {"samples": self.table.samples,
                "ranking": [{"attack": title, "broken": broken, "kept": title in kept}
                            for title, broken in self.strength.items()],
                "chosen": [spec.title for spec in self.order]}


def screen_attacks(screening: Screening, model: Classifier, data: Dataset,
                   defenses: Sequence[Readout], specs: Sequence[AttackSpec], *,
                   batch_size: int = 128, seed: int = 0,
                   progress: bool = False) -> ScreeningOutcome:
    """Rank ``specs`` on the first ``screening.samples`` samples of ``data`` (see the module
    docstring)."""
    cheap = [spec for spec in specs if spec.attack.cheap and not spec.gradient_free]
    subset = Subset(data, range(min(screening.samples, len(data))))  # type: ignore[arg-type]
    table = evaluate_matrix(model, subset, defenses, cheap, batch_size=batch_size, seed=seed,
                            progress=progress)
    strength = {spec.title: sum(int(((table.verdicts[row, spec.title] == BROKEN)
                                     & table.clean[row]).sum()) for row in table.defenses)
                for spec in cheap}
    ranked = sorted(cheap, key=lambda spec: -strength[spec.title])
    expensive = dict.fromkeys(spec.attack for spec in specs
                              if not spec.attack.cheap and not spec.gradient_free)
    followers = [AttackSpec(attack=attack, path=top.path, label=f"{attack.label} ({top.title})")
                 for attack in expensive for top in strongest_paths(ranked, screening.follow)]
    gradient_free = [spec for spec in specs if spec.gradient_free]
    kept = ranked[:screening.keep] + [spec for spec in ranked[screening.keep:] if spec.exact]
    dropped = [spec for spec in ranked if spec not in kept]
    return ScreeningOutcome(kept + followers + gradient_free, dropped, table,
                            {spec.title: strength[spec.title] for spec in ranked})


def strongest_paths(ranked: Sequence[AttackSpec], count: int) -> list[AttackSpec]:
    """The strongest column of each of the ``count`` strongest distinct gradient paths in
    ``ranked`` (strongest first): two columns on one path (e.g. two losses through the full
    unroll) would feed the expensive attacks the same gradient twice."""
    first: dict[Any, AttackSpec] = {}
    for spec in ranked:
        first.setdefault(spec.path, spec)
    return list(first.values())[:count]


def with_screened(table: VerdictTable, outcome: ScreeningOutcome) -> list[AttackSpec]:
    """Add the dropped columns' screening verdicts to the full run's ``table``; returns the
    specs of all its columns in order."""
    table.add_columns(outcome.table, [spec.title for spec in outcome.dropped])
    return list(outcome.order) + list(outcome.dropped)
