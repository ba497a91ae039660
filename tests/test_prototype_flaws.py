"""DESIGN §8: the prototype's accounting flaws 1-5, and evidence that dvsecure
does not have them. Each scenario is built so that the prototype's behaviour
would visibly break the asserted property."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import dvsecure
from dvsecure.accounting.charges import CALIBRATION, GNMAX, THRESHOLD, Charge
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.calibration import PrivateCalibration, stored_weights
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import NoiseSource, make_noise
from dvsecure.policy import Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy

SCALE = 1 << 16
PKG = Path(dvsecure.__file__).resolve().parent


def grid(x: float) -> float:
    """Largest multiple of 2**-16 <= x."""
    return math.floor(Fraction(x) * SCALE) / SCALE


def rho_threshold(gamma, sigma1) -> Fraction:
    return Fraction(gamma) ** 2 / (2 * Fraction(sigma1) ** 2)


def rho_gnmax(gamma, sigma2) -> Fraction:
    return Fraction(gamma) ** 2 / Fraction(sigma2) ** 2


class RecordingNoise(NoiseSource):
    """Delegates to another noise source and records every (sigma, size) drawn."""

    def __init__(self, inner: NoiseSource):
        self.inner = inner
        self.mode = inner.mode
        self.draws: list[tuple[Fraction, int]] = []

    def sample(self, sigma, size):
        self.draws.append((Fraction(sigma), size))
        return self.inner.sample(sigma, size)


# ---------------------------------------------------------------------------
# Flaw 1: renormalisation after clamping pushed a weight out of its band
# ---------------------------------------------------------------------------
def test_flaw1_weights_never_renormalised_out_of_band(tmp_path):
    """The prototype renormalised after clamping: with others excluded, its top
    source reached 0.63 against a ceiling of 0.60. Here every weight used is the
    desired grid weight (or a shrunk, lower one, or 0), whoever else drops out."""
    mech = MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.2)
    policy = ConsortiumPolicy(sources=(
        SourcePolicy("gemini", 0.30, 0.60, Budget("rdp", 1000.0, order=2.0)),
        SourcePolicy("kimi", 0.02, 0.30, Budget("rdp", 0.6, order=2.0)),        # runs out within a few queries
        SourcePolicy("claude", 0.05, 0.30, Budget("rho", 100.0)),
        SourcePolicy("gpt", 0.05, 0.30, Budget("eps_delta", 40.0, delta=1e-5)),
    ), mechanism=mech)
    desired = {"gemini": grid(0.60), "kimi": 0.25, "claude": grid(0.10), "gpt": policy.source("gpt").grid_min}
    assert sum(desired.values()) <= 1.0  # the prototype's normalised starting point
    ledger = Ledger(tmp_path / "l.sqlite", policy)
    agg = Aggregator(policy, ledger, noise=make_noise("private"), weights=desired)
    would_exceed = 0
    rng = np.random.default_rng(1)
    for q in range(40):
        votes = {"gemini": 0, "kimi": int(rng.integers(3)),
                 "claude": None if q % 2 else 1,                       # absent every other query
                 "gpt": [0.5, 0.5, 0.0] if q % 3 == 0 else 2}          # invalid (not one-hot) every third
        r = agg.query(f"q{q}", votes, 3)
        used = {p.source_id: p.gamma for p in r.participants if p.gamma}
        for p in r.participants:
            src = policy.source(p.source_id)
            if p.gamma:
                assert src.gamma_min <= src.grid_min <= p.gamma <= src.grid_max <= src.gamma_max
                assert p.gamma == desired[p.source_id]        # nothing rescaled it
        g = r.participant("gemini")
        assert g.gamma == desired["gemini"] <= 0.60
        # Its charge is that of its own band-limited weight, not of a renormalised one.
        exp = rho_threshold(desired["gemini"], 1.0) + (rho_gnmax(desired["gemini"], 1.0) if r.answered else 0)
        assert g.rho == exp
        if used["gemini"] / sum(used.values()) > 0.60:
            would_exceed += 1
    # The scenario is one where renormalisation would have broken the ceiling.
    assert r.participant("kimi").status == "excluded:budget"
    assert would_exceed >= 10
    ledger.verify()
    ledger.close()


# ---------------------------------------------------------------------------
# Flaw 2: refused Confident-GNMax queries were called free
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("noise_mode", ["no_noise", "private"])
def test_flaw2_refused_queries_pay_the_threshold_check(tmp_path, noise_mode):
    sigma1, sigma2 = 2.0, 1.0
    mech = MechanismPolicy("confident_gnmax", sigma2, sigma1=sigma1, threshold=50.0)   # out of reach
    budget = Fraction(1, 2)
    policy = ConsortiumPolicy(sources=(
        SourcePolicy("a", 0.1, 0.5, Budget("rho", float(budget))),
        SourcePolicy("b", 0.1, 0.25, Budget("rho", 10.0)),
    ), mechanism=mech)
    ledger = Ledger(tmp_path / "l.sqlite", policy)
    agg = Aggregator(policy, ledger, noise=make_noise(noise_mode))
    ga = policy.source("a").grid_max
    th_a = rho_threshold(ga, sigma1)
    worst_a = th_a + rho_gnmax(ga, sigma2)
    # "a" participates while spent + worst case fits: that many refusals, then excluded.
    affordable = 0
    while (affordable + 1) * th_a + rho_gnmax(ga, sigma2) <= budget:
        affordable += 1
    assert affordable >= 2
    for q in range(affordable + 5):
        r = agg.query(f"q{q}", {"a": 0, "b": 0}, 2)
        assert not r.answered and r.label is None
        for p in r.participants:
            if p.status == "excluded:budget":
                assert p.rho == 0 and p.charges == ()
                continue
            th = rho_threshold(p.gamma, sigma1)
            assert th > 0
            assert p.rho == th                                  # not free
            assert [c.mechanism for c in p.charges if c.rho] == [THRESHOLD]
            assert all(c.rho == 0 and not c.answered for c in p.charges if c.mechanism == GNMAX)
        pa = r.participant("a")
        if q < affordable:
            assert pa.status == "active" and pa.spent == (q + 1) * th_a
        else:
            assert pa.status == "excluded:budget" and pa.spent == affordable * th_a
    assert ledger.spent()["a"] == affordable * th_a <= budget
    assert ledger.spent()["a"] + worst_a > budget
    # The ledger holds one threshold charge per refused query, with answered=True (it ran).
    recorded = ledger.charges("a")
    assert sum(1 for c in recorded if c.mechanism == THRESHOLD and c.answered) == affordable
    assert sum((c.rho for c in recorded), Fraction(0)) == ledger.spent()["a"]
    ledger.verify()
    ledger.close()


def test_flaw2_answered_queries_pay_both_steps(tmp_path):
    sigma1, sigma2 = 2.0, 3.0
    mech = MechanismPolicy("confident_gnmax", sigma2, sigma1=sigma1, threshold=0.1)
    policy = ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.5, Budget("rho", 5.0)),), mechanism=mech)
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        r = Aggregator(policy, ledger, noise=make_noise("no_noise")).query("q", [1], 2)
        assert r.answered and r.label == 1
        g = policy.source("a").grid_max
        assert r.participants[0].rho == rho_threshold(g, sigma1) + rho_gnmax(g, sigma2)


# ---------------------------------------------------------------------------
# Flaw 3: an exhausted source collapsed to gamma_min > 0 and kept paying
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("on_exhaustion", ["exclude", "shrink"])
def test_flaw3_exhausted_source_is_excluded_not_collapsed(tmp_path, on_exhaustion):
    """Kimi in the prototype: budget 5.0 (RDP at order 2 here), gamma_min 0.02;
    it collapsed to 0.02 and kept being charged. Here it is excluded (gamma 0,
    charge 0) once even its floor no longer fits, and its budget holds."""
    sigma2 = 0.25
    mech = MechanismPolicy("gnmax", sigma2)
    kimi = SourcePolicy("kimi", 0.02, 0.30, Budget("rdp", 5.0, order=2.0), on_exhaustion=on_exhaustion)
    policy = ConsortiumPolicy(sources=(kimi, SourcePolicy("other", 0.1, 0.4, Budget("rho", 1e6))), mechanism=mech)
    budget = Fraction(5) / 2
    assert kimi.budget_rho == budget
    n_queries = 300
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise("private"))
        spent, first_excluded, shrunk_seen = Fraction(0), None, False
        for q in range(n_queries):
            r = agg.query(f"q{q}", {"kimi": q % 3, "other": 0}, 3)
            p = r.participant("kimi")
            if p.gamma:
                assert first_excluded is None, "an excluded source's weight came back"
                assert kimi.gamma_min <= kimi.grid_min <= p.gamma <= kimi.grid_max
                assert spent + p.rho <= budget
                assert p.rho == rho_gnmax(p.gamma, sigma2)
                shrunk_seen |= p.status == "shrunk"
            else:
                assert p.status == "excluded:budget" and p.rho == 0 and p.charges == ()
                if first_excluded is None:
                    first_excluded = q
            spent += p.rho
            assert p.spent == spent == ledger.spent()["kimi"] <= budget
        assert first_excluded is not None and first_excluded < 50
        assert shrunk_seen == (on_exhaustion == "shrink")
        # The prototype's behaviour: charging the floor weight for every later query.
        floor_cost = rho_gnmax(kimi.grid_min, sigma2)
        assert spent + (n_queries - first_excluded) * floor_cost > budget
        if on_exhaustion == "shrink":
            # Excluded only once the remaining budget cannot pay one query at the floor.
            assert spent + floor_cost > budget
        else:
            # Excluded as soon as its agreed weight no longer fits.
            assert spent + rho_gnmax(kimi.grid_max, sigma2) > budget
        assert sum((c.rho for c in ledger.charges("kimi")), Fraction(0)) == spent
        ledger.verify()


def test_flaw3_shrink_never_goes_below_gamma_min(tmp_path):
    """With "shrink", weights fall to fit the remaining budget, but never below
    gamma_min: a remaining budget between 0 and the floor's cost means exclusion."""
    sigma2 = 1.0
    src = SourcePolicy("s", 0.2, 0.8, Budget("rho", 1.0), on_exhaustion="shrink")
    policy = ConsortiumPolicy(sources=(src,), mechanism=MechanismPolicy("gnmax", sigma2))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise("no_noise"))
        gammas = []
        for q in range(20):
            p = agg.query(f"q{q}", [0], 2).participants[0]
            gammas.append(p.gamma)
            if p.gamma:
                assert p.gamma >= src.gamma_min
        budget = Fraction(1)
        spent = ledger.spent()["s"]
        assert spent <= budget
        assert 0 < budget - spent < rho_gnmax(src.grid_min, sigma2)   # left over, too little for the floor
        assert gammas[0] == src.grid_max and any(0 < g < src.grid_max for g in gammas) and gammas[-1] == 0
        assert gammas == sorted(gammas, reverse=True)


