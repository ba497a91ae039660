"""The MPC backend: votes secret-shared by their sources, combined by CrypTen
parties that reveal only answered bits and labels; every vote travels as the
shared class indices of its unit votes (a simplex vote rounded to m of them as
the plaintext backend rounds it) and is valid by construction (`mpc.tables`).

In this in-process form the backend also plays the sources: each source's
votes for a batch are encoded, shared, sealed to the parties' keys (which the
parties generate and keep) and signed (`dvsecure.mpc.sharing`), exactly as a
remote source would do; the parties open them. Networked sources are issue 5.

Noise: every party adds its own exact discrete Gaussian to its own share (no
communication), scaled from the policy's collusion tolerance t so that the
h = n - t honest parties' draws together cost at most the plaintext charge
(`accounting.distributed`): with t = n - 1 each party adds the full plaintext
scale; with smaller t, each adds about 1/h of the variance. Charges are the
plaintext charges. Modes: "private" (OpenDP, CSPRNG, in each party), "seeded"
(per-party seeds derived from the run's seed; research only), "no_noise".

Each party keeps its own ledger and cosigns the log's checkpoints
(`cosigners`, `mpc.party_ledger`).
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from ..errors import ParameterError, VoteError
from ..mechanism.release import Release
from ..mpc.party_ledger import PARTIAL, REJECTED, UNOPENED
from ..mpc.sharing import encode_batch, seal_submissions
from ..noise import SEEDED
from .base import FROM_SOURCES, Backend, BackendOutput

TFP_WARNING = ("TFP Beaver triples: party 0 generates every triple in the clear and so could unmask "
               "every vote; this deployment protects nothing from party 0")


def _client_encoding(vote, num_classes: int, kind, query_id: str) -> np.ndarray | str:
    """What a source would submit for query `query_id`: the class indices of its
    vote's unit votes if the vote is valid (`sharing.encode_batch`; a simplex vote
    rounded as the plaintext backend rounds it). An invalid vote of any kind has
    no index encoding, so nothing is sent: the reason, as the plaintext backend
    gives it."""
    try:
        return encode_batch([vote], num_classes, kind, [query_id])[0]
    except VoteError as e:
        return f"invalid: {str(e).removeprefix('refusing to submit an invalid vote: ')}"


class MPCBackend(Backend):
    name = "mpc"
    evaluates_whole_batch = True

    def __init__(self, num_parties: int = 3, provider: str = "TTP", allow_tfp: bool = False,
                 timeout: float = 300.0, state_dir: str | None = None, roster: str | None = None,
                 spawn_ranks=None, principals: str | None = None, transport: str = "links",
                 listen: str = "127.0.0.1:0", advertise: str | None = None):
        """state_dir: where the parties keep their keys and ledgers (durable across
        runs; a private temporary directory if None). roster/spawn_ranks: to spawn
        only some ranks here (e.g. [0]) while the others run `dvsecure party`, each
        listening where the roster (`mpc.roster`) says. transport "gloo": plain gloo
        on this machine, for comparisons only (`mpc.parties`).
        principals: a JSON file of the sources' Ed25519 keys; with it, the parties
        started here take the sources' shares over gRPC with TLS (`endpoints`), and
        queries are asked with FROM_SOURCES instead of votes; party 0 (and every party
        started here) listens at `listen` and publishes `advertise` in its endpoint.json."""
        if provider == "TFP" and not allow_tfp:
            raise ParameterError("the TFP provider lets party 0 generate every Beaver triple in the clear, so "
                                 "it could unmask every vote; use TTP (a dealer that is not a computing party) "
                                 "or pass allow_tfp=True (--provider TFP --allow-tfp) knowingly")
        if provider not in ("TTP", "TFP"):
            raise ParameterError(f"provider must be 'TTP' or 'TFP', got {provider!r}")
        if provider == "TFP":
            warnings.warn(TFP_WARNING, stacklevel=2)
        if num_parties < 2:
            raise ParameterError(f"MPC needs at least 2 computing parties, got {num_parties}")
        self.num_parties, self.provider, self.timeout = num_parties, provider, timeout
        self._tmp = None if state_dir else tempfile.mkdtemp(prefix="dvsecure-parties-")
        self.state_dir = str(state_dir or self._tmp)
        self._roster, self._spawn_ranks, self._transport = roster, spawn_ranks, transport
        self._principals = None if principals is None else str(principals)
        self._listen, self._advertise = listen, advertise
        self.takes_votes_from_sources = principals is not None
        self._parties = None
        self._policy = None
        self._source_keys: dict[str, SigningKey] = {}
        self._batch = 0
        self._signatures: dict[bytes, list[bytes]] = {}

    def bind(self, policy) -> None:
        if policy.collusion_tolerance >= self.num_parties:
            raise ParameterError(f"the policy tolerates {policy.collusion_tolerance} colluding parties, so it "
                                 f"needs at least {policy.collusion_tolerance + 1} computing parties, "
                                 f"not {self.num_parties}")
        self._policy = policy

    def signer_keys(self) -> list[str]:
        """The parties' cosigning keys (base64 Ed25519 public keys, rank order) for the
        policy's [signers]: each local party's key is made (or read) in its own state
        directory before it starts, so the policy can name it."""
        from ..mpc.party import load_or_create_keys

        local = range(self.num_parties) if self._spawn_ranks is None else self._spawn_ranks
        if set(local) != set(range(self.num_parties)):
            raise ParameterError("the policy must name the keys of the parties started elsewhere: each prints "
                                 "its own (dvsecure party --show-key --rank R --state DIR); give a policy "
                                 "whose [signers] names them (--policy). This backend starts only ranks "
                                 f"{sorted(local)}")
        return [base64.b64encode(load_or_create_keys(Path(self.state_dir) / f"party-{r}", r)[1].public_key)
                .decode() for r in range(self.num_parties)]

    def dealer_key(self) -> str | None:
        """The TTP dealer's key (base64 Ed25519) for the policy's signers.dealer, when
        the dealer runs here; it authenticates the dealer's links (`mpc.roster`)."""
        from ..mpc.parties import member_state
        from ..mpc.party import load_or_create_dealer_key

        if self.provider != "TTP" or (self._spawn_ranks is not None and self.num_parties not in self._spawn_ranks):
            return None
        key = load_or_create_dealer_key(Path(member_state(self.state_dir, self.num_parties, self.num_parties)))
        return base64.b64encode(key.public_key).decode()

    def _ensure_started(self):
        if self._parties is None:
            from ..mpc.parties import LocalParties

            extra = []
            if self._principals is not None:
                if self._policy is None:
                    raise ParameterError("bind the MPC backend to its policy before starting networked parties")
                policy_file = f"{self.state_dir}/policy.toml"
                os.makedirs(self.state_dir, exist_ok=True)
                with open(policy_file, "w") as f:
                    f.write(self._policy.to_toml())
                extra = ["--policy", policy_file, "--listen", self._listen, "--principals", self._principals]
                if self._advertise is not None:
                    extra += ["--advertise", self._advertise]
            self._parties = LocalParties(self.num_parties, self.state_dir, self.provider, self.timeout,
                                         self._roster, self._spawn_ranks, extra, self._transport)
        return self._parties

    def endpoints(self) -> list[dict]:
        """Where sources send each party its share (networked mode): per party in
        rank order, its gRPC address on this machine, the TLS certificate (PEM) to
        pin, and its X25519 key."""
        parties = self._ensure_started()
        if not self.takes_votes_from_sources:
            raise ParameterError("this MPC backend takes no submissions from sources (no principals given)")
        return [{"address": f"127.0.0.1:{k['endpoint']['port']}", "tls": k["endpoint"]["tls"], "box_key": k["box"]}
                for k in parties.keys]

    def close(self) -> None:
        if self._parties is not None:
            self._parties.close()
            self._parties = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- checkpoints ------------------------------------------------------------
    def cosigners(self, ledger) -> list:
        """One signer per party for the log's checkpoint policy: signing asks every
        party to check the new entries against its own records and cosign."""
        from ..log.note import DelegatedSigner

        if self._policy is None:
            self.bind(ledger.policy)
        parties = self._ensure_started()

        def sign_as(rank):
            def sign(text: bytes) -> bytes:
                if text not in self._signatures:
                    self._signatures = {text: self._cosign(ledger, text)}
                return self._signatures[text][rank]
            return sign
        return [DelegatedSigner(k["vkey"], sign_as(r), "party") for r, k in enumerate(parties.keys)]

    def _cosign(self, ledger, text: bytes) -> list[bytes]:
        from ..log.note import Checkpoint

        parties = self._ensure_started()
        policy = self._policy.to_toml()
        sizes = parties.call({"op": "size", "policy": policy})["sizes"]
        if len(set(sizes)) != 1:
            raise ParameterError(f"the parties disagree on how much of the log they cosigned: {sizes}")
        size = Checkpoint.parse(text).size
        entries = ledger.record_bytes(sizes[0], size)
        return parties.call({"op": "cosign", "policy": policy, "start": sizes[0], "entries": entries,
                             "text": text})["signatures"]

    # ---- batches ----------------------------------------------------------------
    def _party_seeds(self, noise) -> list[int] | None:
        if noise.mode != SEEDED:
            return None
        return [int.from_bytes(hashlib.sha256(f"{noise.seed}/{self._batch}/{p}".encode()).digest()[:8], "big")
                for p in range(self.num_parties)]

    def evaluate(self, gammas_fixed, submissions, kinds, num_classes, mechanism, noise, query_ids=None,
                 desired=None):
        if self._policy is None:
            raise ParameterError("the MPC backend must be bound to a policy (Aggregator does this)")
        parties = self._ensure_started()
        gammas = np.asarray(gammas_fixed, dtype=np.int64)
        q_count, s_count = gammas.shape
        self._batch += 1
        source_ids = list(self._policy.ids)
        if query_ids is None:
            query_ids = [f"batch{self._batch}/q{i}" for i in range(q_count)]
        query_ids = list(query_ids)
        extra = {} if desired is None else {"desired": np.asarray(desired, dtype="<i8").tobytes()}
        if any(v is FROM_SOURCES for row in submissions for v in row):
            return self._evaluate_from_sources(parties, gammas, query_ids, num_classes, noise, extra)
        if self.takes_votes_from_sources:
            raise ParameterError("these parties take votes only from the sources over gRPC: ask with FROM_SOURCES")
        present, per_party, problems = self._seal(parties, submissions, kinds, num_classes, query_ids)
        result = parties.call({
            "op": "batch", "policy": self._policy.to_toml(), "query_ids": query_ids, "source_ids": source_ids,
            "source_keys": {sid: bytes(self._source_keys[sid].verify_key) for sid in source_ids},
            "messages": per_party, "present": present.astype(np.uint8).tobytes(),
            "gammas": gammas.astype("<i8").tobytes(), "num_classes": num_classes,
            "noise_mode": noise.mode, "noise_seeds": self._party_seeds(noise), **extra})
        valid, answered, labels, counts, agreed = _revealed(result, q_count, s_count)
        outputs = []
        for i in range(q_count):
            for j in range(s_count):
                if present[i, j] and not agreed[j, i]:
                    problems[i][j] = UNOPENED
                elif present[i, j] and not valid[i, j]:
                    problems[i][j] = REJECTED
            release = Release(True, int(labels[i])) if answered[i] else Release(False, None)
            outputs.append(BackendOutput(release, tuple(problems[i])))
        return outputs

    def _seal(self, parties, submissions, kinds, num_classes, query_ids):
        """The coordinator plays the sources (relayed mode): each source's votes encoded
        and sealed to every party. Returns (present bool[Q, S], messages per party,
        problems[q][s]: why a vote is not there, or None)."""
        from nacl.public import PublicKey

        q_count, s_count = len(query_ids), len(self._policy.ids)
        source_ids = list(self._policy.ids)
        for sid in source_ids:
            self._source_keys.setdefault(sid, SigningKey.generate())
        problems = [[None] * s_count for _ in range(q_count)]
        present = np.zeros((q_count, s_count), dtype=bool)
        per_party: list[list[bytes]] = [[] for _ in range(self.num_parties)]
        public = [PublicKey(k["box"]) for k in parties.keys]
        for j, sid in enumerate(source_ids):
            rows, encoded = [], []
            for i in range(q_count):
                vote = submissions[i][j]
                if vote is None:
                    problems[i][j] = "absent"
                    continue
                enc = _client_encoding(vote, num_classes, kinds[j], query_ids[i])
                if isinstance(enc, str):
                    problems[i][j] = enc
                    continue
                rows.append(i)
                encoded.append(enc)
            if not rows:
                continue
            present[rows, j] = True
            messages = seal_submissions(sid, self._source_keys[sid], [query_ids[i] for i in rows],
                                        np.stack(encoded), public, kind=kinds[j], num_classes=num_classes)
            for p, m in enumerate(messages):
                per_party[p].append(m)
        return present, per_party, problems

    def pending(self, query_ids, predraw: int | None = None) -> np.ndarray:
        """bool[S, Q]: whether every party holds source s's share for query q (networked
        mode), so a coordinator can stop waiting once every source has submitted.
        `predraw` (these queries' number of classes): each party starts drawing the
        private noise their batch needs, while the round waits."""
        if not self.takes_votes_from_sources:
            raise ParameterError("this MPC backend takes no submissions from sources (no principals given)")
        parties = self._ensure_started()
        query_ids = list(query_ids)
        held = parties.call({"op": "pending", "policy": self._policy.to_toml(), "query_ids": query_ids,
                             **({"predraw": int(predraw)} if predraw else {})})["held"]
        return np.frombuffer(held, dtype=np.uint8).reshape(len(self._policy.ids), len(query_ids)).astype(bool)

    def restart(self) -> None:
        """After a failure (a party died, a link broke): drop the parties' handle, so the
        next call starts party 0 again and rejoins the others."""
        if self._parties is not None:
            self._parties.close()
            self._parties = None
        self._signatures = {}

    # ---- calibration -------------------------------------------------------------
    def calibrate(self, plan, votes, noise, query_ids) -> dict[str, int]:
        """The noisy accuracy sums of `plan`'s calibrated sources, computed by the
        parties from shares (`mpc.calibrate`); votes[t][s] (FROM_SOURCES when the
        sources sent them to the parties) for the labelled queries query_ids."""
        if self._policy is None:
            raise ParameterError("the MPC backend must be bound to a policy (Aggregator does this)")
        parties = self._ensure_started()
        self._batch += 1
        source_ids, query_ids = list(self._policy.ids), list(query_ids)
        q_count, s_count = len(query_ids), len(source_ids)
        cmd = {"op": "calibrate", "policy": self._policy.to_toml(), "calibration_id": plan.query_id,
               "query_ids": query_ids, "labels": list(plan.labels), "calibrated": list(plan.charges),
               "source_ids": source_ids, "num_classes": plan.num_classes, "noise_mode": noise.mode,
               "noise_seeds": self._party_seeds(noise)}
        if any(v is FROM_SOURCES for row in votes for v in row):
            if not self.takes_votes_from_sources:
                raise ParameterError("this MPC backend takes no submissions from sources (no principals given)")
            cmd.update(inbox=True, source_keys={}, messages=[[] for _ in range(self.num_parties)],
                       present=np.ones((q_count, s_count), np.uint8).tobytes())
        else:
            if self.takes_votes_from_sources:
                raise ParameterError("these parties take votes only from the sources over gRPC: pass FROM_SOURCES")
            present, per_party, _ = self._seal(parties, votes, [s.vote_format for s in self._policy.sources],
                                               plan.num_classes, query_ids)
            cmd.update(source_keys={sid: bytes(self._source_keys[sid].verify_key) for sid in source_ids},
                       messages=per_party, present=present.astype(np.uint8).tobytes())
        sums = parties.call(cmd)["sums"]
        return {sid: int(v) for sid, v in zip(source_ids, sums) if v is not None}

    def _evaluate_from_sources(self, parties, gammas, query_ids, num_classes, noise, extra):
        """The sources sent each party its share over gRPC: the parties take them
        from their inboxes, and report who submitted and the commitments sent."""
        if not self.takes_votes_from_sources:
            raise ParameterError("this MPC backend takes no submissions from sources (no principals given)")
        q_count, s_count = gammas.shape
        source_ids = list(self._policy.ids)
        result = parties.call({
            "op": "batch", "inbox": True, "policy": self._policy.to_toml(), "query_ids": query_ids,
            "source_ids": source_ids, "source_keys": {}, "messages": [[] for _ in range(self.num_parties)],
            "present": np.ones((q_count, s_count), np.uint8).tobytes(), "gammas": gammas.astype("<i8").tobytes(),
            "num_classes": num_classes, "noise_mode": noise.mode, "noise_seeds": self._party_seeds(noise), **extra})
        valid, answered, labels, counts, agreed = _revealed(result, q_count, s_count)
        commitments = np.frombuffer(result["commitments"], dtype=np.uint8).reshape(s_count, q_count, 32).copy()
        commitments[~agreed] = 0
        outputs = []
        for i in range(q_count):
            problems = []
            for j in range(s_count):
                if counts[j, i] == 0:
                    problems.append("absent")
                elif not agreed[j, i]:
                    problems.append(PARTIAL)
                else:
                    problems.append(None if valid[i, j] else REJECTED)
            release = Release(True, int(labels[i])) if answered[i] else Release(False, None)
            outputs.append(BackendOutput(release, tuple(problems), commitments[:, i].tobytes()))
        return outputs


def _revealed(result: dict, q_count: int, s_count: int):
    """What party 0 returned: valid bool[Q, S], answered bool[Q], labels int[Q],
    counts int[S, Q] (parties holding each share), agreed bool[S, Q]."""
    return (np.frombuffer(result["valid"], dtype=bool).reshape(q_count, s_count),
            np.frombuffer(result["answered"], dtype=bool), np.frombuffer(result["labels"], dtype="<i8"),
            np.frombuffer(result["counts"], dtype="<i8").reshape(s_count, q_count),
            np.frombuffer(result["agreed"], dtype=bool).reshape(s_count, q_count))
