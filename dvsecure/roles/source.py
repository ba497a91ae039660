"""A source on its own host (issue 14): check everything it is about to trust,
seal and send each open query's vote to every computing party, keep what it
sent, and later audit the published log against it.

Before anything is sent: the config (`roles.config`), the policy (its digest, if
the config pins one, and this source's id in it), the source's key (its id must
be the config's), every party's endpoint (signed by the cosigning key the
policy names for its rank, `published.load_endpoint`), and the vote file (each
bad row named). Then the parties are asked for their keys, and the X25519 key
each one answers with must be the one its signed endpoint carries: neither the
coordinator nor the network can substitute a party.

One sealing per query, kept: a query's vote is sealed once (its shares, its
nonce) and the envelopes are written to the state directory before they are
sent. When a round re-opens a query (a party restarted and lost its pending
shares), the very same envelopes are sent again: a party that still holds the
share answers "replay" (counted as held), the restarted one takes the same
share, so the parties' shares always add up to the one vote that was
committed. A vote cannot change once sealed.

State directory (this source's own, mode 0700):

    sealed.jsonl       each sealed query: vote, nonce, class count, per-party envelopes
    sent.jsonl         each (query, round) every party took or already held
    submissions.jsonl  query, vote, nonce per query every party took: what
                       `dvsecure audit --submissions` checks (audit/submissions.py)
    witness.json       the last log checkpoint this source audited clean
    log/               the last log mirrored and audited clean (log.refused/: the last refused one)
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DvsecureError, ParameterError, PartyRefusal, PolicyError, VoteError
from ..wire.submission import Submission
from .config import ConfigError, Key, load
from .progress import Progress
from .published import LOG_DIR, OpenQueries, PublishedError, load_endpoint, mirror, read_failed, read_open
from .votefile import RowError, VoteFile, VoteFileError, check_votes, parse_jsonl, read_votes

SCHEMA = [
    Key("id", "str", True, help="this source's id in the policy"),
    Key("key", "path", True, help="this source's key directory or source.key (dvsecure keys new --role source)"),
    Key("policy", "path", True, help="the consortium policy TOML this source agreed to"),
    Key("expect_digest", "str", help="refuse unless the policy has this digest (dvsecure consortium digest)"),
    Key("parties", "paths", help="MPC: each computing party's endpoint.json (path or URL), in rank order"),
    Key("enclave", "str", help="instead of parties: HOST:PORT of the attested enclave (roles/enclave_source.py)"),
    Key("enclave_tls", "path", help="enclave: its TLS certificate, path or URL (default: the coordinator's "
                                    "enclave.pem; trusted only once the attestation binds it)"),
    Key("principals", "path", help="enclave: the agreed principals file (its exact bytes are attested)"),
    Key("enclave_pcr0", "str", help="enclave: the measurement to require (default: the policy's enclave_pcr0)"),
    Key("trust_sim_root", "path", help="enclave, TEST ONLY: a SIMULATED attestation root to trust by name"),
    Key("coordinator", "path", True, help="the coordinator's published directory or URL (open.json, the log)"),
    Key("state", "path", True, help="this source's own directory: what it sent, its witness, its mirror"),
    Key("poll", "float", default=5.0, help="seconds between polls of open.json (watch)"),
    Key("timeout", "float", default=30.0, help="seconds to wait for a party's answer"),
    Key("allow_nonprivate", "bool", default=False,
        help="verify: accept a log released without private noise (testing only)"),
]

SEALED, SENT, SUBMISSIONS, WITNESS, LOG = "sealed.jsonl", "sent.jsonl", "submissions.jsonl", "witness.json", "log"
CALIBRATION_SUBMISSIONS = "calibration-submissions.jsonl"
HELD = "ALREADY_EXISTS"        # a party's answer to a second copy of a share it holds (mpc/inbox.py "replay")
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


class SourceRefusal(DvsecureError):
    """What a source will not do, although its config is fine: e.g. submit to a
    round whose policy digest is not its own."""


def load_config(path: Path | None, overrides: dict | None = None) -> dict:
    return load(path, SCHEMA, overrides, role="source")


def _b64(raw: bytes) -> str:
    return base64.b64encode(bytes(raw)).decode()


def _append(path: Path, lines: list[str]) -> None:
    """Append whole lines durably (before the next step relies on them)."""
    if not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        # A torn last line: the step it began never finished. Cut it, so the next
        # append starts a line of its own (the caller holds the state's lock).
        raw = raw[:raw.rfind(b"\n") + 1]
        os.truncate(path, len(raw))
    out = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise ParameterError(f"{path}, line {n}: not JSON: this source's state is damaged") from None
    return out


@dataclass
class Sealed:
    query_id: str
    vote: object
    nonce: bytes
    num_classes: int
    envelopes: list[bytes]
    box_keys: list[str]


class SourceState:
    """This source's own record of what it sealed and sent (see the module doc)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"state {self.root} is not a directory")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = os.fdopen(os.open(self.root / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"state {self.root} is in use by another dvsecure source process") from None
        self.sealed: dict[str, Sealed] = {}
        for d in _jsonl(self.root / SEALED):
            self.sealed[d["query_id"]] = Sealed(d["query_id"], d["vote"], base64.b64decode(d["nonce"]),
                                                d["num_classes"], [base64.b64decode(e) for e in d["envelopes"]],
                                                d["box_keys"])
        self.sent: set[tuple[str, int]] = {(d["query_id"], d["round"]) for d in _jsonl(self.root / SENT)}
        self.submitted: set[str] = {d["query_id"] for name in (SUBMISSIONS, CALIBRATION_SUBMISSIONS)
                                    for d in _jsonl(self.root / name)}

    def close(self) -> None:
        self._lock.close()

    def add_sealed(self, items: list[Sealed]) -> None:
        _append(self.root / SEALED, [json.dumps({"query_id": s.query_id, "vote": s.vote, "nonce": _b64(s.nonce),
                                                 "num_classes": s.num_classes,
                                                 "envelopes": [_b64(e) for e in s.envelopes],
                                                 "box_keys": s.box_keys}) for s in items])
        for s in items:
            self.sealed[s.query_id] = s

    def mark_sent(self, query_id: str, round_: int, calibration: bool = False) -> None:
        from ..audit.submissions import submission_line

        if query_id not in self.submitted:
            s = self.sealed[query_id]
            # A calibration's labelled queries have no log entries of their own (the
            # calibration entry states the noisy accuracies): kept apart, not audited.
            _append(self.root / (CALIBRATION_SUBMISSIONS if calibration else SUBMISSIONS),
                    [submission_line(query_id, Submission(s.vote, s.nonce))])
            self.submitted.add(query_id)
        _append(self.root / SENT, [json.dumps({"query_id": query_id, "round": round_})])
        self.sent.add((query_id, round_))


