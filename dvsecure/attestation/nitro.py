"""Verify AWS Nitro Enclaves attestation documents (and dvsecure's simulated ones).

The steps are those of AWS's "Verifying the root of trust" (Nitro Enclaves
User Guide) and aws-nitro-enclaves-nsm-api docs/attestation_process.md:

1. the document is a COSE_Sign1 (CBOR array of 4, optionally tag 18) whose
   protected header says alg ES384;
2. its payload is a CBOR map with exactly the specified fields and types;
3. cabundle[0] is byte-identical to a trusted root (by default the pinned AWS
   Nitro Enclaves Root-G1), every certificate is valid at the time checked,
   and root -> cabundle[1:] -> certificate is a valid X.509 path;
4. the COSE signature verifies, under the leaf certificate's P-384 key, over
   the exact protected-header and payload bytes received;
5. optionally, PCRs, nonce and public key are what the caller expects.

Each failure raises AttestationError with a machine-readable `reason`.
Only the light install is needed: cbor2, cryptography and the standard library.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ..errors import AttestationError, ParameterError

# AWS Nitro Enclaves Root-G1, from https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip.
# Embedded rather than shipped as a data file so that no packaging rule can drop it.
AWS_NITRO_ROOT_G1_PEM = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""
# SHA-256 of the root's DER; checked on every use so an edit to the PEM above cannot go unnoticed.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

# Shared with sim.py: how a simulated document is recognised, to refuse it by name.
SIM_ROOT_MARKER = "SIMULATED attestation root"
SIM_MODULE_PREFIX = "sim-"

COSE_ALG_ES384 = -35
COSE_SIGN1_TAG = 18
_P384_COORD = 48

_MANDATORY = {"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"}
_OPTIONAL = ("public_key", "user_data", "nonce")
# The CDDL bound (user_data = bytes .size (0..1024)). The prose of attestation_process.md
# says 1..1024 for public_key and 0..512 for the others, but genuine documents carry an
# empty public_key (escrin vector), so the looser CDDL bound is the one applied.
MAX_USER_BYTES = 1024
MAX_CERT_BYTES = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The spec allows any uint64; a datetime cannot hold more than year 9999.
_MAX_TIMESTAMP_MS = (datetime(9999, 12, 31, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class AttestationDocument:
    """The payload of a verified attestation document.

    `simulated` is True unless the document chains to the pinned AWS Nitro root."""

    module_id: str
    timestamp_ms: int
    timestamp: datetime
    digest: str
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    simulated: bool


# --- COSE_Sign1 framing (RFC 9052 §4.2, §4.4). Written by hand: it is ten lines, and
# pycose, the Python COSE library, has been unmaintained since 2023.

def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes an ES384 COSE_Sign1 signature covers: Sig_structure with empty external_aad."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def raw_to_der_signature(raw: bytes) -> bytes:
    """COSE carries ECDSA signatures as r || s (48 bytes each for P-384); cryptography wants DER."""
    return encode_dss_signature(int.from_bytes(raw[:_P384_COORD], "big"), int.from_bytes(raw[_P384_COORD:], "big"))


def _decode_exactly_one(data: bytes, what: str, reason: str):
    # cbor2.loads ignores trailing bytes; a document must be exactly one CBOR item.
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError) as e:
        raise AttestationError(reason, f"{what} is not valid CBOR: {e}") from None
    if fp.tell() != len(data):
        raise AttestationError(reason, f"{what} has {len(data) - fp.tell()} trailing bytes after its CBOR item")
    return item


def _decode_cose_sign1(document: bytes) -> tuple[bytes, bytes, bytes]:
    """(protected, payload, signature), exactly as received."""
    if not isinstance(document, (bytes, bytearray)):
        raise AttestationError("malformed", f"attestation document must be bytes, got {type(document).__name__}")
    item = _decode_exactly_one(bytes(document), "attestation document", "malformed")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise AttestationError("malformed", f"CBOR tag {item.tag}, expected {COSE_SIGN1_TAG} (COSE_Sign1)")
        item = item.value
    # Inside a tag cbor2 decodes arrays and maps immutably (tuple, frozendict).
    if not (isinstance(item, (list, tuple)) and len(item) == 4):
        raise AttestationError("malformed", "not a COSE_Sign1 structure (a CBOR array of 4 items)")
    protected, unprotected, payload, signature = item
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping)
            and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise AttestationError("malformed", "COSE_Sign1 items must be bstr, map, bstr, bstr "
                                            "(protected header, unprotected header, payload, signature)")
    header = _decode_exactly_one(protected, "protected header", "malformed")
    if not isinstance(header, dict) or header.get(1) != COSE_ALG_ES384:
        alg = header.get(1) if isinstance(header, dict) else None
        raise AttestationError("malformed", f"protected header alg is {alg!r}, expected ES384 ({COSE_ALG_ES384})")
    if len(signature) != 2 * _P384_COORD:
        raise AttestationError("signature", f"ES384 signature is {len(signature)} bytes, expected 96 (r || s)")
    return protected, payload, signature


# --- payload -------------------------------------------------------------------------

def _bstr(value, name: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, bytes):
        raise AttestationError("payload", f"{name} must be a byte string, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise AttestationError("payload", f"{name} is {len(value)} bytes, allowed {lo}..{hi}")
    return value


def _is_uint(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_payload(payload: bytes) -> dict:
    p = _decode_exactly_one(payload, "payload", "payload")
    if not isinstance(p, dict):
        raise AttestationError("payload", f"payload must be a CBOR map, got {type(p).__name__}")
    unknown = set(p) - _MANDATORY - set(_OPTIONAL)
    if unknown:
        raise AttestationError("payload", f"unknown payload fields {sorted(map(repr, unknown))}")
    missing = _MANDATORY - set(p)
    if missing:
        raise AttestationError("payload", f"payload lacks mandatory fields {sorted(missing)}")
    if not isinstance(p["module_id"], str) or not p["module_id"]:
        raise AttestationError("payload", "module_id must be non-empty text")
    if p["digest"] != "SHA384":
        raise AttestationError("payload", f"digest is {p['digest']!r}, expected 'SHA384'")
    if not _is_uint(p["timestamp"]) or not 0 < p["timestamp"] < _MAX_TIMESTAMP_MS:
        raise AttestationError("payload", f"timestamp must be milliseconds since 1970 before year 10000, "
                                          f"got {p['timestamp']!r}")
    pcrs = p["pcrs"]
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
        raise AttestationError("payload", "pcrs must be a map of 1 to 32 entries")
    for index, value in pcrs.items():
        if not _is_uint(index) or index >= 32:
            raise AttestationError("payload", f"PCR index {index!r} is not an integer in 0..31")
        if not isinstance(value, bytes) or len(value) not in (32, 48, 64):
            raise AttestationError("payload", f"PCR{index} must be 32, 48 or 64 bytes")
    _bstr(p["certificate"], "certificate", 1, MAX_CERT_BYTES)
    if not isinstance(p["cabundle"], list) or not p["cabundle"]:
        raise AttestationError("payload", "cabundle must be a non-empty array")
    for i, cert in enumerate(p["cabundle"]):
        _bstr(cert, f"cabundle[{i}]", 1, MAX_CERT_BYTES)
    for name in _OPTIONAL:
        # The spec forbids null, but genuine documents carry absent optional fields as CBOR null.
        if p.get(name) is not None:
            _bstr(p[name], name, 0, MAX_USER_BYTES)
    return p


# --- certificates --------------------------------------------------------------------

def load_certificate(data: bytes | str | x509.Certificate) -> x509.Certificate:
    """A certificate given as an object, PEM (bytes or str) or DER."""
    if isinstance(data, x509.Certificate):
        return data
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray)):
        raise ParameterError(f"a root certificate must be PEM, DER or x509.Certificate, got {type(data).__name__}")
    try:
        if bytes(data).lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(bytes(data))
        return x509.load_der_x509_certificate(bytes(data))
    except ValueError as e:
        raise ParameterError(f"not a PEM or DER X.509 certificate: {e}") from None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(_der(cert)).hexdigest()


@lru_cache(maxsize=1)
def aws_nitro_root() -> x509.Certificate:
    """The pinned AWS Nitro Enclaves Root-G1, checked against its SHA-256 fingerprint."""
    root = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM)
    if fingerprint(root) != AWS_NITRO_ROOT_G1_SHA256:
        raise AttestationError("root", "the embedded AWS Nitro root does not match its pinned SHA-256")
    return root


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _load_bundle_cert(der: bytes, name: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject, cert.extensions  # parsed lazily: make a corrupt name or extension fail here
        return cert
    except ValueError as e:
        raise AttestationError("chain", f"{name} is not a DER X.509 certificate: {e}") from None


def _check_validity(certs: list[tuple[str, x509.Certificate]], at: datetime) -> None:
    for name, cert in certs:
        if at < cert.not_valid_before_utc:
            raise AttestationError("not_yet_valid", f"{name} ({_common_name(cert)}) is valid only from "
                                                    f"{cert.not_valid_before_utc.isoformat()}; checked at {at.isoformat()}")
        if at > cert.not_valid_after_utc:
            raise AttestationError("expired", f"{name} ({_common_name(cert)}) expired at "
                                              f"{cert.not_valid_after_utc.isoformat()}; checked at {at.isoformat()}")


def _check_path(anchor: x509.Certificate, intermediates: list[x509.Certificate], leaf: x509.Certificate,
                at: datetime) -> None:
    # cryptography's RFC 5280 path validation does the signatures, names, basic constraints,
    # path lengths and key usage of the CAs. The end-entity policy is relaxed because AWS's leaf
    # has no Authority Key Identifier (a WebPKI requirement); its own checks follow.
    verifier = (PolicyBuilder().store(Store([anchor])).time(at)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        chain = verifier.verify(leaf, intermediates).chain
    except VerificationError as e:
        raise AttestationError("chain", f"certificate chain does not verify: {e}") from None
    if [_der(c) for c in chain] != [_der(c) for c in [leaf, *reversed(intermediates), anchor]]:
        raise AttestationError("chain", "cabundle is not the path root, intermediates..., issuer of certificate")
    bc = _extension(leaf, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise AttestationError("chain", "the signing certificate is a CA certificate")
    ku = _extension(leaf, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        raise AttestationError("chain", "the signing certificate's key usage lacks digitalSignature")


def _extension(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_signature(leaf: x509.Certificate, protected: bytes, payload: bytes, signature: bytes) -> None:
    key = leaf.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)):
        raise AttestationError("signature", "the signing certificate's key is not P-384, as ES384 requires")
    try:
        key.verify(raw_to_der_signature(signature), sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError("signature", "COSE_Sign1 signature does not verify under the signing "
                                            "certificate's key") from None


# --- verify --------------------------------------------------------------------------

def verify(document: bytes, *, root_der_or_pem: bytes | str | x509.Certificate | None = None,
           at: datetime | None = None, expected_pcrs: Mapping[int, bytes] | None = None,
           expected_nonce: bytes | None = None, expected_public_key: bytes | None = None,
           trusted_sim_roots: Iterable[bytes | str | x509.Certificate] = ()) -> AttestationDocument:
    """Verify an attestation document; return its payload or raise AttestationError.

    root_der_or_pem: the trusted root (default: the pinned AWS Nitro Root-G1).
    trusted_sim_roots: further roots to trust, meant for dvsecure's simulated CA. A simulated
      document is refused (reason "sim_untrusted") unless its root is passed in one of the two.
    at: the time at which every certificate must be valid (timezone-aware; default now).
    expected_pcrs / expected_nonce / expected_public_key: checked only when given.
    """
    if at is None:
        at = datetime.now(timezone.utc)
    elif at.tzinfo is None:
        raise ParameterError("`at` must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc))")
    aws = aws_nitro_root()
    anchors = [load_certificate(root_der_or_pem) if root_der_or_pem is not None else aws]
    anchors += [load_certificate(r) for r in trusted_sim_roots]

    protected, payload, signature = _decode_cose_sign1(document)
    p = _parse_payload(payload)

    bundle = [_load_bundle_cert(der, f"cabundle[{i}]") for i, der in enumerate(p["cabundle"])]
    anchor = next((a for a in anchors if _der(a) == p["cabundle"][0]), None)
    if anchor is None:
        claimed = bundle[0]
        if SIM_ROOT_MARKER in _common_name(claimed) or p["module_id"].startswith(SIM_MODULE_PREFIX):
            raise AttestationError("sim_untrusted", f"this is a SIMULATED attestation (module {p['module_id']!r}, "
                                                    f"root {_common_name(claimed)!r}), not one made by a TEE; it is "
                                                    f"refused unless its root is explicitly trusted")
        raise AttestationError("root", f"cabundle[0] ({_common_name(claimed)}, SHA-256 {fingerprint(claimed)}) "
                                       f"is not a trusted root (trusted: {[fingerprint(a) for a in anchors]})")
    leaf = _load_bundle_cert(p["certificate"], "certificate")
    _check_validity([(f"cabundle[{i}]", c) for i, c in enumerate(bundle)] + [("certificate", leaf)], at)
    _check_path(anchor, bundle[1:], leaf, at)
    _check_signature(leaf, protected, payload, signature)

    pcrs = dict(p["pcrs"])
    for index, want in sorted((expected_pcrs or {}).items()):
        if index not in pcrs:
            raise AttestationError("pcr", f"PCR{index} is not in the document (it has {sorted(pcrs)})")
        if pcrs[index] != bytes(want):
            raise AttestationError("pcr", f"PCR{index} is {pcrs[index].hex()}, expected {bytes(want).hex()}")
    if expected_nonce is not None and p.get("nonce") != bytes(expected_nonce):
        got = p.get("nonce")
        raise AttestationError("nonce", f"nonce is {got.hex() if got is not None else 'absent'}, "
                                        f"expected {bytes(expected_nonce).hex()} (a replayed or stale document?)")
    if expected_public_key is not None and p.get("public_key") != bytes(expected_public_key):
        got = p.get("public_key")
        raise AttestationError("public_key", f"public_key is {got.hex() if got is not None else 'absent'}, "
                                             f"expected {bytes(expected_public_key).hex()}: the key is not bound")

    ts = p["timestamp"]
    return AttestationDocument(
        module_id=p["module_id"], timestamp_ms=ts, timestamp=_EPOCH + timedelta(milliseconds=ts),
        digest=p["digest"], pcrs=pcrs, certificate=p["certificate"], cabundle=tuple(p["cabundle"]),
        public_key=p.get("public_key"), user_data=p.get("user_data"), nonce=p.get("nonce"),
        simulated=_der(anchor) != _der(aws))
