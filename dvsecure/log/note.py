"""C2SP signed notes (c2sp.org/signed-note) and tlog checkpoints
(c2sp.org/tlog-checkpoint), with Ed25519 keys (signature type 0x01).

A signed note is a UTF-8 text ending in a newline, then a blank line, then one
or more signature lines::

    <text, ending in "\\n">
    <blank line>
    — <key name> base64(4-byte big-endian key id || signature)
    ...

A checkpoint is a note whose text is ``origin\\nsize\\nbase64(root)\\n`` followed
by optional non-empty extension lines.

Keys use the encodings of golang.org/x/mod/sumdb/note::

    verifier key  <name>+<8 lowercase hex key id>+base64(0x01 || 32-byte public key)
    signer key    PRIVATE+KEY+<name>+<key id>+base64(0x01 || 32-byte Ed25519 seed)
    key id        SHA-256(name || "\\n" || 0x01 || public key)[:4], big-endian uint32

Parsing here is deliberately strict: everything that does not match the
format exactly (non-canonical base64, upper-case hex, control characters,
duplicate signatures, oversized notes, ...) raises ``NoteError`` naming the
problem. Signatures are always checked over the exact bytes received; nothing
is re-encoded before verification.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..errors import NoteError

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteSignature",
    "OpenedNote",
    "Signer",
    "Verifier",
    "generate_signer",
    "key_id",
    "open_note",
    "parse_note",
    "sign_checkpoint",
    "sign_note",
    "verifier_key_string",
    "verify_checkpoint",
]

ALG_ED25519 = 0x01
#: Upper bound on the size of a whole signed note, in bytes. The spec asks
#: verifiers to accept at least 16 signatures, post-quantum ones included
#: (~5 kB each); checkpoints themselves are a few hundred bytes.
MAX_NOTE_BYTES = 1 << 20
#: Upper bound on the number of signature lines in a note (spec minimum: 16).
MAX_SIGNATURES = 100

_SIG_PREFIX = "\u2014 "          # EM DASH, SPACE
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX8 = re.compile(r"[0-9a-f]{8}")
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")   # ASCII only; bounded before int()
_ED25519_SIG_LEN = 64
_ED25519_KEY_LEN = 32
_MAX_UINT64 = (1 << 64) - 1


# --------------------------------------------------------------------------- helpers


def _has_control(s: str, allow_newline: bool) -> str | None:
    """The first ASCII control character (< U+0020) in s, newline optionally
    allowed; None if there is none."""
    for c in s:
        if c < "\x20" and not (allow_newline and c == "\n"):
            return c
    return None


def _check_name(name: object, what: str = "key name") -> str:
    """Key names: non-empty, no Unicode spaces, no '+' (spec), and no control
    characters (they cannot appear in a note)."""
    if not isinstance(name, str):
        raise NoteError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise NoteError(f"{what} is empty")
    if "+" in name:
        raise NoteError(f"{what} {name!r} contains '+'")
    for c in name:
        if c.isspace():
            raise NoteError(f"{what} {name!r} contains whitespace {c!r}")
        if c < "\x20":
            raise NoteError(f"{what} {name!r} contains control character {c!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} {name!r} is not valid UTF-8 (lone surrogate)") from None
    return name


def _b64decode_exact(s: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4) with padding, in its one canonical form:
    no whitespace, no URL alphabet, no missing padding, zero trailing bits."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not valid standard base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise NoteError(f"{what} is not canonical standard base64")
    return raw


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4] as a big-endian uint32."""
    h = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + bytes(public_key))
    return int.from_bytes(h.digest()[:4], "big")


def verifier_key_string(name: str, public_key: bytes) -> str:
    """The verifier key string of an Ed25519 public key under a name."""
    _check_name(name)
    public_key = bytes(public_key)
    if len(public_key) != _ED25519_KEY_LEN:
        raise NoteError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    kid = key_id(name, public_key)
    return f"{name}+{kid:08x}+{_b64(bytes([ALG_ED25519]) + public_key)}"


