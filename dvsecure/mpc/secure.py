"""The secure pipeline, run identically by every computing party on its shares.

All arithmetic is on integers (CrypTen precision 0): votes at 2**16, weights in
2**-16 units, tallies at 2**32 — the plaintext backend's exact grid, so with the
same noise the released outputs are the same, and no multiplication ever needs
a truncation round. The release's comparisons are `compare.py`'s (one masked
opening and the dealer's lookup tables, exact within a public bound on the
values); the simplex check still uses CrypTen's (exact on the signed 64-bit ring).

Only these are ever revealed: the uniform masks of the one-time tables that
turn index votes into one-hot shares (`tables.py`), whether each simplex vote
is valid (`validate_simplex`), the comparisons' uniform masked values and
Beaver openings (`compare.py`), one answered bit per query, and the label of
answered queries (as its one-hot row).
"""
from __future__ import annotations

import numpy as np

from ..errors import SubmissionError
from . import compare

SCALE = 1 << 16


def validate_simplex(y):
    """y: shared int [R, Q, C], simplex vote rows at 2**16. Returns public bool
    [R, Q]: 0 <= y_c <= 2**16 and sum_c y_c = 2**16, with CrypTen's exact 64-bit
    comparisons (costly: about 3 KB per entry per party), revealing one bit per
    row. (One-hot votes and histograms need no check: they travel as class
    indices and are valid by construction, `tables.py`.)"""
    C = y.size(2)
    in_range = (y.ge(0) + y.le(SCALE)).sum(-1)                    # 2C iff every entry is in range
    ok = in_range.eq(2 * C) * y.sum(-1).eq(SCALE)
    return ok.get_plain_text().long().bool()                      # reveal: pass/fail bits


def to_tally_scale(x, one_hot):
    """Votes at 2**16 for the tally: one-hot bits times the public 2**16 (local)."""
    import torch

    scale = torch.tensor([SCALE if h else 1 for h in one_hot], dtype=torch.long).view(-1, 1, 1)
    return x * scale


def tally(x, gammas):
    """v[q, j] = sum_s gammas[q, s] * x[s, q, j], shares times public integers:
    local, exact, no communication. gammas: public int64 torch tensor [Q, S]."""
    return (x * gammas.t().unsqueeze(-1)).sum(0)


def tally_bound(gammas) -> int:
    """A public bound on every tally entry: 0 <= v[q, j] <= sum_s gammas[q, s] * 2**16
    (each source's rows hold at most 2**16 in all, at its weight; invalid or
    unheld votes count 0). gammas: public int64 [Q, S]."""
    g = np.asarray(gammas, dtype=np.int64)
    return int(g.sum(axis=1).max()) * SCALE if g.size else 0


def threshold_bits(tally_max: int, threshold: int, sigma, world: int) -> int:
    """Comparison width for v + z - T: |v + z - T| <= max(T, |V - T|) + the tail
    of z (one draw per party, `compare.noise_tail`)."""
    return compare.low_bits(max(abs(threshold), abs(tally_max - threshold)) + compare.noise_tail(sigma, world))


def argmax_bits(tally_max: int, sigma, world: int) -> int:
    """Comparison width for (v_i + z_i) - (v_j + z_j): at most V plus the tail of
    z_i - z_j (2 draws per party)."""
    return compare.low_bits(tally_max + compare.noise_tail(sigma, 2 * world))


def _shares(x) -> np.ndarray:
    return (x.share if hasattr(x, "share") else x).numpy()


MAX_COMPARISONS = 1 << 20          # per layer: bounds a party's memory (~200 B per comparison in flight)


