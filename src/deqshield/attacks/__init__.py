"""Attacks, all with one call shape (:class:`~deqshield.attacks.base.Attack`): PGD here;
APGD/FAB/Square come from the reference AutoAttack implementation."""

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.attacks.base import Attack, AttackResult
from deqshield.attacks.losses import LOSSES, cross_entropy, margin
from deqshield.attacks.pgd import PGD
from deqshield.attacks.straight_through import StraightThrough
from deqshield.threat import check_perturbation, project

__all__ = ["LOSSES", "PGD", "Attack", "AttackResult", "AutoAttackBridge", "StraightThrough",
           "check_perturbation", "cross_entropy", "margin", "project"]
