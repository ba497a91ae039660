"""A computing party's own durable record, and its checkpoint cosignature.

Every party, not only the operator, enforces the policy and vouches for the log:

1. Before any answered bit is revealed, a party computes every source's charge
   from public data (the weights, the validity bits, the policy's mechanism) as
   if every query were answered (the worst case), checks each weight is 0 or
   inside its band and each spend stays within its budget, and commits it here
   (SQLite, WAL, synchronous=FULL). An answered bit or a label can only be
   reconstructed once every party has sent its share, so none exists anywhere
   before every party's charge is durable.
2. Once the answered bits are out, the GNMax reservation of each refused query
   (whose GNMax step never runs) is released (`settle`), durably, before any
   label share is sent; once the labels are revealed, it records them.
3. Asked to cosign a checkpoint, it receives the log entries added since the
   last checkpoint it cosigned, checks each one against its own records
   (query entries: weights, answered bit, label, noise mode, mechanism, and the
   cumulative spends and charge counts it recomputes), checks that every query
   whose label it helped reveal is in the log, recomputes the Merkle root, and
   signs only if the checkpoint states that root and size.

A batch that fails after the charges were recorded stays charged here
(conservatively: the party cannot know whether anyone saw a label); a retry of
the same query id is charged again. That includes a batch whose labels reached
this party but perhaps not party 0 (an attacker can cut the last label frame to
it): the parties agree once more after recording the labels, and a label not
known to be delivered does not block cosigning and may be revealed again by a
retry, charged again; a delivered or logged one may not. So a party's own
spend is never below the operator's, and its budget check is the stricter of
the two.
"""
from __future__ import annotations

