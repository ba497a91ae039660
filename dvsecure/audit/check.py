"""The auditor: checks a log directory or an exported receipt from signed data alone.

Verification is a verifier plus a policy, run on the exact bytes that were
signed: the checkpoint policy (which keys must sign a checkpoint of a given
size) comes from the signers entries inside the tree, pinned keys and a witness
state (checkpoints seen before) come from the auditor, and the budget policy
comes from the policy the sources agreed to, whose digest is in entry 0.

Nothing the operator states is trusted: every charge is recomputed from the
entry's own data (mechanism parameters, weights, answered bit) with the same
charge records the filter uses; the stated cumulative spends and charge counts
are compared with the recomputation, and the budget check uses exact rational
totals. Only the light install is needed (numpy, cryptography, msgspec).

Per-entry work is vectorised over sources and entries (numpy); exact rational
totals are computed once per distinct (mechanism, weight, answered) group.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import msgspec

from ..accounting.conversions import zcdp_eps_tight
from ..errors import DvsecureError, NoteError, ParameterError, PolicyError, ProofError
from ..log import entry as E
from ..log import signers as S
from ..log.files import (
    ENTRIES_FILE,
    KEY_FILE,
    NOTE_FILE,
    POLICY_FILE,
    RECEIPT_FILE,
    WITNESS_FILE,
    Kind,
    PublishedFileError,
    read_named,
    read_published,
    scan_published,
)
from ..log.merkle import MerkleTree, verify_consistency, verify_inclusion
from ..log.note import Checkpoint, Verifier, open_note, parse_note
from ..log.writer import CHECKPOINT_SUFFIX, CHECKPOINTS, ENTRIES, KEY_SUFFIX, KEYS, POLICY, PREVIOUS, key_file_name
from ..mechanism.fixedpoint import SCALE
from ..policy import ConsortiumPolicy, unit_label
from .recompute import Context, check_entries

RECEIPT = "receipt.json"
_CHECKPOINT_RE = re.compile(r"^[0-9]{12}\.note$")
MAX_PER_CHECK = 20          # findings listed per check; the rest are counted


@dataclass(frozen=True)
class Finding:
    check: str                  # file | entry | sequence | genesis | policy | signers | checkpoint | merkle
                                # | fork | band | status | filter | charge | spend | budget | release
                                # | non-private | submission
    message: str
    seq: int | None = None
    file: str | None = None

    def to_dict(self) -> dict:
        return {"check": self.check, "seq": self.seq, "file": self.file, "message": self.message}

    def __str__(self) -> str:
        where = "".join(f" [{k} {v}]" for k, v in (("file", self.file), ("entry", self.seq)) if v is not None)
        return f"{self.check}{where}: {self.message}"


@dataclass
class SourceReport:
    id: str
    gamma_min: float
    gamma_max: float
    budget_rho: float           # the stated budget, at the source's unit
    spent_rho: float            # recomputed, exact total rounded to float, at the source's unit
    stated_spent_rho: float | None
    epsilon: float              # at the source's unit
    delta: float
    charged_entries: int
    queries_answered: int       # answered queries it took part in
    gamma_used_min: float | None
    gamma_used_max: float | None
    statuses: dict[str, int]
    complete: bool              # whole history present (log, or the receipt's own source)
    unit: str = "source"        # privacy unit: "source", or "slice" (one of `slices` slices)
    slices: int = 1
    influence_rho: float = float("nan")       # source-level spend: slices^2 * spent_rho
    influence_epsilon: float = float("nan")
    influence_budget_rho: float | None = None  # its cap (the budget itself at the source unit)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class AuditReport:
    path: str
    kind: str                   # "log" | "receipt"
    origin: str | None = None
    size: int = 0               # entries covered by the latest checkpoint
    entries: int = 0            # entries examined
    checkpoints: int = 0
    non_private_entries: int = 0
    attested: bool = False      # the signers' attestations were checked (an enclave's log)
    findings: list[Finding] = field(default_factory=list)
    sources: list[SourceReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _counts: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, check: str, message: str, seq: int | None = None, file: str | None = None) -> None:
        n = self._counts.get(check, 0) + 1
        self._counts[check] = n
        if n <= MAX_PER_CHECK:
            self.findings.append(Finding(check, message, seq, file))
        elif n == MAX_PER_CHECK + 1:
            self.notes.append(f"more '{check}' findings omitted (only the first {MAX_PER_CHECK} are listed)")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "path": self.path, "kind": self.kind, "origin": self.origin, "size": self.size,
                "entries": self.entries, "checkpoints": self.checkpoints,
                "non_private_entries": self.non_private_entries,
                "findings": [f.to_dict() for f in self.findings],
                "finding_counts": dict(self._counts), "notes": self.notes,
                "sources": [s.to_dict() for s in self.sources]}

    def to_text(self) -> str:
        lines = [f"audit of {self.kind} {self.path}: " + ("OK" if self.ok else f"{sum(self._counts.values())} finding(s)"),
                 f"origin {self.origin}; {self.entries} entries examined, tree size {self.size}, "
                 f"{self.checkpoints} checkpoint(s)"]
        if self.non_private_entries:
            lines.append(f"!!! {self.non_private_entries} entries were released WITHOUT private noise !!!")
        if self.sources:
            hdr = (f"{'source':<12} {'unit':>10} {'band':>13} {'gamma used':>17} {'spent rho':>10} "
                   f"{'budget rho':>10} {'eps@delta':>16} {'influence eps':>13} {'charged':>7}  history")
            lines += ["", hdr, "-" * len(hdr)]
            for s in self.sources:
                used = "-" if s.gamma_used_min is None else f"{s.gamma_used_min:.3f}..{s.gamma_used_max:.3f}"
                lines.append(f"{s.id:<12} {unit_label(s.unit, s.slices):>10} {s.gamma_min:>6.3f}..{s.gamma_max:<5.3f} "
                             f"{used:>17} {s.spent_rho:>10.4f} {s.budget_rho:>10.4f} "
                             f"{s.epsilon:>7.3f}@{s.delta:<8.0e} {s.influence_epsilon:>13.3f} {s.charged_entries:>7}  "
                             + ("complete" if s.complete else "partial (receipt of another source)"))
        if self.findings:
            lines += ["", "findings:"] + [f"  {f}" for f in self.findings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- receipt file


class Receipt(msgspec.Struct, forbid_unknown_fields=True):
    """receipt.json: which entries the receipt's entries.jsonl holds (by sequence
    number), their inclusion proofs against the checkpoint of `size`, and a
    consistency proof from every other checkpoint it carries to that one."""
    version: int
    source: str
    size: int
    seqs: list[int]
    inclusion: list[list[str]]
    consistency: dict[str, list[str]]


_receipt_decoder = msgspec.json.Decoder(Receipt)


def _b64hashes(items: list[str]) -> list[bytes]:
    out = []
    for s in items:
        h = base64.b64decode(s, validate=True)
        if len(h) != 32:
            raise ValueError("a proof hash is not 32 bytes")
        if base64.b64encode(h).decode() != s:
            # b64decode ignores the unused low bits of the last character: a receipt must
            # not have two spellings, so every byte of it counts.
            raise ValueError("a proof hash is not in canonical base64")
        out.append(h)
    return out


# ----------------------------------------------------------------------------- witness state


def load_witness(path: Path) -> dict:
    if not os.path.lexists(path):
        return {"version": 1, "logs": {}}
    try:
        # Not through a link: save_witness replaces the file, which would cut the link.
        data = json.loads(read_named(path, WITNESS_FILE, follow_links=False))
    except PublishedFileError as e:
        raise ParameterError(f"witness state {e}") from None
    except ValueError as e:
        raise ParameterError(f"witness state {path}: {e}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("logs"), dict):
        raise ParameterError(f"witness state {path}: not a dvsecure witness state (version 1)")
    return data


def save_witness(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)   # not through a planted link
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise ParameterError(f"cannot write witness state {tmp}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- the audit


class _Audit:
    def __init__(self, path: Path, report: AuditReport, source: str | None, policy_file: Path | None,
                 witness: Path | None, trusted_keys: list[str], allow_nonprivate: bool):
        self.path, self.r = path, report
        self.source, self.policy_file, self.witness = source, policy_file, witness
        self.trusted = set(trusted_keys)
        self.allow_nonprivate = allow_nonprivate
        self.signer_keys: list[str] = []
        self.slots_at: list[tuple[int, dict[str, E.SignerKey]]] = []      # (signers entry seq, keys by slot)
        self.rotations: list[tuple[int, str, E.SignerKey, E.SignerKey]] = []
        self.slot_history: dict[str, list[str]] = {}
        self.listing = None                 # scan_published(path), set by files()
        self.reported: set[str] = set()     # paths already named in a file finding

    # ---- files ----------------------------------------------------------------
    def files(self, receipt: bool) -> None:
        allowed_top = {POLICY, ENTRIES} | ({RECEIPT} if receipt else set())
        self.listing = scan_published(self.path)
        for rel, problem in self.listing.refused:
            self.r.add("file", f"{problem}; a log directory holds regular files only", file=rel)
            self.reported.add(rel)
        for rel in self.listing.dirs:
            if rel not in (CHECKPOINTS, KEYS):
                self.r.add("file", "unexpected directory", file=rel)
        for rel in self.listing.files:
            parent, _, name = rel.rpartition("/")
            ok = (parent == "" and name in allowed_top) or \
                 (parent == CHECKPOINTS and _CHECKPOINT_RE.match(name)) or \
                 (parent == KEYS and name.endswith(KEY_SUFFIX))
            if not ok:
                self.r.add("file", "unexpected file: not part of a log, so nothing covers its bytes", file=rel)
        for need in (POLICY, ENTRIES) + ((RECEIPT,) if receipt else ()):
            if not self.present(need):
                self.r.add("file", "missing", file=need)
                self.reported.add(need)

    def present(self, rel: str) -> bool:
        return rel in self.listing.files or rel in self.reported

    def read(self, rel: str, kind: Kind) -> bytes | None:
        """The file's bytes, or None with a file finding (once per path)."""
        try:
            return read_published(self.path, rel, kind)
        except PublishedFileError as e:
            if e.path not in self.reported:
                self.r.add("file", e.problem, file=e.path)
                self.reported.add(e.path)
            return None

    # ---- entries ----------------------------------------------------------------
    def entries(self) -> bytes:
        """The entries file up to its last complete line."""
        data = self.read(ENTRIES, ENTRIES_FILE) or b""
        if data and not data.endswith(b"\n"):
            self.r.add("entry", "the last entry is incomplete (torn or truncated write)", file=ENTRIES)
            data = data[:data.rfind(b"\n") + 1]
        return data

    # ---- genesis and policy ----------------------------------------------------------
    def genesis(self, first_line: bytes | None, seqs) -> ConsortiumPolicy | None:
        policy_bytes = self.read(POLICY, POLICY_FILE)
        try:
            g = E.decode(first_line) if first_line is not None else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            g = None
        if g is None or seqs[0] != 0 or not isinstance(g, E.Genesis) or g.seq != 0:
            self.r.add("genesis", "the first entry is not the genesis entry (seq 0)", file=ENTRIES)
            return None
        self.r.origin = g.origin
        if policy_bytes is None:
            return None
        if hashlib.sha256(policy_bytes).hexdigest() != g.policy_sha256:
            self.r.add("policy", "policy.toml is not the policy whose SHA-256 entry 0 records", seq=0, file=POLICY)
        try:
            policy = ConsortiumPolicy.from_toml(policy_bytes.decode("utf-8"))
        except (PolicyError, UnicodeDecodeError) as e:
            self.r.add("policy", f"policy.toml does not parse: {e}", file=POLICY)
            return None
        if policy.digest() != g.policy_digest:
            self.r.add("policy", "policy.toml's digest differs from the one entry 0 records", seq=0, file=POLICY)
        if list(policy.ids) != g.sources:
            self.r.add("genesis", "entry 0 lists other sources than the policy", seq=0)
        if E.log_origin(policy) != g.origin:
            self.r.add("genesis", f"origin {g.origin!r} does not name this policy", seq=0)
        if self.policy_file is not None:
            try:
                mine = ConsortiumPolicy.load(self.policy_file)
            except (PolicyError, OSError) as e:
                raise ParameterError(f"--policy {self.policy_file}: {e}") from None
            if mine.digest() != g.policy_digest:
                self.r.add("policy", f"the log used a policy that differs from {self.policy_file} "
                           f"(digest {g.policy_digest[:16]}... vs {mine.digest()[:16]}...)", seq=0)
                return None
        return policy

    # ---- signers and checkpoints ------------------------------------------------------
    def signer_sets(self, specials, seqs, policy) -> list[tuple[int, list[E.SignerKey]]]:
        """Every signers entry, read against the policy's [signers] (log/signers.py):
        slots kept, the first set the policy's keys, later key changes recorded as
        rotations that the next checkpoint must prove with the replaced key."""
        sets = []
        for i, e in specials:
            seq = seqs[i]
            if isinstance(e, E.Signers):
                if not e.keys:
                    self.r.add("signers", "a signers entry with no keys", seq=seq)
                sets.append((seq, e.keys))
        if not sets:
            self.r.add("signers", "the log has no signers entry, so no checkpoint can be valid")
        required = policy.signers if policy is not None else None
        if policy is not None and required is None:
            self.r.add("signers", "the policy names no signers, so nothing shows that the parties (or the "
                       "enclave) signed rather than the operator alone (log format version 1: re-run with a "
                       "policy that has a [signers] table)", file=POLICY)
        history: dict[str, list[str]] = {}
        if required is not None:
            previous = None
            for seq, keys in sets:
                slots, problems = S.assign_slots(required, keys)
                if previous is None:
                    problems += S.initial_problems(required, slots)
                for problem in problems:
                    self.r.add("signers", problem, seq=seq)
                if previous is not None:
                    self.rotations += [(seq, slot, old, new) for slot, old, new in S.rotations(previous, slots)]
                for slot, k in slots.items():
                    if not history.get(slot) or history[slot][-1] != k.vkey:
                        history.setdefault(slot, []).append(k.vkey)
                self.slots_at.append((seq, slots))
                previous = slots
        self.slot_history = history
        # Pinned keys (--trust-key, or a witness's) are required: each must be a signer
        # here, and every other signer must have replaced one with its consent.
        allowed = set(self.trusted)
        for _, _, old, new in self.rotations:
            if old.vkey in allowed:
                allowed.add(new.vkey)
        named = {k.vkey for _, keys in sets for k in keys}
        for pin in sorted(self.trusted - named):
            self.r.add("signers", f"pinned key {pin.split('+')[0]!r} signs nothing in this log: "
                       "a required signer is missing")
        for _, keys in sets:
            for k in keys:
                if self.trusted and k.vkey not in allowed:
                    self.r.add("signers", f"signer {k.name!r} is not among the pinned keys")
        # Key files: each must be exactly a recorded signer's key, and every signer needs one.
        recorded = {key_file_name(k.vkey): (k.vkey + "\n").encode() for _, keys in sets for k in keys}
        for name in self.listing.names_in(KEYS):
            want = recorded.get(name)
            if want is None:
                self.r.add("file", "a key file no signers entry records", file=f"{KEYS}/{name}")
            elif (got := self.read(f"{KEYS}/{name}", KEY_FILE)) is not None and got != want:
                self.r.add("file", "key file differs from the key its signers entry records", file=f"{KEYS}/{name}")
        for name in recorded:
            if not self.present(f"{KEYS}/{name}"):
                self.r.add("file", "missing key file of a recorded signer", file=f"{KEYS}/{name}")
        return sets

    def checkpoints(self, sets, total: int) -> dict[int, Checkpoint]:
        """Verified checkpoints by size. A checkpoint of size n needs a valid signature
        from every key of the latest signers entry inside its first n entries, and the
        first checkpoint after a key rotation also one from the key it replaced."""
        out: dict[int, Checkpoint] = {}
        names = [name for name in self.listing.names_in(CHECKPOINTS) if _CHECKPOINT_RE.match(name)]
        sizes = [int(name[:12]) for name in names]
        consent: dict[int, list[tuple[str, E.SignerKey]]] = {}     # checkpoint size -> replaced keys
        for seq, slot, old, _ in self.rotations:
            later = [m for m in sizes if m > seq]
            if later:
                consent.setdefault(min(later), []).append((slot, old))
        for name, size in zip(names, sizes):
            rel = f"{CHECKPOINTS}/{name}"
            if size > total:
                self.r.add("checkpoint", f"checkpoint of size {size} but only {total} entries exist "
                           "(entries deleted or truncated)", file=rel)
            active = [keys for seq, keys in sets if seq < size]
            if not active:
                self.r.add("checkpoint", "no signers entry precedes this checkpoint", file=rel)
                continue
            keys = active[-1]
            try:
                verifiers = [Verifier.from_key_string(k.vkey) for k in keys]
                replaced = [(slot, Verifier.from_key_string(k.vkey)) for slot, k in consent.get(size, [])]
                if (note := self.read(rel, NOTE_FILE)) is None:
                    continue
                opened = open_note(note, verifiers + [v for _, v in replaced])
                missing = [v.name for v in verifiers if not _signed_by(note, v)]
                if missing:
                    raise NoteError(f"lacks a valid signature from required signer(s) {', '.join(missing)}")
                for slot, v in replaced:
                    if not _signed_by(note, v):
                        raise NoteError(f"it is the first checkpoint after slot {slot}'s key was replaced, "
                                        f"but the replaced key {v.name!r} did not sign it (a key changes "
                                        "only with its holder's consent)")
                cp = Checkpoint.parse(opened.text)
            except (NoteError, DvsecureError, ValueError) as e:
                self.r.add("checkpoint", f"signature check failed: {e}", file=rel)
                continue
            if opened.unknown:
                names = ", ".join(f"{n}+{k:08x}" for n, k in opened.unknown)
                self.r.add("checkpoint", f"signed by unknown key(s): {names}", file=rel)
            if cp.size != size:
                self.r.add("checkpoint", f"file name says size {size}, the signed text {cp.size}", file=rel)
                continue
            if self.r.origin is not None and cp.origin != self.r.origin:
                self.r.add("checkpoint", f"origin {cp.origin!r} is not this log's {self.r.origin!r}", file=rel)
                continue
            out[size] = cp
        self.r.checkpoints = len(out)
        if not out:
            self.r.add("checkpoint", "no valid checkpoint: nothing in this directory is signed")
        # Each checkpoint names its predecessor: the chain down to 0 must be whole.
        for size, cp in out.items():
            prev = [e[len(PREVIOUS):] for e in cp.extensions if e.startswith(PREVIOUS)]
            if len(prev) != 1 or not prev[0].isdigit() or int(prev[0]) >= size:
                self.r.add("checkpoint", "no valid previous-checkpoint extension",
                           file=f"{CHECKPOINTS}/{size:012d}{CHECKPOINT_SUFFIX}")
            elif int(prev[0]) and int(prev[0]) not in out:
                self.r.add("checkpoint", f"its previous checkpoint (size {prev[0]}) is missing or invalid",
                           file=f"{CHECKPOINTS}/{size:012d}{CHECKPOINT_SUFFIX}")
        return out

    def slots_in_force(self, size: int) -> dict[str, str]:
        """slot -> key of the signer set that a checkpoint of `size` needs."""
        active = [slots for seq, slots in self.slots_at if seq < size]
        return {slot: k.vkey for slot, k in active[-1].items()} if active else {}

    def witness_check(self, root_at) -> None:
        if self.witness is None or self.r.origin is None:
            return
        seen = load_witness(self.witness)["logs"].get(self.r.origin)
        if not seen:
            return
        for slot, vkey in seen.get("signers", {}).items():
            if vkey not in self.slot_history.get(slot, []):
                self.r.add("signers", f"slot {slot}: the key a checkpoint seen before required "
                           f"({vkey.split('+')[0]!r}) is not in this log's history of that slot "
                           "(a weaker or different signer set than the one witnessed)")
        size, root = int(seen["size"]), base64.b64decode(seen["root"])
        got = root_at(size)
        if got is None:
            self.r.add("fork", f"cannot show consistency with the checkpoint of size {size} seen before "
                       f"(the log is shorter, or the receipt carries no proof from it)")
        elif got != root:
            self.r.add("fork", f"the tree of size {size} has root {base64.b64encode(got).decode()}, but a "
                       f"checkpoint seen before says {seen['root']}: forked or rewritten history")

    def witness_update(self, cp: Checkpoint) -> None:
        if self.witness is None or not self.r.ok:
            return
        state = load_witness(self.witness)
        state["logs"][cp.origin] = {"size": cp.size, "root": base64.b64encode(cp.root_hash).decode(),
                                    "keys": self.signer_keys, "signers": self.slots_in_force(cp.size)}
        save_witness(self.witness, state)


