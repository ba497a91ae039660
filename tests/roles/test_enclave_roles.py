"""An enclave consortium deployed with the role commands, on loopback:
`enclave serve` (simulated provider), `coordinator run --backend enclave`, three
`source watch` processes on vote files, then `source verify` and the auditor's
`audit` with the simulated root trusted by name and the PCR0. The enclave is
stopped with SIGTERM and started again on its state: the log goes on (a new
signer entry) and still audits clean. Bad configs are refused before starting."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from consortium_setup import SOURCES, free_port, stop

from dvsecure.cli import main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CLASSES = 4


def cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def spawn(*argv, log: Path, err: Path | None = None) -> subprocess.Popen:
    # Its own process group, so a test can stop the service and its child at once.
    return subprocess.Popen([sys.executable, "-m", "dvsecure.cli", *map(str, argv)], env=ENV,
                            stdout=open(log, "wb"), stderr=open(err, "wb") if err else subprocess.STDOUT,
                            start_new_session=True)


def setup(root: Path, deadline: float = 6.0) -> dict:
    """Keys, policy (pinning this build's PCR0), principals with the coordinator, configs."""
    op = root / "operator" / "state"
    cli("keys", "new", "--role", "operator", "--id", "operator", "--out", op)
    for sid in SOURCES:
        cli("keys", "new", "--role", "source", "--id", sid, "--out", root / sid / "state")
    from dvsecure.tee.protocol import enclave_measurement

    pcr0 = enclave_measurement().hex()
    policy, principals = root / "consortium.toml", root / "consortium.principals.json"
    cli("consortium", "init", "--name", "enclave-roles", "--enclave-pcr0", pcr0, "--sigma1", 1.0, "--threshold", 0.5,
        "--sigma2", 0.5, "--out", policy)
    for sid in SOURCES:
        cli("consortium", "add-source", "--policy", policy, "--id", sid, "--band", "0.2..0.6", "--budget", "rho=100",
            "--key", root / sid / "state" / "source.pub.json")
    cli("enclave", "add-coordinator", "--principals", principals, "--key", op / "operator.pub.json")
    port = free_port()
    enc = root / "enclave"
    enc.mkdir()
    (enc / "enclave.toml").write_text(f'policy = "{policy}"\nprincipals = "{principals}"\nstate = "state"\n'
                                      f'out = "log"\nlisten = "127.0.0.1:{port}"\nprovider = "sim"\n'
                                      f'sim_ca = "sim-ca"\nnoise = "no_noise"\n')
    (root / "operator" / "coordinator.toml").write_text(
        f'policy = "{policy}"\nprincipals = "{principals}"\nkey = "state"\nenclave = "127.0.0.1:{port}"\n'
        f'enclave_tls = "{enc}/state/tls/server.pem"\ntrust_sim_root = "{enc}/sim-ca/root.pem"\nstate = "state"\n'
        f'out = "published"\nresults = "results.jsonl"\nbatch = 10\ndeadline = {deadline}\n'
        f'allow_nonprivate = true\n')
    for sid in SOURCES:
        (root / sid / "source.toml").write_text(
            f'id = "{sid}"\nkey = "state"\npolicy = "{policy}"\nenclave = "127.0.0.1:{port}"\n'
            f'principals = "{principals}"\ntrust_sim_root = "{enc}/sim-ca/root.pem"\n'
            f'coordinator = "{root}/operator/published"\nstate = "state"\npoll = 0.3\nallow_nonprivate = true\n')
    return {"policy": policy, "principals": principals, "pcr0": pcr0, "enclave": enc, "port": port}


def write_votes(root: Path, queries: list[dict], seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    truth = {q["query_id"]: q.get("label", int(rng.integers(CLASSES))) for q in queries}
    for j, sid in enumerate(SOURCES):
        acc = (0.9, 0.75, 0.6)[j]
        with open(root / sid / "votes.jsonl", "w") as f:
            for qid, y in truth.items():
                v = y if rng.random() < acc else int(rng.integers(CLASSES))
                f.write(json.dumps({"query_id": qid, "vote": v}) + "\n")


def wait_for(path: Path, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def test_enclave_consortium_from_the_role_commands(tmp_path):
    c = setup(tmp_path)
    queries = [{"query_id": f"cal-{i:03d}", "classes": CLASSES, "label": i % CLASSES} for i in range(8)] + \
        [{"query_id": f"q-{i:03d}", "classes": CLASSES} for i in range(20)]
    qfile = tmp_path / "operator" / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries))
    write_votes(tmp_path, queries)
    enc = c["enclave"]
    procs = {}
    try:
        procs["enclave"] = spawn("enclave", "serve", "--config", enc / "enclave.toml", log=tmp_path / "enclave.log")
        wait_for(enc / "state" / "ready.json", procs["enclave"], tmp_path / "enclave.log")
        procs["coordinator"] = spawn("coordinator", "run", "--backend", "enclave", "--config",
                                     tmp_path / "operator" / "coordinator.toml", "--queries", qfile, "--json",
                                     log=tmp_path / "coordinator.out", err=tmp_path / "coordinator.log")
        for sid in SOURCES:
            procs[sid] = spawn("source", "watch", "--config", tmp_path / sid / "source.toml", "--votes",
                               tmp_path / sid / "votes.jsonl", "--json", log=tmp_path / f"{sid}.watch")
        assert procs["coordinator"].wait(timeout=600) == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        summary = json.loads((tmp_path / "coordinator.out").read_text())
        assert summary["calibrated"] and summary["released"] == 20 and summary["failed"] == 0, summary
        rows = [json.loads(x) for x in (tmp_path / "operator" / "results.jsonl").read_text().splitlines()]
        assert sorted(r["query_id"] for r in rows) == sorted(q["query_id"] for q in queries)
        assert sum(r.get("answered") or 0 for r in rows) >= 10
        for sid in SOURCES:       # the run is closed: each watch ends by itself, clean
            assert procs[sid].wait(timeout=60) == 0, (tmp_path / f"{sid}.watch").read_text()[-2000:]
        published = tmp_path / "operator" / "published"
        assert json.loads((published / "open.json").read_text())["closed"]
        # Each source verifies its own history; the auditor audits with the sim root and the PCR0.
        for sid in SOURCES:
            assert main(["source", "verify", "--config", str(tmp_path / sid / "source.toml")]) == 0, sid
        audit_args = ["audit", str(published / "log"), "--policy", str(c["policy"]), "--enclave-pcr0", c["pcr0"],
                      "--trust-sim-root", str(enc / "sim-ca" / "root.pem"), "--enclave-principals",
                      str(c["principals"]), "--allow-nonprivate"]
        assert main(audit_args) == 0
        # Without the simulated root trusted, the same log does not audit clean.
        assert main([a for a in audit_args if a not in ("--trust-sim-root", str(enc / "sim-ca" / "root.pem"))]) != 0

        # SIGTERM stops the enclave cleanly; started again on its state, the log goes on.
        size = len((published / "log" / "entries.jsonl").read_bytes().splitlines())
        assert stop(procs["enclave"]) == 0
        events = [json.loads(x) for x in (tmp_path / "enclave.log").read_text().splitlines() if x.startswith('{"time"')]
        assert [e["event"] for e in events if e["role"] == "enclave"][-1] == "stopped"
        (enc / "state" / "ready.json").unlink(missing_ok=True)
        procs["enclave"] = spawn("enclave", "serve", "--config", enc / "enclave.toml", log=tmp_path / "enclave2.log")
        wait_for(enc / "state" / "ready.json", procs["enclave"], tmp_path / "enclave2.log")
        more = [{"query_id": f"r-{i:03d}", "classes": CLASSES} for i in range(10)]
        qfile.write_text("".join(json.dumps(q) + "\n" for q in queries + more))
        write_votes(tmp_path, queries + more)
        last = json.loads((published / "open.json").read_text())["round"]
        procs["coordinator"] = spawn("coordinator", "run", "--backend", "enclave", "--config",
                                     tmp_path / "operator" / "coordinator.toml", "--queries", qfile, "--json",
                                     log=tmp_path / "coordinator2.out", err=tmp_path / "coordinator2.log")
        deadline = time.monotonic() + 120     # the sources watch once the new run has opened a round
        while json.loads((published / "open.json").read_text())["round"] == last:
            assert time.monotonic() < deadline and procs["coordinator"].poll() is None, \
                (tmp_path / "coordinator2.log").read_text()[-3000:]
            time.sleep(0.1)
        for sid in SOURCES:
            procs[sid] = spawn("source", "watch", "--config", tmp_path / sid / "source.toml", "--votes",
                               tmp_path / sid / "votes.jsonl", log=tmp_path / f"{sid}.watch2")
        assert procs["coordinator"].wait(timeout=600) == 0, (tmp_path / "coordinator2.log").read_text()[-3000:]
        summary = json.loads((tmp_path / "coordinator2.out").read_text())
        assert summary["released"] == 10 and not summary["calibrated"]       # the earlier ones not asked again
        assert summary["log_entries"] > size
        rows = [json.loads(x) for x in (tmp_path / "operator" / "results.jsonl").read_text().splitlines()]
        assert sum(r.get("answered") or 0 for r in rows if r["query_id"].startswith("r-")) >= 5   # votes arrived
        for sid in SOURCES:
            assert procs[sid].wait(timeout=60) == 0, (tmp_path / f"{sid}.watch2").read_text()[-2000:]
            assert main(["source", "verify", "--config", str(tmp_path / sid / "source.toml")]) == 0, sid
        assert main(audit_args) == 0
    finally:
        for p in procs.values():
            stop(p)


def refused(capsys, argv: list[str], why: str) -> None:
    """Exit 2 and an error naming what is wrong, before anything starts or is sent."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert why in err, err


def test_enclave_serve_refuses_what_it_cannot_run(tmp_path, capsys):
    c = setup(tmp_path)
    enc = c["enclave"]
    cfg = enc / "enclave.toml"
    base = cfg.read_text()
    # nitro without an NSM device: a clear refusal naming the device, nothing started.
    cfg.write_text(base.replace('provider = "sim"', 'provider = "nitro"').replace('noise = "no_noise"\n', "")
                   + 'nsm_device = "/nonexistent/nsm"\n')
    refused(capsys, ["enclave", "serve", "--config", str(cfg)], "no Nitro Secure Module at /nonexistent/nsm")
    cfg.write_text(base)
    refused(capsys, ["enclave", "serve", "--config", str(cfg), "--provider", "nitro"], "not a Nitro enclave")
    # A principals file without a coordinator: nobody could open a query.
    bare = tmp_path / "bare.principals.json"
    p = json.loads(c["principals"].read_text())
    bare.write_text(json.dumps({"sources": p["sources"], "coordinators": {}}))
    cfg.write_text(base.replace(str(c["principals"]), str(bare)))
    refused(capsys, ["enclave", "serve", "--config", str(cfg)], "names no coordinator")
    # A policy pinning another PCR0 than this build's: every source would refuse it.
    other = tmp_path / "other.toml"
    other.write_text(c["policy"].read_text().replace(c["pcr0"], "00" * 48))
    cfg.write_text(base.replace(str(c["policy"]), str(other)))
    refused(capsys, ["enclave", "serve", "--config", str(cfg)], "this build measures")
    # An unknown key is named.
    cfg.write_text(base + 'colour = "blue"\n')
    refused(capsys, ["enclave", "serve", "--config", str(cfg)], "unknown key 'colour'")
    # A source config naming both parties and the enclave, or no principals, is refused before sending.
    src = tmp_path / SOURCES[0] / "source.toml"
    good = src.read_text()
    src.write_text(good + 'parties = ["x/endpoint.json"]\n')
    refused(capsys, ["source", "submit", "--config", str(src), "--votes", str(src)], "both 'parties'")
    src.write_text("\n".join(x for x in good.splitlines() if not x.startswith("principals")) + "\n")
    refused(capsys, ["source", "submit", "--config", str(src), "--votes", str(src)], "needs key 'principals'")


def test_the_enclave_killed_mid_run_is_restarted_and_the_run_goes_on(tmp_path):
    """SIGKILL of the enclave application in the middle of the run: `enclave serve`
    starts it again on its ledger (a new instance key), the coordinator verifies the
    new instance and re-opens the lost round, the sources resend those votes with the
    nonces they fixed, and every query is released once; the log (two signers entries,
    each attested) audits clean and every source's verify is clean."""
    c = setup(tmp_path, deadline=4.0)
    queries = [{"query_id": f"cal-{i:03d}", "classes": CLASSES, "label": i % CLASSES} for i in range(8)] + \
        [{"query_id": f"q-{i:03d}", "classes": CLASSES} for i in range(30)]
    qfile = tmp_path / "operator" / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries))
    write_votes(tmp_path, queries)
    enc, published = c["enclave"], tmp_path / "operator" / "published"
    results = tmp_path / "operator" / "results.jsonl"
    procs = {}
    try:
        procs["enclave"] = spawn("enclave", "serve", "--config", enc / "enclave.toml", log=tmp_path / "enclave.log")
        wait_for(enc / "state" / "ready.json", procs["enclave"], tmp_path / "enclave.log")
        first = json.loads((enc / "state" / "ready.json").read_text())
        procs["coordinator"] = spawn("coordinator", "run", "--backend", "enclave", "--config",
                                     tmp_path / "operator" / "coordinator.toml", "--queries", qfile, "--json",
                                     log=tmp_path / "coordinator.out", err=tmp_path / "coordinator.log")
        for sid in SOURCES:
            procs[sid] = spawn("source", "watch", "--config", tmp_path / sid / "source.toml", "--votes",
                               tmp_path / sid / "votes.jsonl", log=tmp_path / f"{sid}.watch")
        # Once the first round of unlabelled queries is released, the next round is open: kill then.
        deadline = time.monotonic() + 300
        while sum('"released"' in x for x in (results.read_text().splitlines() if results.exists() else [])) < 10:
            assert time.monotonic() < deadline and procs["coordinator"].poll() is None, \
                (tmp_path / "coordinator.log").read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)
        os.kill(first["pid"], signal.SIGKILL)            # the application only: its supervisor restarts it
        assert procs["coordinator"].wait(timeout=600) == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        summary = json.loads((tmp_path / "coordinator.out").read_text())
        assert summary["calibrated"] and summary["released"] == 30 and summary["failed"] == 0, summary
        events = [json.loads(x) for x in (tmp_path / "coordinator.log").read_text().splitlines()
                  if x.startswith('{"time"')]
        assert any(e["event"] == "round_failed" for e in events)          # the kill was seen mid-run
        assert sum(e["event"] == "attested" for e in events) >= 2         # and the new instance verified
        second = json.loads((enc / "state" / "ready.json").read_text())
        assert second["pid"] != first["pid"] and second["signer"] != first["signer"]
        rows = [json.loads(x) for x in results.read_text().splitlines()]
        assert sorted(r["query_id"] for r in rows) == sorted(q["query_id"] for q in queries)
        for sid in SOURCES:
            procs[sid].wait(timeout=60)
            assert main(["source", "verify", "--config", str(tmp_path / sid / "source.toml")]) == 0, sid
        assert main(["audit", str(published / "log"), "--policy", str(c["policy"]), "--enclave-pcr0", c["pcr0"],
                     "--trust-sim-root", str(enc / "sim-ca" / "root.pem"), "--enclave-principals",
                     str(c["principals"]), "--allow-nonprivate"]) == 0
        signers = [x for x in (published / "log" / "entries.jsonl").read_text().splitlines() if '"signers"' in x]
        assert len(signers) == 2
    finally:
        for p in procs.values():
            stop(p)
