"""The embedded default consortium and its synthetic voters.

Five sources with heterogeneous bands and budgets, after the prototype's
"Individual Budget Demonstration" table (budgets as RDP B at order 2), voting
on synthetic queries with different accuracies.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..policy import Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy

# (gamma_min, gamma_max, RDP budget at order 2, voter accuracy)
_TABLE = [
    (0.10, 0.60, 100.0, 0.90),
    (0.08, 0.40, 40.0, 0.85),
    (0.05, 0.35, 30.0, 0.80),
    (0.03, 0.20, 10.0, 0.70),
    (0.02, 0.15, 5.0, 0.60),
]


def default_policy(num_sources: int = 5) -> ConsortiumPolicy:
    if num_sources < 1:
        raise ParameterError(f"--sources must be >= 1, got {num_sources}")
    sources = []
    for i in range(num_sources):
        lo, hi, b, _ = _TABLE[i % len(_TABLE)]
        sources.append(SourcePolicy(id=f"inst-{i + 1}", gamma_min=lo, gamma_max=hi,
                                    budget=Budget("rdp", b, order=2.0), delta=1e-5,
                                    on_exhaustion="shrink" if i % 2 else "exclude"))
    return ConsortiumPolicy(sources=tuple(sources), name="demo-consortium",
                            mechanism=MechanismPolicy("confident_gnmax", sigma2=0.5, sigma1=0.5, threshold=0.8),
                            calibration=CalibrationPolicy(budget_fraction=0.1))


def synthetic_votes(num_queries: int, num_sources: int, num_classes: int, seed: int,
                    accuracies=None) -> tuple[np.ndarray, np.ndarray]:
    """labels int[Q]; votes int[Q, S] (class indices): source s is right with
    probability accuracy[s], otherwise uniform over the wrong classes."""
    rng = np.random.default_rng(seed)
    acc = np.array(accuracies if accuracies is not None else
                   [_TABLE[i % len(_TABLE)][3] for i in range(num_sources)])
    labels = rng.integers(0, num_classes, size=num_queries)
    right = rng.random((num_queries, num_sources)) < acc
    wrong = (labels[:, None] + rng.integers(1, num_classes, size=(num_queries, num_sources))) % num_classes
    votes = np.where(right, labels[:, None], wrong)
    return labels, votes
