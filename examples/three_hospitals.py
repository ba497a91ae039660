"""Three institutions pool their classifiers under a policy they wrote themselves.

Run:  .venv/bin/python examples/three_hospitals.py [STATE_DIR]

Shows the library surface without the demo's scaffolding: a TOML policy, a
durable ledger, an aggregator on the plaintext reference backend, simplex and
one-hot votes, an invalid vote (its source is excluded from that query and
charged nothing), and the per-source spend afterwards. Run it twice with the
same STATE_DIR: the second run continues from the ledger and a source whose
budget is spent is excluded rather than overcharged.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

from dvsecure import Aggregator, ConsortiumPolicy, Ledger
from dvsecure.accounting.conversions import zcdp_eps_tight

POLICY = """
[consortium]
name = "three-hospitals"

[mechanism]
kind = "confident_gnmax"
sigma1 = 0.4
threshold = 0.9
sigma2 = 0.4

[[sources]]
id = "north"
gamma_min = 0.2
gamma_max = 0.5
votes = "simplex"          # north sends probability vectors
budget = { rho = 4.0 }

[[sources]]
id = "south"
gamma_min = 0.1
gamma_max = 0.4
budget = { epsilon = 8.0, delta = 1e-6 }
on_exhaustion = "shrink"   # lower its weight (never below 0.1) before excluding it

[[sources]]
id = "east"
gamma_min = 0.1
gamma_max = 0.3
budget = { rdp = 6.0, order = 4.0 }
"""


def main(state: Path) -> None:
    policy = ConsortiumPolicy.from_toml(POLICY)
    rng = np.random.default_rng(7)
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger)
        first = ledger.next_seq()
        for i in range(40):
            truth = int(rng.integers(3))
            north = np.full(3, 0.1)
            north[truth] = 0.8
            votes = {"north": north.tolist(), "south": truth, "east": [0, 0, 0] if i == 0 else [int(truth == j) for j in range(3)]}
            r = agg.query(f"run{first:04d}-case{i:03d}", votes, num_classes=3)
            if i == 0:
                east = r.participant("east")
                print(f"query {r.query_id}: east {east.status} ({east.reason}); charged {float(east.rho)}")
        print(f"\n{'source':<6} {'spent rho':>9} {'budget rho':>10} {'epsilon':>8}")
        spent, budgets = ledger.spent(), ledger.budgets()
        for src in policy.sources:
            print(f"{src.id:<6} {float(spent[src.id]):>9.3f} {float(budgets[src.id]):>10.3f} "
                  f"{zcdp_eps_tight(spent[src.id], src.delta):>8.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
