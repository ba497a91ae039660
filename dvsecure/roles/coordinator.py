"""`dvsecure coordinator run --queries FILE`: the operator's coordinator for an
MPC consortium whose parties and dealer run on their own hosts (`party serve`,
`dealer serve`) and whose sources send each party its own share (`source
submit`/`watch`).

It runs party 0 beside it, and in rounds: opens a batch of queries for
submission (`open.json` in the published directory), waits until every source's
share is at every party or the round's deadline passes, asks the parties, and
appends each released query to the results (JSONL, fsynced) as the log (signed
by the operator, cosigned by every party) grows. Labelled queries (a `label` in
the queries file) calibrate the weights first, inside the parties, on a fresh
ledger. A restart on the same state continues: queries already in the ledger are
not asked again. When a party fails mid-batch (killed, cut off), the batch's
queries are reported failed (the parties charged them and nothing was released:
their ids are spent), party 0 rejoins the others when they are back, and the
remaining queries open in a new round, so the sources send them again.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DvsecureError, ParameterError
from ..wire.limits import check_query_id
from .config import Key
from .events import event
from .published import LOG_DIR, OpenQueries, read_failed, write_failed, write_index, write_open

SCHEMA = [
    Key("policy", "path", True, help="the consortium policy everyone agreed to"),
    Key("expect_digest", "str", help="refuse to start unless the policy has this digest"),
    Key("roster", "path", True, help="the roster: every party's and the dealer's address and link key"),
    Key("principals", "path", True, help="the sources' keys (the principals file beside the policy)"),
    Key("state", "path", True, help="private state: operator.key, ledger, and parties/party-0/ (party 0's key)"),
    Key("out", "path", True, help="the published directory: log/, open.json, index.json"),
    Key("results", "path", help="where results go, JSONL (default: STATE/results.jsonl)"),
    Key("listen", "str", True, help="HOST:PORT where party 0 takes the sources' shares"),
    Key("advertise", "str", help="HOST:PORT the sources reach party 0 at (default: listen)"),
    Key("publish", "str", help="HOST:PORT: serve the published directory read-only over HTTP"),
    Key("batch", "int", default=50, help="queries per round"),
    Key("deadline", "float", default=60.0, help="seconds a round waits for submissions"),
    Key("timeout", "float", default=300.0, help="seconds the parties may take to join or answer"),
    Key("rejoin", "float", default=300.0, help="seconds to wait for the parties to come back after a failure"),
    Key("noise", "str", default="private", help="private (TEST ONLY: no_noise)"),
]
MAX_QUERIES_FILE = 256 << 20


class QueryFileError(ParameterError):
    """A queries file row that cannot be used; names the file, line and field."""


@dataclass(frozen=True)
class Query:
    query_id: str
    num_classes: int
    label: int | None
    line: int


def read_queries(path: Path) -> tuple[list[Query], list[str]]:
    """The queries file (JSONL: {"query_id", "classes", optional "label"}): the good
    rows, and an error naming FILE:LINE and the field for each bad one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_QUERIES_FILE + 1)
    except OSError as e:
        raise QueryFileError(f"cannot read queries file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_QUERIES_FILE:
        raise QueryFileError(f"{path}: larger than {MAX_QUERIES_FILE} bytes")
    good, errors, seen = [], [], set()
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(d) - {"query_id", "classes", "label"})
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r}")
            qid, classes, label = d.get("query_id"), d.get("classes"), d.get("label")
            if not isinstance(qid, str):
                raise ValueError("field 'query_id' must be a string")
            try:
                check_query_id(qid, ValueError)
            except ValueError as e:
                raise ValueError(f"field 'query_id': {e}") from None
            if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= 4096:
                raise ValueError(f"field 'classes' must be an integer in 2..4096, got {classes!r}")
            if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                                      or not 0 <= label < classes):
                raise ValueError(f"field 'label' must be a class in 0..{classes - 1}, got {label!r}")
            if qid in seen:
                raise ValueError(f"field 'query_id': {qid!r} appears twice")
        except ValueError as e:
            errors.append(f"{where}: {e}")
            continue
        seen.add(qid)
        good.append(Query(qid, classes, label, n))
    return good, errors


class RoundPublisher:
    """The rounds as the sources see them (shared by the MPC and the enclave
    coordinators): each round's open queries in `open.json` (with the calibration's
    id for the labelled round), the log's index beside them, the round number kept
    in STATE/coordinator.json so that a restart continues the numbering."""

    def __init__(self, state: Path, out: Path, policy_digest: str):
        self.state_file, self.out, self.digest = Path(state) / "coordinator.json", Path(out), policy_digest
        self.round = json.loads(self.state_file.read_text()).get("round", 0) if self.state_file.exists() else 0

    def open(self, queries: list[Query], seconds: float, calibration: str | None = None) -> float:
        """Publish the next round; returns its deadline (Unix time)."""
        from ..log.writer import write_atomic

        self.round += 1
        write_atomic(self.state_file, json.dumps({"round": self.round}).encode())
        deadline = time.time() + seconds
        write_open(self.out, OpenQueries(self.round, tuple(q.query_id for q in queries), queries[0].num_classes,
                                         deadline, self.digest, calibration=calibration))
        write_index(self.out)
        event("coordinator", "opened", round=self.round, queries=len(queries))
        return deadline

    def close(self) -> None:
        """The run is over: nothing more will open."""
        write_open(self.out, OpenQueries(self.round, (), 0, time.time(), self.digest, closed=True))
        write_index(self.out)


