"""The coordinator's handle on the computing parties.

`LocalParties` starts party processes on this machine (`python -m dvsecure.mpc`,
fresh interpreters) — by default all n parties and the TTP dealer, on a roster
of loopback ports it writes into a private temporary directory with the keys
each member keeps in its state directory; with `roster` and `spawn_ranks` only
some of them (party 0, say) while the others run `dvsecure party` elsewhere.
Members talk over authenticated, encrypted links (`links.py`); `transport="gloo"`
is plain gloo on this machine, kept only so the bench and tests can compare.
It talks to party 0 only, over an authenticated local socket (a random key per
run); party 0 relays to the others (`party.py`).

Faults: a started process that dies, or parties that stall past `timeout`
seconds, fail the call with PartyError; every spawned process is then stopped,
nothing is released, and (the aggregator commits only after a successful
evaluation) nothing is charged by the operator for that batch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client
from pathlib import Path

import msgspec

from .party import PartyError

DEALER_PROVIDER = "TTP"
__all__ = ["LocalParties", "PartyError", "member_state"]


def member_state(state_dir: str, index: int, num_parties: int) -> str:
    """Where member `index` keeps its keys (and a party its ledger)."""
    return f"{state_dir}/dealer" if index == num_parties else f"{state_dir}/party-{index}"


class LocalParties:
    def __init__(self, num_parties: int, state_dir: str, provider: str = DEALER_PROVIDER,
                 timeout: float = 300.0, roster: str | None = None, spawn_ranks=None, party_args=(),
                 transport: str = "links"):
        if num_parties < 2:
            raise PartyError(f"MPC needs at least 2 computing parties, got {num_parties}")
        if transport not in ("links", "gloo"):
            raise PartyError(f"transport must be 'links' or 'gloo', got {transport!r}")
        self.n, self.timeout = num_parties, timeout
        dealer = provider == "TTP"
        everyone = list(range(num_parties + (1 if dealer else 0)))
        ranks = everyone if spawn_ranks is None else sorted(spawn_ranks)
        if 0 not in ranks or not set(ranks) <= set(everyone):
            raise PartyError(f"spawn_ranks must include 0 and lie in {everyone}, got {ranks}")
        if roster is None and ranks != everyone:
            raise PartyError("parties started elsewhere need a roster naming where each listens")
        self._dir = tempfile.mkdtemp(prefix="dvsecure-rdv-")
        if transport == "gloo":
            join = ["--rendezvous", f"file://{self._dir}/rendezvous"]
        else:
            join = ["--roster", roster or self._local_roster(state_dir, everyone)]
        address, key = f"{self._dir}/coordinator.sock", os.urandom(32)
        self._names, self._procs, self._conn = [], [], None
        for r in ranks:
            cmd = [sys.executable, "-m", "dvsecure.mpc", "--rank", str(r), "--world-size", str(num_parties),
                   *join, "--provider", provider, "--state", member_state(state_dir, r, num_parties)]
            env = dict(os.environ)
            if r < num_parties:
                cmd += list(party_args)
            if r == 0:
                cmd += ["--coordinator", address]
                env["DVSECURE_COORDINATOR_KEY"] = key.hex()
            self._names.append("dealer" if r == num_parties else f"party {r}")
            self._procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + self.timeout
        while self._conn is None:
            self._check_alive(deadline, "start")
            if os.path.exists(address):
                try:
                    self._conn = Client(address, family="AF_UNIX", authkey=key)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            time.sleep(0.05)
        self.keys = self.call({"op": "keys"})["keys"]

    def _local_roster(self, state_dir: str, members: list[int]) -> str:
        """A roster of free loopback ports, with the key each member keeps in its
        own state directory (made there on first use)."""
        import base64
        import socket

        from .party import member_signer
        from .roster import Roster

        entries = []
        for r in members:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            key = member_signer(Path(member_state(state_dir, r, self.n)), r, self.n).public_key
            entries.append({"address": f"127.0.0.1:{port}", "key": base64.b64encode(key).decode()})
        d = {"parties": entries[:self.n], **({"dealer": entries[self.n]} if len(entries) > self.n else {})}
        path = f"{self._dir}/roster.json"
        with open(path, "w") as f:
            f.write(Roster.from_dict(d).to_json())
        return path

    def _check_alive(self, deadline: float, what: str) -> None:
        dead = [name for name, p in zip(self._names, self._procs) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            self.close()
            raise PartyError(f"{', '.join(dead)} died" if dead else
                             f"the computing parties did not {what} within {self.timeout:.0f} s")

    def _send(self, data: bytes) -> None:
        self._conn.send_bytes(data)

    def call(self, cmd: dict) -> dict:
        """Send one command to the parties; party 0's answer."""
        if not self._procs:
            raise PartyError("the computing parties were stopped after an earlier failure")
        try:
            self._send(msgspec.msgpack.encode(cmd))
            deadline = time.monotonic() + self.timeout
            while not self._conn.poll(0.5):
                self._check_alive(deadline, "answer")
            status, value = msgspec.msgpack.decode(self._conn.recv_bytes())
        except (OSError, EOFError) as e:
            self._check_alive(time.monotonic() + 1, "answer")
            self.close()
            raise PartyError(f"lost the connection to party 0: {e}") from None
        if status != "ok":
            time.sleep(0.5)                      # a peer's death is usually why: name it
            dead = [name for name, p in zip(self._names, self._procs) if p.poll() is not None]
            self.close()
            raise PartyError(f"party 0 failed: {value}" + (f" ({', '.join(dead)} died)" if dead else ""))
        if "error" in value:
            raise PartyError(value["error"])
        return value

    def close(self) -> None:
        procs, self._procs = self._procs, []
        if self._conn is not None:
            try:
                if procs and procs[0].poll() is None:
                    self._conn.send_bytes(msgspec.msgpack.encode({"op": "stop"}))
            except (OSError, ValueError):
                pass
            self._conn.close()
            self._conn = None
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
