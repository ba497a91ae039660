"""Exact discrete Gaussian sampling after Canonne, Kamath & Steinke 2020.

C. L. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential
Privacy", NeurIPS 2020, arXiv:2004.00010 (below: CKS).

    N_Z(0, sigma^2):  P[X = x] = exp(-x^2 / (2 sigma^2)) / sum_{y in Z} exp(-y^2 / (2 sigma^2))

The sampler is exact: every parameter is a rational number (fractions.Fraction, or
a pair of Python integers internally), and the only source of randomness is an
injected object's ``randrange(n)`` (an exact uniform integer in [0, n)). No floating
point number is ever touched on the sampling path. The three building blocks are
CKS Algorithm 1 (Bernoulli(exp(-gamma))), Algorithm 2 (discrete Laplace) and
Algorithm 3 (discrete Gaussian by rejection from a discrete Laplace with scale
t = floor(sigma) + 1). Each has O(1) expected iterations independent of sigma,
so sigma up to 2**40 and beyond costs nothing extra except slightly larger
integers.

Privacy of N_Z noise (not used here, documented for the accounting that relies
on it; see dvsecure.accounting.charges.discrete_gaussian_rho):
  * CKS Theorem 4: adding N_Z(0, sigma^2) to an integer query of sensitivity Delta
    is (Delta^2 / (2 sigma^2))-zCDP.
  * CKS Proposition 5: for integers mu, nu and every alpha > 1,
    D_alpha(N_Z(mu, sigma^2) || N_Z(nu, sigma^2)) <= alpha (mu - nu)^2 / (2 sigma^2),
    with equality whenever alpha (mu - nu) is an integer.
  * CKS Theorem 14: independent coordinates compose, giving
    (sum_j Delta_j^2 / sigma_j^2) / 2 -zCDP.

``SeededDiscreteGaussian`` drives this sampler with ``random.Random(seed)``: the
SEEDED mode, reproducible and NOT cryptographically secure. Private runs use
OpenDP's CSPRNG-driven sampler (dvsecure.noise.sources.PrivateNoise).

``discrete_gaussian_pmf`` / ``discrete_gaussian_logpmf`` are float helpers for
tests and analysis only; they are never used to draw noise.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction
from functools import lru_cache
from numbers import Rational
from typing import Any

import numpy as np

from ..errors import ParameterError

__all__ = [
    "sample_bernoulli_exp",
    "sample_discrete_laplace",
    "sample_discrete_gaussian",
    "SeededDiscreteGaussian",
    "discrete_gaussian_pmf",
    "discrete_gaussian_logpmf",
]


# --------------------------------------------------------------------------- #
# Exact conversion and validation
# --------------------------------------------------------------------------- #

def _to_fraction(value: Any, name: str) -> Fraction:
    """Fraction(value) exactly (a float converts to its exact binary value).

    Rejects bools, strings, NaN and infinities with a ParameterError naming `name`."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ParameterError(f"{name} must be finite, got {value!r}")
        return Fraction(float(value))
    if isinstance(value, (int, np.integer)):
        return Fraction(int(value))
    if isinstance(value, (Fraction, Rational)):
        return Fraction(value)
    try:
        return Fraction(value)  # e.g. decimal.Decimal
    except (TypeError, ValueError, OverflowError) as exc:
        raise ParameterError(f"{name} must be a finite rational number, got {value!r}") from exc


def _check_rng(rng: Any) -> None:
    if not callable(getattr(rng, "randrange", None)):
        raise ParameterError(f"rng must provide randrange(n), got {rng!r}")


# --------------------------------------------------------------------------- #
# Integer-pair kernels (gamma = num/den etc.). Private: callers validate.
# --------------------------------------------------------------------------- #

def _bernoulli(num: int, den: int, rng) -> bool:
    """Bernoulli(num/den) for 0 <= num <= den, from one exact uniform integer."""
    return rng.randrange(den) < num


def _bernoulli_exp_le1(num: int, den: int, rng) -> bool:
    """Bernoulli(exp(-gamma)) for gamma = num/den in [0, 1] (CKS Algorithm 1, first case).

    Draw A_k ~ Bernoulli(gamma/k) for k = 1, 2, ... until the first failure at
    k = K; then P[K > k] = gamma^k / k!, and P[K odd] = sum_k (-gamma)^k / k! = exp(-gamma)."""
    k = 1
    while rng.randrange(den * k) < num:  # Bernoulli(gamma / k) = Bernoulli(num / (den k))
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int, rng) -> bool:
    """Bernoulli(exp(-num/den)) for num >= 0, den > 0 (CKS Algorithm 1).

    For gamma > 1 it uses exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma))),
    stopping at the first failed factor, so the expected number of factors is
    below 1/(1 - e^-1) < 1.6 however large gamma is."""
    whole, rem = divmod(num, den)
    for _ in range(whole):
        if not _bernoulli_exp_le1(1, 1, rng):
            return False
    return _bernoulli_exp_le1(rem, den, rng)


