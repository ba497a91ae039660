"""Test-only driver: one MPC batch (3 sources, 10 queries, 4 classes, one-hot
votes, private noise unless --no-noise), as the coordinator with its party 0, so a test can run
it inside a network namespace and capture it. Writes the votes it submitted and
what was released to OUT (JSON).

    python capture_run.py OUT STATE [--transport links|gloo] [--roster R --policy P]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from dvsecure.backends.mpc import MPCBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

SOURCES, QUERIES, CLASSES = 3, 10, 4
POLICY = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 50.0))
                                        for i in range(SOURCES)),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="capture")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("state")
    p.add_argument("--transport", default="links")
    p.add_argument("--roster")
    p.add_argument("--policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-noise", action="store_true", help="release plain pluralities (local parties only)")
    a = p.parse_args()
    policy = ConsortiumPolicy.load(a.policy) if a.policy else POLICY
    votes = np.random.default_rng(a.seed).integers(CLASSES, size=(QUERIES, SOURCES))
    items = [(f"q{q}", {f"src{s}": int(votes[q, s]) for s in range(SOURCES)}) for q in range(QUERIES)]
    remote = {"roster": a.roster, "spawn_ranks": [0]} if a.roster else {}
    backend = MPCBackend(num_parties=3, timeout=180, state_dir=f"{a.state}/local", transport=a.transport, **remote)
    try:
        with Ledger(f"{a.state}/ledger.sqlite", policy) as ledger:
            agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise" if a.no_noise else "private"))
            results = agg.query_batch(items, CLASSES)
    finally:
        backend.close()
    with open(a.out, "w") as f:
        json.dump({"votes": votes.tolist(), "classes": CLASSES,
                   "released": [[r.answered, r.label] for r in results]}, f)


if __name__ == "__main__":
    main()
