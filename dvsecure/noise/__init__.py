"""Exact discrete Gaussian noise on the integer tally grid.

Three modes, and every output says which one produced it:
- "private":  OpenDP's exact sampler, driven by the operating system's CSPRNG.
- "seeded":   our Canonne-Kamath-Steinke sampler on a seeded PRNG; reproducible,
              for research and tests only, never private.
- "no_noise": no noise at all; tests only; the release is not private.
"""
from .sources import NoiseSource, PrivateNoise, SeededNoise, NoNoise, PRIVATE, SEEDED, NO_NOISE, make_noise

__all__ = ["NoiseSource", "PrivateNoise", "SeededNoise", "NoNoise", "PRIVATE", "SEEDED", "NO_NOISE", "make_noise"]
