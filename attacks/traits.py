"""What kind of attack an attack is, declared by the attack itself.

The gradient-masking diagnostics compare attacks by kind (a single-step against an iterative
attack, a margin loss against cross-entropy, a score-based against a gradient attack; Athalye et
al. 2018, section 3.1; Carlini et al. 2019, section 5), and the CLI passes each attack only the
options it takes. Both read these traits, so an attack defined anywhere (a defense's own PGD
variant, say) is classified by what it does, not by whether its name is on a list.
"""

from __future__ import annotations

from dataclasses import dataclass

# Loss families. "ce": cross-entropy, whose gradient vanishes when softmax saturates; "margin":
# a difference of logits (CW's f, FAB's linearised boundary, Square's score); "dlr": the
# difference of logits ratio (Croce & Hein 2020, eqs. 3-4), a scale-invariant margin.
LOSS_FAMILIES = ("ce", "margin", "dlr")
# Option names an attack may accept from the CLI or a config (None there means "the default").
OPTIONS = ("steps", "restarts", "queries", "confidence", "binary_search_steps", "preset")


@dataclass(frozen=True)
class AttackTraits:
    loss: str  # one of LOSS_FAMILIES
    norm: str  # "linf" or "l2": the ball the attack searches (and measures perturbations in)
    gradient_free: bool = False  # score-based: never asks the model for a gradient
    single_step: bool = False  # one gradient step (FGSM), as opposed to an iterative search
    targeted: bool = False  # attacks chosen target classes even when the user gave none (APGD-T, FAB-T)
    minimization: bool = False  # looks for the smallest perturbation; one run serves every eps
    options: tuple[str, ...] = ()  # the subset of OPTIONS its registry entry takes

    def __post_init__(self) -> None:
        if self.loss not in LOSS_FAMILIES:
            raise ValueError(f"unknown loss family {self.loss!r}; expected one of {LOSS_FAMILIES}")
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; expected a subset of {OPTIONS}")

    @property
    def white_box(self) -> bool:
        return not self.gradient_free

    @property
    def margin_family(self) -> bool:
        """A loss on logit differences, immune to softmax saturation (margin or DLR)."""
        return self.loss in ("margin", "dlr")
