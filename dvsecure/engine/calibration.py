"""Learning weights from labelled queries (the prototype's phase 1), two ways.

`hedge_baseline` is the prototype's non-private Hedge ensemble: it reads every
vote in the clear and its output is NOT private. It exists only to measure what
privacy costs; its results carry `private=False`.

`PrivateCalibration` learns each source's weight within its band from a
differentially private statistic, and charges each source for it like any other
release. Per source s it releases one number: s's mean accuracy on the labelled
queries (the mass its votes put on the true label), plus discrete Gaussian noise.
Under source-level replacement all of s's votes may change, so that mean moves
by at most 1: a scalar Gaussian with sensitivity 1, charged
1/(2 sigma_s^2) (Charge(CALIBRATION, sigma_s, gamma=1)). A slice-unit source's
vote is the histogram of its m slices' votes and its accuracy the mean share of
its slices voting the true label; one slice's data changes that slice's votes
on every labelled query, moving the mean by at most 1/m, so the charge is
1/(2 m^2 sigma_s^2) (Charge(..., slices=m)). Each noisy accuracy
depends on one source's votes only, so nobody else pays for it, and the weights
are a post-processing of released values. sigma_s is set so the charge is the
policy's `budget_fraction` of s's budget. The prototype instead averaged 2,000
exponential-mechanism draws and claimed the cost of one (DESIGN §8 flaw 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..accounting.charges import CALIBRATION, Charge
from ..errors import ParameterError, VoteError
from ..log import entry
from ..mechanism.fixedpoint import SCALE
from ..mechanism.votes import InvalidVote, encode_vote
from ..noise import NoiseSource, PrivateNoise
from ..policy import ConsortiumPolicy
from ..wire.limits import check_query_id
from .ledger import Ledger, LedgerRecord


@dataclass(frozen=True)
class HedgeResult:
    weights: dict[str, float]          # final normalised Hedge weights
    accuracy: float                    # online accuracy of the weighted vote
    predictions: tuple[int, ...]
    private: bool = False              # never private: reads every vote in the clear


def hedge_baseline(votes: np.ndarray, labels: np.ndarray, source_ids, eta: float = 0.1) -> HedgeResult:
    """Online Hedge (Freund & Schapire 1997): predict with the current weights,
    then w_s <- w_s * (1 - eta)^{loss_s}. votes: float[T, S, C]; labels: int[T].
    NON-PRIVATE: for comparison only."""
    votes = np.asarray(votes, dtype=float)
    labels = np.asarray(labels)
    if votes.ndim != 3 or votes.shape[0] != len(labels) or votes.shape[1] != len(source_ids):
        raise VoteError(f"votes must be [T, S, C] with T={len(labels)}, S={len(source_ids)}; got {votes.shape}")
    if not 0 < eta < 1:
        raise ParameterError(f"eta must be in (0, 1), got {eta}")
    w = np.ones(votes.shape[1])
    preds, correct = [], 0
    for t in range(len(labels)):
        pred = int(np.argmax(w @ votes[t]))
        preds.append(pred)
        correct += pred == labels[t]
        loss = (np.argmax(votes[t], axis=1) != labels[t]).astype(float)
        w = w * (1 - eta) ** loss
        w = w / w.sum()
    return HedgeResult(dict(zip(source_ids, map(float, w / w.sum()))), correct / max(len(labels), 1), tuple(preds))


def _round_sigma_up(sigma: float, bits: int = 20) -> float:
    """sigma rounded up to `bits` significant bits, so that sigma * T * 2**16 is an
    exact float64 (OpenDP takes the scale as a float) and rho only gets smaller."""
    m, e = math.frexp(sigma)
    return math.ldexp(math.ceil(m * (1 << bits)), e - bits)


@dataclass(frozen=True)
class CalibrationResult:
    weights: dict[str, float]
    noisy_accuracy: dict[str, float | None]   # released values (None: not calibrated)
    charges: dict[str, Charge]
    skipped: dict[str, str]                   # source -> why it kept its default weight
    noise_mode: str


def calibration_sigma(policy: ConsortiumPolicy, source_id: str) -> float:
    """Noise on the mean accuracy so that 1/(2 m^2 sigma^2) <= fraction * budget
    (m = 1 at the source unit; the budget is what the ledger enforces). A function
    of the policy alone: the computing parties derive the same scale."""
    src = policy.source(source_id)
    target = Fraction(policy.calibration.budget_fraction) * src.cap_rho      # exact: the cap plan() checks
    sigma = _round_sigma_up(1 / (src.slices * math.sqrt(2 * float(target))))
    while Charge(CALIBRATION, sigma, 1.0, True, src.slices).rho > target:
        sigma = _round_sigma_up(sigma * (1 + 2 ** -19))
    return sigma


def calibration_charge(policy: ConsortiumPolicy, source_id: str) -> Charge:
    """The charge of one noisy mean accuracy: a scalar discrete Gaussian of scale
    sigma on a statistic of sensitivity 1/m, rho = 1/(2 m^2 sigma^2) (CKS 2020 Thm 14)."""
    src = policy.source(source_id)
    return Charge(CALIBRATION, calibration_sigma(policy, source_id), 1.0, True, src.slices)


def accuracy_sum(vote, label: int, num_classes: int, vote_format, query_id: str | None = None) -> int:
    """What one vote adds to its source's accuracy statistic: its unit votes on the
    true label times 2**16 (of vote_format.units; a simplex vote rounded as for a
    query, keyed by `query_id`); 0 if absent or invalid. Linear in the encoded
    vote, so the computing parties get the same integer from their shares."""
    if vote is None:
        return 0
    try:
        return int(encode_vote(vote, num_classes, vote_format, query_id)[label])
    except InvalidVote:
        return 0


def weight_from_accuracy(src, accuracy: float, num_classes: int) -> float:
    """The public map from a released mean accuracy to a weight in the band: the
    accuracy above chance, as a share of the band, floored to the source's grid."""
    chance = 1 / num_classes
    score = min(1.0, max(0.0, (accuracy - chance) / (1 - chance)))
    return src.floor_to_band(src.gamma_min + (src.gamma_max - src.gamma_min) * score)


