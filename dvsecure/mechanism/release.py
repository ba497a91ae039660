"""The release mechanism on the integer tally grid: GNMax and Confident-GNMax.

Pure functions of (tally, parameters, noise). Every backend's release must equal
this one's for the same tally and the same noise draws, drawn in this order:
one threshold sample per query (Confident-GNMax), then C GNMax samples for each
answered query, in query order.

A query in which no source takes part (every weight 0: excluded, absent or
invalid) is refused, under GNMax as under Confident-GNMax: its tally is all zero,
so any label would be noise alone, and an answer carrying no information is not
released as one. Whether a source takes part is public (its weight and validity
bit), so every backend applies the rule without looking at a vote; it costs no
privacy (no participant, no charge).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise import NoiseSource
from ..policy import MechanismPolicy
from .fixedpoint import sigma_on_tally_grid, threshold_to_tally


@dataclass(frozen=True)
class Release:
    answered: bool
    label: int | None


def tally(gammas_fixed: np.ndarray, votes_fixed: np.ndarray, slices=None) -> np.ndarray:
    """v_j = sum_s gamma[s] * p_s[j], exact, at scale 2**32.
    gammas_fixed: int64[..., S]; votes_fixed: int64[..., S, C] (`votes.encode_vote`)
    -> int64[..., C]. slices: int[S], each source's units per vote (m for a
    slice histogram, whose counts are tallied at gamma/m each; gamma is a
    multiple of m * 2**-16, so gamma/m is exact); None: all 1."""
    gammas = gammas_fixed.astype(np.int64)
    if slices is not None:
        slices = np.asarray(slices, dtype=np.int64)
        if np.any(gammas % slices):
            raise ValueError("a weight is not a multiple of its source's slice count times 2**-16")
        gammas = gammas // slices
    return np.einsum("...s,...sc->...c", gammas, votes_fixed.astype(np.int64))


def release_batch(tallies: np.ndarray, mechanism: MechanismPolicy, noise: NoiseSource) -> list[Release]:
    """Release the noisy argmax (or a refusal) for each row of int64[Q, C] tallies.
    Ties break to the lowest index (np.argmax returns the first maximum)."""
    tallies = np.asarray(tallies, dtype=np.int64)
    q, c = tallies.shape
    # A participant's valid vote adds a positive total to its row: a zero row has none.
    taken_part = tallies.any(axis=1)
    if mechanism.confident:
        z = tallies.max(axis=1) + noise.sample(sigma_on_tally_grid(mechanism.sigma1), q)
        answered = (z >= threshold_to_tally(mechanism.threshold)) & taken_part
    else:
        answered = taken_part
    idx = np.flatnonzero(answered)
    out = [Release(False, None)] * q
    if len(idx):
        noisy = tallies[idx] + noise.sample(sigma_on_tally_grid(mechanism.sigma2), len(idx) * c).reshape(len(idx), c)
        labels = np.argmax(noisy, axis=1)
        for k, i in enumerate(idx):
            out[i] = Release(True, int(labels[k]))
    return out
