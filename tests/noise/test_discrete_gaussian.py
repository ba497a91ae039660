"""Tests of the exact discrete Gaussian sampler (dvsecure.noise.cks) and of the
zCDP charge dvsecure.accounting.charges.discrete_gaussian_rho it is accounted with.

Reference: Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential
Privacy", arXiv:2004.00010 (CKS):
  * Theorem 4        - 1-D: N_Z(0, sigma^2) noise on a sensitivity-Delta integer query
                       is Delta^2/(2 sigma^2)-zCDP.
  * Proposition 5    - D_alpha(N_Z(mu, s^2) || N_Z(nu, s^2)) <= alpha (mu-nu)^2/(2 s^2)
                       for integers mu, nu and alpha > 1, with equality whenever
                       alpha (mu - nu) is an integer.
  * Theorem 14       - multivariate: independent N_Z(0, s_j^2) coordinates give
                       (sum_j Delta_j^2/s_j^2)/2 -zCDP.

(a) goodness of fit of the sampler against the exact pmf (with a power check);
(b) direct numerical Renyi divergences against alpha * rho, including the
    equality cases, in one and several dimensions;
(c) OpenDP's own zCDP map for its discrete Gaussian as a second reference.

Everything is seeded, so every p-value below is a fixed number, not a coin flip.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from dvsecure.accounting.charges import discrete_gaussian_rho
from dvsecure.errors import ParameterError
from dvsecure.noise.cks import (
    SeededDiscreteGaussian,
    discrete_gaussian_logpmf,
    discrete_gaussian_pmf,
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_laplace,
)

GOF_SIGMAS = [0.7, 1.5, 4.0, 13.3]
GOF_N = 100_000
P_MIN = 1e-4


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

def _support(sigma: float, extra: int = 0) -> np.ndarray:
    k = int(math.ceil(39 * sigma)) + 2 + extra
    return np.arange(-k, k + 1)


def _exact_moments(sigma: float) -> tuple[float, float]:
    """(variance, fourth central moment) of N_Z(0, sigma^2), by direct summation."""
    x = _support(sigma)
    p = discrete_gaussian_pmf(x, sigma)
    xf = x.astype(float)
    return float(np.sum(p * xf**2)), float(np.sum(p * xf**4))


def _pooled_chisquare(samples: np.ndarray, model_pmf, lo: int, hi: int, min_expected: float = 5.0):
    """Chi-square of integer samples against a pmf on Z, pooling both tails.

    Cells: (-inf, a], a+1, ..., b-1, [b, inf) where [a, b] is the widest window
    around the mode in which every interior cell expects >= min_expected counts.
    `model_pmf(x)` must be defined on [lo, hi], which holds essentially all mass."""
    n = len(samples)
    x = np.arange(lo, hi + 1)
    p = model_pmf(x)
    p = p / p.sum()
    expected = n * p
    ok = np.nonzero(expected >= min_expected)[0]
    a_i, b_i = ok[0], ok[-1]
    exp_cells = np.concatenate(([expected[: a_i + 1].sum()], expected[a_i + 1 : b_i], [expected[b_i:].sum()]))
    a, b = x[a_i], x[b_i]
    clipped = np.clip(samples, a, b)
    obs_cells = np.bincount(clipped - a, minlength=b - a + 1).astype(float)
    assert obs_cells.sum() == n
    assert len(exp_cells) == len(obs_cells) >= 3
    return stats.chisquare(obs_cells, exp_cells)


@pytest.fixture(scope="module")
def gof_samples() -> dict[float, np.ndarray]:
    return {s: SeededDiscreteGaussian(20200401 + i).sample(s, GOF_N) for i, s in enumerate(GOF_SIGMAS)}


# --------------------------------------------------------------------------- #
# (a) goodness of fit, moments, power
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("sigma", GOF_SIGMAS)
def test_chisquare_fits_exact_pmf(gof_samples, sigma):
    x = gof_samples[sigma]
    sup = _support(sigma)
    res = _pooled_chisquare(x, lambda v: discrete_gaussian_pmf(v, sigma), sup[0], sup[-1])
    assert res.pvalue > P_MIN, (sigma, res)


@pytest.mark.parametrize("sigma", GOF_SIGMAS)
def test_chisquare_rejects_wrong_sigma(gof_samples, sigma):
    """Power: the same samples against the pmf of 1.1 sigma must be rejected."""
    x = gof_samples[sigma]
    wrong = 1.1 * sigma
    sup = _support(wrong)
    res = _pooled_chisquare(x, lambda v: discrete_gaussian_pmf(v, wrong), sup[0], sup[-1])
    assert res.pvalue < 1e-10, (sigma, res)


@pytest.mark.parametrize("sigma", GOF_SIGMAS)
def test_mean_and_variance_match_exact_moments(gof_samples, sigma):
    x = gof_samples[sigma].astype(float)
    n = len(x)
    var, mu4 = _exact_moments(sigma)
    # The discrete Gaussian's variance is strictly below sigma^2 (CKS); the gap is
    # ~exp(-2 pi^2 sigma^2) relative, so it only shows in floats for small sigma.
    assert var <= sigma**2 * (1 + 1e-12)
    if sigma < 1:
        assert var < sigma**2
    # mean 0 within 5 standard errors
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    # sample variance within 5 standard errors (SE^2 ~ (mu4 - var^2)/n)
    se_var = math.sqrt((mu4 - var**2) / n)
    assert abs(x.var(ddof=1) - var) < 5 * se_var, (x.var(ddof=1), var, se_var)


def test_small_sigma_variance_is_the_discrete_one_not_sigma_sq():
    """At sigma = 0.5 the discrete Gaussian's variance (~0.232) is ~7% below sigma^2;
    the samples must match the exact discrete value and reject the continuous one."""
    sigma, n = 0.5, 50_000
    x = SeededDiscreteGaussian(77).sample(sigma, n).astype(float)
    var, mu4 = _exact_moments(sigma)
    se = math.sqrt((mu4 - var**2) / n)
    assert sigma**2 - var > 10 * se
    assert abs(x.var(ddof=1) - var) < 5 * se
    assert abs(x.var(ddof=1) - sigma**2) > 5 * se


@pytest.mark.parametrize("sigma", [2**32, 2**40])
def test_large_sigma_fits_normal_bins(sigma):
    """On the tally grid sigma is huge; the discrete Gaussian then equals the normal
    distribution to within ~1/sigma^2 on any binning, so equiprobable normal bins
    are an exact-enough reference."""
    x = SeededDiscreteGaussian(7).sample(sigma, 40_000)
    z = x.astype(float) / float(sigma)
    edges = stats.norm.ppf(np.linspace(0, 1, 21)[1:-1])
    obs = np.bincount(np.searchsorted(edges, z), minlength=20)
    res = stats.chisquare(obs)
    assert res.pvalue > P_MIN, res
    assert abs(z.mean()) < 5 / math.sqrt(len(z))
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / len(z))


# --------------------------------------------------------------------------- #
# the building blocks
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2), Fraction(7, 2), 0.25])
def test_bernoulli_exp_frequency(gamma):
    rng = random.Random(11)
    n = 40_000
    k = sum(sample_bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-float(gamma))
    if p == 1:
        assert k == n
        return
    assert stats.binomtest(k, n, p).pvalue > P_MIN


@pytest.mark.parametrize("t", [Fraction(1), Fraction(7, 3), Fraction(10), 0.5])
def test_discrete_laplace_fits(t):
    rng = random.Random(5)
    n = 40_000
    x = np.array([sample_discrete_laplace(t, rng) for _ in range(n)])
    tf = float(t)
    q = math.exp(-1 / tf)

    def pmf(v):
        return (1 - q) / (1 + q) * np.exp(-np.abs(v) / tf)

    k = int(60 * tf) + 5
    res = _pooled_chisquare(x, pmf, -k, k)
    assert res.pvalue > P_MIN, res
    # and a wrong scale is rejected
    wrong = 1.15 * tf
    qw = math.exp(-1 / wrong)
    res_w = _pooled_chisquare(x, lambda v: (1 - qw) / (1 + qw) * np.exp(-np.abs(v) / wrong), -k, k)
    assert res_w.pvalue < 1e-6


class _CountingRandrangeOnly:
    """An rng offering nothing but randrange, which checks its argument is an int
    and counts calls: proves the sampler uses exact uniform integers only."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)
        self.calls = 0

    def randrange(self, n):
        assert type(n) is int and n > 0, n
        self.calls += 1
        return self._r.randrange(n)


