"""Votes valid by construction: a one-hot vote travels as its class index.

A source shares its class index k additively modulo C among the n parties
(`index_shares`). For every vote row the dealer supplies a one-time table:
shares of a random r mod C and shares (mod 2**64) of the one-hot vector e_r
(`deal`). The parties open d = k - r mod C — uniform, whatever k is, since no
party knows r — and each rotates its share of e_r by d, locally, to hold a
share of e_k (`one_hot_shares`): e_r[(j - d) mod C] is 1 exactly at j = k.

Every share vector a source can send defines some k in 0..C-1, so there is
nothing to validate and nothing a malicious source can do beyond choosing its
vote; what a party learns is d, which is independent of k. The dealer knows r,
so the dealer together with any one party's view of d learns k: the same trust
the TTP already holds, since it knows every Beaver triple.

This is the one-time truth table / masked table lookup of Ishai, Kushilevitz,
Meldgaard, Orlandi and Paskin-Cherniavsky (TCC 2013, "On the power of correlated
randomness in secure computation") and Keller, Orsini, Rotaru, Scholl,
Soria-Vazquez and Wood (ACNS 2017, "Faster secure multi-party computation of
AES and DES using lookup tables"), applied to the table of the map k -> e_k.

Uniformity: residues of 64-bit words mod C (C <= 4096) are within statistical
distance C / 2**64 < 2**-51 of uniform, for the sources' shares and for r.
"""
from __future__ import annotations

import os

import numpy as np

FUNCTION = "onehot_table"          # the dealer's request name (`compat` registers `deal` under it)


def _mod(words: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.asarray(words).view(np.uint64) % np.uint64(num_classes)).astype(np.int64)


def index_shares(indices, num_parties: int, num_classes: int) -> np.ndarray:
    """Additive shares modulo C of class indices: int64[num_parties, *shape],
    each in 0..C-1. n - 1 shares come from the OS CSPRNG; any n - 1 of them
    are (statistically) uniform whatever the indices."""
    k = np.asarray(indices, dtype=np.int64)
    if k.size and (k.min() < 0 or k.max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    words = np.frombuffer(os.urandom(8 * k.size * (num_parties - 1)), dtype="<u8")
    out = np.empty((num_parties,) + k.shape, dtype=np.int64)
    out[:-1] = _mod(words, num_classes).reshape((num_parties - 1,) + k.shape)
    out[-1] = (k - out[:-1].sum(axis=0)) % num_classes
    return out


def reconstruct_indices(shares, num_classes: int) -> np.ndarray:
    return np.asarray(shares, dtype=np.int64).sum(axis=0) % num_classes


def _ring(crypten, generator, shape) -> "torch.Tensor":  # noqa: F821 - torch is imported lazily
    from crypten.common import rng

    return rng.generate_random_ring_element(tuple(shape), generator=generator)


def deal(server, size, num_classes: int):
    """The dealer's side (a `TTPServer` method once `compat` registers it): from
    every party's generator, in the order the party draws them, r_i mod C and
    (parties 1..n-1) its share of e_r; party 0's share of e_r is the correction
    returned to it. Returns int64[*size, C]."""
    import crypten
    import torch

    shape = tuple(size)
    gens = server._get_generators(device="cpu")
    r = None
    others = None
    for i, g in enumerate(gens):
        r_i = torch.from_numpy(_mod(_ring(crypten, g, shape).numpy(), num_classes))
        r = r_i if r is None else (r + r_i) % num_classes
        if i:
            e_i = _ring(crypten, g, shape + (num_classes,))
            others = e_i if others is None else others + e_i
    e_r = torch.nn.functional.one_hot(r, num_classes).long()
    return e_r - others if others is not None else e_r


def _table(crypten, shape, num_classes: int):
    """This party's share of a one-time table: (r_i int64[*shape] mod C, its share of e_r)."""
    import crypten.communicator as comm
    from crypten.mpc.provider.ttp_provider import TTPClient

    client = TTPClient.get()
    generator = client.get_generator(device="cpu")
    r = _mod(_ring(crypten, generator, shape).numpy(), num_classes)
    if comm.get().get_rank() == 0:
        e = client.ttp_request(FUNCTION, None, tuple(shape), num_classes)
    else:
        e = _ring(crypten, generator, tuple(shape) + (num_classes,))
    return r, e


def one_hot_shares(crypten, k_share: np.ndarray, num_classes: int):
    """This party's shares (int64[*shape, C], mod 2**64) of the one-hot vectors of
    the indices whose shares mod C it holds (k_share int64[*shape]). Reveals only
    d = k - r mod C. Needs the TTP provider (the dealer deals the tables)."""
    import torch

    shape = tuple(np.shape(k_share))
    r, e = _table(crypten, shape, num_classes)
    mine = torch.from_numpy((np.asarray(k_share, dtype=np.int64) % num_classes - r) % num_classes)
    d = crypten.communicator.get().all_reduce(mine) % num_classes             # reveal: uniform masks
    cols = (torch.arange(num_classes, dtype=torch.long) - d.unsqueeze(-1)) % num_classes
    return torch.gather(e, -1, cols)
