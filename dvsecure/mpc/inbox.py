"""A party's inbox: the shares sources send it over gRPC (`Party.SubmitShares`),
held until their query is evaluated.

Each envelope is verified (the source's key from the principals file, the
signature on the exact bytes, this party's index) and opened on arrival;
what it holds is kept in memory only. Refused: an unknown source, a bad
signature, a share meant for another party, a query id outside
`wire.limits.check_query_id`, a second share from a source for a query still
pending (a replay), a share for a query already evaluated (late), more classes
than the limit, and more pending bytes than the inbox's budget or the
source's quota. A party that restarts loses its pending shares (its sources
resubmit); evaluated queries stay refused, since the party's ledger knows
them — so a query whose batch failed after the parties took its shares is
asked again under a new query id.

Bounds, so that one authenticated source cannot fill the inbox: every pending
share costs its bytes, its query id, commitment and source id, and a fixed
overhead; each source may hold at most its quota (by default an equal part of
the budget, so a source at its quota leaves every other source its own); and
a share whose query is not evaluated within `ttl` seconds of its arrival is
dropped, freeing its bytes (checked on each submit and take). A dropped share
is not evaluated: the query goes on without it (each party drops on its own
clock; a share missing at any party is not counted by any), and the source
may send it again.
"""
from __future__ import annotations

import argparse
import threading
import time
from collections import OrderedDict
from typing import Callable, Mapping, NamedTuple

import numpy as np

from ..errors import PartyRefusal, SubmissionError, UnauthenticatedSubmission
from ..wire.limits import check_query_id
from .sharing import INDEX, open_submission