@pytest.mark.parametrize("sigma_sq", [Fraction(49, 100), Fraction(9, 4), Fraction(2**64), Fraction(2**80), Fraction(1, 10**6)])
def test_only_exact_integer_randomness_and_o1_cost(sigma_sq):
    rng = _CountingRandrangeOnly(3)
    n = 2000
    for _ in range(n):
        assert type(sample_discrete_gaussian(sigma_sq, rng)) is int
    # CKS Algorithms 1-3 need O(1) expected coins per sample, whatever sigma is.
    assert rng.calls / n < 40, rng.calls / n


def test_tiny_sigma_is_almost_always_zero():
    x = SeededDiscreteGaussian(1).sample(Fraction(1, 1000), 1000)
    assert np.all(x == 0)


def test_seeded_reproducible_and_exact_conversion():
    a = SeededDiscreteGaussian(42).sample(1.5, 500)
    b = SeededDiscreteGaussian(42).sample(Fraction(3, 2), 500)
    c = SeededDiscreteGaussian(43).sample(1.5, 500)
    assert a.dtype == np.int64 and a.shape == (500,)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # a float sigma is taken at its exact binary value, squared exactly
    rng = random.Random(9)
    ref = [sample_discrete_gaussian(Fraction(0.1) ** 2, rng) for _ in range(300)]
    assert np.array_equal(SeededDiscreteGaussian(9).sample(0.1, 300), np.array(ref))
    # state carries over between calls
    g = SeededDiscreteGaussian(42)
    assert np.array_equal(np.concatenate([g.sample(1.5, 200), g.sample(1.5, 300)]), a)
    assert SeededDiscreteGaussian(1).sample(2.0, 0).shape == (0,)


