"""Vote validation and fixed-point encoding (dvsecure/mechanism/votes.py), and the
unbiased randomised rounding of simplex votes to m unit votes."""
from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dvsecure.errors import ParameterError, VoteError
from dvsecure.mechanism import votes as V
from dvsecure.mechanism.votes import (
    SIMPLEX_TOLERANCE,
    InvalidVote,
    VoteFormat,
    encode_vote,
    encode_votes,
    systematic_round,
)

SCALE = 2 ** 16
ONE_HOT = "one-hot"
M = 16
# A simplex source's own format: its resolution, and whose votes it rounds.
SIMPLEX = VoteFormat("simplex", resolution=M, consortium="test-consortium", source_id="src")
QID = "q-1"


def enc(vote, c, kind, query_id=QID):
    return encode_vote(vote, c, kind, query_id)


def reason(vote, c, kind) -> str:
    with pytest.raises(InvalidVote) as ei:
        enc(vote, c, kind)
    r = ei.value.args[0]
    assert isinstance(r, str) and r
    return r


def units(kind) -> int:
    return kind.units if isinstance(kind, VoteFormat) else 1


def exact_targets(p, m):
    """m * p_j / sum(p), exactly (the floats' own values)."""
    exact = [Fraction(float(x)) for x in p]
    total = sum(exact)
    return [m * e / total for e in exact]


