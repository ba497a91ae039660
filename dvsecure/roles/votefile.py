"""A source's vote file: one vote per query, in the form its policy says
(`SourcePolicy.vote_format`): a class index, a probability vector (votes
"simplex") or the histogram of its m slices' votes (unit "slice").

Three formats, by the file's suffix:

- JSON lines (``.jsonl``, ``.json``): ``{"query_id": "q-17", "vote": 3}``, the vote
  an integer class index or a list of C numbers.
- CSV (``.csv``): the query id, then the vote: one column (a class index) or C
  columns (a probability vector, a one-hot vector, or a slice histogram's C
  counts). A first row whose first cell is ``query_id`` is a header.
- NumPy (``.npy``): a structured array with the fields ``query_id`` (a string
  dtype) and ``vote`` (an integer scalar: a class index; or a subarray of shape
  (C,): the vector), e.g. ``np.dtype([("query_id", "U64"), ("vote", "f8", (C,))])``;
  read without pickle. Its "line" is the record's number, counted from 1.

A bad row is an error naming the file, the line and the field; it is skipped,
and the other rows are kept. Whether a vote fits the query (its class count)
is known only once the query is open: `check_votes` runs the library's own
validation (`mechanism.votes.encode_vote`, what every backend runs) then.
"""
from __future__ import annotations

import csv
import io
import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..mechanism.votes import InvalidVote, encode_vote, vote_format
from ..policy import HISTOGRAM
from ..wire.limits import check_query_id

MAX_VOTE_FILE = 1 << 30          # read whole; never without bound
_INT = re.compile(r"^[+-]?[0-9]+$")


class VoteFileError(ParameterError):
    """The vote file as a whole cannot be read (rows with errors are RowErrors)."""


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class VoteRow:
    query_id: str
    vote: int | list          # plain Python values: what is committed to and recorded is exactly this
    line: int


