"""A source of an enclave consortium (`source submit | watch | verify` with the
config key `enclave = "HOST:PORT"` instead of `parties`).

What it trusts is the attestation, never the host: before each round's first vote
leaves, it fetches a fresh attestation (its own nonce) and checks it
(`tee.client.verify_enclave`): the chain to the trusted root (a simulated root
only when the config names one), the PCR0 the policy pins, the TLS certificate it
pinned for this very connection (so the certificate may come from anywhere: the
coordinator publishes it as enclave.pem), the agreed principals file, the policy
and private noise. Then the enclave's log must extend the last checkpoint this
source saw (`check_not_rolled_back`: a host that restarted it on an older ledger
gets nothing).

Each query's vote and commitment nonce are fixed once (kept in the state's
sealed.jsonl, as for MPC); a re-opened query (a restarted instance lost its
pending votes) is sealed again to the new instance's key with the same vote and
nonce, so the log commits to the one vote this source recorded. `verify` audits
the mirrored log as any source does, plus the attestation of every key that
signed it (PCR0, principals, the simulated root if trusted).
"""
from __future__ import annotations

import os
import threading

from ..errors import DvsecureError, EnclaveError
from ..log.note import Checkpoint
from ..log.writer import write_atomic
from .config import ConfigError
from .published import PublishedError, read_bytes, read_one
from .source import HELD, UNREACHABLE, RoundReport, Sealed, Source
from .votefile import VoteFile

WITNESS_CHECKPOINT = "enclave-witness.checkpoint"
TLS_FILE = "enclave.pem"          # the enclave's certificate, in the coordinator's published directory


def seal_vote(client, query_id: str, vote, nonce: bytes, num_classes: int):
    """One vote, sealed to the attested instance with the nonce this source fixed for it
    (`SourceClient.seal` draws a fresh nonce: a resend must keep the committed one)."""
    from nacl.public import PublicKey, SealedBox

    from ..tee import protocol as proto
    from ..tee.client import _vote_message
    from ..wire.proto import dvsecure_pb2 as pb

    msg, _ = _vote_message(vote, nonce)
    sealed = SealedBox(PublicKey(client.enclave.public_key)).encrypt(pb.Votes(votes=[msg]).SerializeToString())
    body = pb.Submission(version=proto.VERSION, source_id=client.name, counter=client.next_counter(),
                         enclave_key=client.enclave.public_key, num_classes=num_classes, query_ids=[query_id],
                         sealed=bytes(sealed))
    return client.signed("Submit", body)


