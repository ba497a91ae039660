"""`dvsecure source submit | watch | verify` against three local MPC parties
(issue 14): two sources, their keys made by `dvsecure keys new`, send their votes
from files (and one from a model command) after checking the parties' signed
endpoints; the coordinator asks with FROM_SOURCES; the released labels are the
plaintext backend's on the same votes; each source's verify audits the log with
its own submissions and witness, and refuses a tampered one."""
from __future__ import annotations

import base64
import json
import shutil
import sys
import threading
import time

import pytest
from nacl.signing import VerifyKey

from dvsecure.backends import FROM_SOURCES, PlaintextBackend
from dvsecure.backends.mpc import MPCBackend
from dvsecure.cli import main
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.log import entry
from dvsecure.log.writer import LogWriter, name_signers, operator_signer
from dvsecure.mpc.party import load_or_create_keys
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.roles.published import OpenQueries, endpoint_json, serve, write_index, write_open
from dvsecure.tee.protocol import Principals

pytestmark = pytest.mark.slow

C = 4
POLICY = ConsortiumPolicy(sources=(SourcePolicy("alpha", 0.25, 0.25, Budget("rho", 50.0)),
                                   SourcePolicy("beta", 0.25, 0.25, Budget("rho", 50.0), votes="simplex",
                                                resolution=8)),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="roles-e2e")
ALPHA = {"q0": 1, "q1": 2, "q2": 3, "q3": 0, "q4": 1, "q5": 2}
BETA = {"q0": [0.0, 1.0, 0.0, 0.0], "q1": [0.0, 0.25, 0.75, 0.0], "q2": 3, "q3": [1.0, 0.0, 0.0, 0.0],
        "q4": [0.5, 0.5, 0.0, 0.0], "q5": [0.0, 0.0, 1.0, 0.0]}


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roles")
    pubs = {}
    for sid in POLICY.ids:
        assert main(["keys", "new", "--role", "source", "--id", sid, "--out", str(tmp / sid)]) == 0
        pubs[sid] = json.loads((tmp / sid / "source.pub.json").read_text())["key"]
    principals = tmp / "principals.json"
    principals.write_text(Principals(sources={s: VerifyKey(base64.b64decode(k)) for s, k in pubs.items()},
                                     coordinators={}).to_json())
    backend = MPCBackend(num_parties=3, timeout=120, principals=principals, state_dir=str(tmp / "parties"))
    ledger = None
    try:
        policy = name_signers(POLICY, tmp / "operator", backend)
        (tmp / "consortium.toml").write_text(policy.to_toml())
        ledger = Ledger(tmp / "ledger.sqlite", policy)
        log = LogWriter(tmp / "pub" / "log", ledger,
                        [operator_signer(tmp / "operator", policy), *backend.cosigners(ledger)])
        agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log)
        for rank, ep in enumerate(backend.endpoints()):
            signer = load_or_create_keys(tmp / "parties" / f"party-{rank}", rank)[1]
            (tmp / f"endpoint-{rank}.json").write_bytes(
                endpoint_json(signer, rank, ep["address"], ep["tls"].decode(), ep["box_key"]))
        for sid in POLICY.ids:
            (tmp / f"{sid}.toml").write_text(
                f'id = "{sid}"\nkey = "{sid}"\npolicy = "consortium.toml"\nexpect_digest = "{policy.digest()}"\n'
                'parties = ["endpoint-0.json", "endpoint-1.json", "endpoint-2.json"]\ncoordinator = "pub"\n'
                f'state = "{sid}-state"\npoll = 0.2\nallow_nonprivate = true\n')
        yield tmp, policy, agg
    finally:
        backend.close()
        if ledger is not None:
            ledger.close()


def plaintext_labels(tmp, policy, qids, votes):
    ledger = Ledger(tmp / f"plain-{qids[0]}.sqlite", policy)
    try:
        agg = Aggregator(policy, ledger, backend=PlaintextBackend(), noise=make_noise("no_noise"))
        return [r.label for r in agg.query_batch([(q, [votes["alpha"][q], votes["beta"][q]]) for q in qids], C)]
    finally:
        ledger.close()


def same_entries(a, b):
    return (a / "entries.jsonl").read_bytes() == (b / "entries.jsonl").read_bytes()


def open_round(tmp, policy, rnd, qids, closed=False):
    write_open(tmp / "pub", OpenQueries(rnd, tuple(qids), C, time.time() + 600, policy.digest(), closed))


