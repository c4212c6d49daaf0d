"""Are two robustness figures on the same test images different? A paired test per sample.

Two models (or two defenses of one model) evaluated on the same n test images give, per image
i, verdicts a_i, b_i in {0, 1} (robust under the protocol's per-sample worst case, or
certified). Their accuracies differ by (n_10 - n_01) / n, where n_10 counts the images only A
keeps and n_01 those only B keeps; the images both keep or both lose say nothing about the
difference. McNemar's exact test: if A and B were equally robust, each of the
m = n_10 + n_01 discordant images would go either way with probability 1/2, so
n_10 ~ Binomial(m, 1/2), and the two-sided p-value is

    p = min(1, 2 * P[X <= min(n_10, n_01)]),  X ~ Binomial(m, 1/2).

Pairing is what makes this sharper than comparing two accuracies with their separate standard
errors (~sqrt(acc (1 - acc) / n) each): most images are kept or lost by both.

Verdicts are read from the reports deqshield writes: ``results.json`` of ``deqshield evaluate``
(one defense's ``robust_samples``: its per-sample worst case; by default the best defense, the
one the report's worst case names), ``certify.json`` of ``deqshield certify``
(``per_sample[i].certified``) and ``smoothing.json`` of ``deqshield smooth`` (correct with a
certified l2 radius >= the ``radius`` asked for). Several reports of one model on the same
images count as one by :func:`worst_over` (robust only where every report says so).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from scipy.stats import binomtest

from deqshield.errors import InputError
from deqshield.smoothing.report import certified_at


@dataclasses.dataclass(frozen=True)
class SampleVerdicts:
    """Per-sample verdicts of one report: ``robust[i]`` for the test image of index ``i``,
    under the ``threat`` model ("Linf" or "L2") at radius ``eps``."""

    source: str
    threat: str
    eps: float
    robust: Mapping[int, bool]

    @property
    def accuracy(self) -> float:
        return sum(self.robust.values()) / len(self.robust)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """McNemar's exact test of ``a`` against ``b`` on the same images (module docstring)."""

    a: SampleVerdicts
    b: SampleVerdicts
    only_a: int
    only_b: int
    p_value: float

    @property
    def samples(self) -> int:
        return len(self.a.robust)

    @property
    def difference(self) -> float:
        """accuracy(a) - accuracy(b) = (n_10 - n_01) / n."""
        return (self.only_a - self.only_b) / self.samples

    def summary(self) -> str:
        """The comparison in a few lines of text."""
        return (f"A: {self.a.source}: {100 * self.a.accuracy:.2f}%\n"
                f"B: {self.b.source}: {100 * self.b.accuracy:.2f}%\n"
                f"{self.samples} test images, {self.a.threat} radius {self.a.eps:g}: A - B = "
                f"{100 * self.difference:+.2f} points; kept by A only {self.only_a}, by B only "
                f"{self.only_b}; McNemar's exact test p = {self.p_value:.3g}")


def _check_paired(a: SampleVerdicts, b: SampleVerdicts) -> None:
    """:class:`InputError` unless ``a`` and ``b`` cover the same images under the same threat
    model and radius (what per-sample pairing needs)."""
    if a.robust.keys() != b.robust.keys():
        raise InputError(f"the reports cover different test images ({len(a.robust)} and "
                         f"{len(b.robust)} samples): pairing needs the same ones")
    if (a.threat, a.eps) != (b.threat, b.eps):
        raise InputError(f"the reports are at different radii ({a.threat} {a.eps:g} and "
                         f"{b.threat} {b.eps:g})")


def compare(a: SampleVerdicts, b: SampleVerdicts) -> PairedComparison:
    """McNemar's exact test of two reports' per-sample verdicts on the same test images.

    :class:`InputError` if they cover different images or threat models (the test is paired)."""
    _check_paired(a, b)
    only_a = sum(1 for i, kept in a.robust.items() if kept and not b.robust[i])
    only_b = sum(1 for i, kept in b.robust.items() if kept and not a.robust[i])
    discordant = only_a + only_b
    p_value = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(a, b, only_a, only_b, float(p_value))


