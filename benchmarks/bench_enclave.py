"""Enclave-path throughput over loopback gRPC with TLS (queries/s), JSON on stdout.

Measured in one run, on the same synthetic votes (S sources, C classes, batches
of --batch queries):
- baseline: the in-process Aggregator the enclave runs (plaintext backend,
  OpenDP noise, filter, charges, durable ledger, log with a signed checkpoint
  per batch), given each vote as a Submission — no network, no crypto;
- enclave:  the sim enclave as its own process; per batch the coordinator Opens
  the queries, every source seals and signs its votes and Submits them (one
  request per source per batch, sent concurrently), and the coordinator
  releases the batch (Query). Client-side sealing runs on the same machine.
  Also reported: the time inside Query (the release) and the rest (open +
  seal + submit), per batch.
Ratios are against the baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dvsecure.backends import PlaintextBackend
from dvsecure.demo.enclave import COORDINATOR, launch, prepare
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.log.note import Signer
from dvsecure.log.writer import LogWriter
from dvsecure.noise import PrivateNoise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.tee.client import CoordinatorClient, SourceClient, connect, verify_enclave
from dvsecure.tee.protocol import enclave_measurement
from dvsecure.wire.submission import Submission


def policy(num_sources: int) -> ConsortiumPolicy:
    # Budgets large enough that no source is excluded during the measurement.
    return ConsortiumPolicy(
        sources=tuple(SourcePolicy(f"s{i}", 0.01, 0.05, Budget("rho", 1e9)) for i in range(num_sources)),
        mechanism=MechanismPolicy("confident_gnmax", sigma2=2.0, sigma1=2.0, threshold=0.1), name="bench-enclave")


def baseline(pol: ConsortiumPolicy, votes: np.ndarray, batch: int, num_classes: int, work: Path) -> float:
    ledger = Ledger(work / "ledger.sqlite", pol)
    try:
        log = LogWriter(work / "log", ledger, [Signer("bench/enclave", os.urandom(32))], role="enclave")
        agg = Aggregator(pol, ledger, backend=PlaintextBackend(), noise=PrivateNoise(), log=log)
        start = time.perf_counter()
        for b in range(0, len(votes), batch):
            items = [(f"q{b + i}", {sid: Submission(int(v), os.urandom(32)) for sid, v in zip(pol.ids, row)})
                     for i, row in enumerate(votes[b:b + batch])]
            agg.query_batch(items, num_classes)
        return time.perf_counter() - start
    finally:
        ledger.close()


def enclave(pol: ConsortiumPolicy, votes: np.ndarray, batch: int, num_classes: int, work: Path) -> dict:
    keys, coordinator_key = prepare(work / "state", pol)
    proc = launch(work / "state", work / "out", ("--max-message-bytes", str(64 << 20)))
    try:
        roots = [(work / "state" / "sim-ca" / "root.pem").read_bytes()]
        conns = [connect(proc.address, proc.tls_cert, max_message_bytes=64 << 20) for _ in range(4)]
        ident = verify_enclave(conns[0], expected_pcr0=enclave_measurement(),
                               expected_principals=(work / "state" / "principals.json").read_bytes(), expected_policy=pol,
                               trusted_sim_roots=roots)
        coordinator = CoordinatorClient(COORDINATOR, coordinator_key, conns[0], ident)
        sources = [SourceClient(sid, keys[sid], conns[j % len(conns)], ident) for j, sid in enumerate(pol.ids)]
        release_time = 0.0
        with ThreadPoolExecutor(max_workers=8) as pool:
            start = time.perf_counter()
            for b in range(0, len(votes), batch):
                qids = [f"q{b + i}" for i in range(min(batch, len(votes) - b))]
                coordinator.open(qids, num_classes)
                list(pool.map(lambda j: sources[j].submit(qids, votes[b:b + batch, j].tolist(), num_classes),
                              range(len(sources))))
                t = time.perf_counter()
                coordinator.release(qids)
                release_time += time.perf_counter() - t
            total = time.perf_counter() - start
        for c in conns:
            c.close()
        return {"total": total, "release": release_time}
    finally:
        proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    pol = policy(args.sources)
    n = args.batch * args.batches
    votes = np.random.default_rng(0).integers(0, args.classes, size=(n, args.sources))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "base").mkdir()
        t_base = baseline(pol, votes, args.batch, args.classes, Path(d) / "base")
        t = enclave(pol, votes, args.batch, args.classes, Path(d))
    qps = {"baseline_in_process_aggregator": n / t_base, "enclave_grpc_tls": n / t["total"],
           "enclave_release_only": n / t["release"]}
    report = {"benchmark": "enclave path over loopback gRPC + TLS", "python": sys.version.split()[0],
              "machine": platform.machine(), "cpus": os.cpu_count(), "sources": args.sources,
              "classes": args.classes, "batch": args.batch, "queries": n,
              "queries_per_second": {k: round(v, 1) for k, v in qps.items()},
              "ratio_to_baseline": {k: round(v / qps["baseline_in_process_aggregator"], 4) for k, v in qps.items()},
              "seconds": {"baseline": round(t_base, 3), "enclave_total": round(t["total"], 3),
                          "enclave_release": round(t["release"], 3),
                          "enclave_open_seal_submit": round(t["total"] - t["release"], 3)}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
