"""The MPC backend: votes secret-shared by their sources, combined by CrypTen
parties that reveal only validation bits, answered bits and labels.

In this in-process form the backend also plays the sources: each source's
votes for a batch are encoded, shared, sealed to the parties and signed
(`dvsecure.sharing`), exactly as a remote source would do; the parties open
them. Networked sources are issue 5.

Noise: every party adds its own exact discrete Gaussian of the full scale
(sigma1 to the maximum, sigma2 to each tally of an answered query) to its own
share — no communication. Any single honest party's draw carries the whole
variance, so the charge is the plaintext charge (data processing) whatever
coalition of up to n-1 parties colludes; the price is n times the variance of
the plaintext release. (The distributed discrete Gaussian of Kairouz, Liu &
Steinke 2021 would need only n/(n-t) times, with a slightly larger charge; not
implemented.) Modes: "private" (OpenDP, CSPRNG, in each party), "seeded"
(per-party seeds derived from the run's seed; research only), "no_noise".
"""
from __future__ import annotations

import hashlib
import numbers

import numpy as np
from nacl.signing import SigningKey

from ..errors import ParameterError
from ..fixedpoint import sigma_on_tally_grid, threshold_to_tally
from ..mechanism import Release
from ..noise import SEEDED
from ..policy import ONE_HOT
from ..sharing import PartyKeys, seal_submissions
from ..votes import InvalidVote, encode_vote
from .base import Backend, BackendOutput

REJECTED = "invalid: rejected by the parties' secure validation"
UNOPENED = "invalid: a computing party could not open or verify the submission"


def _client_encoding(vote, num_classes: int, kind: str) -> np.ndarray | str:
    """What a source would submit: its validated encoding if the vote is valid;
    otherwise (a misbehaving source) the raw fixed-point rounding of whatever it
    holds, when that is a finite vector of the right shape; else a reason."""
    try:
        return encode_vote(vote, num_classes, kind)
    except InvalidVote as e:
        reason = f"invalid: {e}"
    if isinstance(vote, numbers.Integral):
        return reason                       # an index out of range has no vector to share
    try:
        arr = np.asarray(vote, dtype=np.float64)
    except (TypeError, ValueError):
        return reason
    if arr.shape != (num_classes,) or not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 2.0 ** 40):
        return reason
    return np.round(arr * 65536).astype(np.int64)


class MPCBackend(Backend):
    name = "mpc"
    evaluates_whole_batch = True

    def __init__(self, num_parties: int = 3, provider: str = "TTP", allow_tfp: bool = False,
                 timeout: float = 300.0):
        if provider == "TFP" and not allow_tfp:
            raise ParameterError("the TFP provider lets party 0 generate every Beaver triple in the clear, so "
                                 "it could unmask every vote; use TTP (a dealer that is not a computing party) "
                                 "or pass allow_tfp=True knowingly")
        if provider not in ("TTP", "TFP"):
            raise ParameterError(f"provider must be 'TTP' or 'TFP', got {provider!r}")
        if num_parties < 2:
            raise ParameterError(f"MPC needs at least 2 computing parties, got {num_parties}")
        self.num_parties, self.provider, self.timeout = num_parties, provider, timeout
        self._parties = None
        self._party_keys = [PartyKeys.generate() for _ in range(num_parties)]
        self._source_keys: dict[str, SigningKey] = {}
        self._batch = 0

    def _start(self, num_sources: int) -> None:
        from ..mpc.parties import LocalParties

        self._source_keys = {f"s{j}": SigningKey.generate() for j in range(num_sources)}
        self._parties = LocalParties(
            self.num_parties, [bytes(k.private) for k in self._party_keys],
            {sid: bytes(k.verify_key) for sid, k in self._source_keys.items()}, self.provider, self.timeout)

    def close(self) -> None:
        if self._parties is not None:
            self._parties.close()
            self._parties = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _party_seed(self, noise, party: int) -> int | None:
        if noise.mode != SEEDED:
            return None
        digest = hashlib.sha256(f"{noise.seed}/{self._batch}/{party}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def evaluate(self, gammas_fixed, submissions, kinds, num_classes, mechanism, noise):
        from ..mpc.parties import Job

        gammas = np.asarray(gammas_fixed, dtype=np.int64)
        q_count, s_count = gammas.shape
        if self._parties is None:
            self._start(s_count)
        self._batch += 1
        source_ids = list(self._source_keys)
        query_ids = [f"batch{self._batch}/q{i}" for i in range(q_count)]
        problems = [[None] * s_count for _ in range(q_count)]
        present = np.zeros((q_count, s_count), dtype=bool)
        per_party: list[list[bytes]] = [[] for _ in range(self.num_parties)]
        public = [k.public for k in self._party_keys]
        for j, sid in enumerate(source_ids):
            rows, encoded = [], []
            for i in range(q_count):
                vote = submissions[i][j]
                if vote is None:
                    problems[i][j] = "absent"
                    continue
                enc = _client_encoding(vote, num_classes, kinds[j])
                if isinstance(enc, str):
                    problems[i][j] = enc
                    continue
                rows.append(i)
                encoded.append(enc)
            if not rows:
                continue
            present[rows, j] = True
            messages = seal_submissions(sid, self._source_keys[sid], [query_ids[i] for i in rows],
                                        np.stack(encoded), public)
            for p, m in enumerate(messages):
                per_party[p].append(m)
        threshold = threshold_to_tally(mechanism.threshold) if mechanism.confident else None
        sigma1 = sigma_on_tally_grid(mechanism.sigma1) if mechanism.confident else None
        sigma2 = sigma_on_tally_grid(mechanism.sigma2)
        jobs = [Job(per_party[p], source_ids, query_ids, present, gammas, [k == ONE_HOT for k in kinds],
                    num_classes, threshold, sigma1, sigma2, noise.mode, self._party_seed(noise, p))
                for p in range(self.num_parties)]
        result = self._parties.run(jobs)
        outputs = []
        for i in range(q_count):
            for j in range(s_count):
                if present[i, j] and not result["agreed"][j]:
                    problems[i][j] = UNOPENED
                elif present[i, j] and not result["valid"][i, j]:
                    problems[i][j] = REJECTED
            answered = bool(result["answered"][i])
            release = Release(True, int(result["labels"][i])) if answered else Release(False, None)
            outputs.append(BackendOutput(release, tuple(problems[i])))
        return outputs
