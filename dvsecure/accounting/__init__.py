"""Privacy accounting as data: immutable charge records, and pure functions that
compose them and convert between zCDP, RDP and (epsilon, delta)."""
from .charges import Charge, GNMAX, THRESHOLD, CALIBRATION, query_charges, total_rho
from .conversions import (
    DEFAULT_ORDERS,
    rdp_curve,
    eps_from_rdp_tight,
    eps_from_rdp_classic,
    zcdp_eps_tight,
    zcdp_eps_classic,
    rho_from_eps_delta,
    rho_from_rdp_budget,
)

__all__ = [
    "Charge", "GNMAX", "THRESHOLD", "CALIBRATION", "query_charges", "total_rho",
    "DEFAULT_ORDERS", "rdp_curve", "eps_from_rdp_tight", "eps_from_rdp_classic",
    "zcdp_eps_tight", "zcdp_eps_classic", "rho_from_eps_delta", "rho_from_rdp_budget",
]
