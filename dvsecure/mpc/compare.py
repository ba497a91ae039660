"""Exact comparisons with zero from one masked opening and the dealer's lookup tables.

CrypTen's `ge` converts a 64-bit arithmetic sharing to XOR sharing with two
64-bit Kogge-Stone adders (about 14 AND rounds and 0.9 KB per comparison per
party). dvsecure's values have a public bound, so this module compares instead
with a mask, in the manner of edaBits (Escudero, Ghosh, Keller, Rachuri, Scholl,
CRYPTO 2020) and of Catrina & de Hoogh's masked comparison (SCN 2010), with the
dealer's correlated randomness taking the place of the bit decomposition:

- For each value x with -2**L <= x < 2**L (L = `low_bits`, a multiple of 4), the
  parties hold u = x + 2**L in [0, 2**(L+1)), so [x >= 0] is bit L of u. The
  dealer deals r uniform mod 2**64, arithmetically shared, and, XOR-shared, for
  every 4-bit chunk r_k of r mod 2**L two 16-entry tables: LT_k[v] = [v < r_k]
  and EQ_k[v] = [v == r_k] (the top chunk's LT also XORed with bit L of r).
- The parties open c = u + r mod 2**64 (one round; uniform whatever x is, since
  r is). Then u = (c - r) mod 2**(L+1), so bit L of u is c_L ^ r_L ^ [c' < r']
  with c', r' the low L bits. Each party reads its share of [c_k < r_k] and
  [c_k == r_k] at the public index c_k, locally (a one-time truth table, Ishai
  et al. TCC 2013), and the chunks combine from the top down:
  LT = LT_hi ^ EQ_hi & LT_lo, EQ = EQ_hi & EQ_lo (the two terms of LT exclude
  each other, so XOR is OR): log2(L / 4) AND rounds on bits.
- ANDs of XOR-shared bits use the dealer's binary Beaver triples, opening
  x ^ a and y ^ b (uniform bits).

So a comparison costs one opened ring element and 2 L / 4 - 1 opened bit pairs
per party (about 27 bytes written per party at L = 48, n = 3, against CrypTen's
0.9 KB), log2(L / 4) + 1 rounds, and 6 + a few bit-triple words from the dealer.
The result stays XOR-shared: the threshold test and the argmax (`secure.py`)
combine such bits further and reveal only their final answer. For many classes
the argmax also selects shared values with shared bits (`Selection`: a dealt
random bit rho, XOR- and arithmetically shared, and a product rho * a; one bit
and one ring element opened per product, both uniform).

Exactness: the comparison is exact whenever |x| < 2**L. `low_bits` takes a
public bound on |x|; values include discrete Gaussian noise, whose tail bound
(`noise_tail`) fails with probability below 2**-128 per value (N_Z(0, s^2) is
s-subgaussian: Canonne, Kamath & Steinke 2020, Corollary 9; independent draws
add their variance proxies), so over a whole batch (at most 2**25 x 4096
comparisons) the outputs equal the plaintext backend's except with probability
below 2**-90. Without noise the bound is deterministic and the comparisons exact.

What the dealer learns: r, every table, triple, rho and a, so together with any
one computing party's view (which includes c) it could learn each compared
value; it sees nothing of the values by itself. This is the trust the TTP
already holds for every Beaver triple. The computing parties see c (uniform)
and the Beaver openings (uniform bits), nothing else, until a result is revealed.
"""
from __future__ import annotations

import math

import numpy as np

FUNCTION = "dvsecure_compare"      # the dealer's request name (`compat` registers `deal` under it)
CHUNK = 4                          # bits per table: 16-entry tables, LT and EQ in one uint32
MAX_LOW_BITS = 60                  # u = x + 2**L must fit the signed ring with room for the chunks
TAIL = 13.4                        # 2 exp(-TAIL**2 / 2) < 2**-128: the subgaussian tail bound


