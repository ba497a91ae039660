"""Who takes part in an MPC run and where each listens: the roster.

A JSON file every member holds the same copy of:

    {"parties": [{"address": "10.0.0.1:7100", "key": "<base64 Ed25519>"}, ...],
     "dealer":  {"address": "10.0.0.9:7100", "key": "<base64 Ed25519>"}}

Index i < n is computing party i; index n is the TTP dealer. Each member
listens on its one port (`listen`, default `address`: firewall-friendly) and
connects to every member of lower index. `key` is the member's cosigning key
(the dealer's own key for the dealer), the same the policy's [signers] names,
so the roster pins nothing the consortium did not already agree to
(`check_policy`). The digest binds every handshake to this exact membership.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError


@dataclass(frozen=True)
class Member:
    index: int
    name: str                 # "party 2", "dealer"
    host: str
    port: int
    key: bytes                # raw Ed25519 public key
    listen_host: str
    listen_port: int

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode()


def _address(where: str, value) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ParameterError(f"roster: {where} must be 'HOST:PORT', got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ParameterError(f"roster: {where} must be 'HOST:PORT' with a port in 0..65535, got {value!r}")
    return host, int(port)


def _key(where: str, value) -> bytes:
    from ..policy import ed25519_public_key

    raw = ed25519_public_key(value)
    if raw is None:
        raise ParameterError(f"roster: {where} must be a base64 Ed25519 public key (32 bytes), got {value!r}")
    return raw


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Roster:
    members: tuple[Member, ...]
    num_parties: int

    @property
    def dealer(self) -> Member | None:
        return self.members[self.num_parties] if len(self.members) > self.num_parties else None

    def digest(self) -> bytes:
        """SHA-256 over who the members are (index and key), not where they are:
        addresses are routing, and a member behind a proxy or NAT keeps its digest."""
        who = [[m.index, m.name, m.key_b64] for m in self.members]
        return hashlib.sha256(b"dvsecure roster v1\0" + json.dumps(who).encode()).digest()

    def loopback_only(self) -> bool:
        return all(is_loopback(m.host) and is_loopback(m.listen_host) for m in self.members)

    def to_dict(self) -> dict:
        def entry(m: Member) -> dict:
            d = {"address": f"{m.host}:{m.port}", "key": m.key_b64}
            if (m.listen_host, m.listen_port) != (m.host, m.port):
                d["listen"] = f"{m.listen_host}:{m.listen_port}"
            return d
        d = {"parties": [entry(m) for m in self.members[:self.num_parties]]}
        if self.dealer is not None:
            d["dealer"] = entry(self.dealer)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d) -> "Roster":
        if not isinstance(d, dict):
            raise ParameterError("roster: must be a JSON object with 'parties' (and 'dealer')")
        unknown = set(d) - {"parties", "dealer"}
        if unknown:
            raise ParameterError(f"roster: unknown keys {sorted(unknown)}")
        parties = d.get("parties")
        if not isinstance(parties, list) or len(parties) < 2:
            raise ParameterError("roster: 'parties' must list at least 2 computing parties")
        entries = [(f"parties[{i}]", f"party {i}", e) for i, e in enumerate(parties)]
        if d.get("dealer") is not None:
            entries.append(("dealer", "dealer", d["dealer"]))
        members = []
        for index, (where, name, e) in enumerate(entries):
            if not isinstance(e, dict):
                raise ParameterError(f"roster: {where} must be an object with 'address' and 'key'")
            extra = set(e) - {"address", "key", "listen"}
            if extra or "address" not in e or "key" not in e:
                raise ParameterError(f"roster: {where} needs 'address' and 'key' (and optional 'listen'); "
                                     f"got keys {sorted(e)}")
            host, port = _address(f"{where}.address", e["address"])
            lhost, lport = _address(f"{where}.listen", e["listen"]) if "listen" in e else (host, port)
            members.append(Member(index, name, host, port, _key(f"{where}.key", e["key"]), lhost, lport))
        keys = [m.key for m in members]
        if len(set(keys)) != len(keys):
            raise ParameterError("roster: a key is named twice (every member needs its own key)")
        return cls(tuple(members), len(parties))

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ParameterError(f"cannot read the roster {path}: {e.strerror or e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(f"{path}: not JSON (line {e.lineno}: {e.msg})") from None
        try:
            return cls.from_dict(d)
        except ParameterError as e:
            raise ParameterError(f"{path}: {e}") from None

    def check_policy(self, policy) -> None:
        """Refuse a roster whose keys are not the ones the policy's [signers] pins."""
        signers = policy.signers
        if signers is None or not signers.parties:
            return
        named = list(signers.parties)
        mine = [m.key_b64 for m in self.members[:self.num_parties]]
        if named != mine:
            raise ParameterError(f"roster: the parties' keys {mine} are not the policy's signers.parties {named}")
        if signers.dealer is not None and (self.dealer is None or self.dealer.key_b64 != signers.dealer):
            raise ParameterError(f"roster: the dealer's key is not the policy's signers.dealer ({signers.dealer})")
