"""Vote validation and fixed-point encoding (dvsecure/mechanism/votes.py)."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dvsecure.errors import VoteError
from dvsecure.mechanism.votes import SIMPLEX_TOLERANCE, InvalidVote, encode_vote, encode_votes

SCALE = 2 ** 16
ONE_HOT, SIMPLEX = "one-hot", "simplex"


def reason(vote, c, kind) -> str:
    with pytest.raises(InvalidVote) as ei:
        encode_vote(vote, c, kind)
    r = ei.value.args[0]
    assert isinstance(r, str) and r
    return r


# ---------------------------------------------------------------- valid votes

@pytest.mark.parametrize("kind", [ONE_HOT, SIMPLEX])
@pytest.mark.parametrize("c", [1, 2, 3, 10, 1000])
def test_one_hot_vectors(kind, c):
    for j in {0, c // 2, c - 1}:
        v = [0] * c
        v[j] = 1
        for form in (v, [float(x) for x in v], np.array(v), np.array(v, dtype=np.float32),
                     np.array(v, dtype=np.uint8), tuple(v)):
            out = encode_vote(form, c, kind)
            assert out.dtype == np.int64 and out.shape == (c,)
            expected = np.zeros(c, dtype=np.int64)
            expected[j] = SCALE
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", [ONE_HOT, SIMPLEX])
def test_class_index_shorthand(kind):
    for c in [1, 2, 7]:
        for j in range(c):
            for idx in (j, np.int64(j), np.int32(j), np.uint8(j)):
                out = encode_vote(idx, c, kind)
                assert out.dtype == np.int64
                assert out[j] == SCALE and out.sum() == SCALE and np.count_nonzero(out) == 1
                v = [0] * c
                v[j] = 1
                np.testing.assert_array_equal(out, encode_vote(v, c, kind))


@pytest.mark.parametrize("vote,expected", [
    ([0.5, 0.5], [32768, 32768]),
    ([0.25, 0.75, 0.0], [16384, 49152, 0]),
    ([1 / 3, 1 / 3, 1 / 3], [21846, 21845, 21845]),            # remainder to the lowest index
    ([0.2, 0.2, 0.2, 0.2, 0.2], [13108, 13107, 13107, 13107, 13107]),
    ([0.1, 0.6, 0.3], [6554, 39321, 19661]),
    ([Fraction(1, 4), Fraction(3, 4)], [16384, 49152]),
    ([Decimal("0.5"), Decimal("0.5")], [32768, 32768]),
    ([0, 0, 1], [0, 0, SCALE]),
])
def test_simplex_examples(vote, expected):
    out = encode_vote(vote, len(vote), SIMPLEX)
    assert out.dtype == np.int64
    assert out.tolist() == expected
    assert int(out.sum()) == SCALE


def _check_simplex_encoding(p: np.ndarray, out: np.ndarray) -> None:
    assert out.dtype == np.int64 and out.shape == p.shape
    assert int(out.sum()) == SCALE                           # exactly on the simplex
    assert np.all(out >= 0) and np.all(out <= SCALE)
    exact = [Fraction(float(x)) * SCALE for x in p]
    total = sum(Fraction(float(x)) for x in p)
    for e, o in zip(exact, out.tolist()):
        assert abs(o - e / total) < 1 + 1e-9                 # within one unit of the renormalised value
        assert abs(o - e) < 1 + SIMPLEX_TOLERANCE * SCALE    # and of the value as submitted
    # largest-remainder rounding: floor or ceil of each entry, never further
    for e, o in zip(exact, out.tolist()):
        x = e / total
        assert math.floor(x) <= o <= math.floor(x) + 1


@settings(max_examples=400, deadline=None)
@given(weights=st.lists(st.floats(min_value=0, max_value=1e6, allow_subnormal=False), min_size=1, max_size=40))
def test_random_simplex_vectors(weights):
    w = np.array(weights, dtype=np.float64)
    assume(w.sum() > 0)
    p = w / w.sum()
    assume(np.all(p <= 1) and abs(p.sum() - 1) <= 1e-12)
    out = encode_vote(p, len(p), SIMPLEX)
    _check_simplex_encoding(p, out)
    # list input gives the same encoding
    np.testing.assert_array_equal(encode_vote(p.tolist(), len(p), SIMPLEX), out)
    # a one-hot source accepts it only if it is one-hot
    if np.count_nonzero(p) == 1 and p.max() == 1:
        np.testing.assert_array_equal(encode_vote(p, len(p), ONE_HOT), out)
    else:
        assert reason(p, len(p), ONE_HOT) == "not one-hot"


@settings(max_examples=200, deadline=None)
@given(p=hnp.arrays(np.float64, st.integers(2, 12), elements=st.floats(0, 1)),
       slack=st.floats(-0.9 * SIMPLEX_TOLERANCE, 0.9 * SIMPLEX_TOLERANCE))
def test_simplex_within_tolerance(p, slack):
    # a vector whose sum is within the tolerance of 1 is re-normalised on the grid
    assume(p.sum() > 0.5)
    q = p / p.sum() * (1 + slack)
    assume(np.all(q <= 1) and abs(q.sum() - 1) <= SIMPLEX_TOLERANCE)
    _check_simplex_encoding(q, encode_vote(q, len(q), SIMPLEX))


@settings(max_examples=200, deadline=None)
@given(p=hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1)))
def test_arbitrary_vectors_are_valid_or_rejected_with_reason(p):
    # whatever comes in, the result is a valid encoding or an InvalidVote
    for kind in (ONE_HOT, SIMPLEX):
        try:
            out = encode_vote(p, len(p), kind)
        except InvalidVote as e:
            assert e.args[0]
            if kind == SIMPLEX:
                assert abs(p.sum() - 1) > SIMPLEX_TOLERANCE and "sum" in e.args[0]
            continue
        assert int(out.sum()) == SCALE and np.all(out >= 0)
        if kind == ONE_HOT:
            assert sorted(out.tolist())[-1] == SCALE and np.count_nonzero(out) == 1


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
    fixed, problems = encode_votes(votes, kinds, 3)
    assert fixed.dtype == np.int64 and fixed.shape == (8, 3)
    assert problems[0] is None and problems[1] is None and problems[7] is None
    assert problems[2] == "absent"
    for i, word in [(3, "sum"), (4, "one-hot"), (5, "class index 5"), (6, "not a numeric")]:
        assert problems[i].startswith("invalid: ") and word in problems[i], (i, problems[i])
    assert fixed[0].tolist() == [0, SCALE, 0]
    assert fixed[1].tolist() == [16384, 16384, 32768]
    assert fixed[7].tolist() == [0, 0, SCALE]
    # rejected or absent sources contribute nothing
    for i in (2, 3, 4, 5, 6):
        assert fixed[i].tolist() == [0, 0, 0]
    # each valid row sums to exactly one unit of weight
    assert [int(r.sum()) for r in fixed] == [SCALE, SCALE, 0, 0, 0, 0, 0, SCALE]


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
    fixed, problems = encode_votes(votes, kinds, c)
    for i, (v, k) in enumerate(zip(votes, kinds)):
        if v is None:
            assert problems[i] == "absent" and not fixed[i].any()
            continue
        try:
            expected = encode_vote(v, c, k)
        except InvalidVote as e:
            assert problems[i] == f"invalid: {e.args[0]}" and not fixed[i].any()
        else:
            assert problems[i] is None
            np.testing.assert_array_equal(fixed[i], expected)
