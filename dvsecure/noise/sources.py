"""Noise sources: one interface, three modes (see package docstring)."""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..errors import ParameterError

PRIVATE = "private"
SEEDED = "seeded"
NO_NOISE = "no_noise"

# OpenDP's integer noise works on i64; the grid noise must stay far inside it.
_MAX_GRID_SIGMA = float(2 ** 52)


class NoiseSource:
    """Draws i.i.d. N_Z(0, sigma^2) samples, sigma given on the integer grid."""

    mode: str = ""

    @property
    def private(self) -> bool:
        return self.mode == PRIVATE

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def reserve(self, sigma: Fraction, count: int) -> None:
        """Draw `count` samples ahead if this source can (only private noise does:
        seeded noise must come in its seed's order, and zeros cost nothing)."""

    @staticmethod
    def _check(sigma: Fraction, size: int) -> None:
        if sigma <= 0:
            raise ParameterError(f"noise scale must be > 0, got {sigma}")
        if float(sigma) > _MAX_GRID_SIGMA:
            raise ParameterError(f"noise scale {float(sigma):.3g} on the tally grid is too large for i64 noise")
        if size < 0:
            raise ParameterError(f"sample size must be >= 0, got {size}")


@lru_cache(maxsize=64)
def _opendp_measurement(sigma: float):
    # The modules themselves, not opendp.prelude: the prelude also imports opendp's
    # scikit-learn extras whenever scikit-learn is installed (over a second at start).
    try:
        from opendp.domains import atom_domain, vector_domain
        from opendp.measurements import make_gaussian
        from opendp.metrics import l2_distance
        from opendp.mod import enable_features
    except ImportError as e:
        # Only the computing roles sample noise; never fall back to another sampler.
        raise ParameterError("private noise needs OpenDP's exact sampler, which only the computing roles "
                             "(parties, enclave, plaintext aggregator) install: pip install 'dvsecure[compute]' "
                             f"(the mpc extra includes it) (missing: {e.name})") from None

    enable_features("contrib")
    # "i64", never `int`: opendp maps Python int to i32, which saturates.
    return make_gaussian(vector_domain(atom_domain(T="i64")), l2_distance(T="i64"), scale=sigma)


class _Pool:
    """Drawn, not yet used samples of one scale, in order; each is handed out once."""

    def __init__(self):
        self.chunks: deque[np.ndarray] = deque()
        self.pos = 0          # next unused sample of chunks[0]
        self.ready = 0        # unused samples in all chunks
        self.used = 0         # samples handed out so far
        self.reserved = 0     # samples asked for ahead (`PrivateNoise.reserve`) and not yet taken

    def target(self, noise: "PrivateNoise") -> int:
        """How many samples the refill keeps ready: what was reserved, and AHEAD
        once the scale is in steady use."""
        return max(self.reserved, noise.AHEAD if self.used >= noise.CHUNK else 0)

    def add(self, samples: np.ndarray) -> None:
        if len(samples):
            self.chunks.append(samples)
            self.ready += len(samples)

    def take(self, size: int) -> np.ndarray:
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        pieces = []
        while size:
            head = self.chunks[0]
            n = min(size, len(head) - self.pos)
            pieces.append(head[self.pos:self.pos + n])
            self.pos += n
            size -= n
            if self.pos == len(head):
                self.chunks.popleft()
                self.pos = 0
        out = pieces[0].copy() if len(pieces) == 1 else np.concatenate(pieces)
        self.ready -= len(out)
        self.used += len(out)
        return out


