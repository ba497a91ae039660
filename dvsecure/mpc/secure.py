"""The secure pipeline, run identically by every computing party on its shares.

All arithmetic is on integers (CrypTen precision 0): votes at 2**16, weights in
2**-16 units, tallies at 2**32 — the plaintext backend's exact grid, so with the
same noise the released outputs are the same, and no multiplication ever needs
a truncation round. Comparisons are CrypTen's (exact on the signed 64-bit ring).

Only three things are ever revealed: one pass/fail bit per source per query
(validation), one answered bit per query, and the label of answered queries.
"""
from __future__ import annotations

SCALE = 1 << 16


def validate(x, one_hot):
    """x: shared int [S, Q, C] (votes at 2**16); one_hot: public bool [S] (the
    source's policy kind). Returns shared 0/1 [S, Q]: 1 iff the vote is in range
    (0 <= x_j <= 2**16), sums to 2**16, and — for one-hot sources — its squares
    sum to 2**32 (given the range and the sum, that holds only for a one-hot vote).
    A malicious share (huge, negative, garbage) fails the range check."""
    import torch

    c = x.size(-1)
    in_range = (x.ge(0) + x.le(SCALE)).sum(-1)                 # 2C iff every entry is in range
    total = x.sum(-1)
    squares = (x * x).sum(-1)
    ok = in_range.eq(2 * c) * total.eq(SCALE)
    hot = torch.as_tensor(one_hot, dtype=torch.long).unsqueeze(-1)   # [S, 1] public
    # For simplex sources the square check is replaced by 1: ok * (1 - hot + hot * sq_ok)
    sq_ok = squares.eq(SCALE * SCALE)
    return ok * (sq_ok * hot + (1 - hot))


def tally(x, gammas):
    """v[q, j] = sum_s gammas[q, s] * x[s, q, j], shares times public integers:
    local, exact, no communication. gammas: public int64 torch tensor [Q, S]."""
    return (x * gammas.t().unsqueeze(-1)).sum(0)


def argmax_tree(v):
    """Max and argmax over the last axis with a pairwise tree that carries the
    index; ties go to the lower index (the left operand wins when a >= b), as
    numpy's argmax. v: shared [Q, C] -> (shared max [Q], shared index [Q])."""
    import torch

    q, c = v.size(0), v.size(1)
    values = v
    indices = torch.arange(c, dtype=torch.long).expand(q, c).clone()   # public until the first step
    while values.size(1) > 1:
        n = values.size(1)
        even = n - n % 2
        a, b = values[:, 0:even:2], values[:, 1:even:2]
        ia, ib = indices[:, 0:even:2], indices[:, 1:even:2]
        left = a.ge(b)                                   # 1: keep the left (lower index)
        top = left * (a - b) + b
        top_idx = left * (ia - ib) + ib                  # shared * (public or shared) + ...
        if n % 2:
            top = _cat([top, values[:, n - 1:n]])
            top_idx = _cat([top_idx, indices[:, n - 1:n]])
        values, indices = top, top_idx
    return values[:, 0], indices[:, 0]


def _cat(parts):
    import crypten
    import torch

    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts, dim=1)
    parts = [p if not isinstance(p, torch.Tensor) else crypten.cryptensor(p, precision=0) for p in parts]
    return crypten.cat(parts, dim=1)