def check_rounding(p, out, m=M):
    """Counts of m unit votes times 2**16, each the floor or ceiling of m * p_j."""
    assert out.dtype == np.int64 and out.shape == (len(p),)
    assert np.all(out % SCALE == 0)
    counts = (out // SCALE).tolist()
    assert sum(counts) == m and min(counts) >= 0
    for x, k in zip(exact_targets(p, m), counts):
        assert math.floor(x) <= k <= math.ceil(x), (x, k)


# ---------------------------------------------------------------- valid votes

@pytest.mark.parametrize("kind", [ONE_HOT, SIMPLEX])
@pytest.mark.parametrize("c", [1, 2, 3, 10, 1000])
def test_one_hot_vectors(kind, c):
    for j in {0, c // 2, c - 1}:
        v = [0] * c
        v[j] = 1
        for form in (v, [float(x) for x in v], np.array(v), np.array(v, dtype=np.float32),
                     np.array(v, dtype=np.uint8), tuple(v)):
            out = enc(form, c, kind)
            assert out.dtype == np.int64 and out.shape == (c,)
            expected = np.zeros(c, dtype=np.int64)
            expected[j] = units(kind) * SCALE          # a simplex source's m unit votes all on j
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", [ONE_HOT, SIMPLEX])
def test_class_index_shorthand(kind):
    for c in [1, 2, 7]:
        for j in range(c):
            for idx in (j, np.int64(j), np.int32(j), np.uint8(j)):
                out = enc(idx, c, kind)
                assert out.dtype == np.int64
                assert out[j] == units(kind) * SCALE and out.sum() == units(kind) * SCALE
                assert np.count_nonzero(out) == 1
                v = [0] * c
                v[j] = 1
                np.testing.assert_array_equal(out, enc(v, c, kind))


@pytest.mark.parametrize("vote,expected", [
    ([0.5, 0.5], [8, 8]),                                        # on the 1/16 grid: no randomness
    ([0.25, 0.75, 0.0], [4, 12, 0]),
    ([0.0625, 0.9375], [1, 15]),
    ([Fraction(1, 4), Fraction(3, 4)], [4, 12]),
    ([Decimal("0.5"), Decimal("0.5")], [8, 8]),
    ([0, 0, 1], [0, 0, 16]),
])
def test_simplex_votes_on_the_grid_are_exact(vote, expected):
    for q in ("a", "b", "c"):
        out = enc(vote, len(vote), SIMPLEX, q)
        assert out.dtype == np.int64
        assert (out // SCALE).tolist() == expected and out.sum() == M * SCALE


@settings(max_examples=300, deadline=None)
@given(weights=st.lists(st.floats(min_value=0, max_value=1e6, allow_subnormal=False), min_size=1, max_size=40),
       query=st.text(min_size=1, max_size=8))
def test_random_simplex_vectors_round_to_floor_or_ceil_summing_to_m(weights, query):
    w = np.array(weights, dtype=np.float64)
    assume(w.sum() > 0)
    p = w / w.sum()
    assume(np.all(p <= 1) and abs(p.sum() - 1) <= 1e-12)
    out = enc(p, len(p), SIMPLEX, query)
    check_rounding(p, out)
    # list input gives the same histogram; so does the same vote again (deterministic)
    np.testing.assert_array_equal(enc(p.tolist(), len(p), SIMPLEX, query), out)
    np.testing.assert_array_equal(enc(p, len(p), SIMPLEX, query), out)
    # a one-hot source accepts it only if it is one-hot
    if np.count_nonzero(p) == 1 and p.max() == 1:
        assert (enc(p, len(p), ONE_HOT) * M).tolist() == out.tolist()
    else:
        assert reason(p, len(p), ONE_HOT) == "not one-hot"


@settings(max_examples=200, deadline=None)
@given(p=hnp.arrays(np.float64, st.integers(2, 12), elements=st.floats(0, 1)),
       slack=st.floats(-0.9 * SIMPLEX_TOLERANCE, 0.9 * SIMPLEX_TOLERANCE))
def test_simplex_within_tolerance(p, slack):
    # a vector whose sum is within the tolerance of 1 is rounded as its exact renormalisation
    assume(p.sum() > 0.5)
    q = p / p.sum() * (1 + slack)
    assume(np.all(q <= 1) and abs(q.sum() - 1) <= SIMPLEX_TOLERANCE)
    check_rounding(q, enc(q, len(q), SIMPLEX))


@settings(max_examples=200, deadline=None)
@given(p=hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1)))
def test_arbitrary_vectors_are_valid_or_rejected_with_reason(p):
    # whatever comes in, the result is a valid encoding or an InvalidVote
    for kind in (ONE_HOT, SIMPLEX):
        try:
            out = enc(p, len(p), kind)
        except InvalidVote as e:
            assert e.args[0]
            if kind == SIMPLEX:
                assert abs(p.sum() - 1) > SIMPLEX_TOLERANCE and "sum" in e.args[0]
            continue
        assert int(out.sum()) == units(kind) * SCALE and np.all(out >= 0)
        if kind == ONE_HOT:
            assert sorted(out.tolist())[-1] == SCALE and np.count_nonzero(out) == 1


# ---------------------------------------------------------------- the rounding

@pytest.mark.parametrize("vote", [[0.3, 0.3, 0.4], [0.1, 0.0, 0.85, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.999, 0.001]])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_rounding_is_unbiased_over_query_ids(vote, m):
    """Over N query ids the mean histogram approaches m * p. Each count is floor or
    ceil of m * p_j (a range of 1), so by Hoeffding's inequality the mean is
    within sqrt(ln(2/delta) / 2N) of m * p_j except with probability delta = 1e-9."""
    fmt = VoteFormat("simplex", resolution=m, consortium="unbiased", source_id="s")
    n = 4000
    total, seen = np.zeros(len(vote)), set()
    for i in range(n):
        out = enc(vote, len(vote), fmt, f"query-{i}") // SCALE
        total += out
        seen.add(tuple(out.tolist()))
    bound = math.sqrt(math.log(2 / 1e-9) / (2 * n))
    target = np.array([float(x) for x in exact_targets(vote, m)])
    assert np.all(np.abs(total / n - target) <= bound), (total / n, target, bound)
    # and it is random: a count whose target is far from an integer takes both values
    # (one histogram for all n queries has probability below 0.95**4000)
    if any(0.05 < x - math.floor(x) < 0.95 for x in exact_targets(vote, m)):
        assert len(seen) > 1


def _exact_expectation(weights, m):
    """E[systematic_round(weights, m, U < .)] for U exactly uniform on [0, 1): the
    counts change only where U crosses a fractional part of some m * S_j / total,
    so average them over those intervals, weighted by length."""
    total = sum(weights)
    cuts, acc = {Fraction(0), Fraction(1)}, 0
    for w in weights:
        acc += w
        cuts.add(Fraction(m * acc % total, total))
    cuts = sorted(cuts)
    mean = [Fraction(0)] * len(weights)
    for lo, hi in zip(cuts, cuts[1:]):
        u = (lo + hi) / 2                                            # any U in [lo, hi) gives these counts
        counts = systematic_round(weights, m, lambda num, den: u < Fraction(num, den))
        assert sum(counts) == m
        mean = [a + (hi - lo) * k for a, k in zip(mean, counts)]
    return mean


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=12),
       m=st.sampled_from([1, 2, 8, 16, 1024]))