@dataclass
class VoteFile:
    path: str
    rows: list[VoteRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def by_query(self) -> dict[str, VoteRow]:
        return {r.query_id: r for r in self.rows}


def _plain_vote(value) -> int | list:
    """The vote as plain Python (int, or a list of ints/floats), or raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a vote")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list is not a vote")
        out = []
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, (numbers.Integral, numbers.Real)):
                raise ValueError(f"entry {i} ({x!r}) is not a number")
            out.append(int(x) if isinstance(x, numbers.Integral) else float(x))
        return out
    raise ValueError(f"must be a class index (an integer) or a list of numbers, got {type(value).__name__}")


def _number(cell: str):
    cell = cell.strip()
    if _INT.match(cell):
        return int(cell)
    try:
        x = float(cell)
    except ValueError:
        raise ValueError(f"{cell!r} is not a number") from None
    return x


class _Reader:
    def __init__(self, path: Path, kind):
        self.path, self.fmt = path, vote_format(kind)
        self.out = VoteFile(str(path))
        self._seen: dict[str, int] = {}

    def error(self, line: int, fld: str, message: str) -> None:
        self.out.errors.append(RowError(str(self.path), line, fld, message))

    def add(self, line: int, qid, vote) -> None:
        try:
            check_query_id(qid)
        except ParameterError as e:
            return self.error(line, "query_id", str(e))
        try:
            vote = _plain_vote(vote)
        except ValueError as e:
            return self.error(line, "vote", str(e))
        if self.fmt.kind == HISTOGRAM and isinstance(vote, int):
            return self.error(line, "vote", f"a class index, but this source's vote is the histogram of its "
                                            f"{self.fmt.slices} slices' votes (C counts)")
        if qid in self._seen:
            return self.error(line, "query_id", f"{qid!r} appears twice (first at line {self._seen[qid]}): "
                                                "one vote per query; the first is kept")
        self._seen[qid] = line
        self.out.rows.append(VoteRow(qid, vote, line))

    # ---- formats ---------------------------------------------------------------------
    def jsonl(self, raw: bytes) -> None:
        for n, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (UnicodeDecodeError, ValueError) as e:
                self.error(n, "line", f"not a JSON object: {e}")
                continue
            if not isinstance(item, dict):
                self.error(n, "line", f"not a JSON object: {type(item).__name__}")
                continue
            missing = [k for k in ("query_id", "vote") if k not in item]
            extra = sorted(set(item) - {"query_id", "vote"})
            if missing:
                self.error(n, missing[0], "missing (each line is {\"query_id\": ..., \"vote\": ...})")
                continue
            if extra:
                self.error(n, extra[0], "unknown field (each line has exactly query_id and vote)")
                continue
            self.add(n, item["query_id"], item["vote"])

    def csv(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise VoteFileError(f"{self.path}: not UTF-8 text: {e}") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        first = True
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                self.error(reader.line_num, "line", f"not CSV: {e}")
                continue
            n = reader.line_num
            if first and row and row[0].strip() == "query_id":
                first = False
                continue                              # the header
            first = False
            if not row or all(not c.strip() for c in row):
                continue
            qid, cells = row[0].strip(), row[1:]
            if not cells:
                self.error(n, "vote", "missing (a row is the query id, then the vote's column(s))")
                continue
            values = []
            for i, cell in enumerate(cells):
                try:
                    values.append(_number(cell))
                except ValueError as e:
                    self.error(n, f"vote column {i + 1}", str(e))
                    break
            else:
                if len(values) == 1:
                    if not isinstance(values[0], int):
                        self.error(n, "vote", f"one column must be a class index (an integer), got {cells[0]!r}; "
                                              "a vector takes one column per class")
                        continue
                    self.add(n, qid, values[0])
                else:
                    self.add(n, qid, values)

    def npy(self, raw: bytes) -> None:
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise VoteFileError(f"{self.path}: not a .npy array (without pickle): {e}") from None
        names = arr.dtype.names
        if arr.ndim != 1 or names is None or set(names) != {"query_id", "vote"}:
            raise VoteFileError(f"{self.path}: a .npy vote file is a 1-D structured array with exactly the fields "
                                f"query_id and vote, got shape {arr.shape} and dtype {arr.dtype}")
        if arr.dtype["query_id"].kind not in "US":
            raise VoteFileError(f"{self.path}: field query_id must be a string dtype, got {arr.dtype['query_id']}")
        vdt = arr.dtype["vote"]
        base = vdt.base if vdt.subdtype is not None else vdt
        if base.kind not in "iuf" or len(vdt.shape) > 1:
            raise VoteFileError(f"{self.path}: field vote must be an integer scalar (a class index) or a 1-D "
                                f"numeric subarray (the vector), got {vdt}")
        for n, rec in enumerate(arr, start=1):
            qid = rec["query_id"]
            qid = qid.decode("utf-8", "replace") if isinstance(qid, bytes) else str(qid)
            vote = rec["vote"].tolist() if vdt.shape else rec["vote"].item()
            if isinstance(vote, float):
                self.error(n, "vote", f"a scalar vote must be a class index (an integer), got {vote!r}")
                continue
            self.add(n, qid, vote)


def read_votes(path: str | Path, kind) -> VoteFile:
    """The rows of a vote file and the errors of its bad rows. `kind`: the source's
    `SourcePolicy.vote_format` (or a kind name). Raises VoteFileError only if the
    file as a whole cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_VOTE_FILE + 1)
    except OSError as e:
        raise VoteFileError(f"cannot read vote file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_VOTE_FILE:
        raise VoteFileError(f"vote file {path} is larger than {MAX_VOTE_FILE} bytes")
    reader = _Reader(path, kind)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        reader.jsonl(raw)
    elif suffix == ".csv":
        reader.csv(raw)
    elif suffix == ".npy":
        reader.npy(raw)
    else:
        raise VoteFileError(f"vote file {path}: unknown format {suffix or '(no suffix)'!r}; use .jsonl, .csv or .npy")
    return reader.out


def parse_jsonl(text: str, where: str, kind) -> VoteFile:
    """Votes given as JSON lines text (what a `--model-cmd` prints), read as a file would be."""
    reader = _Reader(Path(where), kind)
    reader.jsonl(text.encode("utf-8", "surrogatepass"))
    return reader.out


def check_votes(votes: VoteFile, kind, num_classes: int) -> VoteFile:
    """The rows whose vote is valid for a query of `num_classes` classes under the
    source's format (the check every backend makes: `encode_vote`), the others
    moved to the errors, each naming its line and field "vote"."""
    kept = VoteFile(votes.path, errors=list(votes.errors))
    for row in votes.rows:
        try:
            encode_vote(row.vote, num_classes, kind, row.query_id)
        except InvalidVote as e:
            kept.errors.append(RowError(votes.path, row.line, "vote", f"not a valid vote for a query of "
                                                                      f"{num_classes} classes: {e.args[0]}"))
            continue
        kept.rows.append(row)
    return kept
