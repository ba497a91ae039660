"""The published, append-only transparency log directory, and its writer.

Layout of a log directory (public material only; every byte is covered by a
hash or a signature, and the auditor reports any file it does not expect):

    policy.toml                the agreed policy; its SHA-256 is in entry 0
    entries.jsonl              one entry per line; line i (without its "\\n") is
                               leaf i of the RFC 9162 Merkle tree
    checkpoints/<size>.note    C2SP signed checkpoints (origin, size, root, and an
                               extension line naming the previous checkpoint's
                               size, so a deleted checkpoint breaks the chain)
    keys/<name>.vkey           verifier keys, each one recorded in a signers entry

The ledger (private) is the source of truth: entry i is exactly the bytes of
ledger record i, so the log can always be caught up after a crash. Appends are
fsynced before a checkpoint covering them is signed; a torn last line (a crash
mid-append) is cut off when the writer reopens and is reported by the auditor
until then, so a broken log never audits clean.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..engine.ledger import Ledger, LedgerRecord
from ..errors import LogError
from . import entry
from . import signers as signer_slots
from .files import ENTRIES_FILE, KEY_FILE, NOTE_FILE, POLICY_FILE, read_published
from .merkle import CompactRange, leaf_hash
from .note import Checkpoint, Signer, generate_signer, parse_note, sign_checkpoint

ENTRIES = "entries.jsonl"
CHECKPOINTS = "checkpoints"
KEYS = "keys"
POLICY = "policy.toml"
OPERATOR_KEY = "operator.key"
CHECKPOINT_SUFFIX = ".note"
KEY_SUFFIX = ".vkey"
PREVIOUS = "dvsecure-previous-checkpoint "     # checkpoint extension: "<prefix><size>"


def checkpoint_name(size: int) -> str:
    return f"{size:012d}{CHECKPOINT_SUFFIX}"


def key_file_name(vkey: str) -> str:
    """keys/<name>_<key id>.vkey: one file per key, even when a replaced key and its
    successor share a name."""
    name, _, rest = vkey.partition("+")
    key_id = rest.partition("+")[0]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + "_" + key_id + KEY_SUFFIX


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def operator_signer(state_dir: Path, policy=None, *, name: str | None = None) -> Signer:
    """The operator's checkpoint key, created on first use in the private state
    directory (mode 0600), never in the published directory. A new key is named
    after `name`, else the policy's consortium name (`dvsecure keys new --role
    operator` makes it before any policy exists); an existing key is used as it is."""
    path = Path(state_dir) / OPERATOR_KEY
    if path.exists():
        return Signer.from_key_string(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named after the consortium, not the policy digest: the policy names this key.
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in (policy.name if name is None else name))
    skey, _ = generate_signer(f"dvsecure/{name}/operator")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(skey + "\n")
        f.flush()
        os.fsync(f.fileno())
    return Signer.from_key_string(skey)


def name_signers(policy, state_dir: Path, backend=None):
    """`policy`, naming who must sign its log (DESIGN §5): the operator's key (made in
    `state_dir` on first use) and, when `backend` has computing parties, each party's
    cosigning key (`signer_keys()`) and its dealer's link key (`dealer_key()`). A
    policy that names its signers already is returned as it is: the sources agreed
    to that one."""
    from ..policy import SignerPolicy

    if policy.signers is not None:
        return policy
    operator = operator_signer(state_dir, policy)
    parties = tuple(backend.signer_keys()) if hasattr(backend, "signer_keys") else ()
    dealer = backend.dealer_key() if parties and hasattr(backend, "dealer_key") else None
    return policy.with_signers(SignerPolicy(operator=signer_slots.public_key_b64(operator.verifier_key_string),
                                            parties=parties, dealer=dealer))


class LogWriter:
    """Mirrors a ledger into a log directory and signs a checkpoint after each sync.

    On open it records the signer set in the ledger (a signers entry) unless the
    latest one already names exactly these keys, so every checkpoint it signs is
    covered by a signers entry inside the tree it commits to. A signer's role is
    its `role` attribute if it has one (a `note.DelegatedSigner` of an MPC
    party), else `role`.

    The signers must be the ones the policy names (log/signers.py): the first set
    exactly, a later one may replace a slot's key only if the replaced key is given
    in `retiring`, which then cosigns the first checkpoint after the change.
    """

    def __init__(self, log_dir: str | Path, ledger: Ledger, signers: list[Signer], role: str = "operator",
                 attestations: dict[str, str] | None = None, retiring: list[Signer] = ()):
        if not signers:
            raise LogError("a log needs at least one checkpoint signer")
        self.dir = Path(log_dir)
        self.ledger = ledger
        self.signers = list(signers)
        self.origin = entry.log_origin(ledger.policy)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / CHECKPOINTS).mkdir(exist_ok=True)
        (self.dir / KEYS).mkdir(exist_ok=True)
        for stale in [*self.dir.glob("*.tmp"), *self.dir.glob("*/*.tmp")]:
            stale.unlink()      # a crash inside write_atomic: the rename never happened
        policy_bytes = ledger.policy.to_toml().encode()
        if (self.dir / POLICY).exists():
            if read_published(self.dir, POLICY, POLICY_FILE) != policy_bytes:
                raise LogError(f"{self.dir / POLICY} differs from the policy this ledger was created with")
        else:
            write_atomic(self.dir / POLICY, policy_bytes)
        self._retiring = self._record_signers(role, attestations or {}, list(retiring))
        for s in self.signers:
            path = self.dir / KEYS / key_file_name(s.verifier_key_string)
            want = (s.verifier_key_string + "\n").encode()
            if not path.exists():
                write_atomic(path, want)
            elif read_published(self.dir, f"{KEYS}/{path.name}", KEY_FILE) != want:
                raise LogError(f"{path} holds a different key for signer {s.name!r}")
        self._tree = CompactRange()
        self._load()
        sizes = [int(p.name[:12]) for p in (self.dir / CHECKPOINTS).glob(f"*{CHECKPOINT_SUFFIX}")]
        self._previous = max(sizes, default=0)
        if self._previous > self.size:
            raise LogError(f"a checkpoint of size {self._previous} exists but the log holds {self.size} entries")

    def _record_signers(self, role: str, attestations: dict[str, str], retiring: list[Signer]) -> list[Signer]:
        """Record the signer set unless it is the latest one; return the replaced keys
        that must cosign the next checkpoint."""
        keys = [entry.SignerKey(name=s.name, vkey=s.verifier_key_string, role=getattr(s, "role", role),
                                attestation=attestations.get(s.name)) for s in self.signers]
        history = [rec for rec in self.ledger.records(kind=entry.SIGNERS)]
        required = self.ledger.policy.signers
        if history and history[-1].keys == keys:
            # Restarted before the first checkpoint after a key change: that one still needs the old key.
            covered = any(int(p.name[:12]) > history[-1].seq
                          for p in (self.dir / CHECKPOINTS).glob(f"*{CHECKPOINT_SUFFIX}"))
            if required is None or len(history) < 2 or covered:
                return []
            return self._consent(required, history[-2].keys, keys, retiring)
        if required is not None:
            slots, problems = signer_slots.assign_slots(required, keys)
            if not history:
                problems += signer_slots.initial_problems(required, slots)
            if problems:
                raise LogError("these checkpoint signers are not the ones the policy names: " + "; ".join(problems))
        consent = self._consent(required, history[-1].keys, keys, retiring) if history and required else []
        seq = self.ledger.next_seq()

        def render(seq, spent, charged) -> bytes:
            return entry.encode(entry.Signers(v=entry.VERSION, seq=seq, query_id=f"signers-{seq}", keys=keys))
        self.ledger.commit([LedgerRecord(f"signers-{seq}", entry.SIGNERS, (), render)])
        return consent

    @staticmethod
    def _consent(required, before, after, retiring: list[Signer]) -> list[Signer]:
        """The retiring signers whose keys `after` replaces (LogError if one is not given)."""
        old, _ = signer_slots.assign_slots(required, before)
        new, _ = signer_slots.assign_slots(required, after)
        by_key = {r.verifier_key_string: r for r in retiring}
        out = []
        for slot, was, _ in signer_slots.rotations(old, new):
            if was.vkey not in by_key:
                raise LogError(f"the signer set replaces the key of slot {slot} ({was.name!r}); the replaced key "
                               "must cosign the first checkpoint after the change: pass it as retiring")
            out.append(by_key[was.vkey])
        return out

    def _load(self) -> None:
        """Read the existing entries, cut a torn tail, and check every entry is the
        ledger's record of the same sequence number."""
        path = self.dir / ENTRIES
        if not path.exists():
            path.touch()
            fsync_dir(self.dir)
        data = read_published(self.dir, ENTRIES, ENTRIES_FILE)    # not a link: the truncate below must not follow one
        complete = data.rfind(b"\n") + 1
        if complete != len(data):
            with open(path, "r+b") as f:   # a crash mid-append: drop the partial line
                f.truncate(complete)
                os.fsync(f.fileno())
            data = data[:complete]
        lines = data.split(b"\n")[:-1] if data else []
        bodies = self.ledger.record_bytes(0, len(lines))
        if len(bodies) < len(lines):
            raise LogError(f"the log holds {len(lines)} entries but the ledger only {len(bodies)}")
        for i, (line, body) in enumerate(zip(lines, bodies)):
            if line != body:
                raise LogError(f"log entry {i} differs from the ledger's record {i}")
        self._tree.extend(leaf_hash(line) for line in lines)

    @property
    def size(self) -> int:
        return self._tree.size

    def sync(self) -> Checkpoint:
        """Append every ledger record not yet in the log, then sign a checkpoint."""
        new = self.ledger.record_bytes(self.size, None)
        if new:
            with open(self.dir / ENTRIES, "ab") as f:
                f.write(b"".join(b + b"\n" for b in new))
                f.flush()
                os.fsync(f.fileno())
            self._tree.extend(leaf_hash(b) for b in new)
        path = self.dir / CHECKPOINTS / checkpoint_name(self.size)
        if path.exists():
            return Checkpoint.parse(parse_note(read_published(self.dir, f"{CHECKPOINTS}/{path.name}", NOTE_FILE))[0])
        cp = Checkpoint(self.origin, self.size, self._tree.root(), (f"{PREVIOUS}{self._previous}",))
        write_atomic(path, sign_checkpoint(cp, self.signers + self._retiring))
        self._previous = cp.size
        self._retiring = []         # consent is given once, on the first checkpoint after the change
        return cp
