"""The enclave's clients: a source, the coordinator, and the checks they make.

Light install (grpcio, protobuf, nacl, cryptography; no torch). A source:

1. connects over TLS, pinning the certificate the enclave wrote (`connect`);
2. asks for an attestation with a fresh nonce and verifies it — chain to the
   trusted root (a simulated root only if passed explicitly), expected PCR0,
   the nonce, and the key binding: the X25519 key to seal to, the checkpoint
   key, the hash of the very TLS certificate it pinned, and the hash of the
   principals file the consortium agreed on (`verify_enclave`);
3. seals its votes to that key and signs the request (`SourceClient.submit`),
   keeping each vote's commitment nonce;
4. later mirrors the public log (`fetch_log`), audits it (`dvsecure.audit.check`),
   checks that every key that signed it was attested (`audit.attested`, which
   the audit runs under a policy naming the enclave) and that the log commits to
   exactly the votes it sent for queries (`check_commitments`; votes for
   calibration queries have no commitment in the log: its calibration entry
   states only the released accuracies and weights).

Failures raise EnclaveError (code = the gRPC status name for refusals by the
enclave) or AttestationError (reason says which check failed).
"""
from __future__ import annotations

import hashlib
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.public import PublicKey, SealedBox
from nacl.signing import SigningKey

from ..attestation.nitro import AttestationDocument, verify
from ..errors import EnclaveError, ProofError, VoteError
from ..log import entry as E
from ..log.files import ENTRIES_FILE, NOTE_FILE, read_published, scan_published
from ..log.merkle import verify_consistency
from ..log.note import Checkpoint, Verifier, open_note
from ..log.writer import CHECKPOINTS, ENTRIES, KEYS, POLICY, PREVIOUS, checkpoint_name, key_file_name, write_atomic
from ..mechanism.fixedpoint import SCALE
from ..noise import PRIVATE
from ..policy import ConsortiumPolicy
from ..wire.proto import dvsecure_pb2 as pb
from ..wire.proto import dvsecure_pb2_grpc as pb_grpc
from ..wire.submission import Submission
from . import protocol as proto

DEFAULT_TIMEOUT = 60.0            # seconds, every call has a deadline
DEFAULT_MAX_MESSAGE = 16 << 20


class Connection:
    """A TLS channel to one enclave, pinned to its certificate; every call has a deadline."""

    def __init__(self, address: str, tls_cert_pem: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE):
        self.address, self.timeout = address, timeout
        self.tls_cert_der = x509.load_pem_x509_certificate(tls_cert_pem).public_bytes(Encoding.DER)
        self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_cert_pem),
                                           options=[("grpc.max_receive_message_length", max_message_bytes),
                                                    ("grpc.max_send_message_length", max_message_bytes)])
        self.stub = pb_grpc.EnclaveStub(self.channel)

    def call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise EnclaveError(f"{method}: {e.code().name}: {e.details()}", e.code().name) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(address: str, tls_cert: str | Path | bytes, **kw) -> Connection:
    pem = tls_cert if isinstance(tls_cert, bytes) else Path(tls_cert).read_bytes()
    return Connection(address, pem, **kw)


# ---- attestation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EnclaveIdentity:
    """What a verified attestation says about the enclave instance."""

    public_key: bytes           # X25519: votes are sealed to it
    signer_vkey: str            # its checkpoint key (C2SP verifier key)
    document: AttestationDocument
    simulated: bool
    noise: str = PRIVATE        # the noise mode it releases with


