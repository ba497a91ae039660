"""Experiments on real data (the `experiments` extra): institutions with disjoint,
non-IID partitions of a dataset that ships inside scikit-learn, one model per
slice, the consortium labelling held-out queries over a grid of mechanism
parameters; results as JSON/CSV and plots.

    pip install -e '.[experiments]'
    dvsecure experiment --dataset digits --quick --out DIR
"""

EXTRA_HINT = "this needs the experiments extra: pip install -e '.[experiments]' (scikit-learn, matplotlib, tqdm)"


def require_extra() -> None:
    """Raise ImportError naming the extra if any of its packages is missing."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{EXTRA_HINT} (missing: {e.name})") from None
