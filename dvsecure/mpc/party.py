"""One computing party: its keys, its ledger, and its command loop.

The same code runs a party spawned on this machine (`LocalParties`) and a party
started by hand on another machine (`dvsecure party`). The coordinator talks
only to party 0 (which may be co-located with it, DESIGN §2); party 0 relays
each command to the others over the parties' own torch.distributed group, as
bytes (msgpack, never pickle: a party does not execute what a peer sends).
Submissions inside a command are sealed to each party's key and signed by
their sources, so relaying them through party 0 reveals nothing to it.

Commands: "batch" (evaluate one batch, `evaluate.evaluate_batch`), "cosign"
(check new log entries and sign the checkpoint, `party_ledger`), "stop".
A party that refuses (a budget or band check, a cosignature) refuses in step
with the others (`agree`), so every party stays ready for the next command.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec
import numpy as np

from ..errors import DvsecureError

MAX_MESSAGE = 1 << 30


class PartyError(DvsecureError):
    """A computing party failed, stalled, disagreed or refused; the batch released nothing."""


def party_signer_name(rank: int) -> str:
    return f"dvsecure-mpc-party-{rank}"


def load_or_create_keys(state_dir: Path, rank: int):
    """This party's X25519 key (sealed shares) and Ed25519 note signer
    (checkpoint cosignatures), created on first use, mode 0600."""
    from nacl.public import PrivateKey

    from ..log.note import Signer, generate_signer

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"party-{rank}.key"
    if not path.exists():
        signer, _ = generate_signer(party_signer_name(rank))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(bytes(PrivateKey.generate()).hex() + "\n" + signer + "\n")
            f.flush()
            os.fsync(f.fileno())
    box_hex, signer = path.read_text().split("\n")[:2]
    return PrivateKey(bytes.fromhex(box_hex)), Signer.from_key_string(signer)


DEALER_SIGNER_NAME = "dvsecure-mpc-dealer"


def load_or_create_dealer_key(state_dir: Path):
    """The TTP dealer's Ed25519 key (it authenticates the dealer's links; the
    dealer cosigns nothing), created on first use, mode 0600."""
    from ..log.note import Signer, generate_signer

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "dealer.key"
    if not path.exists():
        signer, _ = generate_signer(DEALER_SIGNER_NAME)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(signer + "\n")
            f.flush()
            os.fsync(f.fileno())
    return Signer.from_key_string(path.read_text().split("\n")[0])


def member_signer(state_dir: Path, index: int, world: int):
    """The key a roster member authenticates its links with: a party's cosigning
    key, or the dealer's own (index `world`)."""
    return load_or_create_dealer_key(state_dir) if index == world else load_or_create_keys(state_dir, index)[1]


# ---- talking among parties (their links, or gloo on the loopback-only test path) --------