def verify_enclave(conn: Connection, *, expected_pcr0: bytes, expected_principals: bytes,
                   expected_policy: ConsortiumPolicy, trusted_sim_roots: Iterable = (),
                   root=None, allow_nonprivate: bool = False) -> EnclaveIdentity:
    """Fetch a fresh attestation and check it binds this instance's keys, its TLS endpoint,
    the agreed principals file (`expected_principals`: its exact bytes), the agreed
    policy and private noise (test noise only with `allow_nonprivate`) — before a
    single vote is sent to it."""
    nonce = os.urandom(32)
    raw = conn.call("GetAttestation", pb.AttestationRequest(nonce=nonce)).document
    doc = verify(raw, root_der_or_pem=root, expected_pcrs={0: expected_pcr0}, expected_nonce=nonce,
                 trusted_sim_roots=list(trusted_sim_roots))
    binding = proto.parse_binding(doc.user_data)
    if doc.public_key is None or len(doc.public_key) != proto.X25519_KEY_BYTES:
        raise EnclaveError("the attestation binds no X25519 key to seal votes to", "UNAUTHENTICATED")
    if binding.tls_sha256 != hashlib.sha256(conn.tls_cert_der).digest():
        raise EnclaveError("the pinned TLS certificate is not the one the attested enclave holds: "
                           "the channel may end outside the enclave", "UNAUTHENTICATED")
    if binding.principals_sha256 != hashlib.sha256(expected_principals).digest():
        raise EnclaveError("the enclave was started with other principals than the agreed file: someone else "
                           "could submit in a source's name", "UNAUTHENTICATED")
    if not binding.policy_is(expected_policy):
        raise EnclaveError("the enclave enforces another policy than the agreed one (other bands, budgets or "
                           "mechanism)", "UNAUTHENTICATED")
    if binding.noise != PRIVATE and not allow_nonprivate:
        raise EnclaveError(f"the enclave releases with {binding.noise!r} noise, which is not private (a test mode)",
                           "UNAUTHENTICATED")
    Verifier.from_key_string(binding.signer_vkey)   # well-formed, or NoteError
    return EnclaveIdentity(doc.public_key, binding.signer_vkey, doc, doc.simulated, binding.noise)


# ---- signed requests ------------------------------------------------------------------------

class _Principal:
    def __init__(self, name: str, key: SigningKey, conn: Connection, enclave: EnclaveIdentity):
        self.name, self.key, self.conn, self.enclave = name, key, conn, enclave
        self._counter = 0

    def next_counter(self) -> int:
        # Nanosecond clock, forced strictly increasing: no state to keep across client restarts.
        self._counter = max(self._counter + 1, time.time_ns())
        return self._counter

    def signed(self, method: str, body) -> pb.Signed:
        return proto.sign(method, self.name, self.key, body.SerializeToString())


def _vote_message(vote, nonce: bytes) -> tuple[pb.Vote, object]:
    """The wire vote and the same value as the enclave will decode it, so that both
    sides compute the same commitment."""
    if isinstance(vote, numbers.Integral) and not isinstance(vote, bool):
        return pb.Vote(label=int(vote), nonce=nonce), int(vote)
    if isinstance(vote, (str, bytes)) or not all(isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))
                                                 for x in vote):
        # float() would read "1" or True as a number: a vote that is not numeric is refused here.
        raise VoteError(f"a vote must be a class index or a vector of numbers, got {vote!r}")
    if all(isinstance(x, numbers.Integral) for x in vote):
        # Integer entries: a slice histogram's counts (or a one-hot vector), sent exactly.
        counts = [int(x) for x in vote]
        return pb.Vote(counts=pb.Counts(n=counts), nonce=nonce), counts
    probs = [float(x) for x in vote]
    return pb.Vote(probabilities=pb.Probabilities(p=probs), nonce=nonce), probs


class SourceClient(_Principal):
    """A source: seals its votes to the attested enclave key and signs them."""

    def seal(self, query_ids: Sequence[str], votes: Sequence, num_classes: int
             ) -> tuple[pb.Signed, dict[str, Submission]]:
        if len(votes) != len(query_ids):
            raise ValueError(f"{len(votes)} votes for {len(query_ids)} query ids")
        wire, kept = [], {}
        for q, v in zip(query_ids, votes):
            msg, value = _vote_message(v, os.urandom(proto.VOTE_NONCE_BYTES))
            wire.append(msg)
            kept[q] = Submission(value, msg.nonce)
        sealed = SealedBox(PublicKey(self.enclave.public_key)).encrypt(pb.Votes(votes=wire).SerializeToString())
        body = pb.Submission(version=proto.VERSION, source_id=self.name, counter=self.next_counter(),
                             enclave_key=self.enclave.public_key, num_classes=num_classes,
                             query_ids=list(query_ids), sealed=bytes(sealed))
        return self.signed("Submit", body), kept

    def submit(self, query_ids: Sequence[str], votes: Sequence, num_classes: int) -> dict[str, Submission]:
        """Send the votes; returns what was sent per query id (keep it to check the log's commitments)."""
        request, kept = self.seal(query_ids, votes, num_classes)
        self.conn.call("Submit", request)
        return kept


