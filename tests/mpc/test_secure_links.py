"""The links between MPC members: pinned keys decide who joins, a changed,
dropped or injected byte breaks the link (never a wrong value), and the seeds
both ends derive agree without ever being sent."""
from __future__ import annotations

import base64
import socket
import threading

import pytest
from nacl.signing import SigningKey

from dvsecure.errors import ChannelError, HandshakeError, ParameterError
from dvsecure.log.note import Signer
from dvsecure.mpc.links import establish
from dvsecure.mpc.prg import ChaChaGenerator, derive_seed
from dvsecure.mpc.roster import Roster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signer(i: int) -> Signer:
    return Signer(f"member-{i}", bytes(SigningKey.generate()))


def roster_of(signers, addresses=None) -> Roster:
    addresses = addresses or [f"127.0.0.1:{free_port()}" for _ in signers]
    entries = [{"address": a, "key": base64.b64encode(s.public_key).decode()} for a, s in zip(addresses, signers)]
    return Roster.from_dict({"parties": entries})


def link_up(roster, signers, timeout=20.0, link_timeout=20.0):
    """Every member's links, each member on its own thread; errors by member."""
    out, errors = {}, {}

    def run(i):
        try:
            out[i] = establish(roster, i, signers[i], timeout=timeout, link_timeout=link_timeout)
        except Exception as e:          # noqa: BLE001 - reported to the test
            errors[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(signers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return out, errors


def test_linked_members_exchange_bytes_and_derive_the_same_seeds():
    signers = [signer(i) for i in range(3)]
    links, errors = link_up(roster_of(signers), signers)
    assert not errors
    links[2][0].send(b"hello 0")
    links[0][2].send(b"hello 2")
    assert links[0][2].recv() == b"hello 0" and links[2][0].recv() == b"hello 2"
    # Both ends of a link hold the same secret; different links hold different ones.
    assert links[0][1].secret == links[1][0].secret != links[0][2].secret
    a = ChaChaGenerator(derive_seed(links[0][1].secret, "x 0->1")).words(1000)
    b = ChaChaGenerator(derive_seed(links[1][0].secret, "x 0->1")).words(1000)
    c = ChaChaGenerator(derive_seed(links[1][0].secret, "x 1->0")).words(1000)
    assert (a == b).all() and not (a == c).any()
    for member in links.values():
        for link in member.values():
            link.close()


def test_a_process_without_a_pinned_key_cannot_join():
    signers = [signer(0), signer(1)]
    roster = roster_of(signers)
    impostor = signer(1)                       # claims index 1 with a key nobody pinned
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("0", _try(lambda: establish(roster, 0, signers[0],
                                                                                      timeout=6))))
    t.start()
    with pytest.raises(HandshakeError, match="roster's key"):
        establish(roster, 1, impostor, timeout=5)
    # Even bypassing its own check, the impostor's handshake signature is refused by member 0.
    from dvsecure.mpc import handshake
    sock = connect_when_listening(roster.members[0].host, roster.members[0].port)
    with pytest.raises(HandshakeError):
        handshake.connect(sock, roster.digest(), 1, 0, impostor, signers[0].public_key)
        sock.recv(1)                          # member 0 closes after checking our signature
        raise HandshakeError("closed")
    sock.close()
    t.join(15)
    assert isinstance(out["0"], ChannelError) and "did not join" in str(out["0"])


def connect_when_listening(host: str, port: int, within: float = 10.0) -> socket.socket:
    """Member 0 starts listening on its own thread: retry until it does."""
    import time

    deadline = time.monotonic() + within
    while True:
        try:
            return socket.create_connection((host, port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _try(fn):
    try:
        return fn()
    except Exception as e:          # noqa: BLE001
        return e


class FlipProxy:
    """A TCP relay that flips one byte of the traffic from the connecting side
    after `after` bytes (or drops it, or copies a stretch twice)."""

    def __init__(self, target_port: int, after: int, mode: str = "flip"):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.after, self.mode = target_port, after, mode
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()
        self._pipe(client, server, self.after)

    def _pipe(self, src, dst, after):
        seen = 0
        while True:
            try:
                data = bytearray(src.recv(65536))
            except OSError:
                return
            if not data:
                dst.close()
                return
            if after is not None and seen <= after < seen + len(data):
                k = after - seen
                if self.mode == "flip":
                    data[k] ^= 0x01
                elif self.mode == "drop":
                    del data[k]
                else:                                   # inject: repeat what came before
                    data[k:k] = data[:k]
            seen += len(data)
            dst.sendall(data)


@pytest.mark.parametrize("mode", ["flip", "drop", "inject"])
def test_a_changed_dropped_or_injected_byte_breaks_the_link(mode):
    signers = [signer(0), signer(1)]
    port0 = free_port()
    # Member 1 reaches member 0 through the proxy; the handshake is 82 + 64 bytes from member 1,
    # so byte 200 falls inside the first frames of data.
    proxy = FlipProxy(port0, after=200, mode=mode)
    roster = Roster.from_dict({"parties": [
        {"address": f"127.0.0.1:{proxy.port}", "listen": f"127.0.0.1:{port0}",
         "key": base64.b64encode(signers[0].public_key).decode()},
        {"address": f"127.0.0.1:{free_port()}", "key": base64.b64encode(signers[1].public_key).decode()}]})
    links, errors = link_up(roster, signers, link_timeout=3)
    assert not errors
    for i in range(4):
        links[1][0].send(bytes([i]) * 100)
    got = []
    with pytest.raises(ChannelError, match="does not authenticate|link timeout|out of range"):
        for _ in range(4):
            got.append(links[0][1].recv())
    # What arrived before the damage is intact; nothing damaged is ever delivered.
    assert all(g == bytes([i]) * 100 for i, g in enumerate(got))
    with pytest.raises(ChannelError):          # the link stays broken
        links[0][1].recv()


def test_a_roster_names_what_is_wrong():
    good = base64.b64encode(b"k" * 32).decode()
    for bad, match in [({"parties": [{"address": "h:1", "key": good}]}, "at least 2"),
                       ({"parties": [{"address": "nohost", "key": good}] * 2}, r"parties\[0\]\.address"),
                       ({"parties": [{"address": "h:1", "key": "short"}, {"address": "h:2", "key": good}]},
                        r"parties\[0\]\.key"),
                       ({"parties": [{"address": "h:1", "key": good}] * 2}, "named twice"),
                       ({"parties": [], "extra": 1}, "unknown keys")]:
        with pytest.raises(ParameterError, match=match):
            Roster.from_dict(bad)
    keys = [base64.b64encode(bytes([i]) * 32).decode() for i in range(2)]
    here = Roster.from_dict({"parties": [{"address": f"127.0.0.1:{i + 1}", "key": k} for i, k in enumerate(keys)]})
    there = Roster.from_dict({"parties": [{"address": f"10.0.0.{i}:7", "key": k} for i, k in enumerate(keys)]})
    assert here.digest() == there.digest() and here.loopback_only() and not there.loopback_only()


def test_crypten_draws_only_from_chacha_generators():
    from dvsecure.mpc.compat import _ring_sampler, import_crypten

    crypten = import_crypten()
    ring, kbit = _ring_sampler(crypten)
    import torch
    g1, g2 = ChaChaGenerator(b"s" * 32), ChaChaGenerator(b"s" * 32)
    assert torch.equal(ring((3, 4), generator=g1), ring(torch.Size([3, 4]), generator=g2))
    bits = kbit((1000,), bitlength=1, generator=g1)
    assert set(bits.tolist()) == {0, 1}
    with pytest.raises(RuntimeError, match="non-cryptographic"):
        ring((2,), generator=torch.Generator())


@pytest.mark.parametrize("rendezvous", ["tcp://10.1.2.3:29500", "tcp://example.org:29500", "env://", "nfs://x"])
def test_plain_gloo_beyond_this_machine_is_refused_with_the_reason(tmp_path, rendezvous):
    from dvsecure.mpc.party import run_party

    with pytest.raises(ParameterError, match="refusing plain gloo beyond this machine: .* seeds .* roster"):
        run_party(1, 3, "TTP", str(tmp_path), rendezvous=rendezvous)


class Recording:
    """A socket that remembers what this end sent."""

    def __init__(self, sock):
        self.sock, self.sent = sock, bytearray()

    def sendall(self, data):
        self.sent += data
        self.sock.sendall(data)

    def recv(self, n):
        return self.sock.recv(n)


def test_a_recorded_handshake_cannot_be_replayed_and_keys_are_directional():
    from dvsecure.mpc import handshake

    signers = [signer(0), signer(1)]
    digest, pinned = b"d" * 32, {1: signers[1].public_key}
    a, c = socket.socketpair()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("a", handshake.accept(a, digest, 0, signers[0], pinned, {1})))
    t.start()
    recorded = Recording(c)
    keys_c = handshake.connect(recorded, digest, 1, 0, signers[1], signers[0].public_key)
    t.join(10)
    keys_a = out["a"]
    # Each direction has its own key: a frame reflected back to its sender does not open.
    assert keys_c.send == keys_a.recv and keys_c.recv == keys_a.send and keys_c.send != keys_c.recv
    assert keys_c.secret == keys_a.secret
    # Replaying member 1's recorded bytes (hello and confirmation) in a new session: the
    # acceptor's fresh ephemeral key makes the recorded confirmation worthless.
    a2, c2 = socket.socketpair()
    c2.sendall(bytes(recorded.sent))
    with pytest.raises(HandshakeError, match="did not sign with its pinned key"):
        handshake.accept(a2, digest, 0, signers[0], pinned, {1})
    for s in (a, c, a2, c2):
        s.close()


def test_a_frame_reflected_to_its_sender_breaks_the_link():
    from dvsecure.mpc.handshake import LinkKeys
    from dvsecure.mpc.links import Link

    k1, k2 = b"1" * 32, b"2" * 32
    with socket.create_server(("127.0.0.1", 0)) as server:
        y = socket.create_connection(server.getsockname())
        x, _ = server.accept()
    # The attacker bounces x's own frames back to x: modelled by a peer sending with x's send key.
    mirror = Link(y, LinkKeys(send=k1, recv=k2, secret=b"s" * 32, peer=0), timeout=5)
    victim = Link(x, LinkKeys(send=k1, recv=k2, secret=b"s" * 32, peer=1), timeout=5)
    mirror.send(b"a frame x itself sent")
    with pytest.raises(ChannelError, match="does not authenticate"):
        victim.recv()
    mirror.close()
    victim.close()


class EarlyAcceptor:
    """A NAT or proxy in front of member 0: it accepts at once, and hangs up while
    member 0 is not listening yet (then relays)."""

    def __init__(self, target_port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.target, self.hangups = self.listener.getsockname()[1], target_port, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                self.hangups += 1
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                dst.close()
                return
            dst.sendall(data)


def test_a_proxy_that_accepts_before_the_member_listens_only_delays_the_link():
    import time

    signers = [signer(0), signer(1)]
    port0 = free_port()
    proxy = EarlyAcceptor(port0)
    roster = Roster.from_dict({"parties": [
        {"address": f"127.0.0.1:{proxy.port}", "listen": f"127.0.0.1:{port0}",
         "key": base64.b64encode(signers[0].public_key).decode()},
        {"address": f"127.0.0.1:{free_port()}", "key": base64.b64encode(signers[1].public_key).decode()}]})
    out = {}
    late = threading.Thread(target=lambda: (time.sleep(1.5), out.setdefault(0, establish(roster, 0, signers[0],
                                                                                          timeout=20))))
    late.start()
    links = establish(roster, 1, signers[1], timeout=20)      # connects first: hung up on until member 0 listens
    late.join(25)
    assert proxy.hangups > 0
    links[0].send(b"through the proxy")
    assert out[0][1].recv() == b"through the proxy"
    links[0].close()
    out[0][1].close()
