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
images count as one by :func:`worst_over` (robust only where every report says so); among them
``independent_attack.json`` of ``benchmarks/independent_attack.py``, whose findings (samples an
evaluation counted robust that an outside attacker broke) only lower the evaluation they
checked (:func:`read_model`).
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
    under the ``threat`` model ("Linf" or "L2") at radius ``eps``; ``defense``: the label of
    the evaluation's defense they are of (None for a certificate); ``lowers_only``: the
    verdicts only lower another report's (an independent attack's findings: ``robust[i]`` is
    False where it broke image i, True elsewhere, which alone is no accuracy)."""

    source: str
    threat: str
    eps: float
    robust: Mapping[int, bool]
    defense: Optional[str] = None
    lowers_only: bool = False

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
    _check_radius(a, b)


def _check_radius(a: SampleVerdicts, b: SampleVerdicts) -> None:
    """:class:`InputError` unless ``a`` and ``b`` share threat model and radius."""
    if (a.threat, a.eps) != (b.threat, b.eps):
        raise InputError(f"the reports are at different radii ({a.threat} {a.eps:g} and "
                         f"{b.threat} {b.eps:g})")


def compare(a: SampleVerdicts, b: SampleVerdicts) -> PairedComparison:
    """McNemar's exact test of two reports' per-sample verdicts on the same test images.

    :class:`InputError` if they cover different images or threat models (the test is paired),
    or if either only lowers another report's verdicts."""
    for side in (a, b):
        if side.lowers_only:
            raise InputError(f"{side.source} only lowers the verdicts of the evaluation it "
                             f"checked: give that evaluation, with this report beside it")
    _check_paired(a, b)
    only_a = sum(1 for i, kept in a.robust.items() if kept and not b.robust[i])
    only_b = sum(1 for i, kept in b.robust.items() if kept and not a.robust[i])
    discordant = only_a + only_b
    p_value = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(a, b, only_a, only_b, float(p_value))


def worst_over(reports: Sequence[SampleVerdicts]) -> SampleVerdicts:
    """Several reports of one model as one, on the first report's images: image i counts
    robust only if every report covering it counts it robust, since an adversarial example
    found by any run breaks it, a_i = min_r a_i^(r). Later reports may cover only some of the
    first's images (an outside check run in parts).

    :class:`InputError` if a later report covers an image the first does not, or another
    threat model."""
    if not reports:
        raise InputError("worst_over needs at least one report")
    first, *more = reports
    for other in more:
        extra = other.robust.keys() - first.robust.keys()
        if extra:
            raise InputError(f"{other.source} covers different test images than "
                             f"{first.source} ({len(extra)} beyond its {len(first.robust)})")
        _check_radius(first, other)
    if not more:
        return first
    return SampleVerdicts(" and ".join(report.source for report in reports), first.threat,
                          first.eps, {i: all(report.robust.get(i, True) for report in reports)
                                      for i in first.robust}, first.defense, first.lowers_only)


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
        raise InputError(f"{path} is not a results.json, certify.json, smoothing.json or "
                         f"independent_attack.json of deqshield")
    try:
        return reader(report, selection, str(path))
    except (KeyError, TypeError, IndexError) as error:
        raise InputError(f"{path} lacks what deqshield writes there "
                         f"({type(error).__name__}: {error})") from None


def read_model(paths: Sequence[Path], selection: Selection = Selection()) -> SampleVerdicts:
    """One model's verdicts from its reports (:func:`worst_over`): the first an evaluation,
    certification or smoothing report, the others further reports of the model on (some of)
    its images -- other evaluations, independent attacks' findings -- read for the defense
    the first one's verdicts are of."""
    if not paths:
        raise InputError("read_model needs at least one report")
    first = read_verdicts(paths[0], selection)
    if first.lowers_only:
        raise InputError(f"{paths[0]} only lowers the verdicts of the evaluation it checked: "
                         f"give that evaluation first")
    more = Selection(selection.defense or first.defense, selection.radius)
    return worst_over([first, *(read_verdicts(path, more) for path in paths[1:])])


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
                          {i: i in robust for i in range(report["samples"])}, label)


def _outside_attack(report: dict[str, Any], selection: Selection,
                    source: str) -> SampleVerdicts:
    """An independent attack's findings on test images start <= i < stop: False where it
    broke a sample the checked evaluation counted robust for the defense, True elsewhere."""
    selection.refuse(source, "an independent attack's findings", "radius")
    findings = report["defenses"]
    if selection.defense is None:
        raise InputError(f"{source} holds an independent attack's findings, which only lower "
                         f"the evaluation it checked: give that evaluation first, this report "
                         f"beside it (--also-a / --also-b)")
    if selection.defense not in findings:
        raise InputError(f"{source} has no findings for the defense {selection.defense!r}; it "
                         f"has {', '.join(repr(name) for name in findings)}")
    start, stop = report["samples"]
    broken = set(findings[selection.defense]["broken_robust"])
    return SampleVerdicts(f"{source} ({selection.defense}, independent attack)", "Linf",
                          float(report["config"]["eps"]),
                          {i: i not in broken for i in range(start, stop)},
                          selection.defense, lowers_only=True)


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


# A key only that command's report has (checked in this order) -> the reader of its verdicts.
_READERS: dict[str, Callable[[dict[str, Any], Selection, str], SampleVerdicts]] = {
    "attacked": _outside_attack,
    "defenses": _evaluation,
    "certified_broken_by_pgd": _certification,
    "records": _smoothing,
}