def test_submit_from_files_then_verify(deployment, capsys):
    tmp, policy, agg = deployment
    qids = ["q0", "q1", "q2", "q3"]
    open_round(tmp, policy, 1, qids)
    # alpha: JSON lines with a bad row and a row for a query not open; beta: CSV.
    (tmp / "alpha.jsonl").write_text("".join(json.dumps({"query_id": q, "vote": v}) + "\n" for q, v in ALPHA.items())
                                     + json.dumps({"query_id": "q9", "vote": 7}) + "\n")
    (tmp / "beta.csv").write_text("query_id,p0,p1,p2,p3\n" + "".join(
        f"{q},{','.join(map(str, v)) if isinstance(v, list) else v}\n" for q, v in BETA.items() if q in qids))
    code, out, err = run(capsys, "source", "submit", "--config", tmp / "alpha.toml", "--votes", tmp / "alpha.jsonl",
                         "--json")
    assert code == 1, out + err                     # the bad row; every good open row still went
    got = json.loads(out)
    assert (got["sent"], got["not_open"], got["no_vote"]) == (4, 2, 0)
    assert [(e["line"], e["field"]) for e in got["errors"]] == [(7, "vote")]
    assert got["errors"][0]["file"].endswith("alpha.jsonl")
    code, out, err = run(capsys, "source", "submit", "--config", tmp / "beta.toml", "--votes", tmp / "beta.csv")
    assert code == 0, out + err
    assert out.startswith("round 1: 4 vote(s) sealed and sent to every party; 0 open queries without a vote here")
    # Again in the same round: nothing is sent twice.
    code, out, err = run(capsys, "source", "submit", "--config", tmp / "beta.toml", "--votes", tmp / "beta.csv",
                         "--json")
    assert code == 0 and (json.loads(out)["sent"], json.loads(out)["already_sent"]) == (0, 4)

    # q2 and q3 re-open in a new round (as after a party's restart): the same sealed
    # shares go again, the parties that hold them say so, and nothing changes.
    subs_before = (tmp / "alpha-state" / "submissions.jsonl").read_text()
    results = agg.query_batch([(q, FROM_SOURCES) for q in ("q0", "q1")], C)
    open_round(tmp, policy, 2, ["q2", "q3"])
    code, out, err = run(capsys, "source", "submit", "--config", tmp / "alpha.toml", "--votes", tmp / "alpha.jsonl",
                         "--json")
    assert code == 1 and json.loads(out)["sent"] == 2 and json.loads(out)["failed"] == [], out + err
    assert (tmp / "alpha-state" / "submissions.jsonl").read_text() == subs_before
    # A vote cannot change once sealed: the row is refused, the sealed vote goes again
    # (and q3, sealed in round 1, too: the file need not hold it any more).
    (tmp / "beta-changed.jsonl").write_text(json.dumps({"query_id": "q2", "vote": 1}) + "\n")
    code, out, err = run(capsys, "source", "submit", "--config", tmp / "beta.toml", "--votes",
                         tmp / "beta-changed.jsonl", "--json")
    assert code == 1 and "cannot change once sent" in json.loads(out)["errors"][0]["message"]
    assert json.loads(out)["sent"] == 2 and json.loads(out)["failed"] == []
    results += agg.query_batch([(q, FROM_SOURCES) for q in ("q2", "q3")], C)

    assert [r.label for r in results] == plaintext_labels(tmp, policy, qids, {"alpha": ALPHA, "beta": BETA})
    assert all(p.status == "active" for r in results for p in r.participants)
    logged = {e.query_id: entry.unpack_commitments(e.commitments, 2)
              for e in map(entry.decode, (tmp / "pub" / "log" / "entries.jsonl").read_bytes().splitlines())
              if isinstance(e, entry.Query)}
    assert set(logged) == set(qids)

    for sid in POLICY.ids:
        code, out, err = run(capsys, "source", "verify", "--config", tmp / f"{sid}.toml")
        assert code == 0, out + err
        assert out.startswith(f"audit of log {tmp / f'{sid}-state' / 'log'}: OK")
        lines = (tmp / f"{sid}-state" / "submissions.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["query_id"] for line in lines) == qids
    assert not (tmp / "alpha-state" / "log" / "open.json").exists()     # the log only, from the published dir

    # A tampered copy of the log is refused; so is the log a source saw, rewritten.
    bad = tmp / "tampered"
    shutil.copytree(tmp / "pub" / "log", bad)          # a log directory itself
    lines = (bad / "entries.jsonl").read_bytes().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if b'"q1"' in line)
    lines[victim] = lines[victim].replace(b'"q1"', b'"qX"')
    (bad / "entries.jsonl").write_bytes(b"".join(lines))
    code, out, err = run(capsys, "source", "verify", "--config", tmp / "alpha.toml", "--log", bad, "--json")
    assert code == 1, out + err
    checks = {f["check"] for f in json.loads(out)["findings"]}
    assert "merkle" in checks or "checkpoint" in checks
    assert any("'q1'" in f["message"] for f in json.loads(out)["findings"] if f["check"] == "submission")
    assert json.loads(out)["path"] == str(tmp / "alpha-state" / "log.refused")
    # The last clean copy is kept, and the witness still accepts the true log.
    assert same_entries(tmp / "alpha-state" / "log", tmp / "pub" / "log")
    code, out, err = run(capsys, "source", "verify", "--config", tmp / "alpha.toml")
    assert code == 0, out + err


