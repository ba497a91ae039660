"""Property tests of the accounting guarantees (DESIGN §3, §4, §7).

Random consortium policies (1-6 sources, random bands, budgets in all three
forms, exclude/shrink, one-hot/simplex, GNMax and Confident-GNMax) meet random
vote streams (valid, invalid and absent votes, ties), submitted one by one or
in batches, with private noise and with no noise. After every query the test
replays an independent model of the budget filter and of the charges, in exact
rationals, and checks the library against it and against the invariants:

(a) no source's cumulative spend ever exceeds its budget (ledger.spent() and
    the sum of Charge.rho over its recorded charges, exactly);
(b) every weight used lies on the 2**-16 grid inside its band, or is exactly 0;
(c) budget-excluded, invalid and absent sources are charged 0;
(d) Confident-GNMax charges every participant the threshold check
    gamma^2/(2 sigma1^2) on every query, and the GNMax release
    gamma^2/sigma2^2 only on answered ones;
(e) batches obey the same rules (and, without noise, give exactly what the
    same queries give one by one), also when the backend needs the whole batch
    at once and the filter must reserve each earlier query's worst case;
(f) ledger.verify() passes and a reopened ledger holds identical state.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from dvsecure.accounting.charges import GNMAX, THRESHOLD
from dvsecure.backends import PlaintextBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import DuplicateQueryError, ParameterError, PolicyError
from dvsecure.log import entry
from dvsecure.noise import make_noise
from dvsecure.policy import DEFAULT_RESOLUTION, Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.wire.submission import Submission

SCALE = 1 << 16

ACTIVE, SHRUNK = "active", "shrunk"
EXCLUDED_BUDGET, INVALID, ABSENT = "excluded:budget", "excluded:invalid", "absent"

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                     HealthCheck.data_too_large])


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------
@st.composite
def budgets(draw):
    kind = draw(st.sampled_from(["rho", "eps_delta", "rdp"]))
    if kind == "rho":
        return Budget("rho", draw(st.floats(1e-3, 4.0)))
    if kind == "eps_delta":
        delta = draw(st.sampled_from([1e-3, 1e-5, 1e-9]) | st.floats(1e-10, 0.1))
        return Budget("eps_delta", draw(st.floats(0.05, 12.0)), delta=delta)
    return Budget("rdp", draw(st.floats(0.01, 40.0)), order=draw(st.floats(1.05, 64.0)))


grid_point = st.integers(0, SCALE).map(lambda k: k / SCALE)
band_end = st.floats(0.0, 1.0) | grid_point | st.sampled_from([0.0, 0.02, 0.1, 0.6, 1.0])


@st.composite
def sources(draw, index):
    a, b = sorted((draw(band_end), draw(band_end)))
    assume(b > 0)
    try:
        return SourcePolicy(f"s{index}", a, b, draw(budgets()),
                            on_exhaustion=draw(st.sampled_from(["exclude", "shrink"])),
                            votes=draw(st.sampled_from(["one-hot", "simplex"])))
    except PolicyError:   # a band too narrow to hold a multiple of 2**-16
        assume(False)


sigmas = st.floats(0.05, 4.0) | st.sampled_from([0.25, 0.5, 1.0, 2.0])


@st.composite
def mechanisms(draw):
    if draw(st.booleans()):
        return MechanismPolicy("gnmax", draw(sigmas))
    return MechanismPolicy("confident_gnmax", draw(sigmas), sigma1=draw(sigmas),
                           threshold=draw(st.floats(-0.5, 3.0) | st.sampled_from([0.0, 0.5, 1.0])))


@st.composite
def policies(draw):
    n = draw(st.integers(1, 6))
    return ConsortiumPolicy(sources=tuple(draw(sources(i)) for i in range(n)), mechanism=draw(mechanisms()))


@st.composite
def desired_weights(draw, policy):
    """None (defaults: grid_max) or a grid weight in each band for some sources."""
    if draw(st.booleans()):
        return None
    out = {}
    for s in policy.sources:
        if draw(st.booleans()):
            step = s.grid_step              # a simplex source's weights: multiples of m * 2**-16
            k = draw(st.integers(round(s.grid_min * SCALE) // step, round(s.grid_max * SCALE) // step)) * step
            out[s.id] = k / SCALE
    return out


def _one_hot_enc(c, num_classes):
    enc = [0] * num_classes
    enc[c] = SCALE
    return enc


@st.composite
def composition(draw, num_classes):
    """Integers >= 0 summing to SCALE: an exactly representable simplex vote."""
    cuts = sorted(draw(st.lists(st.integers(0, SCALE), min_size=num_classes - 1, max_size=num_classes - 1)))
    bounds = [0] + cuts + [SCALE]
    return [bounds[i + 1] - bounds[i] for i in range(num_classes)]


@st.composite
def vote_for(draw, kind, num_classes):
    """(vote object, expected category, exact encoding or None).

    category: "valid" | "invalid" | "absent"."""
    cat = draw(st.sampled_from(["valid", "valid", "valid", "tie", "invalid", "absent"]))
    C = num_classes
    if cat == "absent":
        return None, "absent", None
    if cat == "valid":
        c = draw(st.integers(0, C - 1))
        enc = _one_hot_enc(c, C)
        form = draw(st.sampled_from(["int", "np_int", "list", "int_list", "array"]
                                    + (["simplex", "simplex_float"] if kind == "simplex" else [])))
        if form == "int":
            return c, "valid", enc
        if form == "np_int":
            return np.int64(c), "valid", enc
        if form == "list":
            return [float(x) / SCALE for x in enc], "valid", enc
        if form == "int_list":
            return [x // SCALE for x in enc], "valid", enc
        if form == "array":
            return np.array(enc, dtype=float) / SCALE, "valid", enc
        if form == "simplex":
            enc = draw(composition(C))
            return [x / SCALE for x in enc], "valid", enc
        # An arbitrary (off-grid) probability vector: its grid encoding is the library's.
        w = draw(st.lists(st.integers(1, 1000), min_size=C, max_size=C))
        return [x / sum(w) for x in w], "valid", None
    if cat == "tie":
        if kind == "simplex":
            a, b = draw(st.lists(st.integers(0, C - 1), min_size=2, max_size=2, unique=True))
            enc = [0] * C
            enc[a] = enc[b] = SCALE // 2
            return [x / SCALE for x in enc], "valid", enc
        # One-hot ties come from several sources voting differently (or nobody voting);
        # here: a vote for class 0 or 1, the classes most likely to tie.
        c = draw(st.integers(0, min(1, C - 1)))
        return c, "valid", _one_hot_enc(c, C)
    # invalid
    choices = ["index_high", "index_neg", "bool", "float_index", "string", "zeros", "all_ones", "too_long",
               "too_short", "nan", "inf", "negative", "nested", "dict", "over_one"]
    choices += ["simplex_for_one_hot"] if kind == "one-hot" else ["bad_sum"]
    form = draw(st.sampled_from(choices))
    if form == "index_high":
        return C + draw(st.integers(0, 5)), "invalid", None
    if form == "index_neg":
        return -draw(st.integers(1, 5)), "invalid", None
    if form == "bool":
        return True, "invalid", None
    if form == "float_index":
        return 1.0, "invalid", None
    if form == "string":
        return "0", "invalid", None
    if form == "zeros":
        return [0.0] * C, "invalid", None
    if form == "all_ones":
        return [1.0] * C, "invalid", None
    if form == "too_long":
        return [1.0] + [0.0] * C, "invalid", None
    if form == "too_short":
        return [1.0] + [0.0] * (C - 2), "invalid", None
    if form == "nan":
        return [float("nan")] + [0.0] * (C - 1), "invalid", None
    if form == "inf":
        return [float("inf")] + [0.0] * (C - 1), "invalid", None
    if form == "negative":
        return [-0.25, 1.25] + [0.0] * (C - 2), "invalid", None
    if form == "nested":
        return [[1.0] + [0.0] * (C - 1)], "invalid", None
    if form == "dict":
        return {}, "invalid", None
    if form == "over_one":
        return [2.0, -1.0] + [0.0] * (C - 2), "invalid", None
    if form == "simplex_for_one_hot":
        return [0.5, 0.5] + [0.0] * (C - 2), "invalid", None
    # bad_sum: entries in [0, 1] that do not sum to 1
    return [0.5, 0.4] + [0.0] * (C - 2), "invalid", None


@st.composite
def streams(draw, policy, max_queries=10):
    """A list of batches; each batch a list of queries; each query a list of
    (vote, category, encoding) per source, plus how it is passed (mapping/list)."""
    num_classes = draw(st.integers(2, 5))
    n = draw(st.integers(1, max_queries))
    queries = []
    for _ in range(n):
        votes = [draw(vote_for(s.votes, num_classes)) for s in policy.sources]
        as_mapping = draw(st.booleans())
        drop_absent = draw(st.booleans())   # mapping: absent as a missing key rather than None
        queries.append((votes, as_mapping, drop_absent))
    batched = draw(st.booleans())
    batches, i = [], 0
    while i < n:
        k = draw(st.integers(1, 4)) if batched else 1
        batches.append(queries[i:i + k])
        i += k
    return num_classes, batches


def submission(policy, query):
    votes, as_mapping, drop_absent = query
    if not as_mapping:
        return [v for v, _, _ in votes]
    out = {}
    for s, (v, cat, _) in zip(policy.sources, votes):
        if cat == "absent" and drop_absent:
            continue
        out[s.id] = v
    return out


def fixed_nonce(query_id: str, source_id: str) -> bytes:
    """A deterministic nonce, so that two runs on the same votes commit identically."""
    return hashlib.sha256(f"{query_id}/{source_id}".encode()).digest()


def with_fixed_nonces(policy, query_id, votes):
    """The same submission with every present vote wrapped in a fixed-nonce Submission."""
    if isinstance(votes, dict):
        return {sid: None if v is None else Submission(v, fixed_nonce(query_id, sid)) for sid, v in votes.items()}
    return [None if v is None else Submission(v, fixed_nonce(query_id, sid)) for sid, v in zip(policy.ids, votes)]


# --------------------------------------------------------------------------
# An independent model of the filter and of the charges (exact rationals)
# --------------------------------------------------------------------------
class Model:
    def __init__(self, policy: ConsortiumPolicy, weights, budgets_by_id):
        self.policy = policy
        m = policy.mechanism
        self.s2 = Fraction(m.sigma2)
        self.s1 = Fraction(m.sigma1) if m.confident else None
        self.T = Fraction(m.threshold) if m.confident else None
        self.unit = 1 / self.s2 ** 2 + (1 / (2 * self.s1 ** 2) if m.confident else 0)
        self.desired = {s.id: Fraction((weights or {}).get(s.id, s.grid_max)) for s in policy.sources}
        self.budget = dict(budgets_by_id)
        self.spent = {s.id: Fraction(0) for s in policy.sources}

    def decide(self, src, spent=None):
        """(gamma as a Fraction, status) from public data only: the policy, the
        spend so far (or a provisional one) and the worst case of this query."""
        spent = (self.spent if spent is None else spent)[src.id]
        g = self.desired[src.id]
        remaining = self.budget[src.id] - spent
        if spent + self.unit * g * g <= self.budget[src.id]:
            return g, ACTIVE
        if src.on_exhaustion == "shrink":
            # largest k with unit*(k/SCALE)^2 <= remaining, by bisection on integers
            lo, hi = 0, SCALE
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.unit * Fraction(mid, SCALE) ** 2 <= remaining:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo - lo % src.grid_step      # floored onto the source's grid
            if k > 0 and Fraction(k, SCALE) >= Fraction(src.grid_min):
                return Fraction(k, SCALE), SHRUNK
        return Fraction(0), EXCLUDED_BUDGET

    def charge(self, gamma: Fraction, answered: bool):
        """(threshold rho, gnmax rho) for a participant of weight gamma."""
        th = gamma * gamma / (2 * self.s1 ** 2) if self.s1 is not None else Fraction(0)
        gn = gamma * gamma / self.s2 ** 2 if answered else Fraction(0)
        return th, gn


def expected_release(model: Model, gammas, encodings, num_classes):
    """No-noise release: refused if no source took part; else answered iff max
    tally >= T (always, under plain GNMax); label = lowest-index argmax."""
    tally = [sum((g * Fraction(e[j], SCALE) for g, e in zip(gammas, encodings) if g), Fraction(0))
             for j in range(num_classes)]
    top = max(tally)
    answered = any(gammas) and (model.T is None or top >= model.T)
    return answered, (tally.index(top) if answered else None)


def check_band(src: SourcePolicy, gamma: float):
    """(b): a weight used is exactly 0 or a multiple of 2**-16 inside the band."""
    if gamma == 0:
        return
    g = Fraction(gamma)
    assert (g * SCALE).denominator == 1, f"{src.id}: weight {gamma} is not on the 2**-16 grid"
    assert src.on_grid(gamma), f"{src.id}: weight {gamma} is not a multiple of {src.grid_step} * 2**-16"
    assert Fraction(src.grid_min) <= g <= Fraction(src.grid_max), f"{src.id}: weight {gamma} outside grid band"
    assert Fraction(src.gamma_min) <= g <= Fraction(src.gamma_max), f"{src.id}: weight {gamma} outside band"


def check_query(model: Model, policy, result, query, num_classes, noise_mode, decisions=None):
    votes = query[0]
    m = policy.mechanism
    gammas, encodings = [], []
    for i, (src, p, (vote, cat, enc)) in enumerate(zip(policy.sources, result.participants, votes)):
        assert p.source_id == src.id
        check_band(src, p.gamma)
        g, status = decisions[i] if decisions is not None else model.decide(src)
        if status == EXCLUDED_BUDGET:
            exp_status, exp_gamma = EXCLUDED_BUDGET, Fraction(0)
        elif cat == "absent":
            exp_status, exp_gamma = ABSENT, Fraction(0)
        elif cat == "invalid":
            exp_status, exp_gamma = INVALID, Fraction(0)
        else:
            exp_status, exp_gamma = status, g
        assert p.status == exp_status, (src.id, vote, p)
        event(f"status {p.status}")
        assert Fraction(p.gamma) == exp_gamma, (src.id, p, exp_gamma)
        if exp_status == INVALID:
            assert p.reason and p.reason.startswith("invalid"), p
        if exp_status == SHRUNK:
            assert exp_gamma < model.desired[src.id]
        # (c) non-participants pay nothing
        if exp_gamma == 0:
            assert p.charges == () and p.rho == 0, p
        else:
            th, gn = model.charge(exp_gamma, result.answered)
            assert p.rho == th + gn, (p, th, gn)
            assert sum((c.rho for c in p.charges), Fraction(0)) == p.rho
            by_mech = {}
            for c in p.charges:
                assert Fraction(c.gamma) == exp_gamma
                by_mech.setdefault(c.mechanism, Fraction(0))
                by_mech[c.mechanism] += c.rho
            if m.confident:
                # (d) the threshold check is paid on every query, answered or refused
                assert by_mech.get(THRESHOLD) == th > 0, p
                assert by_mech.get(GNMAX, Fraction(0)) == gn
                if not result.answered:
                    assert all(c.rho == 0 for c in p.charges if c.mechanism == GNMAX)
            else:
                assert THRESHOLD not in by_mech
                assert by_mech.get(GNMAX) == gn > 0
        model.spent[src.id] += p.rho
        assert p.spent == model.spent[src.id]
        # (a) never over budget, not by one query
        assert model.spent[src.id] <= model.budget[src.id], (src.id, model.spent[src.id], model.budget[src.id])
        gammas.append(exp_gamma)
        encodings.append(enc)

    event(f"{m.kind} {'answered' if result.answered else 'refused'}")
    if not m.confident:
        assert result.answered == any(gammas)       # plain GNMax refuses only a query no source took part in
    if not any(gammas):
        assert not result.answered
    if result.answered:
        assert result.label in range(num_classes)
    else:
        assert result.label is None
    if noise_mode == "no_noise":
        assert result.noise_mode == "no_noise" and not result.private
        from dvsecure.mechanism.votes import encode_vote
        encs = []
        for src, g, enc, (vote, _, _) in zip(policy.sources, gammas, encodings, votes):
            if g and (enc is None or src.votes == "simplex"):
                # The library's encoding (a simplex vote rounded to its m unit votes for this
                # query), per unit of weight: counts * 2**16 / m, exact since m divides 2**16.
                enc = [int(x) // src.grid_step for x in encode_vote(vote, num_classes, src.vote_format,
                                                                    result.query_id)]
                assert sum(enc) == SCALE
            encs.append(enc)
        assert (result.answered, result.label) == expected_release(model, gammas, encs, num_classes)
    else:
        assert result.noise_mode == noise_mode and result.private == (noise_mode == "private")


def check_ledger(model: Model, ledger: Ledger, policy):
    spent = ledger.spent()
    assert spent == model.spent
    for src in policy.sources:
        recomputed = sum((c.rho for c in ledger.charges(src.id)), Fraction(0))
        assert recomputed == spent[src.id]
        assert spent[src.id] <= model.budget[src.id]
        assert isinstance(spent[src.id], Fraction)
    ledger.verify()


def snapshot(ledger: Ledger, policy):
    return (ledger.spent(), ledger.budgets(), list(ledger.records()),
            {s.id: ledger.charges(s.id) for s in policy.sources}, ledger.next_seq())


class WholeBatchPlaintext(PlaintextBackend):
    """The plaintext backend, declared to need whole batches (as MPC does), so the
    aggregator must reserve each earlier query's worst case within a batch."""

    evaluates_whole_batch = True


