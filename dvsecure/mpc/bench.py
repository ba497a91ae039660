"""`dvsecure bench --backend mpc`: what the secure pipeline costs, phase by phase,
against CrypTen's built-in argmax on the same shared tally, in the same run.

Each party reports wall time, communication rounds and bytes it sent (CrypTen's
own counters) for: validation (reveals pass/fail bits), tally (local), and the
release — its own private noise shares (OpenDP), the threshold check on a tree
maximum, then a second tree argmax over the noisy tallies of answered queries
(reveals answered bits and labels) — and, as the baseline, `MPCTensor.argmax`
on the same tally.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import shutil
import tempfile
import time
from fractions import Fraction

import numpy as np

from .compat import import_crypten, set_provider
from .sharing import share


def _stats(comm):
    s = comm.get_communication_stats()
    return s["rounds"], s["bytes"]


def _phase(comm, fn):
    comm.reset_communication_stats()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    rounds, sent = _stats(comm)
    return out, {"seconds": seconds, "rounds": rounds, "bytes": sent}


def _party(rank, world, rendezvous, shares, gammas, threshold, sigmas, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo")
    crypten = import_crypten()
    set_provider(crypten, "TTP")
    crypten.cfg.communicator.verbose = True          # CrypTen counts rounds and bytes only when verbose
    if rank == world:
        crypten.mpc.provider.TTPServer()
        return
    import torch

    from ..noise import PrivateNoise
    from . import secure
    from .evaluate import _noise_shares

    crypten.init()
    noise = PrivateNoise()
    comm = crypten.communicator.get()
    x = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(shares[rank].view(np.int64)), precision=0)
    one_hot = [True] * x.size(0)
    phases = {}
    valid, phases["validation"] = _phase(comm, lambda: secure.validate(x, one_hot).long())
    g = torch.from_numpy(gammas) * valid.t()
    tallies, phases["tally"] = _phase(comm, lambda: secure.tally(secure.to_tally_scale(x, one_hot), g))

    def release():
        top, _ = secure.argmax_tree(tallies)
        noisy_top = top + _noise_shares(crypten, noise, sigmas[0], (tallies.size(0),))
        answered = (noisy_top - threshold).ge(0).get_plain_text().long().bool()
        rows = torch.nonzero(answered).flatten()
        if not rows.numel():
            return None
        noisy = tallies[rows] + _noise_shares(crypten, noise, sigmas[1], (int(rows.numel()), tallies.size(1)))
        return secure.argmax_tree(noisy)[1].get_plain_text()
    _, phases["threshold_argmax_reveal"] = _phase(comm, release)
    _, phases["baseline_crypten_argmax"] = _phase(comm, lambda: tallies.argmax(dim=1).get_plain_text())
    crypten.uninit()
    results.put((rank, phases))


def run_bench(num_queries: int, num_classes: int, num_sources: int, num_parties: int, seed: int = 0,
              timeout: float = 3600.0) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(num_sources, num_queries))
    votes = np.zeros((num_sources, num_queries, num_classes), np.int64)
    np.put_along_axis(votes, labels[..., None], 1, axis=2)          # one-hot votes travel as bits
    gammas = rng.integers(1 << 10, 1 << 14, size=(num_queries, num_sources)).astype(np.int64)
    threshold = int(0.3 * num_sources * (1 << 12) * (1 << 16))
    sigmas = (Fraction(1, 2) * (1 << 32), Fraction(1, 2) * (1 << 32))     # sigma = 0.5 in weight units
    shares = share(votes, num_parties)
    tmp = tempfile.mkdtemp(prefix="dvsecure-bench-")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_party, daemon=True,
                         args=(r, num_parties, f"file://{tmp}/rdv", shares, gammas, threshold, sigmas, results))
             for r in range(num_parties + 1)]
    for p in procs:
        p.start()
    per_party = {}
    try:
        while len(per_party) < num_parties:
            rank, phases = results.get(timeout=timeout)
            per_party[rank] = phases
    except queue.Empty:
        raise RuntimeError(f"benchmark parties did not finish within {timeout:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    names = ["validation", "tally", "threshold_argmax_reveal"]
    slowest = {k: max(per_party[r][k]["seconds"] for r in per_party) for k in names + ["baseline_crypten_argmax"]}
    sent = {k: max(per_party[r][k]["bytes"] for r in per_party) for k in names + ["baseline_crypten_argmax"]}
    rounds = {k: per_party[0][k]["rounds"] for k in names + ["baseline_crypten_argmax"]}
    pipeline_s = sum(slowest[k] for k in names)
    pipeline_bytes = sum(sent[k] for k in names)
    return {
        "benchmark": "mpc secure pipeline", "python": platform.python_version(), "machine": platform.machine(),
        "cores": os.cpu_count(), "queries": num_queries, "classes": num_classes, "sources": num_sources,
        "parties": num_parties, "provider": "TTP", "noise": "private (OpenDP shares in every party)",
        "pipeline_s": round(pipeline_s, 4), "rounds": sum(rounds[k] for k in names),
        "bytes_per_query_per_party": round(pipeline_bytes / num_queries, 1),
        "baseline_crypten_argmax_s": round(slowest["baseline_crypten_argmax"], 4),
        "baseline_bytes_per_query_per_party": round(sent["baseline_crypten_argmax"] / num_queries, 1),
        "speedup_vs_baseline_argmax": round(slowest["baseline_crypten_argmax"] / pipeline_s, 3),
        "phases": {k: {"seconds": round(slowest[k], 4), "rounds": rounds[k],
                       "bytes_per_query_per_party": round(sent[k] / num_queries, 1)}
                   for k in names + ["baseline_crypten_argmax"]},
    }
