"""Charges of slice-unit sources (DESIGN §4): checked against a direct numerical
Rényi divergence of the noisy tallies of neighbouring histograms, and against
Google's dp_accounting Gaussian RDP at the reduced sensitivity."""
from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting
import numpy as np
import pytest
from scipy.special import logsumexp

from dvsecure.accounting.charges import CALIBRATION, GNMAX, THRESHOLD, Charge, query_charges, total_rho
from dvsecure.accounting.conversions import DEFAULT_ORDERS, eps_from_rdp_tight, zcdp_eps_tight
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.noise.cks import discrete_gaussian_logpmf
from dvsecure.policy import Budget, MechanismPolicy, SourcePolicy


def _renyi_shifts(alpha: float, sigma: float, shifts) -> float:
    """D_alpha(N_Z(mu, s^2 I) || N_Z(nu, s^2 I)) for independent integer coordinates
    whose means differ by `shifts`, each coordinate summed directly over a window
    that holds all of its mass (coordinates that do not move contribute 0)."""
    total = 0.0
    w = int(math.ceil(40 * sigma)) + 3
    for d in shifts:
        if d == 0:
            continue
        c = alpha * d                    # the summand is a bump centred at alpha*d
        x = np.arange(int(math.floor(min(0, d, c))) - w, int(math.ceil(max(0, d, c))) + w + 1)
        lp = discrete_gaussian_logpmf(x - d, sigma)
        lq = discrete_gaussian_logpmf(x, sigma)
        total += float(logsumexp(alpha * lp + (1 - alpha) * lq)) / (alpha - 1)
    return total


def _tally(histogram, per_slice_weight: int) -> np.ndarray:
    """The exact tally contribution of one slice-unit source on the integer grid:
    each slice vote weighted gamma/m (here an integer number of grid units)."""
    return per_slice_weight * np.asarray(histogram, dtype=np.int64)


@pytest.mark.parametrize("m", [3, 10, 64])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("sigma_units", [2.0, 3.5])
def test_gnmax_and_threshold_charges_bound_the_exact_divergence_of_one_slice(m, k, sigma_units):
    """One slice of an m-slice source changes its vote: the source's tally moves by
    gamma/m in two classes. With gamma = m*k*2**-16 and sigma = sigma_units*2**-16,
    on the grid of 2**-16 weight units the shift is k and the noise sigma_units.
    Charge(GNMAX, ..., slices=m) and Charge(THRESHOLD, ...) must bound the divergence
    at every order, with equality where alpha*k is an integer (CKS 2020, Prop. 5)."""
    gamma, sigma = m * k / SCALE, sigma_units / SCALE
    h = np.zeros(4, np.int64)
    h[0], h[2] = m - 1, 1
    h2 = h.copy()
    h2[0] -= 1
    h2[1] += 1                               # one slice moved from class 0 to class 1
    shifts = _tally(h2, k) - _tally(h, k)
    top = int(_tally(h2, k).max() - _tally(h, k).max())
    gnmax = Charge(GNMAX, sigma, gamma, True, m).rho
    threshold = Charge(THRESHOLD, sigma, gamma, True, m).rho
    for alpha in [1.5, 2.0, 3.0, 8.0]:
        d = _renyi_shifts(alpha, sigma_units, shifts)
        assert d <= alpha * float(gnmax) * (1 + 1e-9) + 1e-12
        dt = _renyi_shifts(alpha, sigma_units, [top])
        assert dt <= alpha * float(threshold) * (1 + 1e-9) + 1e-12
        if float(alpha * k).is_integer():
            assert math.isclose(d, alpha * float(gnmax), rel_tol=1e-9)
    # The whole source changing (every slice moves) is the source-level charge: m^2 times.
    whole = _tally(np.eye(4, dtype=np.int64)[1] * m, k) - _tally(np.eye(4, dtype=np.int64)[0] * m, k)
    assert math.isclose(_renyi_shifts(2.0, sigma_units, whole), 2 * float(Charge(GNMAX, sigma, gamma).rho),
                        rel_tol=1e-9)
    assert Charge(GNMAX, sigma, gamma, True, m).influence_rho == Charge(GNMAX, sigma, gamma).rho