def worst_over(reports: Sequence[SampleVerdicts]) -> SampleVerdicts:
    """Several reports of one model on the same images (evaluations with other random draws,
    an earlier protocol) as one: image i counts robust only if every report counts it robust,
    since an adversarial example found by any run breaks it, a_i = min_r a_i^(r).

    :class:`InputError` if the reports cover different images or threat models."""
    if not reports:
        raise InputError("worst_over needs at least one report")
    first, *more = reports
    for other in more:
        _check_paired(first, other)
    if not more:
        return first
    return SampleVerdicts(" and ".join(report.source for report in reports), first.threat,
                          first.eps, {i: all(report.robust[i] for report in reports)
                                      for i in first.robust})


@dataclasses.dataclass(frozen=True)
class Selection:
    """What to read from a report: ``defense`` (an evaluation's defense label; default the
    best) and ``radius`` (the l2 radius of a smoothing report's certificate)."""

    defense: Optional[str] = None
    radius: Optional[float] = None

    def refuse(self, source: str, kind: str, *names: str) -> None:
        """:class:`InputError` if any option in ``names`` is set for a report of ``kind``."""
        for name in names:
            if getattr(self, name) is not None:
                raise InputError(f"{source} is {kind}: it takes no {name}")


def read_verdicts(path: Path, selection: Selection = Selection()) -> SampleVerdicts:
    """The per-sample verdicts of the report ``path`` (``results.json``, ``certify.json`` or
    ``smoothing.json``), chosen by ``selection``."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a readable JSON report: {error}") from None
    keys = report.keys() if isinstance(report, dict) else ()
    reader = next((read for key, read in _READERS.items() if key in keys), None)
    if reader is None:
        raise InputError(f"{path} is not a results.json, certify.json or smoothing.json "
                         f"of deqshield")
    try:
        return reader(report, selection, str(path))
    except (KeyError, TypeError, IndexError) as error:
        raise InputError(f"{path} lacks what deqshield writes there "
                         f"({type(error).__name__}: {error})") from None


def _evaluation(report: dict[str, Any], selection: Selection, source: str) -> SampleVerdicts:
    selection.refuse(source, "an evaluation", "radius")
    rows = {row["label"]: row for row in report["defenses"]}
    label = selection.defense or report["aggregate"]["worst_case"]["defense"]
    if label not in rows:
        raise InputError(f"{source} has no defense {label!r}; it has "
                         f"{', '.join(repr(name) for name in rows)}")
    robust = set(rows[label]["robust_samples"])
    return SampleVerdicts(f"{source} ({label}, per-sample worst case)", "Linf",
                          float(report["protocol"]["eps"]),
                          {i: i in robust for i in range(report["samples"])})


def _certification(report: dict[str, Any], selection: Selection,
                   source: str) -> SampleVerdicts:
    selection.refuse(source, "an interval-bound certification", "defense", "radius")
    return SampleVerdicts(f"{source} (certified)", "Linf", float(report["eps"]),
                          {sample["index"]: bool(sample["certified"])
                           for sample in report["per_sample"]})


def _smoothing(report: dict[str, Any], selection: Selection, source: str) -> SampleVerdicts:
    selection.refuse(source, "a smoothing certification", "defense")
    if selection.radius is None:
        raise InputError(f"{source} is a smoothing certification: give the l2 radius to "
                         f"compare at (--radius)")
    return SampleVerdicts(f"{source} (certified at l2 radius {selection.radius:g})", "L2",
                          selection.radius,
                          {record["index"]: certified_at(record, selection.radius)
                           for record in report["records"]})


# A key only that command's report has -> the reader of its verdicts.
_READERS: dict[str, Callable[[dict[str, Any], Selection, str], SampleVerdicts]] = {
    "defenses": _evaluation,
    "certified_broken_by_pgd": _certification,
    "records": _smoothing,
}
