"""Bounds on identifiers that arrive from outside, in one place.

A query id enters at the coordinator (`Aggregator.query_batch`), at every MPC
party (a source's envelope in its inbox, the coordinator's batch command) and
at the enclave (Open, Submit, Query). Each of them calls `check_query_id`, so
they all accept exactly the same ids: one party accepting an id another
refuses would leave the parties disagreeing on a batch. The id is bounded in
bytes (what it costs to hold, log and compare), not characters.
"""
from __future__ import annotations

from ..errors import ParameterError

MAX_QUERY_ID_BYTES = 256
_SHOWN = 32           # characters of an offending id quoted in an error


def _show(qid: str) -> str:
    return repr(qid[:_SHOWN]) + ("..." if len(qid) > _SHOWN else "")


def check_query_id(qid, error: type[Exception] = ParameterError) -> str:
    """`qid` if it is a valid query id: a non-empty string of printable
    characters, at most MAX_QUERY_ID_BYTES bytes in UTF-8. Otherwise raises
    `error(message)` naming the id (truncated) and the rule; a ServiceRefusal
    subclass as `error` goes over gRPC as INVALID_ARGUMENT."""
    if not isinstance(qid, str):
        raise error(f"query id {qid!r:.{_SHOWN}} is a {type(qid).__name__}, not a string")
    rule = f"a query id is 1..{MAX_QUERY_ID_BYTES} bytes (UTF-8) of printable characters"
    if not qid:
        raise error(f"empty query id: {rule}")
    # surrogatepass: a lone surrogate still has a length; it is refused as non-printable below.
    size = len(qid.encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_ID_BYTES:
        raise error(f"query id {_show(qid)} is {size} bytes: {rule}")
    if not qid.isprintable():
        bad = next(c for c in qid if not c.isprintable())
        raise error(f"query id {_show(qid)} holds the non-printable character {bad!r}: {rule}")
    return qid
