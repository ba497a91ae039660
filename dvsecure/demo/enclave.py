"""The demo on the enclave path: the sim enclave as its own process, sources as gRPC clients.

Layout of `state` (private): policy.toml and principals.json given to the
enclave, sim-ca/ (the simulated attestation CA: stands in for the hardware
vendor), tls/ (the certificate the enclave wrote), enclave/ (its ledger),
enclave.stderr (its log, with the SIMULATED banner), witnesses/ (the last
checkpoint each source saw: it refuses a log that does not extend it). `out` is the enclave's
published log, which the sources mirror over gRPC and audit.

As on the plaintext backend (`dvsecure.demo.run`), the first third of the queries of a run on a log
without a calibration entry are labelled: the sources submit their votes for them, and the
coordinator has the enclave calibrate on them (inside it, `Enclave.calibrate`) before the rest are
answered with the calibrated weights.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

from nacl.signing import SigningKey

from ..audit.check import audit
from ..engine.calibration import hedge_baseline, labelled_query_ids
from ..errors import ParameterError
from ..log.note import Checkpoint
from ..log.writer import write_atomic
from ..mechanism.filter import BudgetFilter
from ..noise import SEEDED, NoiseSource, PrivateNoise
from ..policy import ConsortiumPolicy, SignerPolicy
from ..tee.client import (
    CoordinatorClient,
    SourceClient,
    calibrated_weights,
    check_commitments,
    check_not_rolled_back,
    connect,
    fetch_log,
    read_entries,
    verify_enclave,
)
from ..tee.process import start_enclave
from ..tee.protocol import Principals, enclave_measurement
from ..wire.proto import dvsecure_pb2 as pb
from .consortium import default_policy, single_source_accuracy, synthetic_votes, vote_vectors
from .run import DemoReport, source_row

COORDINATOR = "coordinator"
BATCH = 50
SIM_WARNING = "!!! SIMULATED ATTESTATION: the enclave is NOT a TEE; its root was trusted explicitly !!!"


class EnclaveDemoReport(DemoReport):
    """The demo report, with the attestation provider stated up front."""

    def to_text(self) -> str:
        a = self.data["attestation"]
        head = SIM_WARNING if a["simulated"] else f"attestation: {a['provider']}"
        return f"{head}\nenclave measurement (PCR0): {a['pcr0']}\n{super().to_text()}"


def prepare(state: Path, policy: ConsortiumPolicy) -> tuple[dict[str, SigningKey], SigningKey]:
    """The sources' and the coordinator's signing keys (kept in state/client-keys.json,
    0600, so a later run on the same state keeps its identities) and the enclave's
    policy and principals files."""
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    path = state / "client-keys.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    names = [*policy.ids, COORDINATOR]
    seeds = {n: bytes.fromhex(stored[n]) if n in stored else bytes(SigningKey.generate()) for n in names}
    if any(n not in stored for n in names):
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({n: s.hex() for n, s in seeds.items()}, f)
        os.replace(path.with_suffix(".tmp"), path)
    keys = {sid: SigningKey(seeds[sid]) for sid in policy.ids}
    coordinator = SigningKey(seeds[COORDINATOR])
    write_atomic(state / "policy.toml", policy.to_toml().encode())
    principals = Principals({s: k.verify_key for s, k in keys.items()}, {COORDINATOR: coordinator.verify_key})
    write_atomic(state / "principals.json", principals.to_json().encode())
    return keys, coordinator


def launch(state: Path, out: Path, extra: tuple[str, ...] = ()):
    return start_enclave(policy=state / "policy.toml", principals=state / "principals.json", state=state / "enclave",
                         out=out, tls_dir=state / "tls", sim_ca=state / "sim-ca", run_dir=state, extra=extra)


def noise_flags(noise: NoiseSource) -> tuple[str, ...]:
    """The enclave's flags for this noise (it runs in another process: the mode and seed cross)."""
    return ("--noise", noise.mode, *(("--noise-seed", str(noise.seed)) if noise.mode == SEEDED else ()))


