"""Calibration inside the enclave (issue 13): the coordinator opens labelled queries,
the sources submit votes for them as for any query, and a signed Calibrate runs the
library's PrivateCalibration in the enclave. So the enclave learns, charges and logs
exactly what the plaintext backend does, and queries with those weights from then on
(after a restart too)."""
from __future__ import annotations

import numpy as np
import pytest
from enclave_harness import CLASSES, POLICY, deployed

from dvsecure.audit.check import audit
from dvsecure.demo.enclave import COORDINATOR, run_enclave_demo
from dvsecure.demo.run import run_demo
from dvsecure.engine.calibration import PrivateCalibration
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import EnclaveError
from dvsecure.log import entry as E
from dvsecure.log.writer import ENTRIES
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.noise import make_noise
from dvsecure.tee import protocol as proto
from dvsecure.wire.proto import dvsecure_pb2 as pb

CALIBRATION_FIELDS = ("query_id", "noise", "num_queries", "num_classes", "sigma", "accuracy", "gamma", "status",
                      "spent", "charged")


def log_entries(out) -> list:
    return [E.decode(line) for line in (out / ENTRIES).read_bytes().split(b"\n")[:-1]]


def calibration_entries(out) -> list:
    return [e for e in log_entries(out) if isinstance(e, E.Calibration)]


def same_calibration(a, b) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in CALIBRATION_FIELDS)


def demo_pair(tmp_path, seed: int, noise_spec: tuple, num_queries: int = 40):
    plain = run_demo(out=tmp_path / "p-out", state=tmp_path / "p-state", num_queries=num_queries, seed=seed,
                     noise=make_noise(*noise_spec)).data
    enclave = run_enclave_demo(tmp_path / "e-out", tmp_path / "e-state", num_queries=num_queries, seed=seed,
                               noise=make_noise(*noise_spec)).data
    return plain, enclave


@pytest.mark.parametrize("seed,noise_spec", [(0, ("no_noise",)), (1, ("no_noise",)), (3, ("no_noise",)),
                                             (1, ("seeded", 7))])
def test_the_enclave_demo_calibrates_and_releases_exactly_as_the_plaintext_demo(tmp_path, seed, noise_spec):
    plain, enc = demo_pair(tmp_path, seed, noise_spec)
    assert enc["noise_mode"] == noise_spec[0] and not enc["private"]
    assert plain["calibration_queries"] == enc["calibration_queries"] == 40 // 3
    assert len(enc["labels"]) == 40 - 40 // 3
    assert enc["labels"] == plain["labels"]
    assert [s["spent_rho"] for s in enc["sources"]] == [s["spent_rho"] for s in plain["sources"]]
    assert [s["gamma_calibrated"] for s in enc["sources"]] == [s["gamma_calibrated"] for s in plain["sources"]]
    assert [s["status"] for s in enc["sources"]] == [s["status"] for s in plain["sources"]]
    assert [s["queries_answered"] for s in enc["sources"]] == [s["queries_answered"] for s in plain["sources"]]
    # Calibration did something: some source sits below its ceiling (else this test could pass on ceilings).
    ceilings = [s["gamma_max"] for s in plain["sources"]]
    assert any(s["gamma_calibrated"] < c for s, c in zip(enc["sources"], ceilings))
    # One calibration entry each, the same one: accuracies, weights, sigmas and charges.
    (p_cal,), (e_cal,) = calibration_entries(tmp_path / "p-out"), calibration_entries(tmp_path / "e-out")
    assert same_calibration(p_cal, e_cal) and e_cal.seq == p_cal.seq
    assert enc["audit"]["ok"], enc["audit"]["findings"]
    # The test noise is visible to anyone auditing without being told to accept it.
    assert any(f.check == "non-private" for f in audit(tmp_path / "e-out", trusted_sim_roots=[
        (tmp_path / "e-state" / "sim-ca" / "root.pem").read_bytes()]).findings)


