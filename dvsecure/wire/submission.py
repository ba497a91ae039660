"""A source's submission for one query, and the commitment the log records.

The log holds, per query and source, SHA-256 over the submission framed with
the query id, the source id and a 32-byte nonce the source chose
(`entry.commitment`). The source keeps the nonce, so it alone can later show —
and check in its receipt — which vote was counted for it; without the nonce the
commitment reveals nothing a guess could confirm.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import numpy as np

from ..log import entry

# What json.dumps(vote, separators=(",", ":"), allow_nan=True) builds on every
# call; encode() keeps no state between calls, so one instance serves them all.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True)


def vote_payload(vote) -> bytes:
    """The bytes committed to for a plaintext vote: its compact JSON (the vote as
    submitted, valid or not; NaN and infinities included as JSON extensions)."""
    if type(vote) is int:
        return int.__repr__(vote).encode()    # exactly what the JSON encoder writes for an int
    if isinstance(vote, np.ndarray):
        vote = vote.tolist()
    elif isinstance(vote, np.generic):
        vote = vote.item()
        if type(vote) is int:
            return int.__repr__(vote).encode()
    try:
        return _COMPACT_JSON.encode(vote).encode()
    except (TypeError, ValueError):
        return repr(vote).encode()


@dataclass(frozen=True)
class Submission:
    """One vote and the nonce that makes its commitment hiding."""

    vote: object
    nonce: bytes

    @classmethod
    def new(cls, vote) -> "Submission":
        return cls(vote, secrets.token_bytes(32))

    def commitment(self, query_id: str, source_id: str) -> bytes:
        return entry.commitment(query_id, source_id, self.nonce, vote_payload(self.vote))
