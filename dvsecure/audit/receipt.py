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
import shutil
from pathlib import Path

import msgspec

from ..errors import LogError, ParameterError
from ..log import entry as E
from ..log.merkle import MerkleTree, leaf_hash
from ..log.note import Checkpoint, parse_note
from ..log.writer import CHECKPOINTS, ENTRIES, KEYS, POLICY, write_atomic
from .check import RECEIPT, Receipt


def _b64(hs) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hs]


def export_receipt(log_dir: str | Path, source_id: str, out: str | Path) -> Path:
    log_dir, out = Path(log_dir), Path(out)
    if not (log_dir / ENTRIES).is_file():
        raise ParameterError(f"{log_dir} is not a log directory (no {ENTRIES})")
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f"{out} exists and is not empty")
    lines = (log_dir / ENTRIES).read_bytes().split(b"\n")[:-1]
    cps = sorted((log_dir / CHECKPOINTS).glob("*.note"))
    if not cps:
        raise LogError(f"{log_dir} has no checkpoint to prove a receipt against")
    head = Checkpoint.parse(parse_note(cps[-1].read_bytes())[0])
    size = head.size
    if size > len(lines):
        raise LogError(f"the latest checkpoint covers {size} entries but the log holds {len(lines)}")
    genesis = E.decode(lines[0])
    if not isinstance(genesis, E.Genesis) or source_id not in genesis.sources:
        raise ParameterError(f"source {source_id!r} is not in this log's policy")
    j, count = genesis.sources.index(source_id), len(genesis.sources)

    picked, last = [], 0     # genesis, signers, the last entry, and the source's own
    for seq in range(size):
        e = E.decode(lines[seq])
        keep = isinstance(e, (E.Genesis, E.Signers)) or seq == size - 1
        if isinstance(e, (E.Query, E.Calibration)):
            now = int(E.unpack(e.charged, "<u4", count)[j])
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
                      consistency={str(int(p.name[:12])): _b64(tree.consistency_proof(int(p.name[:12])))
                                   for p in cps[:-1] if int(p.name[:12]) <= size})
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    (out / KEYS).mkdir(exist_ok=True)
    shutil.copyfile(log_dir / POLICY, out / POLICY)
    for p in cps:
        shutil.copyfile(p, out / CHECKPOINTS / p.name)
    for p in (log_dir / KEYS).glob("*"):
        shutil.copyfile(p, out / KEYS / p.name)
    write_atomic(out / ENTRIES, b"".join(lines[s] + b"\n" for s in picked))
    write_atomic(out / RECEIPT, msgspec.json.encode(receipt) + b"\n")
    return out