def test_seeded_noise_source_uses_this_sampler():
    from dvsecure.noise import make_noise

    src = make_noise("seeded", seed=5)
    assert src.mode == "seeded" and not src.private
    assert np.array_equal(src.sample(Fraction(2**32), 50), SeededDiscreteGaussian(5).sample(2**32, 50))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: SeededDiscreteGaussian(1).sample(0, 3), "sigma"),
        (lambda: SeededDiscreteGaussian(1).sample(-1.5, 3), "sigma"),
        (lambda: SeededDiscreteGaussian(1).sample(float("nan"), 3), "sigma"),
        (lambda: SeededDiscreteGaussian(1).sample(float("inf"), 3), "sigma"),
        (lambda: SeededDiscreteGaussian(1).sample(1.0, -1), "size"),
        (lambda: SeededDiscreteGaussian(1).sample(1.0, 2.5), "size"),
        (lambda: SeededDiscreteGaussian(True), "seed"),
        (lambda: SeededDiscreteGaussian("7"), "seed"),
        (lambda: sample_discrete_gaussian(Fraction(0), random.Random(1)), "sigma_sq"),
        (lambda: sample_discrete_gaussian(-2, random.Random(1)), "sigma_sq"),
        (lambda: sample_discrete_laplace(0, random.Random(1)), "t"),
        (lambda: sample_bernoulli_exp(Fraction(-1, 2), random.Random(1)), "gamma"),
        (lambda: sample_bernoulli_exp(1, object()), "rng"),
        (lambda: discrete_gaussian_pmf(0, 0.0), "sigma"),
    ],
)
def test_parameter_errors_name_the_argument(call, name):
    with pytest.raises(ParameterError, match=name):
        call()


