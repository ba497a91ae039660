"""A party's inbox: the shares sources send it over gRPC (`Party.SubmitShares`),
held until their query is evaluated.

Each envelope is verified (the source's key from the principals file, the
signature on the exact bytes, this party's index) and opened on arrival;
what it holds is kept in memory only. Refused: an unknown source, a bad
signature, a share meant for another party, a second share from a source for a
query still pending (a replay), a share for a query already evaluated (late),
more classes or more pending bytes than the limits. A party that restarts loses its pending
shares (its sources resubmit); evaluated queries stay refused, since the
party's ledger knows them — so a query whose batch failed after the parties
took its shares is asked again under a new query id.
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np

from ..errors import PartyRefusal, SubmissionError
from .sharing import open_submission

_AUTH_PROBLEMS = ("unknown source", "bad signature", "signed by")
# What one pending share costs beyond its bytes (dict slot, key tuple, array header),
# counted so that many tiny shares cannot exhaust memory under the byte limit.
_ENTRY_OVERHEAD = 256


class ShareInbox:
    def __init__(self, rank: int, world: int, box_key, source_keys: Mapping, evaluated: set[str],
                 max_pending_bytes: int = 256 << 20, max_classes: int = 4096):
        self.rank, self.world, self.box_key = rank, world, box_key
        self.source_keys = dict(source_keys)
        self.max_pending_bytes, self.max_classes = max_pending_bytes, max_classes
        self._bytes = 0
        self._evaluated = set(evaluated)          # query ids this party has charged
        self._pending: dict[tuple[str, str], tuple[np.ndarray, bytes]] = {}
        self._lock = threading.Lock()

    def submit(self, envelope: bytes) -> int:
        """Accept one source's envelope; the number of votes it carried."""
        try:
            got = open_submission(envelope, self.rank, self.world, self.box_key, self.source_keys)
        except SubmissionError as e:
            code = "UNAUTHENTICATED" if any(p in str(e) for p in _AUTH_PROBLEMS) else "INVALID_ARGUMENT"
            raise PartyRefusal(str(e), code) from None
        commitments = got.commitments or (b"",) * len(got.query_ids)
        if got.num_classes > self.max_classes:
            raise PartyRefusal(f"{got.num_classes} classes; at most {self.max_classes}", "INVALID_ARGUMENT")
        size = got.shares.nbytes + _ENTRY_OVERHEAD * len(got.query_ids)
        with self._lock:
            for qid in got.query_ids:
                if qid in self._evaluated:
                    raise PartyRefusal(f"late: query {qid!r} was already evaluated", "FAILED_PRECONDITION")
                if (got.source_id, qid) in self._pending:
                    raise PartyRefusal(f"replay: {got.source_id!r} already submitted a share for query "
                                       f"{qid!r}", "ALREADY_EXISTS")
            if self._bytes + size > self.max_pending_bytes:
                raise PartyRefusal(f"more than {self.max_pending_bytes} bytes of shares pending",
                                   "RESOURCE_EXHAUSTED")
            for qid, share, commitment in zip(got.query_ids, got.shares, commitments):
                self._pending[(got.source_id, qid)] = (share, commitment)
            self._bytes += size
        return len(got.query_ids)

    def take(self, query_ids, source_ids, num_classes: int):
        """The shares for these queries, removed from the inbox and marked
        evaluated: (x int64[S, Q, C], opened int64[S, Q], commitments bytes[S, Q, 32])."""
        S, Q = len(source_ids), len(query_ids)
        x = np.zeros((S, Q, num_classes), dtype=np.int64)
        opened = np.zeros((S, Q), dtype=np.int64)
        commitments = np.zeros((S, Q, 32), dtype=np.uint8)
        with self._lock:
            self._evaluated.update(query_ids)
            for j, sid in enumerate(source_ids):
                for i, qid in enumerate(query_ids):
                    held = self._pending.pop((sid, qid), None)
                    if held is not None:
                        self._bytes -= held[0].nbytes + _ENTRY_OVERHEAD
                    if held is None or held[0].shape != (num_classes,):
                        continue                 # absent, or a share of the wrong width: not counted
                    x[j, i] = held[0].view(np.int64)
                    opened[j, i] = 1
                    if held[1]:
                        commitments[j, i] = np.frombuffer(held[1], dtype=np.uint8)
        return x, opened, commitments
