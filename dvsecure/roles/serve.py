"""`dvsecure party serve` and `dvsecure dealer serve`: a computing party or the
TTP dealer as a long-running service on its own host.

Each checks its config before anything starts (the policy names this party's
key for its rank, the roster names it, the digest is the agreed one), then runs
the member itself as a child process (`python -m dvsecure.mpc`) and starts it
again when it exits: the MPC group ends whenever any member or the coordinator
goes away (a crash, a cut link), and every member rejoins on the same state
(keys, ledger) when all are back. SIGTERM or SIGINT stops it cleanly: the child
is asked to stop, and the service exits 0."""
from __future__ import annotations

import base64
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import ParameterError
from .config import Key
from .events import event

PARTY_SCHEMA = [
    Key("rank", "int", True, help="this party's rank, 1..N-1 (rank 0 runs with the coordinator)"),
    Key("roster", "path", True, help="the roster: every member's address and link key"),
    Key("state", "path", True, help="this party's private state: its key (party-RANK.key) and ledger"),
    Key("policy", "path", True, help="the consortium policy this party enforces"),
    Key("principals", "path", True, help="the sources' keys (the principals file beside the policy)"),
    Key("listen", "str", True, help="HOST:PORT where the sources send this party their shares"),
    Key("advertise", "str", help="HOST:PORT the sources reach this party at (default: listen)"),
    Key("expect_digest", "str", help="refuse to start unless the policy has this digest"),
    Key("allow_nonprivate", "bool", default=False, help="TEST ONLY: accept batches without private noise"),
    Key("restart_delay", "float", default=1.0, help="seconds before the member is started again"),
]
DEALER_SCHEMA = [
    Key("roster", "path", True, help="the roster: every member's address and link key"),
    Key("state", "path", True, help="the dealer's private state: its key (dealer.key)"),
    Key("restart_delay", "float", default=1.0, help="seconds before the dealer is started again"),
]


def check_party(rank: int, roster_path: Path, state: Path, policy_path: Path, expect_digest: str | None = None):
    """Everything a party checks before it joins: (policy, roster). Raises
    ParameterError naming the file and what is wrong."""
    from ..mpc.party import load_or_create_keys
    from ..mpc.roster import Roster
    from ..policy import ConsortiumPolicy

    roster = Roster.load(roster_path)
    world = roster.num_parties
    policy = ConsortiumPolicy.load(policy_path)
    if expect_digest is not None and policy.digest() != expect_digest:
        raise ParameterError(f"{policy_path} has digest {policy.digest()}, not the agreed {expect_digest}")
    roster.check_policy(policy)
    if not 1 <= rank < world:
        raise ParameterError(f"rank must be in 1..{world - 1} (rank 0 runs with the coordinator), got {rank}")
    mine = base64.b64encode(load_or_create_keys(Path(state), rank)[1].public_key).decode()
    if policy.signers is not None:
        # Refuse before joining: the parties cosign only under a policy that names them.
        named = policy.signers.parties
        if rank >= len(named) or named[rank] != mine:
            raise ParameterError(f"{policy_path} does not name this party's cosigning key ({mine}) as party "
                                 f"{rank}'s signer; publish it (dvsecure keys new --role party) and have the "
                                 "policy name it")
    if roster.members[rank].key_b64 != mine:
        raise ParameterError(f"{roster_path} does not name this party's key ({mine}) as party {rank}")
    return policy, roster


def check_dealer(roster_path: Path, state: Path):
    from ..mpc.party import load_or_create_dealer_key
    from ..mpc.roster import Roster

    roster = Roster.load(roster_path)
    key = base64.b64encode(load_or_create_dealer_key(Path(state)).public_key).decode()
    if roster.dealer is None or roster.dealer.key_b64 != key:
        raise ParameterError(f"{roster_path} does not name this dealer's key ({key}); publish it "
                             "(dvsecure keys new --role dealer) and have the roster name it")
    return roster


STOP_GRACE = 10.0      # seconds a service has to exit after SIGTERM before it is killed


def _wait(proc: subprocess.Popen, stop: threading.Event) -> int:
    """The child's exit code; once stopping, it gets STOP_GRACE seconds, then SIGKILL
    (its state is durable at every step, so a kill loses nothing recorded)."""
    stopping_since = None
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stop.is_set():
                stopping_since = stopping_since or time.monotonic()
                if time.monotonic() - stopping_since > STOP_GRACE:
                    proc.kill()


def supervise(role: str, cmd: list[str], restart_delay: float) -> int:
    """Run `cmd` and start it again whenever it exits, until SIGTERM/SIGINT."""
    stop = threading.Event()
    child: list[subprocess.Popen] = []

    def on_signal(signum, frame):
        stop.set()
        if child and child[0].poll() is None:
            child[0].terminate()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    delay = restart_delay
    try:
        while not stop.is_set():
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            child[:] = [proc]
            event(role, "started", pid=proc.pid)
            code = _wait(proc, stop)
            if stop.is_set():
                break
            event(role, "exited", code=code, restart_in=delay)
            # A member that exits at once again and again (its peers are not back yet)
            # backs off, up to 30 s; one that ran a while is restarted promptly.
            if stop.wait(delay):
                break
            delay = min(30.0, delay * 2) if code != 0 else restart_delay
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if child and child[0].poll() is None:
            child[0].terminate()
            try:
                child[0].wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                child[0].kill()
                child[0].wait()
    event(role, "stopped")
    return 0


def serve_party(cfg: dict) -> int:
    policy, roster = check_party(cfg["rank"], cfg["roster"], cfg["state"], cfg["policy"], cfg["expect_digest"])
    cmd = [sys.executable, "-m", "dvsecure.mpc", "--rank", str(cfg["rank"]), "--world-size", str(roster.num_parties),
           "--roster", str(cfg["roster"]), "--provider", "TTP", "--state", str(cfg["state"]),
           "--policy", str(cfg["policy"]), "--listen", cfg["listen"], "--principals", str(cfg["principals"])]
    if cfg["advertise"]:
        cmd += ["--advertise", cfg["advertise"]]
    if not cfg["allow_nonprivate"]:
        cmd += ["--private-only"]
    event(f"party {cfg['rank']}", "serving", policy_digest=policy.digest(), listen=cfg["listen"],
          endpoint=str(Path(cfg["state"]) / "endpoint.json"))
    return supervise(f"party {cfg['rank']}", cmd, cfg["restart_delay"])


def serve_dealer(cfg: dict) -> int:
    roster = check_dealer(cfg["roster"], cfg["state"])
    world = roster.num_parties
    cmd = [sys.executable, "-m", "dvsecure.mpc", "--rank", str(world), "--world-size", str(world),
           "--roster", str(cfg["roster"]), "--provider", "TTP", "--state", str(cfg["state"])]
    event("dealer", "serving", parties=world)
    return supervise("dealer", cmd, cfg["restart_delay"])
