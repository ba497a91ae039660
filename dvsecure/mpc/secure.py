"""The secure pipeline, run identically by every computing party on its shares.

All arithmetic is on integers (CrypTen precision 0): votes at 2**16, weights in
2**-16 units, tallies at 2**32 — the plaintext backend's exact grid, so with the
same noise the released outputs are the same, and no multiplication ever needs
a truncation round. Comparisons are CrypTen's (exact on the signed 64-bit ring).

Only these are ever revealed: the uniform masks of the one-time tables that
turn index votes into one-hot shares (`tables.py`), whether each simplex vote
is valid (`validate_simplex`), one answered bit per query, and the label of
answered queries.
"""
from __future__ import annotations

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
