"""Killing the enclave mid-run (SIGKILL, votes pending) and restarting it on the same
state: the ledger and the log are intact, the new instance has new keys, the log
records them with the new attestation, nothing signed for the old instance is
accepted, and the sources' audits pass across the restart."""
from __future__ import annotations

import sqlite3

import pytest
from enclave_harness import deployed

from dvsecure.audit.attested import check_attested_signers
from dvsecure.audit.check import audit
from dvsecure.errors import EnclaveError
from dvsecure.log import entry as E
from dvsecure.log.writer import CHECKPOINTS, ENTRIES
from dvsecure.tee.client import verify_enclave


@pytest.fixture
def dep(tmp_path):
    with deployed(tmp_path, start=False) as d:
        yield d


def entries(dep) -> list[bytes]:
    return (dep.out / ENTRIES).read_bytes().split(b"\n")[:-1]


def test_kill_and_restart_keeps_the_log_and_records_the_new_keys(dep):
    dep.start()
    dep.batch(["r1", "r2"], {"src0": [0, 1], "src1": [0, 1], "src2": [0, 1]})
    dep.coordinator.open(["r3"], 4)
    pending, _ = dep.sources["src0"].seal(["r3"], [2], 4)
    dep.conn.call("Submit", pending)
    old_identity, old_log = dep.identity, entries(dep)
    old_checkpoints = {p.name: p.read_bytes() for p in (dep.out / CHECKPOINTS).iterdir()}
    spent_before = {s.id: s.spent_rho for s in audit(dep.out).sources}

    dep.kill()
    dep.start()

    # New keys, attested; the old log is untouched and a signers entry records the change.
    assert dep.identity.public_key != old_identity.public_key
    assert dep.identity.signer_vkey != old_identity.signer_vkey
    now = entries(dep)
    assert now[:len(old_log)] == old_log and len(now) == len(old_log) + 1
    signers = E.decode(now[-1])
    assert isinstance(signers, E.Signers) and [k.vkey for k in signers.keys] == [dep.identity.signer_vkey]
    assert signers.keys[0].role == "enclave" and signers.keys[0].attestation
    for name, data in old_checkpoints.items():
        assert (dep.out / CHECKPOINTS / name).read_bytes() == data
    assert check_attested_signers(dep.out, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                                  trusted_sim_roots=dep.roots) == []
    assert {s.id: s.spent_rho for s in audit(dep.out).sources} == spent_before

    # What was signed for the old instance is refused; the old pending query is gone.
    with pytest.raises(EnclaveError) as err:
        dep.conn.call("Submit", pending)
    assert err.value.code == "FAILED_PRECONDITION" and "another enclave instance" in str(err.value)
    with pytest.raises(EnclaveError) as err:
        dep.sources["src0"].submit(["r3"], [2], 4)
    assert err.value.code == "NOT_FOUND"
    # A source holding the old attestation would learn that from a fresh one: it differs.
    assert verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                           expected_policy=dep.policy,
                          trusted_sim_roots=dep.roots).public_key == dep.identity.public_key

    # The run continues: the lost query is opened again and every source resubmits.
    rel = dep.batch(["r3", "r4"], {"src0": [2, 3], "src1": [2, 3], "src2": [2, 3]})
    assert [r.query_id for r in rel] == ["r3", "r4"]
    assert dep.check() == []
    assert len(entries(dep)) == len(old_log) + 1 + 2


def test_a_source_refuses_an_enclave_restarted_on_a_rolled_back_ledger(dep, tmp_path):
    """The host keeps the ledger: it could restart the enclave on an older copy
    to free spent budget. A source that kept the last checkpoint it saw refuses
    to submit to a log shorter than it (or forked from it)."""
    import shutil

    from dvsecure.tee.client import check_not_rolled_back

    dep.start()
    dep.batch(["a1"], {"src0": [1], "src1": [1], "src2": [0]})
    snapshot = tmp_path / "snapshot"
    shutil.copytree(dep.root / "state", snapshot / "state")
    shutil.copytree(dep.out, snapshot / "out")
    dep.batch(["a2", "a3"], {"src0": [1, 2], "src1": [1, 2], "src2": [0, 0]})
    witness = check_not_rolled_back(dep.conn, dep.identity, None)           # what src0 saw last
    assert witness.size == len(entries(dep))

    # An honest restart extends the log: accepted, and the witness moves forward.
    dep.stop()
    dep.start()
    newer = check_not_rolled_back(dep.conn, dep.identity, witness)
    assert newer.size == witness.size + 1                                   # the new signers entry

    # The host rolls ledger and log back to the snapshot and restarts the enclave.
    dep.stop()
    for name in ("state", "out"):
        shutil.rmtree(dep.root / name)
        shutil.copytree(snapshot / name, dep.root / name)
    dep.start()
    with pytest.raises(EnclaveError, match="rolled back") as err:
        check_not_rolled_back(dep.conn, dep.identity, newer)
    assert err.value.code == "DATA_LOSS"
    # Growing the rolled-back log past the witness does not help: it is a fork.
    dep.batch([f"f{i}" for i in range(6)], {s: [1] * 6 for s in ("src0", "src1", "src2")})
    assert len(entries(dep)) > newer.size
    with pytest.raises(EnclaveError, match="forked"):
        check_not_rolled_back(dep.conn, dep.identity, newer)


def test_a_host_that_edits_the_spend_table_cannot_restart_the_enclave_on_it(dep):
    dep.start()
    dep.batch(["h1", "h2"], {"src0": [1, 1], "src1": [1, 1], "src2": [0, 0]})
    dep.stop()
    # The host frees src0's budget in the file it holds, then restarts the enclave.
    db = sqlite3.connect(dep.state / "enclave" / "ledger.sqlite")
    with db:
        db.execute("UPDATE spend SET spent='0', charged=0 WHERE source_id='src0'")
    db.close()
    with pytest.raises(EnclaveError, match="does not match its own records.*'src0'"):
        dep.start()
