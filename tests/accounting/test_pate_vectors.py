"""dvsecure.accounting.pate against the PATE 2018 reference vectors.

The vectors (../shared/testvectors/pate/pate2018_reference.json) were computed
with the unmodified reference implementation of Papernot et al. 2018
(tensorflow/privacy research/pate_2018/core.py). The data-dependent values are
ANALYSIS ONLY in dvsecure: they are never filter costs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dvsecure.accounting import pate
from dvsecure.errors import ParameterError

VECTORS = Path(__file__).resolve().parents[2].parent / "shared/testvectors/pate/pate2018_reference.json"

RTOL = 1e-7
# Used only where the reference value is exactly zero (e.g. RDP of a mechanism
# whose output is certain to float64 precision, or log Pr = -0.0).
ZERO_ATOL = 1e-300


def _load():
    # Deliberately no skip: a missing vector file must fail collection loudly.
    if not VECTORS.is_file():
        raise FileNotFoundError(f"PATE reference vectors not found at {VECTORS}")
    with VECTORS.open() as f:
        return json.load(f)


DATA = _load()
ORDERS = np.asarray(DATA["orders"], dtype=float)


def _ids(prefix, cases):
    return [f"{prefix}{i}" for i in range(len(cases))]


def assert_close(actual, expected, what):
    """Relative agreement to RTOL, elementwise; an absolute floor only for exact zeros."""
    a = np.atleast_1d(np.asarray(actual, dtype=float))
    e = np.atleast_1d(np.asarray(expected, dtype=float))
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    bad = []
    for k, (x, y) in enumerate(zip(a, e)):
        if y == 0.0:
            ok = abs(x) <= ZERO_ATOL
        elif math.isinf(y):
            ok = x == y
        else:
            ok = math.isfinite(x) and abs(x - y) <= RTOL * abs(y)
        if not ok:
            bad.append((k, x, y))
    assert not bad, f"{what}: mismatches (index, got, expected): {bad}"


def test_vector_file_shape():
    assert len(DATA["gnmax"]) > 0
    assert len(DATA["threshold"]) > 0
    assert len(DATA["rdp_to_dp_classic"]) > 0
    assert np.all(ORDERS > 1)


# ---------------------------------------------------------------- GNMax


@pytest.mark.parametrize("case", DATA["gnmax"], ids=_ids("gnmax", DATA["gnmax"]))
class TestGNMax:
    def test_logq(self, case):
        got = pate.logq_gaussian(np.asarray(case["counts"]), case["sigma"])
        assert_close(got, case["logq"], f"logq counts={case['counts']} sigma={case['sigma']}")

    def test_rdp_data_dependent_from_reference_logq(self, case):
        got = pate.rdp_gnmax(case["logq"], case["sigma"], ORDERS)
        assert isinstance(got, np.ndarray)
        assert_close(got, case["rdp_data_dependent"], f"rdp_gnmax logq={case['logq']} sigma={case['sigma']}")

    def test_rdp_data_dependent_end_to_end(self, case):
        logq = pate.logq_gaussian(case["counts"], case["sigma"])
        got = pate.rdp_gnmax(logq, case["sigma"], ORDERS)
        assert_close(got, case["rdp_data_dependent"], f"counts={case['counts']} sigma={case['sigma']}")

    def test_rdp_data_independent(self, case):
        got = pate.rdp_gnmax_data_independent(case["sigma"], ORDERS)
        assert_close(got, case["rdp_data_independent"], f"data-independent sigma={case['sigma']}")

    def test_dependent_never_exceeds_independent(self, case):
        dep = pate.rdp_gnmax(pate.logq_gaussian(case["counts"], case["sigma"]), case["sigma"], ORDERS)
        ind = pate.rdp_gnmax_data_independent(case["sigma"], ORDERS)
        assert np.all(dep >= 0)
        assert np.all(dep <= ind)
        assert np.all(np.asarray(case["rdp_data_dependent"]) <= np.asarray(case["rdp_data_independent"]))


# ---------------------------------------------------------------- threshold


@pytest.mark.parametrize("case", DATA["threshold"], ids=_ids("threshold", DATA["threshold"]))
class TestThreshold:
    def test_logpr_answered(self, case):
        got = pate.logpr_answered(case["threshold"], case["sigma1"], case["counts"])
        assert_close(got, case["logpr_answered"], f"logpr t={case['threshold']} sigma1={case['sigma1']}")

    def test_rdp_threshold_from_reference_logpr(self, case):
        got = pate.rdp_threshold(case["logpr_answered"], case["sigma1"], ORDERS)
        assert_close(got, case["rdp_threshold_data_dependent"], f"rdp_threshold sigma1={case['sigma1']}")

    def test_rdp_threshold_end_to_end(self, case):
        lp = pate.logpr_answered(case["threshold"], case["sigma1"], case["counts"])
        got = pate.rdp_threshold(lp, case["sigma1"], ORDERS)
        assert_close(got, case["rdp_threshold_data_dependent"], f"counts={case['counts']} t={case['threshold']}")

    def test_rdp_threshold_data_independent(self, case):
        got = pate.rdp_threshold_data_independent(case["sigma1"], ORDERS)
        assert_close(got, case["rdp_threshold_data_independent"], f"data-independent sigma1={case['sigma1']}")

    def test_dependent_never_exceeds_independent(self, case):
        lp = pate.logpr_answered(case["threshold"], case["sigma1"], case["counts"])
        dep = pate.rdp_threshold(lp, case["sigma1"], ORDERS)
        ind = pate.rdp_threshold_data_independent(case["sigma1"], ORDERS)
        assert np.all(dep >= 0)
        assert np.all(dep <= ind)
        assert np.all(
            np.asarray(case["rdp_threshold_data_dependent"]) <= np.asarray(case["rdp_threshold_data_independent"])
        )


# ---------------------------------------------------------------- RDP -> DP


@pytest.mark.parametrize("case", DATA["rdp_to_dp_classic"], ids=_ids("classic", DATA["rdp_to_dp_classic"]))
def test_eps_from_rdp_classic(case):
    eps, order = pate.eps_from_rdp(ORDERS, case["rdp"], case["delta"])
    assert_close(eps, case["classic_eps"], f"eps delta={case['delta']}")
    assert order == case["classic_order"]


@pytest.mark.parametrize("case", DATA["rdp_to_dp_classic"], ids=_ids("classic", DATA["rdp_to_dp_classic"]))
def test_eps_from_rdp_matches_library_classic(case):
    # dvsecure's own classic conversion must agree with the local copy.
    from dvsecure.accounting import eps_from_rdp_classic

    assert pate.eps_from_rdp(ORDERS, case["rdp"], case["delta"]) == pytest.approx(
        eps_from_rdp_classic(ORDERS, case["rdp"], case["delta"]), rel=1e-12
    )


# ---------------------------------------------------------------- edge cases


def test_logq_minus_inf_gives_zero():
    assert np.array_equal(pate.rdp_gnmax(-math.inf, 1.0, ORDERS), np.zeros_like(ORDERS))
    assert np.array_equal(pate.rdp_threshold(0.0, 1.0, ORDERS), np.zeros_like(ORDERS))
    assert np.array_equal(pate.rdp_threshold(-math.inf, 1.0, ORDERS), np.zeros_like(ORDERS))


def test_single_class_is_certain():
    assert pate.logq_gaussian([7], 1.0) == -math.inf


def test_logq_capped_at_log_1_minus_1_over_n():
    # a uniform histogram: the union bound exceeds 1, the cap applies
    n = 6
    assert pate.logq_gaussian([3] * n, 10.0) == pytest.approx(math.log(1 - 1 / n), rel=1e-15)


def test_large_q_falls_back_to_data_independent():
    # q too large for Theorem 6's condition: the data-independent value is returned
    assert np.array_equal(pate.rdp_gnmax(math.log(0.5), 2.0, ORDERS), ORDERS / 4.0)


def test_scalar_order_accepted():
    out = pate.rdp_gnmax(-50.0, 2.0, 3.0)
    assert isinstance(out, np.ndarray) and out.shape == (1,)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("sigma", [0, -1.0, math.nan, math.inf])
def test_bad_sigma(sigma):
    with pytest.raises(ParameterError, match="sigma"):
        pate.logq_gaussian([3, 1], sigma)
    with pytest.raises(ParameterError, match="sigma"):
        pate.rdp_gnmax(-3.0, sigma, ORDERS)
    with pytest.raises(ParameterError, match="sigma"):
        pate.rdp_gnmax_data_independent(sigma, ORDERS)


@pytest.mark.parametrize("sigma1", [0, -2.0, math.nan])
def test_bad_sigma1(sigma1):
    with pytest.raises(ParameterError, match="sigma1"):
        pate.logpr_answered(5.0, sigma1, [3, 1])
    with pytest.raises(ParameterError, match="sigma1"):
        pate.rdp_threshold(-1.0, sigma1, ORDERS)
    with pytest.raises(ParameterError, match="sigma1"):
        pate.rdp_threshold_data_independent(sigma1, ORDERS)


@pytest.mark.parametrize("logq", [0.1, 5.0, math.nan, math.inf])
def test_bad_logq(logq):
    with pytest.raises(ParameterError, match="logq"):
        pate.rdp_gnmax(logq, 1.0, ORDERS)
    with pytest.raises(ParameterError, match="logpr_answered"):
        pate.rdp_threshold(logq, 1.0, ORDERS)


@pytest.mark.parametrize("orders", [[1.0, 2.0], [0.5], [2.0, 1.0, 3.0], [], [math.nan]])
def test_bad_orders(orders):
    with pytest.raises(ParameterError, match="orders"):
        pate.rdp_gnmax(-3.0, 1.0, orders)
    with pytest.raises(ParameterError, match="orders"):
        pate.rdp_gnmax_data_independent(1.0, orders)
    with pytest.raises(ParameterError, match="orders"):
        pate.rdp_threshold(-3.0, 1.0, orders)
    with pytest.raises(ParameterError, match="orders"):
        pate.rdp_threshold_data_independent(1.0, orders)
    if orders:
        with pytest.raises(ParameterError, match="orders"):
            pate.eps_from_rdp(orders, [0.1] * len(orders), 1e-5)


@pytest.mark.parametrize("counts", [[], [3, -1, 2], [[1, 2], [3, 4]], [1, math.nan], [math.inf, 0]])
def test_bad_counts(counts):
    with pytest.raises(ParameterError, match="counts"):
        pate.logq_gaussian(counts, 1.0)
    with pytest.raises(ParameterError, match="counts"):
        pate.logpr_answered(5.0, 1.0, counts)


@pytest.mark.parametrize("delta", [0, 1, -1e-5, 1.5, math.nan])
def test_bad_delta(delta):
    with pytest.raises(ParameterError, match="delta"):
        pate.eps_from_rdp(ORDERS, ORDERS / 10, delta)


def test_eps_from_rdp_length_mismatch():
    with pytest.raises(ParameterError, match="same length"):
        pate.eps_from_rdp([2.0, 3.0], [0.1], 1e-5)


def test_bad_threshold():
    with pytest.raises(ParameterError, match="threshold"):
        pate.logpr_answered(math.nan, 1.0, [3, 1])


def test_not_exported_as_a_charge():
    # The data-dependent bounds are analysis-only: not part of the accounting
    # package's public charge API that the budget filter draws on.
    import dvsecure.accounting as acc

    for name in pate.__all__:
        assert name not in acc.__all__
