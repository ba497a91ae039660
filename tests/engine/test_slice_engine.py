"""Slice-unit sources through the plaintext pipeline (issue 12): histogram votes,
the tally at gamma/m per slice, the filter on the slice grid with both budgets,
calibration at 1/m the sensitivity, and the policy file format."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from dvsecure.accounting.charges import CALIBRATION, Charge, total_rho
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.calibration import PrivateCalibration
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import PolicyError, VoteError
from dvsecure.mechanism.filter import BudgetFilter
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.mechanism.release import tally
from dvsecure.mechanism.votes import InvalidVote, VoteFormat, encode_vote, slice_histogram
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

MECH = MechanismPolicy("confident_gnmax", sigma2=0.1, sigma1=0.4, threshold=0.5)


def slice_source(sid="s", m=10, lo=0.1, hi=0.5, budget=Budget("rho", 1.0), **kw):
    return SourcePolicy(sid, lo, hi, budget, unit="slice", slices=m, **kw)


@pytest.mark.parametrize("vote,why", [
    ([5, 5, 1], "sum to 11, not 10"), ([11, -1, 0], "outside"), ([4.5, 5.5, 0], "not an integer"),
    (3, "a class index"), ([10, 0], "shape"), ([float("nan"), 10, 0], "non-finite"), (["10", 0, 0], "numeric"),
])
def test_a_histogram_is_valid_iff_its_counts_are_non_negative_integers_summing_to_m(vote, why):
    fmt = VoteFormat("histogram", 10)
    with pytest.raises(InvalidVote, match=why):
        encode_vote(vote, 3, fmt)
    assert encode_vote([7, 0, 3], 3, fmt).tolist() == [7 * SCALE, 0, 3 * SCALE]
    assert encode_vote(np.array([10.0, 0, 0]), 3, fmt).tolist() == [10 * SCALE, 0, 0]


def test_slice_histogram_from_slice_votes():
    assert slice_histogram([2, 0, 2, 2], 3) == [1, 0, 3]
    with pytest.raises(VoteError, match="not a class index"):
        slice_histogram([0, 3], 3)


def test_tally_weights_each_slice_gamma_over_m_exactly():
    m = 10
    gamma = np.array([[m * 1000, 2 * 65536 // 4]], np.int64)       # slice source, one-hot source
    votes = np.array([[encode_vote([7, 0, 3], 3, VoteFormat("histogram", m)), encode_vote(1, 3)]])
    v = tally(gamma, votes, [m, 1])[0]
    assert v.tolist() == [7 * 1000 * SCALE, 2 * 65536 // 4 * SCALE, 3 * 1000 * SCALE]
    with pytest.raises(ValueError, match="multiple"):
        tally(gamma + 1, votes, [m, 1])


def test_filter_shrinks_on_the_slice_grid_and_enforces_the_influence_budget():
    src = slice_source(m=7, on_exhaustion="shrink", budget=Budget("rho", 1.0), influence_budget=Budget("rho", 30.0))
    assert src.cap_rho == Fraction(30) / 49                   # the influence cap binds first
    flt = BudgetFilter(MECH)
    worst = flt.worst_case(src.grid_max, 7)
    assert worst * 49 == flt.worst_case(src.grid_max)        # one slice's sensitivity is 1/m
    d = flt.decide(src, src.grid_max, src.cap_rho - worst / 3, src.cap_rho)
    assert d.status == "shrunk" and src.on_grid(d.gamma) and d.gamma < src.grid_max
    assert flt.worst_case(d.gamma, 7) <= worst / 3 < flt.worst_case(d.gamma + 7 / SCALE, 7)
    with pytest.raises(Exception, match="multiples of 7"):
        flt.decide(src, src.grid_max - 1 / SCALE, Fraction(0), src.cap_rho)


def test_aggregator_charges_both_units_and_never_passes_either_budget(tmp_path):
    srcs = (slice_source("s", m=20, lo=0.3, hi=0.5, budget=Budget("rho", 0.5), influence_budget=Budget("rho", 150.0)),
            SourcePolicy("o", 0.3, 0.5, Budget("rho", 5.0)))
    policy = ConsortiumPolicy(sources=srcs, mechanism=MECH, name="units")
    rng = np.random.default_rng(0)
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise("seeded", 1))
        for q in range(400):
            agg.query(f"q{q}", {"s": slice_histogram(rng.integers(0, 3, 20).tolist(), 3), "o": 1}, 3)
        spent, influence = ledger.spent(), ledger.influence()
        charges = ledger.charges("s")
    s = policy.source("s")
    assert 0 < spent["s"] <= s.cap_rho and influence["s"] == spent["s"] * 400 <= Fraction(150)
    assert spent["s"] + BudgetFilter(MECH).worst_case(s.grid_min, 20) > s.cap_rho     # it ran out
    assert all(c.slices == 20 for c in charges) and total_rho(charges) == spent["s"]
    assert influence["o"] == spent["o"] <= Fraction(5)
    # Each charge is the source-level one over m^2.
    assert all(c.rho * 400 == c.influence_rho == dataclasses.replace(c, slices=1).rho for c in charges)


def test_calibration_of_a_slice_source_costs_one_m_squared_and_reads_its_slices(tmp_path):
    srcs = (slice_source("s", m=10, lo=0.1, hi=0.5, budget=Budget("rho", 1.0)),
            SourcePolicy("o", 0.1, 0.5, Budget("rho", 1.0)))
    policy = ConsortiumPolicy(sources=srcs, mechanism=MECH, name="cal")
    votes = [[[10, 0, 0], 0]] * 40 + [[[0, 10, 0], 1]] * 10       # label 0 every time
    with Ledger(tmp_path / "c.sqlite", policy) as ledger:
        cal = PrivateCalibration(policy, ledger, make_noise("no_noise"))
        sig = cal.sigma_for("s")
        assert Charge(CALIBRATION, sig, 1.0, True, 10).rho <= Fraction(1, 10)
        assert sig * 10 == pytest.approx(cal.sigma_for("o"), rel=1e-5)      # 1/m the noise for the same charge
        result = cal.run("cal", votes, [0] * 50, 3)
        assert result.noisy_accuracy == {"s": 0.8, "o": 0.8}
        assert policy.source("s").on_grid(result.weights["s"])
        assert ledger.spent()["s"] == result.charges["s"].rho == Charge(CALIBRATION, sig, 1.0, True, 10).rho


def test_policy_file_round_trip_and_errors():
    policy = ConsortiumPolicy(sources=(slice_source(influence_budget=Budget("eps_delta", 500.0, delta=1e-5)),),
                              mechanism=MECH)
    again = ConsortiumPolicy.from_toml(policy.to_toml())
    assert again == policy and again.digest() == policy.digest()
    base = {"id": "x", "gamma_min": 0.1, "gamma_max": 0.5, "budget": {"rho": 1.0}}
    for extra, why in [({"unit": "slice"}, "needs slices"), ({"slices": 4}, "needs unit = 'slice'"),
                       ({"unit": "slice", "slices": 1}, "2 <= m"), ({"unit": "cohort"}, "unit must be"),
                       ({"unit": "slice", "slices": 4, "votes": "one-hot"}, "histogram"),
                       ({"votes": "histogram"}, "need unit = 'slice'"),
                       ({"influence_budget": {"rho": 9.0}}, "influence_budget is for unit"),
                       ({"unit": "slice", "slices": 40000, "gamma_max": 0.5, "gamma_min": 0.5}, "holds no multiple")]:
        with pytest.raises(PolicyError, match=why):
            SourcePolicy.from_dict({**base, **extra})
    assert dataclasses.replace(policy.sources[0], unit="slice").slices == 10


def test_calibration_never_spends_more_than_its_share_over_all_runs(tmp_path):
    policy = ConsortiumPolicy(sources=(slice_source("s", m=40, budget=Budget("eps_delta", 4.0, delta=1e-5)),),
                              mechanism=MECH, name="share")
    votes = [[slice_histogram([0] * 30 + [1] * 10, 3)]] * 20
    with Ledger(tmp_path / "c.sqlite", policy) as ledger:
        cal = PrivateCalibration(policy, ledger, make_noise("no_noise"))
        runs = [cal.run(f"cal-{k}", votes, [0] * 20, 3) for k in range(5)]
        spent = ledger.spent()["s"]
    assert "s" not in runs[0].skipped and all(r.skipped == {"s": "budget"} for r in runs[1:])
    assert 0 < spent <= Fraction(1, 10) * policy.source("s").cap_rho