@dataclass(frozen=True)
class CalibrationPlan:
    """Everything public about one calibration, decided before any vote is read:
    which sources are calibrated (and their charges), which keep their ceilings,
    and the noise scale on each calibrated source's accuracy sum."""
    query_id: str
    labels: tuple[int, ...]
    num_classes: int
    charges: dict[str, Charge]
    skipped: dict[str, str]

    @property
    def num_queries(self) -> int:
        return len(self.labels)

    def sum_scale(self, policy: ConsortiumPolicy, source_id: str) -> Fraction:
        """The noise scale on the sum (grid units): the mean accuracy is sum / (T u 2**16),
        u the unit votes per vote (`grid_step`), so sigma in accuracy units is
        sigma * T * u * 2**16 on the sum (its sensitivity, 1/m for m slices, is in sigma)."""
        return Fraction(self.charges[source_id].sigma) * self.num_queries * policy.source(source_id).grid_step * SCALE


def plan_calibration(policy: ConsortiumPolicy, query_id: str, labels, num_classes: int, spent, budgets,
                     calibrated_before) -> CalibrationPlan:
    """The plan of one calibration from public data and spends. calibrated_before[s]:
    rho already charged to s for calibration. The policy's share is a cap on all
    calibration, not on one run: a run that would take a source past it, or past its
    budget, skips that source (it keeps its ceiling)."""
    check_query_id(query_id, ParameterError)
    labels = tuple(int(y) for y in labels)
    if not labels:
        raise ParameterError("calibration needs at least one labelled query")
    if any(not 0 <= y < num_classes for y in labels):
        raise ParameterError(f"labels must be in [0, {num_classes})")
    charges, skipped = {}, {}
    for src in policy.sources:
        charge = calibration_charge(policy, src.id)
        share = Fraction(policy.calibration.budget_fraction) * src.cap_rho
        if spent[src.id] + charge.rho > budgets[src.id] or calibrated_before[src.id] + charge.rho > share:
            skipped[src.id] = "budget"
        else:
            charges[src.id] = charge
    return CalibrationPlan(query_id, labels, num_classes, charges, skipped)


def calibration_outcome(policy: ConsortiumPolicy, plan: CalibrationPlan, noisy_sums) -> CalibrationResult:
    """Weights from the released noisy sums (a post-processing: no further charge)."""
    weights, released = {}, {}
    for src in policy.sources:
        if src.id in plan.skipped:
            weights[src.id], released[src.id] = src.grid_max, None
            continue
        acc = int(noisy_sums[src.id]) / (plan.num_queries * src.grid_step * SCALE)
        released[src.id] = acc
        weights[src.id] = weight_from_accuracy(src, acc, plan.num_classes)
    return CalibrationResult(weights, released, dict(plan.charges), dict(plan.skipped), "")


