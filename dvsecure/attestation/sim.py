"""A SIMULATED Nitro Secure Module, for development without a TEE.

It issues attestation documents in exactly the Nitro format (untagged
COSE_Sign1, ES384, CBOR payload with certificate and cabundle), signed under a
local P-384 CA whose root is named "dvsecure SIMULATED attestation root — NOT
A TEE". Such a document proves nothing about isolation: whoever holds the CA
key can sign any measurement. The verifier refuses it unless told to trust
this root, and reports `simulated=True` when it does.

PCR0 is a measurement of the enclave application's files (see `measure`);
PCR1 and PCR2 (kernel and application in a real enclave image) are zeros.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ..errors import ParameterError, SimulatedCAError
from .nitro import COSE_ALG_ES384, MAX_USER_BYTES, SIM_MODULE_PREFIX, SIM_ROOT_MARKER, sig_structure

SIM_ROOT_CN = f"dvsecure {SIM_ROOT_MARKER} — NOT A TEE"
PCR_BYTES = 48  # SHA-384, as in Nitro
ROOT_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(hours=3)  # as AWS's signing certificates
_ROOT_CERT, _ROOT_KEY = "root.pem", "root.key"
_MEASURE_TAG = b"dvsecure-sim-measure-v1\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def measure(source: str | Path | Iterable[str | Path], *, base: str | Path | None = None) -> bytes:
    """SHA-384 measurement of an enclave application's files (the simulated PCR0).

    `source` is a directory (every regular file below it, symlinked files
    followed, symlinked directories and `__pycache__` directories skipped, as
    the interpreter writes those at run time), a single file, or an iterable of
    files named relative to `base` (default: their common parent directory).

    Files are taken in sorted order of their relative POSIX path; for each, the
    hash absorbs len(path) || path (UTF-8) || len(content) || content, lengths as
    8-byte big-endian integers, after the tag b"dvsecure-sim-measure-v1\\0". The
    length prefixes make the encoding injective: renaming, moving, or editing
    any file changes the measurement; the files' times and modes do not.
    """
    if isinstance(source, (str, Path)):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"nothing to measure at {source}")
        if source.is_dir():
            base = source
            files = [Path(d) / name for d, dirs, names in os.walk(source)
                     for name in names if "__pycache__" not in Path(d).relative_to(source).parts]
            files = [f for f in files if f.is_file()]
        else:
            base, files = source.parent, [source]
    else:
        files = [Path(f) for f in source]
        if not files:
            raise ParameterError("no files to measure")
        base = Path(base) if base is not None else Path(os.path.commonpath([f.parent for f in files]))
    if not files:
        raise ParameterError(f"no files to measure under {source}")
    outside = [str(f) for f in files if not f.is_relative_to(base)]
    if outside:
        raise ParameterError(f"files outside the measured base {base}: {outside}")
    named = sorted((f.relative_to(base).as_posix(), f) for f in files)
    h = hashlib.sha384(_MEASURE_TAG)
    for rel, path in named:
        name, content = rel.encode(), path.read_bytes()
        h.update(len(name).to_bytes(8, "big") + name + len(content).to_bytes(8, "big") + content)
    return h.digest()


class SimulatedNSM:
    """Issues simulated attestation documents under a local CA.

    ca_dir: where the CA persists (root.pem, root.key written 0600), so that a
      restarted enclave keeps the root its clients trust; created when empty.
      None keeps the CA in memory only.
    measurement: PCR0, e.g. `measure(enclave_dir)`; 48 zero bytes if None (as a
      debug-mode Nitro enclave reports).
    Each instance has its own module id ("sim-..."); each document gets a fresh
    signing key and certificate valid three hours, as AWS's do.
    """

    def __init__(self, ca_dir: str | Path | None = None, *, measurement: bytes | None = None):
        measurement = bytes(PCR_BYTES) if measurement is None else bytes(measurement)
        if len(measurement) != PCR_BYTES:
            raise ParameterError(f"measurement must be {PCR_BYTES} bytes (SHA-384), got {len(measurement)}")
        self.pcrs: dict[int, bytes] = {0: measurement, 1: bytes(PCR_BYTES), 2: bytes(PCR_BYTES)}
        self.module_id = f"{SIM_MODULE_PREFIX}{secrets.token_hex(8)}"
        if ca_dir is None:
            self._root_key, self._root = _new_root()
        else:
            self._root_key, self._root = _load_or_create_root(Path(ca_dir))

    @property
    def root(self) -> x509.Certificate:
        return self._root

    @property
    def root_pem(self) -> bytes:
        """The root to pass to `verify(..., root_der_or_pem=...)` or `trusted_sim_roots`."""
        return self._root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_der(self) -> bytes:
        return self._root.public_bytes(serialization.Encoding.DER)

    def attest(self, *, public_key: bytes | None = None, user_data: bytes | None = None,
               nonce: bytes | None = None, at: datetime | None = None) -> bytes:
        """A COSE_Sign1 attestation document binding these fields to the measurement.

        `at` (timezone-aware; default now) is the document's time, for tests."""
        at = datetime.now(timezone.utc) if at is None else at
        if at.tzinfo is None:
            raise ParameterError("`at` must be timezone-aware")
        for name, value in (("public_key", public_key), ("user_data", user_data), ("nonce", nonce)):
            if value is not None and (not isinstance(value, (bytes, bytearray)) or len(value) > MAX_USER_BYTES):
                raise ParameterError(f"{name} must be bytes of at most {MAX_USER_BYTES}")
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        not_before = at.replace(microsecond=0)  # X.509 times have whole seconds
        leaf = (_builder(f"{self.module_id}.dvsecure-sim", self._root.subject, leaf_key.public_key(),
                         not_before, not_before + LEAF_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(signing=True), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()),
                               critical=False)
                .sign(self._root_key, hashes.SHA384()))
        payload = cbor2.dumps({  # field order and null optionals as genuine documents have them
            "module_id": self.module_id,
            "digest": "SHA384",
            "timestamp": (at - _EPOCH) // timedelta(milliseconds=1),
            "pcrs": dict(self.pcrs),
            "certificate": leaf.public_bytes(serialization.Encoding.DER),
            "cabundle": [self.root_der],
            "public_key": None if public_key is None else bytes(public_key),
            "user_data": None if user_data is None else bytes(user_data),
            "nonce": None if nonce is None else bytes(nonce),
        })
        protected = cbor2.dumps({1: COSE_ALG_ES384})
        r, s = decode_dss_signature(leaf_key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA384())))
        return cbor2.dumps([protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
                         crl_sign=not signing, encipher_only=False, decipher_only=False)


def _builder(cn: str, issuer: x509.Name, public_key, not_before: datetime, not_after: datetime):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dvsecure simulation"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _new_root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.now(timezone.utc).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dvsecure simulation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, SIM_ROOT_CN)])
    # Back-dated a day so documents made "a little earlier" in tests still fall inside it.
    cert = (_builder(SIM_ROOT_CN, name, key.public_key(), now - timedelta(days=1), now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signing=False), critical=True)
            .sign(key, hashes.SHA384()))
    return key, cert


def _load_or_create_root(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = ca_dir / _ROOT_CERT, ca_dir / _ROOT_KEY
    if not cert_path.exists() and not key_path.exists():
        key, cert = _new_root()
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: never overwrite a key another process just wrote; 0600: the key is a secret.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key, cert
    if not (cert_path.exists() and key_path.exists()):
        raise SimulatedCAError(f"{ca_dir} holds only one of {_ROOT_CERT}, {_ROOT_KEY}; "
                               f"remove the directory to start a new simulated CA")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SimulatedCAError(f"unreadable simulated CA in {ca_dir}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise SimulatedCAError(f"{key_path} is not the private key of {cert_path}")
    if SIM_ROOT_MARKER not in cert.subject.rfc4514_string():
        raise SimulatedCAError(f"{cert_path} is not a dvsecure simulated root")
    return key, cert

