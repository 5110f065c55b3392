"""Attack engines: plain PyTorch, no CLI. Every attack works in [0, 1] pixel space."""

from robustcli.attacks.apgd import APGD
from robustcli.attacks.base import Attack, AttackResult, FixedEpsilonAttack, MinimizationAttack
from robustcli.attacks.cw import CarliniWagnerL2
from robustcli.attacks.fab import FABTargeted
from robustcli.attacks.fgsm import FGSM
from robustcli.attacks.pgd import PGDL2, PGDLinf
from robustcli.attacks.square import SquareL2, SquareLinf

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
    "FABTargeted",
    "SquareLinf",
    "SquareL2",
]
