"""Tests of dvsecure.accounting.distributed: the per-party discrete Gaussian scale of
the MPC backend and the Kairouz-Liu-Steinke bound it rests on.

References:
  * CKS20 - Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
    Privacy", arXiv:2004.00010. Theorem 4/14: one N_Z(0, s^2) draw per coordinate
    is Delta^2/(2 s^2)-zCDP; Proposition 5: D_alpha(N_Z(Delta, s^2) || N_Z(0, s^2))
    <= alpha Delta^2/(2 s^2), with equality when alpha*Delta is an integer.
  * KLS21 - Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism
    for Federated Learning with Secure Aggregation", arXiv:2102.06387,
    Proposition 14: for the sum of h independent N_Z(0, s^2) (s >= 1/2),
    D_alpha <= min(alpha/2 s2^2 + tau d, alpha/2 (s2^2 + 2 s1 tau + tau^2 d),
    alpha/2 (s2 + sqrt(d) tau)^2), s2 = Delta2/(sqrt(h) s), s1 = Delta1/(sqrt(h) s),
    tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 s^2 k/(k+1)).

(a) the KLS21 bound against Renyi divergences of the exact pmf of a sum of h
    discrete Gaussians, computed here by log-space convolution (no sampling);
(b) party_noise_scale: exact float64 rounding, the zCDP guarantee at realistic grid
    scales (in 50-digit arithmetic), rejection of too-small scales, argument errors;
(c) a hypothesis property of the exact inequality.
"""
from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from dvsecure.accounting.distributed import (
    DISTRIBUTED_ETA,
    kls_rdp,
    kls_tau,
    party_noise_scale,
)
from dvsecure.errors import ParameterError

ETA = Fraction(1, 2 ** 10)  # the design value, stated independently of the module
GRID = 2 ** 32

# ---------------------------------------------------------------------------
# (a) exact Renyi divergences of sums of discrete Gaussians
# ---------------------------------------------------------------------------

SIGMAS_P = (0.6, 1.0, 1.5, 2.5)
HONEST = (2, 3, 4)
SHIFTS = (1, 2, 3)
ORDERS = (1.5, 2.0, 4.0, 8.0, 16.0)


def _support_radius(sigma_p: float) -> int:
    # One draw's log-weight at the edge is below -800 (the neglected mass is < e^-700),
    # and the Renyi summands, which for a shift D at order a are concentrated within a
    # few sqrt(h) sigma_p of a*D <= 48, stay far inside the sum's support [-hK, hK].
    return int(math.ceil(40 * sigma_p)) + 90


def _dg_logpmf(sigma_p: float, radius: int) -> np.ndarray:
    """log N_Z(0, sigma_p^2) on [-radius, radius], normalised over that support."""
    x = np.arange(-radius, radius + 1, dtype=float)
    logw = -x * x / (2 * sigma_p * sigma_p)
    return logw - logsumexp(logw)


