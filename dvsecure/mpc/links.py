"""Authenticated, confidential links between the members of an MPC run.

Every member listens on its one roster port and opens a link to each member of
lower index; each link starts with the signed key agreement of `handshake.py`.
A frame on a link is

    length (4 bytes, big-endian) | ChaCha20-Poly1305(key, nonce = frame counter, data, aad = length)

from `cryptography`. The counter is implicit and strictly sequential, so a
changed, dropped, reordered, replayed or injected frame fails its tag; the
receiver then marks the link broken and every later receive on it raises
ChannelError: the batch fails closed. A byte dropped inside the last frame of
an exchange cannot be told from a slow peer, so a receive also fails after
`timeout` seconds of silence.

One thread per link reads and authenticates frames into a queue, so two
members that send to each other at once never deadlock on full socket buffers.
"""
from __future__ import annotations

import queue
import socket
import struct
import sys
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import ChannelError, HandshakeError
from . import handshake

MAX_FRAME = (1 << 30) + 16
HANDSHAKE_TIMEOUT = 20.0
_BROKEN = object()


class Link:
    """One end of an established link to member `peer`."""

    def __init__(self, sock: socket.socket, keys: handshake.LinkKeys, timeout: float):
        self.peer, self.secret, self.timeout = keys.peer, keys.secret, timeout
        self._sock = sock
        self._send_aead, self._recv_aead = ChaCha20Poly1305(keys.send), ChaCha20Poly1305(keys.recv)
        self._sent_frames = 0
        self.bytes_sent = 0
        self._inbox: queue.Queue = queue.Queue()
        self._error: str | None = None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"link-{keys.peer}")
        self._reader.start()

    def send(self, data: bytes) -> None:
        if self._error is not None:
            raise ChannelError(f"link to member {self.peer} is broken: {self._error}")
        header = struct.pack(">I", len(data) + 16)
        nonce = self._sent_frames.to_bytes(12, "little")
        self._sent_frames += 1
        frame = header + self._send_aead.encrypt(nonce, data, header)
        try:
            self._sock.sendall(frame)
        except OSError as e:
            self._error = f"send failed: {e}"
            raise ChannelError(f"link to member {self.peer}: {self._error}") from None
        self.bytes_sent += len(frame)

    def recv(self) -> bytes:
        try:
            item = self._inbox.get(timeout=self.timeout)
        except queue.Empty:
            raise ChannelError(f"member {self.peer} sent nothing for {self.timeout:.0f} s (link timeout)") from None
        if item is _BROKEN:
            self._inbox.put(_BROKEN)             # every later receive fails too
            raise ChannelError(f"link to member {self.peer} is broken: {self._error}")
        return item

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if not k:
                raise EOFError
            got += k
        return bytes(buf)

    def _read_loop(self) -> None:
        counter = 0
        try:
            while True:
                header = self._read_exact(4)
                (length,) = struct.unpack(">I", header)
                if not 16 <= length <= MAX_FRAME:
                    raise ChannelError(f"frame length {length} out of range")
                body = self._read_exact(length)
                data = self._recv_aead.decrypt(counter.to_bytes(12, "little"), body, header)
                counter += 1
                self._inbox.put(data)
        except InvalidTag:
            self._error = f"frame {counter} does not authenticate (changed, dropped or injected bytes)"
        except EOFError:
            self._error = "the peer closed the connection"
        except (OSError, ChannelError) as e:
            self._error = str(e)
        self._inbox.put(_BROKEN)

    def close(self) -> None:
        if self._error is None:
            self._error = "closed"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _log(msg: str) -> None:
    print(f"dvsecure link: {msg}", file=sys.stderr, flush=True)


def establish(roster, me: int, signer, timeout: float = 300.0, link_timeout: float = 300.0) -> dict[int, Link]:
    """This member's links to every other roster member, in `timeout` seconds:
    accept from higher indices on our roster port, connect to lower ones.
    A connection that fails its handshake (unpinned key, another roster,
    an index already linked) is refused and logged; we keep waiting for the
    genuine member."""
    digest = roster.digest()
    mine = roster.members[me]
    pinned = {m.index: m.key for m in roster.members}
    if mine.key != signer.public_key:
        raise HandshakeError(f"this process's key is not the roster's key for {mine.name}")
    deadline = time.monotonic() + timeout
    links: dict[int, Link] = {}
    lock = threading.Lock()
    expected_in = {m.index for m in roster.members if m.index > me}
    listener = None
    if expected_in:
        family = socket.AF_INET6 if ":" in mine.listen_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((mine.listen_host, mine.listen_port))
        except OSError as e:
            listener.close()
            raise ChannelError(f"{mine.name} cannot listen on {mine.listen_host}:{mine.listen_port}: {e}") from None
        listener.listen(16)
        listener.settimeout(0.2)

    def accept_loop():
        while True:
            with lock:
                if expected_in <= set(links) or time.monotonic() > deadline:
                    return
            try:
                conn, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(HANDSHAKE_TIMEOUT)
            try:
                with lock:
                    allowed = expected_in - set(links)
                keys = handshake.accept(conn, digest, me, signer, pinned, allowed)
            except (HandshakeError, OSError) as e:
                _log(f"{mine.name} refused a connection from {addr[0]}: {e}")
                conn.close()
                continue
            with lock:
                links[keys.peer] = Link(conn, keys, link_timeout)

    acceptor = threading.Thread(target=accept_loop, daemon=True) if listener else None
    if acceptor:
        acceptor.start()
    try:
        for peer in sorted(m.index for m in roster.members if m.index < me):
            target = roster.members[peer]
            last = "no answer"
            while True:
                if time.monotonic() > deadline:
                    raise ChannelError(f"{mine.name} could not reach {target.name} at "
                                       f"{target.host}:{target.port} within {timeout:.0f} s (last: {last})")
                try:
                    sock = socket.create_connection((target.host, target.port), timeout=HANDSHAKE_TIMEOUT)
                except OSError as e:
                    last = str(e)
                    time.sleep(0.1)
                    continue
                try:
                    keys = handshake.connect(sock, digest, me, peer, signer, target.key)
                except handshake.PeerClosed as e:    # not listening yet behind a proxy, or refusing us: retry
                    last = str(e)
                    sock.close()
                    time.sleep(0.1)
                    continue
                except HandshakeError as e:
                    sock.close()
                    raise HandshakeError(f"{target.name} at {target.host}:{target.port}: {e}") from None
                except OSError:                      # refused mid-handshake (e.g. not ready): retry
                    sock.close()
                    time.sleep(0.1)
                    continue
                with lock:
                    links[peer] = Link(sock, keys, link_timeout)
                break
        if acceptor:
            acceptor.join(max(0.0, deadline - time.monotonic()) + 1)
            missing = sorted(expected_in - set(links))
            if missing:
                names = ", ".join(roster.members[i].name for i in missing)
                raise ChannelError(f"{mine.name}: {names} did not join within {timeout:.0f} s")
    except BaseException:
        for link in links.values():
            link.close()
        raise
    finally:
        if listener is not None:
            listener.close()
    return links
