"""What the enclave and its clients agree on, beyond the .proto messages.

Shared by the enclave application (`enclave/`) and the source client (light
install: no grpc needed here, only nacl, cbor2 and the generated messages).

- Signed requests: Ed25519 over b"dvsecure/enclave/v1/<Method>\\0" || body, the
  body being the exact serialized bytes of a `Submission`, `Control` or
  `CalibrationRequest`; the method in the domain stops a body signed for one
  call being used for another.
- Principals: who may call what. Sources (by policy id) may Submit; coordinators
  (by name) may Open, Query and Calibrate. A JSON file maps each to its Ed25519
  public key.
- Key binding: the attestation's user_data is CBOR {"v": 3, "signer": the
  checkpoint verifier key, "tls_sha256": SHA-256 of the TLS certificate (DER),
  "principals_sha256": SHA-256 of the principals file's exact bytes,
  "policy_sha256": the policy's digest (SHA-256 of its canonical JSON),
  "noise": the noise mode it releases with}; its public_key is the X25519 key
  votes are sealed to. So one document binds the log's signing key, the sealing
  key, the TLS endpoint, who may submit, the policy enforced and the noise to
  the measurement: a host cannot slip in a key of its own for a source, nor run
  the enclave under a looser policy than the one agreed, nor without private
  noise unnoticed (only the simulated provider starts with test noise at all).
  Version 2 bound no noise mode: such instances had private noise only.
- Measurement: what the simulated provider's PCR0 covers (`enclave_measurement`).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cbor2
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ..errors import EnclaveError
from ..noise import NO_NOISE, PRIVATE, SEEDED
from ..wire.proto import dvsecure_pb2 as pb

VERSION = 1
VOTE_NONCE_BYTES = 32                  # the commitment nonce of each vote
ATTESTATION_NONCE_BYTES = (16, 64)     # accepted length of a client's attestation nonce
X25519_KEY_BYTES = 32
BINDING_VERSION = 3                    # 3: the noise mode too; 2: the policy (1 bound no policy: refused)
SIGNED_METHODS = ("Open", "Submit", "Query", "Calibrate")
REPO_ROOT = Path(__file__).resolve().parents[2]
MEASURED_DIRS = ("enclave", "dvsecure")
NOISE_MODES = (PRIVATE, SEEDED, NO_NOISE)


def domain(method: str) -> bytes:
    if method not in SIGNED_METHODS:
        raise ValueError(f"{method!r} is not a signed method")
    return f"dvsecure/enclave/v1/{method}\x00".encode()


def sign(method: str, signer_id: str, key: SigningKey, body: bytes) -> pb.Signed:
    return pb.Signed(signer_id=signer_id, body=body, signature=key.sign(domain(method) + body).signature)


def signature_ok(method: str, signed: pb.Signed, key: VerifyKey) -> bool:
    try:
        key.verify(domain(method) + signed.body, signed.signature)
        return True
    except (BadSignatureError, ValueError):
        return False


# ---- principals ---------------------------------------------------------------------------

def _key_b64(key: VerifyKey | SigningKey) -> str:
    vk = key.verify_key if isinstance(key, SigningKey) else key
    return base64.b64encode(bytes(vk)).decode()


@dataclass(frozen=True)
class Principals:
    """The Ed25519 keys of the sources (by policy id) and of the coordinators."""

    sources: Mapping[str, VerifyKey]
    coordinators: Mapping[str, VerifyKey]

    def to_json(self) -> str:
        return json.dumps({"sources": {k: _key_b64(v) for k, v in self.sources.items()},
                           "coordinators": {k: _key_b64(v) for k, v in self.coordinators.items()}}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Principals":
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or set(data) - {"sources", "coordinators"}:
                raise ValueError("expected an object with 'sources' and 'coordinators'")
            groups = []
            for group in ("sources", "coordinators"):
                items = data.get(group, {})
                if not isinstance(items, dict):
                    raise ValueError(f"'{group}' must map names to base64 Ed25519 public keys")
                groups.append({str(k): VerifyKey(base64.b64decode(v, validate=True)) for k, v in items.items()})
        except (ValueError, TypeError) as e:   # json, base64 and nacl all raise ValueError subclasses
            raise EnclaveError(f"principals file: {e}", "FAILED_PRECONDITION") from None
        overlap = set(groups[0]) & set(groups[1])
        if overlap:
            raise EnclaveError(f"principals file: names both a source and a coordinator: {sorted(overlap)}",
                               "FAILED_PRECONDITION")
        return cls(*groups)

    @classmethod
    def load(cls, path: str | Path) -> tuple["Principals", bytes]:
        """The principals and the file's exact bytes (their hash is attested)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise EnclaveError(f"cannot read principals file {path}: {e}", "FAILED_PRECONDITION") from None
        try:
            return cls.from_json(raw.decode("utf-8")), raw
        except UnicodeDecodeError as e:
            raise EnclaveError(f"principals file {path}: {e}", "FAILED_PRECONDITION") from None