# ---------------------------------------------------------------------------
# Flaw 4: calibration averaged 2,000 draws yet claimed the cost of one
# ---------------------------------------------------------------------------
def _calibration_data(rng, accuracies, t_count, num_classes):
    labels = rng.integers(num_classes, size=t_count)
    votes = []
    for t in range(t_count):
        row = []
        for acc in accuracies:
            if rng.random() < acc:
                row.append(int(labels[t]))
            else:
                row.append(int((labels[t] + 1 + rng.integers(num_classes - 1)) % num_classes))
        votes.append(row)
    return votes, [int(y) for y in labels]


def _policy_for_calibration(fraction=0.1):
    return ConsortiumPolicy(sources=(
        SourcePolicy("a", 0.1, 0.6, Budget("rho", 2.0)),
        SourcePolicy("b", 0.05, 0.3, Budget("eps_delta", 8.0, delta=1e-5), votes="simplex"),
        SourcePolicy("c", 0.0, 0.5, Budget("rdp", 10.0, order=4.0)),
    ), mechanism=MechanismPolicy("gnmax", 1.0), calibration=CalibrationPolicy(fraction))


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_flaw4_calibration_charges_what_it_releases(tmp_path, fraction):
    policy = _policy_for_calibration(fraction)
    rng = np.random.default_rng(7)
    t_count, num_classes = 64, 4
    votes, labels = _calibration_data(rng, [0.9, 0.5, 0.2], t_count, num_classes)
    noise = RecordingNoise(make_noise("private"))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        cal = PrivateCalibration(policy, ledger, noise)
        res = cal.run("calib", votes, labels, num_classes)
        assert res.skipped == {}
        # One release per source, one draw each: no averaging of repeated draws.
        assert len(noise.draws) == len(policy.sources)
        assert all(size == 1 for _, size in noise.draws)
        spent = ledger.spent()
        for (sigma_grid, _), src in zip(noise.draws, policy.sources):
            charge = res.charges[src.id]
            sigma_s = cal.sigma_for(src.id)
            assert charge.mechanism == CALIBRATION and charge.sigma == sigma_s
            # The released mean accuracy (sensitivity 1) carries noise of scale sigma_s:
            # the draw was on the sum, of sensitivity T * u * 2**16 grid units (u unit votes
            # per vote: a simplex vote's resolution m, else 1).
            assert sigma_grid == Fraction(sigma_s) * t_count * src.grid_step * SCALE
            assert sigma_grid / (t_count * src.grid_step * SCALE) == Fraction(charge.sigma)
            # ... and the ledger charges 1/(2 sigma_s^2) for it, counted in the spend.
            expected = 1 / (2 * Fraction(sigma_s) ** 2)
            assert charge.rho == expected
            assert spent[src.id] == expected
            assert ledger.charges(src.id) == [charge]
            # The charge is the agreed share of the budget (to float rounding of the target).
            share = expected / src.budget_rho
            assert share <= Fraction(fraction) * (1 + Fraction(1, 10 ** 12))
            assert share > Fraction(fraction) * Fraction(99, 100)
            # The learnt weight stays in its band.
            w = res.weights[src.id]
            assert src.grid_min <= w <= src.grid_max and (Fraction(w) * SCALE).denominator == 1
        ledger.verify()
        rec = list(ledger.records(kind="calibration"))
        assert len(rec) == 1 and rec[0].query_id == "calib"
        # The log entry states the charged sigma per source: the auditor recomputes from it.
        assert rec[0].sigma == [res.charges[s.id].sigma if s.id in res.charges else None
                                for s in policy.sources]
        assert stored_weights(ledger) == res.weights