class PrivateNoise(NoiseSource):
    """OpenDP's exact discrete Gaussian (CKS 2020 algorithm, CSPRNG-driven).

    OpenDP takes the scale as a float64; grid scales are sigma * 2**32 with sigma
    a float64, which is exactly representable, so nothing is rounded.

    Samples are drawn from OpenDP in chunks and handed out in order, each once:
    one OpenDP call costs about as much as several samples, and a query needs
    only 1 + C. The samples are i.i.d. and independent of everything else, so
    which drawn sample serves which query changes nothing in the distribution.
    A synchronous chunk is at most what the scale has used so far (a one-off
    caller draws only what it asks for). Once a scale is in steady use (CHUNK
    samples), a background thread keeps AHEAD samples of it drawn: OpenDP runs
    without the GIL, so on a second core the noise costs the caller nothing.
    The thread ends after IDLE seconds without demand; a forked child drops
    every drawn sample (it must never reuse its parent's).

    `reserve(sigma, count)` asks for count samples of a scale to be drawn ahead
    the same way, before they are needed: a computing party reserves a batch's
    noise while the round waits for submissions (the noise is data-independent,
    so drawing it early changes nothing but when the CPU is spent). `sample`
    hands out what is ready first and draws any shortfall at once."""

    mode = PRIVATE
    CHUNK = 1024
    AHEAD = 8192
    IDLE = 2.0
    MAX_RESERVE = 1 << 22        # samples of one scale kept ahead at most (32 MiB of int64)

    def __init__(self):
        self._reset()
        _live.add(self)

    def __reduce__(self):
        # A copy starts with no drawn samples: noise is never handed out twice.
        return (PrivateNoise, ())

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[float, _Pool] = {}
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._stop = False

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        s = float(sigma)
        if Fraction(s) != Fraction(sigma):
            raise ParameterError(f"noise scale {sigma} is not exactly a float64")
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            pool = self._pool(s)
            out = pool.take(min(size, pool.ready))
            pool.reserved = max(0, pool.reserved - size)
            short = size - len(out)
            if 0 < short < self.CHUNK:
                pool.add(_draw(s, max(short, min(pool.used, self.CHUNK))))
                out = np.concatenate([out, pool.take(short)])
                short = 0
            steady = pool.used >= self.CHUNK and pool.ready < self.AHEAD // 2
            if (steady or pool.ready < pool.reserved) and not self._stop:
                self._kick()
        if short:       # a large shortfall: drawn here, outside the lock, while the refill goes on
            out = np.concatenate([out, _draw(s, short)])
        return out

    def reserve(self, sigma: Fraction, count: int) -> None:
        """Keep at least `count` (at most MAX_RESERVE) samples of this scale drawn
        ahead, in the background; a later reserve replaces the number, and what
        `sample` takes counts against it."""
        self._check(sigma, count)
        s = float(sigma)
        if Fraction(s) != Fraction(sigma):
            raise ParameterError(f"noise scale {sigma} is not exactly a float64")
        with self._lock:
            pool = self._pool(s)
            pool.reserved = min(int(count), self.MAX_RESERVE)
            if pool.ready < pool.reserved and not self._stop:
                self._kick()

    def ready(self, sigma: Fraction) -> int:
        """How many samples of this scale are drawn and not yet handed out."""
        with self._lock:
            pool = self._pools.get(float(sigma))
            return 0 if pool is None or self._pid != os.getpid() else pool.ready

    def _pool(self, s: float) -> "_Pool":
        """(called with self._lock held)"""
        if self._pid != os.getpid():   # belt and braces: the at-fork hook already reset us
            self._reset_pools()
        pool = self._pools.get(s)
        if pool is None:
            pool = self._pools[s] = _Pool()
        return pool

    def _reset_pools(self) -> None:
        self._pools.clear()
        self._pid = os.getpid()
        self._worker = None

    # ---- the background refill (called with self._lock held) ----------------
    def _kick(self) -> None:
        if self._worker is None:
            self._wake.clear()
            self._worker = threading.Thread(target=_refill, args=(weakref.ref(self),),
                                             name="dvsecure-noise", daemon=True)
            self._worker.start()
        else:
            self._wake.set()

    def _wanted(self) -> float | None:
        """A scale in steady use with fewer than AHEAD samples ready, if any."""
        for s, pool in self._pools.items():
            if pool.ready < pool.target(self):
                return s
        return None


def _refill(ref) -> None:
    """Background thread: tops up every scale in steady use to AHEAD samples."""
    while True:
        noise = ref()
        if noise is None:
            return
        with noise._lock:
            if noise._stop or noise._pid != os.getpid():
                if noise._worker is threading.current_thread():
                    noise._worker = None
                return
            s = noise._wanted()
            if s is None:
                noise._wake.clear()
        if s is None:
            wake = noise._wake
            del noise
            if not wake.wait(PrivateNoise.IDLE):
                noise = ref()
                if noise is None:
                    return
                with noise._lock:
                    if not noise._wake.is_set():    # no demand meanwhile: end (sample() restarts one)
                        if noise._worker is threading.current_thread():
                            noise._worker = None
                        return
            continue
        pid = noise._pid
        del noise
        try:
            fresh = _draw(s, PrivateNoise.CHUNK)     # outside the lock: OpenDP releases the GIL
        except Exception:   # the caller's own draw will raise it
            noise = ref()
            if noise is not None:
                with noise._lock:
                    if noise._worker is threading.current_thread():
                        noise._worker = None
            return
        noise = ref()
        if noise is None:
            return
        with noise._lock:
            if noise._pid == pid == os.getpid() and s in noise._pools:
                noise._pools[s].add(fresh)
        del noise


def _draw(s: float, size: int) -> np.ndarray:
    return np.asarray(_opendp_measurement(s)([0] * size), dtype=np.int64)


# Every PrivateNoise, so that a forked child drops their samples before anything
# else runs (its locks are fresh, its threads did not survive the fork), and so
# that interpreter exit stops the refill threads first.
_live: "weakref.WeakSet[PrivateNoise]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for noise in list(_live):
        noise._reset()


def _stop_all() -> None:
    workers = []
    for noise in list(_live):
        with noise._lock:
            noise._stop = True
            if noise._worker is not None:
                workers.append(noise._worker)
            noise._wake.set()
    for w in workers:
        w.join(timeout=1.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all)


class SeededNoise(NoiseSource):
    """Our own exact CKS sampler on a seeded PRNG: reproducible, NOT private."""

    mode = SEEDED

    def __init__(self, seed: int):
        from .cks import SeededDiscreteGaussian

        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParameterError(f"noise seed must be an integer, got {seed!r}")
        self.seed = seed
        self._sampler = SeededDiscreteGaussian(seed)

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        return np.asarray(self._sampler.sample(sigma, size), dtype=np.int64)


class NoNoise(NoiseSource):
    """Zeros. Tests only: every output produced with it is marked non-private."""

    mode = NO_NOISE

    def sample(self, sigma: Fraction, size: int) -> np.ndarray:
        self._check(sigma, size)
        return np.zeros(size, dtype=np.int64)


def make_noise(mode: str = PRIVATE, seed: int | None = None) -> NoiseSource:
    if mode == PRIVATE:
        return PrivateNoise()
    if mode == SEEDED:
        if seed is None:
            raise ParameterError("seeded noise needs a seed")
        return SeededNoise(seed)
    if mode == NO_NOISE:
        return NoNoise()
    raise ParameterError(f"unknown noise mode {mode!r}; expected {PRIVATE!r}, {SEEDED!r} or {NO_NOISE!r}")