def run_stream(policy, weights, num_classes, batches, noise_mode, path, check=True, whole_batch=False,
               fixed_nonces=False):
    """Run the stream; check every query against the model; return all results.
    With fixed_nonces, every present vote is sent as a Submission with a nonce
    derived from its query and source id (otherwise the aggregator picks one)."""
    ledger = Ledger(path, policy)
    budgets_by_id = ledger.budgets()
    assert budgets_by_id == {s.id: s.budget_rho for s in policy.sources}
    model = Model(policy, weights, budgets_by_id)
    agg = Aggregator(policy, ledger, noise=make_noise(noise_mode), weights=weights,
                     backend=WholeBatchPlaintext() if whole_batch else None)
    results = []
    qn = 0
    for batch in batches:
        items = []
        for query in batch:
            votes = submission(policy, query)
            items.append((f"q{qn}", with_fixed_nonces(policy, f"q{qn}", votes) if fixed_nonces else votes))
            qn += 1
        if len(items) == 1 and qn % 2:
            out = [agg.query(items[0][0], items[0][1], num_classes)]
        else:
            out = agg.query_batch(items, num_classes)
        assert [r.query_id for r in out] == [qid for qid, _ in items]
        rows = [None] * len(batch)
        if whole_batch:
            # Weights for the whole batch are fixed up front, reserving worst cases.
            provisional = dict(model.spent)
            for k in range(len(batch)):
                rows[k] = [model.decide(src, provisional) for src in policy.sources]
                for src, (g, _) in zip(policy.sources, rows[k]):
                    provisional[src.id] += model.unit * g * g
        for r, query, row in zip(out, batch, rows):
            if check:
                check_query(model, policy, r, query, num_classes, noise_mode, decisions=row)
            results.append(r)
        if check:
            check_ledger(model, ledger, policy)
            records = list(ledger.records())
            assert [e.seq for e in records] == list(range(len(records)))
            for r, query in zip(out, batch):
                # One commitment per source: zeros for an absent one; with fixed
                # nonces, exactly the commitment to the Submission sent.
                commitments = entry.unpack_commitments(records[r.seq].commitments, len(policy.sources))
                for sid, (vote, _, _), c in zip(policy.ids, query[0], commitments):
                    if vote is None:
                        assert c == entry.ABSENT_COMMITMENT
                    elif fixed_nonces:
                        assert c == Submission(vote, fixed_nonce(r.query_id, sid)).commitment(r.query_id, sid)
                    else:
                        assert c != entry.ABSENT_COMMITMENT
            for r in out:
                e = records[r.seq]
                assert isinstance(e, entry.Query) and e.query_id == r.query_id
                assert e.answered == r.answered and e.label == r.label and e.noise == noise_mode
                cols = entry.per_source(e, policy.ids)
                assert [(c["source_id"], c["gamma"], c["status"], c["reason"]) for c in cols] == \
                    [(p.source_id, p.gamma, p.status, p.reason) for p in r.participants]
                # The stated spend is the float nearest the exact cumulative spend.
                assert [c["spent"] for c in cols] == [float(p.spent) for p in r.participants]
    return ledger, model, results


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------
@settings(max_examples=250, **SETTINGS)
@given(data=st.data(), noise_mode=st.sampled_from(["private", "no_noise"]), whole_batch=st.booleans())
def test_stream_respects_bands_budgets_and_charges(data, noise_mode, whole_batch):
    """(a)-(f) over random policies and random vote streams, one by one and in batches."""
    policy = data.draw(policies(), label="policy")
    weights = data.draw(desired_weights(policy), label="weights")
    num_classes, batches = data.draw(streams(policy), label="stream")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.sqlite"
        ledger, model, results = run_stream(policy, weights, num_classes, batches, noise_mode, path,
                                            whole_batch=whole_batch)
        before = snapshot(ledger, policy)

        # A replayed query id (alone or inside a batch) is refused and changes nothing.
        if results:
            replay = results[data.draw(st.integers(0, len(results) - 1), label="replay")].query_id
            agg = Aggregator(policy, ledger, noise=make_noise(noise_mode), weights=weights)
            with pytest.raises(DuplicateQueryError):
                agg.query_batch([("fresh-1", [None] * len(policy.sources)), (replay, [None] * len(policy.sources))],
                                num_classes)
            with pytest.raises(DuplicateQueryError):
                agg.query_batch([("fresh-2", [None] * len(policy.sources))] * 2, num_classes)
            assert snapshot(ledger, policy) == before
        ledger.close()

        # (f) a reopened ledger holds exactly the same state, and still verifies.
        reopened = Ledger(path, policy)
        try:
            reopened.verify()
            assert snapshot(reopened, policy) == before
            check_ledger(model, reopened, policy)
        finally:
            reopened.close()


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_batch_equals_one_by_one_without_noise(data):
    """(e) Without noise, a plaintext batch releases and charges exactly what the
    same queries do one by one (each query's weights depend only on earlier
    queries' public outcomes)."""
    policy = data.draw(policies(), label="policy")
    weights = data.draw(desired_weights(policy), label="weights")
    num_classes, batches = data.draw(streams(policy, max_queries=8), label="stream")
    flat = [[q] for b in batches for q in b]
    with tempfile.TemporaryDirectory() as d:
        # Fixed nonces: the same submissions commit identically in both runs.
        la, _, ra = run_stream(policy, weights, num_classes, batches, "no_noise", Path(d) / "a.sqlite",
                               fixed_nonces=True)
        lb, _, rb = run_stream(policy, weights, num_classes, flat, "no_noise", Path(d) / "b.sqlite", check=False,
                               fixed_nonces=True)
        try:
            assert [r.to_dict() for r in ra] == [r.to_dict() for r in rb]
            assert la.spent() == lb.spent()
            assert la.charged_counts() == lb.charged_counts()
            # The two logs are identical, byte for byte, genesis included.
            assert la.next_seq() == lb.next_seq() == 1 + len(ra)
            assert la.record_bytes(0) == lb.record_bytes(0)
        finally:
            la.close()
            lb.close()