def test_flaw4_released_statistic_is_the_mean_accuracy(tmp_path):
    """Without noise the released value is exactly the mean mass on the true label,
    a statistic in [0, 1] whose sensitivity to a source's votes is 1."""
    policy = _policy_for_calibration()
    rng = np.random.default_rng(3)
    t_count, num_classes = 40, 3
    votes, labels = _calibration_data(rng, [1.0, 0.6, 0.0], t_count, num_classes)
    votes[0][1] = [0.25, 0.25, 0.5]          # a simplex vote for the simplex source
    votes[1][0] = None                       # absent: counts 0
    votes[2][2] = 7                          # invalid: counts 0
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        res = PrivateCalibration(policy, ledger, make_noise("no_noise")).run("c", votes, labels, num_classes)
        for j, src in enumerate(policy.sources):
            mass = Fraction(0)
            for t in range(t_count):
                v = votes[t][j]
                if isinstance(v, int) and 0 <= v < num_classes:
                    mass += v == labels[t]
                elif isinstance(v, list):
                    mass += Fraction(v[labels[t]])
            assert res.noisy_accuracy[src.id] == float(mass / t_count)
        assert res.noisy_accuracy["c"] == 0.0 and res.weights["c"] == policy.source("c").grid_min
        assert res.weights["a"] > res.weights["c"] or policy.source("a").grid_max == res.weights["a"]


