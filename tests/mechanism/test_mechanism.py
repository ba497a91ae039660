"""The release rule that does not depend on noise: a query no source took part in
(an all-zero tally) is refused under GNMax and Confident-GNMax, whatever the draws,
and draws no GNMax noise; any other query under plain GNMax is answered."""
from __future__ import annotations

import numpy as np
import pytest

from dvsecure.mechanism.release import release_batch
from dvsecure.noise import make_noise
from dvsecure.policy import MechanismPolicy

GNMAX = MechanismPolicy("gnmax", 0.5)
# A threshold below zero: the noisy maximum of an all-zero tally passes it on almost every draw.
LOW_BAR = MechanismPolicy("confident_gnmax", 0.5, sigma1=0.5, threshold=-3.0)


@pytest.mark.parametrize("mechanism", [GNMAX, LOW_BAR], ids=["gnmax", "confident"])
@pytest.mark.parametrize("mode", ["private", "seeded", "no_noise"])
def test_a_query_without_participants_is_refused_whatever_the_noise(mechanism, mode):
    rng = np.random.default_rng(1)
    tallies = rng.integers(0, 1 << 32, size=(200, 4))
    empty = rng.random(200) < 0.5
    tallies[empty] = 0
    releases = release_batch(tallies, mechanism, make_noise(mode, 3) if mode == "seeded" else make_noise(mode))
    assert [r.answered for r in releases] == (~empty).tolist()     # the others pass even this low bar
    assert all(r.label is None for r, e in zip(releases, empty) if e)


class CountingNoise:
    """Records how many draws of each scale the mechanism asks for."""
    mode, private = "no_noise", False

    def __init__(self):
        self.asked = []

    def sample(self, sigma, n):
        self.asked.append(n)
        return np.zeros(n, dtype=np.int64)


def test_no_gnmax_noise_is_drawn_for_a_refused_empty_query():
    noise = CountingNoise()
    tallies = np.zeros((3, 5), dtype=np.int64)
    tallies[1, 2] = 1 << 16
    releases = release_batch(tallies, GNMAX, noise)
    assert [(r.answered, r.label) for r in releases] == [(False, None), (True, 2), (False, None)]
    assert noise.asked == [5]                      # C draws for the one answered query only
