"""Real vote files for the walk-through: scikit-learn's bundled digits (no
download), split among three institutions. Each institution splits its share
into M slices (one model per slice, logistic regression) and votes on every query
image with the histogram of its slices' predictions — what a slice-unit source
submits. The operator's queries file names the query images; the first
LABELLED carry their true label (the calibration queries).

    python make_votes.py WORKDIR [QUERIES] [LABELLED]

writes WORKDIR/operator/queries.jsonl and WORKDIR/<source>/votes.jsonl, and
prints one line per source: its accuracy alone on the queries (its slices'
plurality, NOT private: for comparison only).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

SOURCES = ("hospital-a", "hospital-b", "clinic-c")
SLICES = 8


def main() -> None:
    work = Path(sys.argv[1])
    queries = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    labelled = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(2026).permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    qx, qy = x[:queries], y[:queries]
    train = np.array_split(np.arange(queries, len(y)), len(SOURCES))
    ids = [f"img-{i:04d}" for i in range(queries)]
    (work / "operator").mkdir(parents=True, exist_ok=True)
    with open(work / "operator" / "queries.jsonl", "w") as f:
        for i, qid in enumerate(ids):
            row = {"query_id": qid, "classes": 10}
            if i < labelled:
                row["label"] = int(qy[i])
            f.write(json.dumps(row) + "\n")
    for sid, rows in zip(SOURCES, train):
        counts = np.zeros((queries, 10), dtype=int)
        for part in np.array_split(rows, SLICES):
            model = LogisticRegression(max_iter=2000).fit(x[part], y[part])
            counts[np.arange(queries), model.predict(qx)] += 1
        (work / sid).mkdir(parents=True, exist_ok=True)
        with open(work / sid / "votes.jsonl", "w") as f:
            for qid, hist in zip(ids, counts):
                f.write(json.dumps({"query_id": qid, "vote": hist.tolist()}) + "\n")
        alone = float(np.mean(counts.argmax(1)[labelled:] == qy[labelled:]))
        print(f"{sid}: {len(rows)} images in {SLICES} slices; alone (NOT private) {alone:.3f} "
              "on the unlabelled queries")


if __name__ == "__main__":
    main()