def test_systematic_rounding_is_exactly_unbiased(weights, m):
    assume(sum(weights) > 0)
    total = sum(weights)
    assert _exact_expectation(weights, m) == [Fraction(m * w, total) for w in weights]


def test_the_uniform_is_compared_exactly_even_past_its_first_64_bits():
    xof = hashlib.shake_256(b"some key")
    prefix = int.from_bytes(xof.digest(256), "big")                # 2048 bits of U
    u = V._Uniform(hashlib.shake_256(b"some key"))
    p64 = prefix >> (2048 - 64)
    for num, den in [(2 * p64 + 1, 1 << 65),                       # equal to U on 64 bits: needs more
                     (4 * p64 + 3, 1 << 66), (p64, 1 << 64), (p64 + 1, 1 << 64), (1, 3), (2, 3),
                     ((prefix >> 900) + 1, 1 << 1148)]:            # equal to U on 1147 bits
        assert u.below(num, den) == (Fraction(prefix, 1 << 2048) < Fraction(num, den)), (num, den)
    assert not u.below(0, 5)


def test_rounding_is_keyed_by_consortium_source_query_and_vote():
    vote = [0.3, 0.3, 0.4]

    def stream(fmt, prefix="q", v=vote):
        return [tuple(enc(v, 3, fmt, f"{prefix}{i}").tolist()) for i in range(64)]

    base = stream(SIMPLEX)
    assert base == stream(VoteFormat("simplex", resolution=M, consortium="test-consortium", source_id="src"))
    for other in (VoteFormat("simplex", resolution=M, consortium="other", source_id="src"),
                  VoteFormat("simplex", resolution=M, consortium="test-consortium", source_id="src2")):
        assert stream(other) != base
    assert stream(SIMPLEX, "r") != base
    assert stream(SIMPLEX, v=[0.3, 0.30000001, 0.39999999]) != base
    # the vote's value, not its representation, is what is keyed
    assert stream(SIMPLEX, v=np.array(vote, dtype=np.float64)) == base
    assert stream(SIMPLEX, v=[-0.0 + x for x in vote]) == base


@pytest.mark.parametrize("kind,query_id,missing", [
    ("simplex", QID, "the consortium, the source id"),
    (VoteFormat("simplex", consortium="c"), QID, "the source id"),
    (SIMPLEX, None, "the query id"),
    (SIMPLEX, "", "the query id"),
])
def test_a_simplex_vote_cannot_be_encoded_without_its_rounding_key(kind, query_id, missing):
    # a caller's mistake, not an invalid vote: it raises, even for a class index
    for vote in ([0.5, 0.5], 1):
        with pytest.raises(ParameterError, match=f"missing: {missing}"):
            encode_vote(vote, 2, kind, query_id)
    with pytest.raises(ParameterError, match="missing"):
        encode_votes([[0.5, 0.5]], [kind], 2, query_id)


def test_vote_format_resolution():
    assert VoteFormat("simplex").resolution == 16 and VoteFormat("simplex").units == 16
    assert VoteFormat("simplex", resolution=1).units == 1 and VoteFormat("simplex", resolution=1 << 16).units == 1 << 16
    assert VoteFormat("one-hot").units == 1 and VoteFormat("histogram", 5).units == 5
    for bad in (3, 0, -4, 1 << 17, 2.0, True, "16"):
        with pytest.raises(ValueError, match="power of two dividing 2\\*\\*16"):
            VoteFormat("simplex", resolution=bad)
    with pytest.raises(ValueError, match="no resolution"):
        VoteFormat("one-hot", resolution=4)