class CoordinatorClient(_Principal):
    """The coordinator: opens queries, asks for their release or calibrates on them."""

    def control(self, method: str, query_ids: Sequence[str], num_classes: int = 0) -> pb.Signed:
        return self.signed(method, pb.Control(version=proto.VERSION, counter=self.next_counter(),
                                              enclave_key=self.enclave.public_key, num_classes=num_classes,
                                              query_ids=list(query_ids)))

    def open(self, query_ids: Sequence[str], num_classes: int) -> int:
        return self.conn.call("Open", self.control("Open", query_ids, num_classes)).opened

    def release(self, query_ids: Sequence[str]) -> pb.QueryReply:
        return self.conn.call("Query", self.control("Query", query_ids))

    def calibration_request(self, calibration_id: str, query_ids: Sequence[str], labels: Sequence[int]) -> pb.Signed:
        return self.signed("Calibrate", pb.CalibrationRequest(
            version=proto.VERSION, counter=self.next_counter(), enclave_key=self.enclave.public_key,
            calibration_id=calibration_id, query_ids=list(query_ids), labels=[int(y) for y in labels]))

    def calibrate(self, calibration_id: str, query_ids: Sequence[str], labels: Sequence[int]) -> pb.CalibrationReply:
        """Calibrate on these open queries, whose true labels these are; the log entry is `calibration_id`."""
        return self.conn.call("Calibrate", self.calibration_request(calibration_id, query_ids, labels))


# ---- the log --------------------------------------------------------------------------------

