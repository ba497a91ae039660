"""Client-side secret sharing of votes for the MPC backend, and the signed, sealed
submission envelope.

A source encodes each vote as class indices, one per unit vote — a one-hot vote
as its class index, a slice-unit source's histogram of m slice votes as the m
slices' class indices, a simplex vote as the m class indices of the histogram it
is rounded to (`mechanism.votes`, resolution m; the plaintext backend rounds it
alike), each in class order — shares them additively modulo C ("index"
encoding: every share vector is some valid vote, `tables.py`) with the
operating system's CSPRNG (n - 1 uniform shares, the last fixing the sum),
seals share i to party i's
X25519 key (NaCl sealed box: only party i can open it, and it learns nothing
about the sender from the box), and signs each party's submission with its
Ed25519 key, binding the source id, the query ids, the number of classes and
the party index — so a party cannot pass its share off as another party's, and
a submission cannot be replayed for other queries.

Any n - 1 shares are uniformly distributed whatever the vote, so no party (or
any n - 1 of them) learns anything from what it receives.

Wire format: `Signed(source_id, body, signature)` where `body` is the exact
bytes of a `ShareSubmission`; the signature is checked on those bytes, with the
key of the named source, before they are decoded (never re-encoded).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import msgspec
import numpy as np
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from ..errors import SubmissionError, UnauthenticatedSubmission, VoteError
from ..mechanism.fixedpoint import SCALE
from ..mechanism.votes import InvalidVote, encode_vote, vote_format
from ..policy import MAX_RESOLUTION, MAX_SLICES, ONE_HOT
from .tables import index_shares

VERSION = 2                # 2: votes travel as shared class indices
RING_BITS = 64
# FIXED (2**16 fixed-point vectors shared mod 2**64) is still decoded, but no policy
# asks for it any more: a party refuses it, as not its policy's encoding.
INDEX, FIXED = "index", "fixed"
MAX_ROWS = max(MAX_SLICES, MAX_RESOLUTION)
_DOMAIN = b"dvsecure/share-submission/v1\x00"


class ShareSubmission(msgspec.Struct, forbid_unknown_fields=True):
    v: int
    source_id: str
    query_ids: list[str]
    num_classes: int
    party_index: int
    num_parties: int
    sealed: bytes            # SealedBox(party key) of uint64 LE shares: [Q, rows] (index), [Q, rows, C] (fixed)
    # The source's commitment to each vote (entry.commitment: SHA-256 under its own
    # nonce), the same in every party's message; the log records it so the source
    # can find its vote there. Empty: the coordinator supplies the commitments.
    commitments: list[bytes] = []
    rows: int = 1            # class indices per vote: one per unit vote (m for a histogram or a simplex vote)
    encoding: str = FIXED    # INDEX: class indices shared mod num_classes; FIXED: vectors shared mod 2**64


class Signed(msgspec.Struct, forbid_unknown_fields=True):
    source_id: str           # whose key to verify with (the body repeats it, signed)
    body: bytes              # the exact bytes that were signed
    signature: bytes


_body_decoder = msgspec.msgpack.Decoder(ShareSubmission)
_signed_decoder = msgspec.msgpack.Decoder(Signed)


# ---- shares ------------------------------------------------------------------------


def share(values: np.ndarray, num_parties: int) -> np.ndarray:
    """Additive shares of int64 `values` modulo 2**64: uint64[num_parties, *shape].
    Randomness from os.urandom (the OS CSPRNG), never from a seeded PRNG."""
    if num_parties < 2:
        raise VoteError(f"need at least 2 parties to share a vote, got {num_parties}")
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise VoteError(f"shares are of integer fixed-point values, got dtype {values.dtype}")
    flat = values.astype(np.int64).view(np.uint64)
    count = flat.size
    random = np.frombuffer(os.urandom(8 * count * (num_parties - 1)), dtype="<u8")
    out = np.empty((num_parties,) + values.shape, dtype=np.uint64)
    out[:-1] = random.reshape((num_parties - 1,) + values.shape)
    with np.errstate(over="ignore"):
        out[-1] = flat.reshape(values.shape) - out[:-1].sum(axis=0, dtype=np.uint64)
    return out


def reconstruct(shares: np.ndarray) -> np.ndarray:
    """The int64 values whose shares these are (sum modulo 2**64)."""
    with np.errstate(over="ignore"):
        return np.asarray(shares, dtype=np.uint64).sum(axis=0, dtype=np.uint64).view(np.int64)


def wire_encoding(kind) -> str:
    """INDEX for every vote kind: class indices, valid by construction."""
    vote_format(kind)
    return INDEX


def wire_rows(kind) -> int:
    """Class indices per vote on the wire: one per unit vote (m for a histogram
    or a simplex vote of resolution m, 1 for a one-hot vote)."""
    return vote_format(kind).units


def histogram_indices(counts: np.ndarray) -> np.ndarray:
    """The m class indices of a histogram of m unit votes (counts int[C]
    summing to m), in class order: int64[m]."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.arange(len(counts)), counts)