def test_resolution_one_samples_a_class_with_probability_p():
    fmt = VoteFormat("simplex", resolution=1, consortium="c", source_id="s")
    hits = np.zeros(2)
    for i in range(2000):
        out = enc([0.25, 0.75], 2, fmt, f"q{i}")
        assert sorted(out.tolist()) == [0, SCALE]
        hits += out // SCALE
    assert abs(hits[0] / 2000 - 0.25) <= math.sqrt(math.log(2 / 1e-9) / 4000)


# ---------------------------------------------------------------- invalid votes

@pytest.mark.parametrize("kind", [ONE_HOT, SIMPLEX])
@pytest.mark.parametrize("vote,c,words", [
    # wrong shape
    ([0, 1], 3, "shape"),
    ([0, 1, 0, 0], 3, "shape"),
    ([[0, 1, 0]], 3, "shape"),
    ([[1], [0], [0]], 3, "shape"),
    ([], 3, "shape"),
    (1.0, 3, "shape"),                       # a float is not a class index
    (np.float64(0), 3, "shape"),
    (np.zeros((3, 3)), 3, "shape"),
    # non-finite
    ([float("nan"), 1, 0], 3, "non-finite"),
    ([0, float("inf"), 0], 3, "non-finite"),
    ([0, 1, float("-inf")], 3, "non-finite"),
    # range
    ([-0.5, 1.5, 0], 3, "outside [0, 1]"),
    ([0, 1, -1e-300], 3, "outside [0, 1]"),
    ([0, 2, 0], 3, "outside [0, 1]"),
    ([0, 1 + 1e-15, 0], 3, "outside [0, 1]"),
    ([10 ** 400, 0, 0], 3, "outside [0, 1]"),
    # class index out of range
    (3, 3, "class index 3"),
    (-1, 3, "class index -1"),
    (np.int64(7), 3, "class index 7"),
    (2 ** 70, 3, "class index"),
    # non-numeric
    ("abc", 3, "not a numeric"),
    ("010", 3, "not a numeric"),
    (["0", "1", "0"], 3, "not a numeric"),
    (np.array(["0", "1", "0"]), 3, "not a numeric"),
    ([b"0", b"1", b"0"], 3, "not a numeric"),
    ([None, 1, 0], 3, "not a numeric"),
    ([True, False, False], 3, "not a numeric"),
    (np.array([0, 1, 0], dtype=bool), 3, "not a numeric"),
    ([0, 1 + 0j, 0], 3, "not a numeric"),
    (np.array([0, 1, 0], dtype=complex), 3, "not a numeric"),
    ([0, [1], 0], 3, "not a numeric"),
    ({"a": 1}, 3, "not a numeric"),
    (object(), 3, "not a numeric"),
    (True, 3, "not a numeric"),              # a bool is not a class index
    (np.array(["2024-01-01"] * 3, dtype="datetime64[D]"), 3, "not a numeric"),
])
def test_invalid(kind, vote, c, words):
    assert words in reason(vote, c, kind)


@pytest.mark.parametrize("vote", [
    [0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1, 1, 0], [1, 1, 1], [0.999, 0, 0], [0, 0, 1 - 1e-9],
])
def test_not_one_hot(vote):
    assert reason(vote, 3, ONE_HOT) == "not one-hot"


@pytest.mark.parametrize("vote", [
    [0.0, 0.0, 0.0], [1, 1, 0], [0.5, 0.4, 0.0], [0.5, 0.5 + 2 * SIMPLEX_TOLERANCE, 0],
    [0.5, 0.5 - 2 * SIMPLEX_TOLERANCE, 0], [1, 1, 1], [0.3, 0.3, 0.3],
])
def test_simplex_sum_not_one(vote):
    assert "sum" in reason(vote, 3, SIMPLEX)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown vote kind"):
        encode_vote([0.5, 0.5], 2, "ranked")