def calibration_entry(policy: ConsortiumPolicy, plan: CalibrationPlan, result: CalibrationResult, noise_mode: str):
    """The log entry's renderer for this calibration: (seq, spent, charged) -> bytes."""
    ids = policy.ids
    gamma_col = entry.pack_u32([int(result.weights[s] * SCALE) for s in ids])   # on the grid: exact
    status = "".join(entry.CALIBRATION_SKIPPED if s in plan.skipped else entry.CALIBRATED for s in ids)
    sigmas = [plan.charges[s].sigma if s in plan.charges else None for s in ids]
    accuracy = [result.noisy_accuracy[s] for s in ids]

    def render(seq, spent, charged) -> bytes:
        spent_col, charged_col = entry.columns(ids, spent, charged)
        return entry.encode(entry.Calibration(
            v=entry.VERSION, seq=seq, query_id=plan.query_id, noise=noise_mode, num_queries=plan.num_queries,
            num_classes=plan.num_classes, sigma=sigmas, accuracy=accuracy, gamma=gamma_col, status=status,
            spent=spent_col, charged=charged_col))
    return render


def labelled_query_ids(query_id: str, count: int) -> list[str]:
    """The default ids of a calibration's labelled queries."""
    return [f"{query_id}/t{t:05d}" for t in range(count)]


class PrivateCalibration:
    """Calibration with the votes in hand (the plaintext backend, or inside the
    enclave), or — with `backend` — computed by a backend that holds only shares
    (`backend.calibrate(plan, votes, noise)` returns the noisy sums)."""

    def __init__(self, policy: ConsortiumPolicy, ledger: Ledger, noise: NoiseSource | None = None, backend=None):
        self.policy = policy
        self.ledger = ledger
        self.noise = noise or PrivateNoise()
        self.backend = backend if hasattr(backend, "calibrate") else None

    def sigma_for(self, source_id: str) -> float:
        return calibration_sigma(self.policy, source_id)

    def plan(self, query_id: str, labels, num_classes: int) -> CalibrationPlan:
        before = {src.id: sum((c.rho for c in self.ledger.charges(src.id) if c.mechanism == CALIBRATION),
                              Fraction(0)) for src in self.policy.sources}
        return plan_calibration(self.policy, query_id, labels, num_classes, self.ledger.spent(),
                                self.ledger.budgets(), before)

    def run(self, query_id: str, votes, labels, num_classes: int, query_ids=None) -> CalibrationResult:
        """votes[t][s]: source s's vote on labelled query t (policy order; FROM_SOURCES
        rows when the sources sent them to the backend); labels[t]: true class;
        query_ids[t]: the labelled queries' ids (default QUERY_ID/tNNNNN), under which
        the sources submit to a backend. Charges and releases are recorded in the
        ledger (kind "calibration")."""
        check_query_id(query_id, ParameterError)
        if len(votes) != len(labels):
            raise VoteError(f"{len(votes)} vote rows for {len(labels)} labels")
        plan = self.plan(query_id, labels, num_classes)
        ids = labelled_query_ids(query_id, len(plan.labels)) if query_ids is None else list(query_ids)
        if len(ids) != len(plan.labels):
            raise VoteError(f"{len(ids)} labelled query ids for {len(plan.labels)} labels")
        if self.backend is not None:
            self.backend.bind(self.policy)
            sums = self.backend.calibrate(plan, votes, self.noise, ids)
        else:
            sums = {}
            for j, src in enumerate(self.policy.sources):
                if src.id not in plan.charges:
                    continue
                # Sum over t of the mass on the true label, at scale 2**16 (exact integers).
                total = sum(accuracy_sum(votes[t][j], y, num_classes, src.vote_format, ids[t])
                            for t, y in enumerate(plan.labels))
                sums[src.id] = total + int(self.noise.sample(plan.sum_scale(self.policy, src.id), 1)[0])
        return self.commit(plan, sums)

    def commit(self, plan: CalibrationPlan, noisy_sums) -> CalibrationResult:
        """Record the released sums' charges and entry atomically; the weights follow."""
        result = calibration_outcome(self.policy, plan, noisy_sums)
        render = calibration_entry(self.policy, plan, result, self.noise.mode)
        self.ledger.commit([LedgerRecord(plan.query_id, entry.CALIBRATION,
                                         tuple((sid, c) for sid, c in plan.charges.items()), render)])
        return CalibrationResult(result.weights, result.noisy_accuracy, result.charges, result.skipped,
                                 self.noise.mode)


def stored_weights(ledger: Ledger) -> dict[str, float] | None:
    """The weights of the latest calibration in the ledger (they were committed
    atomically with its charges), or None if it holds none."""
    latest = None
    for rec in ledger.records(kind=entry.CALIBRATION):
        latest = rec
    if latest is None:
        return None
    units = entry.unpack(latest.gamma, "<u4", len(ledger.policy.sources))
    return {sid: int(g) / SCALE for sid, g in zip(ledger.policy.ids, units)}
