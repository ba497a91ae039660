"""The institutions' data and models: a dataset bundled with scikit-learn (nothing
is downloaded), split into a training pool and held-out queries; the pool split
among institutions by a Dirichlet draw over classes (non-IID: with skew alpha,
each class's images go to the institutions in proportions ~ Dirichlet(alpha),
the partition of Hsu, Qi & Brown 2019); each institution splits its share into
m disjoint slices and trains one classifier per slice (m = 1: one model, a
source-unit institution)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError

DATASETS = ("digits",)


@dataclass(frozen=True)
class Dataset:
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_query: np.ndarray
    y_query: np.ndarray
    num_classes: int


def load(name: str, seed: int, query_fraction: float = 0.35) -> Dataset:
    """The dataset, shuffled with `seed` and split into a training pool and queries."""
    if name != "digits":
        raise ParameterError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)          # 1,797 8x8 images, 10 classes, bundled in scikit-learn
    X = X / 16.0
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    n_query = int(len(y) * query_fraction)
    return Dataset(name, X[n_query:], y[n_query:], X[:n_query], y[:n_query], 10)


def dirichlet_partition(y: np.ndarray, institutions: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint index sets, one per institution: each class's examples are dealt to
    the institutions in proportions drawn from Dirichlet(alpha * 1). Small alpha:
    each institution sees few classes; large alpha: close to IID."""
    if institutions < 1 or not alpha > 0:
        raise ParameterError(f"need >= 1 institution and skew alpha > 0, got {institutions}, {alpha}")
    parts: list[list[int]] = [[] for _ in range(institutions)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(institutions, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


class _Constant:
    """A 'model' for a slice that saw a single class: it always votes that class."""

    def __init__(self, label: int):
        self.label = label

    def predict(self, X):
        return np.full(len(X), self.label)


def train_slices(X: np.ndarray, y: np.ndarray, slices: int, rng: np.random.Generator) -> list:
    """One logistic-regression classifier per disjoint slice of (X, y)."""
    from sklearn.linear_model import LogisticRegression

    if len(y) < slices:
        raise ParameterError(f"an institution holds {len(y)} examples, fewer than its {slices} slices")
    models = []
    for chunk in np.array_split(rng.permutation(len(y)), slices):
        labels = y[chunk]
        if len(np.unique(labels)) == 1:
            models.append(_Constant(int(labels[0])))
            continue
        models.append(LogisticRegression(max_iter=300).fit(X[chunk], labels))
    return models


def institution_votes(models: list[list], X: np.ndarray, num_classes: int) -> list[list]:
    """votes[q][s]: a class index for a one-model institution, else the histogram
    (counts) of its slice models' predictions."""
    columns = []
    for slice_models in models:
        preds = np.stack([m.predict(X) for m in slice_models], axis=1).astype(np.int64)   # [Q, m]
        if preds.shape[1] == 1:
            columns.append(preds[:, 0].tolist())
        else:
            counts = np.zeros((len(X), num_classes), dtype=np.int64)
            np.add.at(counts, (np.repeat(np.arange(len(X)), preds.shape[1]), preds.ravel()), 1)
            columns.append(counts.tolist())
    return [[col[q] for col in columns] for q in range(len(X))]
