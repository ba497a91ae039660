"""`dvsecure bench --backend mpc`: what the secure pipeline costs, phase by phase,
over the protected transport deployments use, against plain gloo and against
CrypTen's built-in argmax on the same shared tally, all in the same run.

The same shares go through the same workload twice:
- "links" (the figures at the top level): parties and the TTP dealer on a
  loopback roster with fresh Ed25519 keys, talking over authenticated,
  encrypted links (`links.py`, `communicator.py`), every seed derived from the
  links' key agreement and every ring element from ChaCha20 (`compat.py`);
- "gloo" (`plain_gloo`): CrypTen's own communicator on a file rendezvous,
  plain TCP on loopback, seeds sent in the clear, MT19937 — kept only as the
  comparison, never for real data.

Each party reports wall time, communication rounds and bytes (CrypTen's own
counters, which count a tensor where it is sent and where it is received, so
they compare across transports) and, on the links, the bytes it really wrote
(`wire_bytes`: frames with their length header and AEAD tag) for: index votes
(one-hot votes travel as class indices shared mod C; the dealer's one-time
tables turn them into one-hot shares, opening only uniform masks:
`tables.py`), tally (local), the threshold test (its own private noise
shares, OpenDP; then max_j v_j + z >= T as one layer of C masked comparisons
and an OR, `compare.py`; reveals the answered bits) and the GNMax argmax
(noise shares, then all C (C - 1) / 2 pair comparisons in one layer and an AND
per candidate; reveals the labels) — and, as the baseline, `MPCTensor.argmax`
on the same tally. The dealer's bytes are attributed to the requests that
caused them (`dealer_by_request`): the pipeline's are the one-time tables'
and the comparisons'. `prg` compares the ChaCha20 generator with the MT19937
`torch.Generator` it replaces, in this process.
"""
from __future__ import annotations

import base64
import multiprocessing as mp
import os
import platform
import queue
import shutil
import socket
import tempfile
import time
import traceback
from fractions import Fraction

import numpy as np

from . import compare, tables
from .compat import import_crypten, set_provider
from .tables import index_shares

TRANSPORTS = ("links", "gloo")
PIPELINE = ("index_votes", "tally", "threshold", "gnmax_argmax")
BASELINE = "baseline_crypten_argmax"
DEALT = (tables.FUNCTION, compare.FUNCTION)      # the pipeline's dealer requests
GLOO_NOTE = "comparison only: plain TCP on loopback, seeds in the clear, MT19937; never for real data"


def _phase(comm, fn):
    comm.reset_communication_stats()
    wire = getattr(comm, "wire_bytes", None)
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    s = comm.get_communication_stats()
    stats = {"seconds": seconds, "rounds": s["rounds"], "bytes": s["bytes"]}
    if wire is not None:
        stats["wire_bytes"] = comm.wire_bytes - wire
    return out, stats


def _connect(crypten, transport, rank, world, join):
    """Point this process's CrypTen at the others, as `party._join` does: over
    links from the loopback roster, or over plain gloo (`join` is the roster and
    this member's key seed, or the file rendezvous)."""
    set_provider(crypten, "TTP")
    crypten.cfg.communicator.verbose = True          # CrypTen counts rounds and bytes only when verbose
    if transport == "gloo":
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=join, DISTRIBUTED_BACKEND="gloo",
                          GLOO_SOCKET_IFNAME="lo")
        return
    from ..log.note import Signer
    from .compat import use_secure_transport
    from .links import establish
    from .roster import Roster

    roster_dict, seed, timeout = join
    roster = Roster.from_dict(roster_dict)
    links = establish(roster, rank, Signer(f"bench-member-{rank}", seed), timeout=timeout, link_timeout=timeout)
    use_secure_transport(crypten, rank, world, links, with_dealer=True)