def _signed_by(note: bytes, verifier: Verifier) -> bool:
    """Whether `note` carries a valid signature by exactly this key (by name and key id:
    a rotated key may keep its slot's name, so a name alone proves nothing)."""
    text, sigs = parse_note(note)
    return any(s.name == verifier.name and s.key_id == verifier.key_id and verifier.verify(text, s.signature)
               for s in sigs)


def _sorted_seqs(seqs, r) -> bool:
    if any(b <= a for a, b in zip(seqs, seqs[1:])):
        r.add("sequence", "entries are not in strictly increasing sequence order")
        return False
    return True


def audit(path: str | Path, *, source: str | None = None, policy: str | Path | None = None,
          witness: str | Path | None = None, trusted_keys: list[str] = (),
          allow_nonprivate: bool = False, workers: int | None = None,
          submissions: str | Path | None = None, submissions_complete: bool = False,
          enclave_pcr0: bytes | None = None,
          trusted_sim_roots=(), enclave_principals: bytes | None = None) -> AuditReport:
    """Audit a log directory or an exported receipt (a directory with receipt.json).
    `workers`: processes for the per-entry work (default: one per core on large logs).
    `submissions`: the source's own submissions file (audit/submissions.py), checked
    against the entries: the source is the receipt's, or `source`.
    Under a policy naming the enclave as signer (or with `enclave_pcr0`), every
    signer's attestation is verified (audit/attested.py), a simulated one only if
    its root is in `trusted_sim_roots`; `enclave_principals`: the agreed file."""
    path = Path(path)
    if not path.is_dir():
        raise ParameterError(f"{path} is not a log directory or receipt")
    is_receipt = os.path.lexists(path / RECEIPT)     # a linked receipt.json is still a receipt, refused
    r = AuditReport(str(path), "receipt" if is_receipt else "log")
    a = _Audit(path, r, source, Path(policy) if policy else None, Path(witness) if witness else None,
               list(trusted_keys), allow_nonprivate)
    a.files(is_receipt)
    data = a.entries()
    first_nl = data.find(b"\n")

    receipt = None
    if is_receipt:
        if (raw := a.read(RECEIPT, RECEIPT_FILE)) is None:
            return r
        try:
            receipt = _receipt_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            r.add("file", f"receipt.json is not valid: {e}", file=RECEIPT)
            return r
        if source is not None and source != receipt.source:
            raise ParameterError(f"this receipt is for source {receipt.source!r}, not {source!r}")
        a.source = receipt.source
        seqs = receipt.seqs
        count = data.count(b"\n")
        r.entries = count
        if len(seqs) != count or len(receipt.inclusion) != count:
            r.add("file", f"receipt.json lists {len(seqs)} entries and {len(receipt.inclusion)} proofs, "
                  f"entries.jsonl holds {count}", file=RECEIPT)
            return r
        _sorted_seqs(seqs, r)
    else:
        seqs = range(len(data))           # line i is entry i (an upper bound on the line count)

    policy_obj = a.genesis(data[:first_nl] if first_nl >= 0 else None, seqs)
    if policy_obj is not None and a.source is not None and a.source not in policy_obj.ids:
        raise ParameterError(f"source {a.source!r} is not in this log's policy")
    complete = frozenset({receipt.source} if is_receipt else (policy_obj.ids if policy_obj else ()))
    shards = check_entries(data, seqs, Context(policy_obj, complete), workers)
    count = r.entries = sum(shard.lines for shard in shards)
    for shard in shards:
        for check, message, seq in shard.findings:
            r.add(check, message, seq=seq)
    leaves = [h for shard in shards for h in shard.leaves]
    specials = [x for shard in shards for x in shard.specials]
    qids = [x for shard in shards for x in shard.query_ids]
    if len({q for q, _ in qids}) != len(qids):
        first: dict[str, int] = {}
        for q, seq in qids:
            if q in first:
                r.add("sequence", f"query id {q!r} already appeared in entry {first[q]}", seq=seq)
            first.setdefault(q, seq)
    if a.witness is not None and r.origin is not None:
        # Keys pinned on first use: a log seen before must still be signed by the same keys.
        a.trusted |= set(load_witness(a.witness)["logs"].get(r.origin, {}).get("keys", []))
    sets = a.signer_sets(specials, seqs, policy_obj)
    a.signer_keys = sorted({k.vkey for _, keys in sets for k in keys})

    if is_receipt:
        size = receipt.size
        cps = a.checkpoints(sets, size)
        head = cps.get(size)
        if head is None:
            r.add("checkpoint", f"no valid checkpoint of size {size}, which the receipt's proofs use")
            return r
        r.size = size
        if not seqs or seqs[-1] != size - 1:
            r.add("sequence", f"the receipt lacks the last entry ({size - 1}) of the tree it proves")
        for seq, lh, proof in zip(seqs, leaves, receipt.inclusion):
            try:
                verify_inclusion(seq, size, lh, _b64hashes(proof), head.root_hash)
            except (ProofError, ValueError) as e:
                r.add("merkle", f"inclusion proof fails: {e}", seq=seq)
        roots = {size: head.root_hash}
        for old, cp in cps.items():
            if old == size:
                continue
            try:
                proof = _b64hashes(receipt.consistency.get(str(old), []))
                verify_consistency(old, size, proof, cp.root_hash, head.root_hash)
                roots[old] = cp.root_hash
            except (ProofError, ValueError) as e:
                r.add("merkle", f"checkpoint of size {old} is not consistent with size {size}: {e}")
    else:
        cps = a.checkpoints(sets, count)
        seen = load_witness(a.witness)["logs"].get(r.origin, {}) if a.witness and r.origin else {}
        wanted = set(cps) | ({int(seen["size"])} if seen else set())
        tree = MerkleTree(leaves)
        roots = {m: tree.root(m) for m in wanted if m <= len(leaves)}
        for m, cp in cps.items():
            if m in roots and roots[m] != cp.root_hash:
                r.add("merkle", f"checkpoint root does not match the entries (a changed, deleted, reordered "
                      f"or inserted entry before {m})", file=f"{CHECKPOINTS}/{m:012d}{CHECKPOINT_SUFFIX}")
        head = cps[max(cps)] if cps else None
        r.size = head.size if head else 0
        if head is not None and head.size < count:
            r.add("checkpoint", f"entries {head.size}..{count - 1} are covered by no checkpoint",
                  seq=head.size)
    a.witness_check(lambda m: roots.get(m))

    if submissions is not None:
        _check_submissions(a, policy_obj, submissions, data, seqs, qids, submissions_complete)
    agreed = policy_obj.signers.enclave_pcr0 if policy_obj is not None and policy_obj.signers else None
    if enclave_pcr0 is None and agreed is not None:
        enclave_pcr0 = bytes.fromhex(agreed)
    if enclave_pcr0 is not None:
        from .attested import check_attested_signers

        r.attested = True
        for problem in check_attested_signers(path, expected_pcr0=enclave_pcr0, expected_principals=enclave_principals,
                                              trusted_sim_roots=trusted_sim_roots):
            r.add("attestation", problem)
    if policy_obj is not None:
        _report_sources(a, policy_obj, shards, complete)
    if head is not None:
        a.witness_update(head)
    return r


