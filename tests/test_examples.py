"""The runnable examples keep working and show what they claim."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _spend_table(text: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("north", "south", "east"):
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    return rows


def test_three_hospitals_continues_and_never_overspends(tmp_path):
    first = _run("three_hospitals.py", str(tmp_path))
    assert "east excluded:invalid" in first and "charged 0.0" in first
    spent1 = _spend_table(first)
    assert set(spent1) == {"north", "south", "east"}
    second = _run("three_hospitals.py", str(tmp_path))
    spent2 = _spend_table(second)
    for sid, (spent, budget) in spent2.items():
        assert spent <= budget
        assert spent >= spent1[sid][0]          # continued from the ledger, nothing freed


def test_mpc_netns_walkthrough_runs_each_member_on_its_own_host(tmp_path):
    """examples/mpc-netns/run.sh: parties 1, 2 and the dealer each in its own network
    namespace, the coordinator with party 0 in a fourth; exit 0 only on a clean audit,
    and nothing left behind."""
    import os

    import pytest

    sys.path.insert(0, str(ROOT / "tests"))
    from netcapture import can_make_namespaces

    why_not = can_make_namespaces()
    if why_not:
        pytest.skip(f"cannot make network namespaces: {why_not}")
    env = dict(os.environ, DVSECURE=str(Path(sys.executable).with_name("dvsecure")), PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "examples" / "mpc-netns" / "run.sh"), str(tmp_path / "w"), "20"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "audit of log" in out.stdout and ": OK" in out.stdout
    roster = (tmp_path / "w" / "roster.json").read_text()
    assert "127.0.0.1" not in roster and ":7100" in roster       # real addresses, one port per member
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "dvsn" not in left


def test_consortium_walkthrough_each_role_on_its_own_host_with_a_party_killed(tmp_path):
    """examples/consortium/run.sh: nine namespaces (operator, parties 1-3, dealer, three
    sources, auditor), every role started with its own command and config, real vote
    files (digits); party 2's host killed mid-run and started again. The run goes on,
    the auditor's audit over HTTP and every source's verification are clean, and nothing
    is left behind."""
    import json
    import os

    import pytest

    sys.path.insert(0, str(ROOT / "tests"))
    from netcapture import can_make_namespaces

    why_not = can_make_namespaces()
    if why_not:
        pytest.skip(f"cannot make network namespaces: {why_not}")
    env = dict(os.environ, DVSECURE=str(Path(sys.executable).with_name("dvsecure")), PYTHON=sys.executable)
    work = tmp_path / "w"
    out = subprocess.run(["bash", str(ROOT / "examples" / "consortium" / "run.sh"), "--work", str(work),
                          "--kill-party", "2"], capture_output=True, text=True, timeout=1500, env=env)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "killed party 2's host" in out.stdout and ": OK" in out.stdout
    assert out.stdout.count("source verify exit 0") == 3
    summary = json.loads((work / "operator" / "summary.json").read_text())
    assert summary["calibrated"] and summary["skipped"] == 0
    rows = [json.loads(x) for x in (work / "operator" / "results.jsonl").read_text().splitlines()]
    queries = [json.loads(x)["query_id"] for x in (work / "operator" / "queries.jsonl").read_text().splitlines()]
    assert sorted(r["query_id"] for r in rows) == sorted(queries)      # every query reported, once
    released = [r for r in rows if r["status"] == "released"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) <= 50 and len(released) == 150 - len(failed) >= 100   # only the batch in flight is lost
    # Some queries answered: at threshold 1.0 and sigma1 1.0 a query two of the three models agree on
    # passes about half the time, so how many pass varies from run to run (CI once saw 42 of 100).
    assert sum(r["answered"] for r in released) >= len(released) // 4
    # After the kill, later rounds were released (the run went on with the restarted party).
    assert max(r["round"] for r in released) > min((r["round"] for r in failed), default=0)
    roster = (work / "operator" / "roster.json").read_text()
    assert "127.0.0.1" not in roster
    import re

    tag = re.search(r"\(namespaces (dvc\d+)-\*\)", out.stdout).group(1)      # its own: others may run beside it
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{tag}-" not in left


def test_consortium_walkthrough_on_the_simulated_enclave(tmp_path):
    """examples/consortium/run.sh --backend enclave: six namespaces (operator, enclave,
    three sources, auditor), `enclave serve --provider sim`, `coordinator run --backend
    enclave`, the sources watching real vote files; the auditor's audit over HTTP (the
    simulated root trusted by name, the policy's PCR0) and every source's verification
    are clean, every query is reported once, and nothing is left behind. The enclave
    application is killed mid-run and `enclave serve` starts it again: the log holds
    both instances' attested keys and the lost round is sent again."""
    import json
    import os

    import pytest

    sys.path.insert(0, str(ROOT / "tests"))
    from netcapture import can_make_namespaces

    why_not = can_make_namespaces()
    if why_not:
        pytest.skip(f"cannot make network namespaces: {why_not}")
    env = dict(os.environ, DVSECURE=str(Path(sys.executable).with_name("dvsecure")), PYTHON=sys.executable)
    work = tmp_path / "w"
    out = subprocess.run(["bash", str(ROOT / "examples" / "consortium" / "run.sh"), "--backend", "enclave",
                          "--work", str(work), "--kill-enclave"], capture_output=True, text=True, timeout=1500,
                         env=env)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "killed the enclave application" in out.stdout
    assert "6 hosts" in out.stdout and "log: OK" in out.stdout and "attested signers: OK" in out.stdout
    assert out.stdout.count("source verify exit 0") == 3
    summary = json.loads((work / "operator" / "summary.json").read_text())
    assert summary["calibrated"] and summary["skipped"] == 0 and summary["failed"] == 0
    rows = [json.loads(x) for x in (work / "operator" / "results.jsonl").read_text().splitlines()]
    queries = [json.loads(x)["query_id"] for x in (work / "operator" / "queries.jsonl").read_text().splitlines()]
    assert sorted(r["query_id"] for r in rows) == sorted(queries)      # every query reported, once
    released = [r for r in rows if r["status"] == "released"]
    assert len(released) == 150 and sum(r["answered"] for r in released) >= 150 // 4   # as above
    # The votes reached the enclave from the sources' hosts: each recorded every query's vote as taken.
    for s in ("hospital-a", "hospital-b", "clinic-c"):
        taken = {json.loads(x)["query_id"] for name in ("submissions.jsonl", "calibration-submissions.jsonl")
                 for x in (work / s / "state" / name).read_text().splitlines()}
        assert taken == set(queries)
    # The enclave served on its own host's address, with the SIMULATED provider stated.
    ready = json.loads((work / "enclave" / "state" / "ready.json").read_text())
    assert ready["simulated"] and ready["noise"] == "private"
    events = [json.loads(x) for x in (work / "operator" / "coordinator.log").read_text().splitlines()
              if x.startswith('{"time"')]
    assert sum(e["event"] == "attested" for e in events) >= 2          # the restarted instance, verified
    entries = (work / "operator" / "published" / "log" / "entries.jsonl").read_text().splitlines()
    assert sum('"signers"' in x for x in entries) == 2
    # This run's namespaces are gone (other runs on the machine may have theirs).
    tag = re.search(r"\(namespaces (dvc\d+)-\*\)", out.stdout).group(1)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{tag}-" not in left