def run_enclave_demo(out: Path, state: Path, num_sources: int = 5, num_queries: int = 300, num_classes: int = 10,
                     seed: int = 0, policy: ConsortiumPolicy | None = None,
                     noise: NoiseSource | None = None) -> DemoReport:
    """Start the sim enclave as its own process, run the sources and the coordinator as
    gRPC clients over TLS on loopback, stop the enclave, and audit what they received.
    The report has the fields of `dvsecure.demo.run.run_demo`'s, backend "enclave", plus
    "attestation"; its "audit" also covers the attested signers, each source's
    commitments and the sources' mirror of the log. `noise` (default private): a
    non-private mode is for tests; the enclave's attestation states it and every
    client and the audit accept it only because they are told to."""
    if num_queries < 2:
        raise ParameterError(f"--queries must be >= 2, got {num_queries}")
    if num_classes < 2:
        raise ParameterError(f"--classes must be >= 2, got {num_classes}")
    out, state = Path(out), Path(state)
    policy = policy or default_policy(num_sources)
    pcr0 = enclave_measurement()
    if policy.signers is None:
        # Who must sign: the attested enclave, whatever key it holds (new at every start).
        policy = policy.with_signers(SignerPolicy(enclave_pcr0=pcr0.hex()))
    noise = noise or PrivateNoise()
    keys, coordinator_key = prepare(state, policy)
    enclave = launch(state, out, noise_flags(noise))
    roots = [(state / "sim-ca" / "root.pem").read_bytes()]    # the simulated root, trusted explicitly
    sent: dict[str, dict] = {sid: {} for sid in policy.ids}
    try:
        conns = {sid: connect(enclave.address, enclave.tls_cert) for sid in [COORDINATOR, *policy.ids]}
        try:
            # Each source checks the attestation itself before sending anything.
            agreed = (state / "principals.json").read_bytes()
            ids = {sid: verify_enclave(c, expected_pcr0=pcr0, expected_principals=agreed, expected_policy=policy,
                                        trusted_sim_roots=roots, allow_nonprivate=not noise.private)
                   for sid, c in conns.items()}
            # ... and that the log extends the last checkpoint it saw (no rolled-back ledger).
            witnesses = state / "witnesses"
            witnesses.mkdir(exist_ok=True)
            for sid in policy.ids:
                saved = witnesses / f"{sid}.checkpoint"
                seen = Checkpoint.parse(saved.read_bytes()) if saved.exists() else None
                check_not_rolled_back(conns[sid], ids[sid], seen)
            coordinator = CoordinatorClient(COORDINATOR, coordinator_key, conns[COORDINATOR], ids[COORDINATOR])
            sources = [SourceClient(sid, keys[sid], conns[sid], ids[sid]) for sid in policy.ids]
            # Each run continues the log: query ids continue where the last run stopped.
            start = conns[COORDINATOR].call("GetCheckpoint", pb.CheckpointRequest(size=0)).size
            labels, votes = synthetic_votes(num_queries, policy, num_classes, seed + start)
            qids = [f"run{start:06d}-q{i:05d}" for i in range(num_queries)]
            # As in run_demo: calibrate on the first third only if the log holds no calibration yet.
            weights = calibrated_weights(read_entries(conns[COORDINATOR], start), policy)
            n_cal = 0 if weights is not None else num_queries // 3
            if n_cal:
                cal_id = f"calibration-{start:06d}"
                cal_ids = labelled_query_ids(cal_id, n_cal)
                coordinator.open(cal_ids, num_classes)
                for b in range(0, n_cal, BATCH):
                    for j, src in enumerate(sources):
                        # Not kept in `sent`: the calibration entry commits to no single vote.
                        src.submit(cal_ids[b:b + BATCH], [row[j] for row in votes[b:min(b + BATCH, n_cal)]],
                                   num_classes)
                weights = dict(zip(policy.ids, coordinator.calibrate(cal_id, cal_ids, labels[:n_cal]).weights))
            weights = weights or {src.id: src.grid_max for src in policy.sources}
            released = []
            for b in range(n_cal, num_queries, BATCH):
                batch = qids[b:b + BATCH]
                coordinator.open(batch, num_classes)
                for j, src in enumerate(sources):
                    sent[src.name].update(src.submit(batch, [row[j] for row in votes[b:b + BATCH]], num_classes))
                released += coordinator.release(batch).releases
            mirror = fetch_log(conns[policy.ids[0]], policy, state / "mirror")
            for sid in policy.ids:
                latest = check_not_rolled_back(conns[sid], ids[sid], None)
                write_atomic(witnesses / f"{sid}.checkpoint", latest.to_text())
        finally:
            for c in conns.values():
                c.close()
    finally:
        enclave.stop()

    answered = sum(r.answered for r in released)
    correct = sum(1 for r, y in zip(released, labels[n_cal:]) if r.answered and r.label == int(y))
    hedge = hedge_baseline(vote_vectors(votes[n_cal:], num_classes), labels[n_cal:], policy.ids)
    alone = single_source_accuracy(votes[n_cal:], labels[n_cal:], num_classes)
    # The sources' view: the published log and their own mirror of it, from signed data alone.
    # The policy names the enclave as signer, so each audit checks every attestation too.
    attested = {"enclave_pcr0": pcr0, "enclave_principals": agreed, "trusted_sim_roots": roots,
                "allow_nonprivate": not noise.private}
    audited = audit(out, **attested)
    findings = [str(f) for f in audited.findings]
    for sid in policy.ids:
        findings += [f"{sid}: {p}" for p in check_commitments(mirror, sid, sent[sid])]
    mirrored = audit(mirror, **attested)
    findings += [f"mirror: {f}" for f in mirrored.findings]

    flt = BudgetFilter(policy.mechanism)
    by_id = {s.id: s for s in audited.sources}
    sources = []
    for src in policy.sources:
        a = by_id.get(src.id)
        # The audit's exact recomputation, from the published log alone.
        spent = Fraction(a.spent_rho) if a else Fraction(0)
        can_continue = flt.decide(src, weights[src.id], spent, src.cap_rho).gamma > 0
        used = [] if a is None or a.gamma_used_min is None else [a.gamma_used_min, a.gamma_used_max]
        sources.append(source_row(src, spent, src.influence(spent), weights[src.id], used,
                                  a.queries_answered if a else 0, "active" if can_continue else "exhausted"))
    data = {
        "backend": "enclave", "noise_mode": noise.mode, "private": noise.private,
        "votes_sent": "by each source to the attested enclave, sealed to its key, over gRPC+TLS",
        "mechanism": policy.mechanism.to_dict(), "policy_digest": policy.digest(),
        "calibration_queries": n_cal, "answered": answered, "refused": len(released) - answered,
        "accuracy": (correct / answered) if answered else None,
        "hedge_baseline_accuracy": hedge.accuracy, "hedge_baseline_private": False,
        "best_single_source_accuracy": max(alone) if alone else None,
        "single_source_accuracy": dict(zip(policy.ids, alone)),
        "labels": [r.label if r.HasField("label") else None for r in released],
        "sources": sources, "out": str(out), "state": str(state),
        "attestation": {"provider": enclave.ready["attestation"], "simulated": enclave.ready["simulated"],
                        "pcr0": pcr0.hex(), "signer": enclave.ready["signer"],
                        "note": ("SIMULATED attestation: not a TEE; its root was trusted explicitly"
                                 if enclave.ready["simulated"] else "AWS Nitro attestation")},
        "audit": {"ok": not findings, "entries": audited.entries, "checkpoints": audited.checkpoints,
                  "findings": findings,
                  # The policy names the attested enclave, so the audit checks attestations:
                  # a simulated one only with its root trusted by name.
                  "command": f"dvsecure audit {out}" + (f" --trust-sim-root {state / 'sim-ca' / 'root.pem'}"
                                                         if enclave.ready["simulated"] else "")},
    }
    return EnclaveDemoReport(data)