def _split_key(rest: str, what: str) -> tuple[str, int, bytes]:
    """Parse "<name>+<hex id>+<base64 key>" into (name, claimed id, key bytes
    without the algorithm byte), checking everything except the key id."""
    parts = rest.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"{what} must have the form <name>+<key id>+<key>")
    name, hex_id, b64 = parts
    _check_name(name, f"{what} name")
    if not _HEX8.fullmatch(hex_id):
        raise NoteError(f"{what} key id {hex_id!r} is not 8 lowercase hex digits")
    raw = _b64decode_exact(b64, f"{what} key data")
    if len(raw) != 1 + _ED25519_KEY_LEN:
        raise NoteError(f"{what} key data is {len(raw)} bytes, want 33 (0x01 || 32-byte Ed25519 key)")
    if raw[0] != ALG_ED25519:
        raise NoteError(f"{what} uses unsupported signature algorithm 0x{raw[0]:02x} (want 0x01 Ed25519)")
    return name, int(hex_id, 16), raw[1:]


# --------------------------------------------------------------------------- keys


class Verifier:
    """An Ed25519 note verifier: a name, a key id and a public key."""

    __slots__ = ("name", "key_id", "public_key", "_vk")

    def __init__(self, name: str, public_key: bytes):
        _check_name(name)
        public_key = bytes(public_key)
        if len(public_key) != _ED25519_KEY_LEN:
            raise NoteError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, public_key)
        self._vk = nacl.signing.VerifyKey(public_key)

    @classmethod
    def from_key_string(cls, s: str) -> "Verifier":
        if not isinstance(s, str):
            raise NoteError(f"verifier key must be a str, not {type(s).__name__}")
        name, claimed, pub = _split_key(s, "verifier key")
        v = cls(name, pub)
        if v.key_id != claimed:
            raise NoteError(
                f"verifier key id {claimed:08x} does not match the key (computed {v.key_id:08x})")
        return v

    @property
    def key_string(self) -> str:
        return verifier_key_string(self.name, self.public_key)

    verifier_key_string = key_string

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """Whether sig is a valid Ed25519 signature of msg by this key."""
        sig = bytes(sig)
        if len(sig) != _ED25519_SIG_LEN:
            return False
        try:
            self._vk.verify(bytes(msg), sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
                nacl.exceptions.TypeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return (self.name, self.public_key) == (other.name, other.public_key)

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))

    def __repr__(self) -> str:
        return f"Verifier({self.key_string!r})"


class Signer:
    """An Ed25519 note signer. Its repr never shows the private key."""

    __slots__ = ("name", "key_id", "public_key", "_sk")

    def __init__(self, name: str, seed: bytes):
        _check_name(name)
        seed = bytes(seed)
        if len(seed) != _ED25519_KEY_LEN:
            raise NoteError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._sk = nacl.signing.SigningKey(seed)
        self.name = name
        self.public_key = bytes(self._sk.verify_key)
        self.key_id = key_id(name, self.public_key)

    @classmethod
    def from_key_string(cls, s: str) -> "Signer":
        if not isinstance(s, str):
            raise NoteError(f"signer key must be a str, not {type(s).__name__}")
        if not s.startswith(_PRIVATE_PREFIX):
            raise NoteError("signer key must start with 'PRIVATE+KEY+'")
        name, claimed, seed = _split_key(s[len(_PRIVATE_PREFIX):], "signer key")
        signer = cls(name, seed)
        if signer.key_id != claimed:
            raise NoteError(
                f"signer key id {claimed:08x} does not match the key (computed {signer.key_id:08x})")
        return signer

    @property
    def key_string(self) -> str:
        """The secret signer key string."""
        seed = bytes(self._sk)
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id:08x}+{_b64(bytes([ALG_ED25519]) + seed)}"

    @property
    def verifier_key_string(self) -> str:
        return verifier_key_string(self.name, self.public_key)

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public_key)

    def sign(self, msg: bytes) -> bytes:
        """The 64-byte Ed25519 signature of msg (deterministic, RFC 8032)."""
        return self._sk.sign(bytes(msg)).signature

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id:08x})"


