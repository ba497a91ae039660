"""Attested signers: under a policy whose signer is the enclave (`[signers]
enclave_pcr0`), every key that may sign a checkpoint must be an enclave key
attested with that measurement (DESIGN §5, §6).

Each attestation is in the log's signers entries and is verified at its own
time (the keys were attested then): the chain to a trusted root (the pinned
AWS Nitro root, or a simulated root only when trusted by name), PCR0, and the
binding of that very checkpoint key and of the log's policy (and, if given, the
agreed principals file). `audit` runs it for such a policy, so a log the host
signed itself never audits clean, whoever calls the auditor.
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import cbor2

from ..attestation.nitro import verify
from ..errors import AttestationError, EnclaveError
from ..log import entry as E
from ..log.files import ENTRIES_FILE, read_published
from ..log.writer import ENTRIES
from ..tee.protocol import parse_binding


def _document_time(document: bytes) -> datetime | None:
    try:
        item = cbor2.loads(document)
        item = item.value if isinstance(item, cbor2.CBORTag) else item
        ms = cbor2.loads(item[2])["timestamp"]
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    except Exception:   # anything unparsable: verify() below names the problem precisely
        return None


def check_attested_signers(log_dir: str | Path, *, expected_pcr0: bytes, expected_principals: bytes | None = None,
                           trusted_sim_roots: Iterable = (), root=None) -> list[str]:
    """Problems with the log's signers: every key that may sign a checkpoint must be an
    enclave key whose attestation (checked at its own time: the keys were attested
    then) chains to a trusted root, carries the expected PCR0 and binds that key and
    the log's policy (and, if given, the agreed principals file). That the log's
    policy is the one a source agreed to is the audit's check (`audit --policy`, or
    a receipt's policy), not this one's. An empty list means every signer
    set of the log is attested."""
    roots = list(trusted_sim_roots)
    problems, seen, policy_digest = [], 0, None
    for line in read_published(log_dir, ENTRIES, ENTRIES_FILE).split(b"\n")[:-1]:
        e = E.decode(line)
        if isinstance(e, E.Genesis):
            try:
                policy_digest = bytes.fromhex(e.policy_digest)
            except ValueError:
                problems.append(f"entry {e.seq}: the genesis entry's policy digest is not hex")
        if not isinstance(e, E.Signers):
            continue
        seen += 1
        for k in e.keys:
            where = f"entry {e.seq}, signer {k.name!r}"
            if k.role != "enclave" or not k.attestation:
                problems.append(f"{where}: role {k.role!r} without an attestation; not an attested enclave key")
                continue
            try:
                raw = base64.b64decode(k.attestation, validate=True)
                doc = verify(raw, root_der_or_pem=root, at=_document_time(raw), expected_pcrs={0: expected_pcr0},
                             trusted_sim_roots=roots)
                binding = parse_binding(doc.user_data)
                if binding.signer_vkey != k.vkey:
                    problems.append(f"{where}: the attestation binds another checkpoint key")
                if expected_principals is not None and \
                        binding.principals_sha256 != hashlib.sha256(expected_principals).digest():
                    problems.append(f"{where}: that instance ran with other principals than the agreed file")
                if binding.policy_sha256 != policy_digest:
                    problems.append(f"{where}: that instance enforced another policy than the log's")
            except AttestationError as err:
                problems.append(f"{where}: attestation refused ({err.reason}): {err}")
            except (EnclaveError, ValueError) as err:
                problems.append(f"{where}: {err}")
    if not seen:
        problems.append("the log has no signers entry")
    return problems
