"""The published log under faults (issue 3, DESIGN §7).

(a) A process SIGKILLed right after a ledger commit, before the log append: the
    log lags the ledger, still audits clean up to its last checkpoint, and a
    restarted writer catches it up byte for byte.
(b) A crash mid-append (a torn last line): the auditor reports it, the reopened
    writer cuts it off and re-appends the entry, and the log audits clean.
(c) A log that disagrees with the ledger is refused by the writer, not papered over.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dvsecure.audit.check import audit
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import LogError
from dvsecure.log.writer import ENTRIES, LogWriter, name_signers, operator_signer
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

NUM_CLASSES = 3


def make_policy(state: Path) -> ConsortiumPolicy:
    """The policy, naming the operator key kept in `state` as its log's signer."""
    return name_signers(ConsortiumPolicy(sources=(
        SourcePolicy("alpha", 0.1, 0.6, Budget("rho", 3.0)),
        SourcePolicy("beta", 0.05, 0.4, Budget("rho", 2.0), on_exhaustion="shrink", votes="simplex"),
        SourcePolicy("gamma", 0.0, 0.5, Budget("rdp", 4.0, order=2.0)),
    ), mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.5, threshold=0.6), name="log-crash"), state)


def votes(q: int) -> dict:
    return {"alpha": q % NUM_CLASSES, "beta": [0.5, 0.25, 0.25],
            "gamma": None if q % 4 == 1 else (7 if q % 5 == 2 else q % NUM_CLASSES)}


CHILD = r"""
import os, signal, sys
from pathlib import Path
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import make_noise
from dvsecure.policy import ConsortiumPolicy
from dvsecure.log.writer import LogWriter, operator_signer
sys.path.insert(0, sys.argv[4])
from test_log_crash import votes

policy = ConsortiumPolicy.load(sys.argv[1])
state, out, kill_at = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[5])
ledger = Ledger(state / "ledger.sqlite", policy)
log = LogWriter(out, ledger, [operator_signer(state, policy)])

def on_committed(seqs):
    if kill_at in seqs:                  # after the ledger commit, before the log append
        os.kill(os.getpid(), signal.SIGKILL)

agg = Aggregator(policy, ledger, noise=make_noise("seeded", 5), log=log, on_committed=on_committed)
for q in range(12):
    agg.query(f"q{q}", votes(q), 3)
print("finished")
"""


def _run_child(tmp_path: Path, kill_at: int) -> subprocess.CompletedProcess:
    policy_file = tmp_path / "policy-in.toml"
    policy_file.write_text(make_policy(tmp_path / "state").to_toml())
    return subprocess.run([sys.executable, "-c", CHILD, str(policy_file), str(tmp_path / "state"),
                           str(tmp_path / "log"), str(Path(__file__).parent), str(kill_at)],
                          capture_output=True, text=True, timeout=120)


def test_kill_between_ledger_commit_and_log_append(tmp_path):
    kill_at = 7                                   # seq 7: genesis, signers, then q0..q5 went through
    proc = _run_child(tmp_path, kill_at)
    assert proc.returncode == -9, proc.stderr
    policy = make_policy(tmp_path / "state")
    log_dir, state = tmp_path / "log", tmp_path / "state"

    lagging = audit(log_dir, allow_nonprivate=True)
    assert lagging.ok, [str(f) for f in lagging.findings]
    assert lagging.entries == kill_at and lagging.size == kill_at      # record 7 is in the ledger only
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        assert ledger.next_seq() == kill_at + 1 and ledger.has_query("q5")
        spent = ledger.spent()
        writer = LogWriter(log_dir, ledger, [operator_signer(state, policy)])   # restart: catches up
        assert writer.size == kill_at
        cp = writer.sync()
        assert cp.size == kill_at + 1
        lines = (log_dir / ENTRIES).read_bytes().split(b"\n")[:-1]
        assert lines == ledger.record_bytes(0)
        # Carry on from the ledger: nothing spent was freed.
        agg = Aggregator(policy, ledger, noise=make_noise("seeded", 6), log=writer)
        agg.query("q-after", votes(1), NUM_CLASSES)
        assert all(ledger.spent()[s] >= spent[s] for s in spent)
    report = audit(log_dir, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    assert report.entries == kill_at + 2
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        exact = ledger.spent()
    assert {s.id: s.spent_rho for s in report.sources} == {k: float(v) for k, v in exact.items()}


def _small_log(tmp_path: Path):
    state, log_dir = tmp_path / "state", tmp_path / "log"
    policy = make_policy(state)
    ledger = Ledger(state / "ledger.sqlite", policy)
    writer = LogWriter(log_dir, ledger, [operator_signer(state, policy)])
    agg = Aggregator(policy, ledger, noise=make_noise("seeded", 1), log=writer)
    for q in range(5):
        agg.query(f"q{q}", votes(q), NUM_CLASSES)
    return policy, state, log_dir, ledger


def test_torn_append_is_reported_then_repaired(tmp_path):
    policy, state, log_dir, ledger = _small_log(tmp_path)
    try:
        path = log_dir / ENTRIES
        whole = path.read_bytes()
        last = whole[:-1].rsplit(b"\n", 1)[1]
        # A crash mid-append of the last entry: only half of it reached the disk, and
        # the checkpoint that would have covered it (signed after the fsync) was never written.
        path.write_bytes(whole[:-len(last) - 1] + last[:len(last) // 2])
        size = whole.count(b"\n")
        (log_dir / "checkpoints" / f"{size:012d}.note").unlink()
        torn = audit(log_dir, allow_nonprivate=True)
        assert not torn.ok
        assert any(f.check == "entry" and "incomplete" in f.message for f in torn.findings)
        writer = LogWriter(log_dir, ledger, [operator_signer(state, policy)])
        writer.sync()
        assert path.read_bytes() == whole
        assert audit(log_dir, allow_nonprivate=True).ok
    finally:
        ledger.close()


def test_writer_refuses_a_log_that_disagrees_with_the_ledger(tmp_path):
    policy, state, log_dir, ledger = _small_log(tmp_path)
    try:
        path = log_dir / ENTRIES
        lines = path.read_bytes().split(b"\n")
        lines[3] = lines[3].replace(b'"answered":true', b'"answered":false', 1) \
            if b'"answered":true' in lines[3] else lines[3].replace(b'"answered":false', b'"answered":true', 1)
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(LogError, match="entry 3 differs"):
            LogWriter(log_dir, ledger, [operator_signer(state, policy)])
        # A log longer than the ledger (entries from elsewhere) is refused too.
        path.write_bytes(b"\n".join(ledger.record_bytes(0)) + b"\n" + b'{"extra":1}\n')
        with pytest.raises(LogError, match="ledger only"):
            LogWriter(log_dir, ledger, [operator_signer(state, policy)])
    finally:
        ledger.close()


def test_policy_file_of_another_policy_is_refused(tmp_path):
    policy, state, log_dir, ledger = _small_log(tmp_path)
    ledger.close()
    (log_dir / "policy.toml").write_text((log_dir / "policy.toml").read_text().replace("0.6", "0.7", 1))
    with Ledger(state / "ledger.sqlite", policy) as again:
        with pytest.raises(LogError, match="differs from the policy"):
            LogWriter(log_dir, again, [operator_signer(state, policy)])
    assert json.dumps(audit(log_dir, allow_nonprivate=True).to_dict())   # reported, not crashing
    assert not audit(log_dir, allow_nonprivate=True).ok
