"""Sources send each MPC party its own share over gRPC with TLS; the coordinator
never holds a vote. Labels are the plaintext backend's, the log carries the
commitments the sources made, and bad submissions over the wire are refused
with their own status while the parties keep serving."""
from __future__ import annotations

import msgspec
import pytest
from nacl.signing import SigningKey

from dvsecure.audit.check import audit
from dvsecure.backends import FROM_SOURCES
from dvsecure.backends.mpc import PARTIAL, MPCBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import ParameterError, PartyRefusal
from dvsecure.log import entry
from dvsecure.log.writer import LogWriter, name_signers, operator_signer
from dvsecure.mpc.client import PartySubmitter
from dvsecure.mpc.sharing import _DOMAIN as SIGNING_DOMAIN
from dvsecure.mpc.sharing import ShareSubmission, Signed
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.tee.protocol import Principals

pytestmark = pytest.mark.slow

POLICY = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 50.0)) for i in range(3)),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="network")
KEYS = {sid: SigningKey.generate() for sid in POLICY.ids}
C = 4


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("net")
    principals = tmp / "principals.json"
    principals.write_text(Principals(sources={s: k.verify_key for s, k in KEYS.items()}, coordinators={}).to_json())
    backend = MPCBackend(num_parties=3, timeout=120, principals=principals, state_dir=str(tmp / "parties"))
    policy = name_signers(POLICY, tmp, backend)
    ledger = Ledger(tmp / "ledger.sqlite", policy)
    log = LogWriter(tmp / "log", ledger, [operator_signer(tmp, policy), *backend.cosigners(ledger)])
    agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log)
    endpoints = backend.endpoints()
    sources = {sid: PartySubmitter(sid, key, endpoints) for sid, key in KEYS.items()}
    try:
        yield agg, sources, endpoints, tmp
    finally:
        for s in sources.values():
            s.close()
        backend.close()
        ledger.close()


def entries(tmp):
    return [entry.decode(line) for line in (tmp / "log" / "entries.jsonl").read_bytes().splitlines()]


def test_votes_sent_to_the_parties_are_released_and_committed(deployment):
    agg, sources, _, tmp = deployment
    qids = [f"n{i}" for i in range(6)]
    votes = {"src0": [1, 2, 3, 0, 1, 2], "src1": [1, 2, 3, 0, 1, 2], "src2": [0, 0, 0, 0, 0]}
    made = {sid: sources[sid].submit(qids[:len(v)], v, C) for sid, v in votes.items()}   # src2 skips n5
    results = agg.query_batch([(q, FROM_SOURCES) for q in qids], C)
    assert [r.label for r in results] == [1, 2, 3, 0, 1, 2]
    assert results[5].participant("src2").status == "absent" and results[5].participant("src2").rho == 0
    assert all(r.participant("src0").status == "active" for r in results)
    # Each source finds, in the log, the commitment it made for each of its votes.
    logged = {e.query_id: entry.unpack_commitments(e.commitments, 3) for e in entries(tmp)
              if isinstance(e, entry.Query)}
    for j, (sid, subs) in enumerate(made.items()):
        for q, sub in zip(qids, subs):
            assert logged[q][j] == sub.commitment(q, sid)
    assert logged["n5"][2] == entry.ABSENT_COMMITMENT
    assert audit(tmp / "log", allow_nonprivate=True).ok


