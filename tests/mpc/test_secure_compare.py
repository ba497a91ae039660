"""The masked comparisons (`compare.py`) and the release built on them
(`secure.threshold_any`, `secure.argmax_label`) against numpy, on random and
adversarial inputs (ties, 0, -1, the edges of the bound), over real parties and
the dealer on links; and what a party receives while comparing (the opened
c = x + 2**L + r and the Beaver openings) does not depend on the values."""
from __future__ import annotations

import numpy as np
import pytest
from members import run_members
from scipy import stats

from dvsecure.mpc import compare, secure

pytestmark = pytest.mark.slow
PARTIES = 3
WIDTHS = (4, 8, 48, 60)
PRIVACY_N = 20000


def _split(x: np.ndarray, rng) -> list[np.ndarray]:
    """Additive shares mod 2**64 of int64 values, any of them wrapping around."""
    x = np.asarray(x, dtype=np.int64)
    shares = [rng.integers(-2**63, 2**63 - 1, size=x.shape, dtype=np.int64, endpoint=True)
              for _ in range(PARTIES - 1)]
    with np.errstate(over="ignore"):
        last = x.view(np.uint64) - sum(s.view(np.uint64) for s in shares)
    return shares + [last.view(np.int64)]


def _edges(bits: int, rng) -> np.ndarray:
    top = 1 << bits
    fixed = [0, -1, 1, 2, -2, -top, -top + 1, top - 1, top - 2, -(top >> 1), top >> 1]
    return np.concatenate([np.array(fixed, dtype=np.int64), rng.integers(-top, top, size=2000, dtype=np.int64)])