class DelegatedSigner(Signer):
    """A signer whose private key lives elsewhere (another process or machine):
    `sign_fn(msg)` returns its signature. Signing verifies the returned signature
    against the public key, so a wrong or garbled answer never reaches a note.
    `role` says who holds the key (e.g. "party"), for the log's signers entry."""

    __slots__ = ("_sign_fn", "role")

    def __init__(self, verifier_key: str, sign_fn, role: str):
        v = Verifier.from_key_string(verifier_key)
        self.name, self.public_key, self.key_id = v.name, v.public_key, v.key_id
        self._sign_fn, self.role = sign_fn, role

    @property
    def key_string(self) -> str:
        raise NoteError(f"the private key of {self.name!r} is held elsewhere")

    def sign(self, msg: bytes) -> bytes:
        sig = self._sign_fn(bytes(msg))
        if not Verifier(self.name, self.public_key).verify(bytes(msg), sig):
            raise NoteError(f"{self.name!r} returned a signature that does not verify")
        return sig

    def __repr__(self) -> str:
        return f"DelegatedSigner(name={self.name!r}, key_id={self.key_id:08x}, role={self.role!r})"


def generate_signer(name: str) -> tuple[str, str]:
    """A fresh Ed25519 key: (signer key string, verifier key string)."""
    _check_name(name)
    seed = bytes(nacl.signing.SigningKey.generate())
    s = Signer(name, seed)
    return s.key_string, s.verifier_key_string


# --------------------------------------------------------------------------- notes


def _check_note_text(text: bytes | str) -> bytes:
    if isinstance(text, str):
        try:
            text = text.encode("utf-8")
        except UnicodeEncodeError:
            raise NoteError("note text is not valid UTF-8 (lone surrogate)") from None
    elif isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text)
    else:
        raise TypeError(f"note text must be bytes or str, not {type(text).__name__}")
    if not text:
        raise NoteError("note text is empty")
    if not text.endswith(b"\n"):
        raise NoteError("note text does not end with a newline")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note text is not valid UTF-8") from None
    c = _has_control(decoded, allow_newline=True)
    if c is not None:
        raise NoteError(f"note text contains control character {c!r}")
    return text


