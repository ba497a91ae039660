"""The coordinator's handle on the computing parties.

`LocalParties` starts party processes on this machine (`python -m dvsecure.mpc`,
fresh interpreters) — by default all n parties and the TTP dealer with a file
rendezvous in a private temporary directory; with `rendezvous` and
`spawn_ranks` only some of them (party 0, say) while the others run
`dvsecure party` elsewhere. It talks to party 0 only, over an authenticated
local socket (a random key per run); party 0 relays to the others (`party.py`).

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

import msgspec

from .party import PartyError

DEALER_PROVIDER = "TTP"
__all__ = ["LocalParties", "PartyError"]


class LocalParties:
    def __init__(self, num_parties: int, state_dir: str, provider: str = DEALER_PROVIDER,
                 timeout: float = 300.0, rendezvous: str | None = None, spawn_ranks=None, party_args=()):
        if num_parties < 2:
            raise PartyError(f"MPC needs at least 2 computing parties, got {num_parties}")
        self.n, self.timeout = num_parties, timeout
        dealer = provider == "TTP"
        everyone = list(range(num_parties + (1 if dealer else 0)))
        ranks = everyone if spawn_ranks is None else sorted(spawn_ranks)
        if 0 not in ranks or not set(ranks) <= set(everyone):
            raise PartyError(f"spawn_ranks must include 0 and lie in {everyone}, got {ranks}")
        self._dir = tempfile.mkdtemp(prefix="dvsecure-rdv-")
        rendezvous = rendezvous or f"file://{self._dir}/rendezvous"
        address, key = f"{self._dir}/coordinator.sock", os.urandom(32)
        self._names, self._procs, self._conn = [], [], None
        for r in ranks:
            cmd = [sys.executable, "-m", "dvsecure.mpc", "--rank", str(r), "--world-size", str(num_parties),
                   "--rendezvous", rendezvous, "--provider", provider, "--state", f"{state_dir}/party-{r}"]
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
