"""The durable ledger: every charge, recorded before its release is returned.

SQLite in WAL mode with synchronous=FULL: a commit is on disk when `commit`
returns, and a crash at any point leaves either the whole query (its record, its
charges, the updated spends) or none of it. Spends are stored as exact rationals
("num/den") and re-checked against the budgets inside the transaction, so even a
caller that bypassed the filter could not push a source past its budget.

The ledger is private state (it lives in the state directory, never in the
published directory).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from . import entry
from .accounting.charges import Charge
from .errors import BudgetExceededError, DuplicateQueryError, LedgerError
from .policy import ConsortiumPolicy

SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    source_id TEXT PRIMARY KEY,
    spent TEXT NOT NULL,          -- exact rational rho, "num/den"
    budget TEXT NOT NULL,
    charged INTEGER NOT NULL      -- number of records that charged the source
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    query_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,           -- genesis | signers | calibration | query
    body BLOB NOT NULL            -- the exact bytes of log entry seq (dvsecure.entry)
);
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER NOT NULL REFERENCES records(seq),
    source_id TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    sigma REAL NOT NULL,
    gamma REAL NOT NULL,
    answered INTEGER NOT NULL,
    rho TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_by_source ON charges(source_id);
"""


def _frac(text: str) -> Fraction:
    return Fraction(text)


# render(seq, spent_after, charged_after) -> the record's log entry bytes, given the
# sequence number the ledger assigns and every source's cumulative spend and
# charged count once this record's charges are added.
Render = Callable[[int, Mapping[str, Fraction], Mapping[str, int]], bytes]


@dataclass(frozen=True)
class LedgerRecord:
    """One record: its charges, and how to render its log entry once the ledger
    has assigned its sequence number and added its charges."""

    query_id: str
    kind: str
    charges: tuple[tuple[str, Charge], ...]   # (source_id, charge)
    render: Render


class Ledger:
    def __init__(self, path: str | Path, policy: ConsortiumPolicy):
        self.path = Path(path)
        self.policy = policy
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from None
        self._bind_policy()

    def _bind_policy(self) -> None:
        digest = self.policy.digest()
        row = self._db.execute("SELECT value FROM meta WHERE key='policy_digest'").fetchone()
        if row is None:
            with self._tx():
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                self._db.execute("INSERT INTO meta VALUES ('policy_digest', ?)", (digest,))
                self._db.execute("INSERT INTO meta VALUES ('policy', ?)", (self.policy.canonical_json().decode(),))
                for s in self.policy.sources:
                    b = s.budget_rho
                    self._db.execute("INSERT INTO spend VALUES (?, '0', ?, 0)",
                                     (s.id, f"{b.numerator}/{b.denominator}"))
                # Record 0 (the log's genesis entry) binds the log to this policy.
                genesis = entry.genesis(entry.log_origin(self.policy), digest, self.policy.to_toml().encode(),
                                        self.policy.ids)
                self._db.execute("INSERT INTO records VALUES (0, 'genesis', 'genesis', ?)", (genesis,))
        elif row[0] != digest:
            raise LedgerError(f"ledger {self.path} belongs to another policy (digest {row[0][:16]}..., "
                              f"this policy {digest[:16]}...); use a fresh state directory")

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, *_):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _tx(self):
        return Ledger._Tx(self._db)

    # ---- reads -------------------------------------------------------------
    def spent(self) -> dict[str, Fraction]:
        return {sid: _frac(s) for sid, s in self._db.execute("SELECT source_id, spent FROM spend")}

    def budgets(self) -> dict[str, Fraction]:
        return {sid: _frac(b) for sid, b in self._db.execute("SELECT source_id, budget FROM spend")}

    def charged_counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT source_id, charged FROM spend"))

    def next_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM records").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def has_query(self, query_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM records WHERE query_id=?", (query_id,)).fetchone() is not None

    def records(self, kind: str | None = None) -> Iterator[entry.Entry]:
        """Decoded entries, in sequence order (optionally of one kind)."""
        sql = "SELECT body FROM records" + (" WHERE kind=?" if kind else "") + " ORDER BY seq"
        for (body,) in self._db.execute(sql, (kind,) if kind else ()):
            yield entry.decode(body)

    def record_bytes(self, start: int, stop: int | None = None) -> list[bytes]:
        """The exact entry bytes of records start..stop-1 (to the end if stop is None)."""
        if stop is None:
            rows = self._db.execute("SELECT body FROM records WHERE seq>=? ORDER BY seq", (start,))
        else:
            rows = self._db.execute("SELECT body FROM records WHERE seq>=? AND seq<? ORDER BY seq", (start, stop))
        return [bytes(b) for (b,) in rows]

    def charges(self, source_id: str) -> list[Charge]:
        rows = self._db.execute("SELECT mechanism, sigma, gamma, answered FROM charges WHERE source_id=? ORDER BY seq",
                                (source_id,))
        return [Charge(m, s, g, bool(a)) for m, s, g, a in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- the one write -----------------------------------------------------
    def commit(self, records: Iterable[LedgerRecord]) -> list[int]:
        """Append records atomically; returns their sequence numbers. Raises
        DuplicateQueryError or BudgetExceededError and records nothing."""
        records = list(records)
        seqs: list[int] = []
        with self._tx():
            spent = self.spent()
            budgets = self.budgets()
            counts = self.charged_counts()
            seq = self.next_seq()
            changed: set[str] = set()
            for rec in records:
                if self.has_query(rec.query_id):
                    raise DuplicateQueryError(f"query id {rec.query_id!r} is already in the ledger")
                per_source: dict[str, Fraction] = {}
                rows = []
                for sid, ch in rec.charges:
                    if sid not in spent:
                        raise LedgerError(f"charge for unknown source {sid!r}")
                    rho = ch.rho
                    if rho:
                        prev = per_source.get(sid)
                        per_source[sid] = rho if prev is None else prev + rho
                    rows.append((seq, sid, ch.mechanism, ch.sigma, ch.gamma, int(ch.answered),
                                 f"{rho.numerator}/{rho.denominator}"))
                for sid, rho in per_source.items():
                    spent[sid] += rho
                    counts[sid] += 1
                    changed.add(sid)
                    if spent[sid] > budgets[sid]:
                        raise BudgetExceededError(
                            f"query {rec.query_id!r} would take source {sid!r} to rho={float(spent[sid]):.6g} "
                            f"over its budget {float(budgets[sid]):.6g}; nothing was recorded")
                body = rec.render(seq, spent, counts)
                if b"\n" in body:
                    raise LedgerError(f"record {rec.query_id!r}: a log entry may not contain a newline")
                self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?)", (seq, rec.query_id, rec.kind, body))
                self._db.executemany("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                seqs.append(seq)
                seq += 1
            self._db.executemany("UPDATE spend SET spent=?, charged=? WHERE source_id=?",
                                 [(f"{spent[sid].numerator}/{spent[sid].denominator}", counts[sid], sid)
                                  for sid in changed])
        return seqs

    def verify(self) -> None:
        """Consistency check: every stored spend equals the sum of its charges."""
        for sid, value in self.spent().items():
            total = sum((_frac(r) for (r,) in self._db.execute("SELECT rho FROM charges WHERE source_id=?", (sid,))),
                        Fraction(0))
            if total != value:
                raise LedgerError(f"ledger inconsistent: source {sid!r} spend {value} != sum of charges {total}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
