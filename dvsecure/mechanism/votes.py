"""Vote validation and fixed-point encoding.

A valid vote is one-hot (exactly one entry 1, the rest 0), or, where the source's
policy allows, a probability vector (entries in [0, 1] summing to 1), or, for a
slice-unit source with m slices, the histogram of its slices' votes (non-negative
integer counts summing to m; `slice_histogram` builds one from m class indices).

Every vote is encoded as a histogram of unit votes: int64 counts times 2**16,
tallied with the weight gamma/m per unit (`VoteFormat.units` = m; gamma is a
multiple of m * 2**-16, so gamma/m is exact). A one-hot vote is one unit; a slice
histogram is m; a probability vector p is rounded to m = the policy's resolution
unit votes by unbiased randomised rounding (`round_simplex`): each count is the
floor or the ceiling of m * p_c, they sum to m, and E[counts / m] = p exactly.
The randomness is a public, deterministic function of the consortium, the query
id, the source id and the vote, so the source's MPC client (which sends the m
units as class indices), the plaintext backend, the enclave and calibration
all produce the same histogram for the same vote.

Sensitivity is that of any vote: counts / m is a point of the simplex, so one
source moves the tally by at most sqrt(2)*gamma in L2 and the max tally by at
most gamma, rounding or not (the charges do not change); one slice of a
slice-unit source by sqrt(2)*gamma/m and gamma/m.

An invalid vote does not raise: the source is excluded from that query (gamma 0,
charge 0) and named with the reason. Whether a submission is well-formed is the
source's own protocol compliance, not its data, and it is public.
"""
from __future__ import annotations

import decimal
import hashlib
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError, VoteError
from ..policy import DEFAULT_RESOLUTION, HISTOGRAM, MAX_RESOLUTION, ONE_HOT, SIMPLEX, resolution_ok
from .fixedpoint import SCALE

SIMPLEX_TOLERANCE = 1e-6  # |sum - 1| accepted before exact re-normalisation
_ROUNDING_DOMAIN = b"dvsecure/simplex-rounding/v1"
_MAX_U_BITS = 1 << 14     # U vs a threshold undecided after this many bits: probability 2**-16384


class InvalidVote(Exception):
    """Internal signal: this source's vote for this query is rejected (reason in args[0])."""


@dataclass(frozen=True)
class VoteFormat:
    """What a source's vote is: its kind; for a histogram, its slice count m; for a
    simplex vote, its resolution m (the unit votes it is rounded to) and whose vote
    it is (consortium and source id: with the query id they key the rounding). A
    source's own format is `SourcePolicy.vote_format`."""

    kind: str = ONE_HOT
    slices: int = 1
    resolution: int | None = None     # simplex only (None: DEFAULT_RESOLUTION)
    consortium: str | None = None
    source_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (ONE_HOT, SIMPLEX, HISTOGRAM):
            raise ValueError(f"unknown vote kind {self.kind!r}")
        if isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1 \
                or (self.kind != HISTOGRAM and self.slices != 1):
            raise ValueError(f"a {self.kind} vote cannot have {self.slices!r} slices")
        if self.kind == SIMPLEX:
            if self.resolution is None:
                object.__setattr__(self, "resolution", DEFAULT_RESOLUTION)
            if not resolution_ok(self.resolution):
                raise ValueError(f"a simplex resolution must be a power of two dividing 2**16 (1 .. {MAX_RESOLUTION}), "
                                 f"got {self.resolution!r}")
        elif self.resolution is not None:
            raise ValueError(f"a {self.kind} vote has no resolution (got {self.resolution!r})")

    @property
    def units(self) -> int:
        """Unit votes per vote, each tallied at gamma/units: m slices, the simplex
        resolution m, or 1 for a one-hot vote."""
        if self.kind == HISTOGRAM:
            return self.slices
        return self.resolution if self.kind == SIMPLEX else 1


def vote_format(kind) -> VoteFormat:
    """A VoteFormat, or a kind string ("one-hot"; "simplex" at the default
    resolution, with no source: it can encode nothing that needs rounding)."""
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


def encode_vote(vote, num_classes: int, kind=ONE_HOT, query_id: str | None = None) -> np.ndarray:
    """Validate one source's vote and return it as int64[num_classes]: counts of
    unit votes (`VoteFormat.units` of them) times 2**16.

    `vote` is a class index (int) or a length-C sequence; `kind` a VoteFormat or
    the name of a kind. A simplex vote needs `query_id` and a format naming its
    consortium and source (`SourcePolicy.vote_format`): they key its rounding, so
    without them it raises ParameterError (a caller's mistake, never an invalid
    vote). Raises InvalidVote."""
    fmt = vote_format(kind)
    if fmt.kind == HISTOGRAM:
        return _encode_histogram(vote, num_classes, fmt.slices)
    kind = fmt.kind
    if kind == SIMPLEX:
        _check_rounding_context(fmt, query_id)
    if isinstance(vote, numbers.Integral) and not isinstance(vote, bool):
        if not 0 <= int(vote) < num_classes:
            raise InvalidVote(f"class index {int(vote)} outside [0, {num_classes})")
        out = np.zeros(num_classes, dtype=np.int64)
        out[int(vote)] = fmt.units * SCALE          # every unit vote on that class: no rounding
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
    total = float(arr.sum())
    if abs(total - 1.0) > SIMPLEX_TOLERANCE:
        raise InvalidVote(f"entries sum to {total!r}, not 1")
    return _quantize_simplex(arr, fmt, query_id) * SCALE


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


