"""Attacks: PGD here; APGD/FAB/Square come from the reference AutoAttack implementation."""

from deqshield.attacks.losses import LOSSES, cross_entropy, margin
from deqshield.attacks.pgd import PGD, check_perturbation, project

__all__ = ["LOSSES", "PGD", "check_perturbation", "cross_entropy", "margin", "project"]