def encode_batch(votes: Sequence, num_classes: int, kind=ONE_HOT, query_ids: Sequence[str] | None = None) -> np.ndarray:
    """An honest source's votes, validated and encoded for the wire: the class
    indices of each vote's unit votes, int64[Q, wire_rows(kind)]. query_ids: the
    votes' queries, needed to round simplex votes (with a `kind` that is the
    source's own `SourcePolicy.vote_format`). A vote that is not valid for its
    kind is refused here, before anything is sent."""
    fmt = vote_format(kind)
    if query_ids is not None and len(query_ids) != len(votes):
        raise VoteError(f"{len(votes)} votes for {len(query_ids)} query ids")
    qids = [None] * len(votes) if query_ids is None else list(query_ids)
    if not len(votes):
        return np.zeros((0, wire_rows(fmt)), np.int64)
    try:
        units = [encode_vote(v, num_classes, fmt, q) // SCALE for v, q in zip(votes, qids)]
    except InvalidVote as e:
        raise VoteError(f"refusing to submit an invalid vote: {e}") from None
    return np.stack([histogram_indices(c) for c in units])


# ---- keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartyKeys:
    """A computing party's X25519 key pair for receiving sealed shares."""

    private: PrivateKey

    @classmethod
    def generate(cls) -> "PartyKeys":
        return cls(PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        return self.private.public_key


# ---- submissions ---------------------------------------------------------------------------


def seal_submissions(source_id: str, signing_key: SigningKey, query_ids: Sequence[str],
                     encoded: np.ndarray, party_keys: Sequence[PublicKey],
                     commitments: Sequence[bytes] = (), *, kind=ONE_HOT, num_classes: int) -> list[bytes]:
    """One signed, sealed message per party for a batch of queries of `num_classes`
    classes. `encoded` (`encode_batch`): the class indices of each vote's unit
    votes, int64[Q, wire_rows(kind)]. `commitments`: none, or one 32-byte
    commitment per query."""
    encoded = np.asarray(encoded)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise VoteError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    rows, encoding = wire_rows(kind), wire_encoding(kind)
    if encoded.ndim != 2 or encoded.shape != (len(query_ids), rows):
        raise VoteError(f"expected {encoding} votes of shape [{len(query_ids)}, {rows}], got {encoded.shape}")
    if len(set(query_ids)) != len(query_ids) or not all(isinstance(q, str) and q for q in query_ids):
        raise VoteError("query ids must be distinct non-empty strings")
    commitments = [bytes(c) for c in commitments]
    if commitments and (len(commitments) != len(query_ids) or any(len(c) != 32 for c in commitments)):
        raise VoteError("commitments must be one 32-byte commitment per query")
    n = len(party_keys)
    try:
        shares = index_shares(encoded, n, num_classes).view(np.uint64)
    except ValueError as e:
        raise VoteError(str(e)) from None
    out = []
    for i, pk in enumerate(party_keys):
        sealed = SealedBox(pk).encrypt(shares[i].astype("<u8").tobytes())
        body = msgspec.msgpack.encode(ShareSubmission(
            v=VERSION, source_id=source_id, query_ids=list(query_ids), num_classes=int(num_classes),
            party_index=i, num_parties=n, sealed=bytes(sealed), commitments=commitments, rows=rows,
            encoding=encoding))
        signature = signing_key.sign(_DOMAIN + body).signature
        out.append(msgspec.msgpack.encode(Signed(source_id=source_id, body=body, signature=signature)))
    return out


@dataclass(frozen=True)
class OpenedShare:
    source_id: str
    query_ids: tuple[str, ...]
    num_classes: int
    shares: np.ndarray        # this party's share of each vote: int64[Q, rows] in 0..C-1 (INDEX), uint64[Q, rows*C]
    body: bytes               # the exact signed bytes
    commitments: tuple[bytes, ...] = ()     # the source's commitment per query, if it sent them
    rows: int = 1             # class indices per vote (one per unit vote)
    encoding: str = FIXED


def open_submission(message: bytes, party_index: int, num_parties: int, party_key: PrivateKey,
                    source_keys: Mapping[str, VerifyKey]) -> OpenedShare:
    """Verify and open one message at party `party_index`. Raises SubmissionError
    naming the problem: malformed, unknown source, bad signature, meant for another
    party or another party count, undecryptable, or of the wrong size."""
    try:
        signed = _signed_decoder.decode(message)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SubmissionError(f"malformed submission: {e}") from None
    key = source_keys.get(signed.source_id)
    if key is None:
        raise UnauthenticatedSubmission(f"submission from unknown source {signed.source_id!r}")
    try:
        key.verify(_DOMAIN + signed.body, signed.signature)
    except (BadSignatureError, ValueError):
        raise UnauthenticatedSubmission(f"bad signature on the submission of source {signed.source_id!r}") from None
    try:
        sub = _body_decoder.decode(signed.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise SubmissionError(f"malformed submission body from {signed.source_id!r}: {e}") from None
    if sub.source_id != signed.source_id:
        raise UnauthenticatedSubmission(f"submission signed by {signed.source_id!r} names source {sub.source_id!r}")
    if sub.v != VERSION:
        raise SubmissionError(f"submission version {sub.v} is not {VERSION}")
    if sub.party_index != party_index or sub.num_parties != num_parties:
        raise SubmissionError(f"submission of {sub.source_id!r} is for party {sub.party_index} of "
                              f"{sub.num_parties}, not party {party_index} of {num_parties}")
    try:
        raw = SealedBox(party_key).decrypt(sub.sealed)
    except CryptoError:
        raise SubmissionError(f"the share of {sub.source_id!r} does not decrypt with this party's key") from None
    q, c, r = len(sub.query_ids), sub.num_classes, sub.rows
    if len(set(sub.query_ids)) != q:
        raise SubmissionError(f"submission of {sub.source_id!r} names a query twice")
    if not 1 <= r <= MAX_ROWS:
        raise SubmissionError(f"submission of {sub.source_id!r} has {r} rows per vote, not 1..{MAX_ROWS}")
    if sub.encoding not in (INDEX, FIXED):
        raise SubmissionError(f"submission of {sub.source_id!r} has unknown encoding {sub.encoding!r}")
    per_row = 1 if sub.encoding == INDEX else c
    if c < 2 or len(raw) != 8 * q * r * per_row:
        raise SubmissionError(f"share of {sub.source_id!r} holds {len(raw)} bytes, expected {8 * q * r * per_row} "
                              f"({q} queries x {r} rows x {per_row} values, {sub.encoding} encoding)")
    if sub.commitments and (len(sub.commitments) != q or any(len(x) != 32 for x in sub.commitments)):
        raise SubmissionError(f"submission of {sub.source_id!r} carries malformed commitments")
    shares = np.frombuffer(raw, dtype="<u8").reshape(q, r * per_row).astype(np.uint64)
    if sub.encoding == INDEX:
        # Any 64-bit word is some share modulo C: whatever a source sends is some valid vote.
        shares = (shares % np.uint64(c)).astype(np.int64)
    return OpenedShare(sub.source_id, tuple(sub.query_ids), c, shares, bytes(signed.body),
                       tuple(bytes(x) for x in sub.commitments), r, sub.encoding)