@pytest.mark.parametrize("sigma", [0.05, 0.7, 1.5, 13.3, 5000.0])
def test_pmf_normalised(sigma):
    x = _support(sigma)
    assert math.isclose(math.fsum(discrete_gaussian_pmf(x, sigma).tolist()), 1.0, rel_tol=1e-12)
    assert math.isclose(discrete_gaussian_pmf(0, sigma), math.exp(discrete_gaussian_logpmf(0, sigma)))


def test_pmf_large_sigma_branch_matches_direct_sum():
    # sigma = 2e4 uses the Poisson-summation normaliser; it must agree with the
    # direct-sum normaliser evaluated just below the switch (scaled by sigma).
    s1, s2 = 9999.0, 20000.0
    assert math.isclose(discrete_gaussian_pmf(0, s1) * s1, discrete_gaussian_pmf(0, s2) * s2, rel_tol=1e-12)
    assert math.isclose(discrete_gaussian_pmf(0, s2), 1 / (math.sqrt(2 * math.pi) * s2), rel_tol=1e-13)


# --------------------------------------------------------------------------- #
# (b) Renyi divergence vs discrete_gaussian_rho (CKS Proposition 5, Theorems 4, 14)
# --------------------------------------------------------------------------- #

def _renyi_1d(alpha: float, sigma: float, mu: int, nu: int) -> float:
    """D_alpha(N_Z(mu, s^2) || N_Z(nu, s^2)) = 1/(alpha-1) log sum_x P^alpha Q^(1-alpha),
    evaluated in log space over a window holding all mass of every term."""
    c = alpha * mu + (1 - alpha) * nu  # the summand is a Gaussian bump centred at c
    w = int(math.ceil(40 * sigma)) + 3
    x = np.arange(int(math.floor(min(mu, nu, c))) - w, int(math.ceil(max(mu, nu, c))) + w + 1)
    log_p = discrete_gaussian_logpmf(x - mu, sigma)
    log_q = discrete_gaussian_logpmf(x - nu, sigma)
    return float(logsumexp(alpha * log_p + (1 - alpha) * log_q)) / (alpha - 1)


def _theta_gap(alpha: float, sigma: float, mu: int, nu: int) -> float:
    """The exact slack in Proposition 5: completing the square,
    D_alpha = alpha (mu-nu)^2/(2 s^2) + log(S(c)/S(0))/(alpha-1), with
    S(c) = sum_x exp(-(x-c)^2/(2 s^2)), c = nu + alpha (mu-nu). S(c) <= S(0), with
    equality iff c is an integer."""
    c = nu + alpha * (mu - nu)
    w = int(math.ceil(40 * sigma)) + 3
    x = np.arange(int(math.floor(c)) - w, int(math.ceil(c)) + w + 1, dtype=float)
    z = np.arange(-w, w + 1, dtype=float)
    log_sc = logsumexp(-((x - c) ** 2) / (2 * sigma**2))
    log_s0 = logsumexp(-(z**2) / (2 * sigma**2))
    return float(log_sc - log_s0) / (alpha - 1)


RENYI_SIGMAS = [0.35, 0.5, 0.8, 1.0, 1.7, 3.0, 13.3, 100.0]
RENYI_ALPHAS = [Fraction(101, 100), Fraction(5, 4), Fraction(4, 3), Fraction(3, 2), Fraction(2),
                Fraction(5, 2), Fraction(3), Fraction(9, 2), Fraction(8), Fraction(20)]
RENYI_SHIFTS = [(0, 1), (0, 2), (0, 3), (1, 0), (3, -2), (5, 1)]


def _bound(alpha: Fraction, sigma: float, mu: int, nu: int) -> float:
    return float(alpha * discrete_gaussian_rho(Fraction((mu - nu) ** 2), Fraction(sigma)))