@st.composite
def exhaustible_policies(draw):
    """Policies whose every source must run out within a few dozen queries:
    floors close to ceilings, budgets of a few worst-case queries, and (under
    Confident-GNMax) sigma1 <= sigma2 so that even refused queries cost a lot."""
    mech = draw(mechanisms())
    if mech.confident and mech.sigma1 > mech.sigma2:
        mech = MechanismPolicy("confident_gnmax", mech.sigma1, sigma1=mech.sigma2, threshold=mech.threshold)
    unit = 1 / Fraction(mech.sigma2) ** 2 + (1 / (2 * Fraction(mech.sigma1) ** 2) if mech.confident else 0)
    srcs = []
    for i in range(draw(st.integers(1, 4))):
        votes = draw(st.sampled_from(["one-hot", "simplex"]))
        # The band must hold two points of the source's weight grid (a simplex
        # source's weights are multiples of resolution * 2**-16).
        step = DEFAULT_RESOLUTION if votes == "simplex" else 1
        hi = draw(st.floats(0.1, 1.0))
        lo = draw(st.floats(hi / 2, hi - 2 * step / SCALE))
        c = draw(st.floats(0.3, 6.0))
        budget = Budget("rho", float(c * unit * Fraction(hi) ** 2))
        srcs.append(SourcePolicy(f"s{i}", lo, hi, budget, on_exhaustion=draw(st.sampled_from(["exclude", "shrink"])),
                                 votes=votes))
    return ConsortiumPolicy(sources=tuple(srcs), mechanism=mech)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_exhaustion_is_reached_and_never_overshot(data):
    """(a)/(c) with budgets tight enough that every source runs out: a stream of
    valid votes drives each source to exclusion; its spend stops growing the
    moment it is excluded, and never exceeds its budget."""
    policy = data.draw(exhaustible_policies(), label="policy")
    n = len(policy.sources)
    num_classes = 3
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(Path(d) / "l.sqlite", policy)
        model = Model(policy, None, ledger.budgets())
        # Seeded noise drawn from the data: how many queries run depends on the answered
        # bits, so the noise must replay with the data for Hypothesis to shrink.
        agg = Aggregator(policy, ledger, noise=make_noise("seeded", data.draw(st.integers(0, 2 ** 32), label="seed")))
        # Every participating query costs a source at least `least` (its floor weight,
        # refused if Confident), so it must be out after budget/least queries.
        m = policy.mechanism
        least_unit = 1 / (2 * Fraction(m.sigma1) ** 2) if m.confident else 1 / Fraction(m.sigma2) ** 2
        bound = max(math.ceil(model.budget[s.id] / (least_unit * Fraction(s.grid_min) ** 2)) for s in policy.sources)
        excluded_at = {}
        for q in range(bound + 1):
            votes = [data.draw(st.integers(0, num_classes - 1)) for _ in policy.sources]
            r = agg.query(f"q{q}", votes, num_classes)
            query = ([(v, "valid", _one_hot_enc(v, num_classes)) for v in votes], False, False)
            check_query(model, policy, r, query, num_classes, "seeded")
            for p in r.participants:
                if p.status == EXCLUDED_BUDGET:
                    excluded_at.setdefault(p.source_id, ledger.spent()[p.source_id])
                    assert p.gamma == 0 and p.rho == 0 and p.charges == ()
                    assert ledger.spent()[p.source_id] == excluded_at[p.source_id]
                else:
                    assert p.source_id not in excluded_at, "an excluded source came back with the same spend"
            if len(excluded_at) == n:
                break
        check_ledger(model, ledger, policy)
        assert set(excluded_at) == set(policy.ids), f"not exhausted after {bound + 1} queries"
        ledger.close()


