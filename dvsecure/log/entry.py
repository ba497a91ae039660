"""The log entry format, version 1.

Entry i of a log is the exact bytes of ledger record i: one compact JSON object
(no newline inside), the leaf of the RFC 9162 tree. Verifiers hash and check
those bytes and decode them; nothing is ever re-encoded before checking.

Kinds:

  genesis      seq 0: the log's origin, the policy digest and the SHA-256 of the
               published policy.toml, the source ids (their order is the column
               order of every later entry).
  signers      the set of keys whose signatures every later checkpoint needs
               (the operator key; later, every MPC party or the enclave's
               attested key). A new signers entry replaces the set.
  calibration  private calibration: per source the noise scale and released noisy
               accuracy (null if skipped), and the weights learnt from them.
  query        one query: mechanism, answered bit, label, noise mode, and per
               source the weight, status, cumulative spend, count of charged
               entries, and a commitment to its submission.

Per-source columns are packed little-endian arrays, base64 in the JSON, in
policy order, so that an auditor decodes a column of every entry in one call
instead of parsing 150 JSON numbers per entry (the format is what lets audit
approach 100k entries/s):

  gamma        u32[S]   weight in units of 2**-16 (the exact value tallied)
  spent        f64[S]   cumulative rho after this entry, the float nearest the
                        exact rational; informative: auditors recompute it
  charged      u32[S]   number of entries so far that charged the source: a
                        receipt holding a subset of entries shows any omission
  commitments  32*S B   SHA-256 commitment to each submission (zeros if absent);
                        kept as base64 text when decoded: the auditor checks its
                        length, each source checks its own commitment
  status       S chars  query: A active, S shrunk, B excluded by the budget
                        filter, I invalid vote, X absent;
                        calibration: C calibrated, K skipped (budget)
"""
from __future__ import annotations

import base64
import hashlib
from typing import Literal, Union

import msgspec
import numpy as np

VERSION = 1
GENESIS, SIGNERS, CALIBRATION, QUERY = "genesis", "signers", "calibration", "query"

STATUS_CODES = {"active": "A", "shrunk": "S", "excluded:budget": "B", "excluded:invalid": "I", "absent": "X"}
STATUS_NAMES = {v: k for k, v in STATUS_CODES.items()}
CALIBRATED, CALIBRATION_SKIPPED = "C", "K"
NOISE_MODES = ("private", "seeded", "no_noise")
COMMITMENT_SIZE = 32

Noise = Literal["private", "seeded", "no_noise"]


class _Entry(msgspec.Struct, forbid_unknown_fields=True, tag_field="kind", gc=False):
    v: int
    seq: int
    query_id: str


class Genesis(_Entry, tag=GENESIS):
    origin: str
    policy_digest: str
    policy_sha256: str
    sources: list[str]