def _party(transport, rank, world, join, shares, num_classes, gammas, threshold, sigmas, noise_mode, seed, results):
    try:
        results.put(("done", rank, _run_member(transport, rank, world, join, shares, num_classes, gammas, threshold,
                                               sigmas, noise_mode, seed)))
    except BaseException as e:                       # the runner names the member and stops the rest
        results.put(("error", rank, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))
        raise


def _run_member(transport, rank, world, join, shares, num_classes, gammas, threshold, sigmas, noise_mode, seed):
    crypten = import_crypten()
    _connect(crypten, transport, rank, world, join)
    if rank == world:
        requests = _log_requests(crypten)
        crypten.mpc.provider.TTPServer()             # returns when party 0 says "terminate"
        comm = crypten.communicator.get()
        wire = getattr(comm, "wire_bytes", None)
        if wire is not None:                         # closes the links (the gloo dealer just exits, as before)
            crypten.uninit()
        return {"wire_bytes": wire, "by_request": _dealer_bytes(requests, wire)}
    import torch

    from ..noise import make_noise
    from . import secure
    from .evaluate import _noise_shares, batch_noise_demand

    crypten.init()
    # Seeded noise (tests) is the same at a rank on both transports, so their revealed outputs compare.
    noise = make_noise(noise_mode, seed=None if noise_mode == "private" else 1000 * seed + rank)
    comm = crypten.communicator.get()
    phases, revealed = {}, {}
    if noise.private:
        # As a deployed party does while the round waits for submissions (`Party._predraw`): the
        # batch's noise at most (every query answered) drawn ahead in the background. Timed apart.
        t = time.perf_counter()
        want = batch_noise_demand(sigmas[0], sigmas[1], shares[rank].shape[1], num_classes)
        for sigma, count in want.items():
            noise.reserve(sigma, count)
        while any(noise.ready(sigma) < count for sigma, count in want.items()):
            time.sleep(0.01)
        phases["noise_predraw"] = {"seconds": time.perf_counter() - t}
    bits, phases["index_votes"] = _phase(comm, lambda: tables.one_hot_shares(crypten, shares[rank], num_classes))
    x = crypten.mpc.MPCTensor.from_shares(bits, precision=0)
    one_hot = [True] * x.size(0)
    g = torch.from_numpy(gammas)
    tallies, phases["tally"] = _phase(comm, lambda: secure.tally(secure.to_tally_scale(x, one_hot), g))

    tally_max = secure.tally_bound(gammas)
    noise_s = {}

    def noise_shares(phase, sigma, shape):
        t = time.perf_counter()
        out = _noise_shares(crypten, noise, sigma, shape)
        noise_s[phase] = time.perf_counter() - t
        return out

    def threshold_test():                            # as evaluate_batch: one draw per query
        z = noise_shares("threshold", sigmas[0], (tallies.size(0),))
        bits = secure.threshold_bits(tally_max, threshold, sigmas[0], world)
        return secure.threshold_any(crypten, tallies, z, threshold, bits)

    def gnmax():
        rows = torch.from_numpy(np.nonzero(revealed["answered"])[0])
        if not rows.numel():
            return np.zeros(0, dtype=np.int64)
        noisy = tallies[rows] + noise_shares("gnmax_argmax", sigmas[1], (int(rows.numel()), tallies.size(1)))
        return secure.argmax_label(crypten, noisy, secure.argmax_bits(tally_max, sigmas[1], world))
    revealed["answered"], phases["threshold"] = _phase(comm, threshold_test)
    revealed["labels"], phases["gnmax_argmax"] = _phase(comm, gnmax)
    for k, seconds in noise_s.items():
        phases[k]["noise_seconds"] = seconds
    _, phases[BASELINE] = _phase(comm, lambda: tallies.argmax(dim=1).get_plain_text())
    crypten.uninit()
    return {"phases": phases, "revealed": revealed}


