"""Fixed-point encoding shared by every backend.

Weights and vote entries are integers at scale 2**16 (CrypTen's encoder scale),
so a tally entry sum_s gamma[s] * p_s[j] is an exact integer at scale 2**32.
Noise is drawn on that same integer grid, so no floating point ever touches a
released value (Mironov 2012: low-order float bits leak).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..errors import ParameterError

FRAC_BITS = 16
SCALE = 1 << FRAC_BITS          # weights and vote entries
TALLY_SCALE = SCALE * SCALE     # tallies and noise (2**32)


def gamma_to_fixed(gamma: float) -> int:
    """Exact integer encoding of a weight; refuses a weight that is not a multiple
    of 2**-16 rather than rounding it silently (a rounded weight could leave its band)."""
    g = Fraction(gamma) * SCALE
    if g.denominator != 1:
        raise ParameterError(f"weight {gamma!r} is not a multiple of 2**-{FRAC_BITS}")
    if not 0 <= g <= SCALE:
        raise ParameterError(f"weight {gamma!r} is outside [0, 1]")
    return int(g)


def fixed_to_gamma(g: int) -> float:
    """Exact: every multiple of 2**-16 in [0, 1] is a float64."""
    return g / SCALE


def floor_to_grid(x: float) -> float:
    """Largest multiple of 2**-16 that is <= x (used to put weights on the grid
    without ever rounding up past a band ceiling or a budget)."""
    return fixed_to_gamma(int(np.floor(Fraction(x) * SCALE)))


def ceil_to_grid(x: float) -> float:
    """Smallest multiple of 2**-16 that is >= x (band floors)."""
    import math
    return fixed_to_gamma(int(math.ceil(Fraction(x) * SCALE)))


def threshold_to_tally(threshold: float) -> int:
    """Smallest tally integer that meets a real threshold: for an integer z,
    z >= T * 2**32  <=>  z >= ceil(T * 2**32)."""
    import math
    return int(math.ceil(Fraction(threshold) * TALLY_SCALE))


def sigma_on_tally_grid(sigma: float) -> Fraction:
    """A noise scale in tally units, exactly."""
    return Fraction(sigma) * TALLY_SCALE