def _row_slices(rows: int, per_row: int) -> list[slice]:
    """Rows in slices of at most MAX_COMPARISONS comparisons (one slice for any
    usual batch; a huge one takes a few more rounds, never more memory)."""
    step = max(1, MAX_COMPARISONS // max(per_row, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def threshold_any(crypten, tallies, noise, threshold: int, bits: int) -> np.ndarray:
    """Public bool [Q]: max_j v[q, j] + z[q] >= T, as OR_j [v[q, j] + z[q] - T >= 0]
    with the same one draw z per query: Q * C comparisons in one layer
    (`compare.ge_zero`), then an OR over the C bits, revealing only the answered
    bit. tallies: shared [Q, C]; noise: shared [Q]; |values| < 2**bits."""
    v, z = _shares(tallies), _shares(noise)
    parts = [_threshold_rows(crypten, v[rows], z[rows], threshold, bits) for rows in _row_slices(*v.shape)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _threshold_rows(crypten, v: np.ndarray, z: np.ndarray, threshold: int, bits: int) -> np.ndarray:
    comm = crypten.communicator.get()
    q, c = v.shape
    with np.errstate(over="ignore"):
        x = v + z[:, None]
        if comm.get_rank() == 0:
            x = x - np.int64(threshold)
    m = compare.Material(crypten, q * c, bits, q * c * compare.combine_ands(bits // compare.CHUNK) + q * (c - 1))
    above = compare.ge_zero(comm, x, m).reshape(q, c)
    if m.rank == 0:
        above = above ^ np.uint8(1)                                        # NOT, on XOR shares
    none_above = compare.and_reduce(comm, above, m)
    m.check_used()
    return compare.open_bits(comm, none_above) == 0                      # reveal: answered bits


def _literals(c: int):
    """For candidate j and each other index i (in order), which pair comparison
    b[p] = [y_a >= y_b] (a < b, numpy's triu order) decides "j beats i", and
    whether negated: i < j needs y_j > y_i = NOT [y_i >= y_j]; i > j needs
    y_j >= y_i. So exactly the first maximum wins, as numpy's argmax."""
    a, b = np.triu_indices(c, 1)
    pair = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(a, b))}
    index = np.array([[pair[(i, j)] if i < j else pair[(j, i)] for i in range(c) if i != j] for j in range(c)])
    negate = np.array([[i < j for i in range(c) if i != j] for j in range(c)], dtype=np.uint8)
    return a, b, index.reshape(c, c - 1), negate.reshape(c, c - 1)


BLOCK = 16                         # classes compared all against all at once (C (C - 1) / 2 comparisons)


def _blocks(c: int) -> tuple[int, int]:
    """(blocks, size): c classes in blocks of at most BLOCK, as even as can be."""
    size = -(-c // -(-c // BLOCK))
    return -(-c // size), size


def _pad(y: np.ndarray, blocks: int, size: int) -> np.ndarray:
    """[n, c] -> [n, blocks, size]; the last block is filled up with copies of its
    own first entry, placed after it: a copy ties with it or loses, so never wins."""
    extra = blocks * size - y.shape[-1]
    if extra:
        first = (blocks - 1) * size
        y = np.concatenate([y, np.repeat(y[..., first:first + 1], extra, axis=-1)], axis=-1)
    return y.reshape(y.shape[:-1] + (blocks, size))


def _block_winners(crypten, comm, y: np.ndarray, bits: int) -> np.ndarray:
    """XOR shares of the one-hot winner of every block (ties to the lowest
    position): all pair comparisons of a block in one layer, then for each
    candidate the AND of its size - 1 "beats" bits. y: shares [n, blocks, size]."""
    n, blocks, size = y.shape
    a, b, index, negate = _literals(size)
    with np.errstate(over="ignore"):
        x = y[..., a] - y[..., b]
    count = n * blocks * a.size
    m = compare.Material(crypten, count, bits, count * compare.combine_ands(bits // compare.CHUNK)
                         + n * blocks * size * (size - 2))
    ge = compare.ge_zero(comm, x, m).reshape(n, blocks, a.size)
    beats = ge[..., index]                                                 # [n, blocks, size, size - 1]
    if m.rank == 0:
        beats = beats ^ negate
    wins = compare.and_reduce(comm, beats, m)
    m.check_used()
    return wins


def _sum_last(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint64).sum(axis=-1, dtype=np.uint64).view(np.int64)      # mod 2**64


def argmax_label(crypten, noisy, bits: int) -> np.ndarray:
    """Public int64 [A]: argmax over the last axis, ties to the lowest index.
    Up to BLOCK classes: all C (C - 1) / 2 pair comparisons in one layer, then
    for each candidate the AND of its C - 1 "beats" bits, and the winners'
    one-hot row (exactly the label's information) is revealed. More classes: the
    same within blocks, whose winners' values and indices are selected with the
    winning bits (`compare.Selection`) for the next round, until one block is
    left; then only the winner's index is revealed. Within a block the lower
    position wins ties, and blocks keep the classes in order, so the lowest index
    of the maximum wins. noisy: shared [A, C]; |differences| < 2**bits."""
    y = _shares(noisy)
    blocks, size = _blocks(y.shape[1])
    parts = [_argmax_rows(crypten, y[rows], bits) for rows in _row_slices(y.shape[0], blocks * size * (size - 1) // 2)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _argmax_rows(crypten, y: np.ndarray, bits: int) -> np.ndarray:
    import torch

    comm = crypten.communicator.get()
    n, c = y.shape
    index = None                                       # the classes' indices: public until the first selection
    while True:
        blocks, size = _blocks(c)
        yb = _pad(y, blocks, size)
        wins = _block_winners(crypten, comm, yb, bits)
        if index is None and blocks == 1:
            one_hot = compare.open_bits(comm, wins[:, 0])                     # reveal: the labels
            if n and not (one_hot.sum(axis=1) == 1).all():
                raise SubmissionError("the argmax did not single out one class (a party deviated, or a value "
                                      "exceeded the comparisons' bound)")
            return one_hot.argmax(axis=1).astype(np.int64)
        ib = _pad(np.broadcast_to(np.arange(c, dtype=np.int64), (n, c)) if index is None else index, blocks, size)
        if blocks == 1:                                  # the last block, with shared indices: reveal the index
            sel = compare.Selection(crypten, wins.size, 1)
            (label,), _ = sel.select(comm, wins, [ib], [])
            return comm.all_reduce(torch.from_numpy(_sum_last(label)[:, 0])).numpy()            # reveal: labels
        sel = compare.Selection(crypten, wins.size, 1 if index is None else 2)
        shared, public = sel.select(comm, wins, [yb] if index is None else [yb, ib], [ib] if index is None else [])
        y = _sum_last(shared[0])                      # [n, blocks]: each block's maximum ...
        index = _sum_last(shared[1] if index is not None else public[0])      # ... and its class
        c = blocks
