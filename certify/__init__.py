"""Certification engines: plain PyTorch bound propagation, no CLI.

`certify.ibp` (native interval bound propagation), `certify.lirpa` (CROWN family through the
optional auto_LiRPA), `certify.tightness` (Mao et al. 2023), `certify.verify` (evaluation).
"""

from robustcli.certify.bounds import Bounds, IBPResult
from robustcli.certify.ibp import ibp_bounds
from robustcli.core.nn import Residual
from robustcli.certify.spec import margin_spec, verified

__all__ = ["Bounds", "IBPResult", "Residual", "ibp_bounds", "margin_spec", "verified"]