@dataclass
class RoundReport:
    round: int
    open: int                          # queries open in the round
    closed: bool = False
    sent: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)       # sent to every party in this round before
    not_open: list[str] = field(default_factory=list)      # rows for queries this round does not take
    no_vote: int = 0                   # open queries this source has no vote for
    errors: list[RowError] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)       # {"query_id", "party", "error"}

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed

    def to_dict(self) -> dict:
        return {"ok": self.ok, "round": self.round, "closed": self.closed, "open": self.open,
                "sent": len(self.sent), "already_sent": len(self.already), "not_open": len(self.not_open),
                "no_vote": self.no_vote, "errors": [e.to_dict() for e in self.errors], "failed": self.failed}

    def to_text(self) -> str:
        if self.closed:
            return f"round {self.round}: the run is closed; nothing sent"
        lines = [f"round {self.round}: {len(self.sent)} vote(s) sealed and sent to every party"
                 + (f", {len(self.already)} already sent" if self.already else "")
                 + f"; {self.no_vote} open quer{'y' if self.no_vote == 1 else 'ies'} without a vote here"
                 + (f"; {len(self.not_open)} row(s) not open" if self.not_open else "")]
        lines += [f"error: {e}" for e in self.errors]
        lines += [f"not sent: query {f['query_id']!r} to party {f['party']}: {f['error']}" for f in self.failed]
        return "\n".join(lines)


