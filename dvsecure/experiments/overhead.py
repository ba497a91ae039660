"""`dvsecure bench --backend all`: plaintext, MPC and enclave on one workload in
one run — the same policy, the same votes, the same batches — timed phase by
phase, with the bytes each moves, and every time as a ratio to the plaintext
run of the same invocation. Writes one JSON and a bar chart (with its data).

Phases, per backend:
- plaintext: `evaluate` (validation, tally, noise, release in numpy) and
  `account_commit_log` (charges, durable ledger, log and its signed checkpoint);
  nothing crosses a network.
- mpc: `evaluate` (the backend plays the sources — encode, share, seal, sign —
  and the parties open, validate, tally, add noise and reveal) and
  `account_commit_log` (the same, plus every party's cosignature); bytes: what
  the sources send the parties (sealed envelopes, measured on the same votes)
  and, from `dvsecure bench --backend mpc` run on the same sizes here, what each
  party sends the others per query, by pipeline phase.
- enclave (simulated attestation, loopback gRPC + TLS): `open_seal_submit`
  (coordinator opens, every source seals and signs, submits) and `release`
  (the enclave's aggregator); bytes: the serialized requests the sources send.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ..backends import PlaintextBackend
from ..engine.aggregator import Aggregator
from ..engine.ledger import Ledger
from ..log.writer import LogWriter, name_signers, operator_signer
from ..noise import PrivateNoise
from ..policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from .plots import _pyplot, _save


def workload_policy(num_sources: int) -> ConsortiumPolicy:
    # Budgets no measurement can exhaust: every source takes part in every query.
    return ConsortiumPolicy(
        sources=tuple(SourcePolicy(f"s{i}", 0.01, 0.05, Budget("rho", 1e9)) for i in range(num_sources)),
        mechanism=MechanismPolicy("confident_gnmax", sigma2=2.0, sigma1=2.0, threshold=0.1), name="bench-all")


class _Timed:
    """Wraps a backend and adds up the time spent in its evaluate."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.inner.evaluate(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t


def _aggregate(policy, votes, batch, num_classes, work: Path, backend) -> dict:
    timed = _Timed(backend)
    policy = name_signers(policy, work, backend if backend.name == "mpc" else None)
    with Ledger(work / "ledger.sqlite", policy) as ledger:
        cosigners = backend.cosigners(ledger) if backend.name == "mpc" else []
        log = LogWriter(work / "log", ledger, [operator_signer(work, policy), *cosigners])
        agg = Aggregator(policy, ledger, backend=timed, noise=PrivateNoise(), log=log)
        start = time.perf_counter()
        for b in range(0, len(votes), batch):
            agg.query_batch([(f"q{b + i}", row.tolist()) for i, row in enumerate(votes[b:b + batch])], num_classes)
        total = time.perf_counter() - start
    return {"evaluate": timed.seconds, "account_commit_log": total - timed.seconds, "total": total}


