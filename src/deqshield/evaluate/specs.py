"""Settings of the white-box protocol: attack specs (attack + gradient path) and the protocol."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional, Union

from pydantic import Field

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.attacks.pgd import PGD
from deqshield.paths import FinalState, GradientPath, PathSpec
from deqshield.readouts import Ensemble, Final, ReadoutSpec
from deqshield.readouts.base import Readout
from deqshield.settings import component, settings_dict

AttackSettings = Annotated[Union[PGD, AutoAttackBridge], Field(discriminator="name")]
PathSettings = Union[PathSpec, GradientPath]
"""A path from a config (``PathSpec``) or any object following the ``GradientPath`` protocol."""


def describe(settings: object) -> str:
    """A short label from a settings object: ``name(field=value, ...)`` listing the fields that
    differ from their defaults; nested settings are described the same way."""
    name = getattr(settings, "name", type(settings).__name__)
    changed = []
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if field.name == "name" or (field.default is not dataclasses.MISSING
                                    and _dumped(field.default) == _dumped(value)):
            continue
        shown = describe(value) if dataclasses.is_dataclass(value) else _dumped(value)
        changed.append(f"{field.name}={shown}")
    return f"{name}({', '.join(changed)})" if changed else str(name)


def _dumped(value: object) -> object:
    """A value as it appears in :func:`settings_dict` (nested settings as mappings)."""
    return settings_dict(value) if dataclasses.is_dataclass(value) else (
        list(value) if isinstance(value, tuple) else value)


@component
class AttackSpec:
    """One column of the evaluation: an attack run with a gradient path.

    ``label`` names the column in reports; empty means ``attack/path`` from their settings.
    ``exact``: the path is the exact gradient of a defense's own prediction (backpropagation
    through the iterations it reads); a screening never leaves such a column out.
    """

    attack: AttackSettings = PGD()
    path: PathSettings = FinalState()
    label: str = ""
    exact: bool = False

    @property
    def title(self) -> str:
        return self.label or f"{describe(self.attack)}/{describe(self.path)}"

    @property
    def eps(self) -> float:
        return self.attack.eps

    @property
    def gradient_free(self) -> bool:
        """True when the attack ignores the gradient path (Square alone)."""
        return self.attack.gradient_free

    def with_eps(self, eps: float) -> "AttackSpec":
        """The same spec at radius ``eps`` (PGD's step size scaled with it)."""
        return dataclasses.replace(self, attack=self.attack.at_radius(eps))


@component
class Screening:
    """A cheap pass that ranks the attacks before the full run (see
    :mod:`deqshield.evaluate.screening`): every cheap gradient attack (PGD with each gradient
    path) runs on the first ``samples`` evaluation samples; the full run keeps the ``keep``
    strongest (strongest first) and feeds the expensive gradient attacks (APGD) the ``follow``
    strongest paths. The others keep their screening verdicts, on the screened samples."""

    samples: Annotated[int, Field(ge=1)] = 64
    keep: Annotated[int, Field(ge=1)] = 4
    follow: Annotated[int, Field(ge=1)] = 2


def defense_label(readout: Readout) -> str:
    """Row label of a defense, e.g. ``final``, ``early(index=3)``."""
    return describe(readout)


@component
class Protocol:
    """The white-box protocol: every defense against every attack at radius ``eps``.

    ``early_exit`` skips samples a defense already lost to an earlier attack (the per-sample
    worst case is unchanged, per-attack cells become unknown). ``quick`` evaluates at most
    ``quick_samples`` samples and caps AutoAttack at ``quick_apgd_iterations`` iterations and
    ``quick_square_queries`` queries: a smoke test, not a result. Flags: Square beating every
    gradient attack by more than ``obfuscation_margin`` (accuracy), or more than
    ``nonconverged_threshold`` of the attacked samples leaving the solver unconverged.
    ``screening`` (None: every attack on every sample) ranks the attacks on a few samples
    first and runs the strongest on all.
    """

    defenses: tuple[ReadoutSpec, ...] = (Final(), Ensemble())
    attacks: tuple[AttackSpec, ...] = (AttackSpec(), AttackSpec(attack=AutoAttackBridge()))
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    early_exit: bool = False
    batch_size: Annotated[int, Field(ge=1)] = 128
    seed: int = 0
    quick: bool = False
    quick_samples: Annotated[int, Field(ge=1)] = 64
    quick_apgd_iterations: Annotated[int, Field(ge=1)] = 10
    quick_square_queries: Annotated[int, Field(ge=1)] = 100
    obfuscation_margin: Annotated[float, Field(ge=0)] = 0.01
    nonconverged_threshold: Annotated[float, Field(ge=0, le=1)] = 0.05
    screening: Optional[Screening] = None

    def caveats(self) -> list[str]:
        """Why this protocol's figures are weaker upper bounds than the full protocol's (the
        report's notes): a quick run, or no AutoAttack column."""
        caveats = []
        if self.quick:
            caveats.append(f"quick run: at most {self.quick_samples} samples, APGD capped at "
                           f"{self.quick_apgd_iterations} iterations and Square at "
                           f"{self.quick_square_queries} queries: a smoke test, not a result")
        if not any(isinstance(spec.attack, AutoAttackBridge) for spec in self.attacks):
            caveats.append("no AutoAttack column (APGD, Square; left out by --no-autoattack): "
                           "every figure is an upper bound under PGD alone, which "
                           "AutoAttack-strength attacks can lower, by several points through "
                           "entropy reduction on a weak readout")
        return caveats

    def attack_specs(self) -> list[AttackSpec]:
        """The attacks at this protocol's ``eps`` (capped in quick mode)."""
        specs = [spec.with_eps(self.eps) for spec in self.attacks]
        if not self.quick:
            return specs
        return [self._quick(spec) for spec in specs]

    def _quick(self, spec: AttackSpec) -> AttackSpec:
        return dataclasses.replace(spec, attack=spec.attack.capped(self.quick_apgd_iterations,
                                                                   self.quick_square_queries))