def _log_requests(crypten) -> list:
    """At the dealer: note, as each request arrives, its function and the bytes
    written so far, so the bytes between two requests (the reply) are the first's."""
    from crypten.mpc.provider import ttp_provider

    server, log = ttp_provider.TTPServer, []
    for name in list(ttp_provider.TTP_FUNCTIONS) + [tables.FUNCTION, compare.FUNCTION]:
        def counted(self, *args, _fn=getattr(server, name), _name=name, **kwargs):
            log.append((_name, getattr(crypten.communicator.get(), "wire_bytes", None)))
            out = _fn(self, *args, **kwargs)
            log.append((_name, "payload", out.nelement() * 8))
            return out
        setattr(server, name, counted)
    return log


def _dealer_bytes(log: list, final) -> dict:
    """Per request function: the dealer's link bytes (None on gloo) and payload bytes."""
    out: dict = {}
    starts = [(i, e) for i, e in enumerate(log) if len(e) == 2]
    for k, (i, (name, wire)) in enumerate(starts):
        entry = out.setdefault(name, {"wire_bytes": 0 if wire is not None else None, "payload_bytes": 0,
                                      "requests": 0})
        entry["requests"] += 1
        entry["payload_bytes"] += log[i + 1][2]
        if wire is not None:
            end = starts[k + 1][1][1] if k + 1 < len(starts) else final
            entry["wire_bytes"] += end - wire
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_roster(members: int):
    """A roster of free loopback ports with a fresh Ed25519 key per member (the
    last is the dealer), and each member's key seed."""
    from nacl.signing import SigningKey

    seeds = [bytes(SigningKey.generate()) for _ in range(members)]
    entries = [{"address": f"127.0.0.1:{_free_port()}",
                "key": base64.b64encode(bytes(SigningKey(s).verify_key)).decode()} for s in seeds]
    return {"parties": entries[:-1], "dealer": entries[-1]}, seeds


def _run_transport(transport, num_parties, shares, num_classes, gammas, threshold, sigmas, noise_mode, seed, timeout):
    """One run of every member over `transport`; per-member results by rank.
    Every process is stopped and the temporary directory removed, whatever happens."""
    members = num_parties + 1
    tmp = tempfile.mkdtemp(prefix="dvsecure-bench-")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = []
    try:
        if transport == "links":
            roster, seeds = _loopback_roster(members)
            joins = [(roster, seeds[r], min(timeout, 600.0)) for r in range(members)]
        else:
            joins = [f"file://{tmp}/rdv"] * members
        for r in range(members):
            procs.append(ctx.Process(target=_party, daemon=True,
                                     args=(transport, r, num_parties, joins[r], shares, num_classes, gammas, threshold,
                                           sigmas, noise_mode, seed, results)))
            procs[-1].start()
        out, deadline = {}, time.monotonic() + timeout
        while len(out) < members:
            try:
                kind, rank, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:
                    raise RuntimeError(f"bench over {transport}: member {dead[0]} exited with code "
                                       f"{procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench over {transport}: members did not finish within "
                                       f"{timeout:.0f} s") from None
                continue
            if kind == "error":
                raise RuntimeError(f"bench over {transport}: member {rank} failed: {payload}")
            out[rank] = payload
        for p in procs:                              # every member reported: let them exit
            p.join(timeout=10)
        return out
    finally:
        for p in procs:                              # on failure, at once: nothing is left running
            if p.is_alive():
                p.kill()
            p.join(timeout=10)
        results.close()
        results.join_thread()
        shutil.rmtree(tmp, ignore_errors=True)


