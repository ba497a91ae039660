"""Who must sign: the log's signers entries read against the agreed policy (DESIGN §5).

The policy's `[signers]` table names every required signer by key, one slot each:
`operator` and `party-0`, `party-1`, ... in rank order (or, for the enclave, the
measurement every signer must be attested with). A signers entry lists the keys
currently in those slots; it cannot add or drop a slot. The first one must name
exactly the policy's keys. A later one may replace the key of a slot (a party
restarted with a new key): that rotation counts only if the first checkpoint
after it is also signed by the key it replaces, so no slot changes hands without
its holder's consent. Every checkpoint needs every key of the set in force.

The writer, the parties and the auditor all read signers entries with these
functions, so they agree on what a valid set is.
"""
from __future__ import annotations

import base64

from ..errors import NoteError
from . import entry as E
from .note import Verifier

OPERATOR_SLOT = "operator"


def party_slot(rank: int) -> str:
    return f"party-{rank}"


def public_key_b64(vkey: str) -> str:
    """The base64 Ed25519 public key inside a C2SP verifier key string (what a policy names)."""
    return base64.b64encode(Verifier.from_key_string(vkey).public_key).decode()


def assign_slots(signers, keys: list[E.SignerKey]) -> tuple[dict[str, E.SignerKey], list[str]]:
    """The keys of one signers entry by slot, and every way the entry breaks the
    policy's slot structure (a missing or extra slot, a role the policy does not
    have, a key that does not parse). `signers` is the policy's SignerPolicy."""
    problems: list[str] = []
    for k in keys:
        try:
            Verifier.from_key_string(k.vkey)
        except NoteError as e:
            problems.append(f"signer {k.name!r}: {e}")
            return {}, problems
    if signers.enclave_pcr0 is not None:
        other = [k.name for k in keys if k.role != "enclave" or not k.attestation]
        if other:
            problems.append(f"the policy's signer is the attested enclave, yet {other} "
                            "sign without an enclave attestation")
        if len(keys) != 1:
            problems.append(f"an enclave log has one signer at a time, this entry names {len(keys)}")
        return ({"enclave": keys[0]} if len(keys) == 1 else {}), problems
    slots: dict[str, E.SignerKey] = {}
    operators = [k for k in keys if k.role == "operator"]
    parties = [k for k in keys if k.role == "party"]
    others = [k for k in keys if k.role not in ("operator", "party")]
    if others:
        problems.append(f"roles the policy names no slot for: {sorted({k.role for k in others})}")
    want_ops = 1 if signers.operator is not None else 0
    if len(operators) != want_ops:
        problems.append(f"{len(operators)} operator key(s), the policy names {want_ops}")
    if len(parties) != len(signers.parties):
        problems.append(f"{len(parties)} party key(s), the policy names {len(signers.parties)} "
                        "(no signers entry may drop or add a party)")
    if operators:
        slots[OPERATOR_SLOT] = operators[0]
    for rank, k in enumerate(parties):
        slots[party_slot(rank)] = k
    return slots, problems


def initial_problems(signers, slots: dict[str, E.SignerKey]) -> list[str]:
    """The first signers entry must name exactly the policy's keys, slot by slot."""
    problems = []
    for slot, _, want in signers.slots():
        have = slots.get(slot)
        if have is not None and public_key_b64(have.vkey) != want:
            problems.append(f"slot {slot}: key {have.name!r} is not the key the policy names for it")
    return problems


def rotations(before: dict[str, E.SignerKey], after: dict[str, E.SignerKey]) -> list[tuple[str, E.SignerKey,
                                                                                           E.SignerKey]]:
    """(slot, old, new) for every slot whose key a signers entry replaces. The
    enclave's slot is not listed: each of its keys is attested instead."""
    return [(slot, before[slot], key) for slot, key in after.items()
            if slot in before and slot != "enclave" and key.vkey != before[slot].vkey]