def test_bad_submissions_are_refused_and_the_parties_keep_serving(deployment):
    agg, sources, endpoints, tmp = deployment
    good, _ = sources["src0"].envelopes(["b0"], [1], C)

    def refused(submitter, envelopes, code):
        with pytest.raises(PartyRefusal) as info:
            submitter.send(envelopes)
        assert info.value.code == code, str(info.value)
        return str(info.value)

    stranger = PartySubmitter("src0", SigningKey.generate(), endpoints)     # a key the parties do not know
    assert "bad signature" in refused(stranger, stranger.envelopes(["b0"], [1], C)[0], "UNAUTHENTICATED")
    stranger.close()
    outsider = PartySubmitter("intruder", SigningKey.generate(), endpoints)
    assert "unknown source" in refused(outsider, outsider.envelopes(["b0"], [1], C)[0], "UNAUTHENTICATED")
    outsider.close()
    assert "not party 0" in refused(sources["src0"], [good[1]], "INVALID_ARGUMENT")   # party 1's, sent to party 0
    assert "malformed" in refused(sources["src0"], [b"\x93garbage"], "INVALID_ARGUMENT")
    signed = msgspec.msgpack.decode(good[0], type=Signed)
    forged = msgspec.msgpack.encode(Signed(signed.source_id, signed.body, bytes(64)))
    assert "bad signature" in refused(sources["src0"], [forged], "UNAUTHENTICATED")
    body = msgspec.structs.replace(msgspec.msgpack.decode(signed.body, type=ShareSubmission), commitments=[b"x"])
    raw = msgspec.msgpack.encode(body)                      # signed by src0, but its commitments are malformed
    bad = msgspec.msgpack.encode(Signed("src0", raw, KEYS["src0"].sign(SIGNING_DOMAIN + raw).signature))
    assert "malformed commitments" in refused(sources["src0"], [bad], "INVALID_ARGUMENT")
    sources["src0"].send(good)                                              # accepted once ...
    assert "replay" in refused(sources["src0"], good, "ALREADY_EXISTS")     # ... and only once
    sources["src1"].submit(["b0"], [1], C)
    # A source that reaches only two of the three parties does not count.
    partial, _ = sources["src2"].envelopes(["b0"], [0], C)
    sources["src2"].send(partial[:2])
    (result,) = agg.query_batch([("b0", FROM_SOURCES)], C)
    assert result.label == 1
    p = result.participant("src2")
    assert (p.status, p.reason, p.rho) == ("excluded:invalid", PARTIAL, 0)
    late, _ = sources["src2"].envelopes(["b0"], [0], C)                   # b0 is evaluated: too late
    assert "late" in refused(sources["src2"], late, "FAILED_PRECONDITION")
    # Still serving: the next query goes through, and the log audits clean.
    for sid in POLICY.ids:
        sources[sid].submit(["after"], [3], C)
    assert agg.query("after", FROM_SOURCES, C).label == 3
    assert audit(tmp / "log", allow_nonprivate=True).ok


def test_an_8_mib_query_id_is_refused_by_name_and_the_parties_keep_serving(deployment):
    agg, sources, _, tmp = deployment
    huge = "q" * (8 << 20)                      # fits the parties' 64 MiB messages: only the id rule stops it
    envelopes, _ = sources["src0"].envelopes(["id-ok", huge], [2, 2], C)
    with pytest.raises(PartyRefusal) as info:
        sources["src0"].send(envelopes)
    assert info.value.code == "INVALID_ARGUMENT", str(info.value)
    assert f"query id {'q' * 32!r}... is {8 << 20} bytes" in str(info.value) and "1..256 bytes" in str(info.value)
    assert len(str(info.value)) < 400
    with pytest.raises(ParameterError, match="is 8388608 bytes"):      # nor can the coordinator ask for it
        agg.query(huge, FROM_SOURCES, C)
    # Nothing of that envelope was held (its good id is no replay now), and the parties still serve.
    for sid in POLICY.ids:
        sources[sid].submit(["id-ok"], [2], C)
    result = agg.query("id-ok", FROM_SOURCES, C)
    assert result.label == 2 and all(p.status == "active" for p in result.participants)
    assert audit(tmp / "log", allow_nonprivate=True).ok


def test_votes_in_hand_are_refused_by_a_networked_only_call_and_vice_versa(deployment, tmp_path):
    from dvsecure.backends.plaintext import PlaintextBackend

    with Ledger(tmp_path / "l.sqlite", POLICY) as ledger:
        with pytest.raises(ParameterError, match="does not take votes from the sources"):
            Aggregator(POLICY, ledger, backend=PlaintextBackend()).query("x", FROM_SOURCES, C)