def _argmax_inputs(rng):
    cases = []
    for c in (2, 3, 10, 16, 17, 40, 300):                              # one block, two, two rounds, three
        y = rng.integers(0, 4, size=(300, c), dtype=np.int64)          # few values: many ties
        y[:5] = 7                                                        # every class tied
        y[5:10] = -rng.integers(0, 3, size=(5, c))                       # negative, ties
        y[10:] += rng.integers(-2**40, 2**40, size=(290, 1)) * (rng.random((290, 1)) < 0.5)
        y[10:20] = 0
        y[10:20, [c // 2, c - 1]] = 9                                    # a tie across blocks: the lower wins
        y[20:30] = -5
        y[20:30, c - 1] = -4                                             # the last class, alone
        y[-50:] = rng.integers(-2**44, 2**44, size=(50, c))              # wide values
        cases.append(y)
    return cases


def _select_inputs(rng):
    bits = rng.integers(0, 2, size=(500,), dtype=np.uint8)
    y = rng.integers(-2**63, 2**63 - 1, size=500, dtype=np.int64, endpoint=True)
    pub = rng.integers(-2**40, 2**40, size=500, dtype=np.int64)
    return bits, y, pub


def _threshold_inputs(rng):
    q, c = 400, 10
    v = rng.integers(0, 50, size=(q, c), dtype=np.int64) * (1 << 32)
    z = rng.integers(-2**35, 2**35, size=q, dtype=np.int64)
    t = int(20 * (1 << 32))
    z[:100] = t - v[:100].max(axis=1)                                    # max + z == T exactly: answered
    z[100:200] = t - 1 - v[100:200].max(axis=1)                          # one below: refused
    return v, z, t


def _session(crypten, rank, arg):
    import torch

    comm = crypten.communicator.get()
    out = {"ge": [], "argmax": []}
    for bits, shares in arg["ge"]:
        m = compare.Material(crypten, shares.size, bits, shares.size * compare.combine_ands(bits // compare.CHUNK))
        out["ge"].append(compare.ge_zero(comm, shares, m))
        m.check_used()
    # What this party receives while comparing: every all_reduce's result.
    seen = []
    real = comm.all_reduce

    def watch(tensor, *a, **kw):
        got = real(tensor, *a, **kw)
        seen.append((kw.get("op") is not None, got.numpy().copy()))
        return got
    comm.all_reduce = watch
    for shares in arg["privacy"]:
        m = compare.Material(crypten, shares.size, 48, shares.size * compare.combine_ands(12))
        compare.ge_zero(comm, shares, m)
    comm.all_reduce = real
    out["seen"] = seen
    v, z, t, th_bits = arg["threshold"]
    out["answered"] = secure.threshold_any(crypten, torch.from_numpy(v), torch.from_numpy(z), t, th_bits)
    for y, bits in arg["argmax"]:
        out["argmax"].append(secure.argmax_label(crypten, torch.from_numpy(y), bits))
    # The same with a tiny per-layer cap: rows go in many slices, the answers do not change.
    secure.MAX_COMPARISONS = 700
    out["answered_sliced"] = secure.threshold_any(crypten, torch.from_numpy(v), torch.from_numpy(z), t, th_bits)
    out["argmax_sliced"] = [secure.argmax_label(crypten, torch.from_numpy(y), bits) for y, bits in arg["argmax"][2:6]]
    bits, y, pub = arg["select"]
    sel = compare.Selection(crypten, bits.size, 1)
    out["select"] = sel.select(comm, bits, [y], [pub])
    return out


@pytest.fixture(scope="module")
def session():
    rng = np.random.default_rng(7)
    ge_values = [(bits, _edges(bits, rng)) for bits in WIDTHS]
    fixed = np.full(PRIVACY_N, 12345, dtype=np.int64)
    varied = rng.integers(-2**47, 2**47, size=PRIVACY_N, dtype=np.int64)
    v, z, t = _threshold_inputs(rng)
    tally_max = int(v.max())
    th_bits = compare.low_bits(max(t, tally_max) + int(np.abs(z).max()) + t)
    argmax_cases = _argmax_inputs(rng)
    am_bits = [compare.low_bits(int(np.abs(y).max()) * 2) for y in argmax_cases]
    split = {
        "ge": [(bits, _split(x, rng)) for bits, x in ge_values],
        "privacy": [_split(fixed, rng), _split(varied, rng)],
        "threshold": (_split(v, rng), _split(z, rng)),
        "argmax": [_split(y, rng) for y in argmax_cases],
    }
    sel_bits, sel_y, sel_pub = _select_inputs(rng)
    bit_shares = [rng.integers(0, 2, size=sel_bits.shape, dtype=np.uint8) for _ in range(PARTIES - 1)]
    bit_shares.append(sel_bits ^ bit_shares[0] ^ bit_shares[1])
    y_shares = _split(sel_y, rng)
    args = [{"ge": [(bits, sh[r]) for bits, sh in split["ge"]],
             "privacy": [p[r] for p in split["privacy"]],
             "threshold": (split["threshold"][0][r], split["threshold"][1][r], t, th_bits),
             "argmax": [(sh[r], bits) for sh, bits in zip(split["argmax"], am_bits)],
             "select": (bit_shares[r], y_shares[r], sel_pub)} for r in range(PARTIES)]
    out = run_members(_session, args, timeout=300)
    return {"out": out, "select": (sel_bits, sel_y, sel_pub),
            "ge_values": ge_values, "fixed": fixed, "varied": varied, "threshold": (v, z, t),
            "argmax": argmax_cases}


def _xor(parts):
    out = parts[0].copy()
    for p in parts[1:]:
        out ^= p
    return out


def test_ge_zero_is_exact_on_the_whole_range_and_its_edges(session):
    for i, (bits, x) in enumerate(session["ge_values"]):
        got = _xor([o["ge"][i] for o in session["out"]])
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
        assert np.array_equal(got.astype(bool), x >= 0), f"L={bits}"


def test_threshold_is_the_or_of_the_columns_and_equals_numpy(session):
    v, z, t = session["threshold"]
    expect = v.max(axis=1) + z >= t
    assert expect[:100].all() and not expect[100:200].any()              # both sides of the boundary
    for o in session["out"]:
        assert np.array_equal(o["answered"], expect) and np.array_equal(o["answered_sliced"], expect)


def test_argmax_takes_the_lowest_index_of_a_tie_as_numpy(session):
    for i, y in enumerate(session["argmax"]):
        expect = np.argmax(y, axis=1)
        for o in session["out"]:
            assert np.array_equal(o["argmax"][i], expect), f"C={y.shape[1]}"
        assert (expect[:5] == 0).all()                                   # all tied: class 0
        if 2 <= i < 6:                                                   # in slices of rows, the same
            assert all(np.array_equal(o["argmax_sliced"][i - 2], expect) for o in session["out"])


def _sum(parts):
    with np.errstate(over="ignore"):
        return np.sum([p.view(np.uint64) for p in parts], axis=0, dtype=np.uint64).view(np.int64)


def test_selection_multiplies_shared_and_public_values_by_shared_bits(session):
    bits, y, pub = session["select"]
    shared = _sum([o["select"][0][0] for o in session["out"]])
    public = _sum([o["select"][1][0] for o in session["out"]])
    assert np.array_equal(shared, np.where(bits == 1, y, 0))
    assert np.array_equal(public, np.where(bits == 1, pub, 0))


def test_what_a_party_receives_does_not_depend_on_the_values(session):
    """The opened c is uniform mod 2**64 whatever x is (r is uniform): its low
    byte and its bit L (the one the sign is read from) are uniform for constant
    and for varied x, and independent of x's sign; the Beaver openings are fair
    coins in both cases."""
    varied = session["varied"]
    for o in session["out"]:
        seen = o["seen"]
        opened = [s[1].view(np.uint64) for s in seen if not s[0]]       # the SUM openings: c
        coins = [s for s in seen if s[0]]                                # BXOR openings: Beaver
        assert len(opened) == 2 and all(c.size == PRIVACY_N for c in opened)
        for c in opened:
            assert stats.chisquare(np.bincount((c & np.uint64(255)).astype(int), minlength=256)).pvalue > 1e-4
            bit = ((c >> np.uint64(48)) & np.uint64(1)).astype(int)
            assert stats.binomtest(int(bit.sum()), bit.size).pvalue > 1e-4
        table = np.zeros((2, 16))
        np.add.at(table, ((varied >= 0).astype(int), (opened[1] & np.uint64(15)).astype(int)), 1)
        assert stats.chi2_contingency(table).pvalue > 1e-4
        half = len(coins) // 2
        for group in (coins[:half], coins[half:]):                        # constant x, varied x
            bits = np.unpackbits(np.concatenate([g[1] for g in group]).view(np.uint8))
            assert stats.binomtest(int(bits.sum()), bits.size).pvalue > 1e-4


def test_widths_and_tail_bounds():
    assert compare.low_bits(0) == 4 and compare.low_bits(15) == 4 and compare.low_bits(16) == 8
    assert compare.low_bits((1 << 48) - 1) == 48 and compare.low_bits(1 << 48) == 52
    with pytest.raises(ValueError, match="60-bit"):
        compare.low_bits(1 << 60)
    with pytest.raises(ValueError, match=">= 0"):
        compare.low_bits(-1)
    assert compare.noise_tail(None, 3) == 0 and compare.noise_tail(0, 3) == 0
    # 2 exp(-TAIL^2 / 2) < 2**-128, and the tail grows with sqrt(draws).
    assert 2 * np.exp(-compare.TAIL ** 2 / 2) < 2.0 ** -128
    assert compare.noise_tail(1000, 4) >= 2 * compare.TAIL * 1000
    from dvsecure.noise import make_noise
    draws = make_noise("seeded", 3).sample(40, 3 * 2000).reshape(3, 2000).sum(axis=0)
    assert np.abs(draws).max() < compare.noise_tail(40, 3)
    # The combine tree: m chunks need m - 1 pairs, each 2 ANDs but the lowest group's (1).
    assert [compare.combine_ands(m) for m in (1, 2, 3, 4, 12, 15)] == [0, 1, 2, 4, 18, 24]
    # Public widths from the batch: a tally bound, the threshold's and the pair differences' widths.
    g = np.array([[3, 4], [10, 0]])
    assert secure.tally_bound(g) == 10 * 65536
    assert secure.argmax_bits(1 << 40, None, 3) == 44
    assert secure.threshold_bits(1 << 40, 1 << 41, None, 3) == 44