def _check_rounding_context(fmt: VoteFormat, query_id) -> None:
    missing = [name for name, v in (("the consortium", fmt.consortium), ("the source id", fmt.source_id),
                                    ("the query id", query_id)) if not isinstance(v, str) or not v]
    if missing:
        raise ParameterError(f"a simplex vote is rounded with randomness keyed by its consortium, source and "
                             f"query, so encoding one needs the source's SourcePolicy.vote_format and the query "
                             f"id; missing: {', '.join(missing)}")


class _Uniform:
    """One U uniform on [0, 1): the bits of a SHAKE-256 output (FIPS 202, an
    extendable-output function: a longer output extends a shorter one), read
    lazily, so that comparing U with a rational threshold is exact."""

    def __init__(self, xof):
        self._xof, self._bits = xof, 64
        self._prefix = int.from_bytes(xof.digest(8), "big")          # floor(U * 2**bits)

    def below(self, num: int, den: int) -> bool:
        """U < num/den, for 0 <= num < den."""
        if num == 0:
            return False
        while True:
            t = (num << self._bits) // den                             # floor(threshold * 2**bits)
            if self._prefix != t or self._bits >= _MAX_U_BITS:
                return self._prefix < t
            self._bits *= 2                                            # undecided: read more of U
            self._prefix = int.from_bytes(self._xof.digest(self._bits // 8), "big")


def systematic_round(weights, m: int, below) -> list[int]:
    """Counts c_j summing to m with E[c_j] = m * w_j / sum(w), each the floor or the
    ceiling of m * w_j / sum(w): systematic sampling (Madow 1949, "On the theory of
    systematic sampling II", Ann. Math. Statist. 20; the systematic resampling of
    Douc, Cappe & Moulines 2005, "Comparison of resampling schemes for particle
    filtering"). With S_j = m * (w_1 + ... + w_j) / sum(w) and one U uniform on
    [0, 1), c_j counts the points U, U + 1, ..., U + m - 1 in [S_{j-1}, S_j):
    N(S) = floor(S) + [U < frac(S)] of them lie below S, and E[N(S)] = S.

    weights: non-negative integers, not all 0 (exact: no float rounding enters);
    below(num, den): whether U < num/den. Hand-written: no maintained library
    offers this rounding driven by a given uniform."""
    total = sum(weights)
    counts, acc, before = [], 0, 0
    for w in weights:
        acc += w
        whole, rest = divmod(m * acc, total)
        upto = whole + below(rest, total)
        counts.append(upto - before)
        before = upto
    return counts


def _quantize_simplex(arr: np.ndarray, fmt: VoteFormat, query_id: str) -> np.ndarray:
    """The histogram of fmt.resolution unit votes a probability vector is rounded
    to: int64 counts summing to m, unbiased for the vector renormalised exactly
    (`systematic_round`). U is a deterministic function of (consortium, source
    id, query id, m, the vote's exact value): the same vote of the same source for
    the same query is rounded alike by every backend, and over queries the
    rounding is unbiased (U is SHAKE-256 output, modelled as uniform)."""
    ratios = [float(x).as_integer_ratio() for x in arr]               # exact: floats are dyadic rationals
    den = max(d for _, d in ratios)
    weights = [n * (den // d) for n, d in ratios]                     # the vote's value, exactly, times den
    xof = hashlib.shake_256()
    for part in (_ROUNDING_DOMAIN, fmt.consortium.encode(), fmt.source_id.encode(), query_id.encode(),
                 f"{fmt.resolution}:{den}:{','.join(map(str, weights))}".encode()):
        xof.update(len(part).to_bytes(8, "big") + part)               # length-prefixed: unambiguous
    return np.array(systematic_round(weights, fmt.resolution, _Uniform(xof).below), dtype=np.int64)


def encode_votes(votes, kinds, num_classes: int, query_id: str | None = None):
    """Encode a query's votes, one per source (None = absent); kinds: one
    VoteFormat (or kind name) per source; query_id: the query's id (needed to
    round simplex votes, `encode_vote`).

    Returns (int64[S, C] encoded votes, list of None | reason string per source:
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
            fixed[i] = encode_vote(vote, num_classes, kind, query_id)
            problems.append(None)
        except InvalidVote as e:
            problems.append(f"invalid: {e.args[0]}")
    return fixed, problems
