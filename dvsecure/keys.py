"""Each role's own keys, made on its own host (`dvsecure keys new`).

A role makes its private key locally and publishes only what the others pin:

    role      private file (mode 0600)   what others pin (its public file, ROLE.pub.json)
    source    source.key                 its Ed25519 submission key (the principals file)
    party     party-<rank>.key           its cosigning key (the policy's [signers] parties,
                                          the roster); its X25519 box key travels signed
    dealer    dealer.key                 its link key (the policy's [signers] dealer, the roster)
    operator  operator.key               its checkpoint key (the policy's [signers] operator)

The files are the very ones the running roles use: a party's is found by
`dvsecure party --state DIR --rank I`, the dealer's by `dvsecure party --dealer
--state DIR`, the operator's by the log writer's `operator_signer(DIR)`. They are
made by those roles' own code (`mpc.party`, `log.writer`); the source's, which
nothing made before, here. A key file is never overwritten: `new_keys` refuses a
directory that already holds one.

The public file holds exactly what `dvsecure keys new --json` prints; `read_public`
takes it back (or the bare base64 key) where a key is pinned, and checks that it
is the role, the id and the rank expected, so a key cannot be pinned in the wrong
place by mistake.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ParameterError

SOURCE, PARTY, DEALER, OPERATOR = "source", "party", "dealer", "operator"
ROLES = (SOURCE, PARTY, DEALER, OPERATOR)
SOURCE_KEY = "source.key"
PUBLIC_SUFFIX = ".pub.json"
MAX_PUBLIC_FILE = 4 << 10


def _check_id(ident: object) -> str:
    # The same rule as a policy's source ids: what a source names itself is its policy id.
    if not isinstance(ident, str) or not ident or not ident.isprintable() or len(ident) > 128 \
            or ident != ident.strip():
        raise ParameterError(f"--id must be a non-empty printable name of at most 128 characters without "
                             f"surrounding spaces, got {ident!r}")
    return ident


def private_file(role: str, out: Path, rank: int | None = None) -> Path:
    """Where a role keeps its private key in its state directory `out`."""
    from .log.writer import OPERATOR_KEY

    if role == PARTY:
        if rank is None:
            raise ParameterError("a party's key belongs to its rank: give --rank")
        return Path(out) / f"party-{rank}.key"
    names = {SOURCE: SOURCE_KEY, DEALER: "dealer.key", OPERATOR: OPERATOR_KEY}
    if role not in names:
        raise ParameterError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    return Path(out) / names[role]


def public_file(private: Path) -> Path:
    """The public file beside a private key file: party-1.key -> party-1.pub.json."""
    return private.with_name(private.name.removesuffix(".key") + PUBLIC_SUFFIX)


@dataclass(frozen=True)
class PublicKeys:
    """What a role publishes: its role, its id, its base64 Ed25519 public key (what
    the policy, the roster or the principals file pin), and for a party its rank;
    for a party and the operator also the verifier key string `dvsecure audit
    --trust-key` takes."""

    role: str
    id: str
    key: str
    rank: int | None = None
    verifier_key: str | None = None

    def to_dict(self) -> dict:
        d: dict = {"role": self.role, "id": self.id}
        if self.rank is not None:
            d["rank"] = self.rank
        d["key"] = self.key
        if self.verifier_key is not None:
            d["verifier_key"] = self.verifier_key
        return d


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def new_keys(role: str, ident: str, out: Path, rank: int | None = None) -> PublicKeys:
    """Make `role`'s keys in directory `out` (created mode 0700 if absent): its private
    key file (0600) and its public file. Refuses, naming the file, if either exists."""
    ident = _check_id(ident)
    if role != PARTY and rank is not None:
        raise ParameterError(f"--rank is for a party's key; a {role} has none")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise ParameterError(f"--rank must be an integer >= 0, got {rank!r}")
    out = Path(out)
    private = private_file(role, out, rank)
    public = public_file(private)
    for path in (private, public):
        if os.path.lexists(path):
            raise ParameterError(f"{path} already exists: keys are never overwritten (a pinned key would no "
                                 "longer match); keep it, or move it away knowingly and make new ones")
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out {out} is not a directory")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    if role == SOURCE:
        from nacl.signing import SigningKey

        signing = SigningKey.generate()
        _write_new(private, json.dumps({"id": ident, "signing_key": _b64(bytes(signing))}) + "\n",
                   stat.S_IRUSR | stat.S_IWUSR)
        keys = PublicKeys(SOURCE, ident, _b64(bytes(signing.verify_key)))
    elif role == PARTY:
        from .mpc.party import load_or_create_keys

        _, signer = load_or_create_keys(out, rank)
        keys = PublicKeys(PARTY, ident, _b64(signer.public_key), rank=rank, verifier_key=signer.verifier_key_string)
    elif role == DEALER:
        from .mpc.party import load_or_create_dealer_key

        keys = PublicKeys(DEALER, ident, _b64(load_or_create_dealer_key(out).public_key))
    else:
        from .log.writer import operator_signer

        signer = operator_signer(out, name=ident)
        keys = PublicKeys(OPERATOR, ident, _b64(signer.public_key), verifier_key=signer.verifier_key_string)
    _write_new(public, json.dumps(keys.to_dict(), indent=1) + "\n", 0o644)
    return keys


def load_source_key(path: Path):
    """A source's id and Ed25519 signing key, from its key directory or its source.key."""
    from nacl.signing import SigningKey

    path = Path(path)
    if path.is_dir():
        path = path / SOURCE_KEY
    try:
        data = json.loads(path.read_text())
        ident, seed = _check_id(data["id"]), base64.b64decode(data["signing_key"], validate=True)
        if set(data) != {"id", "signing_key"} or len(seed) != 32:
            raise ValueError("expected id and a 32-byte signing_key")
    except OSError as e:
        raise ParameterError(f"cannot read source key {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, binascii.Error, ParameterError) as e:
        raise ParameterError(f"{path} is not a source key file (made by dvsecure keys new --role source): "
                             f"{e}") from None
    return ident, SigningKey(seed)


def _key_b64(text: object, where: str) -> str:
    from .policy import ed25519_public_key

    raw = ed25519_public_key(text)
    if raw is None:
        raise ParameterError(f"{where}: not a base64 Ed25519 public key (32 bytes): {text!r}")
    return _b64(raw)


def _key_or_missing_file(text: str, flag: str) -> str:
    try:
        return _key_b64(text, flag)
    except ParameterError:
        raise ParameterError(f"{flag} {text!r}: neither a base64 Ed25519 public key (32 bytes) nor an existing "
                             "public key file") from None


def _a(role: object) -> str:
    return f"an {role}" if str(role)[:1] in "aeiou" else f"a {role}"


def read_public(text: str, flag: str, role: str, *, ident: str | None = None, rank: int | None = None) -> str:
    """The base64 public key `flag` names: the key itself, or a public file made by
    `dvsecure keys new` (ROLE.pub.json) whose role, and id or rank when given, must
    be the ones expected."""
    path = Path(text)
    if not (text.endswith(PUBLIC_SUFFIX) or os.path.lexists(path)):
        return _key_or_missing_file(text, flag)
    from .log.files import Kind, PublishedFileError, read_named

    if not path.exists():
        raise ParameterError(f"{flag} {path}: no such public key file (the ROLE.pub.json dvsecure keys new "
                             "writes, or the base64 key itself)")
    try:
        data = json.loads(read_named(path, Kind("a public key file", MAX_PUBLIC_FILE), follow_links=True))
    except PublishedFileError as e:
        raise ParameterError(f"{flag}: cannot read {e}") from None
    except (UnicodeDecodeError, ValueError):
        raise ParameterError(f"{flag} {path}: not a public key file (the JSON dvsecure keys new writes)") from None
    if not isinstance(data, dict) or not set(data) <= {"role", "id", "rank", "key", "verifier_key"} \
            or "key" not in data:
        raise ParameterError(f"{flag} {path}: not a public key file (the JSON dvsecure keys new writes)")
    if data.get("role") != role:
        raise ParameterError(f"{flag} {path}: this is {_a(data.get('role'))}'s key, not {_a(role)}'s")
    if ident is not None and data.get("id") != ident:
        raise ParameterError(f"{flag} {path}: this key is {data.get('id')}'s, not {ident}'s")
    if rank is not None and data.get("rank") != rank:
        raise ParameterError(f"{flag} {path}: this is party {data.get('rank')}'s key; the next party is "
                             f"rank {rank} (parties are added in rank order)")
    return _key_b64(data["key"], f"{flag} {path}: key")
