"""Certification engines: plain PyTorch bound propagation, no CLI.

`certify.ibp` (native interval bound propagation), `certify.lirpa` (CROWN family through the
optional auto_LiRPA), `certify.tightness` (Mao et al. 2023), `certify.verify` (evaluation).
"""

from certify.bounds import Bounds, IBPResult
from certify.ibp import ibp_bounds
from certify.modules import Residual
from certify.spec import margin_spec, verified

__all__ = ["Bounds", "IBPResult", "Residual", "ibp_bounds", "margin_spec", "verified"]