def _check_submissions(a: _Audit, policy, path, data: bytes, seqs, qids, complete: bool = False) -> None:
    """The source's submissions against the entries; with `complete` (the file
    holds every vote it sent to this log), also every entry that counts it or
    judges its vote without a submission in the file: participation fabricated
    in its name."""
    from .submissions import check_submissions, load_submissions

    if a.source is None:
        raise ParameterError("--submissions needs --source (whose submissions they are) for a log directory")
    items = load_submissions(path)
    if policy is None:
        a.r.add("submission", "the log's policy could not be established, so no submission can be checked")
        return
    wanted = {item.query_id for item in items}
    index = {seq: i for i, seq in enumerate(seqs)} if a.r.kind == "receipt" else None
    lines = data.split(b"\n")
    found: dict[str, tuple[int, E.Query]] = {}
    j = policy.ids.index(a.source) if a.source in policy.ids else None
    for q, seq in qids:
        if complete and q not in wanted and j is not None:
            try:
                e = E.decode(lines[seq if index is None else index[seq]])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError):
                continue
            if isinstance(e, E.Query) and len(e.status) == len(policy.ids) and e.status[j] in "ASI":
                a.r.add("submission", f"query {q!r}: {a.source!r} is logged {E.STATUS_NAMES[e.status[j]]} "
                        "although it submitted nothing to it (its submissions file is complete)", seq=seq)
        if q in wanted:
            try:
                e = E.decode(lines[seq if index is None else index[seq]])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError):
                continue                    # reported as an entry finding already
            if isinstance(e, E.Query):
                found[q] = (seq, e)
    for message, seq in check_submissions(items, found, policy, a.source):
        a.r.add("submission", message, seq=seq)


