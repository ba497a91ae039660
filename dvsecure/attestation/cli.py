"""`dvsecure attestation verify FILE ...`: exit 0 iff the document verifies.

Exit 1 when it does not (the reason on stderr), 2 on a usage error (bad hex,
bad time, unreadable file or root). Register with `add_parser(subparsers)`,
dispatch with `run(args)`.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..errors import AttestationError, ParameterError
from .nitro import AttestationDocument, load_certificate, verify


def add_parser(subparsers) -> argparse.ArgumentParser:
    a = subparsers.add_parser("attestation", help="enclave attestation documents")
    asub = a.add_subparsers(dest="attestation_command", required=True)
    v = asub.add_parser("verify", help="verify an AWS Nitro (or trusted simulated) attestation document; "
                                       "exit 0 iff valid")
    v.add_argument("file", type=Path, help="the attestation document (raw COSE_Sign1 bytes)")
    v.add_argument("--root", type=Path, metavar="PEM",
                   help="trust this root instead of the pinned AWS Nitro root (e.g. a simulated CA's root.pem)")
    v.add_argument("--at", metavar="ISO8601",
                   help="check certificate validity at this time instead of now (no offset means UTC)")
    v.add_argument("--expect-pcr", action="append", default=[], metavar="INDEX=HEX",
                   help="require this PCR value; repeatable")
    v.add_argument("--nonce", metavar="HEX", help="require this nonce")
    v.add_argument("--public-key", metavar="HEX", help="require this public key")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    return a


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ParameterError(f"{what} is not hex: {text!r}") from None


def _expected_pcrs(items: list[str]) -> dict[int, bytes]:
    pcrs: dict[int, bytes] = {}
    for item in items:
        index, sep, value = item.partition("=")
        if not sep or not index.strip().isdigit() or not 0 <= int(index) <= 31:
            raise ParameterError(f"--expect-pcr wants INDEX=HEX with INDEX in 0..31, got {item!r}")
        want = _hex(value, f"--expect-pcr {index}")
        if pcrs.setdefault(int(index), want) != want:
            raise ParameterError(f"--expect-pcr {index} given twice with different values")
    return pcrs


def _at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ParameterError(f"--at is not an ISO 8601 time: {text!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def _hex_or_none(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def to_json(doc: AttestationDocument) -> dict:
    return {"valid": True, "simulated": doc.simulated, "module_id": doc.module_id,
            "timestamp": doc.timestamp_ms, "timestamp_iso": doc.timestamp.isoformat(),
            "digest": doc.digest, "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
            "public_key": _hex_or_none(doc.public_key), "user_data": _hex_or_none(doc.user_data),
            "nonce": _hex_or_none(doc.nonce)}


def run(args) -> int:
    try:
        pcrs = _expected_pcrs(args.expect_pcr)
        nonce = None if args.nonce is None else _hex(args.nonce, "--nonce")
        public_key = None if args.public_key is None else _hex(args.public_key, "--public-key")
        at = _at(args.at)
        root = None
        if args.root is not None:
            try:
                root = load_certificate(args.root.read_bytes())
            except ParameterError:
                raise ParameterError(f"--root {args.root}: not a PEM or DER X.509 certificate") from None
        document = args.file.read_bytes()
        doc = verify(document, root_der_or_pem=root, at=at, expected_pcrs=pcrs or None,
                     expected_nonce=nonce, expected_public_key=public_key)
    except (ParameterError, OSError) as e:
        print(f"dvsecure attestation: error: {e}", file=sys.stderr)
        return 2
    except AttestationError as e:
        print(f"attestation INVALID ({e.reason}): {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"valid": False, "reason": e.reason, "error": str(e)}))
        return 1
    if args.json:
        print(json.dumps(to_json(doc), indent=2))
    else:
        kind = "SIMULATED attestation (no TEE; its root was trusted explicitly)" if doc.simulated \
            else "AWS Nitro attestation"
        print(f"valid {kind}: module {doc.module_id}, {doc.timestamp.isoformat()}")
        for i, v in sorted(doc.pcrs.items()):
            print(f"  PCR{i} {v.hex()}")
    return 0