def test_flaw4_calibration_skips_a_source_that_cannot_afford_it(tmp_path):
    """A source whose remaining budget is below the calibration charge is not
    calibrated (no draw, no charge, nothing released) and keeps its default weight."""
    sigma2 = 1.0
    policy = ConsortiumPolicy(sources=(
        SourcePolicy("poor", 0.1, 0.5, Budget("rho", 1.0)),
        SourcePolicy("rich", 0.1, 0.5, Budget("rho", 1000.0)),
    ), mechanism=MechanismPolicy("gnmax", sigma2))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise("private"))
        for q in range(6):      # "poor" pays 0.25 per query at grid_max 0.5 -> exactly exhausted after 4
            agg.query(f"q{q}", [0, 1], 2)
        before = ledger.spent()
        assert before["poor"] == 4 * rho_gnmax(policy.source("poor").grid_max, sigma2)
        noise = RecordingNoise(make_noise("private"))
        cal = PrivateCalibration(policy, ledger, noise)
        assert before["poor"] + Charge(CALIBRATION, cal.sigma_for("poor"), 1.0).rho > Fraction(1)
        votes, labels = _calibration_data(np.random.default_rng(0), [0.8, 0.8], 20, 2)
        res = cal.run("calib", votes, labels, 2)
        assert res.skipped == {"poor": "budget"}
        assert "poor" not in res.charges and res.noisy_accuracy["poor"] is None
        assert res.weights["poor"] == policy.source("poor").grid_max
        assert len(noise.draws) == 1                               # only "rich" was measured
        after = ledger.spent()
        assert after["poor"] == before["poor"] <= Fraction(1)
        assert after["rich"] == before["rich"] + res.charges["rich"].rho
        ledger.verify()


