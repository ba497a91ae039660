"""Killing the enclave mid-run (SIGKILL, votes pending) and restarting it on the same
state: the ledger and the log are intact, the new instance has new keys, the log
records them with the new attestation, nothing signed for the old instance is
accepted, and the sources' audits pass across the restart."""
from __future__ import annotations

import pytest

from dvsecure import entry as E
from dvsecure.audit import audit
from dvsecure.enclave_client import check_attested_signers, verify_enclave
from dvsecure.errors import EnclaveError
from dvsecure.translog import CHECKPOINTS, ENTRIES

from enclave_harness import Deployment


@pytest.fixture
def dep(tmp_path):
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop()


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
                          trusted_sim_roots=dep.roots).public_key == dep.identity.public_key

    # The run continues: the lost query is opened again and every source resubmits.
    rel = dep.batch(["r3", "r4"], {"src0": [2, 3], "src1": [2, 3], "src2": [2, 3]})
    assert [r.query_id for r in rel] == ["r3", "r4"]
    assert dep.check() == []
    assert len(entries(dep)) == len(old_log) + 1 + 2
