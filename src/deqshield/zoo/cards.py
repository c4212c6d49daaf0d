"""The model card of a zoo model (``card.json``): how the model was trained and evaluated.

RobustBench's model-info record (dataset, threat model, eps, clean and AutoAttack accuracy,
architecture, parameters) plus what a DEQ needs besides: the per-sample white-box worst case
over the full protocol, the min over attacks, the certified accuracy, the solver and its cell
evaluations per prediction, and the commands that retrain and re-evaluate the model.
Accuracies are fractions in [0, 1]; a figure that was not measured is ``null``. The clean,
``autoattack_accuracy`` (the protocol's lowest APGD column), worst-case and min-over-attacks
figures come from one evaluation (``deqshield evaluate``, on ``test_images`` images); the
certified accuracy from ``deqshield certify``, whose own clean accuracy and sample count are in
``results["certify"]``. Two records come from attacks written apart from deqshield's
(``benchmarks/independent_attack.py``): ``outside_check`` (:class:`OutsideCheck`, what it broke
among the samples the evaluation counted robust) and ``reference_autoattack``
(:class:`ReferenceAutoAttack`, the reference AutoAttack on every test image).

A name says dataset, threat model, radius and kind: ``mnist-linf-0.3-deq``,
``mnist-linf-0.1-cerdeq`` (``{dataset}-{linf|l2}-{eps}-{kind}``, lower case); it must agree
with the card's ``dataset``, ``threat_model`` and ``eps`` (to three significant digits, so
8/255 may be written 0.0314).

A smoothed model (its card has a ``smoothing`` record, :mod:`deqshield.zoo.smoothed`) is named
``{dataset}-l2-{radius}-{base}smooth{100 sigma}``, e.g. ``mnist-l2-0.5-deqsmooth25``: the DEQ
smoothed with sigma = 0.25, whose headline ``certified_accuracy`` is the one at l2 radius 0.5.
The threat model is L2; eps is one of the radii the record certified (so the name never claims
a radius that was not certified); the kind is the base model's kind followed by ``smooth`` and
sigma in hundredths (sigma must be a whole number of hundredths), and only a smoothed card has a
kind of that form. Its ``clean_accuracy`` is the smoothed classifier's: the certified accuracy
at radius 0, abstentions counted as errors; ``test_images`` is the record's, and the record's
``command`` is the one that certifies it again (``deqshield smooth zoo:NAME ...``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, TypeAdapter, ValidationError

from deqshield.errors import CheckpointError, InputError
from deqshield.settings import component, settings_dict
from deqshield.zoo.smoothed import Fraction, SmoothingRecord, smoothing_command

NAME_PATTERN = re.compile(r"^(?P<dataset>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<threat>linf|l2)-"
                          r"(?P<eps>[0-9]+(?:\.[0-9]+)?(?:e-[0-9]+)?)-(?P<kind>[a-z0-9]+)$")
"""``{dataset}-{linf|l2}-{eps}-{kind}``."""

SMOOTHED_KIND = re.compile(r"^(?P<base>[a-z0-9]+?)smooth(?P<sigma>[0-9]+)$")
"""The kind of a smoothed model: ``{base}smooth{100 sigma}``."""

def check_name(name: str) -> re.Match[str]:
    """The parts of a model name; :class:`InputError` unless it follows :data:`NAME_PATTERN`
    (the eps part must equal the card's eps to three significant digits)."""
    match = NAME_PATTERN.match(name)
    if match is None:
        raise InputError(f"name {name!r} is not {{dataset}}-{{linf|l2}}-{{eps}}-{{kind}} "
                         "(lower case, e.g. mnist-linf-0.3-deq)")
    return match


@component
class Architecture:
    """The model: its config name (``conv-deq``, ``cerdeq``, ...) and a short description."""

    model: str
    description: str


@component
class Solver:
    """The forward solver of a DEQ: name, iteration cap and tolerance."""

    name: str
    max_iter: Annotated[int, Field(ge=1)]
    tol: Annotated[float, Field(ge=0)]


@component
class Training:
    """The recipe: the shipped config it was trained with (``src/deqshield/configs/``; the
    config itself is the model's ``config.yaml``), the objective's name, and the checkpoint
    (step, epoch) that was packaged."""

    config_file: str
    objective: str
    step: Annotated[int, Field(ge=0)]
    epoch: Annotated[int, Field(ge=0)]


@component
class OutsideCheck:
    """An attack written apart from deqshield's (``benchmarks/independent_attack.py``) run on
    the ``samples`` the evaluation counted robust for some defense: its ``command`` (or
    commands, with their budgets) and the best defense's per-sample worst case once the samples
    it broke are counted, ``worst_case_accuracy``: at most the evaluation's. The tables show
    this figure, the lower of the two, since an outside attacker has shown it."""

    command: Annotated[str, Field(min_length=1)]
    samples: Annotated[int, Field(ge=1)]
    worst_case_accuracy: Fraction


@component
class ReferenceAutoAttack:
    """The reference AutoAttack (``pyautoattack`` at the standard version's budgets, the
    members its ``command`` names) run by ``benchmarks/independent_attack.py --all-samples`` on
    every one of the card's test images, its adversarial examples scored by the card's best
    defense: ``accuracy`` is the fraction of the test images that stayed correct. Unlike
    ``autoattack_accuracy`` (the protocol's own APGD column, unmeasured where the evaluation
    exits early) it attacks every image. It attacks a surrogate (a DEQ's logits after a fixed
    number of plain iterations, one run per readout depth), usually with its gradient members
    only, so it is an AutoAttack-style figure, not RobustBench's exact protocol; the defense
    scores every example."""

    command: Annotated[str, Field(min_length=1)]
    accuracy: Fraction


@component(kw_only=True)
class Card:
    """A zoo model's card; the constructor validates every field (strict: no string for a
    number) and the consistency of the name and the accuracies.

    ``attack_budgets``: the settings of every attack that ran, per command; ``results``:
    further measured figures (the evaluation's best defense, min-max, APGD cells; the
    certification's clean and PGD accuracy and soundness check). ``solver`` and
    ``cell_evaluations_per_prediction`` (at most the solver's iteration cap) are None for an
    explicit network. ``slice_predictions``: the labels predicted for the first 64 images of the
    package's test slice of the data set (:mod:`deqshield.zoo.slices`), None without a slice.
    ``smoothing``: the randomized-smoothing certification of a smoothed model (see the module
    docstring), None otherwise. ``outside_check``: an independent attack on the evaluation's
    verdicts (:class:`OutsideCheck`), None when none was recorded; a re-evaluation drops it.
    ``reference_autoattack``: the reference AutoAttack on every test image
    (:class:`ReferenceAutoAttack`), None when none was recorded; a re-evaluation (which may
    change the test images) drops it too."""

    name: str
    dataset: str
    threat_model: Literal["Linf", "L2"]
    eps: Annotated[float, Field(gt=0)]
    input_shape: tuple[int, int, int]
    num_classes: Annotated[int, Field(ge=2)]
    architecture: Architecture
    parameters: Annotated[int, Field(ge=1)]
    clean_accuracy: Fraction
    autoattack_accuracy: Optional[Fraction] = None
    worst_case_accuracy: Optional[Fraction] = None
    min_over_attacks: Optional[Fraction] = None
    certified_accuracy: Optional[Fraction] = None
    test_images: Annotated[int, Field(ge=1)]
    attack_budgets: dict[str, Any] = Field(default_factory=dict)
    solver: Optional[Solver] = None
    cell_evaluations_per_prediction: Optional[Annotated[int, Field(ge=1)]] = None
    training: Training
    training_wall_time_seconds: Optional[Annotated[float, Field(ge=0)]] = None
    training_machine: str = ""
    deqshield_version: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    retrain_command: str
    evaluate_command: str = ""
    notes: tuple[str, ...] = ()
    results: dict[str, Any] = Field(default_factory=dict)
    slice_predictions: Optional[tuple[int, ...]] = None
    smoothing: Optional[SmoothingRecord] = None
    outside_check: Optional[OutsideCheck] = None
    reference_autoattack: Optional[ReferenceAutoAttack] = None

    def __post_init__(self) -> None:
        match = check_name(self.name)
        if (f"{float(match['eps']):.3g}" != f"{self.eps:.3g}"
                or (match["dataset"], match["threat"]) != (self.dataset,
                                                           self.threat_model.lower())):
            raise ValueError(f"name {self.name!r} does not match dataset {self.dataset!r}, "
                             f"threat model {self.threat_model} and eps {self.eps:g}")
        for figure in ("autoattack_accuracy", "worst_case_accuracy", "min_over_attacks"):
            value = getattr(self, figure)
            if value is not None and value > self.clean_accuracy:
                raise ValueError(f"{figure} {value} exceeds clean_accuracy "
                                 f"{self.clean_accuracy}")
        if (self.worst_case_accuracy is not None and self.min_over_attacks is not None
                and self.worst_case_accuracy > self.min_over_attacks):
            raise ValueError("worst_case_accuracy exceeds min_over_attacks")
        if self.slice_predictions is not None and not all(
                0 <= label < self.num_classes for label in self.slice_predictions):
            raise ValueError(f"slice_predictions must be labels in [0, {self.num_classes})")
        self._check_smoothing()
        self._check_outside_check()
        self._check_reference_autoattack()

    def images(self, fraction: float) -> int:
        """A fraction of the test images as a count (the figures are stored as float32
        fractions, so counts are what is compared)."""
        return round(fraction * self.test_images)

    def _check_outside_check(self) -> None:
        """An outside check lowers the evaluation's worst case by at most what it attacked, and
        attacked at least every sample the best defense was counted robust on."""
        check = self.outside_check
        if check is None:
            return
        if self.worst_case_accuracy is None:
            raise ValueError("an outside check needs the evaluation's worst_case_accuracy")
        robust = self.images(self.worst_case_accuracy)
        if self.images(check.worst_case_accuracy) > robust:
            raise ValueError("outside_check.worst_case_accuracy must be at most the "
                             "evaluation's worst_case_accuracy (it counts the samples the "
                             "outside attack broke)")
        if not robust <= check.samples <= self.test_images:
            raise ValueError(f"outside_check.samples must be between the {robust} samples the "
                             "best defense was counted robust on and the "
                             f"{self.test_images} test images")

    def _check_reference_autoattack(self) -> None:
        """The reference AutoAttack is an l_inf attack on an attacked or certified model; it
        leaves at most the clean images correct and at least those the (checked) per-sample
        worst case counts robust and those certified: fewer would mean it broke some of them,
        which an outside check must record first (a certificate cannot be broken at all)."""
        reference = self.reference_autoattack
        if reference is None:
            return
        if self.threat_model != "Linf" or self.smoothing is not None:
            raise ValueError("a reference AutoAttack is recorded for an l_inf model that is "
                             "not smoothed")
        correct = self.images(reference.accuracy)
        if correct > self.images(self.clean_accuracy):
            raise ValueError(f"reference_autoattack.accuracy {reference.accuracy} exceeds "
                             f"clean_accuracy {self.clean_accuracy}")
        floors = [self.images(figure) for figure in (self.checked_worst_case,
                                                     self.certified_accuracy)
                  if figure is not None]
        if correct < max(floors, default=0):
            raise ValueError("reference_autoattack.accuracy is below the per-sample worst "
                             "case or the certified accuracy: the reference AutoAttack broke "
                             "samples counted robust; record them as an outside check first")

    @property
    def outside_broken(self) -> int:
        """Samples of the best defense the outside check broke (0 without a check)."""
        check = self.outside_check
        if check is None or self.worst_case_accuracy is None:
            return 0
        return self.images(self.worst_case_accuracy) - self.images(check.worst_case_accuracy)

    @property
    def checked_worst_case(self) -> Optional[float]:
        """The per-sample worst case after the outside check, else the evaluation's."""
        check = self.outside_check
        return check.worst_case_accuracy if check and self.outside_broken else (
            self.worst_case_accuracy)

    @property
    def reference_accuracy(self) -> Optional[float]:
        """The reference AutoAttack's accuracy on the test images, None where it did not run."""
        reference = self.reference_autoattack
        return None if reference is None else reference.accuracy

    def _check_smoothing(self) -> None:
        """A smoothed card agrees with its record and its name (see the module docstring)."""
        kind = SMOOTHED_KIND.match(self.kind)
        record = self.smoothing
        if record is None:
            if kind is not None:
                raise ValueError(f"kind {self.kind!r} names a smoothed model, but the card "
                                 "has no smoothing record")
            return
        sigma = record.settings.sigma
        if kind is None or not math.isclose(100 * sigma, int(kind["sigma"]), abs_tol=1e-9):
            raise ValueError(f"a smoothed model's kind is {{base}}smooth{{100 sigma}} "
                             f"(sigma {sigma:g}: e.g. deqsmooth{round(100 * sigma)}), got "
                             f"{self.kind!r}")
        if self.threat_model != "L2":
            raise ValueError("a smoothed model's threat model is L2")
        headline = record.accuracy_at(self.eps)
        if headline is None:
            raise ValueError(f"eps {self.eps:g} is not a radius the smoothing record "
                             f"certified ({', '.join(record.certified_accuracy)})")
        expected = (record.accuracy_at(0), headline, record.test_images)
        if (self.clean_accuracy, self.certified_accuracy, self.test_images) != expected:
            raise ValueError("clean_accuracy, certified_accuracy and test_images must be the "
                             "smoothing record's accuracy at radius 0, at eps and its "
                             f"test_images: {expected}")
        if (record.cell_evaluations_per_image is None) != (self.solver is None):
            raise ValueError("cell_evaluations_per_image is recorded for a DEQ (a model with "
                             "a solver) and only for one")
        command = smoothing_command(self.name, record.settings, record.test_images,
                                    record.seed)
        if record.command != command:
            raise ValueError(f"the smoothing command must be {command!r}")

    @property
    def kind(self) -> str:
        """The last part of the name: ``deq``, ``cnn``, ``cerdeq``, ..."""
        return self.name.rsplit("-", 1)[1]


_ADAPTER = TypeAdapter(Card)


def read_card(path: Path) -> Card:
    """Read and validate ``card.json``; raises :class:`CheckpointError` naming every problem."""
    try:
        return _ADAPTER.validate_json(Path(path).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'card'}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in error.errors())
        raise CheckpointError(f"{path} is not a valid model card: {problems}") from None


def card_json(card: Card) -> str:
    """The card as indented JSON (what ``card.json`` holds and ``zoo show`` prints)."""
    return json.dumps(settings_dict(card), indent=2) + "\n"