def _summary(per_member: dict, num_parties: int, num_queries: int) -> dict:
    parties = [per_member[r]["phases"] for r in range(num_parties)]
    names = list(PIPELINE) + [BASELINE]
    slowest = {k: max(p[k]["seconds"] for p in parties) for k in names}
    sent = {k: max(p[k]["bytes"] for p in parties) for k in names}
    rounds = {k: parties[0][k]["rounds"] for k in names}      # party 0 also talks to the dealer: the most
    wire = {k: max(p[k]["wire_bytes"] for p in parties) for k in names} if "wire_bytes" in parties[0][names[0]] \
        else None
    pipeline_s = sum(slowest[k] for k in PIPELINE)
    noise_s = sum(max(p[k].get("noise_seconds", 0.0) for p in parties) for k in PIPELINE)
    predraw_s = max(p["noise_predraw"]["seconds"] for p in parties) if "noise_predraw" in parties[0] else None
    total_rounds = sum(rounds[k] for k in PIPELINE)
    out = {
        "pipeline_s": round(pipeline_s, 4), "rounds": total_rounds,
        "rounds_per_query": round(total_rounds / num_queries, 4),
        "bytes_per_query_per_party": round(sum(sent[k] for k in PIPELINE) / num_queries, 1),
    }
    by_request = per_member[num_parties]["by_request"]
    key = "wire_bytes" if wire is not None else "payload_bytes"
    out["dealer_bytes_per_query"] = round(sum(by_request.get(f, {key: 0})[key] for f in DEALT) / num_queries, 1)
    out["dealer_by_request"] = {name: {**{k: v for k, v in e.items() if v is not None},
                                       "bytes_per_query": round(e[key] / num_queries, 1)}
                                for name, e in by_request.items()}
    if wire is not None:
        out["wire_bytes_per_query_per_party"] = round(sum(wire[k] for k in PIPELINE) / num_queries, 1)
        dealer = per_member[num_parties]["wire_bytes"]
        out["dealer_wire_bytes_per_query"] = round(dealer / num_queries, 1)
        # Every byte of the run (pipeline and baseline): what all members wrote to their links, and
        # CrypTen's counts summed over the parties (a tensor counted where sent and where received).
        out["run_totals"] = {"wire_bytes_all_members": sum(p[k]["wire_bytes"] for p in parties for k in names)
                             + dealer,
                             "counted_bytes_all_parties": sum(p[k]["bytes"] for p in parties for k in names)}
    out.update({
        "baseline_crypten_argmax_s": round(slowest[BASELINE], 4),
        "baseline_bytes_per_query_per_party": round(sent[BASELINE] / num_queries, 1),
        "speedup_vs_baseline_argmax": round(slowest[BASELINE] / pipeline_s, 3),
        # The parties' noise inside the phases above (taking the pre-drawn samples, sharing them), and,
        # apart, the time their background draws took before the batch (OpenDP's exact sampler; as
        # deployed, while the round waits for submissions): the pipeline with it is shown too.
        "noise_s": round(noise_s, 4),
        "speedup_vs_baseline_argmax_without_noise": round(slowest[BASELINE] / max(pipeline_s - noise_s, 1e-9), 3),
        **({"noise_predraw_s": round(predraw_s, 4),
            "pipeline_with_predraw_s": round(pipeline_s + predraw_s, 4),
            "speedup_vs_baseline_argmax_with_predraw": round(slowest[BASELINE] / (pipeline_s + predraw_s), 3)}
           if predraw_s is not None else {}),
        "phases": {k: {"seconds": round(slowest[k], 4), "rounds": rounds[k],
                       "bytes_per_query_per_party": round(sent[k] / num_queries, 1),
                       **({"wire_bytes_per_query_per_party": round(wire[k] / num_queries, 1)} if wire else {}),
                       **({"noise_seconds": round(max(p[k]["noise_seconds"] for p in parties), 4)}
                          if "noise_seconds" in parties[0][k] else {})}
                   for k in names},
    })
    return out


def _revealed(per_member: dict, num_parties: int) -> dict:
    mine = [per_member[r]["revealed"] for r in range(num_parties)]
    for other in mine[1:]:
        if not all(np.array_equal(mine[0][k], other[k]) for k in mine[0]):
            raise RuntimeError("the computing parties revealed different outputs")
    return mine[0]


