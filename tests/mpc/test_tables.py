"""Index votes through the dealer's one-time tables (issue 13): the parties end
with shares of exactly the one-hot vector of the shared index, whatever shares a
source sends; what a party receives (the opened d = k - r mod C) is independent
of the votes."""
from __future__ import annotations

import numpy as np
import pytest
from members import run_members
from scipy import stats

from dvsecure.mpc.tables import index_shares, reconstruct_indices

pytestmark = pytest.mark.slow
C = 5


def _one_hot(crypten, rank, k_share):
    from dvsecure.mpc import tables

    seen = []
    comm = crypten.communicator.get()
    real = comm.all_reduce

    def watch(tensor, *a, **kw):                   # what this party receives: the opened d
        out = real(tensor, *a, **kw)
        seen.append(out.numpy() % C)
        return out
    comm.all_reduce = watch
    x = tables.one_hot_shares(crypten, k_share, C)
    comm.all_reduce = real
    return x.numpy(), seen[0]


def _reconstruct(shares) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.sum([s.view(np.uint64) for s in shares], axis=0, dtype=np.uint64).view(np.int64)


def test_index_shares_reconstruct_and_refuse_bad_indices():
    k = np.random.default_rng(0).integers(C, size=(7, 3))
    sh = index_shares(k, 3, C)
    assert sh.shape == (3, 7, 3) and sh.min() >= 0 and sh.max() < C
    assert np.array_equal(reconstruct_indices(sh, C), k)
    with pytest.raises(ValueError, match="0..4"):
        index_shares([5], 3, C)


def test_tables_give_the_one_hot_of_any_shares_and_open_only_uniform_masks():
    rng = np.random.default_rng(1)
    n_rows = 6000
    honest = rng.integers(C, size=n_rows)
    honest_shares = index_shares(honest, 3, C)
    # A malicious source's shares: arbitrary 64-bit values, reduced mod C by the parties.
    wild = rng.integers(-2**63, 2**63 - 1, size=(3, 200), dtype=np.int64)
    # Every vote the same class: what the parties see must not depend on it.
    fixed = index_shares(np.zeros(n_rows, dtype=np.int64), 3, C)
    args = [np.concatenate([honest_shares[r], wild[r], fixed[r]]) for r in range(3)]
    out = run_members(_one_hot, args)
    x = _reconstruct([o[0] for o in out])
    expect_k = np.concatenate([honest, (wild % C).sum(axis=0) % C, np.zeros(n_rows, dtype=np.int64)])
    assert np.array_equal(x, np.eye(C, dtype=np.int64)[expect_k])       # exactly one-hot, never more
    d = out[1][1]
    assert all(np.array_equal(o[1], d) for o in out)                    # every party opens the same d
    for part in (d[:n_rows], d[-n_rows:]):                              # random votes, constant votes
        counts = np.bincount(part, minlength=C)
        assert stats.chisquare(counts).pvalue > 1e-4
    # d is independent of the vote: its joint histogram with k is that of independent variables.
    table = np.zeros((C, C))
    np.add.at(table, (honest, d[:n_rows]), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-4