def test_flaw4_calibration_spend_counts_against_later_queries(tmp_path):
    """The calibration charge is part of the same budget the query filter enforces."""
    sigma2 = 1.0
    src = SourcePolicy("a", 0.5, 0.5, Budget("rho", 1.0))      # every query costs exactly 1/4
    policy = ConsortiumPolicy(sources=(src,), mechanism=MechanismPolicy("gnmax", sigma2),
                              calibration=CalibrationPolicy(0.1))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        res = PrivateCalibration(policy, ledger, make_noise("private")).run("c", [[0]] * 10, [0] * 10, 2)
        cal_rho = res.charges["a"].rho
        assert ledger.spent()["a"] == cal_rho > 0
        agg = Aggregator(policy, ledger, noise=make_noise("private"), weights=res.weights)
        statuses = [agg.query(f"q{q}", [0], 2).participants[0].status for q in range(5)]
        # Without calibration 4 queries would fit (4 * 1/4 = 1); with it only 3.
        assert statuses == ["active"] * 3 + ["excluded:budget"] * 2
        assert ledger.spent()["a"] == cal_rho + 3 * Fraction(1, 4) <= 1


# ---------------------------------------------------------------------------
# Flaw 5: the data-dependent PATE bound used as an enforceable cost
# ---------------------------------------------------------------------------
def _run(tmp_path, name, policy, weights, stream, num_classes, noise_mode):
    with Ledger(tmp_path / f"{name}.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise(noise_mode), weights=weights)
        out = []
        for q, votes in enumerate(stream):
            r = agg.query(f"q{q}", votes, num_classes)
            out.append((r.answered, [(p.gamma, p.status, p.rho, p.spent) for p in r.participants]))
        ledger.verify()
        return out, ledger.spent()


@pytest.mark.parametrize("mechanism", [
    MechanismPolicy("gnmax", 2.0),
    MechanismPolicy("confident_gnmax", 2.0, sigma1=1.5, threshold=-20.0),  # always answered
    MechanismPolicy("confident_gnmax", 2.0, sigma1=1.5, threshold=100.0),  # always refused
])
@pytest.mark.parametrize("noise_mode", ["private", "no_noise"])
def test_flaw5_charges_ignore_consensus(tmp_path, mechanism, noise_mode):
    """Same weights and same answered bits => identical charges and spends, whether
    the sources agree unanimously or disagree maximally. The data-dependent bound
    would differ enormously between the two (checked below), so a filter that
    used it could not pass this test."""
    n, C = 5, 5
    policy = ConsortiumPolicy(sources=tuple(
        SourcePolicy(f"s{i}", 0.1, 0.4, Budget("rho", 0.3), on_exhaustion="shrink" if i % 2 else "exclude")
        for i in range(n)), mechanism=mechanism)
    weights = {f"s{i}": grid(0.15 + 0.05 * i) for i in range(n)}
    queries = 40
    high = [[0] * n for _ in range(queries)]                         # unanimous
    low = [[(i + q) % C for i in range(n)] for q in range(queries)]  # every class once
    a, spent_a = _run(tmp_path, "high", policy, weights, high, C, noise_mode)
    b, spent_b = _run(tmp_path, "low", policy, weights, low, C, noise_mode)
    assert [x[0] for x in a] == [x[0] for x in b]       # same answered bits (by construction)
    assert a == b
    assert spent_a == spent_b
    assert any(p[1] == "excluded:budget" for _, parts in a for p in parts)   # the filter did act

    # What a data-dependent accountant would have said (analysis only): very different.
    from dvsecure.accounting import pate
    orders = np.array([2.0, 4.0, 8.0])
    counts_high = np.array([n, 0, 0, 0, 0], dtype=float)
    counts_low = np.ones(C)
    rdp_high = pate.rdp_gnmax(pate.logq_gaussian(counts_high * 10, 2.0), 2.0, orders)
    rdp_low = pate.rdp_gnmax(pate.logq_gaussian(counts_low * 10, 2.0), 2.0, orders)
    assert np.all(rdp_high < rdp_low / 10)


def test_flaw5_filter_never_calls_the_data_dependent_accountant(tmp_path, monkeypatch):
    """Every function of dvsecure.accounting.pate is booby-trapped; queries,
    batches and calibration still run and charge the data-independent costs."""
    from dvsecure.accounting import pate

    def trap(*_a, **_k):
        raise AssertionError("the data-dependent PATE bound was used by the accounting path")

    trapped = [name for name, f in vars(pate).items()
               if callable(f) and getattr(f, "__module__", None) == pate.__name__]
    assert {"logq_gaussian", "rdp_gnmax", "rdp_threshold", "logpr_answered"} <= set(trapped)
    for name in trapped:
        monkeypatch.setattr(pate, name, trap)
    policy = ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.5, Budget("rho", 5.0)),
                                       SourcePolicy("b", 0.1, 0.5, Budget("rho", 5.0), votes="simplex")),
                              mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.5))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        PrivateCalibration(policy, ledger, make_noise("private")).run("c", [[0, 0]] * 5, [0] * 5, 2)
        agg = Aggregator(policy, ledger, noise=make_noise("private"))
        agg.query("q0", [0, [0.5, 0.5]], 2)
        agg.query_batch([("q1", [1, 1]), ("q2", {"a": 0})], 2)
        ledger.verify()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("module", ["mechanism/filter.py", "engine/aggregator.py", "engine/ledger.py", "accounting/charges.py"])
def test_flaw5_accounting_modules_do_not_import_pate(module):
    assert (PKG / "accounting" / "pate.py").is_file()
    imported = _imports(PKG / module)
    assert not any("pate" in name.split(".")[-1] for name in imported), imported


def test_flaw5_pate_not_loaded_by_the_query_path(tmp_path):
    """In a fresh interpreter, running queries never loads the PATE module."""
    script = f"""
import sys
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
p = ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.5, Budget("rho", 1.0)),),
                     mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.3))
with Ledger({str(tmp_path / 'l.sqlite')!r}, p) as led:
    agg = Aggregator(p, led, noise=make_noise("private"))
    for q in range(3):
        agg.query(f"q{{q}}", [0], 2)
    assert "dvsecure.mechanism.filter" in sys.modules
    print("pate loaded" if "dvsecure.accounting.pate" in sys.modules else "pate not loaded")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pate not loaded"
