"""RFC 9162 (Certificate Transparency v2) Merkle trees over SHA-256.

The tree is the one of RFC 9162 §2.1 (identical to RFC 6962 §2.1)::

    MTH({})          = SHA-256()
    MTH({d(0)})      = SHA-256(0x00 || d(0))                    leaf hash
    MTH(D[n])        = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                       where k is the largest power of two < n

This module is hand-written on top of :mod:`hashlib` only. No maintained Python
library does exactly this (RFC 9162 tree hash, a compact range for an
append-only log writer, inclusion/consistency proof generation for arbitrary
sizes, and strict RFC 9162 §2.1.3.2 / §2.1.4.2 verification with precise
errors), so it is implemented here, small enough to audit, and tested against
the transparency-dev language-agnostic test vectors (``shared/testvectors/merkle``).

Also provided, because the same vector set carries them and they are a small
generalisation: *subtree* inclusion and consistency proofs over a subtree
``[start, end)`` of the log, as defined by the Merkle Tree Certificates draft
(draft-davidben-tls-merkle-tree-certs, §4 and Appendix B; now
draft-ietf-plants-merkle-tree-certs). A consistency proof of RFC 9162 is the
subtree consistency proof for ``[0, size1)``.

Conventions
-----------
* Every hash (leaf hash, root, proof element) is exactly 32 bytes; anything
  else is rejected. Verification failures raise :class:`ProofError` with a
  message naming the reason; success returns ``None``.
* Bad arguments to *generation* (index out of range, ...) raise
  :class:`ParameterError` (a ``ValueError``): they are caller bugs, not
  failed proofs.
* Sizes and indices are non-negative ``int`` (``bool`` is rejected).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from ..errors import ParameterError, ProofError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "CompactRange",
    "MerkleTree",
    "inclusion_proof",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
    "is_valid_subtree",
    "subtree_root",
    "subtree_inclusion_proof",
    "subtree_consistency_proof",
    "verify_subtree_inclusion",
    "verify_subtree_consistency",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT: bytes = _sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string."""


