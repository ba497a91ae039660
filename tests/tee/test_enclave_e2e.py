"""End to end over loopback gRPC with TLS: sources submit sealed votes to the sim
enclave, the coordinator releases them, and the log audits clean — as published,
as mirrored by a source over gRPC, and as a source's receipt."""
from __future__ import annotations

import numpy as np
import pytest
from enclave_harness import CLASSES, deployed

from dvsecure.audit.check import audit
from dvsecure.audit.receipt import export_receipt
from dvsecure.demo.enclave import run_enclave_demo
from dvsecure.demo.run import run_demo
from dvsecure.log import entry as E
from dvsecure.log.merkle import leaf_hash, verify_consistency, verify_inclusion
from dvsecure.log.note import Checkpoint, parse_note
from dvsecure.log.writer import ENTRIES
from dvsecure.noise import make_noise
from dvsecure.tee.client import check_commitments, fetch_log, verify_checkpoint_from
from dvsecure.wire.proto import dvsecure_pb2 as pb
from dvsecure.wire.submission import Submission


@pytest.fixture
def dep(tmp_path):
    with deployed(tmp_path) as d:
        yield d


def test_votes_released_logged_and_audited(dep, tmp_path):
    rng = np.random.default_rng(1)
    first = None
    for b in range(3):
        qids = [f"q{b}-{i}" for i in range(20)]
        votes = {sid: rng.integers(0, CLASSES, 20).tolist() for sid in dep.policy.ids}
        rel = dep.batch(qids, votes)
        assert [r.query_id for r in rel] == qids
        assert all(not r.absent for r in rel)
        assert all(r.HasField("label") == r.answered for r in rel)
        first = first or dep.conn.call("GetCheckpoint", pb.CheckpointRequest(size=0))
    # A probability vote, where the policy allows only one-hot, is recorded as invalid, not lost.
    rel = dep.batch(["p"], {"src0": [[0.5, 0.5, 0, 0]], "src1": [1], "src2": [1]})
    assert rel[0].query_id == "p"
    lines = (dep.out / ENTRIES).read_bytes().split(b"\n")[:-1]
    assert len(lines) == 2 + 61
    assert E.decode(lines[-1]).invalid["src0"].startswith("invalid")

    assert dep.check() == []
    # The latest checkpoint is signed by the attested key, and proofs from the enclave verify.
    head = verify_checkpoint_from(dep.conn, dep.identity)
    assert head.size == len(lines)
    proofs = dep.conn.call("GetProofs", pb.ProofsRequest(tree_size=head.size, leaf_indices=[5, head.size - 1],
                                                         old_sizes=[first.size]))
    for i, p in zip([5, head.size - 1], proofs.inclusion):
        verify_inclusion(i, head.size, leaf_hash(lines[i]), list(p.hashes), head.root_hash)
    first_root = Checkpoint.parse(parse_note(first.note)[0]).root_hash
    verify_consistency(first.size, head.size, list(proofs.consistency[0].hashes), first_root, head.root_hash)

    # A source's receipt, exported from its own mirror, audits clean on its own.
    mirror = fetch_log(dep.conn, dep.policy, tmp_path / "mirror2")
    receipt = export_receipt(mirror, "src1", tmp_path / "receipt")
    # Its signers' attestations are checked too: a simulated one only with its root trusted.
    assert any(f.check == "attestation" and "sim_untrusted" in f.message for f in audit(receipt).findings)
    got = audit(receipt, trusted_sim_roots=dep.roots)
    assert got.ok, [str(f) for f in got.findings]
    # A commitment check that would catch a substituted vote.
    qid = "q0-0"
    forged = {qid: Submission(99, dep.sent["src1"][qid].nonce)}
    assert check_commitments(mirror, "src1", forged) == [f"query {qid!r} (entry 2): the log does not commit to "
                                                         f"the vote sent"]