@settings(max_examples=200, **SETTINGS)
@given(src=sources(0), w=st.floats(-0.1, 1.1) | grid_point)
def test_set_weights_accepts_exactly_grid_weights_in_band(src, w):
    """(b) at the input: a desired weight is accepted iff it is a multiple of 2**-16
    inside [grid_min, grid_max] (hence inside [gamma_min, gamma_max])."""
    policy = ConsortiumPolicy(sources=(src,), mechanism=MechanismPolicy("gnmax", 1.0))
    ok = src.on_grid(w) and src.grid_min <= w <= src.grid_max
    assert Fraction(src.gamma_min) <= Fraction(src.grid_min) <= Fraction(src.grid_max) <= Fraction(src.gamma_max)
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(Path(d) / "l.sqlite", policy)
        try:
            if ok:
                agg = Aggregator(policy, ledger, noise=make_noise("no_noise"), weights={src.id: w})
                r = agg.query("q", [0], 2)
                p = r.participants[0]
                assert p.gamma == w if p.status == ACTIVE else p.gamma < w
                check_band(src, r.participants[0].gamma)
            else:
                with pytest.raises(ParameterError):
                    Aggregator(policy, ledger, noise=make_noise("no_noise"), weights={src.id: w})
                assert ledger.next_seq() == 1          # the genesis record only
        finally:
            ledger.close()


@pytest.mark.parametrize("mechanism", [MechanismPolicy("gnmax", 1e-200),
                                       MechanismPolicy("confident_gnmax", 1.0, sigma1=1e-200, threshold=0.5)])
def test_extreme_sigma_excludes_everyone_instead_of_crashing(tmp_path, mechanism):
    """A valid policy with a (useless) tiny sigma: no source can afford even one
    query, so all are excluded and charged 0; nothing crashes on float overflow."""
    policy = ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.5, Budget("rho", 1.0), on_exhaustion="shrink"),
                                       SourcePolicy("b", 0.0, 1.0, Budget("rho", 4.0))), mechanism=mechanism)
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, noise=make_noise("no_noise"))
        r = agg.query("q", [0, 1], 2)
        assert [p.status for p in r.participants] == [EXCLUDED_BUDGET, EXCLUDED_BUDGET]
        assert all(p.rho == 0 and p.gamma == 0 for p in r.participants)
        assert ledger.spent() == {"a": 0, "b": 0}
