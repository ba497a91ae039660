"""PrivateNoise draws OpenDP samples in chunks (and ahead, on a thread) and hands
them out in order: every sample must reach exactly one caller, a forked child
must never reuse its parent's samples, and small draws through the pool must
still follow the exact discrete Gaussian."""
from __future__ import annotations

import os
import threading
import time
from fractions import Fraction

import numpy as np
from scipy import stats

from dvsecure.noise import sources
from dvsecure.noise.cks import discrete_gaussian_pmf
from dvsecure.noise.sources import PrivateNoise


def unique_draws(monkeypatch):
    """Replace OpenDP by draws of fresh unique integers, recording every draw."""
    drawn, counter, lock = [], [0], threading.Lock()

    def draw(s, size):                    # called by the caller and by the refill thread
        with lock:
            out = np.arange(counter[0], counter[0] + size, dtype=np.int64)
            counter[0] += size
            drawn.append(out)
        return out
    monkeypatch.setattr(sources, "_draw", draw)
    return drawn


def test_every_drawn_sample_is_handed_out_at_most_once(monkeypatch):
    drawn = unique_draws(monkeypatch)
    noise = PrivateNoise()
    rng = np.random.default_rng(0)
    handed = []
    for k in range(3000):
        handed.append(noise.sample(Fraction(7), int(rng.integers(1, 40))))
        if k % 300 == 299:
            time.sleep(0.02)              # let the refill thread add chunks meanwhile
    handed.append(noise.sample(Fraction(7), 5000))                # a large draw goes straight to OpenDP
    out = np.concatenate(handed)
    assert len(out) == sum(len(h) for h in handed)
    assert len(np.unique(out)) == len(out)                        # never twice
    assert set(out.tolist()) <= set(np.concatenate(drawn).tolist())
    # Scales are pooled apart: a sample drawn for one scale never serves another.
    a, b = noise.sample(Fraction(3), 10), noise.sample(Fraction(5), 10)
    assert not set(a.tolist()) & set(b.tolist())


def test_a_forked_child_never_reuses_its_parents_samples():
    noise = PrivateNoise()
    for _ in range(3000):                     # steady use: a chunk (and maybe more) is drawn ahead
        noise.sample(Fraction(9), 3)
    with noise._lock:                         # what the parent would hand out next
        pool = noise._pools[9.0]
        if pool.ready < 64:
            pool.add(sources._draw(9.0, 64))
        upcoming = np.concatenate(list(pool.chunks))[pool.pos:pool.pos + 64].copy()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: its draws must be fresh
        try:
            os.write(write, noise.sample(Fraction(9), 64).astype("<i8").tobytes())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = np.frombuffer(data, dtype="<i8")
    assert len(child) == 64
    # A child reusing the pool would hand out exactly the parent's next samples;
    # fresh CSPRNG draws match 64 of them in order with probability ~0.
    assert not np.array_equal(child, upcoming)
    assert np.array_equal(noise.sample(Fraction(9), 64), upcoming)      # the parent's own, once


def test_small_draws_through_the_pool_follow_the_exact_pmf():
    sigma = 2.5
    noise = PrivateNoise()
    x = np.concatenate([noise.sample(Fraction(sigma), 3) for _ in range(8000)])
    lo, hi = -9, 9
    x = np.clip(x, lo, hi)
    observed = np.array([(x == v).sum() for v in range(lo, hi + 1)])
    pmf = np.array([discrete_gaussian_pmf(v, sigma) for v in range(lo, hi + 1)])
    pmf[0] += sum(discrete_gaussian_pmf(v, sigma) for v in range(lo - 60, lo))
    pmf[-1] += sum(discrete_gaussian_pmf(v, sigma) for v in range(hi + 1, hi + 61))
    expected = pmf / pmf.sum() * len(x)
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def _wait_ready(noise, sigma, count, timeout=60.0):
    deadline = time.monotonic() + timeout
    while noise.ready(sigma) < count:
        assert time.monotonic() < deadline, f"only {noise.ready(sigma)} of {count} samples drawn ahead"
        time.sleep(0.01)


def test_reserved_samples_are_drawn_ahead_and_handed_out_first_and_once(monkeypatch):
    drawn = unique_draws(monkeypatch)
    noise = PrivateNoise()
    sigma = Fraction(11)
    noise.reserve(sigma, 3000)
    _wait_ready(noise, sigma, 3000)                 # drawn by the background thread, no caller asked
    ahead = np.concatenate(drawn)[:3000].copy()
    first = noise.sample(sigma, 3000)               # a large request is served from the pool ...
    assert np.array_equal(first, ahead)
    noise.reserve(sigma, 1000)
    _wait_ready(noise, sigma, 1000)
    more = noise.sample(sigma, 6000)                # ... and what is not ready yet is drawn at once
    assert len(more) == 6000
    out = np.concatenate([first, more, noise.sample(sigma, 50)])
    assert len(np.unique(out)) == len(out)          # never twice
    assert set(out.tolist()) <= set(np.concatenate(drawn).tolist())
    assert not set(noise.sample(Fraction(13), 10).tolist()) & set(out.tolist())


def test_reserve_is_bounded_and_checks_its_scale(monkeypatch):
    unique_draws(monkeypatch)
    noise = PrivateNoise()
    noise.reserve(Fraction(5), 10 ** 12)
    with noise._lock:
        assert noise._pools[5.0].reserved == PrivateNoise.MAX_RESERVE
    noise.reserve(Fraction(5), 0)                   # a later reserve replaces the number
    with noise._lock:
        assert noise._pools[5.0].reserved == 0
    for bad in (Fraction(0), Fraction(-3), Fraction(1, 3)):
        try:
            noise.reserve(bad, 10)
        except sources.ParameterError as e:
            assert "noise scale" in str(e)
        else:
            raise AssertionError(f"reserve accepted scale {bad}")


def test_samples_drawn_ahead_follow_the_exact_pmf():
    sigma = 2.5
    noise = PrivateNoise()
    noise.reserve(Fraction(sigma), 20000)
    _wait_ready(noise, Fraction(sigma), 20000)
    x = np.clip(noise.sample(Fraction(sigma), 20000), -9, 9)
    observed = np.array([(x == v).sum() for v in range(-9, 10)])
    pmf = np.array([discrete_gaussian_pmf(v, sigma) for v in range(-9, 10)])
    pmf[0] += sum(discrete_gaussian_pmf(v, sigma) for v in range(-69, -9))
    pmf[-1] += sum(discrete_gaussian_pmf(v, sigma) for v in range(10, 70))
    assert stats.chisquare(observed, pmf / pmf.sum() * len(x)).pvalue > 1e-4
