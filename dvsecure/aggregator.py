"""The aggregator: filter -> backend -> charges -> ledger -> release.

One `Aggregator` serves one consortium policy over one ledger. For each query it
decides every source's weight from public data (the budget filter), lets the
backend validate, tally and release, computes each participant's charges from
public data (weights, parameters, answered bit), records them durably, and only
then returns the release.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np

from . import entry
from .accounting.charges import Charge, query_charges
from .backends import FROM_SOURCES, Backend, PlaintextBackend
from .errors import DuplicateQueryError, ParameterError, VoteError
from .filter import EXCLUDED_BUDGET, BudgetFilter
from .fixedpoint import gamma_to_fixed
from .ledger import Ledger, LedgerRecord
from .noise import NoiseSource, PrivateNoise
from .policy import ConsortiumPolicy
from .submission import Submission

INVALID = "excluded:invalid"
ABSENT = "absent"


@dataclass(frozen=True)
class Participation:
    """One source's part in one query."""

    source_id: str
    gamma: float                  # weight used (0 if it did not take part)
    status: str                   # active | shrunk | excluded:budget | excluded:invalid | absent
    reason: str | None            # why an invalid vote was rejected
    charges: tuple[Charge, ...]
    rho: Fraction                 # this query's charge
    spent: Fraction               # cumulative spend after this query

    def to_dict(self) -> dict:
        return {"source_id": self.source_id, "gamma": self.gamma, "status": self.status, "reason": self.reason,
                "charges": [c.to_dict() for c in self.charges],
                "rho": f"{self.rho.numerator}/{self.rho.denominator}",
                "spent": f"{self.spent.numerator}/{self.spent.denominator}"}


@dataclass(frozen=True)
class QueryResult:
    seq: int
    query_id: str
    answered: bool
    label: int | None
    noise_mode: str
    private: bool
    backend: str
    mechanism: dict
    participants: tuple[Participation, ...]

    def to_dict(self) -> dict:
        return {"seq": self.seq, "query_id": self.query_id, "answered": self.answered, "label": self.label,
                "noise_mode": self.noise_mode, "private": self.private, "backend": self.backend,
                "mechanism": self.mechanism, "participants": [p.to_dict() for p in self.participants]}

    def participant(self, source_id: str) -> Participation:
        for p in self.participants:
            if p.source_id == source_id:
                return p
        raise KeyError(source_id)


