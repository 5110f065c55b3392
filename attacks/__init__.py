"""Attack engines: plain PyTorch, no CLI. Every attack works in [0, 1] pixel space."""

from attacks.apgd import APGD
from attacks.base import Attack, AttackResult, FixedEpsilonAttack, MinimizationAttack
from attacks.cw import CarliniWagnerL2
from attacks.fgsm import FGSM
from attacks.pgd import PGDL2, PGDLinf
from attacks.square import SquareLinf

__all__ = [
    "Attack",
    "AttackResult",
    "FixedEpsilonAttack",
    "MinimizationAttack",
    "FGSM",
    "PGDLinf",
    "PGDL2",
    "CarliniWagnerL2",
    "APGD",
    "SquareLinf",
]
