"""Vote validation and fixed-point encoding.

A valid vote is one-hot (exactly one entry 1, the rest 0) or, where the source's
policy allows, a probability vector (entries in [0, 1] summing to 1). Encoded
votes are int64 at scale 2**16 summing to exactly 2**16, so one source moves the
tally by at most sqrt(2)*gamma in L2 and the max tally by at most gamma.

An invalid vote does not raise: the source is excluded from that query (gamma 0,
charge 0) and named with the reason. Whether a submission is well-formed is the
source's own protocol compliance, not its data, and it is public.
"""
from __future__ import annotations

import decimal
import numbers

import numpy as np

from ..errors import VoteError
from ..policy import ONE_HOT, SIMPLEX
from .fixedpoint import SCALE

SIMPLEX_TOLERANCE = 1e-6  # |sum - 1| accepted before exact re-normalisation on the grid


class InvalidVote(Exception):
    """Internal signal: this source's vote for this query is rejected (reason in args[0])."""


def encode_vote(vote, num_classes: int, kind: str = ONE_HOT) -> np.ndarray:
    """Validate one source's vote and return it as int64[num_classes] at scale 2**16.

    `vote` is a class index (int) or a length-C sequence. Raises InvalidVote."""
    if isinstance(vote, numbers.Integral) and not isinstance(vote, bool):
        if not 0 <= int(vote) < num_classes:
            raise InvalidVote(f"class index {int(vote)} outside [0, {num_classes})")
        out = np.zeros(num_classes, dtype=np.int64)
        out[int(vote)] = SCALE
        return out
    arr = _real_vector(vote)
    if arr.shape != (num_classes,):
        raise InvalidVote(f"shape {arr.shape} != ({num_classes},)")
    if not np.all(np.isfinite(arr)):
        raise InvalidVote("non-finite entry")
    if np.any(arr < 0) or np.any(arr > 1):
        raise InvalidVote("entry outside [0, 1]")
    if kind == ONE_HOT:
        if not (np.all((arr == 0) | (arr == 1)) and np.count_nonzero(arr) == 1):
            raise InvalidVote("not one-hot")
        return (arr * SCALE).astype(np.int64)
    if kind != SIMPLEX:
        raise ValueError(f"unknown vote kind {kind!r}")
    total = float(arr.sum())
    if abs(total - 1.0) > SIMPLEX_TOLERANCE:
        raise InvalidVote(f"entries sum to {total!r}, not 1")
    return _quantize_simplex(arr / total)


def _is_real_scalar(x) -> bool:
    return isinstance(x, (numbers.Real, decimal.Decimal)) and not isinstance(x, (bool, np.bool_))


def _real_vector(vote) -> np.ndarray:
    """The vote as float64, refusing anything whose entries are not real numbers.

    A plain float64 conversion would parse strings ("1" -> 1.0), read booleans as
    0/1 and drop imaginary parts, accepting submissions that are not numeric votes."""
    try:
        raw = np.asarray(vote)
    except (TypeError, ValueError):
        raise InvalidVote(f"not a numeric vector: {type(vote).__name__}") from None
    kind = raw.dtype.kind
    if kind == "O":
        if not all(_is_real_scalar(x) for x in raw.flat):
            raise InvalidVote(f"not a numeric vector: {type(vote).__name__} with non-numeric entries")
    elif kind not in "iuf":
        raise InvalidVote(f"not a numeric vector: {type(vote).__name__} of dtype {raw.dtype}")
    try:
        return raw.astype(np.float64)
    except OverflowError:
        raise InvalidVote("entry outside [0, 1]") from None
    except (TypeError, ValueError):
        raise InvalidVote(f"not a numeric vector: {type(vote).__name__}") from None


def _quantize_simplex(p: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding to integers summing to exactly 2**16 (ties to the
    lowest index), so the encoded vote is still on the simplex."""
    scaled = p * SCALE
    base = np.floor(scaled).astype(np.int64)
    short = int(SCALE - base.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(p)), -(scaled - base)))
        base[order[:short]] += 1
    return base


def encode_votes(votes, kinds, num_classes: int):
    """Encode a query's votes, one per source (None = absent).

    Returns (int64[S, C] fixed votes, list of None | reason string per source:
    "absent" or "invalid: ...")."""
    votes, kinds = list(votes), list(kinds)
    if len(votes) != len(kinds):
        # zip() would silently drop votes or leave sources without a verdict.
        raise VoteError(f"expected one vote per source ({len(kinds)}), got {len(votes)}")
    fixed = np.zeros((len(kinds), num_classes), dtype=np.int64)
    problems: list[str | None] = []
    for i, (vote, kind) in enumerate(zip(votes, kinds)):
        if vote is None:
            problems.append("absent")
            continue
        try:
            fixed[i] = encode_vote(vote, num_classes, kind)
            problems.append(None)
        except InvalidVote as e:
            problems.append(f"invalid: {e.args[0]}")
    return fixed, problems
