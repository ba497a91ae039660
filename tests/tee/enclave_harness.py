"""A small enclave deployment for the enclave tests: the sim enclave as a child
process on loopback, a coordinator and sources as gRPC clients over TLS.

Not a test module; the tests use it through a fixture that always stops it.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from dvsecure.audit.check import audit
from dvsecure.demo.enclave import COORDINATOR, launch, noise_flags, prepare
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SignerPolicy, SourcePolicy
from dvsecure.tee.client import (
    CoordinatorClient,
    SourceClient,
    check_commitments,
    connect,
    fetch_log,
    verify_enclave,
)
from dvsecure.tee.protocol import enclave_measurement

POLICY = ConsortiumPolicy(
    sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.5, Budget("rho", 1e6)) for i in range(3)),
    mechanism=MechanismPolicy("confident_gnmax", sigma2=0.5, sigma1=0.5, threshold=0.3), name="enclave-test",
    signers=SignerPolicy(enclave_pcr0=enclave_measurement().hex()))      # the attested enclave signs
CLASSES = 4


class Deployment:
    def __init__(self, root: Path, policy: ConsortiumPolicy = POLICY, extra: tuple[str, ...] = (), noise=None):
        # noise: a test NoiseSource whose mode (and seed) the enclave runs with; None: private.
        self.root, self.policy = root, policy
        self.extra = extra + (noise_flags(noise) if noise is not None else ())
        self.nonprivate = noise is not None and not noise.private
        self.state, self.out = root / "state", root / "out"
        self.keys, self.coordinator_key = prepare(self.state, policy)
        self.pcr0 = enclave_measurement()
        self.proc = self.conn = None
        self.sent: dict[str, dict] = {sid: {} for sid in policy.ids}

    @property
    def principals(self) -> bytes:
        return (self.state / "principals.json").read_bytes()

    @property
    def roots(self) -> list[bytes]:
        return [(self.state / "sim-ca" / "root.pem").read_bytes()]

    def start(self) -> "Deployment":
        self.proc = launch(self.state, self.out, self.extra)
        self.conn = connect(self.proc.address, self.proc.tls_cert)
        self.identity = verify_enclave(self.conn, expected_pcr0=self.pcr0, expected_principals=self.principals,
                                       expected_policy=self.policy,
                                       trusted_sim_roots=self.roots, allow_nonprivate=self.nonprivate)
        self.coordinator = CoordinatorClient(COORDINATOR, self.coordinator_key, self.conn, self.identity)
        self.sources = {sid: SourceClient(sid, k, self.conn, self.identity) for sid, k in self.keys.items()}
        return self

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        self.conn.close()
        self.conn = None
        self.proc.kill()

    def raw_call(self, method: str, payload: bytes, timeout: float = 30):
        """Send arbitrary bytes as the request of `method` (no client-side serialization)."""
        call = self.conn.channel.unary_unary(f"/dvsecure.v1.Enclave/{method}", request_serializer=None,
                                             response_deserializer=None)
        return call(payload, timeout=timeout)

    def submit_all(self, qids, votes_by_source) -> None:
        for sid, votes in votes_by_source.items():
            self.sent[sid].update(self.sources[sid].submit(qids, votes, CLASSES))

    def batch(self, qids, votes_by_source):
        self.coordinator.open(qids, CLASSES)
        self.submit_all(qids, votes_by_source)
        return self.coordinator.release(qids).releases

    def check(self) -> list[str]:
        """Everything a source checks afterwards; empty means all is well."""
        attested = {"enclave_pcr0": self.pcr0, "enclave_principals": self.principals,
                    "trusted_sim_roots": self.roots, "allow_nonprivate": self.nonprivate}
        findings = [str(f) for f in audit(self.out, **attested).findings]
        if self.conn is not None:
            mirror = fetch_log(self.conn, self.policy, self.root / "mirror")
            findings += [f"mirror: {f}" for f in audit(mirror, **attested).findings]
            for sid in self.policy.ids:
                findings += check_commitments(mirror, sid, self.sent[sid], complete=True)
        return findings


@contextmanager
def deployed(root: Path, start: bool = True, **kw):
    """A Deployment (started unless start=False), always stopped afterwards."""
    d = Deployment(root, **kw)
    try:
        yield d.start() if start else d
    finally:
        d.stop()