import json
import sqlite3
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..accounting.charges import query_charges
from ..engine.calibration import CalibrationPlan, calibration_charge, calibration_entry, calibration_outcome
from ..errors import BudgetExceededError, DvsecureError, LedgerError
from ..log import entry
from ..log import signers as signer_slots
from ..log.merkle import CompactRange, leaf_hash
from ..log.note import Checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (source_id TEXT PRIMARY KEY, spent TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL,
    gamma BLOB NOT NULL,          -- u32[S] weights actually tallied (0 = not counted)
    answered INTEGER NOT NULL,
    noise TEXT NOT NULL,
    label INTEGER,                -- NULL until revealed
    logged INTEGER NOT NULL DEFAULT 0,
    seen TEXT,                    -- per source what this party saw (SEEN_*), policy order
    commitments BLOB,             -- 32*S bytes the sources sent this party (NULL if relayed)
    delivered INTEGER NOT NULL DEFAULT 1    -- 0: revealed here, but party 0 may never have had it
);
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS logged (source_id TEXT PRIMARY KEY, spent TEXT NOT NULL, charged INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS calibrations (
    query_id TEXT PRIMARY KEY,    -- the calibration's id (its log entry's)
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,         -- per source CALIBRATED or CALIBRATION_SKIPPED (log/entry.py), policy order
    num_queries INTEGER NOT NULL,
    num_classes INTEGER NOT NULL,
    noise TEXT NOT NULL,
    sums TEXT,                    -- JSON: per source its revealed noisy sum (null: skipped); NULL: not yet
    delivered INTEGER NOT NULL DEFAULT 1,
    logged INTEGER NOT NULL DEFAULT 0
);
"""


# Why a party counted no vote for a source that had a weight (the log's invalid reasons).
REJECTED = "invalid: rejected by the parties' secure validation"
UNOPENED = "invalid: a computing party could not open or verify the submission"
PARTIAL = "invalid: not every computing party received the same submission"

# What a party saw of each source in each query, and the status letters (log/entry.py)
# that this allows in the log entry it later cosigns.
SEEN_EXCLUDED = "B"       # weight 0 in the command: the coordinator's budget filter excluded it
SEEN_NOTHING = "X"        # no share reached any party (over gRPC): absent
SEEN_NOT_RELAYED = "x"    # relayed batch, no share relayed: absent, or refused by the coordinator's encoder
SEEN_PARTIAL = "P"        # not every party holds the same share: invalid (PARTIAL / UNOPENED)
SEEN_REJECTED = "R"       # the secure validation rejected it: invalid (REJECTED)
SEEN_COUNTED = "V"        # counted with its weight: active or shrunk
_ALLOWED = {SEEN_EXCLUDED: {"B": None}, SEEN_NOTHING: {"X": None}, SEEN_NOT_RELAYED: {"X": None, "I": "invalid: "},
            SEEN_PARTIAL: {"I": (PARTIAL, UNOPENED)}, SEEN_REJECTED: {"I": (REJECTED,)},
            SEEN_COUNTED: {"A": None, "S": None}}


class CosignError(DvsecureError):
    """A party refuses to cosign a checkpoint: the log disagrees with its records."""


def _distinct(query_ids) -> list[str]:
    query_ids = list(query_ids)
    if len(set(query_ids)) != len(query_ids):
        raise LedgerError("a batch names the same query twice")
    return query_ids


class PartyLedger:
    def __init__(self, path: str | Path, policy, signer_vkey: str):
        self.policy = policy
        self.ids = list(policy.ids)
        self.signer_vkey = signer_vkey
        self._unit = [Fraction(0)] * len(self.ids)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open party ledger {path}: {e}") from None
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(queries)")}
        for column, kind in (("seen", "TEXT"), ("commitments", "BLOB"), ("delivered", "INTEGER NOT NULL DEFAULT 1")):
            if column not in columns:       # a ledger from before statuses were checked
                self._db.execute(f"ALTER TABLE queries ADD COLUMN {column} {kind}")
        row = self._db.execute("SELECT value FROM meta WHERE key='policy_digest'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO meta VALUES ('policy_digest', ?)", (policy.digest(),))
                self._db.executemany("INSERT INTO spend VALUES (?, '0')", [(s,) for s in self.ids])
                self._db.executemany("INSERT INTO logged VALUES (?, '0', 0)", [(s,) for s in self.ids])
        elif row[0] != policy.digest():
            raise LedgerError(f"party ledger {path} belongs to another policy")
        self._tree = CompactRange()
        self._tree.extend(h for (h,) in self._db.execute("SELECT hash FROM leaves ORDER BY idx"))

    def close(self) -> None:
        self._db.close()

    # ---- before the labels are revealed ------------------------------------------
    def spent(self) -> dict[str, Fraction]:
        return {sid: Fraction(v) for sid, v in self._db.execute("SELECT source_id, spent FROM spend")}

    def query_ids(self) -> set[str]:
        """Every query this party has charged (evaluated), revealed or not."""
        return {q for (q,) in self._db.execute("SELECT query_id FROM queries")}

    def record_charges(self, query_ids, gammas: np.ndarray, answered: np.ndarray, noise: str,
                       seen: list[str] | None = None, commitments: np.ndarray | None = None) -> None:
        """gammas: int[Q, S] the weights actually tallied (2**-16 units); answered:
        bool[Q] (all True to reserve the worst case before the answered bits exist);
        seen: per query the S letters of what this party saw (SEEN_*), and
        commitments uint8[S, Q, 32] the sources sent it (zeros where not every party
        holds the same share: what the log must show), both checked at cosigning."""
        query_ids = _distinct(query_ids)
        mech = self.policy.mechanism
        spent = self.spent()
        rows = []
        for qid, g_row, ans in zip(query_ids, gammas, answered):
            prior = self._db.execute("SELECT attempts, label, delivered, logged FROM queries WHERE query_id=?",
                                     (qid,)).fetchone()
            if prior is not None and prior[1] is not None and (prior[2] or prior[3]):
                raise LedgerError(f"query {qid!r} was already revealed; a party answers a query once")
            for src, g in zip(self.policy.sources, g_row):
                gamma = int(g) / 65536
                if g and not (src.grid_min <= gamma <= src.grid_max and src.on_grid(gamma)):
                    raise LedgerError(f"query {qid!r}: weight {gamma} of {src.id!r} is outside its band "
                                      f"[{src.grid_min}, {src.grid_max}] on its grid")
                for c in query_charges(mech, gamma, bool(ans), src.slices):
                    spent[src.id] += c.rho
                if spent[src.id] > src.cap_rho:
                    raise BudgetExceededError(
                        f"query {qid!r}: source {src.id!r} would spend {float(spent[src.id]):.6g} of its "
                        f"budget {float(src.cap_rho):.6g} rho by this party's record")
            k = len(rows)
            rows.append((qid, 1 if prior is None else prior[0] + 1, entry.pack_u32(g_row), int(bool(ans)), noise,
                         None if seen is None else seen[k],
                         None if commitments is None else np.ascontiguousarray(commitments[:, k]).tobytes()))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO queries (query_id, attempts, gamma, answered, noise, seen, "
                                 "commitments) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._store_spent(spent)

    def settle(self, query_ids, answered) -> None:
        """After the answered bits: a refused query's GNMax step never runs, so the
        worst case `record_charges` reserved for it is released (its threshold check
        stays charged). Durable before any label share is sent."""
        query_ids = _distinct(query_ids)
        mech = self.policy.mechanism
        spent = self.spent()
        refused = []
        for qid, ans in zip(query_ids, answered):
            if ans:
                continue
            (gamma,) = self._db.execute("SELECT gamma FROM queries WHERE query_id=?", (qid,)).fetchone()
            for src, g in zip(self.policy.sources, entry.unpack(gamma, "<u4", len(self.ids))):
                reserved = query_charges(mech, int(g) / 65536, True, src.slices)
                actual = query_charges(mech, int(g) / 65536, False, src.slices)
                spent[src.id] -= sum((c.rho for c in reserved), Fraction(0)) - sum((c.rho for c in actual),
                                                                                    Fraction(0))
            refused.append((qid,))
        if not refused:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE queries SET answered=0 WHERE query_id=?", refused)
            self._store_spent(spent)

    def _store_spent(self, spent: dict[str, Fraction]) -> None:
        """Inside the caller's transaction: every source's exact spend."""
        self._db.executemany("UPDATE spend SET spent=? WHERE source_id=?",
                             [(f"{v.numerator}/{v.denominator}", k) for k, v in spent.items()])

    def record_labels(self, query_ids, labels) -> None:
        """The revealed labels, not yet known to be delivered: until `mark_delivered`,
        party 0 (which alone hands them to the coordinator) may never have had them."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE queries SET label=?, delivered=0 WHERE query_id=?",
                                 [(int(label), qid) for qid, label in zip(query_ids, labels)])

    def mark_delivered(self, query_ids) -> None:
        """Every party, party 0 included, has recorded these labels: the coordinator
        has them, and must log them before this party cosigns again."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE queries SET delivered=1 WHERE query_id=?", [(q,) for q in query_ids])

    # ---- calibration inside the parties ----------------------------------------
    def calibrated_rho(self) -> dict[str, Fraction]:
        """Per source, the rho this party has charged it for calibration (every
        attempt: a failed one stays charged), against the policy's calibration share."""
        total = {sid: Fraction(0) for sid in self.ids}
        for status, attempts in self._db.execute("SELECT status, attempts FROM calibrations"):
            for sid, letter in zip(self.ids, status):
                if letter == entry.CALIBRATED:
                    total[sid] += attempts * calibration_charge(self.policy, sid).rho
        return total

    def record_calibration(self, plan, noise: str) -> None:
        """Before any noisy accuracy can be reconstructed: the calibration's charges
        (`engine.calibration.calibration_charge`) checked against each calibrated
        source's budget and the policy's calibration share, by this party's own
        records, and made durable."""
        prior = self._db.execute("SELECT attempts, sums, delivered, logged FROM calibrations WHERE query_id=?",
                                 (plan.query_id,)).fetchone()
        if prior is not None and prior[1] is not None and (prior[2] or prior[3]):
            raise LedgerError(f"calibration {plan.query_id!r} was already revealed; a party releases it once")
        if self._db.execute("SELECT 1 FROM queries WHERE query_id=?", (plan.query_id,)).fetchone():
            raise LedgerError(f"calibration id {plan.query_id!r} is a query's id")
        spent, before = self.spent(), self.calibrated_rho()
        for src in self.policy.sources:
            charge = plan.charges.get(src.id)
            if charge is None:
                continue
            spent[src.id] += charge.rho
            share = Fraction(self.policy.calibration.budget_fraction) * src.cap_rho
            if spent[src.id] > src.cap_rho or before[src.id] + charge.rho > share:
                raise BudgetExceededError(f"calibration {plan.query_id!r}: source {src.id!r} has no budget left for "
                                          "it by this party's record (or its calibration share is used up)")
        status = "".join(entry.CALIBRATED if sid in plan.charges else entry.CALIBRATION_SKIPPED for sid in self.ids)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO calibrations (query_id, attempts, status, num_queries, "
                             "num_classes, noise) VALUES (?, ?, ?, ?, ?, ?)",
                             (plan.query_id, 1 if prior is None else prior[0] + 1, status, plan.num_queries,
                              plan.num_classes, noise))
            self._store_spent(spent)

    def record_calibration_sums(self, query_id: str, sums) -> None:
        """The revealed noisy sums (None for a skipped source), not yet known delivered."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE calibrations SET sums=?, delivered=0 WHERE query_id=?",
                             (json.dumps([None if v is None else int(v) for v in sums]), query_id))

    def mark_calibration_delivered(self, query_id: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE calibrations SET delivered=1 WHERE query_id=?", (query_id,))

    # ---- cosigning -------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._tree.size

    def check_and_cosign(self, entries: list[bytes], checkpoint_text: bytes) -> None:
        """Check `entries` (log entries size..size+len-1) against this party's
        records and the checkpoint's root; on success make them part of this
        party's view of the log. Raises CosignError naming the first problem."""
        cp = Checkpoint.parse(checkpoint_text)
        if cp.origin != entry.log_origin(self.policy):
            raise CosignError(f"checkpoint origin {cp.origin!r} is not this policy's log")
        if cp.size != self.size + len(entries):
            raise CosignError(f"checkpoint size {cp.size} but this party has {self.size} entries "
                              f"and was sent {len(entries)}")
        logged = {sid: (Fraction(s), c) for sid, s, c in self._db.execute("SELECT * FROM logged")}
        spent = {sid: v[0] for sid, v in logged.items()}
        charged = {sid: v[1] for sid, v in logged.items()}
        tree = self._tree.copy()
        seen: dict[str, None] = {}          # query ids in this batch, in order
        calibrations: dict[str, None] = {}
        for offset, data in enumerate(entries):
            seq = self.size + offset
            try:
                e = entry.decode(data)
            except Exception as exc:
                raise CosignError(f"entry {seq} does not decode: {exc}") from None
            if e.seq != seq:
                raise CosignError(f"entry {seq} states sequence number {e.seq}")
            if isinstance(e, entry.Genesis):
                want = entry.genesis(entry.log_origin(self.policy), self.policy.digest(),
                                     self.policy.to_toml().encode(), self.ids)
                if seq != 0 or data != want:
                    raise CosignError(f"entry {seq} is not this policy's genesis entry")
            elif isinstance(e, entry.Signers):
                if self.signer_vkey not in [k.vkey for k in e.keys]:
                    raise CosignError(f"signers entry {seq} does not name this party's key")
                if self.policy.signers is not None:
                    # The set the sources agreed to: no slot dropped, added or given another role,
                    # and this party's key in its own slot (its rank in the policy).
                    slots, problems = signer_slots.assign_slots(self.policy.signers, e.keys)
                    mine = signer_slots.public_key_b64(self.signer_vkey)
                    named = self.policy.signers.parties
                    if mine not in named:
                        problems.append("the policy does not name this party's key")
                    else:
                        slot = signer_slots.party_slot(named.index(mine))
                        if slot not in slots or slots[slot].vkey != self.signer_vkey:
                            problems.append(f"this party's key is not in its slot {slot}")
                    if problems:
                        raise CosignError(f"signers entry {seq} is not the policy's signer set: {'; '.join(problems)}")
            elif isinstance(e, entry.Calibration):
                if e.query_id in calibrations:
                    raise CosignError(f"entry {seq}: calibration {e.query_id!r} appears twice")
                self._check_calibration(seq, data, e, spent, charged)
                calibrations[e.query_id] = None
            elif isinstance(e, entry.Query):
                if e.query_id in seen:
                    raise CosignError(f"entry {seq}: query {e.query_id!r} appears twice")
                self._check_query(seq, e, spent, charged)
                seen[e.query_id] = None
            else:
                raise CosignError(f"entry {seq} ({type(e).__name__}) was not computed by the parties")
            tree.append(leaf_hash(data))
        if tree.root() != cp.root_hash:
            raise CosignError(f"checkpoint root does not match the root of the {cp.size} entries")
        marks = {q: 1 for q in seen}
        unlogged = [q for (q,) in self._db.execute(
            "SELECT query_id FROM queries WHERE label IS NOT NULL AND logged=0 AND delivered=1") if q not in marks]
        unlogged += [q for (q,) in self._db.execute(
            "SELECT query_id FROM calibrations WHERE sums IS NOT NULL AND logged=0 AND delivered=1")
            if q not in calibrations]
        if unlogged:
            raise CosignError(f"{len(unlogged)} revealed quer{'y is' if len(unlogged) == 1 else 'ies are'} "
                              f"missing from the log, e.g. {unlogged[0]!r}")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO leaves VALUES (?, ?)",
                                 [(self.size + i, leaf_hash(d)) for i, d in enumerate(entries)])
            self._db.executemany("UPDATE queries SET logged=1 WHERE query_id=?", [(q,) for q in seen])
            self._db.executemany("UPDATE calibrations SET logged=1 WHERE query_id=?", [(q,) for q in calibrations])
            self._db.executemany("UPDATE logged SET spent=?, charged=? WHERE source_id=?",
                                 [(f"{spent[s].numerator}/{spent[s].denominator}", charged[s], s)
                                  for s in self.ids])
        self._tree = tree

    def _check_calibration(self, seq: int, data: bytes, e, spent: dict, charged: dict) -> None:
        """A calibration entry must be exactly the one this party would write from what
        it revealed: the same statuses, noise scales, noisy accuracies and weights (the
        public function of them), and the cumulative spends it recomputes."""
        row = self._db.execute("SELECT status, num_queries, num_classes, noise, sums, logged FROM calibrations "
                               "WHERE query_id=?", (e.query_id,)).fetchone()
        if row is None or row[4] is None:
            raise CosignError(f"entry {seq}: calibration {e.query_id!r} was not revealed by the parties")
        status, num_queries, num_classes, noise, sums, logged = row
        if logged:
            raise CosignError(f"entry {seq}: calibration {e.query_id!r} is already in the log")
        charges = {sid: calibration_charge(self.policy, sid) for sid, s in zip(self.ids, status)
                   if s == entry.CALIBRATED}
        skipped = {sid: "budget" for sid in self.ids if sid not in charges}
        plan = CalibrationPlan(e.query_id, (0,) * num_queries, num_classes, charges, skipped)
        outcome = calibration_outcome(self.policy, plan, dict(zip(self.ids, json.loads(sums))))
        for sid, c in charges.items():
            spent[sid] += c.rho
            charged[sid] += 1
        if data != calibration_entry(self.policy, plan, outcome, noise)(seq, spent, charged):
            raise CosignError(f"entry {seq}: calibration {e.query_id!r} differs from what the parties revealed "
                              "(statuses, noise, accuracies, weights or cumulative spends)")

    def _check_query(self, seq: int, e, spent: dict, charged: dict) -> None:
        row = self._db.execute("SELECT gamma, answered, noise, label, logged, seen, commitments FROM queries "
                               "WHERE query_id=?", (e.query_id,)).fetchone()
        if row is None or row[3] is None:
            raise CosignError(f"entry {seq}: query {e.query_id!r} was not revealed by the parties")
        gamma, answered, noise, label, logged, seen, commitments = row
        mech = self.policy.mechanism
        if logged:
            raise CosignError(f"entry {seq}: query {e.query_id!r} is already in the log")
        if bytes(e.gamma) != gamma:
            raise CosignError(f"entry {seq}: weights differ from those the parties tallied")
        if e.answered != bool(answered) or (e.label if e.answered else -1) != label:
            raise CosignError(f"entry {seq}: answered bit or label differs from what the parties revealed")
        if e.noise != noise:
            raise CosignError(f"entry {seq}: noise mode {e.noise!r} but the parties used {noise!r}")
        if (e.mechanism.kind, e.mechanism.sigma2, e.mechanism.sigma1, e.mechanism.threshold) != \
                (mech.kind, mech.sigma2, mech.sigma1, mech.threshold):
            raise CosignError(f"entry {seq}: mechanism differs from the policy's")
        if seen is not None:
            self._check_statuses(seq, e, seen, commitments)
        weights = entry.unpack(e.gamma, "<u4", len(self.ids))
        for src, g in zip(self.policy.sources, weights):
            sid = src.id
            charges = query_charges(mech, int(g) / 65536, e.answered, src.slices)
            if charges:
                spent[sid] += sum((c.rho for c in charges), Fraction(0))
                charged[sid] += 1
        spent_col, charged_col = entry.columns(self.ids, spent, charged)
        if bytes(e.spent) != spent_col or bytes(e.charged) != charged_col:
            raise CosignError(f"entry {seq}: stated cumulative spends or charge counts differ from this "
                              "party's recomputation")

    def _check_statuses(self, seq: int, e, seen: str, commitments: bytes | None) -> None:
        """Each source's status letter and invalid reason against what this party saw,
        and the commitments against those the sources sent it: the operator cannot
        log a source that took part as absent or invalid (framing it), nor another
        commitment than the one it made."""
        if len(e.status) != len(self.ids):
            raise CosignError(f"entry {seq}: {len(e.status)} status letters for {len(self.ids)} sources")
        for sid, saw, letter in zip(self.ids, seen, e.status):
            allowed = _ALLOWED[saw]
            if letter not in allowed:
                raise CosignError(f"entry {seq}: source {sid!r} is logged {entry.STATUS_NAMES.get(letter, letter)!r}"
                                  f" but this party saw {_SAW[saw]}")
            reason, want = e.invalid.get(sid), allowed[letter]
            if letter != "I" and reason is not None:
                raise CosignError(f"entry {seq}: an invalid-vote reason for {sid!r}, which is not logged invalid")
            if letter == "I" and not (reason is not None and (reason in want if isinstance(want, tuple)
                                                               else reason.startswith(want))):
                raise CosignError(f"entry {seq}: invalid-vote reason {reason!r} for {sid!r} is not what this "
                                  f"party saw ({_SAW[saw]})")
        if commitments is not None:
            try:
                logged = b"".join(entry.unpack_commitments(e.commitments, len(self.ids)))
            except ValueError as exc:
                raise CosignError(f"entry {seq}: commitments do not decode: {exc}") from None
            for j, sid in enumerate(self.ids):       # zeros where not every party holds the same share
                if logged[32 * j:32 * j + 32] != commitments[32 * j:32 * j + 32]:
                    raise CosignError(f"entry {seq}: the commitment logged for {sid!r} is not the one it sent "
                                      "this party")


_SAW = {SEEN_EXCLUDED: "weight 0 from the coordinator (budget filter)", SEEN_NOTHING: "no share from it",
        SEEN_NOT_RELAYED: "no share relayed for it", SEEN_PARTIAL: "a share not every party holds",
        SEEN_REJECTED: "a vote the secure validation rejected", SEEN_COUNTED: "a valid vote counted with its weight"}
