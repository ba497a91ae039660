"""Per-party noise scale for the MPC backend's distributed discrete Gaussian.

What it is for
--------------
In the MPC backend each of the n computing parties adds its OWN draw of
N_Z(0, sigma_p^2) to its additive share of an integer-valued statistic on the
tally grid (scale 2**32): the C-dimensional tally vector for GNMax (dim = C) or
the one noisy maximum of the Confident-GNMax threshold check (dim = 1). A
coalition of up to t parties (the policy's collusion tolerance) knows its own
draws and can subtract them (post-processing), so against that coalition the
statistic is protected only by the sum of the h = n - t honest parties' draws.
This module chooses sigma_p so that this distributed mechanism is provably at
least as private as the plaintext mechanism with one N_Z(0, sigma^2) draw, where
sigma is the policy's target scale on the grid.

Why the charge stays the plaintext charge
-----------------------------------------
The ledger charges rho = Delta^2/(2 sigma^2) (Canonne, Kamath & Steinke 2020,
arXiv:2004.00010, Theorem 4 / Theorem 14), whatever the backend. We therefore
never charge a distributed bound; we pick sigma_p so that the distributed
bound is <= that charge for every source:

  * h == 1: sigma_p = sigma. The single honest draw alone is N_Z(0, sigma^2); the
    other parties' draws are independent of the data, and adding them is
    post-processing, so CKS Theorem 4/14 applies unchanged.
  * h >= 2: Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian
    Mechanism for Federated Learning with Secure Aggregation" (arXiv:2102.06387),
    Proposition 14: for sigma_p >= 1/2, the sum of h independent
    N_Z(0, sigma_p^2 I_d) added to an integer query with L2 sensitivity Delta2 and
    L1 sensitivity Delta1 satisfies, for every order alpha > 1,
        D_alpha <= min( alpha/2 * s2^2 + tau*d,
                        alpha/2 * (s2^2 + 2*s1*tau + tau^2*d),
                        alpha/2 * (s2 + sqrt(d)*tau)^2 ),
    where s2 = Delta2/(sqrt(h) sigma_p), s1 = Delta1/(sqrt(h) sigma_p) and
        tau = 10 * sum_{k=1}^{h-1} exp(-2 pi^2 sigma_p^2 k/(k+1)).
    The third term is pure zCDP with rho_KLS = (s2 + sqrt(d) tau)^2 / 2.

Why eta
-------
With sigma_p^2 = sigma^2/h exactly, s2 = Delta2/sigma and rho_KLS exceeds the
plaintext charge by the (tiny but positive) tau term. Inflating the variance by
(1 + eta), eta = 2**-10, gives s2 <= Delta2/(sigma sqrt(1+eta)), and then
rho_KLS <= Delta2^2/(2 sigma^2) as soon as
        sqrt(d) * tau <= (Delta2/sigma) * (1 - 1/sqrt(1+eta)).
The right side grows with Delta2; every nonzero integer vector has L2 norm >= 1,
so checking at Delta2 = 1 grid unit covers every source (a source with Delta2 = 0
does not influence the output at all). At realistic grid scales (sigma of order
2**32 and more) tau underflows any float, so the check has an astronomically
large margin; it only fails for targets of a few grid units. The price of eta is
a 0.05% larger noise standard deviation.

Units: every scale and sensitivity in this module is in GRID units (integer
lattice spacing 1). The ratio Delta/sigma is scale-free, but tau is not: it
depends on sigma_p measured against the integer lattice.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

from ..errors import ParameterError

__all__ = ["DISTRIBUTED_ETA", "kls_tau", "kls_rdp", "party_noise_scale"]

#: Relative variance inflation of the honest parties' combined noise (see module docstring).
DISTRIBUTED_ETA = Fraction(1, 1024)

# The hypothesis sigma_p >= 1/2 of KLS21 Proposition 14 (and of the sum-of-discrete-
# Gaussians bound behind it). Enforced conservatively: for h >= 2 it matters only
# for degenerate targets (the tau check alone rejects every sigma_p < 1 when
# sigma >= 1), and it keeps tiny targets from passing the tau check vacuously.
_MIN_PARTY_SIGMA = 0.5

# Slack for floating-point rounding in the log-space check of party_noise_scale:
# an absolute part plus a relative part covering a few ulps of every term.
_ABS_SLACK = 1e-9
_REL_SLACK = 1e-12


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_honest(honest) -> None:
    if not _is_int(honest) or honest < 1:
        raise ParameterError(f"the number of honest parties must be an integer >= 1, got {honest!r}")


def _check_dim(dim) -> None:
    if not _is_int(dim) or dim < 1:
        raise ParameterError(f"dim (the dimension of the noised statistic) must be an integer >= 1, got {dim!r}")


def _check_positive_finite(name: str, x) -> float:
    if not _is_real(x) or not math.isfinite(float(x)) or not float(x) > 0:
        raise ParameterError(f"{name} must be a positive finite number, got {x!r}")
    return float(x)


def kls_tau(sigma_p: float, honest: int) -> float:
    """tau = 10 * sum_{k=1}^{honest-1} exp(-2 pi^2 sigma_p^2 k/(k+1)) of KLS21
    (arXiv:2102.06387, Proposition 14 / Theorem 1); sigma_p in grid units.

    It measures how far the sum of `honest` independent N_Z(0, sigma_p^2) draws is
    from N_Z(0, honest * sigma_p^2); it is 0 for a single draw."""
    sigma_p = _check_positive_finite("sigma_p", sigma_p)
    _check_honest(honest)
    s2 = sigma_p * sigma_p
    return 10.0 * math.fsum(math.exp(-2.0 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, honest))


def kls_rdp(alpha, l2_sensitivity, l1_sensitivity, sigma_p, honest, dim) -> float:
    """Renyi DP at order `alpha` of adding the sum of `honest` independent
    N_Z(0, sigma_p^2) draws to each of `dim` coordinates of an integer-valued query.

    KLS21 (arXiv:2102.06387) Proposition 14, the minimum of its three terms:
        alpha/2 * s2^2 + tau*d,
        alpha/2 * (s2^2 + 2*s1*tau + tau^2*d),
        alpha/2 * (s2 + sqrt(d)*tau)^2,
    with s2 = l2_sensitivity/(sqrt(honest) sigma_p), s1 = l1_sensitivity/(sqrt(honest)
    sigma_p) and tau = kls_tau(sigma_p, honest).

    Units: sensitivities and sigma_p in GRID units (tau depends on sigma_p against
    the integer lattice). Requires alpha > 1 and sigma_p >= 1/2 (the proposition's
    hypothesis). With honest = 1, tau = 0 and this is CKS20 Theorem 4/14's
    alpha * l2^2 / (2 sigma_p^2).
    """
    if not _is_real(alpha) or not math.isfinite(float(alpha)) or not float(alpha) > 1:
        raise ParameterError(f"alpha (the Renyi order) must be a finite number > 1, got {alpha!r}")
    for name, v in (("l2_sensitivity", l2_sensitivity), ("l1_sensitivity", l1_sensitivity)):
        if not _is_real(v) or not math.isfinite(float(v)) or float(v) < 0:
            raise ParameterError(f"{name} must be a finite number >= 0 (grid units), got {v!r}")
    sigma_p = _check_positive_finite("sigma_p", sigma_p)
    if sigma_p < _MIN_PARTY_SIGMA:
        raise ParameterError(
            f"sigma_p = {sigma_p!r} grid units is below 1/2, outside the hypothesis of "
            "KLS21 Proposition 14")
    _check_honest(honest)
    _check_dim(dim)
    a = float(alpha)
    root = math.sqrt(honest) * sigma_p
    s2 = float(l2_sensitivity) / root
    s1 = float(l1_sensitivity) / root
    tau = kls_tau(sigma_p, honest)
    # KLS21 Proposition 14.
    t1 = a / 2 * s2 * s2 + tau * dim
    t2 = a / 2 * (s2 * s2 + 2 * s1 * tau + tau * tau * dim)
    t3 = a / 2 * (s2 + math.sqrt(dim) * tau) ** 2
    return min(t1, t2, t3)


def _smallest_float_at_least(x: Fraction) -> float:
    """The smallest float64 f with Fraction(f) >= x (x > 0), checked exactly."""
    try:
        f = float(x)
    except OverflowError:
        raise ParameterError("the target noise scale is too large to represent as a float64") from None
    while Fraction(f) < x:
        f = math.nextafter(f, math.inf)
    while True:
        g = math.nextafter(f, 0.0)
        if g > 0 and Fraction(g) >= x:
            f = g
        else:
            return f


def _smallest_float_with_square_at_least(target: Fraction) -> float:
    """The smallest float64 f > 0 with Fraction(f)**2 >= target, checked exactly
    (math.sqrt only provides the starting point)."""
    try:
        f = math.sqrt(float(target))
    except OverflowError:
        raise ParameterError("the target noise scale is too large to represent as a float64") from None
    if f == 0.0:
        f = 5e-324
    while Fraction(f) ** 2 < target:
        f = math.nextafter(f, math.inf)
        if math.isinf(f):
            raise ParameterError("the party noise scale is too large to represent as a float64")
    while True:
        g = math.nextafter(f, 0.0)
        if g > 0 and Fraction(g) ** 2 >= target:
            f = g
        else:
            return f


def party_noise_scale(sigma, num_parties: int, collusion_tolerance: int, dim: int) -> float:
    """The scale sigma_p (grid units, float64) of each party's N_Z(0, sigma_p^2) noise
    such that the n-party mechanism is at least as private, against any coalition
    of <= t = collusion_tolerance parties, as one N_Z(0, sigma^2) draw, i.e. such
    that the plaintext charge Delta^2/(2 sigma^2) (CKS20 Theorem 4/14) stays valid.

    sigma: the policy's target scale on the grid (Fraction, int or float, > 0).
    dim:   dimension of the noised statistic (C for GNMax, 1 for the threshold check).

    h = n - t honest parties:
      * h == 1: the smallest float64 >= sigma (sigma itself when it is a float).
      * h >= 2: the smallest float64 whose square is >= sigma^2 (1 + eta)/h, verified
        exactly with Fractions, after which KLS21 Proposition 14 (third term) gives
        rho <= Delta^2/(2 sigma^2) for every Delta >= 1 grid unit, provided
        sigma_p >= 1/2 and sqrt(d) tau <= (1/sigma)(1 - 1/sqrt(1+eta)). Both are
        checked here; otherwise ParameterError.
    """
    if not _is_int(num_parties) or num_parties < 2:
        raise ParameterError(f"num_parties must be an integer >= 2 for the MPC backend, got {num_parties!r}")
    t = collusion_tolerance
    if not _is_int(t) or t < 1:
        raise ParameterError(f"collusion_tolerance must be an integer >= 1, got {t!r}")
    if t >= num_parties:
        raise ParameterError(
            f"collusion_tolerance ({t}) must be below num_parties ({num_parties}): "
            "at least one party must be honest")
    _check_dim(dim)
    try:
        sig = Fraction(sigma) if _is_real(sigma) else None
    except (ValueError, OverflowError):  # nan, inf
        sig = None
    if sig is None or sig <= 0:
        raise ParameterError(f"sigma (target noise scale, grid units) must be a positive finite number, got {sigma!r}")
    h = num_parties - t

    if h == 1:
        # Data processing: the lone honest draw is the plaintext noise (CKS20 Thm 4/14).
        return _smallest_float_at_least(sig)

    target = sig * sig * (1 + DISTRIBUTED_ETA) / h
    sigma_p = _smallest_float_with_square_at_least(target)

    if sigma_p < _MIN_PARTY_SIGMA:
        raise ParameterError(
            f"the noise scale is too small for the distributed discrete Gaussian analysis at "
            f"{h} honest parties: per-party sigma_p = {sigma_p!r} grid units is below 1/2, the "
            "hypothesis of KLS21 Proposition 14")

    # KLS21 Proposition 14, third term: rho = (Delta/(sqrt(h) sigma_p) + sqrt(d) tau)^2 / 2
    # is <= Delta^2/(2 sigma^2) for all Delta >= 1 iff
    #   sqrt(d) tau <= (1/sigma) (1 - 1/sqrt(1+eta))          (checked at Delta = 1).
    # Upper bound: k/(k+1) >= 1/2, so tau <= 10 (h-1) exp(-pi^2 sigma_p^2), i.e.
    #   log(sqrt(d) tau) <= log(d)/2 + log(10 (h-1)) - pi^2 sigma_p^2.
    # Lower bound on the right side, in logs: -log(sigma) + log(1 - 1/sqrt(1+eta)).
    eta = float(DISTRIBUTED_ETA)
    decay = math.pi ** 2 * sigma_p * sigma_p
    lhs_terms = (0.5 * math.log(dim), math.log(10 * (h - 1)), -decay)
    # 1 - 1/sqrt(1+eta) computed without cancellation: eta / (sqrt(1+eta) (1 + sqrt(1+eta))).
    r = math.sqrt(1 + eta)
    rhs_terms = (-_log_fraction(sig), math.log(eta / (r * (1 + r))))
    slack = _ABS_SLACK + _REL_SLACK * sum(abs(v) for v in lhs_terms + rhs_terms)
    if math.fsum(lhs_terms) > math.fsum(rhs_terms) - slack:
        raise ParameterError(
            f"the noise scale is too small for the distributed discrete Gaussian analysis at "
            f"{h} honest parties: with per-party sigma_p = {sigma_p!r} grid units and dim = {dim}, "
            f"tau (KLS21 Proposition 14) is not negligible against the eta = 2**-10 margin "
            f"at target sigma = {float(sig)!r} grid units")
    return sigma_p


def _log_fraction(x: Fraction) -> float:
    """log of a positive Fraction, accurate even when float(x) would over/underflow."""
    return math.log(x.numerator) - math.log(x.denominator)
