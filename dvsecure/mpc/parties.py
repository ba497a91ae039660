"""The coordinator's handle on the computing parties.

`LocalParties` starts party processes on this machine (spawn) — by default all
n parties and the TTP dealer with a file rendezvous in a private temporary
directory; with `rendezvous` and `spawn_ranks` only some of them (party 0, say)
while the others run `dvsecure party` elsewhere. It talks to party 0 only, over
a pipe; party 0 relays to the others (`party.py`).

Faults: a spawned process that dies, or parties that stall past `timeout`
seconds, fail the call with PartyError; every spawned process is then stopped,
nothing is released, and (the aggregator commits only after a successful
evaluation) nothing is charged by the operator for that batch.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import tempfile
import time

from .party import PartyError, run_party

DEALER_PROVIDER = "TTP"
__all__ = ["LocalParties", "PartyError"]


class LocalParties:
    def __init__(self, num_parties: int, state_dir: str, provider: str = DEALER_PROVIDER,
                 timeout: float = 300.0, rendezvous: str | None = None, spawn_ranks=None):
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
        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._procs = [ctx.Process(target=run_party, daemon=True, name=f"dvsecure-party-{r}",
                                   args=(r, num_parties, rendezvous, provider, f"{state_dir}/party-{r}",
                                         self._inbox if r == 0 else None, self._outbox if r == 0 else None))
                       for r in ranks]
        for p in self._procs:
            p.start()
        self.keys = self.call({"op": "keys"})["keys"]

    def call(self, cmd: dict) -> dict:
        """Send one command to the parties; party 0's answer."""
        if not self._procs:
            raise PartyError("the computing parties were stopped after an earlier failure")
        self._inbox.put(cmd)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                status, value = self._outbox.get(timeout=1.0)
                break
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.close()
                    raise PartyError(f"{', '.join(dead)} died" if dead else
                                     f"the computing parties did not answer within {self.timeout:.0f} s") from None
        if status != "ok":
            time.sleep(0.5)                      # a peer's death is usually why: name it
            dead = [p.name for p in self._procs if not p.is_alive()]
            self.close()
            raise PartyError(f"party 0 failed: {value}" + (f" ({', '.join(dead)} died)" if dead else ""))
        if "error" in value:
            raise PartyError(value["error"])
        return value

    def close(self) -> None:
        procs, self._procs = self._procs, []
        if procs and procs[0].is_alive():
            try:
                self._inbox.put(None)
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
