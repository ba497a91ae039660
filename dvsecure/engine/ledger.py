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

import math
import sqlite3
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ..accounting.charges import Charge
from ..errors import BudgetExceededError, DuplicateQueryError, LedgerError
from ..log import entry
from ..policy import ConsortiumPolicy

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
    body BLOB NOT NULL            -- the exact bytes of log entry seq (dvsecure.log.entry)
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

_ROW_CACHE_MAX = 1 << 16


class _Spends(Mapping):
    """Every source's cumulative spend during a commit, exactly: integer numerators
    over one common denominator `den` (a multiple of every denominator seen), so
    adding charges and checking budgets are integer + and >. Looks up as the
    exact Fraction; `floats` gives the nearest float64 of each spend directly
    (int / int true division is correctly rounded, as Fraction's float() is)."""

    def __init__(self, spent: Mapping[str, Fraction], budgets: Mapping[str, Fraction]):
        den = 1
        for f in (*spent.values(), *budgets.values()):
            den = math.lcm(den, f.denominator)
        self.den = den
        self.nums = {sid: f.numerator * (den // f.denominator) for sid, f in spent.items()}
        self.caps = {sid: f.numerator * (den // f.denominator) for sid, f in budgets.items()}
        self.mult: dict[int, int] = {}   # a charge's denominator -> den // it

    def scaled(self, num: int, d: int, pending: dict[str, int]) -> int:
        """num/d as a numerator over `den`, first widening `den` to a multiple of d
        if it is not one already (rescaling every value held, and `pending`: the
        caller's partial sums over the old `den`)."""
        m = self.mult.get(d)
        if m is None:
            if self.den % d:
                k = d // math.gcd(self.den, d)
                self.den *= k
                for col in (self.nums, self.caps, pending):
                    for sid in col:
                        col[sid] *= k
                for x in self.mult:      # in place: callers hold this dict
                    self.mult[x] *= k
            m = self.mult[d] = self.den // d
        return num * m

    def float(self, sid: str) -> float:
        return self.nums[sid] / self.den

    def floats(self, source_ids) -> list[float]:
        nums, den = self.nums, self.den
        return [nums[s] / den for s in source_ids]

    def __getitem__(self, sid: str) -> Fraction:
        return Fraction(self.nums[sid], self.den)

    def __iter__(self):
        return iter(self.nums)

    def __len__(self) -> int:
        return len(self.nums)


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
        self._source_ids = frozenset(s.id for s in policy.sources)
        self._rows: dict[int, tuple] = {}

    def _bind_policy(self) -> None:
        digest = self.policy.digest()
        row = self._db.execute("SELECT value FROM meta WHERE key='policy_digest'").fetchone()
        if row is None:
            with self._tx():
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                self._db.execute("INSERT INTO meta VALUES ('policy_digest', ?)", (digest,))
                self._db.execute("INSERT INTO meta VALUES ('policy', ?)", (self.policy.canonical_json().decode(),))
                for s in self.policy.sources:
                    b = s.cap_rho
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
        """The cap on each source's spend at its unit (its budget and, for a slice-unit
        source, its influence budget / m^2: `SourcePolicy.cap_rho`). From the policy,
        never from the file: whoever holds the file (the enclave's host) must not be
        able to raise a budget."""
        return {s.id: s.cap_rho for s in self.policy.sources}

    def influence(self) -> dict[str, Fraction]:
        """Each source's source-level spend (its influence): m^2 times its spend at
        its unit (equal to it for a source-unit source)."""
        spent = self.spent()
        return {s.id: s.influence(spent[s.id]) for s in self.policy.sources}

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
        slices = self.policy.source(source_id).slices
        return [Charge(m, s, g, bool(a), slices) for m, s, g, a in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- the one write -----------------------------------------------------
    def _charge_row(self, pair) -> tuple:
        """(pair, source id, rho as numerator and denominator, the charges row
        without its seq) for one
        (source_id, Charge) pair, memoised by identity: the aggregator hands over
        the same immutable pairs query after query. The cache holds the pair
        itself, so its id cannot be reused while the entry exists."""
        hit = self._rows.get(id(pair))
        if hit is not None and hit[0] is pair:
            return hit
        sid, ch = pair
        if sid not in self._source_ids:
            raise LedgerError(f"charge for unknown source {sid!r}")
        rho = ch.rho
        n, d = rho.numerator, rho.denominator
        hit = (pair, sid, n, d, (sid, ch.mechanism, ch.sigma, ch.gamma, int(ch.answered), f"{n}/{d}"))
        if type(pair) is tuple and type(ch) is Charge:   # immutable: safe to memoise
            if len(self._rows) >= _ROW_CACHE_MAX:
                self._rows.clear()
            self._rows[id(pair)] = hit
        return hit

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
            # Exact arithmetic on integers: every spend, budget and charge is held as
            # its numerator over one common denominator (int + and > are exact, and
            # Fraction(num, den) is the same rational the Fraction sums gave).
            acc = _Spends(spent, budgets)
            nums, caps = acc.nums, acc.caps
            memo, mult = self._rows, acc.mult
            taken = self._existing(r.query_id for r in records)
            changed: set[str] = set()
            for rec in records:
                if rec.query_id in taken:
                    raise DuplicateQueryError(f"query id {rec.query_id!r} is already in the ledger")
                taken.add(rec.query_id)
                per_source: dict[str, int] = {}
                rows = []
                for pair in rec.charges:
                    hit = memo.get(id(pair))
                    if hit is None or hit[0] is not pair:
                        hit = self._charge_row(pair)
                    _, sid, num, den, row = hit
                    if num:
                        m = mult.get(den)
                        # acc.scaled may widen den and rescale per_source: call it first
                        n = num * m if m is not None else acc.scaled(num, den, per_source)
                        per_source[sid] = per_source.get(sid, 0) + n
                    rows.append((seq,) + row)
                for sid, n in per_source.items():
                    nums[sid] += n
                    counts[sid] += 1
                    changed.add(sid)
                    if nums[sid] > caps[sid]:
                        raise BudgetExceededError(
                            f"query {rec.query_id!r} would take source {sid!r} to rho={acc.float(sid):.6g} "
                            f"over its budget {float(budgets[sid]):.6g}; nothing was recorded")
                body = rec.render(seq, acc, counts)
                if b"\n" in body:
                    raise LedgerError(f"record {rec.query_id!r}: a log entry may not contain a newline")
                self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?)", (seq, rec.query_id, rec.kind, body))
                self._db.executemany("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                seqs.append(seq)
                seq += 1
            updates = []
            for sid in changed:
                value = acc[sid]
                updates.append((f"{value.numerator}/{value.denominator}", counts[sid], sid))
            self._db.executemany("UPDATE spend SET spent=?, charged=? WHERE source_id=?", updates)
        return seqs

    def _existing(self, query_ids: Iterable[str]) -> set[str]:
        """Which of these query ids the ledger already holds (one SELECT per 500)."""
        ids = list(query_ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            sql = f"SELECT query_id FROM records WHERE query_id IN ({','.join('?' * len(chunk))})"
            found.update(q for (q,) in self._db.execute(sql, chunk))
        return found

    def check_against_records(self, chunk: int = 20_000) -> None:
        """Recompute every source's spend and charge count from the ledger's own
        records — the log's entries, which sources pin with the checkpoints they
        witness — and refuse a ledger whose derived state differs: a host that
        edits the spend table to free budget is caught before the next query.
        Reads `chunk` records at a time. Raises LedgerError naming the first problems."""
        from ..audit.recompute import Context, check_shard

        ctx = Context(self.policy, frozenset(self.policy.ids))
        problems: list[str] = []
        exact = {sid: Fraction(0) for sid in self.policy.ids}
        charged = dict.fromkeys(self.policy.ids, 0)
        carry = b""          # the last query or calibration entry so far: its stated columns carry over
        start, end = 0, self.next_seq()
        while start < end:
            rows = self._db.execute("SELECT kind, body FROM records WHERE seq>=? AND seq<? ORDER BY seq",
                                    (start, start + chunk)).fetchall()
            prefix = carry + b"\n" if carry else b""
            data = prefix + b"".join(bytes(b) + b"\n" for _, b in rows)
            # Line i of `data` is entry seqs[i]; the carry line (if any) stands just before `start`.
            seqs = range(start - 1 if carry else start, start + len(rows))
            shard = check_shard(data, len(prefix), len(data), 1 if carry else 0, seqs, ctx)
            problems += [f"entry {seq}: {message}" for _, message, seq in shard.findings]
            for sid, st in shard.stats.items():
                exact[sid] += st.exact
                charged[sid] += st.charged
            carry = next((bytes(b) for k, b in reversed(rows) if k in ("query", "calibration")), carry)
            start += chunk
        spent, counts = self.spent(), self.charged_counts()
        for sid in self.policy.ids:
            if spent.get(sid) != exact[sid] or counts.get(sid) != charged[sid]:
                problems.append(f"source {sid!r}: the ledger says spent {spent.get(sid)} over {counts.get(sid)} "
                                f"charges, its records add up to {exact[sid]} over {charged[sid]}")
        if problems:
            raise LedgerError(f"ledger {self.path} does not match its own records: " + "; ".join(problems[:3]))

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