# ---------------------------------------------------------------- batches

def test_encode_votes_reasons():
    kinds = [ONE_HOT, SIMPLEX, ONE_HOT, SIMPLEX, ONE_HOT, ONE_HOT, SIMPLEX, SIMPLEX]
    votes = [
        [0, 1, 0],                 # ok
        [0.25, 0.25, 0.5],         # ok
        None,                      # absent
        [0.5, 0.4, 0.0],           # bad sum
        [0.5, 0.5, 0.0],           # simplex on a one-hot source
        5,                         # index out of range
        ["a", "b", "c"],           # non-numeric
        2,                         # ok: class index on a simplex source
    ]
    fixed, problems = encode_votes(votes, kinds, 3, QID)
    assert fixed.dtype == np.int64 and fixed.shape == (8, 3)
    assert problems[0] is None and problems[1] is None and problems[7] is None
    assert problems[2] == "absent"
    for i, word in [(3, "sum"), (4, "one-hot"), (5, "class index 5"), (6, "not a numeric")]:
        assert problems[i].startswith("invalid: ") and word in problems[i], (i, problems[i])
    assert fixed[0].tolist() == [0, SCALE, 0]
    assert fixed[1].tolist() == [4 * SCALE, 4 * SCALE, 8 * SCALE]      # on the 1/16 grid: exact
    assert fixed[7].tolist() == [0, 0, M * SCALE]
    # rejected or absent sources contribute nothing
    for i in (2, 3, 4, 5, 6):
        assert fixed[i].tolist() == [0, 0, 0]
    # each valid row holds its units: one for a one-hot vote, m for a simplex one
    assert [int(r.sum()) for r in fixed] == [SCALE, M * SCALE, 0, 0, 0, 0, 0, M * SCALE]


def test_encode_votes_all_absent_and_empty():
    fixed, problems = encode_votes([None, None], [ONE_HOT, SIMPLEX], 4)
    assert problems == ["absent", "absent"] and not fixed.any() and fixed.shape == (2, 4)
    fixed, problems = encode_votes([], [], 4)
    assert fixed.shape == (0, 4) and problems == []


def test_encode_votes_accepts_an_array_batch():
    votes = np.eye(3)
    fixed, problems = encode_votes(votes, [ONE_HOT] * 3, 3)
    assert problems == [None, None, None]
    np.testing.assert_array_equal(fixed, np.eye(3, dtype=np.int64) * SCALE)


@pytest.mark.parametrize("votes,kinds", [
    ([[0, 1]], [ONE_HOT, ONE_HOT]),
    ([[0, 1], [1, 0], None], [ONE_HOT, ONE_HOT]),
    ([], [ONE_HOT]),
])
def test_encode_votes_length_mismatch(votes, kinds):
    # one vote per source, or the batch is malformed (zip would silently misalign)
    with pytest.raises(VoteError, match="one vote per source"):
        encode_votes(votes, kinds, 2)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), s=st.integers(1, 8), c=st.integers(1, 6))
def test_encode_votes_matches_encode_vote(data, s, c):
    kinds = data.draw(st.lists(st.sampled_from([ONE_HOT, SIMPLEX]), min_size=s, max_size=s))
    vote = st.one_of(st.none(), st.integers(-1, c),
                     hnp.arrays(np.float64, c, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0])))
    votes = data.draw(st.lists(vote, min_size=s, max_size=s))
    fixed, problems = encode_votes(votes, kinds, c, QID)
    for i, (v, k) in enumerate(zip(votes, kinds)):
        if v is None:
            assert problems[i] == "absent" and not fixed[i].any()
            continue
        try:
            expected = enc(v, c, k)
        except InvalidVote as e:
            assert problems[i] == f"invalid: {e.args[0]}" and not fixed[i].any()
        else:
            assert problems[i] is None
            np.testing.assert_array_equal(fixed[i], expected)
