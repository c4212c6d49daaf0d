"""Attacks: PGD here; APGD/FAB/Square come from the reference AutoAttack implementation."""

from deqshield.attacks.losses import LOSSES, cross_entropy, margin
from deqshield.attacks.autoattack import AutoAttackBridge, BridgeOutcome
from deqshield.attacks.pgd import PGD
from deqshield.threat import check_perturbation, project
from deqshield.attacks.straight_through import StraightThrough

__all__ = ["LOSSES", "PGD", "AutoAttackBridge", "BridgeOutcome", "StraightThrough",
           "check_perturbation", "cross_entropy", "margin", "project"]
