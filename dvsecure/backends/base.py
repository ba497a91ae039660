"""The backend interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..mechanism.release import Release
from ..noise import NoiseSource
from ..policy import MechanismPolicy


class _FromSources:
    """Passed instead of a query's votes when the sources send them to the
    computing side themselves (MPC parties over gRPC): the backend reports who
    submitted, and the commitments the sources sent."""

    def __repr__(self) -> str:
        return "FROM_SOURCES"


FROM_SOURCES = _FromSources()


@dataclass(frozen=True)
class BackendOutput:
    """What a backend reveals for one query: the release, per source whether its
    vote passed validation (None) or why it was excluded (a reason string), and,
    for votes FROM_SOURCES, the packed commitments the sources sent (32 B each)."""

    release: Release
    problems: tuple[str | None, ...]
    commitments: bytes | None = None


class Backend:
    name = "abstract"
    # True if the backend must receive a whole batch at once (so the filter has to
    # reserve each query's worst case in advance); False if it can go query by query.
    evaluates_whole_batch = False
    # True if the sources can send their votes to the computing side themselves
    # (the caller then passes FROM_SOURCES instead of a query's votes).
    takes_votes_from_sources = False

    def bind(self, policy) -> None:
        """Called by the aggregator with the consortium policy before any query
        (a backend whose computing side enforces the policy itself needs it)."""

    def evaluate(self, gammas_fixed: np.ndarray, submissions: Sequence[Sequence], kinds: Sequence[str],
                 num_classes: int, mechanism: MechanismPolicy, noise: NoiseSource,
                 query_ids: Sequence[str] | None = None, desired: np.ndarray | None = None) -> list[BackendOutput]:
        """gammas_fixed: int64[Q, S] public weights (0 = not taking part);
        submissions[q][s]: source s's vote for query q (None if absent);
        query_ids: the ledger's ids of these queries; desired: int64[S] the budget
        filter's desired weights, from which gammas_fixed was decided (computing
        parties re-run the filter with them)."""
        raise NotImplementedError