def test_a_second_demo_run_keeps_the_calibrated_weights_on_both_backends(tmp_path):
    first, _ = demo_pair(tmp_path, 3, ("no_noise",))
    plain, enc = demo_pair(tmp_path, 3, ("no_noise",), num_queries=12)     # a restarted enclave, same state
    assert plain["calibration_queries"] == enc["calibration_queries"] == 0 and len(enc["labels"]) == 12
    weights = [s["gamma_calibrated"] for s in first["sources"]]
    assert [s["gamma_calibrated"] for s in enc["sources"]] == [s["gamma_calibrated"] for s in plain["sources"]] == \
        weights
    # (The label streams differ here: the restart's signers entry moves the enclave's query ids and votes.)
    queries = [e for e in log_entries(tmp_path / "e-out") if isinstance(e, E.Query)]
    assert [int(g) / SCALE for g in E.unpack(queries[-1].gamma, "<u4", len(weights))] == weights
    assert len(calibration_entries(tmp_path / "e-out")) == 1 and enc["audit"]["ok"], enc["audit"]["findings"]


# ---- the Calibrate call -----------------------------------------------------------------------

def log_size(dep) -> int:
    return dep.conn.call("GetCheckpoint", pb.CheckpointRequest(size=0)).size


def refused(dep, request: pb.Signed) -> EnclaveError:
    with pytest.raises(EnclaveError) as err:
        dep.conn.call("Calibrate", request)
    return err.value


def test_calibration_requests_not_from_the_coordinator_or_malformed_are_refused_and_record_nothing(tmp_path):
    with deployed(tmp_path) as dep:
        dep.batch(["done"], {s: [0] for s in POLICY.ids})
        ids = ["c0", "c1", "c2"]
        dep.coordinator.open(ids, CLASSES)
        for sid in POLICY.ids:     # not in dep.sent: no query entry will commit to these votes
            dep.sources[sid].submit(ids, [0, 1, 2], CLASSES)
        before, entries_before = log_size(dep), log_entries(dep.out)
        body = pb.CalibrationRequest(version=proto.VERSION, counter=dep.coordinator.next_counter(),
                                     enclave_key=dep.identity.public_key, calibration_id="cal",
                                     query_ids=ids, labels=[0, 1, 2]).SerializeToString()
        # Signed by a source, in its own name: sources may not calibrate.
        e = refused(dep, proto.sign("Calibrate", "src0", dep.keys["src0"], body))
        assert e.code == "UNAUTHENTICATED" and "unknown coordinator 'src0'" in str(e)
        # In the coordinator's name with another key.
        e = refused(dep, proto.sign("Calibrate", COORDINATOR, dep.keys["src0"], body))
        assert e.code == "UNAUTHENTICATED" and "bad signature on the Calibrate request" in str(e)
        # The coordinator's signature on the same body for another method does not carry over.
        query_signed = proto.sign("Query", COORDINATOR, dep.coordinator_key, body)
        e = refused(dep, pb.Signed(signer_id=COORDINATOR, body=body, signature=query_signed.signature))
        assert e.code == "UNAUTHENTICATED"
        cases = [
            (["c0", "c1", "c2"], [0, 1, CLASSES], "INVALID_ARGUMENT", f"label {CLASSES} of query 'c2' is not one of"),
            (["c0", "c1", "c2"], [-1, 1, 2], "INVALID_ARGUMENT", "label -1 of query 'c0'"),
            (["c0", "c1", "c2"], [0, 1], "INVALID_ARGUMENT", "2 labels for 3 query ids"),
            (["c0", "nope"], [0, 1], "NOT_FOUND", "unknown query 'nope': the coordinator has not opened it"),
            (["c0", "done"], [0, 1], "FAILED_PRECONDITION", "late: query 'done' was already released"),
            (["c0", "c0"], [0, 0], "INVALID_ARGUMENT", "duplicate query ids"),
            ([], [], "INVALID_ARGUMENT", "no query ids"),
        ]
        for qids, labels, code, message in cases:
            e = refused(dep, dep.coordinator.calibration_request("cal", qids, labels))
            assert e.code == code and message in str(e), (qids, labels, e)
        for cid, code, message in [("done", "ALREADY_EXISTS", "calibration id 'done' is already an open or released"),
                                   ("c1", "ALREADY_EXISTS", "calibration id 'c1' is already an open or released"),
                                   ("", "INVALID_ARGUMENT", "calibration id: empty query id")]:
            e = refused(dep, dep.coordinator.calibration_request(cid, ids, [0, 1, 2]))
            assert e.code == code and message in str(e), (cid, e)
        # Nothing recorded: the log is as it was, and the labelled queries are still open.
        assert log_size(dep) == before and log_entries(dep.out) == entries_before
        request = dep.coordinator.calibration_request("cal", ids, [0, 1, 2])
        reply = dep.conn.call("Calibrate", request)
        assert log_size(dep) == before + 1 == reply.tree_size and reply.seq == before
        assert isinstance(log_entries(dep.out)[-1], E.Calibration) and list(reply.skipped) == []
        # Replayed, or the same calibration id again: refused, still one entry.
        e = refused(dep, request)
        assert e.code == "ALREADY_EXISTS" and "replayed Calibrate request" in str(e)
        dep.coordinator.open(["c3"], CLASSES)
        e = refused(dep, dep.coordinator.calibration_request("cal", ["c3"], [0]))
        assert e.code == "ALREADY_EXISTS" and "calibration id 'cal'" in str(e)
        # The labelled queries were consumed: they release nothing.
        with pytest.raises(EnclaveError) as err:
            dep.coordinator.release(["c0"])
        assert err.value.code == "NOT_FOUND"
        assert len(calibration_entries(dep.out)) == 1
        assert dep.check() == []


