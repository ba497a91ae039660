"""The per-source budget filter (DESIGN §4).

Before a query runs, each source's weight is decided from public data only — its
policy, its spend so far (a function of past public outputs) and the most this
query could charge it — never from anyone's current votes. That is what keeps
the filter valid under adaptive composition (Feldman & Zrnic 2020, Theorem 3.1;
a zCDP filter is an RDP filter at every order, so the best order may be chosen
afterwards). A source whose spend plus this query's worst-case charge would
exceed its budget is excluded (gamma 0) or, under "shrink", gets the largest
grid weight that fits, never below gamma_min.

A slice-unit source (m slices) is charged at the slice level, 1/m^2 of the
source-level charge, and its weights are multiples of m * 2**-16; the budget a
caller passes is what the ledger enforces at its unit (`SourcePolicy.cap_rho`:
its budget and its influence budget / m^2, both at once).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import ParameterError
from ..policy import SHRINK, MechanismPolicy, SourcePolicy
from .fixedpoint import SCALE, gamma_to_fixed

ACTIVE = "active"
SHRUNK = "shrunk"
EXCLUDED_BUDGET = "excluded:budget"


def worst_case_unit(mechanism: MechanismPolicy) -> Fraction:
    """k such that the most one query can charge a source of weight gamma is k*gamma^2:
    1/sigma2^2 for the GNMax release (Charge.rho, GNMAX), plus 1/(2 sigma1^2) for
    the threshold check under Confident-GNMax (Charge.rho, THRESHOLD)."""
    k = 1 / Fraction(mechanism.sigma2) ** 2
    if mechanism.confident:
        k += 1 / (2 * Fraction(mechanism.sigma1) ** 2)
    return k


@dataclass(frozen=True)
class Decision:
    gamma: float   # the weight to use: a grid multiple in the source's band, or 0
    status: str    # ACTIVE, SHRUNK or EXCLUDED_BUDGET


class BudgetFilter:
    def __init__(self, mechanism: MechanismPolicy):
        self.mechanism = mechanism
        self.unit = worst_case_unit(mechanism)
        try:
            self._unit_f = float(self.unit)
        except OverflowError:   # a sigma so small no float holds 1/sigma^2: exact path only
            self._unit_f = math.inf

    def worst_case(self, gamma: float, slices: int = 1) -> Fraction:
        """The most one query can charge a source of weight gamma at its unit."""
        g = Fraction(gamma_to_fixed(gamma), SCALE * slices)
        return self.unit * g * g

    def decide(self, source: SourcePolicy, desired: float, spent: Fraction, budget: Fraction) -> Decision:
        if not (source.grid_min <= desired <= source.grid_max and source.on_grid(desired)):
            raise ParameterError(f"source {source.id!r}: weight {desired} is outside its band "
                                 f"[{source.grid_min}, {source.grid_max}] on its grid (multiples of "
                                 f"{source.slices} * 2**-16)")
        m = source.slices
        # Fast accept in floats with a margin far wider than their rounding error;
        # exact rationals decide everything near the boundary.
        if float(spent) + self._unit_f * desired * desired / (m * m) < float(budget) * (1 - 1e-7):
            return Decision(desired, ACTIVE)
        remaining = budget - spent
        if self.worst_case(desired, m) <= remaining:
            return Decision(desired, ACTIVE)
        if source.on_exhaustion == SHRINK and remaining > 0:
            # One slice's weight k/2**16 is what is charged; the source's is m times it.
            g = m * self._largest_fitting(remaining)
            g -= g % source.grid_step       # on the source's grid (a simplex vote's m unit votes)
            if g / SCALE >= source.grid_min:
                return Decision(g / SCALE, SHRUNK)
        return Decision(0.0, EXCLUDED_BUDGET)

    def _largest_fitting(self, remaining: Fraction) -> int:
        """Largest integer g with unit * (g/2**16)^2 <= remaining."""
        bound = remaining / self.unit * SCALE * SCALE
        g = math.isqrt(math.floor(bound))
        while g > 0 and self.unit * Fraction(g, SCALE) ** 2 > remaining:
            g -= 1
        while self.unit * Fraction(g + 1, SCALE) ** 2 <= remaining:
            g += 1
        return g