def _envelope_bytes(policy, votes, batch, num_classes, num_parties) -> int:
    """What the sources send the parties for these votes: the signed, sealed envelopes."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    from ..mpc.sharing import encode_batch, seal_submissions

    keys = [PrivateKey.generate().public_key for _ in range(num_parties)]
    total = 0
    for j, sid in enumerate(policy.ids):
        signer = SigningKey.generate()
        for b in range(0, len(votes), batch):
            column = votes[b:b + batch, j].tolist()
            qids = [f"q{b + i}" for i in range(len(column))]
            total += sum(map(len, seal_submissions(sid, signer, qids, encode_batch(column, num_classes), keys,
                                                   num_classes=num_classes)))
    return total


def _enclave(policy, votes, batch, num_classes, work: Path) -> dict:
    from ..demo.enclave import COORDINATOR, launch, prepare
    from ..tee.client import CoordinatorClient, SourceClient, connect, verify_enclave
    from ..tee.protocol import enclave_measurement

    keys, coordinator_key = prepare(work / "state", policy)
    proc = launch(work / "state", work / "out", ("--max-message-bytes", str(64 << 20)))
    try:
        roots = [(work / "state" / "sim-ca" / "root.pem").read_bytes()]
        conn = connect(proc.address, proc.tls_cert, max_message_bytes=64 << 20)
        ident = verify_enclave(conn, expected_pcr0=enclave_measurement(),
                               expected_principals=(work / "state" / "principals.json").read_bytes(),
                               expected_policy=policy, trusted_sim_roots=roots)
        coordinator = CoordinatorClient(COORDINATOR, coordinator_key, conn, ident)
        sources = [SourceClient(sid, keys[sid], conn, ident) for sid in policy.ids]
        sent = release = 0.0
        sent_bytes = 0
        start = time.perf_counter()
        for b in range(0, len(votes), batch):
            qids = [f"q{b + i}" for i in range(min(batch, len(votes) - b))]
            coordinator.open(qids, num_classes)
            for j, src in enumerate(sources):
                request, _ = src.seal(qids, votes[b:b + batch, j].tolist(), num_classes)
                sent_bytes += len(request.SerializeToString())
                conn.call("Submit", request)
            t = time.perf_counter()
            coordinator.release(qids)
            release += time.perf_counter() - t
        total = time.perf_counter() - start
        sent = total - release
        conn.close()
    finally:
        proc.stop()
    return {"open_seal_submit": sent, "release": release, "total": total, "bytes_sources_to_enclave": sent_bytes}


def run_all(num_queries: int, num_classes: int, num_sources: int, num_parties: int, out: Path,
            batch: int = 100, seed: int = 0) -> dict:
    from ..backends.mpc import MPCBackend
    from ..mpc.bench import run_bench

    policy = workload_policy(num_sources)
    votes = np.random.default_rng(seed).integers(0, num_classes, size=(num_queries, num_sources))
    with tempfile.TemporaryDirectory(prefix="dvsecure-bench-all-") as d:
        d = Path(d)
        plain = _aggregate(policy, votes, batch, num_classes, d / "plaintext", PlaintextBackend())
        with MPCBackend(num_parties=num_parties, state_dir=str(d / "mpc" / "parties")) as mpc:
            secure = _aggregate(policy, votes, batch, num_classes, d / "mpc", mpc)
        enclave = _enclave(policy, votes, batch, num_classes, d / "enclave")
    envelopes = _envelope_bytes(policy, votes, batch, num_classes, num_parties)
    parties = run_bench(num_queries, num_classes, num_sources, num_parties, seed=seed)
    q = num_queries
    result = {
        "benchmark": "plaintext, MPC and enclave on one workload", "python": platform.python_version(),
        "machine": platform.machine(), "cores": os.cpu_count(),
        "workload": {"queries": q, "classes": num_classes, "sources": num_sources, "parties": num_parties,
                     "batch": batch, "mechanism": policy.mechanism.to_dict(), "noise": "private (OpenDP)"},
        "seconds": {"plaintext": plain, "mpc": secure, "enclave": {k: v for k, v in enclave.items()
                                                                    if not k.startswith("bytes")}},
        "bytes_per_query": {
            "plaintext": {"network": 0},
            "mpc": {"sources_to_parties": envelopes / q,
                    "per_party_to_others": parties["bytes_per_query_per_party"],
                    "per_party_by_phase": {k: v["bytes_per_query_per_party"] for k, v in parties["phases"].items()
                                           if k != "baseline_crypten_argmax"}},
            "enclave": {"sources_to_enclave": enclave["bytes_sources_to_enclave"] / q},
        },
        "ratio_to_plaintext": {"mpc": secure["total"] / plain["total"], "enclave": enclave["total"] / plain["total"]},
        "mpc_parties_bench": parties,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_all.json").write_text(json.dumps(result, indent=2))
    _chart(result, out)
    return result


def _chart(result: dict, out: Path) -> Path:
    plt = _pyplot()
    secs = result["seconds"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["plaintext", "mpc", "enclave"]
    bottoms = [0.0] * 3
    phases = sorted({k for n in names for k in secs[n] if k != "total"})
    for phase in phases:
        vals = [secs[n].get(phase, 0.0) for n in names]
        ax1.bar(names, vals, bottom=bottoms, label=phase)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for i, n in enumerate(names):
        ratio = 1.0 if n == "plaintext" else result["ratio_to_plaintext"][n]
        ax1.text(i, bottoms[i], f"{ratio:.1f}x", ha="center", va="bottom")
    ax1.set_ylim(0, max(bottoms) * 1.15)          # room for the ratio labels
    ax1.set_ylabel("seconds (whole workload)")
    ax1.set_title("Time per phase (ratio to plaintext)")
    ax1.legend(fontsize=7)
    b = result["bytes_per_query"]
    labels = ["mpc: sources->parties", "mpc: per party->others", "enclave: sources->enclave"]
    vals = [b["mpc"]["sources_to_parties"], b["mpc"]["per_party_to_others"], b["enclave"]["sources_to_enclave"]]
    ax2.bar(labels, vals)
    ax2.set_ylabel("bytes per query")
    ax2.set_title("Bytes per query (plaintext: none on a network)")
    ax2.tick_params(axis="x", labelsize=7)
    return _save(fig, out, "bench_all_chart", {"seconds": secs, "bytes_per_query": {"labels": labels, "values": vals},
                                         "ratio_to_plaintext": result["ratio_to_plaintext"]})
