"""A cryptographic PRG for the random ring elements parties and the dealer derive
from shared seeds (zero shares, Beaver triples, masks), in place of CrypTen's
`torch.Generator` (MT19937, whose state an observer rebuilds from 624 outputs).

ChaCha20 keystream (RFC 8439, from `cryptography`) read straight into int64
buffers: one call per tensor, so the cost is the cipher's throughput (a
benchmark in tests/mpc/test_prg.py prints it). Two holders of the same 32-byte
seed draw the same elements in the same order, which is all CrypTen needs of a
shared generator.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32


class ChaChaGenerator:
    """A stream of uniform 64-bit words from a 32-byte seed. Not thread-safe
    (CrypTen draws from each generator in program order, on one thread)."""

    __slots__ = ("_stream", "label", "drawn")
    device = "cpu"                         # CrypTen reads `generator.device`; dvsecure runs on the CPU

    def __init__(self, seed: bytes, label: str = ""):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"a ChaCha20 PRG seed is {SEED_BYTES} bytes")
        # The nonce is fixed (zero): every seed is used for one stream only.
        self._stream = Cipher(algorithms.ChaCha20(bytes(seed), bytes(16)), mode=None).encryptor()
        self.label, self.drawn = label, 0

    @classmethod
    def fresh(cls, label: str = "local") -> "ChaChaGenerator":
        return cls(os.urandom(SEED_BYTES), label)

    def words(self, count: int) -> np.ndarray:
        """`count` uniform int64 words (the whole signed 64-bit ring)."""
        count = int(count)
        self.drawn += count
        return np.frombuffer(self._stream.update(bytes(8 * count)), dtype="<i8").copy()

    def __repr__(self) -> str:            # never the seed
        return f"ChaChaGenerator({self.label!r}, drawn={self.drawn})"


def derive_seed(secret: bytes, label: str) -> bytes:
    """A 32-byte seed for one purpose from a 32-byte key-agreement secret
    (HKDF-SHA256 expand with the label as info: independent seeds per label)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    if len(secret) != 32:
        raise ValueError("the secret must be 32 bytes")
    return HKDFExpand(hashes.SHA256(), SEED_BYTES, label.encode()).derive(secret)


def fingerprint(seed: bytes) -> str:
    """A public name for a seed (tests compare seeds across processes by it)."""
    return hashlib.sha256(b"dvsecure-prg-fingerprint\0" + seed).hexdigest()[:16]
