"""Test helper: n CrypTen parties and the TTP dealer as processes on authenticated
links (a fresh loopback roster, as `dvsecure.mpc.bench` does), each party running
`fn(crypten, rank, arg)`; returns party r's result, by rank. Every process is
always stopped."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member(fn, rank, world, roster, seed, arg, results):
    try:
        from dvsecure.log.note import Signer
        from dvsecure.mpc.compat import import_crypten, set_provider, use_secure_transport
        from dvsecure.mpc.links import establish
        from dvsecure.mpc.roster import Roster

        crypten = import_crypten()
        set_provider(crypten, "TTP")
        links = establish(Roster.from_dict(roster), rank, Signer(f"member-{rank}", seed), timeout=60,
                          link_timeout=120)
        use_secure_transport(crypten, rank, world, links, with_dealer=True)
        if rank == world:
            crypten.mpc.provider.TTPServer()
            crypten.uninit()
            results.put((rank, None, None))
            return
        crypten.init()
        out = fn(crypten, rank, arg)
        crypten.uninit()
        results.put((rank, out, None))
    except BaseException as e:                   # noqa: BLE001 - reported to the test
        results.put((rank, None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))


def run_members(fn, args, timeout: float = 180.0) -> list:
    from nacl.signing import SigningKey

    world = len(args)
    seeds = [os.urandom(32) for _ in range(world + 1)]
    keys = [bytes(SigningKey(s).verify_key) for s in seeds]
    import base64
    entry = [{"address": f"127.0.0.1:{_free_port()}", "key": base64.b64encode(k).decode()} for k in keys]
    roster = {"parties": entry[:world], "dealer": entry[world]}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(fn, r, world, roster, seeds[r], args[r] if r < world else None,
                                               results)) for r in range(world + 1)]
    for p in procs:
        p.start()
    out = [None] * world
    try:
        for _ in range(world + 1):
            rank, value, error = results.get(timeout=timeout)
            if error:
                raise AssertionError(f"member {rank}: {error}")
            if rank < world:
                out[rank] = value
    except queue.Empty:
        raise AssertionError(f"the members did not finish within {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return out