class Source:
    """One source, every input checked (`__init__`, no network), then connected."""

    def __init__(self, cfg: dict):
        from ..keys import load_source_key
        from ..policy import ConsortiumPolicy

        self.cfg = cfg
        try:
            self.policy = ConsortiumPolicy.load(cfg["policy"])
        except (PolicyError, OSError) as e:
            raise ConfigError(f"policy {cfg['policy']}: {e}") from None
        self.digest = self.policy.digest()
        if cfg["expect_digest"] is not None and cfg["expect_digest"] != self.digest:
            raise ConfigError(f"{cfg['policy']}: its digest is {self.digest}, not the {cfg['expect_digest']} "
                              "expected (expect_digest): this is not the policy that was agreed")
        self.id = cfg["id"]
        if self.id not in self.policy.ids:
            raise ConfigError(f"{cfg['policy']} has no source {self.id!r} (its sources: "
                              f"{', '.join(self.policy.ids)})")
        self.kind = self.policy.sources[self.policy.ids.index(self.id)].vote_format
        key_id, self.signing_key = load_source_key(cfg["key"])
        if key_id != self.id:
            raise ConfigError(f"key {cfg['key']} is source {key_id!r}'s, not {self.id!r}'s")
        self.check_target()
        self.state = SourceState(cfg["state"])
        self._submitter = None

    def check_target(self) -> None:
        """Where the votes go: every party's signed endpoint, checked against the policy."""
        cfg = self.cfg
        if cfg["parties"] is None:
            raise ConfigError("the source config needs key 'parties' (each computing party's endpoint.json) or, "
                              "for an enclave consortium, 'enclave'")
        named = self.policy.signers.parties if self.policy.signers is not None else ()
        if not named:
            raise ConfigError(f"{cfg['policy']} names no computing parties' keys ([signers] parties): their "
                              "endpoints cannot be pinned")
        if len(cfg["parties"]) != len(named):
            raise ConfigError(f"parties lists {len(cfg['parties'])} endpoint(s), but the policy names "
                              f"{len(named)} computing parties: one endpoint per party, in rank order")
        self.endpoints = []
        for rank, location in enumerate(cfg["parties"]):
            try:
                self.endpoints.append(load_endpoint(location, self.policy, rank))
            except PublishedError as e:
                raise ConfigError(f"parties[{rank}]: {e}") from None

    def close(self) -> None:
        if self._submitter is not None:
            self._submitter.close()
            self._submitter = None
        self.state.close()

    def audit_options(self) -> dict:
        """What `verify` passes the audit beyond the policy and this source's submissions:
        its witness (the keys and checkpoint it saw, pinned), or for an enclave the
        attestation checks instead."""
        return {}

    def check_copy(self, copy: Path, report) -> None:
        """Checks of the mirrored log beyond the audit's (none here: the witness covers them)."""

    def read_votes(self, path) -> VoteFile:
        return read_votes(path, self.kind)

    def open_queries(self, location=None) -> OpenQueries:
        return read_open(location if location is not None else self.cfg["coordinator"])

    # ---- the parties ----------------------------------------------------------------
    def refresh_endpoints(self) -> None:
        """Read every party's signed endpoint again: a party that restarted may listen
        with a new certificate. Any change drops the connections, so the next send pins
        the new ones (still checked against the policy's keys); an endpoint that cannot
        be read just now (its party is restarting) keeps the last good one."""
        fresh = []
        for rank, (location, old) in enumerate(zip(self.cfg["parties"], self.endpoints)):
            try:
                fresh.append(load_endpoint(location, self.policy, rank))
            except PublishedError:
                fresh.append(old)
        if fresh != self.endpoints:
            self.endpoints = fresh
            if self._submitter is not None:
                self._submitter.close()
                self._submitter = None

    def connect(self):
        """Each party's keys over pinned TLS; refused unless each party's box key is the
        one its signed endpoint names."""
        if self._submitter is None:
            from ..mpc.client import PartySubmitter

            eps = [{"address": e["address"], "box_key": e["box_key"],
                    "tls": e["tls"].encode() if isinstance(e["tls"], str) else e["tls"]} for e in self.endpoints]
            submitter = PartySubmitter(self.id, self.signing_key, eps, timeout=self.cfg["timeout"])
            for rank, (got, ep) in enumerate(zip(submitter.box_keys, self.endpoints)):
                if bytes(got) != ep["box_key"]:
                    submitter.close()
                    raise PublishedError(f"party {rank} at {ep['address']} answers with another box key than its "
                                         "signed endpoint names: not sending it anything")
            self._submitter = submitter
        return self._submitter

    def _send(self, rank: int, envelope: bytes) -> None:
        # One party at a time (PartySubmitter.send stops at the first refusal): each
        # party's answer is this query's own.
        self._submitter.send_to(rank, envelope)

    # ---- a round ----------------------------------------------------------------------
    def submit_round(self, oq: OpenQueries, votes: VoteFile, stop: threading.Event | None = None) -> RoundReport:
        """Seal (once) and send this source's vote for each open query it has one for."""
        if oq.policy_digest != self.digest:
            raise SourceRefusal(f"the open queries are for policy {oq.policy_digest[:16]}..., not this source's "
                                f"{self.digest[:16]}...: not submitting")
        report = RoundReport(oq.round, len(oq.query_ids), closed=oq.closed)
        if oq.closed:
            report.errors = list(votes.errors)
            return report
        checked = check_votes(votes, self.kind, oq.num_classes)
        report.errors = checked.errors
        rows = checked.by_query()
        open_ids = set(oq.query_ids)
        report.not_open = [r.query_id for r in checked.rows if r.query_id not in open_ids]
        todo, fresh = [], []
        for qid in oq.query_ids:
            row, sealed = rows.get(qid), self.state.sealed.get(qid)
            if sealed is not None:
                if row is not None and (row.vote != sealed.vote or type(row.vote) is not type(sealed.vote)):
                    # Still resent as sealed: a party that lost its share must get the same
                    # one, or the committed vote would count for no one.
                    report.errors.append(RowError(votes.path, row.line, "vote",
                                                  f"query {qid!r} was sealed and sent with another vote "
                                                  f"({json.dumps(sealed.vote)}); a vote cannot change once sent"))
                if sealed.num_classes != oq.num_classes:
                    report.failed.append({"query_id": qid, "party": None,
                                          "error": f"sealed for {sealed.num_classes} classes, open for "
                                                   f"{oq.num_classes}"})
                    continue
            elif row is None:
                report.no_vote += 1
                continue
            if (qid, oq.round) in self.state.sent:
                report.already.append(qid)
                continue
            todo.append(qid)
            if sealed is None:
                fresh.append(row)
        if not todo:
            return report
        self.deliver(oq, votes, report, todo, fresh, stop)
        return report

    def deliver(self, oq: OpenQueries, votes: VoteFile, report: RoundReport, todo: list[str], fresh: list,
                stop: threading.Event | None) -> None:
        """Seal the `fresh` rows (once, durably), then send every query of `todo`: to each party its share."""
        self.refresh_endpoints()
        submitter = self.connect()
        box_keys = [_b64(k) for k in submitter.box_keys]
        new = []
        for row in fresh:
            try:
                envelopes, (sub,) = submitter.envelopes([row.query_id], [row.vote], oq.num_classes, self.kind)
            except VoteError as e:         # checked above; the library's own check, kept as the last word
                report.errors.append(RowError(votes.path, row.line, "vote", str(e)))
                todo.remove(row.query_id)
                continue
            new.append(Sealed(row.query_id, row.vote, sub.nonce, oq.num_classes, envelopes, box_keys))
        self.state.add_sealed(new)         # durable before any of it leaves this host
        down: dict[int, str] = {}          # parties unreachable in this round
        bar = Progress(f"round {oq.round}", unit="vote")
        bar.start(len(todo))
        try:
            for qid in todo:
                if stop is not None and stop.is_set():
                    break
                sealed = self.state.sealed[qid]
                ok = True
                for rank, envelope in enumerate(sealed.envelopes):
                    if sealed.box_keys[rank] != box_keys[rank]:
                        report.failed.append({"query_id": qid, "party": rank,
                                              "error": "the party's box key changed since this vote was sealed: "
                                                       "its shares cannot be sent again"})
                        ok = False
                        continue
                    if rank in down:
                        report.failed.append({"query_id": qid, "party": rank, "error": down[rank]})
                        ok = False
                        continue
                    try:
                        self._send(rank, envelope)
                    except PartyRefusal as e:
                        if e.code != HELD:
                            report.failed.append({"query_id": qid, "party": rank, "error": str(e)})
                            ok = False
                        if e.code in UNREACHABLE:   # not one timeout per query: tried again next round
                            down[rank] = f"not tried: party {rank} was unreachable in this round ({e.code})"
                if ok:
                    self.state.mark_sent(qid, oq.round, calibration=oq.calibration is not None)
                    report.sent.append(qid)
                bar.advance(1)
        finally:
            bar.close()

    # ---- a model command ----------------------------------------------------------------
    def ask_model(self, cmd: str, oq: OpenQueries, query_ids: list[str]) -> VoteFile:
        """Run `cmd`: on stdin {"query_ids": [...], "num_classes": C}; on stdout, JSON lines
        {"query_id": ..., "vote": ...}, read as a vote file (its lines named)."""
        where = f"model-cmd {cmd!r} output"
        try:
            done = subprocess.run(shlex.split(cmd), input=json.dumps({"query_ids": query_ids,
                                                                      "num_classes": oq.num_classes}),
                                  capture_output=True, text=True, timeout=max(60.0, self.cfg["timeout"] * 10))
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            out = VoteFile(where)
            out.errors.append(RowError(where, 0, "model-cmd", f"did not run: {e}"))
            return out
        if done.returncode != 0:
            out = VoteFile(where)
            out.errors.append(RowError(where, 0, "model-cmd", f"exited {done.returncode}: "
                                                              f"{done.stderr.strip()[-500:]}"))
            return out
        return parse_jsonl(done.stdout, where, self.kind)

    # ---- verify ---------------------------------------------------------------------------
    def verify(self, location=None):
        """Mirror the log, then audit the copy: this policy pinned, this source's
        submissions checked, the witness extended only by a clean audit. A clean copy
        becomes state/log (the last log audited clean); a refused one is kept as
        state/log.refused for inspection."""
        from ..audit.check import audit

        location = location if location is not None else self.cfg["coordinator"]
        root = self.state.root
        copy = mirror_log(location, root / (LOG + ".new"))
        # Submissions to queries the coordinator reports failed (a party went away mid-batch:
        # charged by the parties, released to nobody) are in no entry; reported, not audited.
        failed = read_failed(location) if not _is_log_dir(location) else set()
        lines = (root / SUBMISSIONS).read_bytes().splitlines(keepends=True) if (root / SUBMISSIONS).exists() else []
        kept = [x for x in lines if json.loads(x)["query_id"] not in failed]
        checked = root / (SUBMISSIONS + ".checked")
        checked.write_bytes(b"".join(kept))
        report = audit(copy, source=self.id, policy=self.cfg["policy"], submissions=checked if kept else None,
                       allow_nonprivate=self.cfg["allow_nonprivate"],
                       **({"witness": root / WITNESS} | self.audit_options()))
        self.check_copy(copy, report)
        if len(kept) < len(lines):
            report.notes.append(f"{len(lines) - len(kept)} submission(s) of {self.id!r} went to queries the "
                                "coordinator reports failed (charged by the parties, not released); the log "
                                "cannot show them")
        final = root / (LOG if report.ok else LOG + ".refused")
        _replace(copy, final)
        report.path = str(final)
        return report