def noise_tail(sigma, draws: int) -> int:
    """A bound B on |sum of `draws` independent N_Z(0, sigma^2)| that fails with
    probability below 2**-128 (sqrt(draws) sigma-subgaussian, CKS 2020 Cor. 9:
    P[|Z| >= t] <= 2 exp(-t^2 / (2 draws sigma^2))). sigma None or 0: no noise."""
    if not sigma:
        return 0
    return int(math.ceil(TAIL * math.sqrt(draws) * float(sigma) * (1 + 1e-9))) + 1


def low_bits(bound: int) -> int:
    """The L (a multiple of CHUNK) with every |x| <= bound in [-2**L, 2**L)."""
    bound = int(bound)
    if bound < 0:
        raise ValueError(f"a bound on |x| must be >= 0, got {bound}")
    bits = max(CHUNK, -(-bound.bit_length() // CHUNK) * CHUNK)          # bound < 2**bits
    if bits > MAX_LOW_BITS:
        raise ValueError(f"values up to {bound} (2**{bound.bit_length()}) exceed the comparisons' "
                         f"{MAX_LOW_BITS}-bit range")
    return bits


def combine_ands(chunks: int) -> int:
    """ANDs per comparison in `ge_zero`'s chunk tree (the lowest group never needs EQ)."""
    ands, groups = 0, chunks
    while groups > 1:
        ands += 2 * (groups // 2) - 1
        groups = -(-groups // 2)
    return ands


# ---- bits and words -----------------------------------------------------------------------

def _to_words(bits: np.ndarray) -> np.ndarray:
    packed = np.packbits(np.ascontiguousarray(bits, dtype=np.uint8).ravel(), bitorder="little")
    pad = (-packed.size) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(pad, dtype=np.uint8)])
    return packed.view(np.int64)


def _to_bits(words: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")[:count]


def _draw(generator, count: int) -> np.ndarray:
    """`count` ring words from a dealer-shared generator, as CrypTen draws them
    (`crypten.common.rng`, ChaCha20 on dvsecure's links)."""
    from crypten.common import rng

    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.generate_random_ring_element((count,), generator=generator).numpy()


def _table_words(count: int, chunks: int) -> int:
    return -(-count * chunks // 2)


# ---- the dealer ---------------------------------------------------------------------------

def deal(server, count: int, bits: int, ands: int):
    """The dealer's side (a `TTPServer` method once `compat` registers it). From
    every party's generator, in the order that party draws them (`Material`):
    r_i (count words), its table shares (parties 1..n-1), its triple shares a_i,
    b_i and (parties 1..n-1) c_i. Returns party 0's corrections: its table
    shares, then its c shares, as int64 words."""
    import torch

    chunks, words = bits // CHUNK, -(-ands // 64)
    gens = server._get_generators(device="cpu")
    r = np.zeros(count, dtype=np.uint64)
    tables = np.zeros(2 * _table_words(count, chunks), dtype=np.uint32)
    a = np.zeros(words, dtype=np.int64)
    b = np.zeros(words, dtype=np.int64)
    c = np.zeros(words, dtype=np.int64)
    with np.errstate(over="ignore"):
        for i, g in enumerate(gens):
            r += _draw(g, count).view(np.uint64)
            if i:
                tables ^= _draw(g, _table_words(count, chunks)).view(np.uint32)
            a ^= _draw(g, words)
            b ^= _draw(g, words)
            if i:
                c ^= _draw(g, words)
    shifts = (np.arange(chunks, dtype=np.uint64) * np.uint64(CHUNK))[None, :]
    rho = ((r[:, None] >> shifts) & np.uint64(15)).astype(np.uint32)            # r's low chunks [count, m]
    lt = (np.uint32(1) << rho) - np.uint32(1)                                   # entry v set iff v < r_k
    lt[:, -1] ^= ((r >> np.uint64(bits)) & np.uint64(1)).astype(np.uint32) * np.uint32(0xFFFF)
    full = np.zeros_like(tables)
    full[:count * chunks] = (lt | (np.uint32(1) << (rho + np.uint32(16)))).ravel()
    correction = np.concatenate([(full ^ tables).view(np.int64), (a & b) ^ c])
    return torch.from_numpy(correction)


# ---- a party's material -------------------------------------------------------------------

class Material:
    """This party's share of one request's dealer material: masks r (int64),
    tables (uint32 [count, chunks]) and `ands` bit triples, handed out in order."""

    def __init__(self, crypten, count: int, bits: int, ands: int):
        import crypten.communicator as comm
        from crypten.mpc.provider.ttp_provider import TTPClient

        if bits % CHUNK or not CHUNK <= bits <= MAX_LOW_BITS:
            raise ValueError(f"low bits {bits}: need a multiple of {CHUNK} in {CHUNK}..{MAX_LOW_BITS}")
        self.count, self.bits, self.chunks, self.ands = count, bits, bits // CHUNK, ands
        words = -(-ands // 64)
        tw = _table_words(count, self.chunks)
        client = TTPClient.get()
        g = client.get_generator(device="cpu")
        self.rank = comm.get().get_rank()
        self.r = _draw(g, count)
        if self.rank == 0:
            a, b = _draw(g, words), _draw(g, words)
            got = client.ttp_request(FUNCTION, None, count, bits, ands).numpy() if count or ands else \
                np.zeros(0, dtype=np.int64)
            if got.size != tw + words:
                raise RuntimeError(f"the dealer sent {got.size} words where {tw + words} were expected")
            tables, c = got[:tw], got[tw:]
        else:
            tables = _draw(g, tw)
            a, b, c = _draw(g, words), _draw(g, words), _draw(g, words)
        self.tables = tables.view(np.uint32)[:count * self.chunks].reshape(count, self.chunks)
        self._a, self._b, self._c = (_to_bits(w, ands) for w in (a, b, c))
        self._used = 0

    def triples(self, n: int):
        if self._used + n > self.ands:
            raise RuntimeError(f"{self._used + n} bit triples asked of a request for {self.ands}")
        s = slice(self._used, self._used + n)
        self._used += n
        return self._a[s], self._b[s], self._c[s]

    def check_used(self) -> None:
        if self._used != self.ands:
            raise RuntimeError(f"{self._used} of {self.ands} bit triples used")


# ---- the online protocol -------------------------------------------------------------------

def open_bits(comm, bits: np.ndarray) -> np.ndarray:
    """Reveal XOR-shared bits (uint8 0/1, any shape) to every party: one round."""
    import torch
    from torch.distributed import ReduceOp

    bits = np.asarray(bits, dtype=np.uint8)
    if not bits.size:
        return bits.copy()
    words = comm.all_reduce(torch.from_numpy(_to_words(bits)), op=ReduceOp.BXOR).numpy()
    return _to_bits(words, bits.size).reshape(bits.shape)


def bit_and(comm, x: np.ndarray, y: np.ndarray, material: Material) -> np.ndarray:
    """XOR shares of x & y (same shapes, uint8 0/1) with binary Beaver triples:
    opens x ^ a and y ^ b, one round."""
    n = x.size
    if not n:
        return np.zeros(x.shape, dtype=np.uint8)
    a, b, c = material.triples(n)
    ef = open_bits(comm, np.concatenate([x.ravel() ^ a, y.ravel() ^ b]))
    e, f = ef[:n], ef[n:]
    z = c ^ (e & b) ^ (f & a)
    if material.rank == 0:
        z ^= e & f
    return z.reshape(x.shape)


def and_reduce(comm, bits: np.ndarray, material: Material) -> np.ndarray:
    """XOR shares of the AND over the last axis, as a tree: ceil(log2 w) rounds,
    w - 1 ANDs per row."""
    while bits.shape[-1] > 1:
        w = bits.shape[-1]
        even = w - w % 2
        top = bit_and(comm, bits[..., 0:even:2], bits[..., 1:even:2], material)
        bits = np.concatenate([top, bits[..., even:]], axis=-1) if w % 2 else top
    return bits[..., 0]


def ge_zero(comm, x_share: np.ndarray, material: Material) -> np.ndarray:
    """XOR shares (uint8) of [x >= 0] for arithmetic shares x (int64, mod 2**64)
    with |x| < 2**L, L = material.bits. Opens c = x + 2**L + r (uniform), then
    1 + ceil(log2(L / 4)) rounds in all; uses the next comparisons' worth of
    `material` (all of its masks and tables)."""
    import torch

    x = np.asarray(x_share, dtype=np.int64).ravel()
    if x.size != material.count:
        raise ValueError(f"{x.size} values for material dealt for {material.count}")
    L, rank = material.bits, material.rank
    with np.errstate(over="ignore"):
        mine = x.view(np.uint64) + material.r.view(np.uint64)
        if rank == 0:
            mine += np.uint64(1 << L)
    c = comm.all_reduce(torch.from_numpy(mine.view(np.int64))).numpy().view(np.uint64)   # reveal: uniform
    shifts = (np.arange(material.chunks, dtype=np.uint64) * np.uint64(CHUNK))[None, :]
    ck = ((c[:, None] >> shifts) & np.uint64(15)).astype(np.uint32)
    lt = ((material.tables >> ck) & np.uint32(1)).astype(np.uint8)          # local lookups at public c_k
    eq = ((material.tables >> (ck + np.uint32(16))) & np.uint32(1)).astype(np.uint8)
    while lt.shape[1] > 1:                     # groups of chunks, lowest first
        g = lt.shape[1]
        even = g - g % 2
        lo_lt, hi_lt, lo_eq, hi_eq = lt[:, 0:even:2], lt[:, 1:even:2], eq[:, 0:even:2], eq[:, 1:even:2]
        p = hi_lt.shape[1]
        prod = bit_and(comm, np.concatenate([hi_eq.ravel(), hi_eq[:, 1:].ravel()]),
                       np.concatenate([lo_lt.ravel(), lo_eq[:, 1:].ravel()]), material)
        n = lt.shape[0]
        new_lt = hi_lt ^ prod[:lo_lt.size].reshape(n, p)
        new_eq = np.zeros_like(new_lt)         # the lowest group's EQ is never used
        if p > 1:
            new_eq[:, 1:] = prod[lo_lt.size:].reshape(n, p - 1)
        if g % 2:
            new_lt = np.concatenate([new_lt, lt[:, even:]], axis=1)
            new_eq = np.concatenate([new_eq, eq[:, even:]], axis=1)
        lt, eq = new_lt, new_eq
    out = lt[:, 0]
    if rank == 0:
        out = out ^ ((c >> np.uint64(L)) & np.uint64(1)).astype(np.uint8)
    return out


# ---- selecting shared values with shared bits (large C: the argmax's later rounds) ---------
# For a XOR-shared bit b and an arithmetic share of y, the dealer deals a random bit
# rho, XOR-shared and arithmetically shared, a random a and shares of rho * a. The
# parties open m = b ^ rho (a uniform bit) and e = y - a (uniform); then
# b = m + (1 - 2m) rho and b y = m y + (1 - 2m)(e rho + rho a), all local: one
# product costs one bit and one ring element opened (a public y needs no e).

SELECT = "dvsecure_select"         # the dealer's request name (`compat` registers `deal_select` under it)


def deal_select(server, count: int, values: int):
    """The dealer's side of `Selection`: from every party's generator, in its order,
    the XOR shares of rho, then (parties 1..n-1) the arithmetic shares of rho, then
    for each of `values` shared values a_i and (parties 1..n-1) shares of rho a.
    Returns party 0's corrections: its shares of rho, then of each rho a."""
    import torch

    words = -(-count // 64)
    gens = server._get_generators(device="cpu")
    rho_bits = np.zeros(words, dtype=np.int64)
    rho_others = np.zeros(count, dtype=np.uint64)
    a = np.zeros((values, count), dtype=np.uint64)
    prod_others = np.zeros((values, count), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, g in enumerate(gens):
            rho_bits ^= _draw(g, words)
            if i:
                rho_others += _draw(g, count).view(np.uint64)
            for v in range(values):
                a[v] += _draw(g, count).view(np.uint64)
                if i:
                    prod_others[v] += _draw(g, count).view(np.uint64)
        rho = _to_bits(rho_bits, count).astype(np.uint64)
        out = [rho - rho_others] + [rho * a[v] - prod_others[v] for v in range(values)]
    return torch.from_numpy(np.concatenate(out).view(np.int64))


class Selection:
    """This party's share of one `deal_select` request: `count` bits to select with,
    for `values` shared values (and any number of public ones)."""

    def __init__(self, crypten, count: int, values: int):
        import crypten.communicator as comm
        from crypten.mpc.provider.ttp_provider import TTPClient

        self.count, self.values = count, values
        words = -(-count // 64)
        client = TTPClient.get()
        g = client.get_generator(device="cpu")
        self.rank = comm.get().get_rank()
        self.rho_bits = _to_bits(_draw(g, words), count)
        if self.rank == 0:
            self.a = [_draw(g, count) for _ in range(values)]
            got = client.ttp_request(SELECT, None, count, values).numpy()
            if got.size != count * (values + 1):
                raise RuntimeError(f"the dealer sent {got.size} words where {count * (values + 1)} were expected")
            self.rho, self.prods = got[:count], [got[count * (v + 1):count * (v + 2)] for v in range(values)]
        else:
            self.rho = _draw(g, count)
            self.a, self.prods = [], []
            for _ in range(values):
                self.a.append(_draw(g, count))
                self.prods.append(_draw(g, count))

    def select(self, comm, bits: np.ndarray, shared: list, public: list) -> tuple[list, list]:
        """Arithmetic shares of b * y for XOR-shared bits b (uint8, `count` of them,
        any shape) and each y in `shared` (int64 shares) and `public` (int64), of
        b's shape. Two rounds: open b ^ rho, then every y - a at once."""
        import torch

        shape = bits.shape
        if bits.size != self.count or len(shared) != self.values:
            raise ValueError("a selection for other sizes than dealt")
        m = open_bits(comm, bits.ravel() ^ self.rho_bits).astype(np.uint64)          # reveal: uniform bits
        with np.errstate(over="ignore"):
            mine = np.concatenate([np.asarray(y, dtype=np.int64).ravel().view(np.uint64) - a.view(np.uint64)
                                   for y, a in zip(shared, self.a)]) if shared else np.zeros(0, np.uint64)
            e = comm.all_reduce(torch.from_numpy(mine.view(np.int64))).numpy().view(np.uint64) if shared else mine
            flip = np.uint64(1) - np.uint64(2) * m                                        # 1 - 2m, mod 2**64
            b = flip * self.rho.view(np.uint64)                                           # shares of b
            if self.rank == 0:
                b += m
            out_shared = []
            for v, y in enumerate(shared):
                ev = e[v * self.count:(v + 1) * self.count]
                rho_y = ev * self.rho.view(np.uint64) + self.prods[v].view(np.uint64)     # shares of rho y
                by = m * np.asarray(y, dtype=np.int64).ravel().view(np.uint64) + flip * rho_y
                out_shared.append(by.view(np.int64).reshape(shape))
            out_public = [(b * np.asarray(y, dtype=np.int64).ravel().view(np.uint64)).view(np.int64).reshape(shape)
                          for y in public]
        return out_shared, out_public
