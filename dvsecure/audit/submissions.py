"""A source checks its own part: each submission it made is in the log, with the
commitment it made and the status the policy requires (DESIGN §5).

The operator could frame a source — log it absent or invalid although it sent a
valid vote — and every other check would pass: only the source knows what it
sent. So a source keeps, for each query it voted in, the vote and the nonce of
its commitment (a submissions file, JSON lines):

    {"query_id": "q-17", "vote": 3, "nonce": "<base64 of 32 bytes>"}

and the auditor, given that file, finds each submission's entry and checks it:
present, the same commitment (`entry.commitment`, which binds the query, the
source, the nonce and the exact vote), not logged absent, and not logged invalid
when the vote is valid under the source's policy. An exclusion by the budget
filter is the filter re-run's to judge (`recompute`). Whether the log shows
every query is the receipt's concern: its entries include every one in which the
source is not absent, so a submission whose entry is missing from a receipt is
itself a finding.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError
from ..log import entry as E
from ..mechanism.votes import InvalidVote, encode_vote
from ..wire.submission import Submission

MAX_FILE = 256 << 20            # a submissions file is the source's own; still, never read without bound


@dataclass(frozen=True)
class SourceSubmission:
    query_id: str
    submission: Submission
    line: int


def load_submissions(path: str | Path) -> list[SourceSubmission]:
    """The submissions file; a bad line is an error naming the file, the line and the field."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ParameterError(f"cannot read submissions file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE:
        raise ParameterError(f"submissions file {path} is larger than {MAX_FILE} bytes")
    out, seen = [], set()
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            raise ParameterError(f"{where}: not a JSON object: {e}") from None
        if not isinstance(item, dict) or set(item) != {"query_id", "vote", "nonce"}:
            raise ParameterError(f"{where}: expected exactly the fields query_id, vote, nonce")
        qid = item["query_id"]
        if not isinstance(qid, str) or not qid:
            raise ParameterError(f"{where}: query_id must be a non-empty string")
        if qid in seen:
            raise ParameterError(f"{where}: query_id {qid!r} appears twice")
        seen.add(qid)
        try:
            nonce = base64.b64decode(item["nonce"], validate=True) if isinstance(item["nonce"], str) else b""
        except (binascii.Error, ValueError):
            nonce = b""
        if len(nonce) != 32:
            raise ParameterError(f"{where}: nonce must be 32 bytes, base64")
        out.append(SourceSubmission(qid, Submission(item["vote"], nonce), n))
    return out


def submission_line(query_id: str, sub: Submission) -> str:
    """One line of a submissions file, as a source writes it when it submits."""
    return json.dumps({"query_id": query_id, "vote": sub.vote, "nonce": base64.b64encode(sub.nonce).decode()})


def check_submissions(items, decoded: dict[str, tuple[int, E.Query]], policy, source_id: str) -> list[tuple]:
    """Findings (message, seq) for `source_id`'s submissions against the query
    entries examined (query id -> (seq, entry))."""
    j = policy.ids.index(source_id)
    kind = policy.sources[j].vote_format
    problems = []
    for item in items:
        hit = decoded.get(item.query_id)
        if hit is None:
            problems.append((f"query {item.query_id!r} (submissions line {item.line}): no entry here, although "
                             f"{source_id!r} submitted to it", None))
            continue
        seq, e = hit
        mine = E.unpack_commitments(e.commitments, len(policy.ids))[j]
        letter = e.status[j] if len(e.status) == len(policy.ids) else "?"
        if letter == "X":
            problems.append((f"query {item.query_id!r}: {source_id!r} is logged absent although it submitted", seq))
            continue
        if mine != item.submission.commitment(item.query_id, source_id):
            problems.append((f"query {item.query_id!r}: the logged commitment is not {source_id!r}'s to the vote "
                             "it submitted", seq))
        if letter in "AS":
            # Counted: the vote must be one the policy allows (a histogram of exactly m
            # slice votes for a slice-unit source), or the tally took what no one agreed to.
            try:
                encode_vote(item.submission.vote, e.num_classes, kind, item.query_id)
            except (InvalidVote, TypeError, ValueError) as ex:
                problems.append((f"query {item.query_id!r}: {source_id!r}'s vote was counted although its policy "
                                 f"does not allow it ({ex})", seq))
        if letter == "I":
            try:
                encode_vote(item.submission.vote, e.num_classes, kind, item.query_id)
            except (InvalidVote, TypeError, ValueError):
                continue            # the source's own vote was invalid: so logged, rightly
            problems.append((f"query {item.query_id!r}: {source_id!r} is logged invalid "
                             f"({e.invalid.get(source_id)!r}) although the vote it submitted is valid", seq))
    return problems
