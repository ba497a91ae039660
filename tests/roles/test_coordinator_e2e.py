"""The coordinator, the parties and the dealer as the long-running services a
consortium deploys (`coordinator run`, `party serve`, `dealer serve`, each from
its TOML config), on loopback: the sources send each party its share of every
open query; the labelled queries calibrate the weights inside the parties; the
results match the plaintext backend on the same votes; the published log audits
clean. Killing a party mid-run: that batch fails (charged, released to nobody),
the party is started again on its state, and the run goes on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from consortium_setup import SOURCES, endpoint_files, make_consortium, stop

from dvsecure.audit.check import audit
from dvsecure.keys import load_source_key
from dvsecure.policy import ConsortiumPolicy
from dvsecure.roles.published import PublishedError, read_open

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CLASSES = 4


def spawn(*argv, log: Path) -> subprocess.Popen:
    # Its own process group, so a test can kill the service and its member at once.
    return subprocess.Popen([sys.executable, "-m", "dvsecure.cli", *map(str, argv)], env=ENV,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def votes_for(queries: list[dict], seed: int = 7) -> dict:
    """Each source's vote (a class index) on each query: right with its own accuracy."""
    rng = np.random.default_rng(seed)
    truth = {q["query_id"]: q.get("label", int(rng.integers(CLASSES))) for q in queries}
    votes = {}
    for j, sid in enumerate(SOURCES):
        acc = (0.9, 0.75, 0.6)[j]
        votes[sid] = {qid: (y if rng.random() < acc else int(rng.integers(CLASSES))) for qid, y in truth.items()}
    return votes


class Sources(threading.Thread):
    """The sources, each watching the open queries and sending every party its share
    (what `dvsecure source watch` does; here in-process to keep the test small)."""

    def __init__(self, c, votes: dict):
        super().__init__(daemon=True)
        self.c, self.votes, self.done = c, votes, threading.Event()
        self.errors: list[str] = []

    def run(self):
        from dvsecure.mpc.client import PartySubmitter
        from dvsecure.roles.published import load_endpoint

        policy = ConsortiumPolicy.load(self.c.policy)
        keys = {sid: load_source_key(self.c.sources[sid])[1] for sid in SOURCES}
        seen = 0
        while not self.done.is_set():
            try:
                opened = read_open(self.c.out)
            except PublishedError:
                time.sleep(0.2)
                continue
            if opened.closed:
                return
            if opened.round == seen:
                time.sleep(0.2)
                continue
            try:
                endpoints = [load_endpoint(p, policy, r) for r, p in enumerate(endpoint_files(self.c))]
                for j, sid in enumerate(SOURCES):
                    with PartySubmitter(sid, keys[sid], endpoints) as sub:
                        sub.submit(list(opened.query_ids), [self.votes[sid][q] for q in opened.query_ids],
                                   opened.num_classes, policy.sources[j].vote_format)
                seen = opened.round
            except Exception as e:          # a party restarting: try again shortly
                self.errors.append(f"{type(e).__name__}: {e}"[:300])
                time.sleep(0.5)


def plaintext_reference(c, queries, votes) -> dict:
    """The same consortium and votes, on the plaintext backend, calibrated the same way."""
    from dvsecure.engine.aggregator import Aggregator
    from dvsecure.engine.calibration import PrivateCalibration
    from dvsecure.engine.ledger import Ledger
    from dvsecure.noise import make_noise

    policy = ConsortiumPolicy.load(c.policy)
    labelled = [q for q in queries if "label" in q]
    with Ledger(c.root / "reference.sqlite", policy) as ledger:
        noise = make_noise("no_noise")
        weights = PrivateCalibration(policy, ledger, noise).run(
            "calibration-r00001", [[votes[s][q["query_id"]] for s in SOURCES] for q in labelled],
            [q["label"] for q in labelled], CLASSES, [q["query_id"] for q in labelled]).weights
        agg = Aggregator(policy, ledger, noise=noise, weights=weights)
        rest = [q["query_id"] for q in queries if "label" not in q]
        got = agg.query_batch([(qid, [votes[s][qid] for s in SOURCES]) for qid in rest], CLASSES)
    return {r.query_id: (r.answered, r.label if r.answered else None) for r in got}, weights


def results(c) -> list[dict]:
    return [json.loads(line) for line in c.results.read_bytes().splitlines()] if c.results.exists() else []


@pytest.fixture
def consortium(tmp_path):
    c = make_consortium(tmp_path, deadline=30.0, batch=10)
    procs = {}
    try:
        for r, cfg in enumerate(c.party_configs, 1):
            procs[f"p{r}"] = spawn("party", "serve", "--config", cfg, log=tmp_path / f"party-{r}.log")
        procs["dealer"] = spawn("dealer", "serve", "--config", c.dealer_config, log=tmp_path / "dealer.log")
        yield c, procs
    finally:
        for p in procs.values():
            stop(p)


