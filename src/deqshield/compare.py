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
(one defense's ``robust_samples``; by default the best defense, the one whose per-sample worst
case the report names) and ``certify.json`` of ``deqshield certify`` (``per_sample[i].certified``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from scipy.stats import binomtest

from deqshield.errors import InputError


@dataclasses.dataclass(frozen=True)
class SampleVerdicts:
    """Per-sample verdicts of one report: ``robust[i]`` for the test image of index ``i``."""

    source: str
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
                f"{self.samples} test images at eps {self.a.eps:g}: A - B = "
                f"{100 * self.difference:+.2f} points; kept by A only {self.only_a}, by B only "
                f"{self.only_b}; McNemar's exact test p = {self.p_value:.3g}")


def compare(a: SampleVerdicts, b: SampleVerdicts) -> PairedComparison:
    """McNemar's exact test of two reports' per-sample verdicts on the same test images.

    :class:`InputError` if they cover different images or radii (the test is paired)."""
    if a.robust.keys() != b.robust.keys():
        raise InputError(f"the reports cover different test images ({len(a.robust)} and "
                         f"{len(b.robust)} samples): a paired comparison needs the same ones")
    if a.eps != b.eps:
        raise InputError(f"the reports are at different radii (eps {a.eps:g} and {b.eps:g})")
    only_a = sum(1 for i, kept in a.robust.items() if kept and not b.robust[i])
    only_b = sum(1 for i, kept in b.robust.items() if kept and not a.robust[i])
    discordant = only_a + only_b
    p_value = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(a, b, only_a, only_b, float(p_value))


def read_verdicts(path: Path, defense: Optional[str] = None) -> SampleVerdicts:
    """The per-sample verdicts of the report ``path`` (``results.json`` or ``certify.json``);
    ``defense`` picks a defense of an evaluation by its label (default: the best one)."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a readable JSON report: {error}") from None
    kind = _REPORT_KINDS.get(_kind(report))
    if kind is None:
        raise InputError(f"{path} is neither a results.json of deqshield evaluate nor a "
                         f"certify.json of deqshield certify")
    try:
        return kind(report, defense, str(path))
    except (KeyError, TypeError, IndexError) as error:
        raise InputError(f"{path} lacks what deqshield writes there "
                         f"({type(error).__name__}: {error})") from None


def _kind(report: Any) -> str:
    """The key of :data:`_REPORT_KINDS` that ``report`` has ("" if none)."""
    if not isinstance(report, dict):
        return ""
    return next((key for key in _REPORT_KINDS if key in report), "")


def _evaluation(report: dict[str, Any], defense: Optional[str], source: str) -> SampleVerdicts:
    rows = {row["label"]: row for row in report["defenses"]}
    label = defense or report["aggregate"]["worst_case"]["defense"]
    if label not in rows:
        raise InputError(f"{source} has no defense {label!r}; it has "
                         f"{', '.join(repr(name) for name in rows)}")
    robust = set(rows[label]["robust_samples"])
    return SampleVerdicts(f"{source} ({label}, per-sample worst case)",
                          float(report["protocol"]["eps"]),
                          {i: i in robust for i in range(report["samples"])})


def _certification(report: dict[str, Any], defense: Optional[str],
                   source: str) -> SampleVerdicts:
    if defense is not None:
        raise InputError(f"{source} is a certification: it has no defenses to choose from")
    return SampleVerdicts(f"{source} (certified)", float(report["eps"]),
                          {sample["index"]: bool(sample["certified"])
                           for sample in report["per_sample"]})


# A key only that command's report has -> the reader of its verdicts.
_REPORT_KINDS: dict[str, Callable[[dict[str, Any], Optional[str], str], SampleVerdicts]] = {
    "defenses": _evaluation,
    "certified_broken_by_pgd": _certification,
}
