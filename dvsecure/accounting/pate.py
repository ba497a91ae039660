"""Data-dependent PATE accounting (Papernot et al., ICLR 2018) -- ANALYSIS ONLY.

    !!! These bounds are NOT privacy charges. !!!

Everything in this module is a function of the full vote histogram, i.e. of
*every* source's votes. Consequently:

* a data-dependent RDP value is **not a valid filter cost**: a per-source
  budget filter stays valid under adaptive composition only if a charge depends
  on public outputs and the source's own policy, never on other sources' votes;
* **releasing** a data-dependent value (or ``logq``) leaks information about
  the votes; publishing it would need its own privacy analysis (the paper uses
  smooth sensitivity for that, which is not implemented here);
* dvsecure's budget filter **never** calls this module. It charges the
  data-independent Gaussian zCDP costs (DESIGN section 4). Treating the
  data-dependent bound as a private, enforceable cost was flaw 5 of the
  prototype (DESIGN section 8).

What is here is for measurement and research comparison only, labelled as such:

* :func:`logq_gaussian` -- Proposition 7: a union bound on the probability that
  GNMax does not return the plurality class.
* :func:`rdp_gnmax` -- Theorem 6, instantiated for the Gaussian mechanism with
  the two higher orders of Proposition 10, capped by the data-independent RDP.
* :func:`logpr_answered` / :func:`rdp_threshold` -- the noisy threshold check of
  Confident-GNMax (Section 4.1 / Algorithm 1), whose only output is one bit.
* :func:`eps_from_rdp` -- the classic RDP -> (eps, delta) conversion (Mironov
  2017, Proposition 3), with the paper code's conventions.

Neighbouring relation: replace-one (a single teacher/source changes its vote).
A one-hot vote change moves the histogram by sqrt(2) in L2, so GNMax with noise
N(0, sigma^2) per class is (alpha, alpha/sigma^2)-RDP; the threshold step sees
only max(counts), which moves by at most 1, hence alpha/(2 sigma1^2).

All probabilities are handled as natural logarithms so that probabilities far
below the float64 range (log q ~ -1e5 is common for high-consensus histograms)
stay exact enough to use.

The Gaussian tails are scipy's (``norm.logsf``, accurate far out in the tail):
scipy comes with the experiments extra, not the light install, since nothing a
source or an auditor runs imports this module (only ``experiments.run`` does).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from ..errors import ParameterError

__all__ = [
    "logq_gaussian",
    "rdp_gnmax",
    "rdp_gnmax_data_independent",
    "logpr_answered",
    "rdp_threshold",
    "rdp_threshold_data_independent",
    "eps_from_rdp",
]

_LOG_HALF = -math.log(2.0)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _check_sigma(value, name: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a real number > 0, got {value!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise ParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return s


def _check_orders(orders) -> np.ndarray:
    try:
        o = np.atleast_1d(np.asarray(orders, dtype=float))
    except (TypeError, ValueError):
        raise ParameterError(f"orders must be real numbers > 1, got {orders!r}") from None
    if o.ndim != 1 or o.size == 0:
        raise ParameterError("orders must be a non-empty 1-D sequence of Renyi orders")
    if np.any(np.isnan(o)) or np.any(o <= 1):
        raise ParameterError(f"orders must all be > 1 (RDP is not defined at order <= 1), got {orders!r}")
    return o


def _check_counts(counts) -> np.ndarray:
    try:
        c = np.asarray(counts, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"counts must be a 1-D array of vote counts, got {counts!r}") from None
    if c.ndim != 1 or c.size == 0:
        raise ParameterError("counts must be a non-empty 1-D array of vote counts")
    if not np.all(np.isfinite(c)):
        raise ParameterError("counts must be finite")
    if np.any(c < 0):
        raise ParameterError("counts must be >= 0 (a vote histogram)")
    return c


def _check_logprob(value, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a log-probability (<= 0), got {value!r}") from None
    if math.isnan(x) or x > 0:
        raise ParameterError(f"{name} must be a log-probability, i.e. <= 0, got {value!r}")
    return x


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0, accurate at both ends.

    Maechler's split: for x close to 0, 1 - exp(x) = -expm1(x) loses nothing;
    for x well below 0, exp(x) is small and log1p(-exp(x)) loses nothing.
    """
    if x > 0:
        raise ParameterError(f"log1mexp needs x <= 0, got {x}")
    if x == 0:
        return -math.inf
    if x > _LOG_HALF:
        return math.log(-math.expm1(x))
    return math.log1p(-math.exp(x))


