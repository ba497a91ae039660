"""The key agreement that opens every link between two members of an MPC run
(computing parties and the dealer): ephemeral X25519 (PyNaCl) signed by each
side's pinned Ed25519 key, keys from HKDF-SHA256 (`cryptography`).

    connector -> acceptor   HELLO  magic | roster digest | from | to | eph_c
    acceptor  -> connector  eph_a | sig_a(transcript, "accept")
    connector -> acceptor   sig_c(transcript, "connect")

transcript = SHA-256(context | roster digest | from | to | eph_c | eph_a). Each
side checks the other's signature against the key the roster pins for the
index it claims, so a process without a pinned key cannot join, and a man in
the middle cannot substitute its own ephemeral key. Both ephemerals are fresh,
so a recorded handshake cannot be replayed. The signing key is the member's
checkpoint cosigning key; the signed bytes begin with a NUL-separated binary
context no note text can contain, so a handshake signature is never a valid
cosignature (and the reverse).

Output: two directional AEAD keys and a link secret from which both ends
derive their shared PRG seeds (`prg.derive_seed`): nothing secret crosses the
wire, in the clear or otherwise.
"""
from __future__ import annotations

import hashlib
import hmac
import socket
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import VerifyKey

from ..errors import HandshakeError

MAGIC = b"dvsecure-link-1\n"
CONTEXT = b"dvsecure mpc link handshake v1\0"
HELLO_LEN = len(MAGIC) + 32 + 1 + 1 + 32
ACCEPT_LEN = 32 + 64
CONFIRM_LEN = 64


@dataclass(frozen=True)
class LinkKeys:
    send: bytes          # AEAD key for what this end sends
    recv: bytes          # AEAD key for what it receives
    secret: bytes        # the link's shared secret, for seeds (same at both ends)
    peer: int            # the other end's index


class PeerClosed(HandshakeError):
    """The other end hung up mid-handshake: not yet listening behind a proxy or NAT
    that accepted for it, or refusing us (it logs why). The connector retries."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PeerClosed("the peer closed the connection during the handshake")
        buf += chunk
    return bytes(buf)


def _transcript(digest: bytes, frm: int, to: int, eph_c: bytes, eph_a: bytes) -> bytes:
    return hashlib.sha256(CONTEXT + digest + bytes([frm, to]) + eph_c + eph_a).digest()


def _signed(transcript: bytes, role: bytes) -> bytes:
    return CONTEXT + role + b"\0" + transcript


def _derive(shared: bytes, transcript: bytes, connector: bool, peer: int) -> LinkKeys:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if not any(shared):          # a low-order point: refuse rather than use a known key
        raise HandshakeError("the peer's ephemeral key is degenerate")
    okm = HKDF(hashes.SHA256(), 96, salt=transcript, info=b"dvsecure mpc link keys v1").derive(shared)
    c2a, a2c, secret = okm[:32], okm[32:64], okm[64:]
    return LinkKeys(c2a if connector else a2c, a2c if connector else c2a, secret, peer)


def _verify(key: bytes, message: bytes, signature: bytes, who: str) -> None:
    try:
        VerifyKey(key).verify(message, signature)
    except BadSignatureError:
        raise HandshakeError(f"{who} did not sign with its pinned key") from None


def connect(sock: socket.socket, digest: bytes, me: int, peer: int, signer, pinned: bytes) -> LinkKeys:
    """The connecting end: `signer` is this member's Ed25519 `log.note.Signer`,
    `pinned` the peer's raw Ed25519 public key from the roster."""
    eph = PrivateKey.generate()
    eph_c = bytes(eph.public_key)
    sock.sendall(MAGIC + digest + bytes([me, peer]) + eph_c)
    reply = _recv_exact(sock, ACCEPT_LEN)
    eph_a, sig_a = reply[:32], reply[32:]
    t = _transcript(digest, me, peer, eph_c, eph_a)
    _verify(pinned, _signed(t, b"accept"), sig_a, f"member {peer}")
    sock.sendall(signer.sign(_signed(t, b"connect")))
    return _derive(crypto_scalarmult(bytes(eph), eph_a), t, True, peer)


def accept(sock: socket.socket, digest: bytes, me: int, signer, pinned_keys: dict[int, bytes],
           allowed: set[int]) -> LinkKeys:
    """The listening end: refuses a hello for another run (digest), another member
    (`to`), an index it does not expect (`allowed`), or a key that is not pinned."""
    hello = _recv_exact(sock, HELLO_LEN)
    if not hmac.compare_digest(hello[:len(MAGIC)], MAGIC):
        raise HandshakeError("not a dvsecure link (bad magic)")
    at = len(MAGIC)
    their_digest, frm, to, eph_c = hello[at:at + 32], hello[at + 32], hello[at + 33], hello[at + 34:]
    if not hmac.compare_digest(their_digest, digest):
        raise HandshakeError("the peer runs under another roster (its digest differs from ours)")
    if to != me:
        raise HandshakeError(f"the peer wants member {to}, this is member {me}")
    if frm not in allowed:
        raise HandshakeError(f"no link from member {frm} is expected here")
    eph = PrivateKey.generate()
    eph_a = bytes(eph.public_key)
    t = _transcript(digest, frm, me, eph_c, eph_a)
    sock.sendall(eph_a + signer.sign(_signed(t, b"accept")))
    _verify(pinned_keys[frm], _signed(t, b"connect"), _recv_exact(sock, CONFIRM_LEN), f"member {frm}")
    return _derive(crypto_scalarmult(bytes(eph), eph_c), t, False, frm)