class Aggregator:
    def __init__(self, policy: ConsortiumPolicy, ledger: Ledger, *, backend: Backend | None = None,
                 noise: NoiseSource | None = None, weights: Mapping[str, float] | None = None,
                 log=None, on_committed: Callable[[list[int]], None] | None = None):
        if ledger.policy.digest() != policy.digest():
            raise ParameterError("the ledger was opened for a different policy")
        self.policy = policy
        self.ledger = ledger
        self.backend = backend or PlaintextBackend()
        self.backend.bind(policy)
        self.noise = noise or PrivateNoise()
        self.filter = BudgetFilter(policy.mechanism)
        self._budgets = ledger.budgets()
        self._kinds = [s.votes for s in policy.sources]
        self.weights: dict[str, float] = {s.id: s.grid_max for s in policy.sources}
        if weights:
            self.set_weights(weights)
        # The published log (a translog.LogWriter), appended after each commit.
        self.log = log
        # Test and fault-injection hook: called after the ledger commit, before the log append.
        self._on_committed = on_committed
        mech = policy.mechanism
        self._mechanism_entry = entry.Mechanism(kind=mech.kind, sigma2=mech.sigma2, sigma1=mech.sigma1,
                                                threshold=mech.threshold)
        self._charge_cache: dict[tuple[float, bool], tuple[tuple[Charge, ...], Fraction]] = {}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Desired weights (e.g. from calibration); each must lie on the grid inside its band."""
        for sid, g in weights.items():
            src = self.policy.source(sid)
            gamma_to_fixed(g)
            if not src.grid_min <= g <= src.grid_max:
                raise ParameterError(f"source {sid!r}: weight {g} is outside its band "
                                     f"[{src.grid_min}, {src.grid_max}] on the 2**-16 grid")
            self.weights[sid] = float(g)

    def spent(self) -> dict[str, Fraction]:
        return self.ledger.spent()

    # ---- votes ---------------------------------------------------------------
    def _align(self, votes) -> list:
        """Votes as a list in policy order: accepts a mapping id -> vote (missing = absent)
        or a sequence/array with one entry per source."""
        ids = self.policy.ids
        if isinstance(votes, Mapping):
            unknown = set(votes) - set(ids)
            if unknown:
                raise VoteError(f"votes from unknown source(s): {', '.join(sorted(map(str, unknown)))}")
            return [votes.get(i) for i in ids]
        if isinstance(votes, (str, bytes)):
            raise VoteError("votes must be a mapping source id -> vote, or one vote per source")
        try:
            n = len(votes)
        except TypeError:
            raise VoteError(f"votes must be a mapping or a sequence, got {type(votes).__name__}") from None
        if n != len(ids):
            raise VoteError(f"expected one vote per source ({len(ids)}), got {n}")
        return list(votes)

    def _open(self, query_id: str, subs: list) -> tuple[list, bytes]:
        """The votes to tally and the packed commitments to each submission. A bare
        vote is wrapped with a nonce chosen here; a source that wants to check its
        commitment sends a `Submission` carrying its own nonce."""
        votes, commitments = [], []
        for sid, sub in zip(self.policy.ids, subs):
            if sub is None:
                votes.append(None)
                commitments.append(entry.ABSENT_COMMITMENT)
                continue
            if not isinstance(sub, Submission):
                sub = Submission.new(sub)
            votes.append(sub.vote)
            commitments.append(sub.commitment(query_id, sid))
        return votes, b"".join(commitments)

    # ---- steps ---------------------------------------------------------------
    def _decide(self, spent: Mapping[str, Fraction]):
        return [self.filter.decide(src, self.weights[src.id], spent[src.id], self._budgets[src.id])
                for src in self.policy.sources]

    def _evaluate(self, rows, submissions, num_classes, query_ids):
        # Decisions are on the 2**-16 grid, so scaling by 2**16 is exact.
        gammas = np.array([[d.gamma * 65536 for d in row] for row in rows], dtype=np.float64).astype(np.int64)
        gammas = gammas.reshape(len(rows), len(self.policy.sources))
        return self.backend.evaluate(gammas, submissions, self._kinds, num_classes, self.policy.mechanism,
                                     self.noise, query_ids=query_ids)

    def _source_charges(self, gamma: float, answered: bool) -> tuple[tuple[Charge, ...], Fraction]:
        """A participant pays the threshold check (always, under Confident-GNMax)
        and the GNMax release (only if answered); a non-participant pays nothing.
        Returns the charges and their total (memoised: records are immutable)."""
        key = (gamma, answered)
        hit = self._charge_cache.get(key)
        if hit is None:
            out = query_charges(self.policy.mechanism, gamma, answered)
            hit = (out, sum((c.rho for c in out), Fraction(0)))
            self._charge_cache[key] = hit
        return hit

    def _account(self, row, out, running: dict[str, Fraction]):
        """Participation and charges of every source for one evaluated query;
        updates `running` (cumulative spends) in place."""
        parts, charges = [], []
        for src, d, problem in zip(self.policy.sources, row, out.problems):
            if d.status == EXCLUDED_BUDGET:
                status, gamma, reason = EXCLUDED_BUDGET, 0.0, None
            elif problem is not None:
                status = ABSENT if problem == "absent" else INVALID
                gamma, reason = 0.0, (None if problem == "absent" else problem)
            else:
                status, gamma, reason = d.status, d.gamma, None
            mine, rho = self._source_charges(gamma, out.release.answered)
            if rho:
                running[src.id] += rho
            charges.extend((src.id, c) for c in mine)
            parts.append(Participation(src.id, gamma, status, reason, mine, rho, running[src.id]))
        return tuple(parts), tuple(charges)

    def _renderer(self, query_id, release, parts, commitments: bytes, num_classes: int):
        ids = self.policy.ids
        gamma = entry.pack_u32([int(p.gamma * 65536) for p in parts])   # on the grid: exact
        status = "".join(entry.STATUS_CODES[p.status] for p in parts)
        invalid = {p.source_id: p.reason for p in parts if p.reason}
        label = None if release.label is None else int(release.label)
        packed = entry.pack_commitments(commitments)

        def render(seq, spent, charged) -> bytes:
            spent_col, charged_col = entry.columns(ids, spent, charged)
            return entry.encode(entry.Query(
                v=entry.VERSION, seq=seq, query_id=query_id, noise=self.noise.mode, backend=self.backend.name,
                mechanism=self._mechanism_entry, num_classes=num_classes, answered=bool(release.answered),
                label=label, gamma=gamma, status=status, spent=spent_col, charged=charged_col,
                commitments=packed, invalid=invalid))
        return render

    # ---- queries -------------------------------------------------------------
    def query(self, query_id: str, votes, num_classes: int) -> QueryResult:
        return self.query_batch([(query_id, votes)], num_classes)[0]

    def query_batch(self, items: Sequence[tuple[str, object]], num_classes: int) -> list[QueryResult]:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ParameterError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        num_classes = int(num_classes)
        ids = [qid for qid, _ in items]
        for qid in ids:
            if not isinstance(qid, str) or not qid:
                raise ParameterError(f"query ids must be non-empty strings, got {qid!r}")
        if len(set(ids)) != len(ids):
            raise DuplicateQueryError("duplicate query ids within one batch")
        for qid in ids:
            if self.ledger.has_query(qid):
                raise DuplicateQueryError(f"query id {qid!r} was already answered and charged")
        if not self.backend.takes_votes_from_sources and any(v is FROM_SOURCES for _, v in items):
            raise ParameterError(f"the {self.backend.name} backend does not take votes from the sources")
        # FROM_SOURCES: the sources sent their votes to the computing side themselves;
        # the backend reports who did and the commitments they sent.
        opened = [([FROM_SOURCES] * len(self.policy.ids), None) if v is FROM_SOURCES
                  else self._open(qid, self._align(v)) for qid, v in items]
        submissions = [votes for votes, _ in opened]

        # Weights come from public data only. A backend that evaluates a whole batch
        # at once (MPC) needs every weight up front, so each earlier query's worst
        # case is reserved; a backend that can go query by query (plaintext) sees
        # each earlier query's actual charge, which depends only on its public
        # answered bit. Either way nothing is released before the commit below.
        spent = self.ledger.spent()
        running = dict(spent)
        steps = []
        if self.backend.evaluates_whole_batch:
            provisional = dict(spent)
            rows = []
            for _ in items:
                row = self._decide(provisional)
                for src, d in zip(self.policy.sources, row):
                    if d.gamma:
                        provisional[src.id] += self.filter.worst_case(d.gamma)
                rows.append(row)
            outputs = self._evaluate(rows, submissions, num_classes, ids)
            for item, row, out in zip(items, rows, outputs):
                steps.append((item, out, *self._account(row, out, running)))
        else:
            for item, subs in zip(items, submissions):
                row = self._decide(running)
                out = self._evaluate([row], [subs], num_classes, [item[0]])[0]
                steps.append((item, out, *self._account(row, out, running)))

        mech = self.policy.mechanism
        records, pending = [], []
        for ((qid, _), out, parts, charges), (_, commitments) in zip(steps, opened):
            if commitments is None:
                commitments = out.commitments
            pending.append((qid, out, parts))
            records.append(LedgerRecord(qid, entry.QUERY, charges,
                                        self._renderer(qid, out.release, parts, commitments, num_classes)))

        # Durable before released; logged before released.
        seqs = self.ledger.commit(records)
        if self._on_committed is not None:
            self._on_committed(seqs)
        if self.log is not None:
            self.log.sync()
        return [QueryResult(seq, qid, out.release.answered, out.release.label, self.noise.mode,
                            self.noise.private, self.backend.name, mech.to_dict(), parts)
                for seq, (qid, out, parts) in zip(seqs, pending)]