# --------------------------------------------------------------------------
# GNMax
# --------------------------------------------------------------------------

def logq_gaussian(counts, sigma) -> float:
    """Upper bound on log Pr[GNMax output != plurality class] (Proposition 7).

    GNMax adds independent N(0, sigma^2) to each count. Class j beats the
    plurality class i* only if the difference of the two noises, distributed
    N(0, 2 sigma^2), exceeds the gap counts[i*] - counts[j]; a union bound over
    j != i* gives q <= sum_j Pr[N(0, 2 sigma^2) >= gap_j]. Since i* itself is the
    most likely output, q <= 1 - 1/n as well, and the smaller bound is returned.

    ANALYSIS ONLY: the result depends on every source's votes (see module doc).
    """
    c = _check_counts(counts)
    s = _check_sigma(sigma, "sigma")
    n = c.size
    top = int(np.argmax(c))  # first maximum, as with any deterministic tie-break
    gaps = c[top] - np.delete(c, top)
    if gaps.size == 0:
        return -math.inf  # a single class: the output is fixed
    # log of each tail probability, kept in log space so tiny tails survive
    log_tails = norm.logsf(gaps, scale=math.sqrt(2.0) * s)
    union = float(logsumexp(log_tails))
    return min(union, math.log1p(-1.0 / n))


def rdp_gnmax_data_independent(sigma, orders) -> np.ndarray:
    """Data-independent RDP of GNMax: alpha / sigma^2 at each order alpha.

    The Gaussian mechanism with L2 sensitivity Delta is (alpha,
    alpha Delta^2 / (2 sigma^2))-RDP; under replace-one a vote histogram moves
    by Delta = sqrt(2), hence alpha / sigma^2 (the paper's Proposition 8).
    """
    s = _check_sigma(sigma, "sigma")
    o = _check_orders(orders)
    return o / (s * s)


def rdp_gnmax(logq, sigma, orders) -> np.ndarray:
    """Data-dependent RDP of GNMax given an upper bound ``logq`` on log q.

    Theorem 6: if q = Pr[M(D) != o*] is small enough and M is (mu_i, eps_i)-RDP
    at two higher orders mu_1, mu_2, then at orders lambda < mu_1

        RDP(lambda) <= log((1 - q) A^(lambda-1) + q B^(lambda-1)) / (lambda - 1)

    with  A = (1 - q) / (1 - (q e^eps_2)^((mu_2 - 1)/mu_2))
    and   B = e^eps_1 / q^(1/(mu_1 - 1)).

    Proposition 10 picks the higher orders for the Gaussian mechanism:
    mu_2 = sigma sqrt(log(1/q)), mu_1 = mu_2 + 1, eps_i = mu_i / sigma^2, and the
    bound is valid only where

        q <= exp((mu_2 - 1) eps_2) / (mu_1/(mu_1 - 1) * mu_2/(mu_2 - 1))^mu_2
        and q < exp(-eps_2)     (so that A is finite and positive),

    and only at orders lambda < mu_1 with mu_2 > 1. Everywhere else, and
    wherever it is larger, the data-independent value alpha / sigma^2 is used.
    ``logq = -inf`` (the output is certain) gives 0 at every order.

    ANALYSIS ONLY: the result depends on every source's votes, so it is not a
    valid filter cost and publishing it leaks (see module doc).
    """
    lq = _check_logprob(logq, "logq")
    s = _check_sigma(sigma, "sigma")
    o = _check_orders(orders)

    if lq == -math.inf:
        return np.zeros_like(o)

    var = s * s
    result = o / var  # the data-independent cap

    # Proposition 10: the two higher orders.
    mu2 = math.sqrt(var * -lq)
    mu1 = mu2 + 1.0
    eps1 = mu1 / var
    eps2 = mu2 / var

    use = (o < mu1) & (mu2 > 1.0)
    if not np.any(use):
        return result

    # Theorem 6's condition on q, in logs:
    #   log q <= (mu2 - 1) eps2 - mu2 [log(mu1/(mu1-1)) + log(mu2/(mu2-1))]
    # (log(mu/(mu-1)) written as log1p(1/(mu-1))), and q e^eps2 < 1.
    q_small_enough = lq <= (mu2 - 1.0) * eps2 - mu2 * (
        math.log1p(1.0 / (mu1 - 1.0)) + math.log1p(1.0 / (mu2 - 1.0))
    )
    a_positive = -lq > eps2
    if not (q_small_enough and a_positive):
        return result

    lam = o[use]
    log_1mq = _log1mexp(lq)  # log(1 - q)
    log_a = log_1mq - _log1mexp((lq + eps2) * (1.0 - 1.0 / mu2))
    log_b = eps1 - lq / (mu1 - 1.0)
    # log((1-q) A^(lam-1) + q B^(lam-1)), summed in log space: the two terms can
    # be astronomically small or large (e.g. log q = -1e4).
    log_sum = np.logaddexp(log_1mq + (lam - 1.0) * log_a, lq + (lam - 1.0) * log_b)
    result[use] = np.minimum(result[use], log_sum / (lam - 1.0))
    if np.any(result < 0):  # cannot happen when the conditions above hold
        raise ArithmeticError("negative data-dependent RDP bound; this is a bug")
    return result