# ---- key binding --------------------------------------------------------------------------

def binding_user_data(signer_vkey: str, tls_cert_der: bytes, principals: bytes, policy_digest: str,
                      noise_mode: str = PRIVATE) -> bytes:
    return cbor2.dumps({"v": BINDING_VERSION, "signer": signer_vkey,
                        "tls_sha256": hashlib.sha256(tls_cert_der).digest(),
                        "principals_sha256": hashlib.sha256(principals).digest(),
                        "policy_sha256": bytes.fromhex(policy_digest), "noise": noise_mode})


@dataclass(frozen=True)
class Binding:
    signer_vkey: str
    tls_sha256: bytes
    principals_sha256: bytes
    policy_sha256: bytes
    noise: str = PRIVATE

    def policy_is(self, policy) -> bool:
        return self.policy_sha256 == bytes.fromhex(policy.digest())


def parse_binding(user_data: bytes | None) -> Binding:
    try:
        d = cbor2.loads(user_data) if user_data is not None else None
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        d = None
    if isinstance(d, dict) and d.get("v") == 1:
        raise EnclaveError("the attestation's key binding (version 1) does not bind the enforced policy",
                           "UNAUTHENTICATED")
    if not (isinstance(d, dict) and d.get("v") in (2, BINDING_VERSION) and isinstance(d.get("signer"), str)
            and all(isinstance(d.get(k), bytes) and len(d[k]) == 32
                    for k in ("tls_sha256", "principals_sha256", "policy_sha256"))
            and (d["v"] == 2 or d.get("noise") in NOISE_MODES)):
        raise EnclaveError("the attestation's user_data is not a dvsecure enclave key binding", "UNAUTHENTICATED")
    return Binding(d["signer"], d["tls_sha256"], d["principals_sha256"], d["policy_sha256"], d.get("noise", PRIVATE))


# ---- measurement --------------------------------------------------------------------------

def measured_files(root: str | Path = REPO_ROOT) -> list[Path]:
    """The files the simulated PCR0 covers: the enclave application and the dvsecure
    library it runs (mechanism, accounting, ledger, log), without bytecode caches."""
    root = Path(root)
    files = []
    for top in MEASURED_DIRS:
        if not (root / top).is_dir():
            raise EnclaveError(f"{root / top} not found: the measurement is computed from a source checkout",
                               "FAILED_PRECONDITION")
        for d, dirs, names in os.walk(root / top):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            files += [Path(d) / n for n in names if (Path(d) / n).is_file()]
    return files


def enclave_measurement(root: str | Path = REPO_ROOT) -> bytes:
    """SHA-384 PCR0 of the simulated enclave built from the checkout at `root`."""
    from ..attestation.sim import measure
    return measure(measured_files(root), base=root)
