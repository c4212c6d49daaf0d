"""The randomized-smoothing record of a zoo card: what ``deqshield smooth`` certified for a
model (Cohen et al.'s CERTIFY, plain or serialized) and the command that certifies it again.

``certified_accuracy`` maps an l2 radius, written as ``deqshield smooth`` writes it in
``smoothing.json`` (``"0"``, ``"0.25"``, ...), to the fraction of the ``test_images`` first test
images answered correctly with at least that certified radius (abstentions count as errors).
Only radii that ``n`` draws at failure probability ``alpha`` can certify are allowed: the
largest lower bound on p_A that n draws give is the Clopper-Pearson bound of n successes,
alpha^(1/n), so no radius above sigma Phi^-1(alpha^(1/n)) (3.2 sigma for n = 10^4,
alpha = 0.001) is ever certified, and listing one would claim a radius that was not certified.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

from pydantic import Field

from deqshield.settings import component
from deqshield.smoothing.bounds import clopper_pearson_lower
from deqshield.smoothing.sampling import Smoothing
from deqshield.smoothing.smoothed import radius_of

Fraction = Annotated[float, Field(ge=0, le=1)]
"""An accuracy: a fraction in [0, 1]."""


def largest_radius(settings: Smoothing) -> float:
    """The largest l2 radius ``settings`` can certify: sigma Phi^-1 of the Clopper-Pearson
    lower bound of n successes in n draws (see the module docstring)."""
    return radius_of(clopper_pearson_lower(settings.n, settings.n, settings.alpha),
                     settings.sigma)


def readout_option(settings: Smoothing) -> str:
    """The readout as ``deqshield smooth --readout`` takes it: ``final``, ``early:I`` or
    ``ensemble``."""
    index = getattr(settings.readout, "index", None)
    return settings.readout.name if index is None else f"{settings.readout.name}:{index}"


def smoothing_command(name: str, settings: Smoothing, images: int, seed: int) -> str:
    """The command that certifies zoo model ``name`` again with ``settings`` on the first
    ``images`` test images and noise seed ``seed``."""
    serialized = settings.serialized
    return (f"deqshield smooth zoo:{name} --sigma {settings.sigma:g} --n0 {settings.n0} "
            f"--n {settings.n} --alpha {settings.alpha:g} --batch {settings.batch} "
            f"--readout {readout_option(settings)} --seed {seed} --limit {images}"
            + (f" --serialized --warm-steps {serialized.steps} --checks {serialized.checks}"
               + (" --chained" if serialized.chained else "")
               if serialized is not None else "")
            + " --out OUT --data-dir DATA")


@component(kw_only=True)
class SmoothingRecord:
    """A smoothing certification of a zoo model (see the module docstring): the CERTIFY
    ``settings`` (sigma, n0, n, alpha, batch, readout, serialized), the noise ``seed``, the
    number of ``test_images``, how many were ``abstained`` on, the certified accuracy per
    radius, the mean cell evaluations per certified image (None for an explicit network), the
    ``seconds`` it took and the ``command`` that certifies the model again. The constructor
    checks that the radii are certifiable, the accuracies whole counts of images,
    non-increasing in the radius and within the images not abstained on."""

    settings: Smoothing
    seed: Annotated[int, Field(ge=0)]
    test_images: Annotated[int, Field(ge=1)]
    abstained: Annotated[int, Field(ge=0)]
    certified_accuracy: dict[str, Fraction]
    cell_evaluations_per_image: Optional[Annotated[float, Field(ge=1)]] = None
    seconds: Optional[Annotated[float, Field(ge=0)]] = None
    command: str

    def __post_init__(self) -> None:
        if self.abstained > self.test_images:
            raise ValueError(f"abstained {self.abstained} exceeds test_images "
                             f"{self.test_images}")
        radii = self.radii()
        if not radii or radii[0] != 0:
            raise ValueError("certified_accuracy must give radius 0 (the smoothed "
                             "classifier's accuracy)")
        largest = largest_radius(self.settings)
        if radii[-1] > largest:
            raise ValueError(f"radius {radii[-1]:g} cannot be certified with n = "
                             f"{self.settings.n} draws at alpha = {self.settings.alpha:g} "
                             f"and sigma = {self.settings.sigma:g} (at most {largest:.4f})")
        accuracies = [self.accuracy_at(radius) for radius in radii]
        for accuracy in accuracies:
            if not math.isclose(accuracy * self.test_images,
                                round(accuracy * self.test_images), abs_tol=1e-6):
                raise ValueError(f"certified accuracy {accuracy} is not a count of "
                                 f"{self.test_images} images")
        if any(later > earlier for earlier, later in zip(accuracies, accuracies[1:])):
            raise ValueError("certified accuracy must not increase with the radius")
        if accuracies[0] * self.test_images > self.test_images - self.abstained + 1e-6:
            raise ValueError(f"certified accuracy at radius 0, {accuracies[0]}, counts images "
                             f"abstained on ({self.abstained} of {self.test_images})")
        cells = self.cell_evaluations_per_image
        if cells is not None and cells < self.settings.n0 + self.settings.n:
            raise ValueError(f"cell_evaluations_per_image {cells:g} is fewer than the "
                             f"n0 + n = {self.settings.n0 + self.settings.n} draws")

    def radii(self) -> list[float]:
        """The certified radii, ascending; :class:`ValueError` unless each key is a radius
        written as ``f"{radius:g}"``."""
        radii = []
        for key in self.certified_accuracy:
            try:
                radius = float(key)
            except ValueError:
                raise ValueError(f"certified_accuracy key {key!r} is not a radius") from None
            if not (math.isfinite(radius) and radius >= 0 and f"{radius:g}" == key):
                raise ValueError(f"certified_accuracy key {key!r} is not a radius written as "
                                 f"{radius:g}")
            radii.append(radius)
        return sorted(radii)

    def accuracy_at(self, radius: float) -> Optional[float]:
        """The certified accuracy at ``radius``, None where it was not certified."""
        return self.certified_accuracy.get(f"{radius:g}")