class SignerKey(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    vkey: str                       # C2SP signed-note verifier key
    role: Literal["operator", "party", "enclave"]
    attestation: str | None = None  # base64 attestation document binding the key (enclave)


class Signers(_Entry, tag=SIGNERS):
    keys: list[SignerKey]


class Mechanism(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    kind: Literal["gnmax", "confident_gnmax"]
    sigma2: float
    sigma1: float | None = None
    threshold: float | None = None


class Calibration(_Entry, tag=CALIBRATION):
    noise: Noise
    num_queries: int
    num_classes: int
    sigma: list[float | None]
    accuracy: list[float | None]
    gamma: bytes
    status: str
    spent: bytes
    charged: bytes


class Query(_Entry, tag=QUERY):
    noise: Noise
    backend: str
    mechanism: Mechanism
    num_classes: int
    answered: bool
    label: int | None
    gamma: bytes
    status: str
    spent: bytes
    charged: bytes
    commitments: str
    invalid: dict[str, str] = {}


Entry = Union[Genesis, Signers, Calibration, Query]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Entry)


def encode(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode(data: bytes) -> Entry:
    """Raises msgspec.ValidationError / DecodeError naming the offending field."""
    return _decoder.decode(data)


def pack_u32(values) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


def pack_f64(values) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def pack_commitments(commitments: bytes) -> str:
    return base64.b64encode(commitments).decode("ascii")


def unpack_commitments(text: str, count: int) -> list[bytes]:
    """The per-source commitments of a query entry (ValueError if malformed)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != COMMITMENT_SIZE * count:
        raise ValueError(f"expected {count} commitments, got {len(raw)} bytes")
    return [raw[i:i + COMMITMENT_SIZE] for i in range(0, len(raw), COMMITMENT_SIZE)]


def commitments_text_length(count: int) -> int:
    return 4 * ((COMMITMENT_SIZE * count + 2) // 3)


def unpack(raw: bytes, dtype: str, count: int) -> np.ndarray:
    """A packed column, checked for its length (ValueError names both)."""
    item = np.dtype(dtype).itemsize
    if len(raw) != item * count:
        raise ValueError(f"expected {count} values of {item} bytes, got {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype)


def commitment(query_id: str, source_id: str, nonce: bytes, payload: bytes) -> bytes:
    """SHA-256 commitment to one source's submission for one query. The nonce
    (32 random bytes chosen with the submission) makes it hiding; the framing
    binds the query and the source, so a commitment cannot be replayed elsewhere."""
    h = hashlib.sha256(b"dvsecure/submission/v1\x00")
    for part in (query_id.encode(), source_id.encode(), nonce, payload):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


ABSENT_COMMITMENT = bytes(COMMITMENT_SIZE)
_COMMITMENT_DOMAIN = b"dvsecure/submission/v1\x00"


# `commitment` for many sources of one query, the same bytes: SHA-256 is fed the
# same byte string, only in fewer pieces, and the state after the query id is
# computed once and copied for each source.
def commitment_frame(part: bytes) -> bytes:
    """One framed field of a commitment: 4-byte big-endian length, then the bytes."""
    return len(part).to_bytes(4, "big") + part


def commitment_base(query_id: str):
    """The commitment's hash state after the domain and the query id."""
    return hashlib.sha256(_COMMITMENT_DOMAIN + commitment_frame(query_id.encode()))


def commitment_from(base, source_frame: bytes, nonce: bytes, payload: bytes) -> bytes:
    """`commitment(query_id, source_id, nonce, payload)`, given `commitment_base(query_id)`
    and `commitment_frame(source_id.encode())`."""
    h = base.copy()
    h.update(b"".join((source_frame, len(nonce).to_bytes(4, "big"), nonce, len(payload).to_bytes(4, "big"), payload)))
    return h.digest()


def genesis(origin: str, policy_digest: str, policy_toml: bytes, source_ids) -> bytes:
    return encode(Genesis(v=VERSION, seq=0, query_id="genesis", origin=origin, policy_digest=policy_digest,
                          policy_sha256=hashlib.sha256(policy_toml).hexdigest(), sources=list(source_ids)))


def log_origin(policy) -> str:
    """The checkpoint origin names the log: the consortium and its policy digest."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in policy.name)
    return f"dvsecure/{name}/{policy.digest()[:16]}"


def columns(source_ids, spent, charged) -> tuple[bytes, bytes]:
    """The packed cumulative-spend and charged-count columns, in policy order."""
    floats = getattr(spent, "floats", None)   # the ledger's exact spends: nearest floats without Fractions
    values = floats(source_ids) if floats is not None else [float(spent[s]) for s in source_ids]
    return pack_f64(values), pack_u32([charged[s] for s in source_ids])


def per_source(e: Query | Calibration, source_ids) -> list[dict]:
    """The per-source columns of a query or calibration entry as one dict per
    source (for display, receipts and tests; the auditor works on whole columns)."""
    count = len(source_ids)
    gamma = unpack(e.gamma, "<u4", count)
    spent = unpack(e.spent, "<f8", count)
    charged = unpack(e.charged, "<u4", count)
    names = STATUS_NAMES if isinstance(e, Query) else {CALIBRATED: "calibrated", CALIBRATION_SKIPPED: "skipped"}
    out = []
    for j, sid in enumerate(source_ids):
        out.append({"source_id": sid, "gamma": int(gamma[j]) / 65536, "status": names.get(e.status[j], e.status[j]),
                    "spent": float(spent[j]), "charged": int(charged[j]),
                    "reason": e.invalid.get(sid) if isinstance(e, Query) else None})
    if isinstance(e, Query):
        for row, c in zip(out, unpack_commitments(e.commitments, count)):
            row["commitment"] = c
    return out
