"""Audit throughput (entries/s) at S sources, JSON on stdout.

A log of --entries query entries is written through the real ledger and log
writer (real charges, spends, counts, commitments, signed checkpoints every
--checkpoint-every entries), then audited end to end by `dvsecure.audit.check.audit`:
file checks, decoding every entry, leaf hashes and Merkle roots at every
checkpoint, signatures, bands, recomputation of every charge, exact budget
totals. Measured in the same run, the baseline is the least any auditor must
do: read the file and hash every leaf into the tree root. Ratios are against it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from dvsecure.accounting.charges import GNMAX, THRESHOLD, Charge
from dvsecure.audit.check import audit
from dvsecure.engine.ledger import Ledger, LedgerRecord
from dvsecure.log import entry
from dvsecure.log.merkle import CompactRange, leaf_hash
from dvsecure.log.writer import ENTRIES, LogWriter, operator_signer
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy


def policy(num_sources: int) -> ConsortiumPolicy:
    return ConsortiumPolicy(
        sources=tuple(SourcePolicy(f"s{i}", 0.01, 0.05, Budget("rho", 1e9)) for i in range(num_sources)),
        mechanism=MechanismPolicy("confident_gnmax", sigma2=2.0, sigma1=2.0, threshold=0.1), name="bench")


def build_log(root: Path, num_sources: int, num_entries: int, every: int, seed: int = 0) -> Path:
    pol = policy(num_sources)
    rng = np.random.default_rng(seed)
    mech = pol.mechanism
    mentry = entry.Mechanism(kind=mech.kind, sigma2=mech.sigma2, sigma1=mech.sigma1, threshold=mech.threshold)
    weights = rng.integers(int(0.01 * 65536), int(0.05 * 65536) + 1, size=num_sources)
    gamma_col = entry.pack_u32(weights)
    ids = pol.ids
    with Ledger(root / "state" / "ledger.sqlite", pol) as ledger:
        log = LogWriter(root / "log", ledger, [operator_signer(root / "state", pol)])
        for start in range(0, num_entries, every):
            records = []
            for q in range(start, min(start + every, num_entries)):
                answered = bool(rng.random() < 0.7)
                label = int(rng.integers(10)) if answered else None
                commitments = os.urandom(32 * num_sources)
                charges = tuple((sid, c) for sid, g in zip(ids, weights)
                                for c in (Charge(THRESHOLD, mech.sigma1, int(g) / 65536, True),
                                          Charge(GNMAX, mech.sigma2, int(g) / 65536, answered)))

                def render(seq, spent, charged, q=q, answered=answered, label=label, commitments=commitments):
                    sp, ch = entry.columns(ids, spent, charged)
                    return entry.encode(entry.Query(
                        v=entry.VERSION, seq=seq, query_id=f"q{q:07d}", noise="private", backend="plaintext",
                        mechanism=mentry, num_classes=10, answered=answered, label=label, gamma=gamma_col,
                        status="A" * num_sources, spent=sp, charged=ch,
                        commitments=entry.pack_commitments(commitments)))
                records.append(LedgerRecord(f"q{q:07d}", entry.QUERY, charges, render))
            ledger.commit(records)
            log.sync()
    return root / "log"


def baseline(log: Path) -> float:
    t = time.perf_counter()
    lines = (log / ENTRIES).read_bytes().split(b"\n")[:-1]
    tree = CompactRange()
    tree.extend(leaf_hash(line) for line in lines)
    tree.root()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="audits timed; the best is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        log = build_log(Path(tmp), args.sources, args.entries, args.checkpoint_every)
        build_s = time.perf_counter() - t
        size = (log / ENTRIES).stat().st_size
        base = min(baseline(log) for _ in range(args.repeat))
        times, report = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            report = audit(log)
            times.append(time.perf_counter() - t)
        assert report.ok, [str(f) for f in report.findings]
        entries = report.entries
        best = min(times)
        print(json.dumps({
            "benchmark": "audit throughput", "python": platform.python_version(), "machine": platform.machine(),
            "sources": args.sources, "entries": entries, "checkpoints": report.checkpoints,
            "log_bytes": size, "bytes_per_entry": round(size / entries, 1), "build_seconds": round(build_s, 2),
            "entries_per_second": {"baseline_hash_only": round(entries / base), "audit": round(entries / best)},
            "ratio_to_baseline": {"baseline_hash_only": 1.0, "audit": round(base / best, 4)},
            "audit_seconds_all_runs": [round(x, 3) for x in times],
            "goal_entries_per_second": 100_000,
        }, indent=2))


if __name__ == "__main__":
    main()
