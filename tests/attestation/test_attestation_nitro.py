"""dvsecure.attestation.nitro against genuine AWS Nitro Enclaves attestation documents.

Vectors: ../shared/testvectors/nitro/ (four public documents from three projects
and the AWS Nitro Enclaves Root-G1). Each document's leaf lives about three
hours, so every test verifies at a time computed from the document's own
certificates, never at "now". A missing vector directory fails collection.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from dvsecure.attestation import nitro
from dvsecure.attestation.cli import add_parser, run
from dvsecure.attestation.nitro import AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root, verify
from dvsecure.attestation.sim import SimulatedNSM
from dvsecure.errors import AttestationError

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "testvectors" / "nitro"
if not VECTORS.is_dir():  # deliberately no skip: missing vectors must fail loudly
    raise FileNotFoundError(f"Nitro test vectors not found at {VECTORS}")
DOCS = sorted(p.name for p in VECTORS.glob("*.cbor"))
assert len(DOCS) == 4, DOCS


def _raw(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _payload(raw: bytes) -> dict:
    # Decoded here with cbor2 directly, independently of the verifier.
    return cbor2.loads(cbor2.loads(raw)[2])


def _certs(raw: bytes) -> list[x509.Certificate]:
    p = _payload(raw)
    return [x509.load_der_x509_certificate(d) for d in [*p["cabundle"], p["certificate"]]]


def _window(raw: bytes) -> tuple[datetime, datetime]:
    """The times at which every certificate of the document is valid."""
    certs = _certs(raw)
    return max(c.not_valid_before_utc for c in certs), min(c.not_valid_after_utc for c in certs)


def _inside(raw: bytes) -> datetime:
    start, end = _window(raw)
    return start + (end - start) / 2


def _flip(raw: bytes, pos: int) -> bytes:
    return raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1:]


def _reason(raw: bytes, **kw) -> AttestationError:
    if "at" not in kw:
        kw["at"] = _inside(raw)
    with pytest.raises(AttestationError) as e:
        verify(raw, **kw)
    return e.value


# --- genuine documents ----------------------------------------------------------------

@pytest.mark.parametrize("name", DOCS)
def test_genuine_document_verifies_inside_its_window(name):
    raw = _raw(name)
    p = _payload(raw)
    start, end = _window(raw)
    assert end - start < timedelta(hours=4)  # the leaf's short life bounds the window
    ts = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=p["timestamp"])
    assert start <= ts <= end
    for at in (start, _inside(raw), end):  # validity bounds are inclusive (RFC 5280 §4.1.2.5)
        doc = verify(raw, at=at)
    assert doc.module_id == p["module_id"] and doc.digest == "SHA384"
    assert doc.timestamp_ms == p["timestamp"] and doc.timestamp == ts
    assert doc.pcrs == p["pcrs"] and len(doc.pcrs) == 16
    assert doc.certificate == p["certificate"] and list(doc.cabundle) == p["cabundle"]
    assert (doc.public_key, doc.user_data, doc.nonce) == (p["public_key"], p["user_data"], p["nonce"])
    assert doc.simulated is False
    # The same root, given explicitly, is the same trust decision.
    assert verify(raw, at=at, root_der_or_pem=(VECTORS / "aws_nitro_root_g1.pem").read_bytes()) == doc


@pytest.mark.parametrize("name", DOCS)
def test_genuine_document_fails_outside_its_window(name):
    raw = _raw(name)
    start, end = _window(raw)
    late = _reason(raw, at=end + timedelta(seconds=1))
    assert late.reason == "expired" and "expired at" in str(late)
    early = _reason(raw, at=start - timedelta(seconds=1))
    assert early.reason == "not_yet_valid"
    # Default "now" is years after these documents.
    with pytest.raises(AttestationError) as now:
        verify(raw)
    assert now.value.reason == "expired"


def test_real_documents_carry_cbor_null_optionals_and_they_are_tolerated():
    raw = _raw("awsiot_eu-west-1.cbor")
    p = _payload(raw)
    assert {k: p[k] for k in ("public_key", "user_data", "nonce")} == dict.fromkeys(("public_key", "user_data",
                                                                                    "nonce"))
    doc = verify(raw, at=_inside(raw))
    assert doc.public_key is doc.user_data is doc.nonce is None
    # An empty public_key (below the prose minimum of 1 byte) is what the escrin document carries.
    escrin = _raw("escrin_us-east-1.cbor")
    doc = verify(escrin, at=_inside(escrin))
    assert doc.public_key == b"" and len(doc.nonce) == 32 and len(doc.user_data) == 32


def test_tagged_cose_sign1_is_accepted_and_other_framing_is_malformed():
    raw = _raw("blindai_eu-west-3.cbor")
    at = _inside(raw)
    items = cbor2.loads(raw)
    assert cbor2.dumps(items) == raw  # re-encoding is byte-exact, so the variants below differ only as stated
    assert verify(cbor2.dumps(cbor2.CBORTag(18, items)), at=at).module_id == _payload(raw)["module_id"]
    bad = {
        "not CBOR": b"\xff\x00",
        "trailing byte": raw + b"\x00",
        "wrong tag": cbor2.dumps(cbor2.CBORTag(98, items)),
        "three items": cbor2.dumps(items[:3]),
        "ES256 header": cbor2.dumps([cbor2.dumps({1: -7}), *items[1:]]),
        "unprotected not a map": cbor2.dumps([items[0], [], *items[2:]]),
    }
    for what, doc in bad.items():
        assert _reason(doc, at=at).reason == "malformed", what
    assert _reason(cbor2.dumps([*items[:3], items[3][:64]]), at=at).reason == "signature"


def _with_payload(raw: bytes, mutate) -> bytes:
    items = cbor2.loads(raw)
    p = cbor2.loads(items[2])
    mutate(p)
    return cbor2.dumps([items[0], items[1], cbor2.dumps(p), items[3]])


@pytest.mark.parametrize("mutate", [
    lambda p: p.pop("module_id"),
    lambda p: p.update(module_id=""),
    lambda p: p.update(digest="SHA256"),
    lambda p: p.update(timestamp=0),
    lambda p: p.update(timestamp=True),
    lambda p: p.update(timestamp="1679495307405"),
    lambda p: p.update(pcrs={}),
    lambda p: p["pcrs"].update({0: bytes(47)}),
    lambda p: p["pcrs"].update({32: bytes(48)}),
    lambda p: p.update(cabundle=[]),
    lambda p: p.update(cabundle=[b""]),
    lambda p: p.update(certificate=None),
    lambda p: p.update(nonce=bytes(1025)),
    lambda p: p.update(user_data="hello"),
    lambda p: p.update(extra=b"x"),
], ids=["no module_id", "empty module_id", "digest", "timestamp 0", "timestamp bool", "timestamp text",
        "no pcrs", "pcr length", "pcr index", "empty cabundle", "empty cert", "null certificate",
        "nonce too long", "user_data text", "unknown field"])
def test_payload_fields_are_checked(mutate):
    raw = _raw("blindai_eu-west-3.cbor")
    assert _with_payload(raw, lambda p: None) == raw  # the control: unmutated re-encoding is identical
    err = _reason(_with_payload(raw, mutate), at=_inside(raw))
    assert err.reason == "payload", err


# --- tampering ------------------------------------------------------------------------

@pytest.mark.parametrize("name", DOCS)
def test_flipped_bytes_fail_with_a_specific_reason(name):
    raw = _raw(name)
    p = _payload(raw)
    at = _inside(raw)

    assert _reason(_flip(raw, len(raw) - 1), at=at).reason == "signature"  # last byte of s
    assert _reason(_flip(raw, len(raw) - 96), at=at).reason == "signature"  # first byte of r
    # A PCR value that occurs once in the document: the payload still parses, the signature breaks.
    pcr = next(v for v in p["pcrs"].values() if raw.count(v) == 1)
    assert _reason(_flip(raw, raw.index(pcr) + 20), at=at).reason == "signature"
    # The digest field "SHA384" -> "SHA385": refused by the payload check.
    assert _reason(_flip(raw, raw.index(b"SHA384") + 5), at=at).reason == "payload"
    # The last byte of a certificate is in its own signature: its issuer's signature breaks.
    leaf_end = raw.index(p["certificate"]) + len(p["certificate"]) - 1
    assert _reason(_flip(raw, leaf_end), at=at).reason == "chain"
    for i in range(1, len(p["cabundle"])):
        cert = p["cabundle"][i]
        assert _reason(_flip(raw, raw.index(cert) + len(cert) - 1), at=at).reason == "chain", i
    # A byte of the root in cabundle[0]: no longer the pinned root.
    root = p["cabundle"][0]
    assert _reason(_flip(raw, raw.index(root) + len(root) - 1), at=at).reason == "root"


def _fresh_root() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves")])  # same name, other key
    now = datetime(2019, 1, 1, tzinfo=timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=36500))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(Encoding.PEM)


@pytest.mark.parametrize("root", ["simulated", "fresh P-384"])
def test_a_wrong_root_is_refused(root):
    raw = _raw("awsiot_us-east-2.cbor")
    pem = SimulatedNSM().root_pem if root == "simulated" else _fresh_root()
    err = _reason(raw, root_der_or_pem=pem)
    assert err.reason == "root" and "not a trusted root" in str(err)
    # Trusting a simulated root besides the pinned one changes nothing for a genuine document.
    assert verify(raw, at=_inside(raw), trusted_sim_roots=[pem]).simulated is False


def test_pinned_root_is_the_published_aws_root():
    shipped = aws_nitro_root()
    der = shipped.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_G1_SHA256 == \
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    published = x509.load_pem_x509_certificate((VECTORS / "aws_nitro_root_g1.pem").read_bytes())
    assert published.public_bytes(Encoding.DER) == der
    for name in DOCS:
        assert _payload(_raw(name))["cabundle"][0] == der


def test_an_edited_embedded_root_is_caught_by_the_pin(monkeypatch):
    monkeypatch.setattr(nitro, "AWS_NITRO_ROOT_G1_PEM", _fresh_root())
    aws_nitro_root.cache_clear()
    try:
        with pytest.raises(AttestationError) as e:
            verify(_raw("awsiot_us-east-2.cbor"))
        assert e.value.reason == "root" and "pinned SHA-256" in str(e.value)
    finally:
        monkeypatch.undo()
        aws_nitro_root.cache_clear()


# --- expectations ---------------------------------------------------------------------

def test_pcr_expectations():
    raw = _raw("awsiot_us-east-2.cbor")
    at = _inside(raw)
    pcrs = _payload(raw)["pcrs"]
    assert pcrs[0] != bytes(48)  # a production enclave
    assert verify(raw, at=at, expected_pcrs={0: pcrs[0], 1: pcrs[1], 2: pcrs[2]}).pcrs == pcrs
    wrong = bytes(b ^ 0xFF for b in pcrs[2])
    err = _reason(raw, expected_pcrs={0: pcrs[0], 2: wrong})
    assert err.reason == "pcr" and "PCR2" in str(err) and wrong.hex() in str(err)
    err = _reason(raw, expected_pcrs={20: bytes(48)})
    assert err.reason == "pcr" and "PCR20" in str(err)


def test_nonce_must_match():
    raw = _raw("escrin_us-east-1.cbor")
    nonce = _payload(raw)["nonce"]
    assert verify(raw, at=_inside(raw), expected_nonce=nonce).nonce == nonce
    assert _reason(raw, expected_nonce=nonce[:-1] + b"\x00").reason == "nonce"
    null = _raw("awsiot_eu-west-1.cbor")
    err = _reason(null, expected_nonce=b"\x01" * 32)
    assert err.reason == "nonce" and "absent" in str(err)


def test_public_key_must_match():
    raw = _raw("blindai_eu-west-3.cbor")
    assert verify(raw, at=_inside(raw), expected_public_key=b"my super secret key").public_key == \
        b"my super secret key"
    err = _reason(raw, expected_public_key=b"another key")
    assert err.reason == "public_key" and b"another key".hex() in str(err)


# --- command line ---------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dvsecure")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["attestation", "verify", *argv]))


def test_cli_on_a_genuine_document(capsys):
    path = VECTORS / "escrin_us-east-1.cbor"
    raw = path.read_bytes()
    p = _payload(raw)
    at = _inside(raw).isoformat()
    assert p["pcrs"][4] != bytes(48)  # this debug enclave's PCR0..3 are zeros
    assert _cli([str(path), "--at", at, "--json", "--nonce", p["nonce"].hex(),
                 "--expect-pcr", f"4={p['pcrs'][4].hex()}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True and out["simulated"] is False
    assert out["module_id"] == p["module_id"] and out["timestamp"] == p["timestamp"]
    assert datetime.fromisoformat(out["timestamp_iso"]) == \
        datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=p["timestamp"])
    assert out["pcrs"] == {str(i): v.hex() for i, v in p["pcrs"].items()}
    assert (out["public_key"], out["user_data"], out["nonce"]) == ("", p["user_data"].hex(), p["nonce"].hex())

    late = (_window(raw)[1] + timedelta(seconds=1)).isoformat()
    assert _cli([str(path), "--at", late]) == 1
    assert "(expired)" in capsys.readouterr().err
    assert _cli([str(path), "--at", at, "--expect-pcr", f"4={bytes(48).hex()}"]) == 1
    assert "(pcr): PCR4" in capsys.readouterr().err
    assert _cli([str(path), "--at", at, "--nonce", "zz"]) == 2
    assert _cli([str(path), "--at", "yesterday"]) == 2
    assert _cli([str(path), "--at", at, "--expect-pcr", "40=00"]) == 2
    assert _cli([str(VECTORS / "missing.cbor")]) == 2