def fetch_log(conn: Connection, policy: ConsortiumPolicy, dest: str | Path) -> Path:
    """Mirror the enclave's public log into `dest` as a log directory `dvsecure audit`
    reads: the source's own copy of the policy, the entries up to the latest
    checkpoint, every checkpoint down its previous-checkpoint chain, and the keys
    the signers entries record. Nothing is trusted here: audit the result."""
    dest = Path(dest)
    if dest.exists():
        scan_published(dest).raise_refused()     # a link already in dest would be written through
    (dest / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    (dest / KEYS).mkdir(exist_ok=True)
    head = conn.call("GetCheckpoint", pb.CheckpointRequest(size=0))
    entries = read_entries(conn, head.size)
    notes, size = {head.size: head.note}, head.size
    while True:
        if len(notes[size]) > NOTE_FILE.cap:
            raise EnclaveError(f"the enclave's checkpoint of size {size} exceeds {NOTE_FILE.limit()}",
                               "RESOURCE_EXHAUSTED")
        text = notes[size].split(b"\n\n", 1)[0] + b"\n"
        prev = [line[len(PREVIOUS):] for line in text.decode(errors="replace").split("\n") if line.startswith(PREVIOUS)]
        if len(prev) != 1 or not prev[0].isdigit() or int(prev[0]) == 0 or int(prev[0]) in notes:
            break
        size = int(prev[0])
        notes[size] = conn.call("GetCheckpoint", pb.CheckpointRequest(size=size)).note
    write_atomic(dest / POLICY, policy.to_toml().encode())
    write_atomic(dest / ENTRIES, b"".join(e + b"\n" for e in entries))
    for n, note in notes.items():
        write_atomic(dest / CHECKPOINTS / checkpoint_name(n), note)
    for line in entries:
        e = E.decode(line)
        if isinstance(e, E.Signers):
            for k in e.keys:
                write_atomic(dest / KEYS / key_file_name(k.vkey), (k.vkey + "\n").encode())
    return dest


def read_entries(conn: Connection, size: int) -> list[bytes]:
    """The log's first `size` entries (exact bytes), page by page; unverified."""
    entries: list[bytes] = []
    total, cap = 0, ENTRIES_FILE.cap        # the auditor would refuse a larger mirror anyway
    while len(entries) < size:
        got = conn.call("GetEntries", pb.EntriesRequest(start=len(entries), end=size)).entries
        if not got:
            raise EnclaveError(f"the enclave served {len(entries)} of the {size} entries its checkpoint covers",
                               "DATA_LOSS")
        total += sum(len(e) + 1 for e in got)
        if total > cap:
            raise EnclaveError(f"the enclave's entries exceed {ENTRIES_FILE.limit()}", "RESOURCE_EXHAUSTED")
        entries += got
    return entries


def calibrated_weights(entries: Iterable[bytes], policy: ConsortiumPolicy) -> dict[str, float] | None:
    """The weights the latest calibration entry of a log sets, or None if it has none
    (what the enclave queries with: `stored_weights` of its ledger)."""
    latest = None
    for line in entries:
        e = E.decode(line)
        if isinstance(e, E.Calibration):
            latest = e
    if latest is None:
        return None
    units = E.unpack(latest.gamma, "<u4", len(policy.sources))
    return {sid: int(g) / SCALE for sid, g in zip(policy.ids, units)}


def verify_checkpoint_from(conn: Connection, identity: EnclaveIdentity) -> Checkpoint:
    """The latest checkpoint, checked to be signed by the attested instance's key."""
    note = conn.call("GetCheckpoint", pb.CheckpointRequest(size=0)).note
    opened = open_note(note, [Verifier.from_key_string(identity.signer_vkey)],
                       required=[Verifier.from_key_string(identity.signer_vkey).name])
    return Checkpoint.parse(opened.text)


def check_not_rolled_back(conn: Connection, identity: EnclaveIdentity, witness: Checkpoint | None) -> Checkpoint:
    """Before sending votes: the attested instance's latest checkpoint must extend
    `witness` — the latest checkpoint this source saw before (from any earlier
    instance; None the first time). The host keeps the ledger, so it could restart
    the enclave on an older copy to free spent budget; a source that refuses to
    submit to a log shorter than, or forked from, what it saw gives it nothing.
    Returns the new checkpoint: the source keeps it as its next witness."""
    latest = verify_checkpoint_from(conn, identity)
    if witness is None:
        return latest
    if latest.origin != witness.origin:
        raise EnclaveError(f"the enclave serves log {latest.origin!r}, not {witness.origin!r}", "FAILED_PRECONDITION")
    if latest.size < witness.size:
        raise EnclaveError(f"rolled back: the enclave's log has {latest.size} entries, but this source saw a "
                           f"checkpoint of {witness.size}", "DATA_LOSS")
    proof = []
    if 0 < witness.size < latest.size:
        proof = list(conn.call("GetProofs", pb.ProofsRequest(tree_size=latest.size, old_sizes=[witness.size]))
                     .consistency[0].hashes)
    try:
        verify_consistency(witness.size, latest.size, proof, witness.root_hash, latest.root_hash)
    except ProofError as e:
        raise EnclaveError(f"forked: the enclave's log does not extend the checkpoint of {witness.size} entries "
                           f"this source saw ({e})", "DATA_LOSS") from None
    return latest


def check_commitments(log_dir: str | Path, source_id: str, sent: Mapping[str, Submission], *,
                      complete: bool = False) -> list[str]:
    """Problems with how the log records this source's votes: each query it voted for
    must be in the log with the commitment to exactly that vote. With `complete`
    (`sent` holds every vote it ever sent to this log), any other query that
    counts a vote for it is a problem too: a vote it never sent."""
    lines = read_published(log_dir, ENTRIES, ENTRIES_FILE).split(b"\n")[:-1]
    genesis = E.decode(lines[0])
    j, count = genesis.sources.index(source_id), len(genesis.sources)
    found, problems = set(), []
    for line in lines:
        e = E.decode(line)
        if not isinstance(e, E.Query):
            continue
        mine = E.unpack_commitments(e.commitments, count)[j]
        if e.query_id in sent:
            found.add(e.query_id)
            if mine != sent[e.query_id].commitment(e.query_id, source_id):
                problems.append(f"query {e.query_id!r} (entry {e.seq}): the log does not commit to the vote sent")
        elif complete and mine != E.ABSENT_COMMITMENT:
            problems.append(f"query {e.query_id!r} (entry {e.seq}): counts a vote this source never sent")
    problems += [f"query {q!r}: no entry in the log" for q in sent if q not in found]
    return problems
