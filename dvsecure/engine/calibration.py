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


class PrivateCalibration:
    def __init__(self, policy: ConsortiumPolicy, ledger: Ledger, noise: NoiseSource | None = None):
        self.policy = policy
        self.ledger = ledger
        self.noise = noise or PrivateNoise()

    def sigma_for(self, source_id: str) -> float:
        """Noise on the mean accuracy so that 1/(2 m^2 sigma^2) <= fraction * budget
        (m = 1 at the source unit; the budget is what the ledger enforces)."""
        src = self.policy.source(source_id)
        target = Fraction(self.policy.calibration.budget_fraction) * src.cap_rho      # exact: the cap run() checks
        sigma = _round_sigma_up(1 / (src.slices * math.sqrt(2 * float(target))))
        while Charge(CALIBRATION, sigma, 1.0, True, src.slices).rho > target:
            sigma = _round_sigma_up(sigma * (1 + 2 ** -19))
        return sigma

    def run(self, query_id: str, votes, labels, num_classes: int) -> CalibrationResult:
        """votes[t][s]: source s's vote on labelled query t (policy order); labels[t]: true class.
        Charges and releases are recorded in the ledger (kind "calibration")."""
        check_query_id(query_id, ParameterError)
        labels = [int(y) for y in labels]
        t_count = len(labels)
        if t_count == 0:
            raise ParameterError("calibration needs at least one labelled query")
        if len(votes) != t_count:
            raise VoteError(f"{len(votes)} vote rows for {t_count} labels")
        if any(not 0 <= y < num_classes for y in labels):
            raise ParameterError(f"labels must be in [0, {num_classes})")
        spent = self.ledger.spent()
        budgets = self.ledger.budgets()
        weights, released, charges, skipped = {}, {}, {}, {}
        for j, src in enumerate(self.policy.sources):
            sigma = self.sigma_for(src.id)
            m = src.slices
            charge = Charge(CALIBRATION, sigma, 1.0, True, m)
            # The policy's share is a cap on all calibration, not on one run: a second
            # run that would take the source past it is skipped for that source.
            share = Fraction(self.policy.calibration.budget_fraction) * src.cap_rho
            before = sum((c.rho for c in self.ledger.charges(src.id) if c.mechanism == CALIBRATION), Fraction(0))
            if spent[src.id] + charge.rho > budgets[src.id] or before + charge.rho > share:
                skipped[src.id] = "budget"
                weights[src.id] = src.grid_max
                released[src.id] = None
                continue
            # Sum over t of the mass on the true label, at scale 2**16 (exact integers;
            # a histogram's count times 2**16); an invalid or absent vote counts 0.
            total = 0
            for t in range(t_count):
                v = votes[t][j]
                if v is None:
                    continue
                try:
                    total += int(encode_vote(v, num_classes, src.vote_format)[labels[t]])
                except InvalidVote:
                    pass
            # Mean accuracy (sum / (T m 2**16)) has sensitivity 1/m <=> the sum has
            # sensitivity T*2**16 grid units; the noise is sigma in accuracy units.
            noisy_sum = total + int(self.noise.sample(Fraction(sigma) * t_count * m * SCALE, 1)[0])
            acc = noisy_sum / (t_count * m * SCALE)
            released[src.id] = acc
            charges[src.id] = charge
            chance = 1 / num_classes
            score = min(1.0, max(0.0, (acc - chance) / (1 - chance)))
            weights[src.id] = src.floor_to_band(src.gamma_min + (src.gamma_max - src.gamma_min) * score)
        ids = self.policy.ids
        gamma_col = entry.pack_u32([int(weights[s] * SCALE) for s in ids])   # on the grid: exact
        status = "".join(entry.CALIBRATION_SKIPPED if s in skipped else entry.CALIBRATED for s in ids)
        sigmas = [charges[s].sigma if s in charges else None for s in ids]
        accuracy = [released[s] for s in ids]

        def render(seq, spent, charged) -> bytes:
            spent_col, charged_col = entry.columns(ids, spent, charged)
            return entry.encode(entry.Calibration(
                v=entry.VERSION, seq=seq, query_id=query_id, noise=self.noise.mode, num_queries=t_count,
                num_classes=num_classes, sigma=sigmas, accuracy=accuracy, gamma=gamma_col, status=status,
                spent=spent_col, charged=charged_col))

        self.ledger.commit([LedgerRecord(query_id, entry.CALIBRATION,
                                         tuple((sid, c) for sid, c in charges.items()), render)])
        return CalibrationResult(weights, released, charges, skipped, self.noise.mode)


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