def _replace(new: Path, dest: Path) -> None:
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old)
    else:
        new.rename(dest)


def _is_log_dir(location) -> bool:
    return not str(location).startswith(("http://", "https://")) and (Path(location) / "entries.jsonl").exists()


def mirror_log(location, dest: Path) -> Path:
    """A fresh copy at `dest` of the log published at `location`: a published
    directory's URL (its index.json lists the log's files), a published directory
    (its log/), or a log directory itself. The audit reads the copy, so what it
    checks cannot change under it."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    if str(location).startswith(("http://", "https://")):
        mirror(str(location), dest)
    else:
        src = Path(location)
        if not src.is_dir():
            raise ParameterError(f"log {src} is not a directory or an http(s) URL")
        if (src / LOG_DIR).is_dir() and not (src / LOG_DIR).is_symlink():
            src = src / LOG_DIR                           # a published directory: its log
        shutil.copytree(src, dest, symlinks=True)          # links stay links: the audit refuses them
    return dest


@dataclass
class WatchReport:
    rounds: list[RoundReport] = field(default_factory=list)
    stopped: str = "closed"            # "closed" (the run is over) or "signal"
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # Row errors ever seen, or a round whose last attempt left a vote unsent.
        last = {r.round: r for r in self.rounds}
        return not any(r.errors for r in self.rounds) and not any(r.failed for r in last.values())

    def to_dict(self) -> dict:
        return {"ok": self.ok, "stopped": self.stopped, "rounds": len({r.round for r in self.rounds}),
                "sent": sum(len(r.sent) for r in self.rounds),
                "errors": sum(len(r.errors) for r in self.rounds),
                "unsent": sum(len(r.failed) for r in {r.round: r for r in self.rounds}.values()),
                "warnings": self.warnings}


def watch(src: Source, *, votes: Path | None = None, model_cmd: str | None = None,
          stop: threading.Event | None = None, emit=None) -> WatchReport:
    """Poll the open queries until the run is closed (or `stop` is set): for each new
    round, submit this source's votes for its open queries, from the vote file (read
    again each round: it may grow) or from `model_cmd`. A round whose sends failed, or
    whose model command failed, is tried again at the next poll; a row error is
    reported once. `emit(kind, item)` sees each round report ("round") and each
    passing problem ("warning")."""
    if (votes is None) == (model_cmd is None):
        raise ParameterError("watch takes either --votes or --model-cmd")
    stop = stop or threading.Event()
    emit = emit or (lambda kind, item: None)
    out, done, told = WatchReport(), set(), set()
    while not stop.is_set():
        try:
            oq = src.open_queries()
        except PublishedError as e:        # the coordinator is not up yet, or between writes
            out.warnings.append(str(e))
            emit("warning", str(e))
            stop.wait(src.cfg["poll"])
            continue
        if oq.closed:
            break
        if oq.round not in done:
            if votes is not None:
                try:
                    vf = src.read_votes(votes)
                except VoteFileError as e:     # being rewritten, or moved: try again at the next poll
                    out.warnings.append(str(e))
                    emit("warning", str(e))
                    stop.wait(src.cfg["poll"])
                    continue
            else:
                want = [q for q in oq.query_ids if q not in src.state.sealed]
                vf = src.ask_model(model_cmd, oq, want) if want else VoteFile(f"model-cmd {model_cmd!r} output")
            report = src.submit_round(oq, vf, stop)
            retry = bool(report.failed) or any(e.field == "model-cmd" for e in report.errors)
            report.errors = [e for e in report.errors if str(e) not in told]
            told.update(str(e) for e in report.errors)
            out.rounds.append(report)
            emit("round", report)
            if not retry and not stop.is_set():
                done.add(oq.round)
        stop.wait(src.cfg["poll"])
    out.stopped = "signal" if stop.is_set() else "closed"
    return out
