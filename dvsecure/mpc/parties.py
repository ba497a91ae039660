"""Local computing parties: n CrypTen processes and a TTP dealer over gloo.

`LocalParties` starts the processes once (spawn, a file rendezvous in a private
temporary directory), feeds each party only its own sealed submissions, and
collects what rank 0 reveals. Every party opens its sealed shares itself
(`sharing.open_submission`: signature first, then decryption), so the
coordinator never holds a party's share in the clear once sealed.

Faults: a party that dies or stalls makes the batch fail with PartyError after
`timeout` seconds; the remaining processes are stopped, nothing is released,
and (the aggregator only commits after a successful evaluation) nothing is
charged for that batch.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from ..errors import DvsecureError

DEALER_PROVIDER = "TTP"


class PartyError(DvsecureError):
    """A computing party failed, stalled or disagreed; the batch released nothing."""


@dataclass(frozen=True)
class Job:
    """One batch, as each party sees it (messages are that party's only)."""

    messages: list[bytes]             # sealed, signed submissions addressed to this party
    source_ids: list[str]             # policy order
    query_ids: list[str]
    present: np.ndarray               # bool [Q, S]: which sources submitted for which query
    gammas: np.ndarray                # int64 [Q, S] public weights from the filter
    one_hot: list[bool]               # per source: its policy's vote kind
    num_classes: int
    threshold: int | None             # Confident-GNMax threshold on the 2**32 grid, or None (GNMax)
    sigma1: object = None             # Fraction: threshold noise scale on the tally grid (Confident only)
    sigma2: object = None             # Fraction: GNMax noise scale on the tally grid
    noise_mode: str = "no_noise"
    noise_seed: int | None = None     # seeded mode: this party's seed for this batch


def _party_main(rank: int, world: int, rendezvous: str, provider: str, party_key: bytes,
                source_keys: dict, inbox, outbox) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo")
    from .compat import import_crypten, set_provider

    crypten = import_crypten()
    set_provider(crypten, provider)
    if rank == world:                           # the dealer: Beaver triples, no inputs, no outputs
        crypten.mpc.provider.TTPServer()
        return
    from nacl.public import PrivateKey
    from nacl.signing import VerifyKey

    from .evaluate import evaluate_batch

    crypten.init()
    key = PrivateKey(party_key)
    verify = {sid: VerifyKey(k) for sid, k in source_keys.items()}
    try:
        while True:
            job = inbox.get()
            if job is None:
                break
            try:
                result = evaluate_batch(crypten, job, rank, world, key, verify)
            except Exception as e:                # reported to the coordinator, then stop
                outbox.put((rank, "error", f"{type(e).__name__}: {e}"))
                raise
            outbox.put((rank, "ok", result if rank == 0 else None))
    finally:
        crypten.uninit()


class LocalParties:
    def __init__(self, num_parties: int, party_keys: list[bytes], source_keys: dict[str, bytes],
                 provider: str = DEALER_PROVIDER, timeout: float = 300.0):
        if num_parties < 2:
            raise PartyError(f"MPC needs at least 2 computing parties, got {num_parties}")
        self.n = num_parties
        self.timeout = timeout
        self._dir = tempfile.mkdtemp(prefix="dvsecure-rdv-")
        ctx = mp.get_context("spawn")
        self._inboxes = [ctx.Queue() for _ in range(num_parties)]
        self._outbox = ctx.Queue()
        rendezvous = f"file://{self._dir}/rendezvous"
        self._procs = [ctx.Process(target=_party_main, daemon=True,
                                   args=(r, num_parties, rendezvous, provider,
                                         party_keys[r] if r < num_parties else b"", source_keys,
                                         self._inboxes[r] if r < num_parties else None, self._outbox))
                       for r in range(num_parties + (1 if provider == "TTP" else 0))]
        for p in self._procs:
            p.start()

    def run(self, jobs: list[Job]):
        """jobs[i] goes to party i; returns rank 0's result."""
        for inbox, job in zip(self._inboxes, jobs):
            inbox.put(job)
        result, done = None, set()
        while len(done) < self.n:
            try:
                rank, status, value = self._outbox.get(timeout=self.timeout)
            except queue.Empty:
                dead = [i for i, p in enumerate(self._procs) if not p.is_alive()]
                self.close()
                raise PartyError(f"computing parties did not finish within {self.timeout:.0f} s"
                                 + (f"; process(es) {dead} died" if dead else "")) from None
            if status != "ok":
                self.close()
                raise PartyError(f"party {rank} failed: {value}")
            done.add(rank)
            if rank == 0:
                result = value
        return result

    def close(self) -> None:
        for inbox, p in zip(self._inboxes, self._procs):
            if p.is_alive():
                try:
                    inbox.put(None)
                except (OSError, ValueError):
                    pass
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