@pytest.mark.parametrize("sigma", RENYI_SIGMAS)
def test_renyi_divergence_bounded_by_rho_with_equality_iff_alpha_delta_integer(sigma):
    tight = strict = 0
    for alpha in RENYI_ALPHAS:
        for mu, nu in RENYI_SHIFTS:
            a = float(alpha)
            d = _renyi_1d(a, sigma, mu, nu)
            bound = _bound(alpha, sigma, mu, nu)
            assert d <= bound * (1 + 1e-10) + 1e-13, (sigma, alpha, mu, nu, d, bound)
            # the closed form (bound + exact slack) agrees with the direct sum
            assert math.isclose(d, bound + _theta_gap(a, sigma, mu, nu), rel_tol=1e-9, abs_tol=1e-13)
            if (alpha * (mu - nu)).denominator == 1:
                # CKS Proposition 5: equality whenever alpha (mu - nu) is an integer
                assert math.isclose(d, bound, rel_tol=1e-9), (sigma, alpha, mu, nu, d, bound)
                tight += 1
            elif sigma < 1.0:
                # and only then: for non-integer alpha (mu - nu) the slack is of order
                # exp(-2 pi^2 sigma^2) (>= 1e-7 relative for sigma <= 0.8, ~5e-11 at
                # sigma = 1, where float noise is ~4e-12), so test strictness for sigma < 1.
                assert bound - d > 1e-9 * max(1.0, bound), (sigma, alpha, mu, nu, d, bound)
                strict += 1
    assert tight > 0 and (strict > 0 or sigma >= 1.0)


def test_renyi_equality_condition_is_alpha_times_shift_not_alpha_alone():
    """Non-integer alpha can still be tight (alpha=3/2, Delta=2), integer alpha is always
    tight for integer shifts, and alpha=3/2, Delta=1 is strictly loose."""
    s = 0.5
    assert math.isclose(_renyi_1d(1.5, s, 0, 2), _bound(Fraction(3, 2), s, 0, 2), rel_tol=1e-12)
    assert math.isclose(_renyi_1d(3.0, s, 0, 1), _bound(Fraction(3), s, 0, 1), rel_tol=1e-12)
    loose, bound = _renyi_1d(1.5, s, 0, 1), _bound(Fraction(3, 2), s, 0, 1)
    assert loose < bound * (1 - 1e-4), (loose, bound)


def _renyi_product_explicit(alpha: float, sigma: float, mu: list[int], nu: list[int]) -> float:
    """D_alpha between two product discrete Gaussians in d = len(mu) <= 3 dimensions,
    summed over the full d-dimensional grid (no use of the product rule)."""
    d = len(mu)
    c = [alpha * m + (1 - alpha) * n for m, n in zip(mu, nu)]
    w = int(math.ceil(30 * sigma)) + 3
    lo = int(math.floor(min(min(mu), min(nu), min(c)))) - w
    hi = int(math.ceil(max(max(mu), max(nu), max(c)))) + w
    axis = np.arange(lo, hi + 1)
    terms = None
    for j in range(d):
        t = alpha * discrete_gaussian_logpmf(axis - mu[j], sigma) + (1 - alpha) * discrete_gaussian_logpmf(axis - nu[j], sigma)
        shape = [1] * d
        shape[j] = len(axis)
        t = t.reshape(shape)
        terms = t if terms is None else terms + t
    total = float(logsumexp(terms))
    return total / (alpha - 1)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.0])
