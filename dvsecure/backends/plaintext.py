"""The plaintext reference backend: validation, tally and release in numpy.
It sees every vote; it exists to define what the secure backends must compute.
A simplex vote is rounded to its m unit votes here exactly as its source's MPC
client rounds it (`mechanism.votes`), keyed by the query id."""
from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..mechanism.release import release_batch, tally
from ..mechanism.votes import encode_votes, vote_format
from ..policy import SIMPLEX
from .base import Backend, BackendOutput


class PlaintextBackend(Backend):
    name = "plaintext"

    def evaluate(self, gammas_fixed, submissions, kinds, num_classes, mechanism, noise, query_ids=None,
                 desired=None):
        gammas = np.array(gammas_fixed, dtype=np.int64, copy=True)
        kinds = [vote_format(k) for k in kinds]
        q, s = gammas.shape
        if query_ids is None:
            if any(k.kind == SIMPLEX for k in kinds):
                raise ParameterError("simplex votes are rounded with randomness keyed by their query: "
                                     "pass the queries' ids")
            query_ids = [None] * q
        if len(query_ids) != q:
            raise ParameterError(f"{len(query_ids)} query ids for {q} queries")
        votes = np.zeros((q, s, num_classes), dtype=np.int64)
        problems = []
        for i in range(q):
            votes[i], probs = encode_votes(submissions[i], kinds, num_classes, query_ids[i])
            for j, p in enumerate(probs):
                if p is not None:
                    gammas[i, j] = 0   # invalid or absent: no weight in the tally
            problems.append(tuple(probs))
        # Each unit vote at gamma/m, exact: a weight off its source's grid is refused, as the parties refuse it.
        releases = release_batch(tally(gammas, votes, [k.units for k in kinds]), mechanism, noise)
        return [BackendOutput(r, p) for r, p in zip(releases, problems)]