def release_rows(released, round_: int) -> list[dict]:
    """Results rows of released queries (anything with query_id, answered, label)."""
    return [{"query_id": r.query_id, "status": "released", "answered": bool(r.answered),
             "label": int(r.label) if r.answered else None, "round": round_} for r in released]


def summary_text(summary: dict) -> list[str]:
    """The coordinator's end-of-run lines (either backend)."""
    lines = [f"released {summary['released']} queries ({summary['answered']} answered), {summary['failed']} failed, "
             f"{summary['skipped']} bad rows skipped; calibrated: {'yes' if summary['calibrated'] else 'no'}"]
    lines += [f"  {e}" for e in summary["errors"][:20]]
    lines.append(f"log: {summary['log']} ({summary['log_entries']} entries); results: {summary['results']}")
    return lines


class Results:
    """The results file: one JSON object per released (or failed) query, appended and
    fsynced as they come; a restart appends after what is there."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = set()
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    self.done.add(json.loads(line)["query_id"])
                except (ValueError, KeyError, TypeError):
                    continue            # a torn last line from a crash: that query is written again
        self._f = open(self.path, "ab")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, sort_keys=True).encode() + b"\n")
            self.done.add(row["query_id"])
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def prepare_run(cfg: dict, policy, queries_path: Path):
    """What every coordinator does first: read the queries (each bad row logged), make
    its private state (0700) and published directories, and its round publisher.
    Returns (queries, errors, state, out, rounds)."""
    queries, errors = read_queries(queries_path)
    for e in errors:
        event("coordinator", "bad_query", error=e)
    state, out = Path(cfg["state"]), Path(cfg["out"])
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    out.mkdir(parents=True, exist_ok=True)
    return queries, errors, state, out, RoundPublisher(state, out, policy.digest())


class Coordinator:
    def __init__(self, cfg: dict, progress=None):
        from ..mpc.roster import Roster
        from ..policy import ConsortiumPolicy

        self.cfg = cfg
        self.policy = ConsortiumPolicy.load(cfg["policy"])
        if cfg["expect_digest"] is not None and self.policy.digest() != cfg["expect_digest"]:
            raise ParameterError(f"{cfg['policy']} has digest {self.policy.digest()}, not the agreed "
                                 f"{cfg['expect_digest']}")
        if self.policy.signers is None or not self.policy.signers.parties:
            raise ParameterError(f"{cfg['policy']} names no computing parties in [signers]: an MPC consortium's "
                                 "parties cosign its log (dvsecure consortium add-party)")
        self.roster = Roster.load(cfg["roster"])
        self.roster.check_policy(self.policy)
        if cfg["noise"] not in ("private", "no_noise"):
            raise ParameterError(f"noise must be 'private' (or, TEST ONLY, 'no_noise'), got {cfg['noise']!r}")
        self.progress = progress
        self.stopping = threading.Event()

    # ---- the parties ----------------------------------------------------------------
    def _backend(self):
        from ..backends.mpc import MPCBackend

        return MPCBackend(self.roster.num_parties, state_dir=str(Path(self.cfg["state"]) / "parties"),
                          roster=str(self.cfg["roster"]), spawn_ranks=[0], principals=str(self.cfg["principals"]),
                          timeout=self.cfg["timeout"], listen=self.cfg["listen"], advertise=self.cfg["advertise"])

    def _rejoin(self) -> None:
        """After a failure: party 0 again, until the others are back (or `rejoin` s)."""
        from ..mpc.parties import PartyError

        self.backend.restart()
        deadline = time.monotonic() + self.cfg["rejoin"]
        while not self.stopping.is_set():
            try:
                self.backend.pending([])
                event("coordinator", "rejoined")
                return
            except PartyError as e:
                self.backend.restart()
                if time.monotonic() > deadline:
                    raise ParameterError(f"the computing parties did not come back within {self.cfg['rejoin']:.0f} s:"
                                         f" {e}") from None
                time.sleep(1.0)

    # ---- rounds -------------------------------------------------------------------
    def _open(self, queries: list[Query], calibration: str | None = None) -> None:
        deadline = self.rounds.open(queries, self.cfg["deadline"], calibration)
        ids = tuple(q.query_id for q in queries)
        # Wait until every source's share is at every party, or the deadline; meanwhile the
        # parties draw the round's private noise ahead (an unlabelled round is a batch).
        predraw = queries[0].num_classes if self.cfg["noise"] == "private" and calibration is None else None
        while time.time() < deadline and not self.stopping.is_set():
            if self.backend.pending(ids, predraw).all():
                break
            time.sleep(0.5)

    @property
    def round(self) -> int:
        return self.rounds.round

    def run(self, queries_path: Path) -> dict:
        from ..backends import FROM_SOURCES
        from ..engine.aggregator import Aggregator
        from ..engine.calibration import PrivateCalibration, stored_weights
        from ..engine.ledger import Ledger
        from ..log.writer import LogWriter, operator_signer
        from ..mpc.parties import PartyError
        from ..noise import make_noise
        from .published import serve as serve_http

        queries, errors, state, self.out, self.rounds = prepare_run(self.cfg, self.policy, queries_path)
        results = Results(self.cfg["results"] or state / "results.jsonl")
        noise = make_noise(self.cfg["noise"])
        http = None
        if self.cfg["publish"]:
            http, port = serve_http(self.out, self.cfg["publish"])
            event("coordinator", "publishing", address=f"{self.cfg['publish'].rpartition(':')[0]}:{port}")
        summary = {"released": 0, "answered": 0, "failed": 0, "skipped": len(errors), "errors": errors,
                   "calibrated": False}
        self.backend = self._backend()
        ledger = Ledger(state / "ledger.sqlite", self.policy)
        try:
            log = LogWriter(self.out / LOG_DIR, ledger,
                            [operator_signer(state, self.policy), *self.backend.cosigners(ledger)])
            log.sync()
            write_index(self.out)
            weights = stored_weights(ledger)
            labelled = [q for q in queries if q.label is not None]
            todo = [q for q in queries if q.label is None and not ledger.has_query(q.query_id)
                    and q.query_id not in results.done]
            if weights is None and labelled and not self.stopping.is_set():
                weights = self._calibrate(labelled, ledger, log, noise, PrivateCalibration, FROM_SOURCES,
                                          PartyError)
                summary["calibrated"] = weights is not None
                results.write([{"query_id": q.query_id, "status": "calibration" if weights is not None else "failed",
                                "round": self.round} for q in labelled])
            agg = Aggregator(self.policy, ledger, backend=self.backend, noise=noise, weights=weights, log=log)
            if self.progress is not None:
                self.progress.start(len(todo))
            while todo and not self.stopping.is_set():
                C = todo[0].num_classes
                chunk = [q for q in todo[:self.cfg["batch"]] if q.num_classes == C]
                try:
                    self._open(chunk)
                    got = agg.query_batch([(q.query_id, FROM_SOURCES) for q in chunk], C)
                    rows = release_rows(got, self.round)
                    summary["released"] += len(rows)
                    summary["answered"] += sum(r.answered for r in got)
                except (PartyError, DvsecureError) as e:
                    # Charged by the parties, released to nobody: these ids are spent.
                    event("coordinator", "batch_failed", round=self.round, error=str(e)[:500])
                    rows = [{"query_id": q.query_id, "status": "failed", "error": str(e)[:200],
                             "round": self.round} for q in chunk]
                    summary["failed"] += len(rows)
                    write_failed(self.out, read_failed(self.out) | {q.query_id for q in chunk})
                    self._rejoin()
                results.write(rows)
                write_index(self.out)
                if self.progress is not None:
                    self.progress.advance(len(chunk))
                done = {q.query_id for q in chunk}
                todo = [q for q in todo if q.query_id not in done]
            if not self.stopping.is_set():
                self.rounds.close()
            summary.update(log_entries=ledger.next_seq(), log=str(self.out / LOG_DIR), published=str(self.out),
                           results=str(results.path), stopped_early=self.stopping.is_set())
            return summary
        finally:
            if self.progress is not None:
                self.progress.close()
            results.close()
            self.backend.close()
            ledger.close()
            if http is not None:
                http.shutdown()

    def _calibrate(self, labelled, ledger, log, noise, PrivateCalibration, FROM_SOURCES, PartyError):
        """The labelled queries, opened in one round, calibrate the weights inside the parties."""
        C = labelled[0].num_classes
        if any(q.num_classes != C for q in labelled):
            raise ParameterError("every labelled query (calibration) must have the same number of classes")
        try:
            cal_id = f"calibration-r{self.round + 1:05d}"
            self._open(labelled, calibration=cal_id)
            result = PrivateCalibration(self.policy, ledger, noise, backend=self.backend).run(
                cal_id, [[FROM_SOURCES] * len(self.policy.ids) for _ in labelled], [q.label for q in labelled], C,
                [q.query_id for q in labelled])
        except (PartyError, DvsecureError) as e:
            event("coordinator", "calibration_failed", error=str(e)[:500])
            self._rejoin()
            return None
        log.sync()
        write_index(self.out)
        event("coordinator", "calibrated", weights=result.weights)
        return result.weights


def run_coordinator(cfg: dict, queries: Path, progress=None) -> dict:
    coordinator = Coordinator(cfg, progress)

    def on_signal(signum, frame):
        event("coordinator", "stopping", signal=signum)
        coordinator.stopping.set()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return coordinator.run(queries)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