def test_enclave_demo_report_matches_the_other_backends(tmp_path):
    report = run_enclave_demo(tmp_path / "out", tmp_path / "state", num_sources=4, num_queries=60, num_classes=5,
                              seed=3)
    d = report.data
    assert d["backend"] == "enclave" and d["private"] and d["noise_mode"] == "private"
    assert d["audit"]["ok"], d["audit"]["findings"]
    # The first third calibrated the weights, inside the enclave, as on the plaintext backend.
    assert d["calibration_queries"] == 20 and d["answered"] + d["refused"] == 40 and len(d["labels"]) == 40
    assert d["attestation"]["simulated"] and "SIMULATED" in d["attestation"]["note"]
    assert audit(tmp_path / "out", trusted_sim_roots=[(tmp_path / "state" / "sim-ca" / "root.pem").read_bytes()]).ok
    plain = run_demo(out=tmp_path / "p-out", state=tmp_path / "p-state", num_sources=4, num_queries=60,
                     num_classes=5, seed=3, noise=make_noise("seeded", 1)).data
    assert set(plain) <= set(d)
    assert [set(s) for s in plain["sources"]] == [set(s) for s in d["sources"]]
    assert "SIMULATED" in (tmp_path / "state" / "enclave.stderr").read_text()
    # Running again continues the same log with a restarted enclave (new keys, recorded).
    again = run_enclave_demo(tmp_path / "out", tmp_path / "state", num_sources=4, num_queries=10, num_classes=5)
    assert again.data["audit"]["ok"], again.data["audit"]["findings"]
    assert again.data["audit"]["entries"] == d["audit"]["entries"] + 1 + 10
    assert isinstance(report.to_text(), str) and "enclave" in report.to_text()


def test_the_cli_runs_the_enclave_demo_and_says_when_noise_is_off(tmp_path, capsys, monkeypatch):
    import json

    from dvsecure.cli import main

    monkeypatch.chdir(tmp_path)         # a relative --out, from outside the repository, as a user types it
    assert main(["demo", "--backend", "enclave", "--out", "o", "--queries", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "enclave" and data["audit"]["ok"] and len(data["labels"]) == 20 - 20 // 3
    # The policy names the attested enclave as its signer, so the audit checks the
    # attestations unasked: a simulated one passes only with its root trusted by name.
    assert main(["audit", str(tmp_path / "o")]) == 1
    assert "sim_untrusted" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "o"), "--trust-sim-root", str(tmp_path / "o.state" / "sim-ca" / "root.pem")]) == 0
    capsys.readouterr()
    # Test noise (the simulated enclave only): said loudly, stated in the attestation and the log.
    assert main(["demo", "--backend", "enclave", "--no-noise", "--out", str(tmp_path / "n"), "--queries", "9"]) == 0
    out = capsys.readouterr().out
    assert "NOT PRIVATE" in out and "SIMULATED ATTESTATION" in out
    assert main(["audit", str(tmp_path / "n"), "--trust-sim-root", str(tmp_path / "n.state" / "sim-ca" / "root.pem")]) == 1
    assert "non-private" in capsys.readouterr().out


def test_the_auditor_checks_that_every_signer_is_an_attested_enclave_key(tmp_path, capsys):
    from dvsecure.cli import main
    from dvsecure.tee.protocol import enclave_measurement

    run_enclave_demo(tmp_path / "o", tmp_path / "s", num_sources=3, num_queries=10, num_classes=3)
    pcr0, root = enclave_measurement().hex(), str(tmp_path / "s" / "sim-ca" / "root.pem")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "o"), "--enclave-pcr0", pcr0, "--trust-sim-root", root]) == 0
    assert "attested signers: OK" in capsys.readouterr().out
    agreed = str(tmp_path / "s" / "principals.json")
    assert main(["audit", str(tmp_path / "o"), "--enclave-pcr0", pcr0, "--trust-sim-root", root,
                 "--enclave-principals", agreed]) == 0
    other = tmp_path / "other-principals.json"
    other.write_bytes((tmp_path / "s" / "principals.json").read_bytes() + b" ")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "o"), "--enclave-pcr0", pcr0, "--trust-sim-root", root,
                 "--enclave-principals", str(other)]) == 1
    assert "other principals" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "o"), "--enclave-pcr0", pcr0]) == 1          # simulated: not trusted
    out = capsys.readouterr().out
    assert "sim_untrusted" in out and ": 1 finding(s)" in out.splitlines()[0]           # the header says so too
    assert main(["audit", str(tmp_path / "o"), "--enclave-pcr0", "ab" * 48, "--trust-sim-root", root]) == 1
    assert "attestation refused (pcr)" in capsys.readouterr().out
    # A log signed by an operator key (here: the plaintext demo) has no attested signer.
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "p"), "--queries", "10"]) == 0
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "p"), "--enclave-pcr0", pcr0, "--trust-sim-root", root]) == 1
    assert "not an attested enclave key" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "p"), "--trust-sim-root", root]) == 2