def _bcast_bytes(dist, group, data: bytes | None, src: int = 0) -> bytes:
    import torch

    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.long)
    dist.broadcast(size, src, group=group)
    if int(size) > MAX_MESSAGE:
        raise PartyError(f"command of {int(size)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data is not None \
        else torch.empty(int(size), dtype=torch.uint8)
    if int(size):
        dist.broadcast(buf, src, group=group)
    return buf.numpy().tobytes()


def _gather_bytes(dist, group, world: int, data: bytes) -> list[bytes]:
    """Every party's `data` at every party (small messages only)."""
    import torch

    size = torch.tensor([len(data)], dtype=torch.long)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf[:0]
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(bufs, buf, group=group)
    return [b.numpy().tobytes()[:int(s)] for b, s in zip(bufs, sizes)]


class Peers:
    """What a party needs to talk to the others outside CrypTen's own counters."""

    def __init__(self, crypten, rank: int, world: int):
        self.rank, self.world = rank, world
        self.comm = crypten.communicator.get()
        self.links = hasattr(self.comm, "send_bytes")
        if not self.links:
            import torch.distributed as dist

            self.dist, self.group = dist, self.comm.main_group

    def broadcast(self, data: bytes | None) -> bytes:
        if not self.links:
            return _bcast_bytes(self.dist, self.group, data)
        if self.rank == 0:
            if len(data) > MAX_MESSAGE:
                raise PartyError(f"command of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit")
            for r in range(1, self.world):
                self.comm.send_bytes(data, r)
            return data
        return self.comm.recv_bytes(0)

    def gather(self, data: bytes) -> list[bytes]:
        if not self.links:
            return _gather_bytes(self.dist, self.group, self.world, data)
        for r in range(self.world):
            if r != self.rank:
                self.comm.send_bytes(data, r)
        return [data if r == self.rank else self.comm.recv_bytes(r) for r in range(self.world)]

    def agree(self, error: str | None) -> None:
        """A collective check: if any party reports an error, every party raises
        PartyError naming each refusing party, in step."""
        said = self.gather((error or "").encode()[:2000])
        problems = [f"party {r}: {m.decode(errors='replace')}" for r, m in enumerate(said) if m]
        if problems:
            raise PartyError("; ".join(problems))


# ---- commands -----------------------------------------------------------------------------
# Every party decodes the same broadcast bytes against these types, so a malformed
# command is refused by all of them alike, before any collective step, and none dies.

class _Command(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    pass


class _Stop(_Command, tag="stop"):
    pass


class _Keys(_Command, tag="keys"):
    pass


class _Size(_Command, tag="size"):
    policy: str


class _Cosign(_Command, tag="cosign"):
    policy: str
    start: int
    entries: list[bytes]
    text: bytes


class _Batch(_Command, tag="batch"):
    policy: str
    query_ids: list[str]
    source_ids: list[str]
    source_keys: dict[str, bytes]
    messages: list[list[bytes]]
    present: bytes
    gammas: bytes
    num_classes: int
    noise_mode: str
    noise_seeds: list[int] | None = None
    inbox: bool = False
    desired: bytes | None = None        # int64[S] the filter's desired weights (default: each ceiling)


class _Pending(_Command, tag="pending"):
    policy: str
    query_ids: list[str]
    predraw: int | None = None          # these queries' classes: draw their private noise ahead


class _Calibrate(_Command, tag="calibrate"):
    policy: str
    calibration_id: str
    query_ids: list[str]                # the labelled queries
    labels: list[int]
    calibrated: list[str]               # the sources the coordinator's budgets allow; the rest keep their ceilings
    source_ids: list[str]
    source_keys: dict[str, bytes]
    messages: list[list[bytes]]
    present: bytes
    num_classes: int
    noise_mode: str
    noise_seeds: list[int] | None = None
    inbox: bool = False


_command_decoder = msgspec.msgpack.Decoder(_Stop | _Keys | _Size | _Cosign | _Batch | _Calibrate | _Pending)


def decode_command(raw: bytes) -> dict:
    """The command as a dict (with its "op"); raises PartyError naming what is malformed."""
    try:
        cmd = _command_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise PartyError(f"malformed command: {e}") from None
    return {"op": type(cmd).__struct_config__.tag, **msgspec.structs.asdict(cmd)}


# ---- the command loop ---------------------------------------------------------------------

class Party:
    def __init__(self, crypten, rank: int, world: int, state_dir: Path, pinned_policy=None,
                 allow_nonprivate: bool = True):
        self.crypten, self.rank, self.world = crypten, rank, world
        self.state_dir = Path(state_dir)
        self.box_key, self.signer = load_or_create_keys(self.state_dir, rank)
        self.peers = Peers(crypten, rank, world)
        self.pinned = pinned_policy
        self.allow_nonprivate = allow_nonprivate
        self._ledgers = {}
        self.inbox, self.endpoint = None, None
        self._noise = None                   # this party's private noise, drawn ahead while rounds wait
        self._reserved = set()               # the scales the current round reserved

    def listen(self, address: str, principals_path: str, max_message: int = 64 << 20,
               inbox_limits: dict | None = None, advertise: str | None = None):
        """Take shares from sources over gRPC with TLS (`ShareInbox`, with
        `inbox_limits` as its keyword limits); the certificate is written to
        <state>/tls.pem, and <state>/endpoint.json (where sources reach this party,
        at `advertise`, default the address it listens on; its certificate and box
        key; signed by its cosigning key) for sources to check against the policy."""
        from ..log.writer import write_atomic
        from ..tee.protocol import Principals
        from ..wire import rpc
        from ..wire.proto import dvsecure_pb2 as pb
        from ..wire.tls import tls_identity
        from .inbox import ShareInbox

        if self.pinned is None:
            raise PartyError("a party that takes submissions must be started with the policy it enforces")
        principals, _ = Principals.load(principals_path)
        unknown = set(principals.sources) - set(self.pinned.ids)
        if unknown:
            raise PartyError(f"principals name sources not in the policy: {sorted(unknown)}")
        ledger = self.ledger(self.pinned.to_toml())
        self.inbox = ShareInbox(self.rank, self.world, self.box_key, principals.sources, ledger.query_ids(),
                                **(inbox_limits or {}))
        cert_pem, _, key_pem = tls_identity(address.rpartition(":")[0].strip("[]") or "127.0.0.1",
                                            f"dvsecure mpc party {self.rank}")
        write_atomic(self.state_dir / "tls.pem", cert_pem)

        def keys(raw):
            rpc.parse(pb.PartyKeysRequest, raw, "PartyKeysRequest")
            return pb.PartyKeys(rank=self.rank, world_size=self.world, box_key=bytes(self.box_key.public_key),
                                cosign_vkey=self.signer.verifier_key_string)

        def submit(raw):
            req = rpc.parse(pb.ShareEnvelope, raw, "ShareEnvelope")
            return pb.SubmitReply(accepted=self.inbox.submit(req.envelope))
        server, port = rpc.serve("dvsecure.v1.Party", {"GetKeys": keys, "SubmitShares": submit},
                                 f"party {self.rank}", address, cert_pem, key_pem, max_message)
        self.endpoint = {"port": port, "tls": cert_pem}
        from ..roles.published import ENDPOINT_FILE, endpoint_json

        host = address.rpartition(":")[0]
        where = advertise or f"{host}:{port}"
        write_atomic(self.state_dir / ENDPOINT_FILE, endpoint_json(self.signer, self.rank, where, cert_pem.decode(),
                                                                   bytes(self.box_key.public_key)))
        return server

    def _held(self, ledger, query_ids) -> bytes:
        """uint8[S, Q]: 1 where every party holds source s's share for query q."""
        error, mine = None, b""
        try:
            if self.inbox is None:
                raise PartyError("this party takes no submissions over the network (start it with --listen)")
            if len(query_ids) > 100_000:
                raise PartyError("at most 100000 queries per pending request")
            mine = self.inbox.held(query_ids, ledger.policy.ids).tobytes()
        except DvsecureError as e:
            error = str(e)
        self.peers.agree(error)
        every = [np.frombuffer(b, dtype=np.uint8) for b in self.peers.gather(mine)]
        return np.minimum.reduce(every).tobytes()

    def _predraw(self, policy, num_queries: int, num_classes: int) -> None:
        """Start drawing, in the background, the private noise a batch of these
        queries needs at most (one threshold draw each, C GNMax draws each if all
        are answered): it is data-independent, so it is drawn while the round
        waits for submissions instead of inside the batch. Local to this party:
        what the coordinator asks changes only when this party spends its CPU."""
        from ..noise import PrivateNoise
        from .evaluate import MAX_CLASSES, batch_noise_demand, party_sigmas

        if not 1 <= num_classes <= MAX_CLASSES:
            return
        if self._noise is None:
            self._noise = PrivateNoise()
        try:
            want = batch_noise_demand(*party_sigmas(policy, self.world, num_classes), num_queries, num_classes)
        except DvsecureError:
            return     # the batch itself refuses such a policy, naming why; nothing to draw ahead
        # Only the latest round's scales stay reserved, so a coordinator that names other
        # classes poll after poll cannot make this party keep drawing for all of them.
        for sigma in self._reserved - set(want):
            self._noise.reserve(sigma, 0)
        for sigma, count in want.items():
            self._noise.reserve(sigma, count)
        self._reserved = set(want)

    def public_keys(self) -> list[dict]:
        """Every party's public keys (and submission endpoint), in rank order (a collective)."""
        mine = msgspec.msgpack.encode({"box": bytes(self.box_key.public_key),
                                       "vkey": self.signer.verifier_key_string, "endpoint": self.endpoint})
        return [msgspec.msgpack.decode(b) for b in self.peers.gather(mine)]

    def ledger(self, policy_toml: str):
        from ..policy import ConsortiumPolicy
        from .party_ledger import PartyLedger

        policy = ConsortiumPolicy.from_toml(policy_toml)
        if self.pinned is not None and policy.digest() != self.pinned.digest():
            raise PartyError("the coordinator sent a policy other than the one this party was started with")
        digest = policy.digest()
        if digest not in self._ledgers:
            self._ledgers[digest] = PartyLedger(self.state_dir / f"ledger-{digest[:16]}.sqlite", policy,
                                                self.signer.verifier_key_string)
        return self._ledgers[digest]

    def serve(self, receive=None, reply=None) -> None:
        """Party 0 takes commands (msgpack bytes) from `receive()` and hands
        answers to `reply`; the others take them from party 0."""
        while True:
            data = receive() if self.rank == 0 else None
            try:
                # The same size and bytes reach every party: an oversized or malformed
                # command is refused everywhere alike.
                cmd = decode_command(self.peers.broadcast(data))
                if cmd["op"] == "stop":
                    return
                answer = self.handle(cmd)
            except PartyError as e:          # refused by some party, in step: stay ready
                answer = {"error": str(e)}
            if self.rank == 0 and reply is not None:
                reply(answer)

    def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "keys":
            return {"keys": self.public_keys()}
        error, ledger = None, None
        try:
            ledger = self.ledger(cmd["policy"])
            if op in ("batch", "calibrate") and cmd["noise_mode"] != "private" and not self.allow_nonprivate:
                error = f"noise mode {cmd['noise_mode']!r} refused: this party runs private noise only"
        except DvsecureError as e:
            error = str(e)
        self.peers.agree(error)
        if op == "batch":
            from .evaluate import evaluate_batch

            return evaluate_batch(self.crypten, cmd, self.rank, self.world, self.box_key, ledger, self.peers,
                                  self.inbox, self._noise)
        if op == "calibrate":
            from .calibrate import calibrate_batch

            return calibrate_batch(self.crypten, cmd, self.rank, self.world, self.box_key, ledger, self.peers,
                                   self.inbox, self._noise)
        if op == "pending":
            held = self._held(ledger, cmd["query_ids"])
            if cmd.get("predraw") and error is None:
                self._predraw(ledger.policy, len(cmd["query_ids"]), cmd["predraw"])
            return {"held": held}
        if op == "size":
            return {"sizes": [int(b) for b in self.peers.gather(str(ledger.size).encode())]}
        if op == "cosign":
            error = None
            try:
                if ledger.size != cmd["start"]:
                    raise PartyError(f"this party has cosigned {ledger.size} entries; the coordinator "
                                     f"sent entries from {cmd['start']}")
                ledger.check_and_cosign(cmd["entries"], cmd["text"])
            except DvsecureError as e:
                error = str(e)
            self.peers.agree(error)
            sigs = self.peers.gather(self.signer.sign(cmd["text"]))
            return {"signatures": sigs}
        raise PartyError(f"unknown command {op!r}")


def _join(crypten, rank: int, world: int, provider: str, state_dir: str | None, roster_path: str | None,
          rendezvous: str | None, policy, join_timeout: float, link_timeout: float) -> None:
    """Connect this process's CrypTen to the others: over the roster's links
    (always, across machines), or over gloo (`rendezvous`: loopback only, the
    bench's and tests' comparison path, never for real data)."""
    from ..errors import ParameterError
    from .compat import set_provider, use_secure_transport

    set_provider(crypten, provider)
    if roster_path is not None:
        from .links import establish
        from .roster import Roster

        roster = Roster.load(roster_path)
        if roster.num_parties != world:
            raise ParameterError(f"{roster_path} lists {roster.num_parties} parties, this run has {world}")
        if provider == "TTP" and roster.dealer is None:
            raise ParameterError(f"{roster_path} names no dealer, and TTP Beaver triples need one")
        if policy is not None:
            roster.check_policy(policy)
        if state_dir is None:
            raise ParameterError("a roster member needs its state directory (its key)")
        signer = member_signer(Path(state_dir), rank, world)
        links = establish(roster, rank, signer, timeout=join_timeout, link_timeout=link_timeout)
        use_secure_transport(crypten, rank, world, links, with_dealer=roster.dealer is not None)
        return
    from urllib.parse import urlparse

    from .roster import is_loopback

    url = urlparse(rendezvous or "")
    if url.scheme not in ("file", "tcp") or (url.scheme == "tcp" and not is_loopback(url.hostname or "")):
        raise ParameterError("refusing plain gloo beyond this machine: its TCP carries CrypTen's seeds and "
                             "every opened value in the clear and its rendezvous lets anyone join; give the "
                             "parties a roster (authenticated, encrypted links) instead")
    # A file:// rendezvous on a shared file system would still let gloo connect across
    # machines: bind its sockets to the loopback interface, so plain gloo stays on this one.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo",
                      GLOO_SOCKET_IFNAME="lo")


def run_party(rank: int, world: int, provider: str, state_dir: str | None, *, roster: str | None = None,
              rendezvous: str | None = None, coordinator: str | None = None, pinned_policy_toml: str | None = None,
              allow_nonprivate: bool = True, listen: str | None = None, principals: str | None = None,
              advertise: str | None = None, inbox_limits: dict | None = None, join_timeout: float = 300.0,
              link_timeout: float = 300.0) -> None:
    """A party's process: join the others (`roster`, or the loopback-only gloo
    `rendezvous`), then serve commands. Rank `world` is the TTP dealer (Beaver
    triples; no inputs, no outputs). Party 0 takes its commands from the
    coordinator over the local socket `coordinator` (an authenticated
    multiprocessing connection, key in DVSECURE_COORDINATOR_KEY), as msgpack bytes."""
    from .compat import import_crypten

    crypten = import_crypten()
    pinned = None
    if pinned_policy_toml is not None:
        from ..policy import ConsortiumPolicy
        pinned = ConsortiumPolicy.from_toml(pinned_policy_toml)
    conn = None
    if rank == 0:
        from multiprocessing.connection import Listener

        key = bytes.fromhex(os.environ.pop("DVSECURE_COORDINATOR_KEY"))
        with Listener(coordinator, family="AF_UNIX", authkey=key) as listener:
            conn = listener.accept()
    try:
        _join(crypten, rank, world, provider, state_dir, roster, rendezvous, pinned, join_timeout, link_timeout)
    except DvsecureError as e:
        if conn is not None:
            conn.send_bytes(msgspec.msgpack.encode(["error", f"{type(e).__name__}: {e}"]))
        raise
    if rank == world:
        crypten.mpc.provider.TTPServer()
        return
    crypten.init()
    server = None
    try:
        party = Party(crypten, rank, world, Path(state_dir), pinned, allow_nonprivate)
        if listen is not None:
            server = party.listen(listen, principals, inbox_limits=inbox_limits, advertise=advertise)
        if conn is None:
            party.serve()
            return

        def reply(answer):
            conn.send_bytes(msgspec.msgpack.encode(["ok", answer]))
        try:
            party.serve(conn.recv_bytes, reply)
        except Exception as e:                      # fatal: tell the coordinator, then stop
            conn.send_bytes(msgspec.msgpack.encode(["error", f"{type(e).__name__}: {e}"]))
            raise
    finally:
        if server is not None:
            server.stop(grace=1)
        crypten.uninit()


def job_arrays(cmd: dict) -> tuple[np.ndarray, np.ndarray]:
    """The public arrays of a batch command: present bool[Q, S], gammas int64[Q, S]."""
    q, s = len(cmd["query_ids"]), len(cmd["source_ids"])
    present = np.frombuffer(cmd["present"], dtype=np.uint8).reshape(q, s).astype(bool)
    gammas = np.frombuffer(cmd["gammas"], dtype="<i8").reshape(q, s).astype(np.int64)
    return present, gammas
