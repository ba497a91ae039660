"""A source trusts the enclave only through its attestation: the simulated one is
refused unless its root is trusted explicitly, and what is attested (measurement,
nonce, keys, TLS endpoint) must be what the source expects."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from enclave_harness import Deployment, deployed

from dvsecure.audit.attested import check_attested_signers
from dvsecure.errors import AttestationError, EnclaveError
from dvsecure.log import entry as E
from dvsecure.log.writer import ENTRIES, KEYS, key_file_name
from dvsecure.policy import Budget
from dvsecure.tee.client import verify_checkpoint_from, verify_enclave
from dvsecure.tee.protocol import REPO_ROOT, enclave_measurement
from dvsecure.wire.proto import dvsecure_pb2 as pb


@pytest.fixture
def dep(tmp_path):
    with deployed(tmp_path) as d:
        yield d


def test_simulated_attestation_is_refused_without_explicit_trust(dep):
    with pytest.raises(AttestationError) as err:
        verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals, expected_policy=dep.policy)
    assert err.value.reason == "sim_untrusted"
    assert "SIMULATED" in str(err.value)
    # The log's record of the key is refused the same way.
    problems = check_attested_signers(dep.out, expected_pcr0=dep.pcr0)
    assert len(problems) == 1 and "sim_untrusted" in problems[0]


def test_trusted_simulated_attestation_binds_the_keys_the_log_uses(dep):
    ident = verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                           expected_policy=dep.policy,
                           trusted_sim_roots=dep.roots)
    assert ident.simulated and len(ident.public_key) == 32
    assert ident.document.pcrs[0] == enclave_measurement()
    signers = [E.decode(line) for line in (dep.out / ENTRIES).read_bytes().split(b"\n")[:-1]]
    signers = [e for e in signers if isinstance(e, E.Signers)]
    assert len(signers) == 1 and [k.role for k in signers[0].keys] == ["enclave"]
    key = signers[0].keys[0]
    assert key.vkey == ident.signer_vkey and key.attestation
    assert (dep.out / KEYS / key_file_name(key.vkey)).read_text() == key.vkey + "\n"
    assert check_attested_signers(dep.out, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                                  trusted_sim_roots=dep.roots) == []
    assert verify_checkpoint_from(dep.conn, ident).size == 2      # genesis + signers


def test_wrong_measurement_is_refused(dep):
    other = bytes(48)
    with pytest.raises(AttestationError) as err:
        verify_enclave(dep.conn, expected_pcr0=other, expected_principals=dep.principals,
                           expected_policy=dep.policy,
                       trusted_sim_roots=dep.roots)
    assert err.value.reason == "pcr"
    problems = check_attested_signers(dep.out, expected_pcr0=other, trusted_sim_roots=dep.roots)
    assert len(problems) == 1 and "(pcr)" in problems[0]


def test_a_tls_endpoint_other_than_the_attested_one_is_refused(dep):
    # As if the host terminated TLS with its own certificate and relayed to the enclave.
    dep.conn.tls_cert_der = b"a certificate the enclave never saw"
    with pytest.raises(EnclaveError) as err:
        verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals,
                           expected_policy=dep.policy,
                           trusted_sim_roots=dep.roots)
    assert err.value.code == "UNAUTHENTICATED" and "TLS certificate" in str(err.value)


def test_principals_other_than_the_agreed_ones_are_refused(dep):
    # As if the host had added a key of its own for a source before starting the enclave.
    agreed = dep.principals.replace(b"src0", b"srcX")
    with pytest.raises(EnclaveError) as err:
        verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=agreed, expected_policy=dep.policy,
                       trusted_sim_roots=dep.roots)
    assert err.value.code == "UNAUTHENTICATED" and "other principals" in str(err.value)
    problems = check_attested_signers(dep.out, expected_pcr0=dep.pcr0, expected_principals=agreed,
                                      trusted_sim_roots=dep.roots)
    assert len(problems) == 1 and "other principals" in problems[0]


def test_a_policy_other_than_the_agreed_one_is_refused_before_any_vote_is_sent(dep):
    # As if the host had started the enclave under a policy of its own choosing: the
    # sources agreed on budgets ten times smaller than the ones it enforces.
    agreed = dataclasses.replace(dep.policy, sources=tuple(
        dataclasses.replace(s, budget=Budget("rho", s.budget.value / 10)) for s in dep.policy.sources))
    with pytest.raises(EnclaveError) as err:
        verify_enclave(dep.conn, expected_pcr0=dep.pcr0, expected_principals=dep.principals, expected_policy=agreed,
                       trusted_sim_roots=dep.roots)
    assert err.value.code == "UNAUTHENTICATED" and "another policy than the agreed one" in str(err.value)


def test_each_attestation_carries_the_callers_nonce_and_bad_nonces_are_refused(dep):
    a = dep.conn.call("GetAttestation", pb.AttestationRequest(nonce=b"n" * 32)).document
    b = dep.conn.call("GetAttestation", pb.AttestationRequest(nonce=b"m" * 32)).document
    assert b"n" * 32 in a and b"m" * 32 in b
    for bad in (b"", b"x" * 8, b"x" * 65):
        with pytest.raises(EnclaveError) as err:
            dep.conn.call("GetAttestation", pb.AttestationRequest(nonce=bad))
        assert err.value.code == "INVALID_ARGUMENT" and "nonce" in str(err.value)


def test_nitro_provider_fails_clearly_without_an_nsm_device(tmp_path):
    d = Deployment(tmp_path)
    missing = tmp_path / "no-nsm"     # as /dev/nsm outside a Nitro enclave
    done = subprocess.run([sys.executable, "-m", "enclave.app", "--policy", str(d.state / "policy.toml"),
                           "--principals", str(d.state / "principals.json"), "--state", str(d.state / "enclave"),
                           "--out", str(d.out), "--tls-dir", str(d.state / "tls"), "--attestation", "nitro",
                           "--nsm-device", str(missing)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"no Nitro Secure Module at {missing}" in done.stderr
    assert not (d.out / ENTRIES).exists()        # nothing was logged without an attested key