def _report_sources(a: _Audit, policy: ConsortiumPolicy, shards, complete) -> None:
    r = a.r
    nonprivate = [seq for shard in shards for seq in shard.nonprivate]
    r.non_private_entries = len(nonprivate)
    if nonprivate and not a.allow_nonprivate:
        r.add("non-private", f"{len(nonprivate)} entries used noise that is not private (e.g. entry "
              f"{nonprivate[0]}); such releases protect nothing", seq=nonprivate[0])
    last = next((sh.last_stated for sh in reversed(shards) if sh.last_stated is not None), None)
    for j, src in enumerate(policy.sources):
        sid = src.id
        if a.source is not None and sid != a.source:
            continue
        parts = [sh.stats[sid] for sh in shards if sid in sh.stats]
        whole = sid in complete
        exact = sum((st.exact for st in parts), Fraction(0))
        statuses: dict[str, int] = {}
        for st in parts:
            for key, m in st.statuses.items():
                statuses[key] = statuses.get(key, 0) + m
        mins = [st.used_min for st in parts if st.used_min is not None]
        maxs = [st.used_max for st in parts if st.used_max is not None]
        if whole and last is not None and float(exact) != last[j]:
            r.add("spend", f"source {sid!r}: final stated spend {last[j]!r} is not the exact recomputed total "
                  f"{float(exact)!r}")
        over = [st.first_over for st in parts if st.first_over is not None]
        if whole and exact > src.budget_rho:
            r.add("budget", f"source {sid!r}: recomputed spend {float(exact):.6g} exceeds its budget "
                  f"{float(src.budget_rho):.6g} ({unit_label(src.unit, src.slices)} level)",
                  seq=min(over) if over else None)
        # Calibration may spend at most the policy's share of the budget, over all its runs.
        share, total = Fraction(policy.calibration.budget_fraction) * src.cap_rho, Fraction(0)
        for seq, rho in sorted(x for st in parts for x in st.calibration):
            total += rho
            if whole and total > share:
                r.add("budget", f"source {sid!r}: calibration has spent {float(total):.6g}, more than the policy's "
                      f"share {policy.calibration.budget_fraction:g} of its budget ({float(share):.6g})", seq=seq)
                break
        influence = src.influence(exact)
        if whole and src.unit != "source" and src.influence_budget_rho is not None \
                and influence > src.influence_budget_rho:
            r.add("budget", f"source {sid!r}: recomputed influence (source-level spend) {float(influence):.6g} "
                  f"exceeds its influence budget {float(src.influence_budget_rho):.6g}",
                  seq=min(over) if over else None)
        r.sources.append(SourceReport(
            id=sid, gamma_min=src.gamma_min, gamma_max=src.gamma_max, budget_rho=float(src.budget_rho),
            spent_rho=float(exact) if whole else float("nan"),
            stated_spent_rho=None if last is None else float(last[j]),
            epsilon=zcdp_eps_tight(exact, src.delta) if whole else float("nan"), delta=src.delta,
            unit=src.unit, slices=src.slices,
            influence_rho=float(influence) if whole else float("nan"),
            influence_epsilon=zcdp_eps_tight(influence, src.delta) if whole else float("nan"),
            influence_budget_rho=None if src.influence_budget_rho is None else float(src.influence_budget_rho),
            charged_entries=sum(st.charged for st in parts), queries_answered=sum(st.answered for st in parts),
            gamma_used_min=min(mins) / SCALE if mins else None, gamma_used_max=max(maxs) / SCALE if maxs else None,
            statuses=statuses, complete=whole))
