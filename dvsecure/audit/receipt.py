"""Exporting a source's receipt from a log directory.

A receipt is a directory an auditor checks on its own (`dvsecure audit`): the
policy, the keys, every checkpoint, and the entries the source needs — the
genesis and signers entries, every entry that charged it, and the last entry
(whose cumulative columns close its history) — with an inclusion proof for each
against the latest checkpoint and a consistency proof from every earlier
checkpoint. The `charged` counts in the entries let the source see that no
entry charging it was left out.
"""
from __future__ import annotations

import base64
from pathlib import Path

import msgspec

from ..errors import LogError, ParameterError
from ..log import entry as E
from ..log.files import ENTRIES_FILE, KEY_FILE, NOTE_FILE, POLICY_FILE, read_published, scan_published
from ..log.merkle import MerkleTree, leaf_hash
from ..log.note import Checkpoint, parse_note
from ..log.writer import CHECKPOINTS, ENTRIES, KEYS, POLICY, write_atomic
from .check import _CHECKPOINT_RE, RECEIPT, Receipt


def _b64(hs) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hs]


def _entry(lines: list[bytes], seq: int):
    try:
        return E.decode(lines[seq])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise LogError(f"entry {seq} does not decode ({exc}); audit the log first") from None


def export_receipt(log_dir: str | Path, source_id: str, out: str | Path) -> Path:
    log_dir, out = Path(log_dir), Path(out)
    if not log_dir.is_dir():
        raise ParameterError(f"{log_dir} is not a log directory")
    # Nothing is copied from a directory holding a link, FIFO or device anywhere in it:
    # what a receipt carries must be the log's own regular files.
    listing = scan_published(log_dir)
    listing.raise_refused()
    if ENTRIES not in listing.files:
        raise ParameterError(f"{log_dir} is not a log directory (no {ENTRIES})")
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f"{out} exists and is not empty")
    lines = read_published(log_dir, ENTRIES, ENTRIES_FILE).split(b"\n")[:-1]
    names = [n for n in listing.names_in(CHECKPOINTS) if _CHECKPOINT_RE.match(n)]
    if not names:
        raise LogError(f"{log_dir} has no checkpoint to prove a receipt against")
    notes = {n: read_published(log_dir, f"{CHECKPOINTS}/{n}", NOTE_FILE) for n in names}
    head = Checkpoint.parse(parse_note(notes[names[-1]])[0])
    size = head.size
    if size > len(lines):
        raise LogError(f"the latest checkpoint covers {size} entries but the log holds {len(lines)}")
    if size == 0:
        raise LogError(f"{log_dir}'s latest checkpoint covers no entry")
    genesis = _entry(lines, 0)
    if not isinstance(genesis, E.Genesis) or source_id not in genesis.sources:
        raise ParameterError(f"source {source_id!r} is not in this log's policy")
    j, count = genesis.sources.index(source_id), len(genesis.sources)

    picked, last = [], 0     # genesis, signers, the last entry, and the source's own
    for seq in range(size):
        e = _entry(lines, seq)
        keep = isinstance(e, (E.Genesis, E.Signers)) or seq == size - 1
        if isinstance(e, (E.Query, E.Calibration)):
            try:
                now = int(E.unpack(e.charged, "<u4", count)[j])
            except ValueError as exc:
                raise LogError(f"entry {seq}: {exc}; audit the log first") from None
            keep = keep or now != last
            last = now
        # Every query the source is not absent from, charged or not: an exclusion or an
        # invalid verdict it can dispute is in its receipt (framing is visible to the framed).
        keep = keep or (isinstance(e, E.Query) and e.status[j:j + 1] != "X")
        if keep:
            picked.append(seq)

    tree = MerkleTree([leaf_hash(line) for line in lines[:size]])
    if tree.root() != head.root_hash:
        raise LogError("the log's entries do not match its latest checkpoint; audit it first")
    receipt = Receipt(version=1, source=source_id, size=size, seqs=picked,
                      inclusion=[_b64(tree.inclusion_proof(s)) for s in picked],
                      consistency={str(int(n[:12])): _b64(tree.consistency_proof(int(n[:12])))
                                   for n in names[:-1] if int(n[:12]) <= size})
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    (out / KEYS).mkdir(exist_ok=True)
    write_atomic(out / POLICY, read_published(log_dir, POLICY, POLICY_FILE))
    for n, note in notes.items():
        write_atomic(out / CHECKPOINTS / n, note)
    for n in listing.names_in(KEYS):
        write_atomic(out / KEYS / n, read_published(log_dir, f"{KEYS}/{n}", KEY_FILE))
    write_atomic(out / ENTRIES, b"".join(lines[s] + b"\n" for s in picked))
    write_atomic(out / RECEIPT, msgspec.json.encode(receipt) + b"\n")
    return out
