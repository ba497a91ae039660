"""`dvsecure coordinator run --backend enclave --config F --queries FILE`: the
operator's coordinator for a consortium whose votes go to an attested enclave
(`enclave serve`) instead of MPC parties.

It verifies the enclave's attestation itself (the policy's PCR0, the agreed
principals file, the policy, private noise) before opening anything, then runs
the rounds the sources see exactly as the MPC coordinator publishes them
(`coordinator.RoundPublisher`: `open.json`, the labelled round marked with its
calibration id): each round's queries are opened at the enclave, the round waits
its deadline (the enclave says nothing about who has submitted: a source that has
not by then is absent, weight 0, charged 0), then the labelled round calibrates
inside the enclave and the others are released. After each round the enclave's
log is mirrored into OUT/log (`tee.client.fetch_log`; nothing in it needs the
operator's trust: every checkpoint is signed by an attested key) with its index,
and the enclave's TLS certificate is published as OUT/enclave.pem (the sources
pin it only after the attestation binds it). Results go to JSONL as they come.

A restart continues: queries the enclave's log already holds are not asked again.
When the enclave goes away mid-round (its votes pending in memory are lost with
its instance key), the coordinator reconnects, verifies the new instance, and
opens the round's queries again in a new round, so the sources send them again.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from ..errors import DvsecureError, EnclaveError, ParameterError
from .config import ConfigError, Key
from .coordinator import Query, Results, prepare_run, release_rows
from .enclave_source import TLS_FILE
from .events import event
from .published import LOG_DIR, read_one, write_index

SCHEMA = [
    Key("policy", "path", True, help="the consortium policy everyone agreed to (its [signers] pin enclave_pcr0)"),
    Key("expect_digest", "str", help="refuse to start unless the policy has this digest"),
    Key("principals", "path", True, help="the agreed principals file (the sources' keys and this coordinator's)"),
    Key("key", "path", True, help="the operator's key directory (operator.key, dvsecure keys new --role operator)"),
    Key("name", "str", default="operator", help="this coordinator's name in the principals file"),
    Key("enclave", "str", True, help="HOST:PORT of the enclave"),
    Key("enclave_tls", "path", True, help="the enclave's TLS certificate (its tls/server.pem; path or URL)"),
    Key("trust_sim_root", "path", help="TEST ONLY: a SIMULATED attestation root to trust (its sim_ca/root.pem)"),
    Key("state", "path", True, help="private state: coordinator.json (the round), results"),
    Key("out", "path", True, help="the published directory: log/ (mirrored), open.json, index.json, enclave.pem"),
    Key("results", "path", help="where results go, JSONL (default: STATE/results.jsonl)"),
    Key("publish", "str", help="HOST:PORT: serve the published directory read-only over HTTP"),
    Key("batch", "int", default=50, help="queries per round"),
    Key("deadline", "float", default=60.0, help="seconds a round waits for submissions"),
    Key("timeout", "float", default=60.0, help="seconds the enclave may take to answer a call"),
    Key("rejoin", "float", default=300.0, help="seconds to wait for the enclave to come back after a failure"),
    Key("allow_nonprivate", "bool", default=False, help="TEST ONLY: accept an enclave without private noise"),
]
TRIES = 3                      # a round re-opened this often after enclave failures is reported failed


class EnclaveCoordinator:
    def __init__(self, cfg: dict, progress=None):
        from nacl.signing import SigningKey

        from ..log.writer import operator_signer
        from ..policy import ConsortiumPolicy

        self.cfg, self.progress = cfg, progress
        try:
            self.policy = ConsortiumPolicy.load(cfg["policy"])
        except (DvsecureError, OSError) as e:
            raise ConfigError(f"policy {cfg['policy']}: {e}") from None
        if cfg["expect_digest"] is not None and self.policy.digest() != cfg["expect_digest"]:
            raise ConfigError(f"{cfg['policy']} has digest {self.policy.digest()}, not the agreed "
                              f"{cfg['expect_digest']}")
        pcr0 = self.policy.signers.enclave_pcr0 if self.policy.signers is not None else None
        if pcr0 is None:
            raise ConfigError(f"{cfg['policy']} pins no enclave measurement ([signers] enclave_pcr0): an enclave "
                              "consortium's log is signed by the attested enclave")
        self.pcr0 = bytes.fromhex(pcr0)
        try:
            self.principals = Path(cfg["principals"]).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read principals {cfg['principals']}: {e.strerror or e}") from None
        key_file = Path(cfg["key"]) / "operator.key"
        if not key_file.exists():
            raise ConfigError(f"no operator key {key_file} (dvsecure keys new --role operator --out {cfg['key']})")
        # The operator's note key is an Ed25519 key: the same one signs its requests to the enclave.
        self.key = SigningKey(bytes(operator_signer(Path(cfg["key"]))._sk))
        self.roots = [read_one(cfg["trust_sim_root"])] if cfg["trust_sim_root"] is not None else []
        self.stopping = threading.Event()
        self.conn = self.client = None

    # ---- the enclave ----------------------------------------------------------------
    def connect(self) -> None:
        """Pin the enclave's current certificate and verify a fresh attestation of it."""
        from ..tee.client import CoordinatorClient, connect, verify_enclave

        self.close()
        pem = read_one(self.cfg["enclave_tls"], 1 << 20)
        conn = connect(self.cfg["enclave"], pem, timeout=self.cfg["timeout"])
        try:
            identity = verify_enclave(conn, expected_pcr0=self.pcr0, expected_principals=self.principals,
                                      expected_policy=self.policy, trusted_sim_roots=self.roots,
                                      allow_nonprivate=self.cfg["allow_nonprivate"])
        except DvsecureError:
            conn.close()
            raise
        self.conn, self.client, self.tls_pem = conn, CoordinatorClient(self.cfg["name"], self.key, conn,
                                                                       identity), pem
        event("coordinator", "attested", enclave=self.cfg["enclave"], simulated=identity.simulated,
              signer=identity.signer_vkey)

    def reconnect(self) -> None:
        """After a failure: the enclave again (a restarted instance: verified afresh), or give up."""
        deadline = time.monotonic() + self.cfg["rejoin"]
        while not self.stopping.is_set():
            try:
                self.connect()
                return
            except DvsecureError as e:
                if time.monotonic() > deadline:
                    raise ParameterError(f"the enclave did not come back within {self.cfg['rejoin']:.0f} s: "
                                         f"{e}") from None
                self.stopping.wait(1.0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = self.client = None

    def logged(self) -> tuple[set[str], dict | None]:
        """The query ids the enclave's log holds, and its calibrated weights (or None)."""
        from ..log import entry as E
        from ..tee.client import calibrated_weights, read_entries
        from ..wire.proto import dvsecure_pb2 as pb

        size = self.conn.call("GetCheckpoint", pb.CheckpointRequest(size=0)).size
        entries = read_entries(self.conn, size)
        ids = {e.query_id for e in map(E.decode, entries) if isinstance(e, E.Query)}
        return ids, calibrated_weights(entries, self.policy)

    def publish_log(self) -> None:
        """Mirror the enclave's log into OUT/log, for the auditors and the sources."""
        from ..log.writer import write_atomic
        from ..tee.client import fetch_log

        fetch_log(self.conn, self.policy, self.out / LOG_DIR)
        write_atomic(self.out / TLS_FILE, self.tls_pem)
        write_index(self.out)

    # ---- rounds ------------------------------------------------------------------------
    def _open(self, queries: list[Query], calibration: str | None = None) -> None:
        ids = [q.query_id for q in queries]
        try:
            self.client.open(ids, queries[0].num_classes)
        except EnclaveError as e:
            if e.code != "ALREADY_EXISTS":     # opened by an earlier run at this same instance: still open
                raise
        self.publish_log()
        deadline = self.rounds.open(queries, self.cfg["deadline"], calibration)
        self.stopping.wait(max(0.0, deadline - time.time()))

    def run(self, queries_path: Path) -> dict:
        from .published import serve as serve_http

        queries, errors, state, self.out, self.rounds = prepare_run(self.cfg, self.policy, queries_path)
        results = Results(self.cfg["results"] or state / "results.jsonl")
        summary = {"released": 0, "answered": 0, "failed": 0, "skipped": len(errors), "errors": errors,
                   "calibrated": False}
        http = None
        try:
            if self.cfg["publish"]:
                http, port = serve_http(self.out, self.cfg["publish"])
                event("coordinator", "publishing", address=f"{self.cfg['publish'].rpartition(':')[0]}:{port}")
            self.reconnect()
            logged, weights = self.logged()
            labelled = [q for q in queries if q.label is not None]
            if weights is None and labelled and not self.stopping.is_set():
                summary["calibrated"] = self._calibrate(labelled, results)
            todo = [q for q in queries if q.label is None and q.query_id not in logged
                    and q.query_id not in results.done]
            if self.progress is not None:
                self.progress.start(len(todo))
            tries: dict[str, int] = {}
            while todo and not self.stopping.is_set():
                C = todo[0].num_classes
                chunk = [q for q in todo[:self.cfg["batch"]] if q.num_classes == C]
                rows = []
                try:
                    self._open(chunk)
                    if self.stopping.is_set():
                        break
                    rows = release_rows(self.client.release([q.query_id for q in chunk]).releases, self.rounds.round)
                    summary["released"] += len(rows)
                    summary["answered"] += sum(r["answered"] for r in rows)
                except EnclaveError as e:
                    # Nothing released: the votes pending in the lost instance are gone, not charged.
                    event("coordinator", "round_failed", round=self.rounds.round, error=str(e)[:500])
                    self.reconnect()
                    if self.stopping.is_set():
                        break
                    logged, _ = self.logged()
                    for q in chunk:
                        tries[q.query_id] = tries.get(q.query_id, 0) + 1
                    # Released before the failure, its reply lost: the log has it (read it there).
                    rows = [{"query_id": q.query_id, "status": "released", "answered": None, "label": None,
                             "round": self.rounds.round, "note": "reply lost: see the log"}
                            for q in chunk if q.query_id in logged]
                    rows += [{"query_id": q.query_id, "status": "failed", "error": str(e)[:200],
                              "round": self.rounds.round} for q in chunk
                             if q.query_id not in logged and tries[q.query_id] >= TRIES]
                    summary["failed"] += sum(r["status"] == "failed" for r in rows)
                results.write(rows)
                self.publish_log()
                done = {r["query_id"] for r in rows}
                if self.progress is not None:
                    self.progress.advance(len(done & {q.query_id for q in chunk}))
                todo = [q for q in todo if q.query_id not in done]
            if not self.stopping.is_set():
                self.rounds.close()
            summary.update(log_entries=self._size() if self.conn is not None else None, log=str(self.out / LOG_DIR),
                           published=str(self.out), results=str(results.path), stopped_early=self.stopping.is_set())
            return summary
        finally:
            if self.progress is not None:
                self.progress.close()
            results.close()
            self.close()
            if http is not None:
                http.shutdown()

    def _size(self) -> int:
        from ..wire.proto import dvsecure_pb2 as pb

        return self.conn.call("GetCheckpoint", pb.CheckpointRequest(size=0)).size

    def _calibrate(self, labelled: list[Query], results: Results) -> bool:
        """The labelled queries, opened in one round, calibrate the weights inside the enclave."""
        C = labelled[0].num_classes
        if any(q.num_classes != C for q in labelled):
            raise ParameterError("every labelled query (calibration) must have the same number of classes")
        for _ in range(TRIES):
            cal_id = f"calibration-r{self.rounds.round + 1:05d}"
            try:
                self._open(labelled, calibration=cal_id)
                if self.stopping.is_set():
                    return False
                reply = self.client.calibrate(cal_id, [q.query_id for q in labelled], [q.label for q in labelled])
            except EnclaveError as e:
                event("coordinator", "calibration_failed", error=str(e)[:500])
                self.reconnect()
                if self.logged()[1] is not None:    # it went through before the failure
                    break
                continue
            event("coordinator", "calibrated", weights=dict(zip(self.policy.ids, reply.weights)))
            break
        ok = self.logged()[1] is not None
        results.write([{"query_id": q.query_id, "status": "calibration" if ok else "failed",
                        "round": self.rounds.round} for q in labelled])
        self.publish_log()
        return ok


def run_enclave_coordinator(cfg: dict, queries: Path, progress=None) -> dict:
    coordinator = EnclaveCoordinator(cfg, progress)

    def on_signal(signum, frame):
        event("coordinator", "stopping", signal=signum)
        coordinator.stopping.set()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return coordinator.run(queries)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
