"""The enclave's open and signed calls are bounded: GetProofs (open to any TLS
client) answers from one cached Merkle tree per log size and refuses oversized
requests; an oversized query id is refused by name. In process (the Enclave
class the app serves), so the tree's constructions can be counted."""
from __future__ import annotations

import pytest
from enclave_harness import CLASSES, POLICY

import enclave.service as service
from dvsecure.demo.enclave import COORDINATOR, prepare
from dvsecure.errors import EnclaveError
from dvsecure.log.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from dvsecure.tee.client import CoordinatorClient, EnclaveIdentity, SourceClient
from dvsecure.tee.protocol import Principals
from dvsecure.wire.proto import dvsecure_pb2 as pb
from enclave.attest import SimProvider
from enclave.service import MAX_PROOFS, Enclave


class InProcess:
    """Stands in for the gRPC connection: each call goes to the Enclave as its exact request bytes."""

    def __init__(self, enclave: Enclave):
        self.enclave = enclave

    def call(self, method: str, request):
        name = {"GetProofs": "get_proofs", "GetCheckpoint": "get_checkpoint"}.get(method, method.lower())
        return getattr(self.enclave, name)(request.SerializeToString())


@pytest.fixture
def builds(monkeypatch):
    """Every MerkleTree the enclave builds."""
    made = []

    class Counted(MerkleTree):
        __slots__ = ()

        def __init__(self, leaf_hashes):
            super().__init__(leaf_hashes)
            made.append(self)
    monkeypatch.setattr(service, "MerkleTree", Counted)
    return made


@pytest.fixture
def enclave(tmp_path):
    keys, coordinator_key = prepare(tmp_path / "state", POLICY)
    principals_raw = (tmp_path / "state" / "principals.json").read_bytes()
    e = Enclave(POLICY, Principals.from_json(principals_raw.decode()), principals_raw, tmp_path / "enclave",
                tmp_path / "out", SimProvider(tmp_path / "ca", bytes(48)), b"tls certificate", max_open=1000)
    conn = InProcess(e)
    identity = EnclaveIdentity(e.public_key, e.signer.verifier_key_string, None, True)
    e.coordinator = CoordinatorClient(COORDINATOR, coordinator_key, conn, identity)
    e.sources = {sid: SourceClient(sid, k, conn, identity) for sid, k in keys.items()}
    yield e
    e.close()


def release(e: Enclave, qids) -> int:
    e.coordinator.open(qids, CLASSES)
    for s in e.sources.values():
        s.submit(qids, [1] * len(qids), CLASSES)
    return e.coordinator.release(qids).tree_size


def proofs(e: Enclave, size: int, leaves=(), olds=()) -> pb.Proofs:
    return e.get_proofs(pb.ProofsRequest(tree_size=size, leaf_indices=list(leaves),
                                         old_sizes=list(olds)).SerializeToString())


def test_repeated_proof_requests_reuse_one_tree_per_log_size(enclave, builds):
    size = release(enclave, [f"a{i}" for i in range(6)])
    records = list(enclave.ledger.record_bytes(0, size))
    for _ in range(50):                                    # an open caller asking again and again
        got = proofs(enclave, size, leaves=range(size), olds=range(1, size + 1))
    assert len(builds) == 1 and enclave.tree is builds[0]
    reference = MerkleTree([leaf_hash(r) for r in records])     # built here, not by the enclave
    root = reference.root()
    for i, p in enumerate(got.inclusion):
        verify_inclusion(i, size, leaf_hash(records[i]), list(p.hashes), root)
    for m, p in zip(range(1, size + 1), got.consistency):
        verify_consistency(m, size, list(p.hashes), reference.root(m), root)
    # A smaller size is answered from the same tree's prefix, and its proofs verify too.
    small = proofs(enclave, 3, leaves=[2], olds=[1])
    small_root = reference.root(3)
    verify_inclusion(2, 3, leaf_hash(records[2]), list(small.inclusion[0].hashes), small_root)
    verify_consistency(1, 3, list(small.consistency[0].hashes), leaf_hash(records[0]), small_root)
    assert len(builds) == 1
    # The log grows: one new tree for the new size, then reused again.
    bigger = release(enclave, ["b0"])
    for _ in range(5):
        proofs(enclave, bigger, leaves=[bigger - 1], olds=[size])
    assert len(builds) == 2 and enclave.tree is builds[1] and enclave.tree.size == bigger


@pytest.mark.parametrize("leaves, olds", [(MAX_PROOFS + 1, 0), (0, MAX_PROOFS + 1), (MAX_PROOFS, 1)])
def test_oversized_proof_requests_are_refused_before_any_work(enclave, builds, leaves, olds):
    size = release(enclave, ["a"])
    with pytest.raises(EnclaveError) as err:
        proofs(enclave, size, leaves=[0] * leaves, olds=[1] * olds)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert f"{leaves} leaf indices and {olds} old sizes" in str(err.value)
    assert f"at most {MAX_PROOFS}" in str(err.value)
    assert builds == []                                    # refused before the tree was touched
    assert len(proofs(enclave, size, leaves=[0] * MAX_PROOFS).inclusion) == MAX_PROOFS   # the cap itself is fine


def test_an_8_mib_query_id_is_refused_by_name_at_open_submit_and_query(enclave):
    huge = "q" * (8 << 20)
    for call in (lambda: enclave.coordinator.open([huge], CLASSES),
                 lambda: enclave.sources["src0"].submit(["ok", huge], [0, 1], CLASSES),
                 lambda: enclave.coordinator.release([huge])):
        with pytest.raises(EnclaveError) as err:
            call()
        assert err.value.code == "INVALID_ARGUMENT"
        assert f"query id {'q' * 32!r}... is {8 << 20} bytes" in str(err.value)
        assert "1..256 bytes" in str(err.value)
        assert len(str(err.value)) < 300                   # truncated, not echoed
    # Characters are not bytes: 129 two-byte characters are 258 bytes, over the limit.
    with pytest.raises(EnclaveError, match="is 258 bytes: a query id is 1..256 bytes"):
        enclave.coordinator.open(["é" * 129], CLASSES)
    assert enclave.pending == {}
    assert release(enclave, ["é" * 128]) == enclave.log.size     # 256 bytes: accepted, released
