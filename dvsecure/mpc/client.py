"""A source's client for the MPC backend over gRPC (light install: no torch).

The source connects to every computing party over TLS, pinning each party's
certificate (published by the party out of band), asks each for its keys,
and for a batch of queries: validates and encodes its votes (a simplex vote
rounded to its policy's m unit votes, keyed by the query, exactly as every
backend rounds it: so it needs its own `SourcePolicy.vote_format`), commits
to each under a fresh nonce (`Submission`, the commitment the log will carry), splits
each vote into additive shares, seals share i to party i's X25519 key, signs
each party's envelope with its Ed25519 key (`sharing.seal_submissions`), and
sends each party its own. No party — nor the coordinator — ever receives a vote.
"""
from __future__ import annotations

from typing import Sequence

import grpc
from nacl.public import PublicKey
from nacl.signing import SigningKey

from ..errors import PartyRefusal, VoteError
from ..policy import ONE_HOT
from ..wire.proto import dvsecure_pb2 as pb
from ..wire.submission import Submission
from .sharing import encode_batch, seal_submissions

SERVICE = "/dvsecure.v1.Party/"


class _Party:
    def __init__(self, address: str, tls_pem: bytes, timeout: float, max_message: int):
        self.address, self.timeout = address, timeout
        self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_pem),
                                           options=[("grpc.max_send_message_length", max_message),
                                                    ("grpc.max_receive_message_length", max_message)])

    def call(self, method: str, request, reply_cls):
        stub = self.channel.unary_unary(SERVICE + method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=reply_cls.FromString)
        try:
            return stub(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise PartyRefusal(f"party at {self.address}: {method}: {e.code().name}: {e.details()}",
                               e.code().name) from None


class PartySubmitter:
    """One source's connection to all n parties, in rank order."""

    def __init__(self, source_id: str, signing_key: SigningKey, endpoints: Sequence[dict],
                 timeout: float = 30.0, max_message: int = 64 << 20):
        """endpoints: per party in rank order, {"address": "host:port", "tls": certificate PEM}."""
        self.source_id, self.signing_key = source_id, signing_key
        self._parties = [_Party(e["address"], e["tls"], timeout, max_message) for e in endpoints]
        self.box_keys = []
        for rank, party in enumerate(self._parties):
            keys = party.call("GetKeys", pb.PartyKeysRequest(), pb.PartyKeys)
            if keys.rank != rank or keys.world_size != len(endpoints):
                raise PartyRefusal(f"the party at {party.address} is rank {keys.rank} of {keys.world_size}, "
                                   f"expected rank {rank} of {len(endpoints)}", "FAILED_PRECONDITION")
            self.box_keys.append(PublicKey(keys.box_key))

    def envelopes(self, query_ids: Sequence[str], votes: Sequence, num_classes: int,
                  kind=ONE_HOT) -> tuple[list[bytes], list[Submission]]:
        """The signed, sealed envelope for each party, and the submissions whose
        nonces let the source find its commitments in the log later. kind: this
        source's `SourcePolicy.vote_format` (or a kind name, for one-hot votes)."""
        owner = getattr(kind, "source_id", None)
        if owner is not None and owner != self.source_id:
            raise VoteError(f"the vote format given is source {owner!r}'s, not {self.source_id!r}'s")
        encoded = encode_batch(list(votes), num_classes, kind, list(query_ids))
        subs = [Submission.new(v) for v in votes]
        commitments = [s.commitment(q, self.source_id) for q, s in zip(query_ids, subs)]
        return seal_submissions(self.source_id, self.signing_key, list(query_ids), encoded, self.box_keys,
                                commitments, kind=kind, num_classes=num_classes), subs

    def send(self, envelopes: Sequence[bytes]) -> None:
        """Each party its own envelope; raises PartyRefusal naming the refusing party."""
        for rank, envelope in enumerate(envelopes):
            self.send_to(rank, envelope)

    def send_to(self, rank: int, envelope: bytes) -> None:
        """Party `rank` its envelope (a source resending to one party that lost it)."""
        self._parties[rank].call("SubmitShares", pb.ShareEnvelope(envelope=envelope), pb.SubmitReply)

    def submit(self, query_ids: Sequence[str], votes: Sequence, num_classes: int,
               kind=ONE_HOT) -> list[Submission]:
        envelopes, subs = self.envelopes(query_ids, votes, num_classes, kind)
        self.send(envelopes)
        return subs

    def close(self) -> None:
        for p in self._parties:
            p.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
