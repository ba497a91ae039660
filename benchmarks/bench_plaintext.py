"""Plaintext mechanism + filter throughput (queries/s), JSON on stdout.

Measured in one run, on the same synthetic votes:
- baseline:   the prototype's computation — float tally, float Gaussian noise,
              argmax in numpy, no validation, no filter, no ledger;
- mechanism:  dvsecure's exact fixed-point tally, OpenDP discrete Gaussian noise
              and argmax (no filter, no ledger);
- aggregator: the full path — validation, budget filter, charges, durable ledger
              commit (SQLite WAL, fsync), batches of --batch queries.
Ratios are against the baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.mechanism.release import release_batch, tally
from dvsecure.noise import PrivateNoise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy


def policy(num_sources: int) -> ConsortiumPolicy:
    # Budgets large enough that no source is excluded during the measurement.
    return ConsortiumPolicy(
        sources=tuple(SourcePolicy(f"s{i}", 0.01, 0.05, Budget("rho", 1e9)) for i in range(num_sources)),
        mechanism=MechanismPolicy("confident_gnmax", sigma2=2.0, sigma1=2.0, threshold=0.1))


def timed(fn, min_seconds: float) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n, elapsed


def bench(num_sources: int, num_classes: int, batch: int, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    pol = policy(num_sources)
    votes = rng.integers(0, num_classes, size=(batch, num_sources))
    onehot = np.eye(num_classes, dtype=np.int64)[votes] * SCALE
    gammas = np.full((batch, num_sources), int(0.05 * SCALE), dtype=np.int64)
    mech = pol.mechanism

    def baseline():
        v = (0.05 * np.eye(num_classes)[votes]).sum(axis=1)
        answered = v.max(axis=1) + rng.normal(0, mech.sigma1, batch) >= mech.threshold
        _ = np.argmax(v + rng.normal(0, mech.sigma2, v.shape), axis=1)[answered]
        return batch

    noise = PrivateNoise()

    def mechanism():
        release_batch(tally(gammas, onehot), mech, noise)
        return batch

    results = {}
    for name, fn in (("baseline", baseline), ("mechanism", mechanism)):
        n, t = timed(fn, seconds)
        results[name] = n / t

    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(Path(d) / "ledger.sqlite", pol)
        agg = Aggregator(pol, ledger, noise=noise)
        counter = [0]
        vote_rows = [row for row in votes]  # each query: an int array, one class index per source

        def aggregator():
            items = [(f"q{counter[0] + i}", vote_rows[i]) for i in range(batch)]
            counter[0] += batch
            agg.query_batch(items, num_classes)
            return batch

        n, t = timed(aggregator, seconds)
        results["aggregator"] = n / t
        ledger.verify()
        ledger.close()
    return {
        "sources": num_sources, "classes": num_classes, "batch": batch,
        "queries_per_second": {k: round(v, 1) for k, v in results.items()},
        "ratio_to_baseline": {k: round(v / results["baseline"], 5) for k, v in results.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    runs = [bench(50, 10, args.batch, args.seconds), bench(1000, 10, args.batch, args.seconds)]
    report = {"benchmark": "plaintext mechanism + filter", "python": sys.version.split()[0],
              "machine": platform.machine(), "results": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