# --------------------------------------------------------------------------
# Hashing primitives
# --------------------------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry (RFC 9162 §2.1.1)."""
    return _sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node (RFC 9162 §2.1.1)."""
    return _sha256(b"\x01" + left + right).digest()


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    level = list(leaf_hashes)
    if level and set(map(len, level)) != {HASH_SIZE}:
        bad = next(i for i, h in enumerate(level) if len(h) != HASH_SIZE)
        raise ParameterError(
            f"leaf hash {bad} is {len(level[bad])} bytes, expected {HASH_SIZE}")
    for h in level:  # cheap; guards against str / memoryview sneaking in
        if type(h) is not bytes:
            raise ParameterError(f"leaf hashes must be bytes, got {type(h).__name__}")
    return level


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (RFC 9162 §2.1.1).

    Reduces level by level: pair neighbours, carry an odd last node up
    unchanged. That builds exactly the RFC's left-balanced tree (the odd node
    on each level is the root of the right-most, smaller subtree). Exactly
    ``n - 1`` node hashes, no recursion; a million leaves take well under a
    second in CPython.
    """
    level = _check_leaf_hashes(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha = _sha256
    while len(level) > 1:
        it = iter(level)
        nxt = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --------------------------------------------------------------------------
# Incremental tree for an append-only writer
# --------------------------------------------------------------------------

class CompactRange:
    """The right edge of an append-only tree: one perfect-subtree root per
    set bit of ``size`` (largest, i.e. left-most, first).

    ``append`` is amortised O(1) hashes, ``root`` is O(log n). The state
    (``size``, ``hashes``) is all a log writer has to persist to resume:
    ``CompactRange(size, hashes)``.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        _check_uint("size", size, ParameterError)
        hs = list(hashes)
        if len(hs) != size.bit_count():
            raise ParameterError(
                f"a compact range of size {size} holds {size.bit_count()} hashes, got {len(hs)}")
        for h in hs:
            if type(h) is not bytes or len(h) != HASH_SIZE:
                raise ParameterError(f"compact range hashes must be {HASH_SIZE}-byte bytes")
        self._size = size
        self._hashes = hs

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees along the right edge, left to right."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf (its *leaf hash*, i.e. ``leaf_hash(entry)``)."""
        if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_SIZE:
            raise ParameterError(f"leaf hash must be {HASH_SIZE} bytes")
        hs = self._hashes
        h = leaf_hash
        n = self._size
        # Each trailing 1 bit of n is a perfect subtree of the same height
        # as the one being carried: merge them.
        while n & 1:
            h = _sha256(b"\x01" + hs.pop() + h).digest()
            n >>= 1
        hs.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (EMPTY_ROOT when size is 0)."""
        hs = self._hashes
        if not hs:
            return EMPTY_ROOT
        r = hs[-1]
        for h in reversed(hs[:-1]):
            r = _sha256(b"\x01" + h + r).digest()
        return r

    def copy(self) -> "CompactRange":
        return CompactRange(self._size, self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


# --------------------------------------------------------------------------
# Proof generation
# --------------------------------------------------------------------------

class _Levels:
    """All *complete* nodes of a tree: ``levels[l][j]`` is the root of the
    perfect subtree over leaves ``[j * 2**l, (j + 1) * 2**l)``. Building it
    costs ``n - popcount(n)`` hashes; any valid subtree's root is then
    O(log n) more."""

    __slots__ = ("levels", "size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        level = _check_leaf_hashes(leaf_hashes)
        self.size = len(level)
        levels = [level]
        sha = _sha256
        while len(level) > 1:
            it = iter(level)
            level = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it)]
            levels.append(level)
        self.levels = levels

    def subtree_hash(self, start: int, end: int) -> bytes:
        """Root of the valid subtree [start, end) (start < end <= size)."""
        last = end - 1
        x = last - start
        level = (~x & (x + 1)).bit_length() - 1  # trailing one bits of x
        s, l = start >> level, last >> level
        levels = self.levels
        r = levels[level][l]
        while s < l:
            if l & 1:
                r = _sha256(b"\x01" + levels[level][l - 1] + r).digest()
            level += 1
            s >>= 1
            l >>= 1
        return r

    def inclusion_path(self, index: int, start: int, end: int) -> list[bytes]:
        proof: list[bytes] = []
        last = end - 1
        level = 0
        levels = self.levels
        while start < last:
            sib = index ^ 1
            if sib < last:
                proof.append(levels[level][sib])
            elif sib == last:  # right edge: possibly an incomplete subtree
                proof.append(self.subtree_hash(last << level, end))
            # sib > last: index is the right-edge node carried up, no sibling.
            level += 1
            start >>= 1
            index >>= 1
            last >>= 1
        return proof

    def consistency_path(self, start: int, end: int, size: int | None = None) -> list[bytes]:
        """SUBPROOF of RFC 9162 §2.1.4.1, generalised to a subtree
        [start, end) (draft-davidben-tls-merkle-tree-certs §4.4), in the tree of
        the first `size` leaves (default all); iterative, outermost step first,
        reversed at the end."""
        out: list[bytes] = []
        ts, te = 0, self.size if size is None else size
        known = True  # the verifier already holds the hash of [start, end)
        while not (start == ts and end == te):
            k = 1 << ((te - ts - 1).bit_length() - 1)  # largest power of 2 < n
            mid = ts + k
            if end <= mid:
                out.append(self.subtree_hash(mid, te))
                te = mid
            elif start >= mid:
                out.append(self.subtree_hash(ts, mid))
                ts = mid
            else:  # start == ts < mid < end: recurse right, for [mid, end)
                out.append(self.subtree_hash(ts, mid))
                ts = start = mid
                known = False
        if not known:
            out.append(self.subtree_hash(ts, te))
        out.reverse()
        return out


class MerkleTree:
    """Many proofs from one tree and its prefixes, its levels built once (the
    one-shot functions below rebuild them per call: O(n) each)."""

    __slots__ = ("_lv",)

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._lv = _Levels(leaf_hashes)

    @property
    def size(self) -> int:
        return self._lv.size

    def _prefix(self, size: int | None) -> int:
        n = self._lv.size if size is None else size
        _check_uint("size", n, ParameterError)
        if n > self._lv.size:
            raise ParameterError(f"size {n} exceeds the tree's {self._lv.size} leaves")
        return n

    def root(self, size: int | None = None) -> bytes:
        n = self._prefix(size)
        return _sha256(b"").digest() if n == 0 else self._lv.subtree_hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        n = self._prefix(size)
        _check_uint("index", index, ParameterError)
        if index >= n:
            raise ParameterError(f"leaf index {index} out of range for tree size {n}")
        return self._lv.inclusion_path(index, 0, n)

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        n = self._prefix(size)
        _check_uint("old_size", old_size, ParameterError)
        if old_size > n:
            raise ParameterError(f"old size {old_size} exceeds tree size {n}")
        if old_size in (0, n):
            return []
        return self._lv.consistency_path(0, old_size, n)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1, leaf level first. O(n) hashes."""
    _check_uint("index", index, ParameterError)
    lv = _Levels(leaf_hashes)
    if index >= lv.size:
        raise ParameterError(f"leaf index {index} out of range for tree size {lv.size}")
    return lv.inclusion_path(index, 0, lv.size)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 §2.1.4.1. Empty when ``old_size`` is 0
    or n (those need no proof). O(n) hashes."""
    _check_uint("old_size", old_size, ParameterError)
    lv = _Levels(leaf_hashes)
    if old_size > lv.size:
        raise ParameterError(f"old size {old_size} exceeds tree size {lv.size}")
    if old_size == 0:
        return []
    return lv.consistency_path(0, old_size)


def is_valid_subtree(start: int, end: int) -> bool:
    """[start, end) is a subtree of some Merkle tree: start < end and start is
    a multiple of BIT_CEIL(end - start) (MTC draft §4.1)."""
    if start >= end or start < 0:
        return False
    return start % (1 << (end - start - 1).bit_length()) == 0


def _check_subtree_gen(start: int, end: int, size: int) -> None:
    _check_uint("start", start, ParameterError)
    _check_uint("end", end, ParameterError)
    if not is_valid_subtree(start, end):
        raise ParameterError(f"[{start}, {end}) is not a valid subtree")
    if end > size:
        raise ParameterError(f"subtree [{start}, {end}) exceeds tree size {size}")


def subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a valid subtree."""
    lv = _Levels(leaf_hashes)
    _check_subtree_gen(start, end, lv.size)
    return lv.subtree_hash(start, end)


def subtree_inclusion_proof(leaf_hashes: Sequence[bytes], index: int,
                            start: int, end: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the subtree [start, end)."""
    lv = _Levels(leaf_hashes)
    _check_subtree_gen(start, end, lv.size)
    _check_uint("index", index, ParameterError)
    if not start <= index < end:
        raise ParameterError(f"index {index} not in subtree [{start}, {end})")
    return lv.inclusion_path(index, start, end)


def subtree_consistency_proof(leaf_hashes: Sequence[bytes], start: int,
                              end: int) -> list[bytes]:
    """Proof that subtree [start, end) is part of the tree over all leaves."""
    lv = _Levels(leaf_hashes)
    _check_subtree_gen(start, end, lv.size)
    return lv.consistency_path(start, end)


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

def _check_uint(name: str, v: object, exc: type[Exception] = ProofError) -> None:
    if type(v) is not int:
        raise exc(f"{name} must be an int, got {type(v).__name__}")
    if v < 0:
        raise exc(f"{name} must be non-negative, got {v}")


def _check_hash(name: str, h: object) -> None:
    if not isinstance(h, (bytes, bytearray)):
        raise ProofError(f"{name} must be bytes, got {type(h).__name__}")
    if len(h) != HASH_SIZE:
        raise ProofError(f"{name} is {len(h)} bytes, expected a {HASH_SIZE}-byte hash")


def _check_proof(proof: object) -> list[bytes]:
    if proof is None:
        return []
    if isinstance(proof, (bytes, bytearray, str)):
        raise ProofError("proof must be a sequence of hashes, not a single byte string")
    out = [bytes(p) if isinstance(p, bytearray) else p for p in proof]  # type: ignore[union-attr]
    for i, p in enumerate(out):
        _check_hash(f"proof[{i}]", p)
    return out


def _inclusion_proof_len(index: int, size: int) -> int:
    """Length of PATH(index, D[size]) for index < size."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_len(size1: int, size2: int) -> int:
    """Length of PROOF(size1, D[size2]) for 0 < size1 < size2."""
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    index = size1 - 1
    inner = (index ^ (size2 - 1)).bit_length()
    border = (index >> inner).bit_count()
    seed = 0 if size1 == 1 << shift else 1
    return seed + (inner - shift) + border


def _root_from_inclusion(index: int, size: int, h: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 3-5 (proof length already checked)."""
    fn, sn, r = index, size - 1, h
    sha = _sha256
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof has too many elements")
        if fn & 1 or fn == sn:
            r = sha(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = sha(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof has too few elements")
    return r


def verify_inclusion(leaf_index: int, tree_size: int, leaf_hash: bytes,
                     proof: Sequence[bytes] | None, root: bytes) -> None:
    """Check that ``leaf_hash`` is at ``leaf_index`` of the tree of
    ``tree_size`` leaves with root ``root`` (RFC 9162 §2.1.3.2).

    Raises :class:`ProofError` on any failure; returns ``None`` on success.
    """
    _check_uint("leaf_index", leaf_index)
    _check_uint("tree_size", tree_size)
    _check_hash("leaf_hash", leaf_hash)
    _check_hash("root", root)
    path = _check_proof(proof)
    if tree_size == 0:
        raise ProofError("the empty tree (size 0) has no leaves to prove inclusion of")
    if leaf_index >= tree_size:
        raise ProofError(f"leaf index {leaf_index} out of range for tree size {tree_size}")
    want = _inclusion_proof_len(leaf_index, tree_size)
    if len(path) != want:
        raise ProofError(
            f"wrong inclusion proof length: got {len(path)}, expected {want} "
            f"for leaf {leaf_index} of {tree_size}")
    got = _root_from_inclusion(leaf_index, tree_size, bytes(leaf_hash), path)
    if got != bytes(root):
        raise ProofError(
            f"inclusion proof does not verify: computed root {got.hex()} != {bytes(root).hex()}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes] | None,
                       root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size2`` leaves with root ``root2`` extends the
    tree of ``size1`` leaves with root ``root1`` (RFC 9162 §2.1.4.2).

    * ``size1 == 0``: rejected — every tree "extends" the empty tree, so such a
      proof proves nothing (the convention of the transparency-dev vectors).
    * ``size1 == size2``: the proof must be empty and the roots equal.
    * otherwise the RFC algorithm, after exact hash- and proof-length checks.

    Raises :class:`ProofError` on any failure; returns ``None`` on success.
    """
    _check_uint("size1", size1)
    _check_uint("size2", size2)
    path = _check_proof(proof)
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) > size2 ({size2}): a log cannot shrink")
    if size1 == 0:
        raise ProofError("size1 == 0: a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if path:
            raise ProofError(f"size1 == size2 ({size1}) but the proof is not empty")
        if not isinstance(root1, (bytes, bytearray)) or not isinstance(root2, (bytes, bytearray)):
            raise ProofError("roots must be bytes")
        if bytes(root1) != bytes(root2):
            raise ProofError(f"size1 == size2 ({size1}) but the roots differ")
        return
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    root1, root2 = bytes(root1), bytes(root2)
    # 0 < size1 < size2
    want = _consistency_proof_len(size1, size2)
    if len(path) != want:
        raise ProofError(
            f"wrong consistency proof length: got {len(path)}, expected {want} "
            f"for sizes {size1} -> {size2}")
    # Step 1: if size1 is a power of two, prepend root1.
    if size1 & (size1 - 1) == 0:
        path = [root1] + path
    # Steps 2-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    sha = _sha256
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof has too many elements")
        if fn & 1 or fn == sn:
            fr = sha(b"\x01" + c + fr).digest()
            sr = sha(b"\x01" + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError("consistency proof has too few elements")
    if fr != root1:
        raise ProofError(
            f"consistency proof does not verify: reconstructed root1 {fr.hex()} != {root1.hex()}")
    if sr != root2:
        raise ProofError(
            f"consistency proof does not verify: reconstructed root2 {sr.hex()} != {root2.hex()}")


def _subtree_consistency_root(n: int, start: int, end: int, path: list[bytes],
                              node: bytes) -> bytes:
    """draft-davidben-tls-merkle-tree-certs-08 Appendix B: evaluate a subtree
    consistency proof for valid [start, end) with end <= n and subtree hash
    ``node``; return the tree root it implies (or raise)."""
    fn, sn, tn = start, end - 1, n - 1
    if sn == tn:
        while fn != sn:
            fn >>= 1
            sn >>= 1
            tn >>= 1
    else:
        while fn != sn and sn & 1:
            fn >>= 1
            sn >>= 1
            tn >>= 1
    if fn == sn:
        fr = sr = node
        rest = path
    else:
        if not path:
            raise ProofError("subtree consistency proof is empty but must not be")
        fr = sr = path[0]
        rest = path[1:]
    sha = _sha256
    for p in rest:
        if tn == 0:
            raise ProofError("subtree consistency proof has too many elements")
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = sha(b"\x01" + p + fr).digest()
            sr = sha(b"\x01" + p + sr).digest()
            while not sn & 1:
                fn >>= 1
                sn >>= 1
                tn >>= 1
        else:
            sr = sha(b"\x01" + sr + p).digest()
        fn >>= 1
        sn >>= 1
        tn >>= 1
    if tn != 0:
        raise ProofError("subtree consistency proof has too few elements")
    if fr != node:
        raise ProofError(
            f"subtree consistency proof does not verify: reconstructed subtree root "
            f"{fr.hex()} != {node.hex()}")
    return sr


def verify_subtree_inclusion(leaf_index: int, start: int, end: int, leaf_hash: bytes,
                             proof: Sequence[bytes] | None, subtree_root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the valid subtree
    [start, end) whose root is ``subtree_root`` (MTC draft §4.3). That is the
    RFC 9162 inclusion proof of ``leaf_index - start`` in a tree of
    ``end - start`` leaves."""
    _check_uint("leaf_index", leaf_index)
    _check_uint("start", start)
    _check_uint("end", end)
    _check_hash("leaf_hash", leaf_hash)
    _check_hash("subtree_root", subtree_root)
    _check_proof(proof)
    if not is_valid_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    if not start <= leaf_index < end:
        raise ProofError(f"leaf index {leaf_index} out of range for subtree [{start}, {end})")
    verify_inclusion(leaf_index - start, end - start, leaf_hash, proof, subtree_root)


def verify_subtree_consistency(start: int, end: int, size: int,
                               proof: Sequence[bytes] | None,
                               subtree_root: bytes, root: bytes) -> None:
    """Check that subtree [start, end) with root ``subtree_root`` is part of
    the tree of ``size`` leaves with root ``root`` (MTC draft §4.4,
    Appendix B).

    An empty subtree (start == end <= size) is accepted iff the proof is empty
    and ``subtree_root`` is :data:`EMPTY_ROOT` (it carries no claim about
    ``root``), as the transparency-dev vectors specify.
    """
    _check_uint("start", start)
    _check_uint("end", end)
    _check_uint("size", size)
    path = _check_proof(proof)
    if end > size:
        raise ProofError(f"subtree end ({end}) > tree size ({size})")
    if start == end:
        # An empty subtree carries no claim about the tree, so `root` is not read.
        _check_hash("subtree_root", subtree_root)
        if path:
            raise ProofError("empty subtree: the proof must be empty")
        if bytes(subtree_root) != EMPTY_ROOT:
            raise ProofError("empty subtree but its root is not SHA-256('')")
        return
    if start == 0 and end == size:
        # The subtree is the whole tree: the roots must simply be equal.
        if path:
            raise ProofError("the subtree is the whole tree but the proof is not empty")
        if not isinstance(subtree_root, (bytes, bytearray)) or not isinstance(root, (bytes, bytearray)):
            raise ProofError("roots must be bytes")
        if bytes(subtree_root) != bytes(root):
            raise ProofError("the subtree is the whole tree but the roots differ")
        return
    _check_hash("subtree_root", subtree_root)
    _check_hash("root", root)
    subtree_root, root = bytes(subtree_root), bytes(root)
    if not is_valid_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    got = _subtree_consistency_root(size, start, end, path, subtree_root)
    if got != root:
        raise ProofError(
            f"subtree consistency proof does not verify: computed root {got.hex()} != {root.hex()}")
