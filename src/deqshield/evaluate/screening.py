"""Attack screening: rank the attacks on a few samples, run the strongest on all.

Which gradient path breaks a DEQ depends on the model (the final state for one, the full
unroll from z_0 or an intermediate state for another) and on the defense (an early readout
falls to the unroll through its own iterations, the final readout to another path), and trying
every path with every attack on every sample is what makes a white-box protocol expensive. The
screening runs each *cheap* gradient attack (PGD with each path of the protocol, including the
sweep's (i, K, lambda) points) on the first ``samples`` evaluation samples against every
defense, and ranks the columns *for each defense* by the number of its samples they break
(stable: the protocol's order breaks ties). The full run then uses

* for each defense, its ``keep`` strongest cheap columns (a column strong against one readout
  only is kept, however weak it is against the others), in the order of their strength summed
  over the defenses, strongest first (with early exit, the later and weaker attacks only see
  what the stronger ones left), then every exact column (a defense's own gradient,
  ``AttackSpec.exact``) not among them;
* each *expensive* gradient attack of the protocol (APGD-CE/T) fed, for each defense, its
  ``follow`` strongest distinct gradient paths, then every exact path not among them (instead
  of the paths the protocol listed): a defense's own gradient is what an outside attacker
  feeds AutoAttack first, and a screening on a few samples with a cheap attack can rank it
  below paths that PGD likes better (on the Fashion-MNIST zoo DEQ the reference AutoAttack on
  the final readout's own unroll broke 18 of the 643 samples the protocol had counted robust
  when APGD followed only the two strongest paths);
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
    screening's verdicts and the strength of each column: broken samples per defense."""

    order: list[AttackSpec]
    dropped: list[AttackSpec]
    table: VerdictTable
    strength: dict[str, dict[str, int]]

    def summary(self) -> dict[str, Any]:
        """The ranking for results.json."""
        kept = {spec.title for spec in self.order}
        return {"samples": self.table.samples,
                "ranking": [{"attack": title, "broken": sum(broken.values()),
                             "broken_per_defense": broken, "kept": title in kept}
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
    strength = {spec.title: {row: int(((table.verdicts[row, spec.title] == BROKEN)
                                       & table.clean[row]).sum()) for row in table.defenses}
                for spec in cheap}
    ranked = sorted(cheap, key=lambda spec: -sum(strength[spec.title].values()))
    per_defense = [sorted(cheap, key=lambda spec: -strength[spec.title][row])
                   for row in table.defenses]
    chosen = {spec.title for ranking in per_defense for spec in ranking[:screening.keep]}
    kept = ([spec for spec in ranked if spec.title in chosen]
            + [spec for spec in ranked if spec.title not in chosen and spec.exact])
    paths = list(dict.fromkeys(followed_paths(per_defense, screening.follow)
                               + [spec.path for spec in ranked if spec.exact]))
    expensive = dict.fromkeys(spec.attack for spec in specs
                              if not spec.attack.cheap and not spec.gradient_free)
    titles = {spec.path: spec.title for spec in reversed(ranked)}
    followers = [AttackSpec(attack=attack, path=path, label=f"{attack.label} ({titles[path]})")
                 for attack in expensive for path in paths]
    gradient_free = [spec for spec in specs if spec.gradient_free]
    dropped = [spec for spec in ranked if spec not in kept]
    return ScreeningOutcome(kept + followers + gradient_free, dropped, table,
                            {spec.title: strength[spec.title] for spec in ranked})


def followed_paths(per_defense: Sequence[Sequence[AttackSpec]], count: int) -> list[Any]:
    """The union over defenses of each one's ``count`` strongest distinct paths, taken rank by
    rank (every defense's strongest path first)."""
    tops = [strongest_paths(ranking, count) for ranking in per_defense]
    paths: dict[Any, None] = {}
    for rank in range(count):
        for top in tops:
            if rank < len(top):
                paths.setdefault(top[rank].path, None)
    return list(paths)


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
