"""Per-source charges as immutable records.

A Charge records exactly what accounting needs (which mechanism, its noise
scale, the source's weight, whether the step ran) and its zCDP cost `rho` is a
pure function of those fields. A record's meaning never changes: new mechanisms
get new names, never new readings of old ones.

Neighbouring relation (DESIGN §4), by the source's privacy unit. Source unit
(slices = 1): source-level replacement; a one-hot or simplex vote p_s scaled by
gamma moves the tally vector by at most sqrt(2)*gamma in L2 and the maximum
tally entry by at most gamma. Slice unit (slices = m): neighbours differ in one
slice's data, so one of the m slice votes, each weighted gamma/m, changes: the
tally moves by at most sqrt(2)*gamma/m in L2 and its maximum by gamma/m, and
every charge is the source-level one divided by m^2 (PATE's teacher partition,
Papernot et al. 2017, 2018). The source-level spend of a slice-unit source (its
influence) is therefore m^2 times its slice-level spend.

Every noise draw is a discrete Gaussian N_Z(0, sigma^2) on the integer tally
grid (scale 2**32), and every sensitivity in grid units is an integer, because
gamma is a multiple of 2**-16 and vote entries are multiples of 2**-16.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from typing import Iterable

from ..errors import ParameterError

GNMAX = "gnmax"              # noisy argmax over the C tallies
THRESHOLD = "threshold"      # Confident-GNMax: noisy max tally vs threshold T
CALIBRATION = "calibration"  # noisy per-source accuracy used to learn gamma
MECHANISMS = (GNMAX, THRESHOLD, CALIBRATION)


def discrete_gaussian_rho(l2_sensitivity_sq: Fraction, sigma: Fraction) -> Fraction:
    """zCDP of adding N_Z(0, sigma^2) noise to each coordinate of an integer-valued
    query whose L2 sensitivity squared is `l2_sensitivity_sq`.

    Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential
    Privacy", Theorem 4 (one dimension) and Theorem 14 (independent coordinates):
    for integer shifts, D_alpha(N_Z(x, s^2) || N_Z(y, s^2)) <= alpha*||x-y||^2/(2 s^2),
    i.e. the mechanism is Delta^2/(2 sigma^2)-zCDP, the same as the continuous
    Gaussian. The ratio is scale-free, so it may be evaluated in weight units.
    """
    return l2_sensitivity_sq / (2 * sigma * sigma)


@dataclass(frozen=True, slots=True)
class Charge:
    """One privacy charge to one source for one mechanism step.

    mechanism: GNMAX, THRESHOLD or CALIBRATION.
    sigma:     the noise scale of that step, in weight units.
    gamma:     the source's weight in the released statistic (a multiple of
               2**-16 in [0, 1]); 0 for an excluded source.
    answered:  whether the step ran. The threshold check always runs; the GNMax
               release runs only on answered queries; a refused query's GNMax
               record has answered=False and costs nothing.
    slices:    the privacy unit: 1 for a source-unit charge, m for a slice-unit
               source (its sensitivity is 1/m of the source-level one).
    """

    mechanism: str
    sigma: float
    gamma: float
    answered: bool = True
    slices: int = 1

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ParameterError(f"unknown mechanism {self.mechanism!r}; expected one of {MECHANISMS}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not (0 < self.sigma < float("inf")):
            raise ParameterError(f"sigma must be a positive finite number, got {self.sigma!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise ParameterError(f"gamma must be a number, got {self.gamma!r}")
        if not isinstance(self.answered, bool):
            raise ParameterError(f"answered must be a bool, got {self.answered!r}")
        if isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1:
            raise ParameterError(f"slices must be an integer >= 1, got {self.slices!r}")
        if not 0 <= self.gamma <= 1:
            raise ParameterError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if (Fraction(self.gamma) * 65536).denominator != 1:
            raise ParameterError(f"gamma {self.gamma!r} is not a multiple of 2**-16")

    @property
    def rho(self) -> Fraction:
        """Exact zCDP cost of this step to this source."""
        return _rho(self.mechanism, self.sigma, self.gamma, self.answered, self.slices)

    @property
    def influence_rho(self) -> Fraction:
        """The same step's cost at the source level (slices = 1): the source's influence."""
        return _rho(self.mechanism, self.sigma, self.gamma, self.answered, 1)

    def to_dict(self) -> dict:
        d = {"mechanism": self.mechanism, "sigma": self.sigma, "gamma": self.gamma, "answered": self.answered}
        if self.slices != 1:       # absent at the source unit: older records read the same
            d["slices"] = self.slices
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Charge":
        return cls(mechanism=d["mechanism"], sigma=float(d["sigma"]),
                   gamma=float(d["gamma"]), answered=bool(d["answered"]), slices=int(d.get("slices", 1)))


@lru_cache(maxsize=65536)
def _rho(mechanism: str, sigma: float, gamma: float, answered: bool, slices: int = 1) -> Fraction:
    # Cached: a run repeats the same few (mechanism, sigma, gamma) triples.
    if not answered or gamma == 0:
        return Fraction(0)
    # Slice unit: every sensitivity below is that of one slice's vote, gamma/m.
    g, s = Fraction(gamma) / slices, Fraction(sigma)
    if mechanism == GNMAX:
        # L2 sensitivity sqrt(2)*gamma: rho = 2 gamma^2 / (2 sigma^2).
        return discrete_gaussian_rho(2 * g * g, s)
    # THRESHOLD: the max tally moves by at most gamma.
    # CALIBRATION: a source's mean accuracy in [0,1], weighted by gamma (=1),
    # moves by at most gamma (a slice's share of it, gamma/m, at the slice unit).
    # Both: rho = (gamma/m)^2 / (2 sigma^2).
    return discrete_gaussian_rho(g * g, s)


def total_rho(charges: Iterable[Charge]) -> Fraction:
    """zCDP composes additively (Bun & Steinke 2016, Lemma 2.3), and so does a
    zCDP filter under adaptively chosen charges (Feldman & Zrnic 2020,
    Theorem 3.1 for RDP at every order, hence for zCDP)."""
    return sum((c.rho for c in charges), Fraction(0))


def query_charges(mechanism, gamma: float, answered: bool, slices: int = 1) -> tuple[Charge, ...]:
    """A participant's charges for one query, from public data only (the policy's
    mechanism, its weight, the answered bit, its privacy unit): the threshold check
    always, under Confident-GNMax; the GNMax release, recorded with its answered
    bit (it costs nothing when the query was refused). A non-participant (gamma 0)
    pays nothing. The operator and every MPC party compute charges with this one
    function."""
    if not gamma:
        return ()
    out = []
    if mechanism.confident:
        out.append(Charge(THRESHOLD, mechanism.sigma1, gamma, True, slices))
    out.append(Charge(GNMAX, mechanism.sigma2, gamma, answered, slices))
    return tuple(out)