@pytest.mark.parametrize("delta", [1, 2])
@pytest.mark.parametrize("alpha", [Fraction(3, 2), Fraction(2), Fraction(5, 4)])
def test_multivariate_one_hot_change_explicit(sigma, delta, alpha):
    """One-hot vote moved from class 0 to class 1 (d = 3): L2 sensitivity^2 = 2 Delta^2.
    CKS Theorem 14: D_alpha <= alpha * 2 Delta^2 / (2 sigma^2), equal iff alpha*Delta in Z."""
    a = float(alpha)
    mu, nu = [delta, 0, 0], [0, delta, 0]
    d = _renyi_product_explicit(a, sigma, mu, nu)
    bound = float(alpha * discrete_gaussian_rho(Fraction(2 * delta**2), Fraction(sigma)))
    per_coord = sum(_renyi_1d(a, sigma, m, n) for m, n in zip(mu, nu))
    assert math.isclose(d, per_coord, rel_tol=1e-9, abs_tol=1e-13)  # product rule
    assert d <= bound * (1 + 1e-10) + 1e-13
    if (alpha * delta).denominator == 1:
        assert math.isclose(d, bound, rel_tol=1e-9), (d, bound)
    elif sigma < 1.0:
        assert bound - d > 1e-9 * max(1.0, bound), (d, bound)


@pytest.mark.parametrize("sigma", [1.5, 5.0, 13.3, 100.0])
@pytest.mark.parametrize("delta", [1, 3])
@pytest.mark.parametrize("alpha", [Fraction(4, 3), Fraction(2), Fraction(7, 2), Fraction(10)])
def test_multivariate_one_hot_change_product_rule(sigma, delta, alpha):
    """Larger sigma: D_alpha of independent coordinates is the sum of the coordinates'
    divergences; coordinates that do not move contribute 0."""
    a = float(alpha)
    d = _renyi_1d(a, sigma, delta, 0) + _renyi_1d(a, sigma, 0, delta)
    bound = float(alpha * discrete_gaussian_rho(Fraction(2 * delta**2), Fraction(sigma)))
    assert d <= bound * (1 + 1e-10) + 1e-13
    assert math.isclose(d, bound, rel_tol=1e-9)  # slack ~exp(-2 pi^2 sigma^2): invisible here


def test_rho_matches_continuous_gaussian_formula():
    for delta_sq, s in [(1, Fraction(3, 2)), (2 * 65536**2, Fraction(2**32)), (7, Fraction(1, 3))]:
        assert discrete_gaussian_rho(Fraction(delta_sq), s) == Fraction(delta_sq) / (2 * s * s)


# --------------------------------------------------------------------------- #
# (c) OpenDP as a second reference
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def dp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp

OPENDP_CASES = [(1, 1.0), (1, 1.5), (3, 0.7), (5, 13.3), (2, 0.35), (2**16, 2.0**32),
                (7 * 2**16, 123456.75 * 2**16), (1000, 2.0**40)]


@pytest.mark.parametrize("delta, scale", OPENDP_CASES)
def test_opendp_scalar_rho_agrees(dp, delta, scale):
    # T="i64", never int: opendp maps Python int to i32, which saturates.
    m = dp.m.make_gaussian(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=scale)
    assert "ZeroConcentratedDivergence" in str(m.output_measure)
    ours = float(discrete_gaussian_rho(Fraction(delta**2), Fraction(scale)))
    assert math.isclose(m.map(delta), ours, rel_tol=1e-9), (m.map(delta), ours)
    assert m.map(delta) >= ours * (1 - 1e-15)  # opendp rounds its map up, never down


@pytest.mark.parametrize("delta, scale", OPENDP_CASES)
def test_opendp_vector_l2_rho_agrees(dp, delta, scale):
    m = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=scale)
    ours = float(discrete_gaussian_rho(Fraction(delta**2), Fraction(scale)))
    assert math.isclose(m.map(delta), ours, rel_tol=1e-9), (m.map(delta), ours)


@pytest.mark.parametrize("delta, scale", [(1, 1.5), (2**16, 2.0**32), (3, 0.7)])
def test_opendp_one_hot_l2_rho_agrees(dp, delta, scale):
    """One-hot change: L2 distance sqrt(2) Delta, not an integer, so use an f64 metric."""
    m = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale)
    ours = float(discrete_gaussian_rho(Fraction(2 * delta**2), Fraction(scale)))
    assert math.isclose(m.map(math.sqrt(2) * delta), ours, rel_tol=1e-9)