def prg_throughput(words: int = 1 << 20, repeats: int = 5) -> dict:
    """Words/s of the ChaCha20 generator and of the MT19937 torch.Generator it
    replaces, drawing the whole int64 ring as CrypTen does (best of `repeats`)."""
    import torch

    from .prg import ChaChaGenerator

    chacha, mt = ChaChaGenerator.fresh("bench"), torch.Generator().manual_seed(0)

    def best(fn):
        fn()                                         # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return words / min(times)
    chacha_rate = best(lambda: torch.from_numpy(chacha.words(words)))
    mt_rate = best(lambda: torch.randint(-(2 ** 63), 2 ** 63 - 1, (words,), generator=mt, dtype=torch.long))
    return {"words": words, "chacha20_words_per_s": round(chacha_rate), "mt19937_words_per_s": round(mt_rate),
            "chacha20_over_mt19937_ratio": round(chacha_rate / mt_rate, 3)}


WAN_RTT_S, WAN_BITS_PER_S = 0.020, 1e9
WAN_FORMULA = "rounds x RTT + bytes a party writes online / bandwidth (RTT 20 ms, 1 Gbit/s), the slowest party"


def wide_area_model(run: dict, num_queries: int) -> dict:
    """What the network alone would add between machines: every round waits one
    round trip, and the bytes a party writes to its links (the pipeline's, framing
    included) go out at the bandwidth. A model on paper (this machine has no
    netem), next to the measured local time."""
    network = run["rounds"] * WAN_RTT_S + run["wire_bytes_per_query_per_party"] * num_queries * 8 / WAN_BITS_PER_S
    return {"formula": WAN_FORMULA, "rtt_s": WAN_RTT_S, "bandwidth_bit_per_s": WAN_BITS_PER_S,
            "network_s": round(network, 4), "network_s_per_query": round(network / num_queries, 6),
            "with_local_pipeline_s": round(network + run["pipeline_s"], 4)}


