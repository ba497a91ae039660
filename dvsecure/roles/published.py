"""What the roles publish to each other, and how it is read.

- The coordinator's published directory is plain files: `log/` (the log: policy,
  entries, checkpoints, keys), `open.json` (the queries open for submission) and
  `index.json` (the log's files), served read-only over HTTP (`serve`) or by any
  web server; `read_open` and `mirror` read it from a directory or an http(s) URL. Nothing read here is trusted: the
  audit verifies the log, and a source checks the open queries against its own
  vote file and the policy digest.
- A computing party's endpoint (`endpoint.json`): where it takes submissions,
  its TLS certificate and its X25519 box key, signed by its cosigning key. A
  source checks the signature against the key the policy names for that rank,
  so neither the coordinator nor the network can substitute a party.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import ParameterError

OPEN_FILE = "open.json"
INDEX_FILE = "index.json"
LOG_DIR = "log"
ENDPOINT_FILE = "endpoint.json"
MAX_FETCH = 256 << 20                 # one published file, never read without bound
# Never the first byte of a checkpoint note: the cosigning key's signatures over
# endpoints and over checkpoints cannot be confused.
ENDPOINT_DOMAIN = b"\x00dvsecure party endpoint v1\x00"


class PublishedError(ParameterError):
    """A published file that cannot be read, or is not what it claims to be."""


def _is_url(location) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def read_bytes(location, name: str, limit: int = MAX_FETCH) -> bytes:
    """File `name` of a published directory or URL (at most `limit` bytes)."""
    if _is_url(location):
        return read_one(urllib.parse.urljoin(location.rstrip("/") + "/", name), limit)
    return read_one(Path(location) / name, limit)


def read_one(where, limit: int = MAX_FETCH) -> bytes:
    """One file, from a path or an http(s) URL (at most `limit` bytes)."""
    try:
        if _is_url(where):
            with urllib.request.urlopen(where, timeout=30) as r:
                data = r.read(limit + 1)
        else:
            with open(where, "rb") as f:
                data = f.read(limit + 1)
    except urllib.error.URLError as e:
        raise PublishedError(f"cannot fetch {where}: {e.reason}") from None
    except OSError as e:
        raise PublishedError(f"cannot read {where}: {e.strerror or e}") from None
    if len(data) > limit:
        raise PublishedError(f"{where} is larger than {limit} bytes")
    return data


# ---- the open queries ---------------------------------------------------------------

@dataclass(frozen=True)
class OpenQueries:
    """The queries the coordinator takes submissions for now (one round), until
    `deadline` (Unix time); `closed`: the run is over, nothing more will open."""
    round: int
    query_ids: tuple[str, ...]
    num_classes: int
    deadline: float
    policy_digest: str
    closed: bool = False
    calibration: str | None = None     # the calibration's id, when these are its labelled queries

    def to_json(self) -> bytes:
        return json.dumps({"round": self.round, "query_ids": list(self.query_ids), "num_classes": self.num_classes,
                           "deadline": self.deadline, "policy_digest": self.policy_digest,
                           "closed": self.closed, "calibration": self.calibration}, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "OpenQueries":
        try:
            d = json.loads(raw)
            keys = {"round", "query_ids", "num_classes", "deadline", "policy_digest", "closed"}
            if not isinstance(d, dict) or not keys <= set(d) <= keys | {"calibration"}:
                raise ValueError(f"expected the keys {sorted(keys)} (and optionally 'calibration')")
            if d.get("calibration") is not None and not isinstance(d["calibration"], str):
                raise ValueError("calibration must be a string (the calibration's id) or null")
            if not isinstance(d["query_ids"], list) or not all(isinstance(q, str) for q in d["query_ids"]):
                raise ValueError("query_ids must be a list of strings")
            if not all(isinstance(d[k], int) and not isinstance(d[k], bool) for k in ("round", "num_classes")):
                raise ValueError("round and num_classes must be integers")
            if not isinstance(d["deadline"], (int, float)) or not isinstance(d["closed"], bool) or \
                    not isinstance(d["policy_digest"], str):
                raise ValueError("deadline must be a number, closed a boolean, policy_digest a string")
            return cls(d["round"], tuple(d["query_ids"]), d["num_classes"], float(d["deadline"]),
                       d["policy_digest"], d["closed"], d.get("calibration"))
        except ValueError as e:
            raise PublishedError(f"{where}: not an open-queries file: {e}") from None


def write_open(out: Path, open_queries: OpenQueries) -> None:
    from ..log.writer import write_atomic

    write_atomic(Path(out) / OPEN_FILE, open_queries.to_json())


def read_open(location) -> OpenQueries:
    return OpenQueries.from_json(read_bytes(location, OPEN_FILE, 64 << 20), f"{location}/{OPEN_FILE}")


FAILED_FILE = "failed.json"


def write_failed(out: Path, query_ids) -> None:
    """The queries whose batch failed (a party went away): charged by the parties,
    released to nobody, so in no log entry. Said by the coordinator, not proven: a
    source that submitted to one sees it reported apart, not verified."""
    from ..log.writer import write_atomic

    write_atomic(Path(out) / FAILED_FILE, json.dumps({"failed": sorted(query_ids)}).encode())


def read_failed(location) -> set[str]:
    try:
        d = json.loads(read_bytes(location, FAILED_FILE, 64 << 20))
        return {q for q in d["failed"] if isinstance(q, str)}
    except PublishedError:
        return set()                   # none published: no batch failed
    except (ValueError, KeyError, TypeError) as e:
        raise PublishedError(f"{location}/{FAILED_FILE}: not a failed-queries file ({e})") from None


# ---- the log, mirrored ----------------------------------------------------------------

def write_index(out: Path) -> None:
    """The list of the log's files (what `mirror` fetches over HTTP, where a
    directory cannot be listed)."""
    from ..log.writer import write_atomic

    log = Path(out) / LOG_DIR
    files = sorted(str(p.relative_to(log)) for p in log.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    write_atomic(Path(out) / INDEX_FILE, json.dumps({"log": files}).encode())


def _safe(rel: object) -> str:
    parts = Path(rel).parts if isinstance(rel, str) else ()
    if not parts or Path(rel).is_absolute() or any(p in ("..", ".", "") for p in parts) or \
            rel != "/".join(parts):
        raise PublishedError(f"index names an unsafe path {rel!r}")
    return rel


def mirror(location, dest: Path) -> Path:
    """Fetch the log published at `location` (a published directory's URL) into the new
    directory `dest`; the audit then reads it as any log directory (nothing fetched is
    trusted before it is audited)."""
    dest = Path(dest)
    try:
        names = json.loads(read_bytes(location, INDEX_FILE, 16 << 20))["log"]
        if not isinstance(names, list):
            raise TypeError("'log' is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise PublishedError(f"{location}: no valid {INDEX_FILE} ({e})") from None
    dest.mkdir(parents=True, exist_ok=False)
    for rel in names:
        target = dest / _safe(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(location, f"{LOG_DIR}/{rel}"))
    return dest


class _ReadOnly(SimpleHTTPRequestHandler):
    """GET and HEAD of the published files only; no listing, no writes."""

    def list_directory(self, path):
        self.send_error(404, "no listing")
        return None

    def log_message(self, format, *args):     # quiet: the coordinator logs what matters
        pass


def serve(out: Path, address: str) -> tuple[ThreadingHTTPServer, int]:
    """Serve the published directory read-only over HTTP at host:port (port 0: any)."""
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)),
                                 partial(_ReadOnly, directory=os.fspath(out)))
    threading.Thread(target=server.serve_forever, name="published-http", daemon=True).start()
    return server, server.server_address[1]


# ---- a party's endpoint ----------------------------------------------------------------

def _endpoint_body(rank: int, address: str, tls_pem: str, box_key: str) -> bytes:
    return json.dumps({"rank": rank, "address": address, "tls": tls_pem, "box_key": box_key},
                      sort_keys=True, separators=(",", ":")).encode()


def endpoint_json(signer, rank: int, address: str, tls_pem: str, box_key: bytes) -> bytes:
    """A party's endpoint, signed by its cosigning key (a `log.note.Signer`)."""
    box = base64.b64encode(bytes(box_key)).decode()
    sig = signer.sign(ENDPOINT_DOMAIN + _endpoint_body(rank, address, tls_pem, box))
    return json.dumps({"rank": rank, "address": address, "tls": tls_pem, "box_key": box,
                       "cosign_key": base64.b64encode(signer.public_key).decode(),
                       "signature": base64.b64encode(sig).decode()}, indent=1).encode() + b"\n"


def load_endpoint(location, policy, rank: int) -> dict:
    """Party `rank`'s endpoint from a file path or URL, checked against the cosigning
    key the policy names for that rank: {"address", "tls" (PEM bytes), "box_key" (raw bytes)}."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    raw, where = read_one(location, 1 << 20), str(location)
    try:
        d = json.loads(raw)
        rank_, address, tls, box, sig = d["rank"], d["address"], d["tls"], d["box_key"], d["signature"]
        if not all(isinstance(v, str) for v in (address, tls, box, sig)) or not isinstance(rank_, int):
            raise ValueError("fields of the wrong type")
        box_raw, sig_raw = base64.b64decode(box, validate=True), base64.b64decode(sig, validate=True)
    except (ValueError, KeyError, TypeError) as e:
        raise PublishedError(f"{where}: not a party endpoint file: {e}") from None
    if rank_ != rank:
        raise PublishedError(f"{where} is party {rank_}'s endpoint, not party {rank}'s")
    named = policy.signers.parties if policy.signers is not None else ()
    if rank >= len(named):
        raise PublishedError(f"the policy names no cosigning key for party {rank}: it cannot be pinned")
    try:
        VerifyKey(base64.b64decode(named[rank])).verify(ENDPOINT_DOMAIN + _endpoint_body(rank, address, tls, box),
                                                        sig_raw)
    except (BadSignatureError, ValueError):
        raise PublishedError(f"{where}: not signed by party {rank}'s key in the policy") from None
    if len(box_raw) != 32:
        raise PublishedError(f"{where}: box_key is not a 32-byte X25519 key")
    return {"address": address, "tls": tls.encode(), "box_key": box_raw}
