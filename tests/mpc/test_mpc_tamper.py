"""An active attacker on the links between MPC members, end to end through the
real party processes: a relay in front of a member's port that changes, drops,
injects or replays one frame of a batch between two parties, or between party 0
and the dealer, fails the batch closed — a ChannelError naming the broken link,
nothing released or logged, and each party's own ledger keeps what the batch may
have cost (the worst case, every query answered, once the reservation was made;
what a release would have charged once the refused queries were settled).
Parties restarted on their state, with a roster that has no relay, run the next
batch, and the log cosigned across the restart audits clean. A process that
claims a party's index with a key nobody pinned is refused.

The relay is frame-aware (each frame is `length | ciphertext`, links.py), so a
tamper is aimed at a phase of the batch, not a byte offset: every party-to-party
agreement (`Peers.agree`, an empty frame) marks one, and the third of a batch
follows the parties' durable worst-case reservation (party_ledger.py).
"""
from __future__ import annotations

import base64
import json
import re
import socket
import sqlite3
import struct
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from dvsecure.accounting.charges import query_charges
from dvsecure.audit.check import audit
from dvsecure.backends.mpc import MPCBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import HandshakeError
from dvsecure.log.writer import LogWriter, name_signers, operator_signer
from dvsecure.mpc import handshake
from dvsecure.mpc.parties import PartyError, member_state
from dvsecure.mpc.party import member_signer
from dvsecure.mpc.party_ledger import PartyLedger
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

pytestmark = pytest.mark.slow

N = 3                                  # computing parties; member N is the TTP dealer
EMPTY = 16                             # a frame with no data: its tag alone (an agreement, `Peers.agree`)
# Confident-GNMax without noise: consensus queries (tally 0.5) pass the 0.4 threshold, split
# ones (0.25) are refused, so the worst case (every query answered) is more than a release costs.
POLICY = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 50.0))
                                        for i in range(2)),
                          mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.4),
                          name="tamper")


def items(tag: str) -> list:
    return [(f"{tag}-{i}", {"src0": i % 2, "src1": 0}) for i in range(4)]


