"""Vote validation and fixed-point encoding.

A valid vote is one-hot (exactly one entry 1, the rest 0), or, where the source's
policy allows, a probability vector (entries in [0, 1] summing to 1), or, for a
slice-unit source with m slices, the histogram of its slices' votes (non-negative
integer counts summing to m; `slice_histogram` builds one from m class indices).
Encoded votes are int64 at scale 2**16: one-hot and simplex votes sum to exactly
2**16, a histogram's counts times 2**16 sum to m * 2**16, and each is tallied
with the weight gamma/m per unit (m = 1 for one-hot and simplex), an exact
multiple of 2**-16. So one source moves the tally by at most sqrt(2)*gamma in L2
and the max tally by at most gamma; one slice of a slice-unit source by
sqrt(2)*gamma/m and gamma/m.

An invalid vote does not raise: the source is excluded from that query (gamma 0,
charge 0) and named with the reason. Whether a submission is well-formed is the
source's own protocol compliance, not its data, and it is public.
"""
from __future__ import annotations

import decimal
import numbers

from dataclasses import dataclass

import numpy as np

from ..errors import VoteError
from ..policy import HISTOGRAM, ONE_HOT, SIMPLEX
from .fixedpoint import SCALE

SIMPLEX_TOLERANCE = 1e-6  # |sum - 1| accepted before exact re-normalisation on the grid


class InvalidVote(Exception):
    """Internal signal: this source's vote for this query is rejected (reason in args[0])."""


@dataclass(frozen=True)
class VoteFormat:
    """What a source's vote is: its kind and, for a histogram, its slice count m
    (the number of units its vote is made of; 1 for one-hot and simplex votes)."""

    kind: str = ONE_HOT
    slices: int = 1

    def __post_init__(self) -> None:
        if self.kind not in (ONE_HOT, SIMPLEX, HISTOGRAM):
            raise ValueError(f"unknown vote kind {self.kind!r}")
        if isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1 \
                or (self.kind != HISTOGRAM and self.slices != 1):
            raise ValueError(f"a {self.kind} vote cannot have {self.slices!r} slices")


def vote_format(kind) -> VoteFormat:
    """A VoteFormat, or a kind string of a one-unit vote ("one-hot", "simplex")."""
    if isinstance(kind, VoteFormat):
        return kind
    if kind == HISTOGRAM:
        raise ValueError("a histogram vote needs its slice count: pass VoteFormat(HISTOGRAM, m)")
    return VoteFormat(kind)


def slice_histogram(slice_votes, num_classes: int) -> list[int]:
    """The histogram vote of a slice-unit source from its m slices' class indices:
    counts[j] = how many slices voted for class j. Raises VoteError on a bad index."""
    counts = [0] * num_classes
    for k in slice_votes:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= int(k) < num_classes:
            raise VoteError(f"slice vote {k!r} is not a class index in [0, {num_classes})")
        counts[int(k)] += 1
    return counts


def encode_vote(vote, num_classes: int, kind=ONE_HOT) -> np.ndarray:
    """Validate one source's vote and return it as int64[num_classes] at scale 2**16.

    `vote` is a class index (int) or a length-C sequence; `kind` a VoteFormat or
    the name of a one-unit kind. Raises InvalidVote."""
    fmt = vote_format(kind)
    if fmt.kind == HISTOGRAM:
        return _encode_histogram(vote, num_classes, fmt.slices)
    kind = fmt.kind
    if isinstance(vote, numbers.Integral) and not isinstance(vote, bool):
        if not 0 <= int(vote) < num_classes:
            raise InvalidVote(f"class index {int(vote)} outside [0, {num_classes})")
        out = np.zeros(num_classes, dtype=np.int64)
        out[int(vote)] = SCALE
        return out
    arr = real_vector(vote)
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


def _encode_histogram(vote, num_classes: int, m: int) -> np.ndarray:
    """Counts of the m slice votes: non-negative integers summing to m, times 2**16.
    A bare class index is not a histogram (it would hide how many slices voted)."""
    if isinstance(vote, numbers.Integral) and not isinstance(vote, bool):
        raise InvalidVote(f"a class index, not the histogram of {m} slice votes")
    arr = real_vector(vote)
    if arr.shape != (num_classes,):
        raise InvalidVote(f"shape {arr.shape} != ({num_classes},)")
    if not np.all(np.isfinite(arr)):
        raise InvalidVote("non-finite entry")
    if np.any(arr < 0) or np.any(arr > m):
        raise InvalidVote(f"count outside [0, {m}]")
    if np.any(arr != np.floor(arr)):
        raise InvalidVote("count that is not an integer")
    counts = arr.astype(np.int64)
    if int(counts.sum()) != m:
        raise InvalidVote(f"counts sum to {int(counts.sum())}, not {m} slices")
    return counts * SCALE


def _is_real_scalar(x) -> bool:
    return isinstance(x, (numbers.Real, decimal.Decimal)) and not isinstance(x, (bool, np.bool_))


def real_vector(vote) -> np.ndarray:
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
    """Encode a query's votes, one per source (None = absent); kinds: one
    VoteFormat (or one-unit kind name) per source.

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