MODEL = """import json, sys
ask = json.load(sys.stdin)
votes = {"q4": [0.5, 0.5, 0.0, 0.0], "q5": [0.0, 0.0, 1.0, 0.0]}
for q in ask["query_ids"]:
    print(json.dumps({"query_id": q, "vote": votes[q]}))
"""


def test_watch_submits_each_new_round_until_closed(deployment, capsys):
    tmp, policy, agg = deployment
    (tmp / "model.py").write_text(MODEL)
    (tmp / "alpha-w.csv").write_text("q4,1\nq5,2\n")
    open_round(tmp, policy, 3, ["q4", "q5"])
    sent = {sid: tmp / f"{sid}-state" / "sent.jsonl" for sid in POLICY.ids}

    def close_when_sent():
        deadline = time.time() + 120
        while time.time() < deadline:
            rounds = [[json.loads(x) for x in p.read_text().splitlines()] if p.exists() else [] for p in sent.values()]
            if all(sum(1 for d in r if d["round"] == 3) == 2 for r in rounds):
                break
            time.sleep(0.1)
        open_round(tmp, policy, 3, ["q4", "q5"], closed=True)

    # alpha watches a vote file in the background (a thread: the signal handlers are the
    # main thread's, so it is stopped by the run closing); beta asks its model here.
    # beta reads the coordinator over HTTP (the flag overrides its config's directory).
    server, port = serve(tmp / "pub", "127.0.0.1:0")
    url = f"http://127.0.0.1:{port}/"
    try:
        closer = threading.Thread(target=close_when_sent)
        closer.start()
        codes = {}
        watcher = threading.Thread(target=lambda: codes.setdefault("alpha", _watch_in_thread(tmp)))
        watcher.start()
        try:
            code, out, err = run(capsys, "source", "watch", "--config", tmp / "beta.toml", "--coordinator", url,
                                 "--model-cmd", f"{sys.executable} {tmp / 'model.py'}", "--json")
        finally:
            closer.join()
            watcher.join()
        results = agg.query_batch([(q, FROM_SOURCES) for q in ("q4", "q5")], C)
        write_index(tmp / "pub")
        verified = run(capsys, "source", "verify", "--config", tmp / "beta.toml", "--log", url)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, out + err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "end" and events[-1]["stopped"] == "closed"
    assert sum(e.get("sent", 0) for e in events if e["event"] == "round") == 2
    assert codes["alpha"] == 0
    assert [r.label for r in results] == plaintext_labels(tmp, policy, ["q4", "q5"], {"alpha": ALPHA, "beta": BETA})
    assert all(p.status == "active" for r in results for p in r.participants)
    code, out, err = verified
    assert code == 0, out + err                     # mirrored over HTTP, audited with beta's witness
    assert same_entries(tmp / "beta-state" / "log", tmp / "pub" / "log")
    assert not (tmp / "beta-state" / "log" / "index.json").exists()


def _watch_in_thread(tmp):
    from dvsecure.roles.source import Source, load_config, watch

    src = Source(load_config(tmp / "alpha.toml"))
    try:
        return 0 if watch(src, votes=tmp / "alpha-w.csv").ok else 1
    finally:
        src.close()
