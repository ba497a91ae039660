"""The enclave's state and calls (the gRPC wiring is in app.py).

At start it generates, in memory only, an X25519 key (votes are sealed to it)
and an Ed25519 checkpoint key (a note signer with role "enclave"), and obtains
an attestation document binding them, its TLS certificate and the principals
file to its measurement (dvsecure.tee.protocol). The log's signers entry
records the checkpoint key with that document, so every restart (new keys) is
visible in the log.

Flow: the coordinator Opens query ids; sources Submit sealed, signed votes for
them; the coordinator asks for their release (Query) when it chooses — e.g.
once every source answered or at its own deadline; a source that has not
submitted by then is absent (weight 0, charged 0). Release runs the reference
mechanism (plaintext backend, OpenDP noise) and accounting; the charges are
durable in the ledger and the log is checkpointed before any label is returned.
A release whose reply is lost is not repeated: its entries are in the log.
Votes still pending at a crash are lost with the key that sealed them: the
coordinator reopens those queries and the sources resubmit.

Calibration runs in here too, as on the plaintext backend: the coordinator opens
queries, the sources submit votes for them like any others, and a signed
Calibrate states their true labels (public to the computing side). The library's
PrivateCalibration reads the submitted votes (absent or invalid: 0), charges and
commits one calibration entry, and its weights serve every later query (after a
restart too: they are read back from the ledger). Those queries release nothing.

Noise is private (OpenDP) unless the simulated provider was started with test
noise; the attestation states the mode either way.

Replay protection: every signed request names the X25519 key of this instance
and a counter that must exceed the signer's last accepted one (kept in memory:
it only has to outlive the instance). A restarted instance has a new key, so
nothing signed for an earlier one is accepted; released query ids are in the
ledger, so a vote for one is refused as late.

What is authenticated: sources and the coordinator by Ed25519 signatures over
the exact request bytes (keys from the attested principals file); the enclave
by its attestation. Reads of the log and attestation requests are open to any
TLS client: the log is public. So each is bounded: GetEntries by bytes per
reply, GetProofs by MAX_PROOFS per call and answered from one Merkle tree per
log size (`_tree`), never rebuilt per call. Query ids follow the library's one
rule (`dvsecure.wire.limits.check_query_id`).
"""
from __future__ import annotations

import base64
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from dvsecure.backends import PlaintextBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.calibration import PrivateCalibration, stored_weights
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import EnclaveError
from dvsecure.log import entry
from dvsecure.log.files import NOTE_FILE, PublishedFileError, read_published
from dvsecure.log.merkle import MerkleTree, leaf_hash
from dvsecure.log.note import Signer
from dvsecure.log.writer import CHECKPOINTS, LogWriter, checkpoint_name
from dvsecure.noise import NoiseSource, PrivateNoise
from dvsecure.policy import ConsortiumPolicy
from dvsecure.tee import protocol as proto
from dvsecure.wire import rpc
from dvsecure.wire.limits import check_query_id
from dvsecure.wire.proto import dvsecure_pb2 as pb
from dvsecure.wire.submission import Submission

MAX_CLASSES = 4096
MAX_ENTRIES_BYTES = 4 << 20       # per GetEntries reply, well under the message limit
MAX_PROOFS = 1024                 # leaf indices + old sizes per GetProofs request: an open call stays small


@dataclass
class Pending:
    num_classes: int
    votes: dict[str, Submission] = field(default_factory=dict)


def fail(message: str, code: str = "INVALID_ARGUMENT"):
    raise EnclaveError(message, code)


def parse(cls, raw: bytes, what: str):
    return rpc.parse(cls, raw, what, EnclaveError)