def test_slice_charges_are_source_charges_over_m_squared():
    mech = MechanismPolicy("confident_gnmax", sigma2=0.1, sigma1=0.4, threshold=0.5)
    for m in [2, 7, 40, 100]:
        gamma = m * 300 / SCALE
        for answered in (True, False):
            slice_level = total_rho(query_charges(mech, gamma, answered, m))
            source_level = total_rho(query_charges(mech, gamma, answered))
            assert slice_level * m * m == source_level
    assert Charge(CALIBRATION, 0.5, 1.0, True, 10).rho == Fraction(1, 2 * 100) / Fraction(0.5) ** 2
    assert Charge(GNMAX, 0.5, 0.5, True, 4).to_dict()["slices"] == 4
    assert "slices" not in Charge(GNMAX, 0.5, 0.5).to_dict()          # old records read the same
    assert Charge.from_dict(Charge(GNMAX, 0.5, 0.5, True, 4).to_dict()) == Charge(GNMAX, 0.5, 0.5, True, 4)


@pytest.mark.parametrize("m,queries", [(16, 200), (100, 300), (7, 50)])
def test_gaussian_rdp_at_reduced_sensitivity_matches_dp_accounting(m, queries):
    """dp_accounting's Gaussian RDP, noise multiplier sigma / (L2 sensitivity), with the
    sensitivity of one slice (sqrt(2)*gamma/m for GNMax, gamma/m for the threshold)."""
    sigma1, sigma2 = 0.4, 0.1
    gamma = (int(0.6 * SCALE) // m) * m / SCALE
    ours = total_rho([Charge(THRESHOLD, sigma1, gamma, True, m), Charge(GNMAX, sigma2, gamma, True, m)] * queries)
    acc = dp_accounting.rdp.RdpAccountant(list(DEFAULT_ORDERS))
    acc.compose(dp_accounting.GaussianDpEvent(sigma1 / (gamma / m)), queries)
    acc.compose(dp_accounting.GaussianDpEvent(sigma2 / (math.sqrt(2) * gamma / m)), queries)
    for order, rdp in zip(acc.orders, acc._rdp):
        assert math.isclose(rdp, order * float(ours), rel_tol=1e-9)
    eps_ref = acc.get_epsilon(1e-5)
    eps_ours, _ = eps_from_rdp_tight(list(DEFAULT_ORDERS), [a * float(ours) for a in DEFAULT_ORDERS], 1e-5)
    assert math.isclose(eps_ours, eps_ref, rel_tol=1e-9)
    assert zcdp_eps_tight(ours, 1e-5) <= eps_ref * (1 + 1e-9)      # the continuous optimum over orders


def test_policy_units_grid_and_caps():
    src = SourcePolicy("a", 0.1, 0.6, Budget("eps_delta", 8.0, delta=1e-5), unit="slice", slices=100,
                       influence_budget=Budget("rho", 2000.0))
    assert src.votes == "histogram" and src.vote_format.slices == 100
    assert (src.grid_min * SCALE) % 100 == 0 and (src.grid_max * SCALE) % 100 == 0
    assert src.grid_min >= 0.1 and src.grid_max <= 0.6 and src.on_grid(src.grid_max)
    assert not src.on_grid(src.grid_max - 1 / SCALE)
    assert src.cap_rho == min(src.budget_rho, Fraction(2000) / 100**2)
    assert src.influence(Fraction(1, 3)) == Fraction(10000, 3)
    assert SourcePolicy("b", 0.1, 0.6, Budget("rho", 1.0)).to_dict() == {
        "id": "b", "gamma_min": 0.1, "gamma_max": 0.6, "budget": {"rho": 1.0}, "delta": 1e-5,
        "on_exhaustion": "exclude", "votes": "one-hot"}        # a source-unit policy digests as before