# What one pending share costs beyond its bytes (dict slot, key tuple, array header),
# counted so that many tiny shares cannot exhaust memory under the byte limit.
_ENTRY_OVERHEAD = 256
DEFAULT_MAX_PENDING_BYTES = 256 << 20
DEFAULT_TTL = 600.0               # seconds a share waits for its query to be evaluated


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text}")
        return v
    return parse


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The inbox's limits as flags of a party's command line (`dvsecure party`,
    `python -m dvsecure.mpc`); `limits_from_args` turns them into ShareInbox keywords."""
    parser.add_argument("--inbox-max-bytes", type=_positive(int), default=DEFAULT_MAX_PENDING_BYTES,
                        help="bytes of shares a listening party holds for queries not yet evaluated "
                             f"(default {DEFAULT_MAX_PENDING_BYTES})")
    parser.add_argument("--inbox-source-bytes", type=_positive(int),
                        help="of those, at most this many from one source (default: an equal part per source)")
    parser.add_argument("--inbox-ttl", type=_positive(float), default=DEFAULT_TTL,
                        help=f"seconds a share waits for its query before it is dropped (default {DEFAULT_TTL:g})")


def limits_from_args(args) -> dict:
    return {"max_pending_bytes": args.inbox_max_bytes, "max_source_bytes": args.inbox_source_bytes,
            "ttl": args.inbox_ttl}


class _Held(NamedTuple):
    share: np.ndarray
    commitment: bytes
    cost: int                     # what it counts against the budget and its source's quota
    expires: float
    layout: tuple[int, int, str]  # (rows, classes, encoding) the source declared and signed


class ShareInbox:
    def __init__(self, rank: int, world: int, box_key, source_keys: Mapping, evaluated: set[str],
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, max_classes: int = 4096,
                 max_source_bytes: int | None = None, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self.rank, self.world, self.box_key = rank, world, box_key
        self.source_keys = dict(source_keys)
        self.max_pending_bytes, self.max_classes = max_pending_bytes, max_classes
        # By default the quotas add up to the budget: no source can take another's room.
        self.max_source_bytes = max_source_bytes if max_source_bytes is not None else \
            max_pending_bytes // max(1, len(self.source_keys))
        if self.max_pending_bytes <= 0 or self.max_source_bytes <= 0 or not ttl > 0:
            raise ValueError(f"inbox limits must be positive: {max_pending_bytes} bytes, "
                             f"{self.max_source_bytes} bytes per source, ttl {ttl}s")
        self.ttl, self._clock = float(ttl), clock
        self._bytes = 0
        self._source_bytes: dict[str, int] = {}
        self._evaluated = set(evaluated)          # query ids this party has charged
        # In arrival order, which is expiry order (one ttl for all): expiring pops from the front.
        self._pending: OrderedDict[tuple[str, str], _Held] = OrderedDict()
        self._lock = threading.Lock()

    def pending_bytes(self, source_id: str | None = None) -> int:
        """What is held now, in all or from one source (as counted against the limits)."""
        with self._lock:
            return self._bytes if source_id is None else self._source_bytes.get(source_id, 0)

    def _release(self, key: tuple[str, str], held: _Held) -> None:
        self._bytes -= held.cost
        left = self._source_bytes[key[0]] - held.cost
        if left:
            self._source_bytes[key[0]] = left
        else:
            del self._source_bytes[key[0]]

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            key, held = next(iter(self._pending.items()))
            if held.expires > now:
                break
            del self._pending[key]
            self._release(key, held)

    def submit(self, envelope: bytes) -> int:
        """Accept one source's envelope; the number of votes it carried."""
        try:
            got = open_submission(envelope, self.rank, self.world, self.box_key, self.source_keys)
        except SubmissionError as e:
            # By type, never by the message, which quotes the sender's own source id.
            code = "UNAUTHENTICATED" if isinstance(e, UnauthenticatedSubmission) else "INVALID_ARGUMENT"
            raise PartyRefusal(str(e), code) from None
        sid = got.source_id
        for qid in got.query_ids:
            check_query_id(qid, PartyRefusal)
        commitments = got.commitments or (b"",) * len(got.query_ids)
        if got.num_classes > self.max_classes:
            raise PartyRefusal(f"{got.num_classes} classes; at most {self.max_classes}", "INVALID_ARGUMENT")
        fixed = got.shares.shape[1] * got.shares.itemsize + len(sid.encode()) + _ENTRY_OVERHEAD
        costs = [fixed + len(qid.encode()) + len(c) for qid, c in zip(got.query_ids, commitments)]
        size = sum(costs)
        with self._lock:
            self._expire()
            for qid in got.query_ids:
                if qid in self._evaluated:
                    raise PartyRefusal(f"late: query {qid!r} was already evaluated", "FAILED_PRECONDITION")
                if (sid, qid) in self._pending:
                    raise PartyRefusal(f"replay: {sid!r} already submitted a share for query "
                                       f"{qid!r}", "ALREADY_EXISTS")
            used = self._source_bytes.get(sid, 0)
            if used + size > self.max_source_bytes:
                raise PartyRefusal(f"source {sid!r}: {used + size} bytes of shares pending would pass its quota "
                                   f"of {self.max_source_bytes} bytes (a share waits at most {self.ttl:g} s for "
                                   f"its query)", "RESOURCE_EXHAUSTED")
            if self._bytes + size > self.max_pending_bytes:
                raise PartyRefusal(f"more than {self.max_pending_bytes} bytes of shares pending",
                                   "RESOURCE_EXHAUSTED")
            expires = self._clock() + self.ttl
            for qid, share, commitment, cost in zip(got.query_ids, got.shares, commitments, costs):
                # A copy: a row view would keep the whole envelope's array alive after the
                # other rows are taken, beyond what the budget counts.
                self._pending[(sid, qid)] = _Held(share.copy(), commitment, cost, expires, (got.rows, got.num_classes,
                                                                                         got.encoding))
            self._bytes += size
            self._source_bytes[sid] = used + size
        return len(got.query_ids)

    def held(self, query_ids, source_ids) -> np.ndarray:
        """uint8[S, Q]: 1 where this party holds a share of source s for query q (who
        submitted is public: the log states it). Lets the coordinator stop waiting
        once everyone has submitted."""
        with self._lock:
            self._expire()
            return np.array([[(sid, qid) in self._pending for qid in query_ids] for sid in source_ids],
                            dtype=np.uint8).reshape(len(source_ids), len(query_ids))

    def take(self, query_ids, source_ids, num_classes: int, rows=None, encodings=None):
        """The shares for these queries, removed from the inbox and marked
        evaluated: (x int64[R, Q, C] of FIXED rows, k int64[R, Q] of INDEX rows,
        opened int64[S, Q], commitments bytes[S, Q, 32]), where source j's vote
        fills rows[j] consecutive rows (its m slices for a histogram; rows None:
        one each) in encodings[j] (None: INDEX). A share that has expired, or has
        another layout than its source's votes, is not among them."""
        S, Q = len(source_ids), len(query_ids)
        rows = [1] * S if rows is None else [int(r) for r in rows]
        encodings = [INDEX] * S if encodings is None else list(encodings)
        offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int)
        x = np.zeros((int(offsets[-1]), Q, num_classes), dtype=np.int64)
        k = np.zeros((int(offsets[-1]), Q), dtype=np.int64)
        opened = np.zeros((S, Q), dtype=np.int64)
        commitments = np.zeros((S, Q, 32), dtype=np.uint8)
        with self._lock:
            self._expire()
            self._evaluated.update(query_ids)
            for j, sid in enumerate(source_ids):
                for i, qid in enumerate(query_ids):
                    held = self._pending.pop((sid, qid), None)
                    if held is not None:
                        self._release((sid, qid), held)
                    if held is None or held.layout != (rows[j], num_classes, encodings[j]):
                        continue                 # absent, or not its policy's vote layout (as the relay path)
                    if encodings[j] == INDEX:
                        k[offsets[j]:offsets[j + 1], i] = held.share
                    else:
                        x[offsets[j]:offsets[j + 1], i] = held.share.view(np.int64).reshape(rows[j], num_classes)
                    opened[j, i] = 1
                    if held.commitment:
                        commitments[j, i] = np.frombuffer(held.commitment, dtype=np.uint8)
        return x, k, opened, commitments