def calibration_votes(rng, n: int) -> tuple[list[int], list[list]]:
    """Labels and per-query votes of src0 (right), src1 (right half the time) and src2
    (random, with one invalid vote and one query it does not submit for: None)."""
    labels = [int(y) for y in rng.integers(0, CLASSES, n)]
    votes = [[y, y if t % 2 else (y + 1) % CLASSES, int(rng.integers(0, CLASSES))] for t, y in enumerate(labels)]
    votes[0][2] = CLASSES + 3        # invalid: counts 0
    votes[1][2] = None               # absent: counts 0
    return labels, votes


def submit_calibration_votes(dep, qids, votes) -> None:
    dep.coordinator.open(qids, CLASSES)
    for j, sid in enumerate(POLICY.ids):
        mine = [(q, row[j]) for q, row in zip(qids, votes) if row[j] is not None]
        dep.sources[sid].submit([q for q, _ in mine], [v for _, v in mine], CLASSES)


def test_enclave_calibration_is_plaintext_calibration_and_persists_across_a_restart(tmp_path):
    rng = np.random.default_rng(11)
    plain = Ledger(tmp_path / "plain.sqlite", POLICY)
    reference = PrivateCalibration(POLICY, plain, make_noise("no_noise"))
    with deployed(tmp_path / "enc", noise=make_noise("no_noise")) as dep:
        labels, votes = calibration_votes(rng, 12)
        qids = [f"cal1-{t}" for t in range(12)]
        submit_calibration_votes(dep, qids, votes)
        reply = dep.coordinator.calibrate("calibration-1", qids, labels)
        expected = reference.run("calibration-1", votes, labels, CLASSES)
        weights = dict(zip(POLICY.ids, reply.weights))
        assert weights == expected.weights and list(reply.skipped) == sorted(expected.skipped) == []
        assert weights["src0"] == POLICY.source("src0").grid_max > weights["src1"] > weights["src2"]
        (entry,) = calibration_entries(dep.out)
        assert same_calibration(entry, next(plain.records(kind=E.CALIBRATION)))

        def released_gamma(qid: str) -> list[float]:
            dep.batch([qid], {s: [0] for s in POLICY.ids})
            e = [x for x in log_entries(dep.out) if isinstance(x, E.Query) and x.query_id == qid][0]
            return [int(g) / SCALE for g in E.unpack(e.gamma, "<u4", len(POLICY.ids))]

        assert released_gamma("after-1") == reply.weights[:]
        dep.stop()
        dep.start()         # a new instance on the same state reads the weights back from its ledger
        assert released_gamma("after-restart") == reply.weights[:]

        # A second calibration would take every source past its calibration share: each is
        # skipped, uncharged, exactly as the plaintext calibration decides.
        labels2, votes2 = calibration_votes(rng, 6)
        qids2 = [f"cal2-{t}" for t in range(6)]
        submit_calibration_votes(dep, qids2, votes2)
        spent = {s.id: s.spent_rho for s in audit(dep.out, allow_nonprivate=True,
                                                  trusted_sim_roots=dep.roots).sources}
        second = dep.coordinator.calibrate("calibration-2", qids2, labels2)
        expected2 = reference.run("calibration-2", votes2, labels2, CLASSES)
        assert list(second.skipped) == sorted(expected2.skipped) == list(POLICY.ids)
        assert dict(zip(POLICY.ids, second.weights)) == expected2.weights
        _, e2 = calibration_entries(dep.out)
        assert e2.status == E.CALIBRATION_SKIPPED * len(POLICY.ids)
        # The same entry but for the running totals before it (the enclave answered queries in between).
        p2, running = list(plain.records(kind=E.CALIBRATION))[-1], ("spent", "charged")
        assert {f: getattr(e2, f) for f in CALIBRATION_FIELDS if f not in running} == \
            {f: getattr(p2, f) for f in CALIBRATION_FIELDS if f not in running}
        assert {s.id: s.spent_rho for s in audit(dep.out, allow_nonprivate=True,
                                                 trusted_sim_roots=dep.roots).sources} == spent
        assert released_gamma("after-2") == second.weights[:]
        assert dep.check() == []
    plain.close()