class EnclaveSource(Source):
    def check_target(self) -> None:
        cfg = self.cfg
        if cfg["parties"] is not None:
            raise ConfigError("the source config names both 'parties' (MPC) and 'enclave': one or the other")
        if cfg["principals"] is None:
            raise ConfigError("an enclave source needs key 'principals' (the agreed principals file: the enclave "
                              "must attest exactly these bytes)")
        pinned = self.policy.signers.enclave_pcr0 if self.policy.signers is not None else None
        pcr0 = cfg["enclave_pcr0"] or pinned
        if pcr0 is None:
            raise ConfigError(f"{cfg['policy']} pins no enclave_pcr0 and the config gives none: the enclave's "
                              "measurement cannot be checked")
        if pinned is not None and pcr0 != pinned:
            raise ConfigError(f"enclave_pcr0 {pcr0[:16]}... is not the policy's {pinned[:16]}...")
        try:
            self.pcr0 = bytes.fromhex(pcr0)
            self.principals = read_one(cfg["principals"], 1 << 20)
            self.roots = [read_one(cfg["trust_sim_root"], 1 << 20)] if cfg["trust_sim_root"] is not None else []
        except (ValueError, PublishedError) as e:
            raise ConfigError(f"enclave source config: {e}") from None
        if len(self.pcr0) != 48:
            raise ConfigError(f"enclave_pcr0 must be 96 hex digits (SHA-384), got {len(pcr0)} characters")
        self.endpoints, self._conn = [], None

    def close(self) -> None:
        self._drop()
        super().close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def attest(self):
        """A SourceClient for the enclave instance serving now, once its attestation
        verifies and its log extends what this source saw."""
        from ..tee.client import SourceClient, check_not_rolled_back, connect, verify_enclave

        self._drop()
        pem = (read_one(self.cfg["enclave_tls"], 1 << 20) if self.cfg["enclave_tls"] is not None
               else read_bytes(self.cfg["coordinator"], TLS_FILE, 1 << 20))
        conn = connect(self.cfg["enclave"], pem, timeout=self.cfg["timeout"])
        try:
            identity = verify_enclave(conn, expected_pcr0=self.pcr0, expected_principals=self.principals,
                                      expected_policy=self.policy, trusted_sim_roots=self.roots,
                                      allow_nonprivate=self.cfg["allow_nonprivate"])
            saved = self.state.root / WITNESS_CHECKPOINT
            seen = Checkpoint.parse(saved.read_bytes()) if saved.exists() else None
            latest = check_not_rolled_back(conn, identity, seen)
            write_atomic(saved, latest.to_text())
        except Exception:
            conn.close()
            raise
        self._conn = conn
        return SourceClient(self.id, self.signing_key, conn, identity)

    def deliver(self, oq, votes: VoteFile, report: RoundReport, todo: list[str], fresh: list,
                stop: threading.Event | None) -> None:
        from .progress import Progress

        try:
            client = self.attest()
        except (DvsecureError, OSError) as e:
            # Nothing sent to an enclave that did not prove what it is; tried again next round.
            report.failed += [{"query_id": q, "party": "enclave", "error": f"not sent: {e}"} for q in todo]
            return
        # The vote and its nonce, fixed before anything leaves this host.
        self.state.add_sealed([Sealed(r.query_id, r.vote, os.urandom(32), oq.num_classes, [], [])
                               for r in fresh])
        bar = Progress(f"round {oq.round}", unit="vote")
        bar.start(len(todo))
        try:
            for i, qid in enumerate(todo):
                if stop is not None and stop.is_set():
                    break
                s = self.state.sealed[qid]
                try:
                    client.conn.call("Submit", seal_vote(client, qid, s.vote, s.nonce, oq.num_classes))
                except EnclaveError as e:
                    if e.code != HELD:         # HELD: this instance has the vote already
                        report.failed.append({"query_id": qid, "party": "enclave", "error": str(e)})
                        if e.code in UNREACHABLE:   # not one timeout per query: the rest next round
                            report.failed += [{"query_id": q, "party": "enclave",
                                               "error": f"not tried: the enclave was unreachable ({e.code})"}
                                              for q in todo[i + 1:]]
                            break
                        bar.advance(1)
                        continue
                self.state.mark_sent(qid, oq.round, calibration=oq.calibration is not None)
                report.sent.append(qid)
                bar.advance(1)
        finally:
            bar.close()

    def audit_options(self) -> dict:
        # No key pinning on first use: every instance has a key of its own (recorded with its
        # attestation, which the audit checks); the checkpoint it saw is checked in check_copy.
        return {"witness": None, "enclave_pcr0": self.pcr0, "trusted_sim_roots": self.roots,
                "enclave_principals": self.principals}

    def check_copy(self, copy, report) -> None:
        """The mirrored log must extend the last checkpoint this source verified at the
        enclave itself (signed by an attested key): not rolled back, not forked."""
        from ..log.files import ENTRIES_FILE, read_published
        from ..log.merkle import MerkleTree, leaf_hash
        from ..log.writer import ENTRIES

        saved = self.state.root / WITNESS_CHECKPOINT
        if not saved.exists():
            return
        seen = Checkpoint.parse(saved.read_bytes())
        lines = read_published(copy, ENTRIES, ENTRIES_FILE).split(b"\n")[:-1]
        if len(lines) < seen.size:
            report.add("witness", f"rolled back: the log has {len(lines)} entries, but this source saw a "
                                  f"checkpoint of {seen.size} at the enclave")
        elif seen.size and MerkleTree([leaf_hash(x) for x in lines]).root(seen.size) != seen.root_hash:
            report.add("witness", f"forked: the log's first {seen.size} entries are not those of the checkpoint "
                                  "this source saw at the enclave")


def make_source(cfg: dict) -> Source:
    """The source this config describes: an enclave's (key `enclave`) or the MPC parties'."""
    return EnclaveSource(cfg) if cfg["enclave"] is not None else Source(cfg)