def _discrete_laplace(t_num: int, t_den: int, rng) -> int:
    """Discrete Laplace with scale t = t_num/t_den: P[X = x] proportional to exp(-|x| / t).

    CKS Algorithm 2 with (their) s = t_den, t = t_num:
      U uniform on {0, ..., t_num - 1}, accepted with probability exp(-U/t_num);
      V ~ Geometric(1 - e^-1) on {0, 1, ...};  X = U + t_num V is then geometric
      with P[X = x] proportional to exp(-x / t_num);  Y = floor(X / t_den) has
      P[Y = y] proportional to exp(-y t_den / t_num) = exp(-y / t);
      a fair sign, rejecting the "negative zero", makes it two-sided.
    Expected iterations are O(1) for every t (the U-acceptance is >= 1 - e^-1 on
    average and the sign rejection costs at most a factor 2)."""
    while True:
        u = rng.randrange(t_num)
        if not _bernoulli_exp(u, t_num, rng):
            continue
        v = 0
        while _bernoulli_exp_le1(1, 1, rng):
            v += 1
        y = (u + t_num * v) // t_den
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def _discrete_gaussian(s2_num: int, s2_den: int, rng) -> int:
    """N_Z(0, sigma^2) with sigma^2 = s2_num/s2_den > 0 (CKS Algorithm 3).

    Y ~ discrete Laplace with scale t = floor(sigma) + 1, accepted with probability
    exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). In integers:
      (|Y| - sigma^2/t)^2 / (2 sigma^2) = (|Y| s2_den t - s2_num)^2 / (2 s2_num s2_den t^2).
    floor(sigma) = isqrt(floor(sigma^2)) exactly (k^2 <= x iff k^2 <= floor(x) for integer k).
    Expected number of Laplace draws is O(1) (CKS Section 5: the acceptance
    probability is bounded below by a constant for this choice of t)."""
    t = math.isqrt(s2_num // s2_den) + 1
    den = 2 * s2_num * s2_den * t * t
    a = s2_den * t
    while True:
        y = _discrete_laplace(t, 1, rng)
        diff = abs(y) * a - s2_num
        num = diff * diff
        g = math.gcd(num, den)  # keeps randrange's integers small; exactness unaffected
        if _bernoulli_exp(num // g, den // g, rng):
            return y


# --------------------------------------------------------------------------- #
# Public samplers
# --------------------------------------------------------------------------- #

def sample_bernoulli_exp(gamma: Fraction, rng) -> bool:
    """One exact draw of Bernoulli(exp(-gamma)), gamma >= 0 rational (CKS Algorithm 1).

    gamma may be an int, float (converted exactly) or Fraction. Uses only rng.randrange."""
    g = _to_fraction(gamma, "gamma")
    if g < 0:
        raise ParameterError(f"gamma must be >= 0, got {gamma!r}")
    _check_rng(rng)
    return _bernoulli_exp(g.numerator, g.denominator, rng)


def sample_discrete_laplace(t: Fraction, rng) -> int:
    """One exact draw X with P[X = x] proportional to exp(-|x| / t), t > 0 rational (CKS Algorithm 2)."""
    tt = _to_fraction(t, "t")
    if tt <= 0:
        raise ParameterError(f"t (the discrete Laplace scale) must be > 0, got {t!r}")
    _check_rng(rng)
    return _discrete_laplace(tt.numerator, tt.denominator, rng)


def sample_discrete_gaussian(sigma_sq: Fraction, rng) -> int:
    """One exact draw from N_Z(0, sigma_sq), sigma_sq > 0 rational (CKS Algorithm 3)."""
    s2 = _to_fraction(sigma_sq, "sigma_sq")
    if s2 <= 0:
        raise ParameterError(f"sigma_sq must be > 0, got {sigma_sq!r}")
    _check_rng(rng)
    return _discrete_gaussian(s2.numerator, s2.denominator, rng)


class SeededDiscreteGaussian:
    """SEEDED research/test mode of discrete Gaussian noise.

    Draws exact N_Z(0, sigma^2) samples (CKS Algorithm 3) using ``random.Random(seed)``
    as the source of uniform integers. It is reproducible -- the same seed and the
    same sequence of ``sample`` calls give the same noise -- and therefore NOT
    cryptographically secure and NOT private: anyone who knows or guesses the seed
    can subtract the noise. Every output that uses it must be marked "seeded".
    Private runs use OpenDP's CSPRNG-driven sampler (PrivateNoise), never this class.
    """

    mode = "seeded"

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ParameterError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self._rng = random.Random(self.seed)

    def sample(self, sigma, size: int) -> np.ndarray:
        """`size` i.i.d. draws from N_Z(0, sigma^2) as an int64 array.

        sigma is the scale (int, float or Fraction, converted exactly with Fraction);
        the variance parameter passed to the sampler is sigma^2, exactly."""
        s = _to_fraction(sigma, "sigma")
        if s <= 0:
            raise ParameterError(f"sigma must be > 0, got {sigma!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ParameterError(f"size must be an integer, got {size!r}")
        if size < 0:
            raise ParameterError(f"size must be >= 0, got {size!r}")
        s2 = s * s
        num, den, rng = s2.numerator, s2.denominator, self._rng
        out = [_discrete_gaussian(num, den, rng) for _ in range(int(size))]
        try:
            return np.array(out, dtype=np.int64)
        except OverflowError as exc:  # only for sigma far beyond anything the grid uses
            raise ParameterError(f"sigma {float(s):.3g} gives samples outside int64") from exc


# --------------------------------------------------------------------------- #
# Float pmf for tests and analysis (never used for sampling)
# --------------------------------------------------------------------------- #

# Terms with x^2/(2 sigma^2) > 745 underflow double precision (exp(-745) ~ 5e-324),
# so summing |x| <= 39 sigma + 1 loses nothing that a float could hold.
_TAIL_SIGMAS = 39.0
# Above this sigma the direct sum would need > ~8e5 terms; use the Poisson
# summation identity instead (exact, and its correction terms are exp(-2 pi^2 sigma^2 n^2),
# which are 0 in double precision for sigma >= 10).
_DIRECT_SUM_MAX_SIGMA = 1.0e4


@lru_cache(maxsize=256)
def _log_normaliser(sigma: float) -> float:
    """log sum_{x in Z} exp(-x^2 / (2 sigma^2))."""
    if sigma <= _DIRECT_SUM_MAX_SIGMA:
        k = int(math.ceil(_TAIL_SIGMAS * sigma)) + 1
        x = np.arange(1, k + 1, dtype=np.float64)
        tail = np.exp(-(x * x) / (2.0 * sigma * sigma))
        return math.log1p(2.0 * math.fsum(tail.tolist()))
    # Poisson summation: sum_x exp(-x^2/(2s^2)) = sqrt(2 pi) s (1 + 2 sum_{n>=1} exp(-2 pi^2 s^2 n^2)).
    return 0.5 * math.log(2.0 * math.pi) + math.log(sigma)


def _sigma_float(sigma) -> float:
    s = _to_fraction(sigma, "sigma")
    if s <= 0:
        raise ParameterError(f"sigma must be > 0, got {sigma!r}")
    return float(s)


def discrete_gaussian_logpmf(x, sigma):
    """log P[X = x] for X ~ N_Z(0, sigma^2); x an integer or integer array. Float, analysis only."""
    s = _sigma_float(sigma)
    xa = np.asarray(x)
    if xa.dtype.kind in "iu":
        xf = xa.astype(np.float64)
    else:
        try:
            xf = xa.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"x must be integer-valued, got {x!r}") from exc
        if not np.all(np.floor(xf) == xf):
            raise ParameterError(f"x must be integer-valued, got {x!r}")
    out = -(xf * xf) / (2.0 * s * s) - _log_normaliser(s)
    return float(out) if out.ndim == 0 else out


def discrete_gaussian_pmf(x, sigma):
    """P[X = x] for X ~ N_Z(0, sigma^2), normalised exactly up to float rounding.

    The normalising constant is summed numerically over |y| <= 39 sigma + 1 (every
    omitted term underflows), or for sigma > 1e4 taken from the Poisson summation
    identity. x may be an integer or an integer array; returns float or float array."""
    lp = discrete_gaussian_logpmf(x, sigma)
    return math.exp(lp) if isinstance(lp, float) else np.exp(lp)