class Enclave:
    def __init__(self, policy: ConsortiumPolicy, principals: proto.Principals, principals_raw: bytes, state: Path,
                 out: Path, provider, tls_cert_der: bytes, max_open: int, noise: NoiseSource | None = None):
        self.policy, self.principals, self.provider, self.max_open = policy, principals, provider, max_open
        self.noise = noise = noise or PrivateNoise()
        self.box_key = PrivateKey.generate()
        self.public_key = bytes(self.box_key.public_key)
        self.signer = Signer(f"{entry.log_origin(policy)}/enclave-{secrets.token_hex(4)}", os.urandom(32))
        self.user_data = proto.binding_user_data(self.signer.verifier_key_string, tls_cert_der, principals_raw,
                                                  policy.digest(), noise.mode)
        document = provider.attest(public_key=self.public_key, user_data=self.user_data, nonce=None)
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self.ledger = Ledger(state / "ledger.sqlite", policy)
        self.ledger.check_against_records()     # the host holds the file: derived state is recomputed
        self.log = LogWriter(out, self.ledger, [self.signer], role="enclave",
                             attestations={self.signer.name: base64.b64encode(document).decode()})
        self.log.sync()     # records the new signers entry; catches up whatever a crash left unlogged
        self.aggregator = Aggregator(policy, self.ledger, backend=PlaintextBackend(), noise=noise,
                                     weights=stored_weights(self.ledger), log=self.log)
        self.out = out
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.pending: dict[str, Pending] = {}
        self.leaves = [leaf_hash(b) for b in self.ledger.record_bytes(0, self.log.size)]
        self.tree: MerkleTree | None = None     # over all of self.leaves once built; see _tree
        self.tree_lock = threading.Lock()

    # ---- checks shared by the signed calls ----------------------------------------------
    def _authenticate(self, method: str, raw: bytes, group: dict, body_cls):
        signed = parse(pb.Signed, raw, "request (not a Signed message)")
        key = group.get(signed.signer_id)
        if key is None:
            role = "source" if group is self.principals.sources else "coordinator"
            fail(f"unknown {role} {signed.signer_id!r}: not in this enclave's principals", "UNAUTHENTICATED")
        if not proto.signature_ok(method, signed, key):
            fail(f"bad signature on the {method} request of {signed.signer_id!r}", "UNAUTHENTICATED")
        body = parse(body_cls, signed.body, f"{method} body of {signed.signer_id!r}")
        if body.version != proto.VERSION:
            fail(f"{method} body version {body.version}, expected {proto.VERSION}")
        if body.enclave_key != self.public_key:
            fail(f"{method} request of {signed.signer_id!r} is for another enclave instance (its key is not "
                 f"this instance's): a replay from before a restart, or a stale attestation", "FAILED_PRECONDITION")
        last = self.counters.get(signed.signer_id, 0)
        if body.counter <= last:
            fail(f"replayed {method} request of {signed.signer_id!r}: counter {body.counter} is not above "
                 f"the last accepted {last}", "ALREADY_EXISTS")
        # Consumed once authentic, even if refused below: a refused request never becomes valid later.
        self.counters[signed.signer_id] = body.counter
        return signed.signer_id, body

    def _check_ids(self, ids, limit: int) -> list[str]:
        ids = list(ids)
        if not ids:
            fail("no query ids")
        if len(ids) > limit:
            fail(f"{len(ids)} query ids in one request; at most {limit}", "RESOURCE_EXHAUSTED")
        if len(set(ids)) != len(ids):
            fail("duplicate query ids in one request")
        for q in ids:
            check_query_id(q, EnclaveError)
        return ids

    def _pending(self, qid: str) -> Pending:
        p = self.pending.get(qid)
        if p is None:
            if self.ledger.has_query(qid):
                fail(f"late: query {qid!r} was already released; it takes no more votes", "FAILED_PRECONDITION")
            fail(f"unknown query {qid!r}: the coordinator has not opened it", "NOT_FOUND")
        return p

    # ---- calls ---------------------------------------------------------------------------
    def get_attestation(self, raw: bytes) -> pb.Attestation:
        req = parse(pb.AttestationRequest, raw, "AttestationRequest")
        lo, hi = proto.ATTESTATION_NONCE_BYTES
        if not lo <= len(req.nonce) <= hi:
            fail(f"attestation nonce must be {lo}..{hi} bytes, got {len(req.nonce)}")
        return pb.Attestation(document=self.provider.attest(public_key=self.public_key, user_data=self.user_data,
                                                            nonce=req.nonce))

    def open(self, raw: bytes) -> pb.OpenReply:
        with self.lock:
            _, body = self._authenticate("Open", raw, self.principals.coordinators, pb.Control)
            ids = self._check_ids(body.query_ids, self.max_open)
            if not 2 <= body.num_classes <= MAX_CLASSES:
                fail(f"num_classes must be in 2..{MAX_CLASSES}, got {body.num_classes}")
            if len(self.pending) + len(ids) > self.max_open:
                fail(f"{len(self.pending)} queries already open; at most {self.max_open}", "RESOURCE_EXHAUSTED")
            for q in ids:
                if q in self.pending or self.ledger.has_query(q):
                    fail(f"query {q!r} is already open or released", "ALREADY_EXISTS")
            for q in ids:
                self.pending[q] = Pending(body.num_classes)
            return pb.OpenReply(opened=len(ids))

    def submit(self, raw: bytes) -> pb.SubmitReply:
        with self.lock:
            sid, body = self._authenticate("Submit", raw, self.principals.sources, pb.Submission)
            if body.source_id != sid:
                fail(f"submission signed by {sid!r} names source {body.source_id!r}", "UNAUTHENTICATED")
            ids = self._check_ids(body.query_ids, self.max_open)
            queries = [self._pending(q) for q in ids]
            for q, p in zip(ids, queries):
                if p.num_classes != body.num_classes:
                    fail(f"query {q!r} has {p.num_classes} classes, the submission says {body.num_classes}")
                if sid in p.votes:
                    fail(f"source {sid!r} already submitted a vote for query {q!r}", "ALREADY_EXISTS")
            try:
                plain = SealedBox(self.box_key).decrypt(body.sealed)
            except CryptoError:
                fail(f"the votes of {sid!r} do not decrypt with this enclave's key")
            votes = parse(pb.Votes, plain, f"sealed votes of {sid!r}").votes
            if len(votes) != len(ids):
                fail(f"{len(votes)} votes for {len(ids)} query ids")
            opened = []
            for q, v in zip(ids, votes):
                if len(v.nonce) != proto.VOTE_NONCE_BYTES:
                    fail(f"vote of {sid!r} for {q!r}: nonce must be {proto.VOTE_NONCE_BYTES} bytes")
                kind = v.WhichOneof("value")
                if kind is None:
                    fail(f"vote of {sid!r} for {q!r} is empty")
                value = v.label if kind == "label" else list(v.probabilities.p if kind == "probabilities"
                                                             else v.counts.n)
                if kind != "label" and len(value) != body.num_classes:
                    fail(f"vote of {sid!r} for {q!r} has {len(value)} entries, "
                         f"the query has {body.num_classes} classes")
                # Invalid values (out of range, not one-hot, not a histogram of its m slices)
                # are not errors: the mechanism excludes the source from that query and the
                # log says why.
                opened.append(Submission(value, v.nonce))
            for p, s in zip(queries, opened):
                p.votes[sid] = s
            return pb.SubmitReply(accepted=len(opened))

    def query(self, raw: bytes) -> pb.QueryReply:
        with self.lock:
            _, body = self._authenticate("Query", raw, self.principals.coordinators, pb.Control)
            ids = self._check_ids(body.query_ids, self.max_open)
            queries = [self._pending(q) for q in ids]
            releases = []
            start = 0
            while start < len(ids):     # one aggregator batch per run of equal num_classes
                c = queries[start].num_classes
                end = start
                while end < len(ids) and queries[end].num_classes == c:
                    end += 1
                results = self.aggregator.query_batch([(q, p.votes) for q, p in
                                                       zip(ids[start:end], queries[start:end])], c)
                for r in results:
                    del self.pending[r.query_id]
                    releases.append(pb.Release(query_id=r.query_id, seq=r.seq, answered=r.answered, label=r.label,
                                               absent=[x.source_id for x in r.participants if x.status == "absent"]))
                start = end
            self._extend_leaves()
            return pb.QueryReply(releases=releases, tree_size=self.log.size)

    def calibrate(self, raw: bytes) -> pb.CalibrationReply:
        with self.lock:
            _, body = self._authenticate("Calibrate", raw, self.principals.coordinators, pb.CalibrationRequest)
            cid = body.calibration_id
            try:
                check_query_id(cid, EnclaveError)
            except EnclaveError as e:
                fail(f"calibration id: {e}")
            if cid in self.pending or self.ledger.has_query(cid):
                fail(f"calibration id {cid!r} is already an open or released query", "ALREADY_EXISTS")
            ids = self._check_ids(body.query_ids, self.max_open)
            queries = [self._pending(q) for q in ids]
            c = queries[0].num_classes
            if any(p.num_classes != c for p in queries):
                fail("the labelled queries do not all have the same number of classes")
            if len(body.labels) != len(ids):
                fail(f"{len(body.labels)} labels for {len(ids)} query ids")
            for q, y in zip(ids, body.labels):
                if not 0 <= y < c:
                    fail(f"label {y} of query {q!r} is not one of its {c} classes")
            votes = [[p.votes[s].vote if s in p.votes else None for s in self.policy.ids] for p in queries]
            result = PrivateCalibration(self.policy, self.ledger, self.noise).run(cid, votes, list(body.labels), c,
                                                                                  ids)
            for q in ids:
                del self.pending[q]
            self.log.sync()
            weights = stored_weights(self.ledger)       # what a restart would read: the entry just committed
            self.aggregator.set_weights(weights)
            self._extend_leaves()
            return pb.CalibrationReply(seq=self.ledger.next_seq() - 1, weights=[weights[s] for s in self.policy.ids],
                                       skipped=sorted(result.skipped), tree_size=self.log.size)

    def _extend_leaves(self) -> None:
        self.leaves += [leaf_hash(b) for b in self.ledger.record_bytes(len(self.leaves), self.log.size)]

    def get_entries(self, raw: bytes) -> pb.Entries:
        req = parse(pb.EntriesRequest, raw, "EntriesRequest")
        with self.lock:
            size = self.log.size
            end = size if req.end == 0 else min(req.end, size)
            if req.start > end:
                fail(f"start {req.start} is beyond the log's {size} entries", "OUT_OF_RANGE")
            out, total = [], 0
            for b in self.ledger.record_bytes(req.start, min(end, req.start + 10_000)):
                total += len(b)
                if out and total > MAX_ENTRIES_BYTES:
                    break
                out.append(b)
            return pb.Entries(start=req.start, entries=out)

    def get_checkpoint(self, raw: bytes) -> pb.SignedCheckpoint:
        req = parse(pb.CheckpointRequest, raw, "CheckpointRequest")
        with self.lock:
            size = req.size or self.log.size
            path = self.out / CHECKPOINTS / checkpoint_name(size)
            if size > self.log.size or not path.exists():
                fail(f"no checkpoint of size {size}", "NOT_FOUND")
            try:        # the host owns this directory: a link or FIFO planted there is not served
                note = read_published(self.out, f"{CHECKPOINTS}/{path.name}", NOTE_FILE)
            except PublishedFileError as e:
                fail(f"checkpoint of size {size}: {e.problem}", "DATA_LOSS")
            return pb.SignedCheckpoint(size=size, note=note)

    def _tree(self) -> MerkleTree:
        """The Merkle tree over the whole log, built once per log size and shared by
        every GetProofs call (anyone may call it: a rebuild per call would let them
        burn the enclave's CPU); a smaller size's proofs come from its prefixes."""
        with self.tree_lock:                 # concurrent callers after a release wait for one build
            with self.lock:
                if self.tree is not None and self.tree.size == len(self.leaves):
                    return self.tree
                leaves = self.leaves[:]
            # Outside the main lock: an open read must not stall submissions.
            self.tree = MerkleTree(leaves)
            return self.tree

    def get_proofs(self, raw: bytes) -> pb.Proofs:
        req = parse(pb.ProofsRequest, raw, "ProofsRequest")
        if len(req.leaf_indices) + len(req.old_sizes) > MAX_PROOFS:
            fail(f"{len(req.leaf_indices)} leaf indices and {len(req.old_sizes)} old sizes in one GetProofs "
                 f"request; at most {MAX_PROOFS} proofs per request", "RESOURCE_EXHAUSTED")
        tree = self._tree()
        n = req.tree_size
        if not 0 < n <= tree.size:
            fail(f"tree size {n} is not in 1..{tree.size}", "OUT_OF_RANGE")
        bad = [i for i in req.leaf_indices if i >= n] + [m for m in req.old_sizes if not 0 < m <= n]
        if bad:
            fail(f"leaf indices or old sizes out of range for tree size {n}: {bad[:5]}", "OUT_OF_RANGE")
        return pb.Proofs(inclusion=[pb.Proof(hashes=tree.inclusion_proof(i, n)) for i in req.leaf_indices],
                         consistency=[pb.Proof(hashes=tree.consistency_proof(m, n)) for m in req.old_sizes])

    def close(self) -> None:
        with self.lock:
            self.ledger.close()
