"""Composition over Rényi orders and conversions between zCDP, RDP and (eps, delta).

All functions are pure; none of them touches a ledger.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence

import numpy as np

from ..errors import ParameterError

# The same standard orders as dp_accounting's RdpAccountant, so reports compare.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)


def _is_number(x) -> bool:
    """A real number that is not a bool (True is not a privacy parameter)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _check_delta(delta: float) -> None:
    if not (_is_number(delta) and 0 < delta < 1):
        raise ParameterError(f"delta must be in (0, 1), got {delta!r}")


def _check_rho(rho) -> None:
    # Checked as a number first: a string or None must be a ParameterError, not a
    # TypeError from the comparison.
    if not _is_number(rho) or rho < 0 or not math.isfinite(float(rho)):
        raise ParameterError(f"rho must be a finite number >= 0, got {rho!r}")


def rdp_curve(rho, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """rho-zCDP is, by definition, RDP of alpha*rho at every order alpha > 1
    (Bun & Steinke 2016, Definition 1.1)."""
    _check_rho(rho)
    return np.asarray(orders, dtype=float) * float(rho)


def eps_from_rdp_tight(orders: Sequence[float], rdp: Sequence[float], delta: float) -> tuple[float, float]:
    """(eps, best order) from an RDP curve, by the improved conversion
    eps = rdp + log(1 - 1/a) - log(delta * a) / (a - 1)
    (Canonne, Kamath & Steinke 2020, arXiv:2004.00010 Proposition 12; Asoodeh et
    al. 2020, arXiv:2001.05990 Eq. 20; Balle et al. 2020). Same conventions as
    dp_accounting's compute_epsilon: orders <= 1.01 give no bound, and a curve
    point whose KL bound already gives delta yields eps = 0."""
    _check_delta(delta)
    if len(orders) != len(rdp) or len(orders) == 0:
        raise ParameterError("orders and rdp must be non-empty and of the same length")
    best, best_order = math.inf, float(orders[0])
    for a, r in zip(orders, rdp):
        a, r = float(a), float(r)
        if a < 1:
            raise ParameterError(f"Renyi order must be >= 1, got {a}")
        if r < 0:
            raise ParameterError(f"RDP values must be >= 0, got {r} at order {a}")
        if delta ** 2 + math.expm1(-r) > 0:
            eps = 0.0  # delta <= sqrt(1 - exp(-KL)) already (Pinsker-type bound)
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf  # numerically unstable as a -> 1; no bound
        if eps < best:
            best, best_order = eps, a
    return max(0.0, best), best_order


def eps_from_rdp_classic(orders: Sequence[float], rdp: Sequence[float], delta: float) -> tuple[float, float]:
    """(eps, best order) by the classic conversion eps = rdp + log(1/delta)/(a - 1)
    (Mironov 2017, "Rényi Differential Privacy", Proposition 3)."""
    _check_delta(delta)
    if len(orders) != len(rdp) or len(orders) == 0:
        raise ParameterError("orders and rdp must be non-empty and of the same length")
    o = np.asarray(orders, dtype=float)
    r = np.asarray(rdp, dtype=float)
    if np.any(o <= 1):
        raise ParameterError("the classic conversion needs orders > 1")
    eps = r - math.log(delta) / (o - 1)
    i = int(np.nanargmin(eps))
    return float(eps[i]), float(o[i])


# Orders below 1.01 give no bound (dp_accounting's convention: numerically unstable as a -> 1).
_MIN_ORDER_EXCESS = 0.01


def _tight_at_excess(u: float, rho: float, delta: float) -> float:
    """Proposition 12's bound for the curve a*rho at order a = 1 + u, written in u so
    that log(1 - 1/a) = log(u) - log1p(u) keeps its digits for orders near 1."""
    return (1 + u) * rho + math.log(u) - math.log1p(u) - (math.log(delta) + math.log1p(u)) / u


def zcdp_eps_tight(rho, delta: float) -> float:
    """Smallest eps the improved RDP->DP conversion (Canonne, Kamath & Steinke 2020,
    Proposition 12) gives for rho-zCDP, over every real order a >= 1.01.

    With f(a) = a rho + log(1 - 1/a) - log(delta a)/(a - 1) the bound at order a,
    the log(1 - 1/a) term's derivative cancels part of the last term's and

        f'(a) = rho + log(delta a) / (a - 1)^2,

    whose sign is that of g(u) = rho u^2 + log1p(u) - log(1/delta) at u = a - 1.
    g increases strictly on u > 0, so f decreases up to the one root of g and
    increases after it: the minimiser is that root (or a = 1.01 when the root lies
    below). No optimiser is needed, only bisection of a monotone function, written
    here (a few lines) rather than taken from scipy, which a source's or an
    auditor's install then need not carry. Any order gives a valid bound, so the
    result is sound whatever the bisection's last bit."""
    _check_rho(rho)
    _check_delta(delta)
    rho = float(rho)
    if delta ** 2 + math.expm1(-rho) > 0:
        # KL <= rho (the alpha -> 1 end of the curve) and total variation
        # <= sqrt(1 - exp(-KL)) (Bretagnolle-Huber), so (0, delta)-DP holds.
        return 0.0
    log_inv_delta = -math.log(delta)

    def g(u: float) -> float:
        return rho * u * u + math.log1p(u) - log_inv_delta

    lo = _MIN_ORDER_EXCESS
    if g(lo) >= 0:  # the optimum lies below order 1.01 (huge rho): f increases on the orders used
        return max(0.0, _tight_at_excess(lo, rho, delta))
    # g(sqrt(log(1/delta)/rho)) = log1p(...) > 0 (rho > 0 here: rho = 0 took the shortcut).
    hi = math.sqrt(log_inv_delta / rho)
    for _ in range(2100):  # each step halves [lo, hi]; floats run out long before
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if g(mid) < 0:
            lo = mid
        else:
            hi = mid
    return max(0.0, min(_tight_at_excess(lo, rho, delta), _tight_at_excess(hi, rho, delta)))


def zcdp_eps_classic(rho, delta: float) -> float:
    """eps = rho + 2 sqrt(rho log(1/delta)) (Bun & Steinke 2016, Proposition 1.3):
    the classic conversion, minimised over orders in closed form."""
    _check_rho(rho)
    _check_delta(delta)
    rho = float(rho)
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


def rho_from_eps_delta(eps: float, delta: float) -> Fraction:
    """The largest rho (to ~1e-12 relative, always on the safe side) whose tight
    conversion at `delta` is <= eps: an (eps, delta) budget as a zCDP budget."""
    _check_delta(delta)
    if not (_is_number(eps) and eps > 0 and math.isfinite(eps)):
        raise ParameterError(f"epsilon must be a positive finite number, got {eps!r}")
    eps = float(eps)
    lo, hi = 0.0, eps  # rho <= eps always, since eps >= rho for any delta < 1
    while zcdp_eps_tight(hi, delta) <= eps:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if zcdp_eps_tight(mid, delta) <= eps:
            lo = mid
        else:
            hi = mid
    if lo == 0:
        raise ParameterError(f"(epsilon={eps}, delta={delta}) admits no positive rho")
    return Fraction(lo)


def rho_from_rdp_budget(budget: float, order: float) -> Fraction:
    """An RDP budget B at order a (the prototype's form) as zCDP: the curve a*rho
    must stay under B at that order, so rho = B / a (Bun & Steinke 2016, Def. 1.1)."""
    if not (_is_number(budget) and budget > 0 and math.isfinite(budget)):
        raise ParameterError(f"RDP budget must be a positive finite number, got {budget!r}")
    if not (_is_number(order) and order > 1 and math.isfinite(order)):
        raise ParameterError(f"RDP order must be > 1, got {order!r}")
    # float() first: Fraction() refuses numpy scalars such as np.float32.
    b = budget if isinstance(budget, numbers.Rational) else float(budget)
    a = order if isinstance(order, numbers.Rational) else float(order)
    return Fraction(b) / Fraction(a)