LABELS = [0, None, 0, None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TamperRelay:
    """A TCP relay in front of one member's listening port. It forwards every
    connection (learning the connecting member from the handshake's HELLO) frame
    by frame, counting each direction's frames since `arm`; an armed rule damages
    one frame once: flip a bit of it, drop it, inject a forged frame before it,
    or send it twice (a replay)."""

    def __init__(self, target_port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.lock = threading.Lock()
        self.frames: dict[tuple[int, str], int] = {}      # (connecting member, "up" | "down") -> frames
        self.empties: dict[tuple[int, str], int] = {}
        self.rule = None
        self.trace = []
        self.fired: str | None = None
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, target: tuple[int, str], mode: str, after_empties: int, nth: int = 1, watch=None) -> None:
        """Damage the `nth` frame on `target` that follows the `after_empties`-th empty
        frame on `watch` (default `target`), counting from now."""
        with self.lock:
            self.frames, self.empties, self.fired, self.trace = {}, {}, None, []
            self.rule = {"target": target, "mode": mode, "after": after_empties, "nth": nth,
                         "watch": watch or target, "seen": 0}

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        deadline = time.monotonic() + 120
        while True:                     # the member behind us may not listen yet: hold the client until it does
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
                break
            except OSError:
                if time.monotonic() > deadline:
                    client.close()
                    return
                time.sleep(0.05)
        self._socks += [client, server]
        hello = _read(client, handshake.HELLO_LEN)
        if hello is None:
            client.close()
            server.close()
            return
        member = hello[len(handshake.MAGIC) + 32]
        server.sendall(hello)
        threading.Thread(target=self._pipe, args=(server, client, (member, "down"), handshake.ACCEPT_LEN),
                         daemon=True).start()
        self._pipe(client, server, (member, "up"), handshake.CONFIRM_LEN)

    def _pipe(self, src, dst, key, handshake_bytes: int) -> None:
        try:
            rest = _read(src, handshake_bytes)
            if rest is None:
                return
            dst.sendall(rest)
            while True:
                header = _read(src, 4)
                if header is None:
                    return
                body = _read(src, struct.unpack(">I", header)[0])
                if body is None:
                    return
                dst.sendall(self._maybe_tamper(key, header + body))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _maybe_tamper(self, key, frame: bytes) -> bytes:
        with self.lock:
            rule = self.rule
            if rule is not None and rule["mode"] and not self.fired and key == rule["target"] and \
                    self.empties.get(rule["watch"], 0) >= rule["after"]:
                rule["seen"] += 1
                if rule["seen"] == rule["nth"]:
                    self.fired = f"{rule['mode']} frame {self.frames.get(key, 0)} from {key}"
                    frame = damage(frame, rule["mode"])
            self.frames[key] = self.frames.get(key, 0) + 1
            self.trace.append((key, len(frame) - 4 - EMPTY, bool(self.fired)))
            if len(frame) == 4 + EMPTY:
                self.empties[key] = self.empties.get(key, 0) + 1
            return frame


def _read(sock, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def damage(frame: bytes, mode: str) -> bytes:
    if mode == "flip":                   # one bit in the middle of the ciphertext
        out = bytearray(frame)
        out[4 + (len(frame) - 4) // 2] ^= 0x01
        return bytes(out)
    if mode == "drop":
        return b""
    if mode == "inject":                 # a well-formed frame the sender never sent
        return struct.pack(">I", len(frame) - 4) + bytes(len(frame) - 4) + frame
    if mode == "replay":
        return frame + frame
    if mode == "late-flip":              # hold it while the others finish, then flip it
        time.sleep(2)
        return damage(frame, "flip")
    raise ValueError(mode)


def relayed_roster(tmp_path: Path, state: Path) -> tuple[str, dict[int, TamperRelay]]:
    """A roster of loopback ports where every member that listens (the parties: the
    dealer only connects) is reached through a TamperRelay ("address") in front of
    its own port ("listen"), with the keys the members keep in their state."""
    relays, entries = {}, []
    for i in range(N + 1):
        key = base64.b64encode(member_signer(Path(member_state(str(state), i, N)), i, N).public_key).decode()
        port = free_port()
        if i < N:
            relays[i] = TamperRelay(port)
            entries.append({"address": f"127.0.0.1:{relays[i].port}", "listen": f"127.0.0.1:{port}", "key": key})
        else:
            entries.append({"address": f"127.0.0.1:{port}", "key": key})
    path = tmp_path / "relayed-roster.json"
    path.write_text(json.dumps({"parties": entries[:N], "dealer": entries[N]}))
    return str(path), relays


def party_spent(state: Path, policy) -> list[dict[str, Fraction]]:
    """Each party's own record of every source's spend (read with the parties stopped)."""
    out = []
    for rank in range(N):
        ledger = PartyLedger(next((state / f"party-{rank}").glob("ledger-*.sqlite")), policy, "")
        out.append(ledger.spent())
        ledger.close()
    return out


def party_labels(state: Path, query_id: str) -> list:
    """The label each party recorded for `query_id` (None: never revealed to it)."""
    out = []
    for rank in range(N):
        db = sqlite3.connect(next((state / f"party-{rank}").glob("ledger-*.sqlite")))
        row = db.execute("SELECT label FROM queries WHERE query_id=?", (query_id,)).fetchone()
        db.close()
        out.append(None if row is None else row[0])
    return out


def batch_cost(policy, weights, answered) -> dict[str, Fraction]:
    """What the parties charge each source for one batch: weights per query (one per
    source, policy order), `answered` per query (all True: the worst case)."""
    cost = {sid: Fraction(0) for sid in policy.ids}
    for row, ans in zip(weights, answered):
        for src, gamma in zip(policy.sources, row):
            cost[src.id] += sum((c.rho for c in query_charges(policy.mechanism, gamma, ans, src.slices)),
                                Fraction(0))
    return cost


def added(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def start(policy, ledger, state: Path, log_dir: Path, backend=None):
    """A session: parties (started by `cosigners`), the log, the aggregator."""
    backend = backend or MPCBackend(num_parties=N, timeout=120, state_dir=str(state))
    log = LogWriter(log_dir, ledger, [operator_signer(state.parent, policy), *backend.cosigners(ledger)])
    return backend, Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log), log


def entries_in(log_dir: Path) -> int:
    return len((log_dir / "entries.jsonl").read_text().splitlines())


class Wedged(AssertionError):
    """The restarted parties cannot go on."""


def label_round_frames(trace, key) -> int:
    """How many frames `key` carried after a batch's 4th agreement (its answered bits
    settled) up to its 5th (every party has recorded the labels): the label phase,
    from a relay's trace."""
    sizes = [n for k, n, _ in trace if k == key]
    empties = [i for i, n in enumerate(sizes) if n == 0]
    return empties[4] - empties[3] - 1


# (relay in front of member, frames from (connecting member, direction), damage, phase, agreements watched on)
# "up" is from the connecting (higher) member to the relayed one, "down" the reply direction.
# Phases, by the agreements (empty frames) seen:
#   "validation": the first frame after the 2nd (the counts of who holds each share); the validation
#                 after it needs party 0's frames, so no party gets to reserve anything;
#   "reserved":   after the 3rd, which a party sends once its worst case is durable (and it sends
#                 nothing past it before every party's is): no answered bit is out yet;
#   "settled":    after the 4th: the answered bits are out, the refused queries' reservations released;
#   "last":       the last frame of the label round.
CASES = [
    pytest.param(1, (2, "up"), "flip", "reserved", None, id="flip-party2-to-party1-after-reserving"),
    pytest.param(0, (1, "up"), "drop", "validation", None, id="drop-party1-to-party0-while-validating"),
    pytest.param(0, (3, "up"), "inject", "reserved", (1, "up"), id="inject-dealer-to-party0-after-reserving"),
    pytest.param(0, (2, "down"), "replay", "settled", None, id="replay-party0-to-party2-after-settling"),
    # The labels reach parties 1 and 2 but never party 0: nothing is released, the two record
    # them as undelivered (the agreement after the labels fails), and a retry may reveal them again.
    pytest.param(0, (1, "up"), "late-flip", "last", None, id="late-flip-party1-to-party0-last-label-frame"),
]
AFTER = {"validation": 2, "reserved": 3, "settled": 4, "last": 4}


@pytest.mark.parametrize("member, frames, mode, phase, watch", CASES)
def test_a_tampered_link_fails_the_batch_closed_and_the_restarted_parties_go_on(tmp_path, capfd, member, frames,
                                                                                mode, phase, watch):
    state, log_dir = tmp_path / "parties", tmp_path / "log"
    roster, relays = relayed_roster(tmp_path, state)
    backend = MPCBackend(num_parties=N, timeout=120, state_dir=str(state), roster=roster)
    policy = name_signers(POLICY, tmp_path, backend)
    try:
        with Ledger(tmp_path / "operator.sqlite", policy) as ledger:
            backend, agg, log = start(policy, ledger, state, log_dir, backend)
            # Through the relays, untouched, a batch is released as usual.
            relays[member].arm(frames, None, 0)                 # record only
            first = agg.query_batch(items("first"), 2)
            assert [r.label for r in first] == LABELS
            weights = [[p.gamma for p in r.participants] for r in first]
            before = (ledger.spent(), ledger.next_seq(), entries_in(log_dir), log.size)
            nth = label_round_frames(relays[member].trace, frames) if phase == "last" else 1

            relays[member].arm(frames, mode, AFTER[phase], nth=nth, watch=watch)
            t0 = time.monotonic()
            try:
                got = agg.query_batch(items("lost"), 2)
            except PartyError as e:
                failure = e
            else:
                pytest.fail(f"released {[r.label for r in got]} despite {relays[member].fired}; relay trace "
                            f"{relays[member].trace}; parties' stderr {capfd.readouterr().err[-4000:]}")
            elapsed = time.monotonic() - t0
            assert relays[member].fired, "the relay never saw the frame it was to damage"
            # A clear error, fast (the next frame on the link does not authenticate: no timeout).
            assert re.search(r"ChannelError: .*link to member \d", str(failure)), str(failure)
            assert elapsed < 30, (elapsed, str(failure))
            err = capfd.readouterr().err
            assert "does not authenticate (changed, dropped or injected bytes)" in err, err[-3000:]
            # Nothing released: the operator recorded, logged and charged nothing.
            assert (ledger.spent(), ledger.next_seq(), entries_in(log_dir), log.size) == before
            assert not any(ledger.has_query(q) for q, _ in items("lost"))
            assert backend._parties._procs == []            # every party process was stopped
            backend.close()
            for relay in relays.values():
                relay.close()

            # Each party's own ledger: what the lost batch may have cost stays charged.
            worst = batch_cost(policy, weights, [True] * 4)
            released = batch_cost(policy, weights, [lbl is not None for lbl in LABELS])
            assert worst != released
            extra = {"validation": {s: Fraction(0) for s in policy.ids}, "reserved": worst,
                     "settled": released, "last": released}[phase]
            assert party_spent(state, policy) == [added(before[0], extra)] * N
            if phase == "last":                 # the labels reached parties 1 and 2, not party 0
                assert party_labels(state, "lost-0") == [None, 0, 0]

            # Restarted on the same state, with a roster without the relays: the same
            # queries go through (the parties charge them again), and the log goes on.
            backend, agg, log = start(policy, ledger, state, log_dir)
            try:
                again = agg.query_batch(items("lost"), 2)
            except PartyError as e:
                raise Wedged(str(e)) from e
            assert [r.label for r in again] == LABELS
            assert ledger.spent() == added(before[0], released)
            operator = ledger.spent()
        backend.close()
        # The parties' spend is never below the operator's: the lost batch stays charged there.
        assert party_spent(state, policy) == [added(operator, extra)] * N
        report = audit(log_dir, allow_nonprivate=True)
        assert report.ok, [str(f) for f in report.findings]
        assert report.entries == before[1] + 4
    finally:
        backend.close()
        for relay in relays.values():
            relay.close()


class Impostor:
    """A process in party 1's place with a key nobody pinned, running the link
    protocol with the genuine roster's digest (a modified client: the real one
    refuses to start with a key its roster does not name). It listens on party 1's
    port for the members that link to party 1, and links to party 0 itself."""

    def __init__(self, roster, signer):
        self.roster, self.signer, self.errors = roster, signer, []
        me = roster.members[1]
        self.listener = socket.create_server((me.listen_host, me.listen_port))
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._connect, daemon=True)]
        for t in self._threads:
            t.start()

    def _accept(self):
        # What it would pin, had it its own roster: the others' genuine keys and its own.
        pinned = {m.index: m.key for m in self.roster.members}
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(20)
            try:
                handshake.accept(conn, self.roster.digest(), 1, self.signer, pinned, {2, N})
                conn.recv(1)          # the genuine member checks our signature, then hangs up
                self.errors.append("accepted")
            except (HandshakeError, OSError) as e:
                self.errors.append(str(e))
            conn.close()

    def _connect(self):
        target = self.roster.members[0]
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((target.host, target.port), timeout=20)
            except OSError:
                time.sleep(0.1)
                continue
            try:
                # Party 0's accept signature verifies (its key is genuine); ours does not.
                handshake.connect(sock, self.roster.digest(), 1, 0, self.signer, target.key)
                self.errors.append("party 0 hung up" if sock.recv(1) == b"" else "party 0 sent data")
            except (HandshakeError, OSError) as e:
                self.errors.append(str(e))
            sock.close()
            return

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.listener.close()


def test_a_process_with_an_unpinned_key_cannot_join(tmp_path, capfd):
    """The genuine party 1 is not running; in its place, a process with another key.
    The real `dvsecure party` refuses to start with it; a modified one that speaks the
    link protocol anyway is refused by party 0, party 2 and the dealer alike, and the
    batch fails with nothing released or charged anywhere."""
    from nacl.signing import SigningKey

    from dvsecure.log.note import Signer
    from dvsecure.mpc.roster import Roster

    state = tmp_path / "parties"
    keys = [base64.b64encode(member_signer(Path(member_state(str(state), i, N)), i, N).public_key).decode()
            for i in range(N + 1)]
    roster_path = tmp_path / "roster.json"
    entries = [{"address": f"127.0.0.1:{free_port()}", "key": k} for k in keys]
    roster_path.write_text(json.dumps({"parties": entries[:N], "dealer": entries[N]}))
    roster = Roster.load(roster_path)
    policy = name_signers(POLICY, tmp_path, MPCBackend(num_parties=N, state_dir=str(state)))
    (tmp_path / "policy.toml").write_text(policy.to_toml())

    # The real software, started with a key the policy and the roster do not name, refuses.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "dvsecure.cli", "party", "--rank", "1", "--state",
                          str(tmp_path / "impostor"), "--roster", str(roster_path), "--policy",
                          str(tmp_path / "policy.toml")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "does not name this party's cosigning key" in out.stderr, out.stderr

    impostor = Impostor(roster, Signer("dvsecure-mpc-party-1", bytes(SigningKey.generate())))
    backend = MPCBackend(num_parties=N, timeout=120, state_dir=str(state), roster=str(roster_path),
                         spawn_ranks=[0, 2, N])
    try:
        with Ledger(tmp_path / "operator.sqlite", policy) as ledger:
            agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"))
            with pytest.raises(PartyError, match="died"):
                agg.query_batch(items("never"), 2)
            assert ledger.next_seq() == 1                       # only the genesis entry
            assert not any(ledger.has_query(q) for q, _ in items("never"))
    finally:
        backend.close()
        impostor.close()
    err = capfd.readouterr().err
    # Party 0 refused the impostor's link and kept waiting for the genuine party 1 ...
    assert "party 0 refused a connection from 127.0.0.1: member 1 did not sign with its pinned key" in err, err
    # ... and party 2 and the dealer, linking to party 1's port, refused what answered there.
    refusals = re.findall(r"HandshakeError: party 1 at 127\.0\.0\.1:\d+: member 1 did not sign with its pinned key",
                          err)
    assert len(refusals) == 2, err[-3000:]
    assert "the peer closed the connection during the handshake" in " ".join(impostor.errors) or \
        "party 0 hung up" in impostor.errors, impostor.errors
    # No party ever served a batch: no party ledger was made.
    assert not list(state.glob("party-*/ledger-*.sqlite"))
