"""The embedded consortia and their synthetic voters.

Two consortia of heterogeneous institutions, one flag apart (`--consortium`):

- "slices" (the default): every institution splits its data into m disjoint
  slices, one model each, and votes with the histogram of its slices' votes
  (unit = "slice", DESIGN §4). Budgets are ε ≤ 8 at δ = 1e-5 per institution at
  the slice level — one slice, hence any one record, of its data — so the
  consortium answers hundreds of queries; each institution's influence (its
  source-level spend) is reported beside it.
- "prototype": the deep-voting prototype's "Individual Budget Demonstration"
  table (source-level budgets as RDP B at order 2): every charge protects a
  source's whole vote stream, and the budgets run out after a few dozen queries.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..policy import HISTOGRAM, SLICE_UNIT, Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy

DEFAULT_CONSORTIUM = "slices"
CONSORTIA = ("slices", "prototype")

# (gamma_min, gamma_max, RDP budget at order 2, voter accuracy)
_PROTOTYPE = [
    (0.10, 0.60, 100.0, 0.90),
    (0.08, 0.40, 40.0, 0.85),
    (0.05, 0.35, 30.0, 0.80),
    (0.03, 0.20, 10.0, 0.70),
    (0.02, 0.15, 5.0, 0.60),
]

# (gamma_min, gamma_max, slices m, epsilon at delta 1e-5 at the slice level, accuracy)
_SLICES = [
    (0.10, 0.60, 100, 8.0, 0.90),
    (0.08, 0.50, 80, 8.0, 0.85),
    (0.05, 0.45, 64, 6.0, 0.80),
    (0.03, 0.40, 50, 6.0, 0.70),
    (0.02, 0.35, 40, 4.0, 0.60),
]
SLICE_AGREEMENT = 0.8      # how often a slice's model votes its institution's belief


def default_policy(num_sources: int = 5, consortium: str = DEFAULT_CONSORTIUM) -> ConsortiumPolicy:
    if num_sources < 1:
        raise ParameterError(f"--sources must be >= 1, got {num_sources}")
    if consortium == "prototype":
        return prototype_policy(num_sources)
    if consortium != "slices":
        raise ParameterError(f"--consortium must be one of {', '.join(CONSORTIA)}, got {consortium!r}")
    sources = []
    for i in range(num_sources):
        lo, hi, m, eps, _ = _SLICES[i % len(_SLICES)]
        sources.append(SourcePolicy(id=f"inst-{i + 1}", gamma_min=lo, gamma_max=hi,
                                    budget=Budget("eps_delta", eps, delta=1e-5), delta=1e-5,
                                    on_exhaustion="shrink" if i % 2 else "exclude",
                                    unit=SLICE_UNIT, slices=m, votes=HISTOGRAM))
    return ConsortiumPolicy(sources=tuple(sources), name="demo-consortium",
                            mechanism=MechanismPolicy("confident_gnmax", sigma2=0.1, sigma1=0.4, threshold=0.5),
                            calibration=CalibrationPolicy(budget_fraction=0.1))


def prototype_policy(num_sources: int = 5) -> ConsortiumPolicy:
    sources = []
    for i in range(num_sources):
        lo, hi, b, _ = _PROTOTYPE[i % len(_PROTOTYPE)]
        sources.append(SourcePolicy(id=f"inst-{i + 1}", gamma_min=lo, gamma_max=hi,
                                    budget=Budget("rdp", b, order=2.0), delta=1e-5,
                                    on_exhaustion="shrink" if i % 2 else "exclude"))
    return ConsortiumPolicy(sources=tuple(sources), name="demo-consortium",
                            mechanism=MechanismPolicy("confident_gnmax", sigma2=0.5, sigma1=0.5, threshold=0.8),
                            calibration=CalibrationPolicy(budget_fraction=0.1))


def _accuracies(policy: ConsortiumPolicy) -> np.ndarray:
    table = [row[-1] for row in (_SLICES if any(s.slices > 1 for s in policy.sources) else _PROTOTYPE)]
    return np.array([table[i % len(table)] for i in range(len(policy.sources))])


def synthetic_votes(num_queries: int, policy: ConsortiumPolicy, num_classes: int, seed: int,
                    accuracies=None) -> tuple[np.ndarray, list[list]]:
    """labels int[Q]; votes[q][s] in each source's format. Source s believes the
    right class with probability accuracy[s], otherwise one of the wrong classes
    uniformly; a source-unit source votes its belief (a class index), and each of a
    slice-unit source's m slices votes it with probability SLICE_AGREEMENT, else
    a uniformly random class — its vote is the histogram (counts) of the m."""
    rng = np.random.default_rng(seed)
    S = len(policy.sources)
    acc = np.array(accuracies, dtype=float) if accuracies is not None else _accuracies(policy)
    labels = rng.integers(0, num_classes, size=num_queries)
    right = rng.random((num_queries, S)) < acc
    wrong = (labels[:, None] + rng.integers(1, num_classes, size=(num_queries, S))) % num_classes
    beliefs = np.where(right, labels[:, None], wrong)
    columns = []
    for j, src in enumerate(policy.sources):
        if src.slices == 1:
            columns.append([int(b) for b in beliefs[:, j]])
            continue
        m = src.slices
        agree = rng.random((num_queries, m)) < SLICE_AGREEMENT
        slice_votes = np.where(agree, beliefs[:, j, None], rng.integers(0, num_classes, size=(num_queries, m)))
        counts = np.zeros((num_queries, num_classes), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(num_queries), m), slice_votes.ravel()), 1)
        columns.append([row.tolist() for row in counts])
    return labels, [[columns[j][q] for j in range(S)] for q in range(num_queries)]


def vote_vectors(votes: list[list], num_classes: int) -> np.ndarray:
    """float[Q, S, C]: each vote as the distribution it puts on the classes (a class
    index one-hot, a histogram normalised by its slice count)."""
    out = np.zeros((len(votes), len(votes[0]) if votes else 0, num_classes))
    for q, row in enumerate(votes):
        for s, v in enumerate(row):
            if isinstance(v, (int, np.integer)):
                out[q, s, int(v)] = 1.0
            else:
                arr = np.asarray(v, dtype=float)
                out[q, s] = arr / arr.sum()
    return out


def single_source_accuracy(votes: list[list], labels: np.ndarray, num_classes: int) -> list[float]:
    """Each source alone, non-privately: how often its own vote's argmax (a
    histogram's plurality, ties to the lowest class) is the label."""
    if not len(labels):
        return []
    vec = vote_vectors(votes, num_classes)
    return [float(np.mean(np.argmax(vec[:, s], axis=1) == labels)) for s in range(vec.shape[1])]