# --------------------------------------------------------------------------
# Confident-GNMax threshold check (Section 4.1, Algorithm 1)
# --------------------------------------------------------------------------

def logpr_answered(threshold, sigma1, counts) -> float:
    """log Pr[max(counts) + N(0, sigma1^2) >= threshold]: the probability that
    Confident-GNMax's noisy threshold check passes and the query is answered.

    (The paper code rounds max(counts) to an integer first, for its interactive
    variant with fractional votes; the two agree on integer histograms.)

    ANALYSIS ONLY: depends on every source's votes (see module doc).
    """
    c = _check_counts(counts)
    s = _check_sigma(sigma1, "sigma1")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ParameterError(f"threshold must be a real number, got {threshold!r}") from None
    if not math.isfinite(t):
        raise ParameterError(f"threshold must be finite, got {threshold!r}")
    return float(norm.logsf(t - float(np.max(c)), scale=s))


def rdp_threshold_data_independent(sigma1, orders) -> np.ndarray:
    """Data-independent RDP of the threshold check: alpha / (2 sigma1^2).

    Its input, max(counts), has sensitivity 1 (not sqrt 2) under replace-one.
    """
    s = _check_sigma(sigma1, "sigma1")
    o = _check_orders(orders)
    return o / (2.0 * s * s)


def rdp_threshold(logpr_answered, sigma1, orders) -> np.ndarray:
    """Data-dependent RDP of the threshold check of Confident-GNMax.

    The check releases one bit; the less likely of its two outcomes plays the
    role of the non-plurality event, so log q = min(log p, log(1 - p)). Theorem
    6 / Proposition 10 then apply as for GNMax, with the noise rescaled by
    sqrt(2) because the check's input has sensitivity 1 instead of sqrt(2).

    ANALYSIS ONLY: depends on every source's votes (see module doc).
    """
    lp = _check_logprob(logpr_answered, "logpr_answered")
    s = _check_sigma(sigma1, "sigma1")
    _check_orders(orders)
    # 1 - p can be far below float64 resolution (log p = -1e-127, say); the
    # careful log1mexp keeps log(1 - p) = log(-expm1(log p)) exact there.
    lq = min(lp, _log1mexp(lp))
    dep = rdp_gnmax(lq, math.sqrt(2.0) * s, orders)
    # (sqrt(2) sigma1)^2 and 2 sigma1^2 can differ in the last bit; cap by the
    # data-independent value as computed here so the cap holds exactly.
    return np.minimum(dep, rdp_threshold_data_independent(s, orders))


# --------------------------------------------------------------------------
# RDP -> (eps, delta)
# --------------------------------------------------------------------------

def eps_from_rdp(orders: Sequence[float], rdp: Sequence[float], delta) -> tuple[float, float]:
    """(eps, order) by the classic conversion (Mironov 2017, Proposition 3):

        eps = min over alpha of  rdp(alpha) + log(1/delta) / (alpha - 1).

    Conventions of the paper code's ``compute_eps_from_delta``: the first order
    attaining the minimum is returned, together with the minimum itself.
    """
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise ParameterError(f"delta must be in (0, 1), got {delta!r}") from None
    if not (0.0 < d < 1.0):
        raise ParameterError(f"delta must be in (0, 1), got {delta!r}")
    o = _check_orders(orders)
    try:
        r = np.atleast_1d(np.asarray(rdp, dtype=float))
    except (TypeError, ValueError):
        raise ParameterError(f"rdp must be a sequence of numbers, got {rdp!r}") from None
    if r.shape != o.shape:
        raise ParameterError(
            f"orders and rdp must have the same length, got {o.size} and {r.size}"
        )
    if np.any(np.isnan(r)) or np.any(r < 0):
        raise ParameterError("rdp values must be >= 0 (and not NaN)")
    eps = r - math.log(d) / (o - 1.0)
    i = int(np.argmin(eps))
    return float(eps[i]), float(o[i])