def _logconv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of the convolution of two pmfs given as log-pmfs (exact up to rounding:
    sums of positive terms, no cancellation, no underflow)."""
    out = np.full(len(a) + len(b) - 1, -np.inf)
    for i, ai in enumerate(a):
        out[i:i + len(b)] = np.logaddexp(out[i:i + len(b)], ai + b)
    return out


def _sum_logpmf(sigma_p: float, honest: int, radius: int) -> np.ndarray:
    """log pmf of the sum of `honest` i.i.d. N_Z(0, sigma_p^2), on [-h*radius, h*radius]."""
    one = _dg_logpmf(sigma_p, radius)
    acc = one
    for _ in range(honest - 1):
        acc = _logconv(acc, one)
    return acc


def _renyi_shift(logp: np.ndarray, shift: int, alpha: float) -> float:
    """D_alpha(P(. - shift) || P) = log(sum_x P(x-shift)^alpha P(x)^(1-alpha)) / (alpha-1)."""
    shifted, base = logp[:-shift], logp[shift:]
    return float(logsumexp(alpha * shifted + (1 - alpha) * base) / (alpha - 1))


@pytest.fixture(scope="module")
def sum_pmfs():
    return {(s, h): _sum_logpmf(s, h, _support_radius(s)) for s in SIGMAS_P for h in (1,) + HONEST}


def test_evaluator_reproduces_cks_equality_case(sum_pmfs):
    # CKS20 Proposition 5: for one draw, D_alpha = alpha Delta^2/(2 s^2) exactly when
    # alpha*Delta is an integer, and strictly less otherwise. This validates the
    # evaluator used below against a closed form.
    for s in SIGMAS_P:
        logp = sum_pmfs[(s, 1)]
        for delta in SHIFTS:
            for alpha in ORDERS:
                exact = alpha * delta ** 2 / (2 * s * s)
                d = _renyi_shift(logp, delta, alpha)
                if float(alpha * delta).is_integer():
                    assert d == pytest.approx(exact, rel=1e-12, abs=1e-12)
                else:
                    assert d <= exact * (1 + 1e-12)
                    if s < 1.0:  # the deficit is ~exp(-2 pi^2 s^2): visible only for small s
                        assert d < exact * (1 - 1e-6)


def test_evaluator_is_stable_under_wider_truncation():
    for s, h in ((0.6, 4), (2.5, 3)):
        r = _support_radius(s)
        narrow, wide = _sum_logpmf(s, h, r), _sum_logpmf(s, h, r + 40)
        for delta in SHIFTS:
            for alpha in ORDERS:
                assert _renyi_shift(narrow, delta, alpha) == pytest.approx(
                    _renyi_shift(wide, delta, alpha), rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("sigma_p", SIGMAS_P)
@pytest.mark.parametrize("honest", HONEST)
def test_kls_prop14_bounds_exact_renyi_divergence(sum_pmfs, sigma_p, honest):
    logp = sum_pmfs[(sigma_p, honest)]
    for delta in SHIFTS:
        for alpha in ORDERS:
            d = _renyi_shift(logp, delta, alpha)
            bound = kls_rdp(alpha, delta, delta, sigma_p, honest, 1)
            # KLS21 Proposition 14 with d = 1, Delta1 = Delta2 = Delta (integer shift).
            assert d <= bound * (1 + 1e-12) + 1e-12, (sigma_p, honest, delta, alpha, d, bound)
            # Non-trivial: the divergence is of the order of the continuous-Gaussian
            # value alpha Delta^2/(2 h sigma_p^2), never negligible against it.
            gauss = alpha * delta ** 2 / (2 * honest * sigma_p ** 2)
            assert d > 0.5 * gauss


def test_large_sigma_approaches_gaussian_value(sum_pmfs):
    # At sigma_p = 2.5 tau ~ 1e-26, so the sum is a discrete Gaussian of variance h
    # sigma_p^2 to float precision and D_alpha -> alpha Delta^2/(2 h sigma_p^2).
    for h in HONEST:
        logp = sum_pmfs[(2.5, h)]
        for delta in SHIFTS:
            for alpha in ORDERS:
                gauss = alpha * delta ** 2 / (2 * h * 2.5 ** 2)
                assert _renyi_shift(logp, delta, alpha) == pytest.approx(gauss, rel=0.02)


def test_tau_term_is_needed_at_small_sigma(sum_pmfs):
    # The sum of discrete Gaussians is NOT a discrete Gaussian: at sigma_p = 0.6 the
    # exact divergence exceeds the tau-free value alpha Delta^2/(2 h sigma_p^2) for
    # some (h, Delta, alpha), so a check that ignored tau would accept a false bound.
    excess = [
        _renyi_shift(sum_pmfs[(0.6, h)], delta, alpha) - alpha * delta ** 2 / (2 * h * 0.36)
        for h in HONEST for delta in SHIFTS for alpha in ORDERS
    ]
    assert max(excess) > 1e-3


# ---------------------------------------------------------------------------
# kls_tau / kls_rdp
# ---------------------------------------------------------------------------

def _tau_mp(sigma_p, honest):
    """tau of KLS21 Prop. 14 in 50-digit arithmetic (no underflow)."""
    with mpmath.workdps(50):
        s = mpmath.mpf(sigma_p)
        return 10 * mpmath.fsum(mpmath.exp(-2 * mpmath.pi ** 2 * s * s * k / (k + 1))
                                for k in range(1, honest))


def test_kls_tau_values():
    assert kls_tau(0.7, 1) == 0.0
    for s in (0.5, 0.6, 1.0, 1.7, 3.0):
        for h in (2, 3, 5, 9):
            assert kls_tau(s, h) == pytest.approx(float(_tau_mp(s, h)), rel=1e-13)
    # decreasing in sigma_p, increasing in h
    assert kls_tau(0.6, 3) > kls_tau(0.8, 3) > kls_tau(1.2, 3) > 0
    assert kls_tau(0.8, 2) < kls_tau(0.8, 3) < kls_tau(0.8, 9)


def test_kls_rdp_single_party_is_cks():
    # honest = 1: tau = 0 and every term is CKS20 Theorem 14's alpha Delta2^2/(2 s^2).
    for alpha in (1.5, 2.0, 32.0):
        assert kls_rdp(alpha, 3.0, 5.0, 0.8, 1, 7) == pytest.approx(alpha * 9 / (2 * 0.64), rel=1e-15)


def test_kls_rdp_is_min_of_three_terms_and_above_tau_free_value():
    for s, h, d2, d1, dim in ((0.6, 3, 2.0, 3.0, 4), (1.0, 5, 1.0, 1.0, 10), (0.55, 2, 4.0, 8.0, 16)):
        tau = float(_tau_mp(s, h))
        for alpha in (1.5, 4.0, 64.0):
            s2, s1 = d2 / (math.sqrt(h) * s), d1 / (math.sqrt(h) * s)
            r = kls_rdp(alpha, d2, d1, s, h, dim)
            terms = (alpha / 2 * s2 ** 2 + tau * dim,
                     alpha / 2 * (s2 ** 2 + 2 * s1 * tau + tau ** 2 * dim),
                     alpha / 2 * (s2 + math.sqrt(dim) * tau) ** 2)
            assert r == pytest.approx(min(terms), rel=1e-13)
            assert r > alpha / 2 * s2 ** 2  # tau > 0 here, every term exceeds it


@pytest.mark.parametrize("args", [
    (1.0, 1, 1, 1.0, 2, 1),      # alpha must be > 1
    (0.5, 1, 1, 1.0, 2, 1),
    (2.0, -1, 1, 1.0, 2, 1),     # negative sensitivity
    (2.0, 1, float("nan"), 1.0, 2, 1),
    (2.0, 1, 1, 0.49, 2, 1),     # sigma_p below 1/2
    (2.0, 1, 1, 0.0, 2, 1),
    (2.0, 1, 1, 1.0, 0, 1),      # honest >= 1
    (2.0, 1, 1, 1.0, 2, 0),      # dim >= 1
    (2.0, 1, 1, 1.0, 2.0, 1),    # honest must be an integer
])
def test_kls_rdp_rejects_bad_arguments(args):
    with pytest.raises(ParameterError):
        kls_rdp(*args)


# ---------------------------------------------------------------------------
# (b) party_noise_scale
# ---------------------------------------------------------------------------

def test_eta_is_two_to_minus_ten():
    assert DISTRIBUTED_ETA == ETA


def _check_exact_rounding(sigma, n, t, dim):
    h = n - t
    r = party_noise_scale(sigma, n, t, dim)
    assert isinstance(r, float) and math.isfinite(r)
    below = math.nextafter(r, 0.0)
    if h == 1:
        assert Fraction(r) >= Fraction(sigma) > Fraction(below)
    else:
        target = Fraction(sigma) ** 2 * (1 + ETA) / h
        assert Fraction(r) ** 2 >= target > Fraction(below) ** 2
    return r


def test_single_honest_party_returns_sigma_exactly():
    for sigma in (40.0 * GRID, 3.0 * GRID, 2.5, 1e-3):
        for n in (2, 3, 7):
            assert party_noise_scale(sigma, n, n - 1, 10) == sigma
    # A Fraction that is not a float64 is rounded UP (never less noise than sigma).
    _check_exact_rounding(Fraction(10, 3) * GRID, 4, 3, 5)
    assert party_noise_scale(Fraction(3, 1) * GRID, 2, 1, 1) == 3.0 * GRID


@pytest.mark.parametrize("sigma", [40 * GRID, 3 * GRID, Fraction(7, 3) * GRID, 12345.678])
@pytest.mark.parametrize("n,t", [(3, 1), (4, 1), (5, 2), (9, 1), (9, 7)])
def test_party_scale_is_smallest_float_with_enough_variance(sigma, n, t):
    _check_exact_rounding(sigma, n, t, 10)


def _rho_kls3_mp(delta, sigma_p, honest, dim):
    """Third term of KLS21 Prop. 14 divided by alpha: the zCDP rho, in 50 digits."""
    with mpmath.workdps(50):
        s = mpmath.mpf(sigma_p)
        x = mpmath.mpf(delta) / (mpmath.sqrt(honest) * s) + mpmath.sqrt(dim) * _tau_mp(sigma_p, honest)
        return x * x / 2


@pytest.mark.parametrize("sigma", [40 * GRID, 3 * GRID])
@pytest.mark.parametrize("n,t", [(3, 1), (4, 1), (5, 2), (9, 1), (9, 3)])
def test_zcdp_bound_never_exceeds_plaintext_charge(sigma, n, t):
    dim = 10
    h = n - t
    sp = party_noise_scale(sigma, n, t, dim)
    for delta in (1, 2 ** 16, math.sqrt(2) * GRID * 0.5):
        with mpmath.workdps(50):
            plaintext = mpmath.mpf(delta) ** 2 / (2 * mpmath.mpf(sigma) ** 2)   # CKS20 Thm 4/14
            assert _rho_kls3_mp(delta, sp, h, dim) <= plaintext
        # and kls_rdp (the min of the three terms) is within the charge at every order
        for alpha in (1.5, 2.0, 10.0, 256.0):
            assert kls_rdp(alpha, delta, delta * math.sqrt(dim), sp, h, dim) <= \
                alpha * float(plaintext) * (1 + 1e-12)


def test_small_target_scale_is_rejected():
    # sigma = 1.5 grid units, h = 3, d = 10: sigma_p ~ 0.866, tau ~ 6.6e-3, while the
    # eta margin at Delta = 1 is (1/1.5)(1 - 1/sqrt(1+2**-10)) ~ 3.3e-4.
    with pytest.raises(ParameterError, match="too small for the distributed discrete Gaussian "
                                             "analysis at 3 honest parties"):
        party_noise_scale(1.5, 4, 1, 10)
    # Tiny targets put sigma_p below the proposition's hypothesis sigma_p >= 1/2.
    with pytest.raises(ParameterError, match="at 2 honest parties.*below 1/2"):
        party_noise_scale(1e-6, 3, 1, 1)


def test_acceptance_agrees_with_exact_tau_condition():
    # Whenever a scale is accepted, the condition of the module's argument holds with
    # the EXACT tau: sqrt(d) tau <= (1/sigma)(1 - 1/sqrt(1+eta)), hence rho_KLS <= the
    # plaintext charge for Delta = 1. Conversely the check may be conservative only by
    # its tau upper bound, which is at most (h-1) times the exact tau (k = 1 term), so
    # a scale whose exact tau clears the margin (h-1)-fold must be accepted.
    accepted = rejected = 0
    for sigma in np.linspace(1.0, 4.0, 61):
        sigma = float(sigma)
        for n, t in ((3, 1), (4, 1), (5, 1)):
            h = n - t
            for dim in (1, 10, 100):
                with mpmath.workdps(50):
                    r1 = 1 - 1 / mpmath.sqrt(1 + mpmath.mpf(1) / 1024)
                    margin = r1 / mpmath.mpf(sigma)
                    sp_needed = mpmath.sqrt(mpmath.mpf(sigma) ** 2 * (1 + mpmath.mpf(1) / 1024) / h)
                    try:
                        sp = party_noise_scale(sigma, n, t, dim)
                    except ParameterError:
                        rejected += 1
                        lhs = mpmath.sqrt(dim) * _tau_mp(float(sp_needed), h)
                        assert lhs * (h - 1) * (1 + mpmath.mpf(10) ** -6) > margin or sp_needed < 0.5
                        continue
                    accepted += 1
                    assert mpmath.sqrt(dim) * _tau_mp(sp, h) <= margin
                    assert _rho_kls3_mp(1, sp, h, dim) <= 1 / (2 * mpmath.mpf(sigma) ** 2)
    assert accepted > 0 and rejected > 0


@pytest.mark.parametrize("args,what", [
    ((3 * GRID, 3, 0, 1), "collusion_tolerance"),     # t = 0
    ((3 * GRID, 3, 3, 1), "collusion_tolerance"),     # t = n
    ((3 * GRID, 3, 4, 1), "collusion_tolerance"),     # t > n
    ((3 * GRID, 1, 1, 1), "num_parties"),             # n = 1
    ((3 * GRID, 2.0, 1, 1), "num_parties"),           # n not an integer
    ((3 * GRID, 3, True, 1), "collusion_tolerance"),  # bool is not an integer here
    ((3 * GRID, 3, 1, 0), "dim"),                     # dim = 0
    ((0, 3, 1, 1), "sigma"),
    ((-1.0, 3, 1, 1), "sigma"),
    ((Fraction(-1, 3), 3, 1, 1), "sigma"),
    ((float("nan"), 3, 1, 1), "sigma"),
    ((float("inf"), 3, 1, 1), "sigma"),
    (("3", 3, 1, 1), "sigma"),
])
def test_party_noise_scale_rejects_bad_arguments(args, what):
    with pytest.raises(ParameterError, match=what):
        party_noise_scale(*args)


# ---------------------------------------------------------------------------
# (c) property
# ---------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=9),
    data=st.data(),
    sigma=st.one_of(
        st.floats(min_value=2.0 ** 20, max_value=2.0 ** 50, allow_nan=False, allow_infinity=False),
        st.fractions(min_value=2 ** 20, max_value=2 ** 50, max_denominator=10 ** 6),
    ),
    dim=st.integers(min_value=1, max_value=100),
)
def test_property_exact_variance_inequality(n, data, sigma, dim):
    t = data.draw(st.integers(min_value=1, max_value=n - 1))
    r = _check_exact_rounding(sigma, n, t, dim)
    h = n - t
    # Never less total honest variance than the target (strictly more when h >= 2).
    if h >= 2:
        assert h * Fraction(r) ** 2 > Fraction(sigma) ** 2