def sign_note(text: bytes | str, signers: Iterable[Signer]) -> bytes:
    """text + "\\n" + one signature line per signer, each over the exact text bytes."""
    text = _check_note_text(text)
    signers = list(signers)
    if not signers:
        raise NoteError("a note needs at least one signer")
    if len(signers) > MAX_SIGNATURES:
        raise NoteError(f"too many signers ({len(signers)} > {MAX_SIGNATURES})")
    seen: set[tuple[str, int]] = set()
    lines = []
    for s in signers:
        if not isinstance(s, Signer):
            raise TypeError(f"signers must be Signer objects, not {type(s).__name__}")
        if (s.name, s.key_id) in seen:
            raise NoteError(f"duplicate signer {s.name}+{s.key_id:08x}")
        seen.add((s.name, s.key_id))
        sig = s.sign(text)
        lines.append(f"{_SIG_PREFIX}{s.name} {_b64(s.key_id.to_bytes(4, 'big') + sig)}\n")
    note = text + b"\n" + "".join(lines).encode("utf-8")
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"signed note would be {len(note)} bytes, over the {MAX_NOTE_BYTES}-byte limit")
    return note


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line (not yet verified)."""

    name: str
    key_id: int
    signature: bytes          # the bytes after the 4-byte key id


@dataclass(frozen=True)
class OpenedNote:
    text: bytes                               # exact bytes that were signed
    verified: tuple[str, ...]                 # names whose signatures verified, in note order
    unknown: tuple[tuple[str, int], ...]      # (name, key id) of signatures from unknown keys


def parse_note(note: bytes) -> tuple[bytes, tuple[NoteSignature, ...]]:
    """Split a signed note into its exact text bytes and its signature lines,
    checking the syntax only (no signature is verified)."""
    if not isinstance(note, (bytes, bytearray, memoryview)):
        raise TypeError(f"note must be bytes, not {type(note).__name__}")
    note = bytes(note)
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"note is {len(note)} bytes, over the {MAX_NOTE_BYTES}-byte limit")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"note is not valid UTF-8 (at byte {e.start})") from None
    c = _has_control(decoded, allow_newline=True)
    if c is not None:
        raise NoteError(f"note contains control character {c!r}")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line separating the text from the signatures")
    text, block = note[: split + 1], note[split + 2:]
    if not block:
        raise NoteError("note has no signature lines after the blank line")
    if not block.endswith(b"\n"):
        raise NoteError("note does not end with a newline")
    raw_lines = block[:-1].split(b"\n")
    if len(raw_lines) > MAX_SIGNATURES:
        raise NoteError(f"note has too many signatures ({len(raw_lines)} > {MAX_SIGNATURES})")
    sigs = []
    seen: set[tuple[str, int]] = set()
    for i, raw in enumerate(raw_lines, 1):
        line = raw.decode("utf-8")
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"signature line {i} does not start with an em dash and a space")
        fields = line[len(_SIG_PREFIX):].split(" ")
        if len(fields) != 2:
            raise NoteError(f"signature line {i} must be '— <name> <base64>'")
        name, b64 = fields
        _check_name(name, f"signature line {i} key name")
        raw_sig = _b64decode_exact(b64, f"signature line {i} signature")
        if len(raw_sig) < 5:
            raise NoteError(f"signature line {i} signature is {len(raw_sig)} bytes, too short")
        kid = int.from_bytes(raw_sig[:4], "big")
        if (name, kid) in seen:
            raise NoteError(f"duplicate signature for key {name}+{kid:08x}")
        seen.add((name, kid))
        sigs.append(NoteSignature(name, kid, raw_sig[4:]))
    return text, tuple(sigs)


def _verifier_map(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    if isinstance(verifiers, Verifier):
        verifiers = (verifiers,)
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        if not isinstance(v, Verifier):
            raise TypeError(f"verifiers must be Verifier objects, not {type(v).__name__}")
        k = (v.name, v.key_id)
        if k in known and known[k] != v:
            raise NoteError(f"ambiguous verifiers: two different keys named {v.name}+{v.key_id:08x}")
        known[k] = v
    return known


def open_note(note: bytes, verifiers: Iterable[Verifier], *,
              required: Iterable[str] | None = None) -> OpenedNote:
    """Parse a signed note strictly and verify it.

    Every signature whose (name, key id) matches a known verifier must verify
    (else NoteError); signatures from unknown keys are reported in ``unknown``.
    At least one signature must verify, and every name in ``required`` must be
    among the verified names.
    """
    if isinstance(required, str):
        raise TypeError("required must be an iterable of names, not a single str")
    required = tuple(required) if required is not None else ()
    known = _verifier_map(verifiers)
    text, sigs = parse_note(note)
    verified: list[str] = []
    unknown: list[tuple[str, int]] = []
    for s in sigs:
        v = known.get((s.name, s.key_id))
        if v is None:
            unknown.append((s.name, s.key_id))
            continue
        if len(s.signature) != _ED25519_SIG_LEN:
            raise NoteError(
                f"invalid signature for key {s.name}+{s.key_id:08x}: "
                f"{len(s.signature)} bytes, want {_ED25519_SIG_LEN}")
        if not v.verify(text, s.signature):
            raise NoteError(f"invalid signature for key {s.name}+{s.key_id:08x}")
        verified.append(s.name)
    if not verified:
        raise NoteError("note has no verifiable signature from a known key")
    missing = [r for r in required if r not in verified]
    if missing:
        raise NoteError(f"note lacks a valid signature from required signer(s) {', '.join(missing)}")
    return OpenedNote(text, tuple(verified), tuple(unknown))


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: origin, tree size, RFC 6962/9162 root hash, and
    optional (opaque, non-empty) extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str):
            raise NoteError(f"checkpoint origin must be a str, not {type(self.origin).__name__}")
        _check_line(self.origin, "checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise NoteError(f"checkpoint size must be an int, not {type(self.size).__name__}")
        if not 0 <= self.size <= _MAX_UINT64:
            raise NoteError(f"checkpoint size {self.size} is outside 0..2**64-1")
        if not isinstance(self.root_hash, (bytes, bytearray, memoryview)):
            raise NoteError(f"checkpoint root hash must be bytes, not {type(self.root_hash).__name__}")
        object.__setattr__(self, "root_hash", bytes(self.root_hash))
        if len(self.root_hash) != 32:
            raise NoteError(f"checkpoint root hash is {len(self.root_hash)} bytes, want 32")
        if isinstance(self.extensions, str):
            raise NoteError("checkpoint extensions must be a sequence of lines, not a str")
        exts = tuple(self.extensions)
        for i, e in enumerate(exts, 1):
            if not isinstance(e, str):
                raise NoteError(f"checkpoint extension line {i} must be a str")
            _check_line(e, f"checkpoint extension line {i}")
        object.__setattr__(self, "extensions", exts)

    def to_text(self) -> bytes:
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def parse(cls, text: bytes) -> "Checkpoint":
        if not isinstance(text, (bytes, bytearray, memoryview)):
            raise TypeError(f"checkpoint text must be bytes, not {type(text).__name__}")
        text = bytes(text)
        if len(text) > MAX_NOTE_BYTES:
            raise NoteError("checkpoint text is too large")
        try:
            s = text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("checkpoint text is not valid UTF-8") from None
        if not s.endswith("\n"):
            raise NoteError("checkpoint text does not end with a newline")
        c = _has_control(s, allow_newline=True)
        if c is not None:
            raise NoteError(f"checkpoint text contains control character {c!r}")
        lines = s[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint text has {len(lines)} lines, want at least 3 (origin, size, root)")
        origin, size_s, root_s, *exts = lines
        if not origin:
            raise NoteError("checkpoint origin is empty")
        if not _SIZE.fullmatch(size_s):
            if size_s[:1] == "0" and size_s.isascii() and size_s.isdigit():
                raise NoteError(f"checkpoint size {size_s!r} has a leading zero")
            raise NoteError(f"checkpoint size {size_s!r} is not a canonical decimal integer")
        size = int(size_s)
        if size > _MAX_UINT64:
            raise NoteError(f"checkpoint size {size_s} exceeds 2**64-1")
        root = _b64decode_exact(root_s, "checkpoint root hash")
        if len(root) != 32:
            raise NoteError(f"checkpoint root hash is {len(root)} bytes, want 32")
        for i, e in enumerate(exts, 1):
            if not e:
                raise NoteError(f"checkpoint extension line {i} is empty")
        return cls(origin, size, root, tuple(exts))


def _check_line(s: str, what: str) -> None:
    if not s:
        raise NoteError(f"{what} is empty")
    if "\n" in s:
        raise NoteError(f"{what} contains a newline")
    c = _has_control(s, allow_newline=False)
    if c is not None:
        raise NoteError(f"{what} contains control character {c!r}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid UTF-8 (lone surrogate)") from None


def sign_checkpoint(cp: Checkpoint, signers: Iterable[Signer]) -> bytes:
    """The signed note of a checkpoint's text."""
    if not isinstance(cp, Checkpoint):
        raise TypeError(f"cp must be a Checkpoint, not {type(cp).__name__}")
    return sign_note(cp.to_text(), signers)


def verify_checkpoint(note_bytes: bytes, verifiers: Iterable[Verifier],
                      required_names: Iterable[str],
                      expected_origin: str | None = None) -> Checkpoint:
    """Open a signed checkpoint under a policy: every name in required_names
    must have a valid signature (a known key's invalid signature is always an
    error), the text must be a well-formed checkpoint, and its origin must be
    expected_origin when one is given."""
    if isinstance(required_names, str):
        raise TypeError("required_names must be an iterable of names, not a single str")
    required = tuple(required_names)
    if not required:
        raise NoteError("a checkpoint policy must require at least one signer")
    opened = open_note(note_bytes, verifiers, required=required)
    cp = Checkpoint.parse(opened.text)
    if expected_origin is not None and cp.origin != expected_origin:
        raise NoteError(f"checkpoint origin {cp.origin!r} is not the expected {expected_origin!r}")
    return cp