def run_bench(num_queries: int, num_classes: int, num_sources: int, num_parties: int, seed: int = 0,
              timeout: float = 3600.0, noise: str = "private") -> dict:
    """Both transports on the same shares; the top-level figures are the
    protected run's. `noise`: "private" (OpenDP, as deployed) or "seeded"
    (reproducible, so both runs reveal the same outputs; tests only)."""
    if noise not in ("private", "seeded"):
        raise ValueError(f"noise must be 'private' or 'seeded', got {noise!r}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(num_sources, num_queries))     # one-hot votes, as indices
    gammas = rng.integers(1 << 10, 1 << 14, size=(num_queries, num_sources)).astype(np.int64)
    threshold = int(0.3 * num_sources * (1 << 12) * (1 << 16))
    sigmas = (Fraction(1, 2) * (1 << 32), Fraction(1, 2) * (1 << 32))     # sigma = 0.5 in weight units
    shares = index_shares(labels, num_parties, num_classes)
    runs = {t: _run_transport(t, num_parties, shares, num_classes, gammas, threshold, sigmas, noise, seed, timeout)
            for t in TRANSPORTS}
    protected, plain = (_summary(runs[t], num_parties, num_queries) for t in TRANSPORTS)
    revealed = {t: _revealed(runs[t], num_parties) for t in TRANSPORTS}
    same = {k: bool(np.array_equal(revealed["links"][k], revealed["gloo"][k])) for k in revealed["links"]}
    return {
        "benchmark": "mpc secure pipeline", "python": platform.python_version(), "machine": platform.machine(),
        "cores": os.cpu_count(), "queries": num_queries, "classes": num_classes, "sources": num_sources,
        "parties": num_parties, "provider": "TTP",
        "noise": "private (OpenDP shares in every party)" if noise == "private"
                 else "seeded (reproducible; not private)",
        "transport": "links: authenticated X25519 key agreement, ChaCha20-Poly1305 frames, ChaCha20 PRG",
        **protected,
        "plain_gloo": {"note": GLOO_NOTE, **plain},
        "protected_over_plain_time_ratio": round(protected["pipeline_s"] / plain["pipeline_s"], 3),
        "bytes_note": "bytes_per_query_per_party: CrypTen's counters, the same on both transports (a tensor "
                      "counts where it is sent and where it is received, so party 0's include the dealer's "
                      "corrections it receives); wire_bytes_per_query_per_party: what a party really sends "
                      "online, i.e. writes to its links (frames with length header and AEAD tag, its requests to "
                      "the dealer too); dealer_bytes_per_query: what the dealer writes for the pipeline's "
                      "requests (dealer_by_request), dealer_wire_bytes_per_query: all it writes in the run",
        "revealed": {"answered": int(revealed["links"]["answered"].sum()),
                     "same_on_both_transports": same,
                     **({"note": "private noise differs between the runs: the outputs need not agree"}
                        if noise == "private" else {})},
        "wide_area_model": wide_area_model(protected, num_queries),
        "prg": prg_throughput(),
    }


def human_summary(r: dict) -> str:
    """The figures a person reads (the JSON has them all)."""
    p, g, prg = r, r["plain_gloo"], r["prg"]
    q = r["queries"]
    lines = [
        f"MPC secure pipeline: {q} queries, C={r['classes']}, S={r['sources']}, n={r['parties']} + TTP dealer, "
        f"{r['noise']}",
        f"  protected links : {p['pipeline_s']:.3f} s, {p['rounds']} rounds ({p['rounds_per_query']:.4g}/query), "
        f"{p['bytes_per_query_per_party'] / 1000:.2f} KB/query/party counted, "
        f"{p['wire_bytes_per_query_per_party'] / 1000:.2f} KB/query/party on the wire "
        f"(dealer {p['dealer_bytes_per_query'] / 1000:.2f} KB/query for the pipeline, "
        f"{p['dealer_wire_bytes_per_query'] / 1000:.2f} KB/query whole run)",
        f"  plain gloo      : {g['pipeline_s']:.3f} s, {g['rounds']} rounds, "
        f"{g['bytes_per_query_per_party'] / 1000:.2f} KB/query/party counted  [{GLOO_NOTE}]",
        f"  protected / plain pipeline time: {r['protected_over_plain_time_ratio']:.3f}x",
        f"  CrypTen argmax on the same tally (links): {p['baseline_crypten_argmax_s']:.3f} s, "
        f"{p['baseline_bytes_per_query_per_party'] / 1000:.2f} KB/query/party "
        f"(pipeline at {p['speedup_vs_baseline_argmax']:.3f}x its speed; the parties' noise draws take "
        f"{p['noise_s']:.3f} s of it, without them {p['speedup_vs_baseline_argmax_without_noise']:.3f}x)",
        *([f"  noise drawn ahead (as parties do while a round waits): {p['noise_predraw_s']:.3f} s; pipeline "
           f"with it {p['pipeline_with_predraw_s']:.3f} s = {p['speedup_vs_baseline_argmax_with_predraw']:.3f}x"]
          if "noise_predraw_s" in p else []),
        f"  wide area (model): {r['wide_area_model']['network_s']:.3f} s of network "
        f"({r['wide_area_model']['network_s_per_query'] * 1e3:.3f} ms/query) = {WAN_FORMULA}; "
        f"with the local pipeline {r['wide_area_model']['with_local_pipeline_s']:.3f} s",
        f"  PRG: ChaCha20 {prg['chacha20_words_per_s'] / 1e6:.1f} M words/s, MT19937 torch.Generator "
        f"{prg['mt19937_words_per_s'] / 1e6:.1f} M words/s (ratio {prg['chacha20_over_mt19937_ratio']:.3f})",
    ]
    for k, v in p["phases"].items():
        lines.append(f"    {k:<24} {v['seconds']:8.3f} s {v['rounds']:5d} rounds "
                     f"{v['bytes_per_query_per_party'] / 1000:8.2f} KB counted "
                     f"{v.get('wire_bytes_per_query_per_party', 0) / 1000:8.2f} KB wire  "
                     f"| gloo {g['phases'][k]['seconds']:8.3f} s")
    return "\n".join(lines)
