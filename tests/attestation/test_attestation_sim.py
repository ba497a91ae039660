"""The simulated attestation provider, and the verifier's handling of what it makes.

A simulated document has exactly the Nitro format, so it exercises the same
verifier; it must be refused unless its root is trusted explicitly.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
from datetime import datetime, timedelta, timezone

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from dvsecure.attestation.cli import add_parser, run
from dvsecure.attestation.nitro import SIM_ROOT_MARKER, sig_structure, verify
from dvsecure.attestation.sim import SimulatedNSM, measure
from dvsecure.errors import AttestationError, ParameterError, SimulatedCAError

# Documents are made for a fixed time a day ahead: inside a CA created now (back-dated a day,
# valid ten years), and never "now", so "now" can be shown to be too early.
T0 = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=250000)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sim") / "ca"


@pytest.fixture(scope="module")
def nsm(ca_dir):
    return SimulatedNSM(ca_dir, measurement=hashlib.sha384(b"enclave image").digest())


def _root_key(ca_dir):
    return load_pem_private_key((ca_dir / "root.key").read_bytes(), password=None)


def _app(tmp_path):
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "main.py").write_text("print('enclave')\n")
    (app / "pkg" / "core.py").write_text("X = 1\n")
    return app


def _reason(doc: bytes, **kw) -> AttestationError:
    with pytest.raises(AttestationError) as e:
        verify(doc, **kw)
    return e.value


def _flip(raw: bytes, pos: int) -> bytes:
    return raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1:]


def test_document_verifies_only_with_its_root_trusted(nsm):
    doc = nsm.attest(public_key=b"enclave key", user_data=b"hello", nonce=b"n" * 32, at=T0)
    for trust in ({"root_der_or_pem": nsm.root_pem}, {"root_der_or_pem": nsm.root_der},
                  {"root_der_or_pem": nsm.root}, {"trusted_sim_roots": [nsm.root_pem]}):
        d = verify(doc, at=T0, **trust)
        assert d.simulated is True and d.module_id == nsm.module_id and d.module_id.startswith("sim-")
        assert (d.public_key, d.user_data, d.nonce) == (b"enclave key", b"hello", b"n" * 32)
        assert d.pcrs == nsm.pcrs and d.pcrs[0] == hashlib.sha384(b"enclave image").digest()
        assert d.timestamp_ms == (T0 - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
        assert d.timestamp == T0 and d.digest == "SHA384"

    err = _reason(doc, at=T0)  # default: only the pinned AWS root
    assert err.reason == "sim_untrusted" and "SIMULATED" in str(err) and nsm.module_id in str(err)
    # Trusting another simulated CA does not make this one trusted.
    err = _reason(doc, at=T0, trusted_sim_roots=[SimulatedNSM().root_pem])
    assert err.reason == "sim_untrusted"


def test_the_format_is_nitros(nsm):
    doc = nsm.attest(at=T0)
    protected, unprotected, payload, signature = cbor2.loads(doc)
    assert cbor2.loads(protected) == {1: -35} and unprotected == {} and len(signature) == 96
    p = cbor2.loads(payload)
    assert list(p) == ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle",
                       "public_key", "user_data", "nonce"]
    assert p["public_key"] is p["user_data"] is p["nonce"] is None
    assert p["cabundle"] == [nsm.root_der]
    root = x509.load_der_x509_certificate(p["cabundle"][0])
    assert SIM_ROOT_MARKER in root.subject.rfc4514_string() and "NOT A TEE" in root.subject.rfc4514_string()
    # The signature is ES384 over the Sig_structure, checked here with cryptography alone.
    leaf = x509.load_der_x509_certificate(p["certificate"])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    leaf.public_key().verify(encode_dss_signature(r, s),
                             cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA384()))
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3)


def test_validity_window(nsm):
    doc = nsm.attest(at=T0)
    start = T0.replace(microsecond=0)
    assert verify(doc, root_der_or_pem=nsm.root_pem, at=start + timedelta(hours=3)).module_id == nsm.module_id
    assert _reason(doc, root_der_or_pem=nsm.root_pem, at=start + timedelta(hours=3, seconds=1)).reason == "expired"
    assert _reason(doc, root_der_or_pem=nsm.root_pem, at=start - timedelta(seconds=1)).reason == "not_yet_valid"


def test_flipped_bytes_fail(nsm):
    doc = nsm.attest(public_key=b"K" * 97, nonce=b"N" * 32, at=T0)
    p = cbor2.loads(cbor2.loads(doc)[2])
    trust = {"root_der_or_pem": nsm.root_pem, "at": T0}
    assert _reason(_flip(doc, len(doc) - 1), **trust).reason == "signature"
    assert _reason(_flip(doc, doc.index(b"K" * 97) + 50), **trust).reason == "signature"
    assert _reason(_flip(doc, doc.index(nsm.pcrs[0]) + 7), **trust).reason == "signature"
    assert _reason(_flip(doc, doc.index(p["certificate"]) + len(p["certificate"]) - 1), **trust).reason == "chain"
    # The root in cabundle, changed, is no longer the trusted one (and still names itself simulated).
    root_end = doc.index(nsm.root_der) + len(nsm.root_der) - 1
    assert _reason(_flip(doc, root_end), **trust).reason == "sim_untrusted"


def _resign(nsm_doc: bytes, mutate, leaf_key, leaf_der: bytes | None = None) -> bytes:
    """The document with its payload changed and re-signed by leaf_key: validly framed and signed."""
    protected, unprotected, payload, _ = cbor2.loads(nsm_doc)
    p = cbor2.loads(payload)
    if leaf_der is not None:
        p["certificate"] = leaf_der
    mutate(p)
    payload = cbor2.dumps(p)
    r, s = decode_dss_signature(leaf_key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA384())))
    return cbor2.dumps([protected, unprotected, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])


def _leaf(issuer: SimulatedNSM, key, *, ca: bool = False, signing: bool = True, issuer_key=None) -> bytes:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "forged leaf")])
    ku = x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=not signing,
                       data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=False,
                       encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.root.subject)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(T0 - timedelta(hours=1)).not_valid_after(T0 + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(ku, critical=True)
            .sign(issuer_key, hashes.SHA384()))
    return cert.public_bytes(Encoding.DER)


def test_chain_checks(nsm, ca_dir, tmp_path):
    other = SimulatedNSM(tmp_path / "other")
    root_key, other_key = _root_key(ca_dir), _root_key(tmp_path / "other")
    key = ec.generate_private_key(ec.SECP384R1())
    doc = nsm.attest(at=T0)
    trust = {"root_der_or_pem": nsm.root_pem, "at": T0}
    # The control: a leaf that nsm's root did issue, signing a re-signed payload, verifies.
    own = _resign(doc, lambda p: None, key, _leaf(nsm, key, issuer_key=root_key))
    assert verify(own, **trust).module_id == nsm.module_id
    # A leaf issued by another CA, presented under nsm's (trusted) root.
    forged = _resign(doc, lambda p: None, key, _leaf(nsm, key, issuer_key=other_key))
    assert _reason(forged, **trust).reason == "chain"
    # Issued by the right root but a CA certificate, or not for signing.
    for kw in ({"ca": True}, {"signing": False}):
        err = _reason(_resign(doc, lambda p: None, key, _leaf(nsm, key, issuer_key=root_key, **kw)), **trust)
        assert err.reason == "chain", kw
    # A genuine leaf and root, but an extra untrusted certificate in the bundle: not a path.
    extra = _resign(doc, lambda p: p["cabundle"].append(other.root_der), key,
                    _leaf(nsm, key, issuer_key=root_key))
    assert _reason(extra, **trust).reason == "chain"
    # A P-256 leaf cannot make an ES384 signature.
    p256 = ec.generate_private_key(ec.SECP256R1())
    protected, unprotected, payload, _ = cbor2.loads(doc)
    p = cbor2.loads(payload)
    p["certificate"] = _leaf(nsm, p256, issuer_key=root_key)
    payload = cbor2.dumps(p)
    r, s = decode_dss_signature(p256.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA256())))
    weak = cbor2.dumps([protected, unprotected, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])
    assert _reason(weak, **trust).reason == "signature"


def test_expectations(nsm):
    doc = nsm.attest(public_key=b"pk", nonce=b"fresh", at=T0)
    trust = {"root_der_or_pem": nsm.root_pem, "at": T0}
    ok = verify(doc, expected_pcrs={0: nsm.pcrs[0]}, expected_nonce=b"fresh", expected_public_key=b"pk", **trust)
    assert ok.nonce == b"fresh"
    err = _reason(doc, expected_pcrs={0: hashlib.sha384(b"other image").digest()}, **trust)
    assert err.reason == "pcr" and "PCR0" in str(err)
    assert _reason(doc, expected_nonce=b"stale", **trust).reason == "nonce"
    assert _reason(doc, expected_public_key=b"attacker key", **trust).reason == "public_key"


# --- measurement ----------------------------------------------------------------------

def test_measure_is_the_documented_hash(tmp_path):
    app = _app(tmp_path)
    h = hashlib.sha384(b"dvsecure-sim-measure-v1\x00")
    for rel, content in (("main.py", b"print('enclave')\n"), ("pkg/core.py", b"X = 1\n")):
        h.update(len(rel).to_bytes(8, "big") + rel.encode() + len(content).to_bytes(8, "big") + content)
    assert measure(app) == h.digest()
    assert measure([app / "pkg" / "core.py", app / "main.py"], base=app) == h.digest()


def test_measure_is_deterministic_and_tracks_every_file(tmp_path):
    app = _app(tmp_path)
    m = measure(app)
    assert len(m) == 48 and measure(str(app)) == m
    copy = tmp_path / "copy"
    shutil.copytree(app, copy)
    os.utime(copy / "main.py", (0, 0))
    assert measure(copy) == m  # names and contents only, not location or times
    (copy / "pkg" / "__pycache__").mkdir()
    (copy / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\x00")
    assert measure(copy) == m

    (copy / "pkg" / "core.py").write_text("X = 2\n")
    assert measure(copy) != m
    (copy / "pkg" / "core.py").write_text("X = 1\n")
    assert measure(copy) == m
    (copy / "pkg" / "core.py").rename(copy / "pkg" / "core2.py")
    assert measure(copy) != m
    (copy / "pkg" / "core2.py").rename(copy / "pkg" / "core.py")
    (copy / "extra.txt").write_text("")
    assert measure(copy) != m

    # Boundaries between files are part of the hash: "ab" + "" differs from "a" + "b".
    a, b = tmp_path / "a", tmp_path / "b"
    for d, x, y in ((a, "ab", ""), (b, "a", "b")):
        d.mkdir()
        (d / "1").write_text(x)
        (d / "2").write_text(y)
    assert measure(a) != measure(b)

    with pytest.raises(FileNotFoundError):
        measure(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError):
        measure(tmp_path / "empty")


def test_pcr0_expectation_follows_the_application(tmp_path):
    app = _app(tmp_path)
    before = measure(app)
    nsm = SimulatedNSM(measurement=before)
    doc = nsm.attest(at=T0)
    assert verify(doc, root_der_or_pem=nsm.root_pem, at=T0, expected_pcrs={0: before}).pcrs[0] == before
    (app / "main.py").write_text("print('patched')\n")
    err = _reason(doc, root_der_or_pem=nsm.root_pem, at=T0, expected_pcrs={0: measure(app)})
    assert err.reason == "pcr" and "PCR0" in str(err)
    with pytest.raises(ParameterError):
        SimulatedNSM(measurement=b"short")


# --- persistence ----------------------------------------------------------------------

def test_ca_persists_with_a_private_key_file(tmp_path):
    ca = tmp_path / "ca"
    first = SimulatedNSM(ca)
    assert stat.S_IMODE((ca / "root.key").stat().st_mode) == 0o600
    restarted = SimulatedNSM(ca)
    assert restarted.root_pem == first.root_pem and restarted.module_id != first.module_id
    doc = restarted.attest(at=T0)
    assert verify(doc, trusted_sim_roots=[first.root_pem], at=T0).simulated is True

    SimulatedNSM(tmp_path / "other")
    (ca / "root.key").write_bytes((tmp_path / "other" / "root.key").read_bytes())
    with pytest.raises(SimulatedCAError, match="not the private key"):
        SimulatedNSM(ca)
    (ca / "root.key").unlink()
    with pytest.raises(SimulatedCAError, match="only one of"):
        SimulatedNSM(ca)


# --- command line ---------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dvsecure")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["attestation", "verify", *argv]))


def test_cli(tmp_path, capsys):
    app = _app(tmp_path)
    nsm = SimulatedNSM(tmp_path / "ca", measurement=measure(app))
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(nsm.attest(public_key=b"\x01\x02", nonce=b"\xaa" * 16, at=T0))
    at = T0.isoformat()

    assert _cli([str(doc), "--at", at]) == 1
    assert "(sim_untrusted)" in capsys.readouterr().err
    root = str(tmp_path / "ca" / "root.pem")
    assert _cli([str(doc), "--at", at, "--root", root, "--json", "--expect-pcr", f"0={measure(app).hex()}",
                 "--nonce", "aa" * 16, "--public-key", "0102"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True and out["simulated"] is True and out["module_id"] == nsm.module_id
    assert out["pcrs"]["0"] == measure(app).hex() and out["pcrs"]["1"] == "00" * 48
    assert (out["public_key"], out["user_data"], out["nonce"]) == ("0102", None, "aa" * 16)
    assert datetime.fromisoformat(out["timestamp_iso"]) == T0 and out["digest"] == "SHA384"

    assert _cli([str(doc), "--at", at, "--root", root, "--public-key", "0103", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["reason"] == "public_key" and "0103" in out["error"]
    assert _cli([str(doc), "--at", at, "--root", root, "--nonce", "0x12"]) == 2
    assert _cli([str(doc), "--at", at, "--root", str(tmp_path / "no-root.pem")]) == 2
    capsys.readouterr()
    assert _cli([str(doc), "--at", at, "--root", str(doc)]) == 2  # not a certificate: the file is named
    assert f"--root {doc}: not a PEM or DER X.509 certificate" in capsys.readouterr().err
    # Without --at the time is now: the document made for T0 is not yet valid, one made now verifies.
    assert _cli([str(doc), "--root", root]) == 1
    assert "(not_yet_valid)" in capsys.readouterr().err
    doc.write_bytes(nsm.attest())
    assert _cli([str(doc), "--root", root]) == 0
    assert "valid SIMULATED attestation" in capsys.readouterr().out
