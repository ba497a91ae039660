"""The plaintext reference backend: validation, tally and release in numpy.
It sees every vote; it exists to define what the secure backends must compute."""
from __future__ import annotations

import numpy as np

from ..mechanism.release import release_batch, tally
from ..mechanism.votes import encode_votes, vote_format
from .base import Backend, BackendOutput


class PlaintextBackend(Backend):
    name = "plaintext"

    def evaluate(self, gammas_fixed, submissions, kinds, num_classes, mechanism, noise, query_ids=None,
                 desired=None):
        gammas = np.array(gammas_fixed, dtype=np.int64, copy=True)
        kinds = [vote_format(k) for k in kinds]
        q, s = gammas.shape
        votes = np.zeros((q, s, num_classes), dtype=np.int64)
        problems = []
        for i in range(q):
            votes[i], probs = encode_votes(submissions[i], kinds, num_classes)
            for j, p in enumerate(probs):
                if p is not None:
                    gammas[i, j] = 0   # invalid or absent: no weight in the tally
            problems.append(tuple(probs))
        releases = release_batch(tally(gammas, votes, [k.slices for k in kinds]), mechanism, noise)
        return [BackendOutput(r, p) for r, p in zip(releases, problems)]