def test_a_non_private_enclave_is_refused_by_sources_unless_told_and_needs_the_simulated_provider(tmp_path, capsys):
    from dvsecure.tee.client import verify_enclave

    with deployed(tmp_path / "n", noise=make_noise("no_noise")) as dep:
        assert dep.identity.noise == "no_noise"
        with pytest.raises(EnclaveError) as err:
            verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                           expected_policy=dep.policy, trusted_sim_roots=dep.roots)
        assert err.value.code == "UNAUTHENTICATED" and "'no_noise' noise, which is not private" in str(err.value)
    # Test noise where attestation means something (a Nitro enclave, whose flags the host chooses): refused
    # before any key or document exists.
    from enclave.app import main

    assert main(["--policy", str(dep.state / "policy.toml"), "--principals", str(dep.state / "principals.json"),
                 "--state", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--tls-dir", str(tmp_path / "t"),
                 "--attestation", "nitro", "--noise", "no_noise"]) == 2
    assert "--noise no_noise is for tests, with --attestation sim only" in capsys.readouterr().err


def test_the_key_binding_states_the_noise_mode_and_older_bindings_read_as_private():
    import cbor2

    args = ("vkey", b"cert", b"principals", "ab" * 32)
    assert proto.parse_binding(proto.binding_user_data(*args)).noise == "private"
    assert proto.parse_binding(proto.binding_user_data(*args, "no_noise")).noise == "no_noise"
    v2 = cbor2.loads(proto.binding_user_data(*args))
    del v2["noise"]
    v2["v"] = 2             # written by instances that had private noise only
    assert proto.parse_binding(cbor2.dumps(v2)).noise == "private"
    for bad in ("loud", None):
        forged = cbor2.loads(proto.binding_user_data(*args))
        forged["noise"] = bad
        with pytest.raises(EnclaveError, match="not a dvsecure enclave key binding"):
            proto.parse_binding(cbor2.dumps(forged))
