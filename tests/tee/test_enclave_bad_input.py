"""Over the wire, every bad request gets a clear gRPC status and changes nothing;
the enclave keeps serving, and the run continues and audits clean afterwards."""
from __future__ import annotations

import grpc
import pytest
from enclave_harness import deployed
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey

from dvsecure.errors import EnclaveError
from dvsecure.log import entry as E
from dvsecure.log.writer import ENTRIES
from dvsecure.tee import protocol as proto
from dvsecure.tee.client import SourceClient
from dvsecure.wire.proto import dvsecure_pb2 as pb

MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with deployed(tmp_path_factory.mktemp("bad-input"), extra=("--max-message-bytes", str(MAX_MESSAGE))) as d:
        yield d


def refused(fn, code: str, *words: str) -> str:
    with pytest.raises(EnclaveError) as err:
        fn()
    assert err.value.code == code, str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)
    return str(err.value)


def raw_refused(dep, method: str, payload: bytes, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        dep.raw_call(method, payload)
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details(), err.value.details()


def entries(dep) -> list[bytes]:
    return (dep.out / ENTRIES).read_bytes().split(b"\n")[:-1]


def test_bad_requests_are_refused_and_the_run_continues(dep):
    src0, src1, src2 = (dep.sources[s] for s in dep.policy.ids)
    good = dep.batch(["a1", "a2"], {"src0": [0, 1], "src1": [0, 1], "src2": [0, 2]})
    assert [r.query_id for r in good] == ["a1", "a2"]
    dep.coordinator.open(["b1", "b2"], 4)
    before = entries(dep)

    # Malformed: bytes that are no protobuf message, and a well-signed body that is garbage.
    raw_refused(dep, "Submit", b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
    raw_refused(dep, "Open", b"\x0a\x05ab", grpc.StatusCode.INVALID_ARGUMENT, "malformed")
    garbage = proto.sign("Submit", "src0", dep.keys["src0"], b"\x08\x01\x12\xff")
    refused(lambda: dep.conn.call("Submit", garbage), "INVALID_ARGUMENT", "malformed Submit body")
    # Unknown fields in a signed body are refused rather than ignored.
    extra = pb.Control(version=1, counter=src0.next_counter(), enclave_key=dep.identity.public_key,
                       query_ids=["b1"]).SerializeToString() + b"\xa0\x06\x01"
    refused(lambda: dep.conn.call("Query", proto.sign("Query", "coordinator", dep.coordinator_key, extra)),
            "INVALID_ARGUMENT", "fields this server does not know")

    # Oversized: over the server's receive limit; or asking for more proofs than a call may.
    raw_refused(dep, "Submit", b"\x0a" + b"\x80" * (MAX_MESSAGE + 10), grpc.StatusCode.RESOURCE_EXHAUSTED)
    many = pb.ProofsRequest(tree_size=1, leaf_indices=[0] * 2000).SerializeToString()
    raw_refused(dep, "GetProofs", many, grpc.StatusCode.RESOURCE_EXHAUSTED, "2000 leaf indices", "at most 1024")
    many = pb.ProofsRequest(tree_size=1, old_sizes=[1] * 1025).SerializeToString()
    raw_refused(dep, "GetProofs", many, grpc.StatusCode.RESOURCE_EXHAUSTED, "1025 old sizes", "at most 1024")
    # Query ids beyond 256 bytes (bytes, not characters) or not printable, at each signed call, by name.
    refused(lambda: dep.coordinator.open(["é" * 129], 4), "INVALID_ARGUMENT", "'éééé", "is 258 bytes",
            "1..256 bytes")
    refused(lambda: src0.submit(["b1", "x" * 600_000], [0, 0], 4), "INVALID_ARGUMENT", repr("x" * 32) + "...",
            "is 600000 bytes")
    refused(lambda: dep.coordinator.release(["b1", "b\n2"]), "INVALID_ARGUMENT", "non-printable character '\\n'")

    # Unknown source; a source posing as the coordinator; a body naming another source.
    stranger = SourceClient("mallory", SigningKey.generate(), dep.conn, dep.identity)
    refused(lambda: stranger.submit(["b1"], [0], 4), "UNAUTHENTICATED", "unknown source 'mallory'")
    posing = SourceClient("coordinator", dep.keys["src0"], dep.conn, dep.identity)
    refused(lambda: dep.conn.call("Submit", posing.seal(["b1"], [0], 4)[0]), "UNAUTHENTICATED", "unknown source")
    fake_coord = src0.signed("Open", pb.Control(version=1, counter=src0.next_counter(),
                                                enclave_key=dep.identity.public_key, num_classes=4, query_ids=["z"]))
    refused(lambda: dep.conn.call("Open", fake_coord), "UNAUTHENTICATED", "unknown coordinator 'src0'")

    # Bad signature: src1's request signed with another key; a signature for another method.
    impostor = SourceClient("src1", SigningKey.generate(), dep.conn, dep.identity)
    refused(lambda: impostor.submit(["b1"], [1], 4), "UNAUTHENTICATED", "bad signature", "'src1'")
    request, _ = src1.seal(["b1"], [1], 4)
    as_open = pb.Signed(signer_id="coordinator", body=request.body, signature=request.signature)
    refused(lambda: dep.conn.call("Open", as_open), "UNAUTHENTICATED", "bad signature")

    # Replay: the same accepted request again, and an older counter.
    request, sent = src0.seal(["b1"], [3], 4)
    dep.conn.call("Submit", request)
    dep.sent["src0"].update(sent)
    refused(lambda: dep.conn.call("Submit", request), "ALREADY_EXISTS", "replayed", "'src0'")
    old = pb.Submission.FromString(request.body)
    old.counter -= 1
    old.query_ids[:] = ["b2"]
    refused(lambda: dep.conn.call("Submit", proto.sign("Submit", "src0", dep.keys["src0"], old.SerializeToString())),
            "ALREADY_EXISTS", "replayed")
    # A second vote for the same query under a fresh counter.
    refused(lambda: src0.submit(["b1"], [2], 4), "ALREADY_EXISTS", "already submitted", "'b1'")

    # Unknown query; late submission (already released); wrong class count.
    refused(lambda: src1.submit(["nope"], [1], 4), "NOT_FOUND", "unknown query 'nope'")
    refused(lambda: src1.submit(["a1"], [1], 4), "FAILED_PRECONDITION", "late", "'a1'")
    refused(lambda: src1.submit(["b1"], [1], 5), "INVALID_ARGUMENT", "4 classes")
    refused(lambda: dep.coordinator.release(["nope"]), "NOT_FOUND", "unknown query")
    refused(lambda: dep.coordinator.open(["a1"], 4), "ALREADY_EXISTS", "already open or released")

    # Sealed to another key, or to another enclave instance.
    other = PrivateKey.generate().public_key
    body = pb.Submission.FromString(src2.seal(["b1"], [2], 4)[0].body)
    body.counter = src2.next_counter()
    body.sealed = SealedBox(other).encrypt(b"votes")
    refused(lambda: dep.conn.call("Submit", proto.sign("Submit", "src2", dep.keys["src2"], body.SerializeToString())),
            "INVALID_ARGUMENT", "do not decrypt")
    body.counter = src2.next_counter()
    body.enclave_key = bytes(other)
    refused(lambda: dep.conn.call("Submit", proto.sign("Submit", "src2", dep.keys["src2"], body.SerializeToString())),
            "FAILED_PRECONDITION", "another enclave instance")
    # Votes that do not match the query ids, or carry a short nonce.
    body.enclave_key = dep.identity.public_key
    box = SealedBox(PublicKey(dep.identity.public_key))
    for votes, words in (([pb.Vote(label=1, nonce=b"n" * 32)] * 2, "2 votes for 1 query ids"),
                         ([pb.Vote(label=1, nonce=b"n")], "nonce must be 32 bytes"),
                         ([pb.Vote(nonce=b"n" * 32)], "is empty")):
        body.counter = src2.next_counter()
        body.sealed = box.encrypt(pb.Votes(votes=votes).SerializeToString())
        refused(lambda: dep.conn.call("Submit", proto.sign("Submit", "src2", dep.keys["src2"],
                                                           body.SerializeToString())), "INVALID_ARGUMENT", words)

    # None of that was recorded; the server still serves, and the run continues.
    assert entries(dep) == before
    dep.submit_all(["b1", "b2"], {"src1": [1, 1], "src2": [1, 9]})     # 9: an invalid class index
    dep.submit_all(["b2"], {"src0": [1]})
    rel = dep.coordinator.release(["b1", "b2"]).releases
    assert [r.query_id for r in rel] == ["b1", "b2"] and not any(r.absent for r in rel)
    last = E.decode(entries(dep)[-1])
    assert last.query_id == "b2" and last.invalid == {"src2": "invalid: class index 9 outside [0, 4)"}
    more = dep.batch(["c1"], {"src0": [2], "src1": [2]})
    assert list(more[0].absent) == ["src2"]
    assert dep.check() == []
