"""The aggregator: filter -> backend -> charges -> ledger -> release.

One `Aggregator` serves one consortium policy over one ledger. For each query it
decides every source's weight from public data (the budget filter), lets the
backend validate, tally and release, computes each participant's charges from
public data (weights, parameters, answered bit), records them durably, and only
then returns the release.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np

from ..accounting.charges import Charge, query_charges
from ..backends import FROM_SOURCES, Backend, PlaintextBackend
from ..errors import DuplicateQueryError, ParameterError, VoteError
from ..log import entry
from ..mechanism.filter import ACTIVE, EXCLUDED_BUDGET, BudgetFilter
from ..mechanism.fixedpoint import SCALE, gamma_to_fixed
from ..noise import NoiseSource, PrivateNoise
from ..policy import ConsortiumPolicy
from ..wire.limits import check_query_id
from ..wire.submission import Submission, vote_payload
from .ledger import Ledger, LedgerRecord

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
        self._kinds = [s.vote_format for s in policy.sources]
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
        self._charge_cache: dict[tuple[float, bool, int], tuple[tuple[Charge, ...], Fraction]] = {}
        self._init_exact()

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Desired weights (e.g. from calibration); each must lie on the grid inside its band."""
        for sid, g in weights.items():
            src = self.policy.source(sid)
            gamma_to_fixed(g)
            if not (src.grid_min <= g <= src.grid_max and src.on_grid(g)):
                raise ParameterError(f"source {sid!r}: weight {g} is outside its band "
                                     f"[{src.grid_min}, {src.grid_max}] on its grid (multiples of "
                                     f"{src.slices} * 2**-16)")
            self.weights[sid] = float(g)

    def spent(self) -> dict[str, Fraction]:
        return self.ledger.spent()

    # ---- votes ---------------------------------------------------------------
    def _align(self, votes) -> list:
        """Votes as a list in policy order: accepts a mapping id -> vote (missing = absent)
        or a sequence/array with one entry per source."""
        ids = self._id_list   # policy.ids builds a tuple on every access
        if isinstance(votes, Mapping):
            unknown = votes.keys() - self._id_set
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
        # The same bytes as Submission.commitment, with the hash state after the
        # query id computed once per query instead of once per source.
        base = entry.commitment_base(query_id)
        fresh = None
        for k, (sid, frame, sub) in enumerate(zip(self._id_list, self._id_frames, subs)):
            if sub is None:
                votes.append(None)
                commitments.append(entry.ABSENT_COMMITMENT)
                continue
            if type(sub) is Submission:
                vote, nonce = sub.vote, sub.nonce
            elif isinstance(sub, Submission):    # a subclass commits its own way
                votes.append(sub.vote)
                commitments.append(sub.commitment(query_id, sid))
                continue
            else:   # a bare vote: Submission.new's 32 CSPRNG bytes, drawn for the whole query at once
                if fresh is None:
                    fresh = secrets.token_bytes(32 * len(subs))
                vote, nonce = sub, fresh[32 * k:32 * k + 32]
            votes.append(vote)
            commitments.append(entry.commitment_from(base, frame, nonce, vote_payload(vote)))
        return votes, b"".join(commitments)

    # ---- exact running spends ----------------------------------------------
    # Every spend, budget, worst case and charge here is an integer multiple of
    # 1/den for one common denominator den: a charge is g^2 times a per-mechanism
    # unit (rho = Delta^2/(2 sigma^2), CKS 2020 Theorems 4 and 14, with Delta =
    # gamma or sqrt(2) gamma and gamma = g/2**16; see accounting.charges), a spend
    # is a sum of charges. Held as integer numerators, the filter's test and the
    # accounting are exact integer + and <=; a Fraction is made only where one is
    # handed out (Participation.spent and the running spends).
    def _init_exact(self) -> None:
        self._id_list = list(self.policy.ids)
        self._id_set = frozenset(self._id_list)
        self._id_frames = [entry.commitment_frame(sid.encode()) for sid in self._id_list]
        mech = self.policy.mechanism
        step = Fraction(1, SCALE)
        den = math.lcm(*(b.denominator for b in self._budgets.values()),
                       (self.filter.unit * step * step).denominator)
        for c in query_charges(mech, 1 / SCALE, True):     # every charge is g^2 times these
            den = math.lcm(den, c.rho.denominator)
        self._den = den
        self._caps = [self._budgets[sid].numerator * (den // self._budgets[sid].denominator)
                      for sid in self._id_list]
        self._vals: list | None = None          # the Fractions self._nums stands for
        self._nums: list[int] = []
        self._fast_active: list[dict] = [{} for _ in self._id_list]   # desired -> (worst case num, Decision)
        self._charge_nums: dict[tuple, tuple] = {}

    def _widen(self, d: int) -> None:
        """Make den a multiple of d, rescaling every numerator held."""
        if self._den % d == 0:
            return
        k = d // math.gcd(self._den, d)
        self._den *= k
        self._caps[:] = [c * k for c in self._caps]       # in place: callers hold these lists
        self._nums[:] = [n * k for n in self._nums]
        for cache in self._fast_active:
            cache.clear()
        self._charge_nums.clear()

    def _over_den(self, value: Fraction) -> int:
        self._widen(value.denominator)
        return value.numerator * (self._den // value.denominator)

    def _sync(self, spent: Mapping[str, Fraction]) -> list[int]:
        """The numerators over den of the spends in `spent` (policy order). Reused
        while `spent` holds the very values they stand for — the running spends
        this aggregator updates itself — and recomputed otherwise."""
        vals = list(map(spent.__getitem__, self._id_list))
        if vals != self._vals:     # identical objects compare equal without arithmetic
            for v in vals:
                self._widen(v.denominator)
            den = self._den
            self._nums[:] = [v.numerator * (den // v.denominator) for v in vals]
        self._vals = vals
        return self._nums

    # ---- steps ---------------------------------------------------------------
    def _decide(self, spent: Mapping[str, Fraction]):
        """BudgetFilter.decide for every source. A desired weight whose worst case
        fits (exactly, in integers) is active, which is what decide returns then;
        everything else (shrink, exclusion, a weight outside its band) goes
        through decide itself."""
        nums = self._sync(spent)
        caps, fast, weights = self._caps, self._fast_active, self.weights
        row = []
        for i, src in enumerate(self.policy.sources):
            desired = weights[src.id]
            hit = fast[i].get(desired)
            if hit is not None and nums[i] + hit[0] <= caps[i]:
                row.append(hit[1])
                continue
            d = self.filter.decide(src, desired, self._vals[i], self._budgets[src.id])
            if desired and d.status == ACTIVE and d.gamma == desired and desired not in fast[i]:
                wc = self._over_den(self.filter.worst_case(desired, src.slices))
                fast[i][desired] = (wc, d)
            row.append(d)
        return row

    def _evaluate(self, rows, submissions, num_classes, query_ids):
        # Decisions are on the 2**-16 grid, so scaling by 2**16 is exact.
        gammas = np.array([[d.gamma * 65536 for d in row] for row in rows], dtype=np.float64).astype(np.int64)
        gammas = gammas.reshape(len(rows), len(self.policy.sources))
        desired = np.array([gamma_to_fixed(self.weights[sid]) for sid in self._id_list], dtype=np.int64)
        return self.backend.evaluate(gammas, submissions, self._kinds, num_classes, self.policy.mechanism,
                                     self.noise, query_ids=query_ids, desired=desired)

    def _source_charges(self, gamma: float, answered: bool, slices: int = 1) -> tuple[tuple[Charge, ...], Fraction]:
        """A participant pays the threshold check (always, under Confident-GNMax)
        and the GNMax release (only if answered), at its privacy unit; a
        non-participant pays nothing. Returns the charges and their total
        (memoised: records are immutable)."""
        key = (gamma, answered, slices)
        hit = self._charge_cache.get(key)
        if hit is None:
            out = query_charges(self.policy.mechanism, gamma, answered, slices)
            hit = (out, sum((c.rho for c in out), Fraction(0)))
            self._charge_cache[key] = hit
        return hit

    def _source_pairs(self, i: int, gamma: float, answered: bool) -> tuple:
        """Source i's (source_id, Charge) pairs, charges, total and the total's
        numerator over den (memoised: the same immutable pairs every time, which
        also lets the ledger memoise their rows)."""
        key = (i, gamma, answered)
        hit = self._charge_nums.get(key)
        if hit is None:
            mine, rho = self._source_charges(gamma, answered, self.policy.sources[i].slices)
            sid = self._id_list[i]
            hit = (tuple((sid, c) for c in mine), mine, rho, self._over_den(rho))
            self._charge_nums[key] = hit
        return hit

    def _account(self, row, out, running: dict[str, Fraction]):
        """Participation and charges of every source for one evaluated query;
        updates `running` (cumulative spends) in place."""
        nums = self._sync(running)
        vals = self._vals
        answered = out.release.answered
        cache = self._charge_nums
        made: dict[int, Fraction] = {}   # sources with equal spends share one Fraction
        parts, charges = [], []
        for i, (sid, d, problem) in enumerate(zip(self._id_list, row, out.problems)):
            if d.status == EXCLUDED_BUDGET:
                status, gamma, reason = EXCLUDED_BUDGET, 0.0, None
            elif problem is not None:
                status = ABSENT if problem == "absent" else INVALID
                gamma, reason = 0.0, (None if problem == "absent" else problem)
            else:
                status, gamma, reason = d.status, d.gamma, None
            hit = cache.get((i, gamma, answered))
            if hit is None:
                hit = self._source_pairs(i, gamma, answered)
                made.clear()    # den may have widened: numerators now mean other values
            pairs, mine, rho, num = hit
            if num:
                n = nums[i] = nums[i] + num
                v = made.get(n)
                if v is None:
                    # The same normalised rational running[sid] + rho would give.
                    v = made[n] = Fraction(n, self._den)
                vals[i] = running[sid] = v
            charges += pairs
            parts.append(Participation(sid, gamma, status, reason, mine, rho, vals[i]))
        return tuple(parts), tuple(charges)

    def _renderer(self, query_id, release, parts, commitments: bytes, num_classes: int):
        ids = self._id_list
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
            check_query_id(qid, ParameterError)
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
                        provisional[src.id] += self.filter.worst_case(d.gamma, src.slices)
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