def test_the_services_release_what_the_plaintext_backend_releases(consortium, tmp_path):
    c, procs = consortium
    queries = [{"query_id": f"cal-{i:03d}", "classes": CLASSES, "label": i % CLASSES} for i in range(9)] + \
        [{"query_id": f"q-{i:03d}", "classes": CLASSES} for i in range(30)]
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries) + '{"query_id": "bad", "classes": 1}\n')
    votes = votes_for(queries)
    sources = Sources(c, votes)
    sources.start()
    run = subprocess.run([sys.executable, "-m", "dvsecure.cli", "coordinator", "run", "--config",
                          c.coordinator_config, "--queries", qfile, "--json"], env=ENV, capture_output=True,
                         text=True, timeout=900)
    sources.done.set()
    assert run.returncode == 1, run.stderr[-3000:]            # one bad row: named, skipped, the rest released
    summary = json.loads(run.stdout)
    assert summary["errors"] == [f"{qfile}:40: field 'classes' must be an integer in 2..4096, got 1"]
    assert summary["calibrated"] and summary["released"] == 30 and summary["failed"] == 0, summary
    expected, weights = plaintext_reference(c, queries, votes)
    got = {r["query_id"]: (r["answered"], r["label"]) for r in results(c) if r["status"] == "released"}
    assert got == expected
    assert sum(a for a, _ in got.values()) >= 20              # most queries answered, not refused
    assert len(set(weights.values())) > 1                     # calibration moved the weights
    assert read_open(c.out).closed
    verdict = audit(c.out / "log", policy=c.policy, allow_nonprivate=True)
    assert verdict.ok, [str(f) for f in verdict.findings]
    # An auditor fetches the published log over HTTP and audits it (a tampered copy fails).
    from dvsecure.cli import main
    from dvsecure.roles.published import serve

    server, port = serve(c.out, "127.0.0.1:0")
    try:
        assert main(["audit", f"http://127.0.0.1:{port}/", "--policy", str(c.policy), "--allow-nonprivate"]) == 0
        entries = c.out / "log" / "entries.jsonl"
        raw = entries.read_bytes()
        at = raw.index(b'"answered":true,"label":') + len(b'"answered":true,"label":')
        entries.write_bytes(raw[:at] + str((int(raw[at:at + 1]) + 1) % CLASSES).encode() + raw[at + 1:])
        assert main(["audit", f"http://127.0.0.1:{port}/", "--policy", str(c.policy), "--allow-nonprivate"]) == 1
    finally:
        server.shutdown()
    # Structured logs: one JSON object per line from each service.
    lines = [json.loads(x) for x in (tmp_path / "party-1.log").read_text().splitlines() if x.startswith("{\"time\"")]
    assert any(x["event"] == "serving" and x["role"] == "party 1" for x in lines)


def test_a_killed_party_rejoins_and_the_run_goes_on(consortium, tmp_path):
    c, procs = consortium
    queries = [{"query_id": f"q-{i:03d}", "classes": CLASSES} for i in range(40)]
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries))
    sources = Sources(c, votes_for(queries))
    sources.start()
    coord = spawn("coordinator", "run", "--config", c.coordinator_config, "--queries", qfile, "--json",
                  log=tmp_path / "coordinator.log")
    try:
        deadline = time.monotonic() + 600
        while len(results(c)) < 10 and time.monotonic() < deadline and coord.poll() is None:
            time.sleep(0.2)
        assert len(results(c)) >= 10, (tmp_path / "coordinator.log").read_text()[-3000:]
        stop(procs["p2"], signal.SIGKILL)                     # the host of party 2 goes down, mid-run
        time.sleep(1.0)
        procs["p2"] = spawn("party", "serve", "--config", c.party_configs[1], log=tmp_path / "party-2b.log")
        coord.wait(timeout=900)
    finally:
        stop(coord)
        sources.done.set()
    rows = results(c)
    assert sorted(r["query_id"] for r in rows) == sorted(q["query_id"] for q in queries)   # each reported once
    released = [r for r in rows if r["status"] == "released"]
    assert len(released) >= 30, rows                          # only the batch in flight (if any) failed
    assert all(r["status"] in ("released", "failed") for r in rows)
    verdict = audit(c.out / "log", policy=c.policy, allow_nonprivate=True)
    assert verdict.ok, [str(f) for f in verdict.findings]
    assert verdict.entries >= len(released)
    # The run saw the failure, rejoined, and opened the rest in later rounds, released there.
    events = [json.loads(x)["event"] for x in (tmp_path / "coordinator.log").read_text().splitlines()
              if x.startswith("{\"time\"")]
    assert "rejoined" in events and events.index("batch_failed") < events.index("rejoined"), events
    failed_round = max(r["round"] for r in rows if r["status"] == "failed")
    assert any(r["round"] > failed_round for r in released)
    # Every party, the restarted one too, cosigned the last checkpoint: its ledger carried over.
    restarted = (tmp_path / "party-2b.log").read_text().splitlines()
    assert any(x.startswith('{"time"') and '"started"' in x for x in restarted)
