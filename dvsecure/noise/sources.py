"""Noise sources: one interface, three modes (see package docstring)."""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..errors import ParameterError

PRIVATE = "private"
SEEDED = "seeded"
NO_NOISE = "no_noise"

# OpenDP's integer noise works on i64; the grid noise must stay far inside it.
_MAX_GRID_SIGMA = float(2 ** 52)


class NoiseSource:
    """Draws i.i.d. N_Z(0, sigma^2) samples, sigma given on the integer grid."""

    mode: str = ""

    @property
    def private(self) -> bool:
        return self.mode == PRIVATE

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def _check(sigma: Fraction, size: int) -> None:
        if sigma <= 0:
            raise ParameterError(f"noise scale must be > 0, got {sigma}")
        if float(sigma) > _MAX_GRID_SIGMA:
            raise ParameterError(f"noise scale {float(sigma):.3g} on the tally grid is too large for i64 noise")
        if size < 0:
            raise ParameterError(f"sample size must be >= 0, got {size}")


@lru_cache(maxsize=64)
def _opendp_measurement(sigma: float):
    import opendp.prelude as dp

    dp.enable_features("contrib")
    # "i64", never `int`: opendp maps Python int to i32, which saturates.
    return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=sigma)


class PrivateNoise(NoiseSource):
    """OpenDP's exact discrete Gaussian (CKS 2020 algorithm, CSPRNG-driven).

    OpenDP takes the scale as a float64; grid scales are sigma * 2**32 with sigma
    a float64, which is exactly representable, so nothing is rounded."""

    mode = PRIVATE

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        s = float(sigma)
        if Fraction(s) != Fraction(sigma):
            raise ParameterError(f"noise scale {sigma} is not exactly a float64")
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(_opendp_measurement(s)([0] * size), dtype=np.int64)


class SeededNoise(NoiseSource):
    """Our own exact CKS sampler on a seeded PRNG: reproducible, NOT private."""

    mode = SEEDED

    def __init__(self, seed: int):
        from .cks import SeededDiscreteGaussian

        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParameterError(f"noise seed must be an integer, got {seed!r}")
        self.seed = seed
        self._sampler = SeededDiscreteGaussian(seed)

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        return np.asarray(self._sampler.sample(sigma, size), dtype=np.int64)


class NoNoise(NoiseSource):
    """Zeros. Tests only: every output produced with it is marked non-private."""

    mode = NO_NOISE

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        return np.zeros(size, dtype=np.int64)


def make_noise(mode: str = PRIVATE, seed: int | None = None) -> NoiseSource:
    if mode == PRIVATE:
        return PrivateNoise()
    if mode == SEEDED:
        if seed is None:
            raise ParameterError("seeded noise needs a seed")
        return SeededNoise(seed)
    if mode == NO_NOISE:
        return NoNoise()
    raise ParameterError(f"unknown noise mode {mode!r}; expected {PRIVATE!r}, {SEEDED!r} or {NO_NOISE!r}")
