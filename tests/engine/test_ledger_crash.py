"""DESIGN §7: a charge is durable before its release is; a crash never loses a
receipt nor frees budget that was spent.

(a) A child process is SIGKILLed by its own `on_committed` hook right after the
    commit of query k, before the result is returned: query k's charges are in
    the ledger, it verifies, and a new Aggregator carries on from there.
(b) Children killed at random moments in a loop of queries and batches leave a
    consistent ledger every time.
(c) The ledger refuses another policy, and an over-budget commit records nothing.
"""
from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction

import pytest

from dvsecure.accounting.charges import GNMAX, THRESHOLD, Charge
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger, LedgerRecord
from dvsecure.errors import BudgetExceededError, DuplicateQueryError, LedgerError, ParameterError
from dvsecure.log import entry
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.wire.submission import Submission

NUM_CLASSES = 3


def make_policy() -> ConsortiumPolicy:
    return ConsortiumPolicy(sources=(
        SourcePolicy("alpha", 0.1, 0.6, Budget("rho", 3.0)),
        SourcePolicy("beta", 0.05, 0.4, Budget("eps_delta", 6.0, delta=1e-5), on_exhaustion="shrink",
                     votes="simplex"),
        SourcePolicy("gamma", 0.0, 0.5, Budget("rdp", 4.0, order=2.0)),
    ), mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.5, threshold=0.6), name="crash-test")


def stream(n: int) -> list:
    """Deterministic votes: valid, invalid and absent, answered and refused queries."""
    out = []
    for q in range(n):
        out.append({
            "alpha": q % NUM_CLASSES,
            "beta": [0.5, 0.25, 0.25] if q % 3 else [0.0, 1.0, 0.0],
            "gamma": None if q % 4 == 1 else (7 if q % 5 == 2 else (q // 2) % NUM_CLASSES),
        })
    return out


@pytest.fixture
def setup(tmp_path):
    policy = make_policy()
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy.to_toml())
    # The child loads the policy from the file: it must be the very same policy.
    assert ConsortiumPolicy.load(policy_file).digest() == policy.digest()
    return policy, policy_file


def fixed_nonce(query_id: str, source_id: str) -> bytes:
    """A deterministic nonce, so that two runs on the same votes commit identically."""
    return hashlib.sha256(f"{query_id}/{source_id}".encode()).digest()


def submissions(query_id: str, votes: dict) -> dict:
    """Every present vote as a Submission with its fixed nonce (absent stays None)."""
    return {sid: None if v is None else Submission(v, fixed_nonce(query_id, sid)) for sid, v in votes.items()}


CHILD_STOP_AFTER_COMMIT = r"""
import hashlib, json, os, signal, sys
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import make_noise
from dvsecure.policy import ConsortiumPolicy
from dvsecure.wire.submission import Submission

policy = ConsortiumPolicy.load(sys.argv[1])
ledger_path, kill_seq, batch_size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
votes = json.load(open(sys.argv[5]))

def on_committed(seqs):
    if kill_seq + 1 in seqs:            # query k is record k + 1: record 0 is the genesis
        os.kill(os.getpid(), signal.SIGKILL)

def submissions(qid, v):                # as the test's submissions(): fixed nonces
    return {sid: None if x is None else Submission(x, hashlib.sha256(f"{qid}/{sid}".encode()).digest())
            for sid, x in v.items()}

agg = Aggregator(policy, Ledger(ledger_path, policy), noise=make_noise("no_noise"), on_committed=on_committed)
items = [(f"q{q}", submissions(f"q{q}", v)) for q, v in enumerate(votes)]
for i in range(0, len(items), batch_size):
    chunk = items[i:i + batch_size]
    results = agg.query_batch(chunk, 3) if batch_size > 1 else [agg.query(chunk[0][0], chunk[0][1], 3)]
    for r in results:
        print(json.dumps({"query_id": r.query_id, "seq": r.seq, "answered": r.answered}), flush=True)
print("finished", flush=True)
"""


def entry_charges(e: entry.Query, policy: ConsortiumPolicy) -> dict[str, list[Charge]]:
    """The charges a query entry implies, recomputed from its own public data
    (weights, statuses, answered bit) and the policy's mechanism, which the entry
    must state: what an auditor would charge."""
    m = policy.mechanism
    assert e.mechanism == entry.Mechanism(kind=m.kind, sigma2=m.sigma2, sigma1=m.sigma1, threshold=m.threshold)
    out = {}
    for col in entry.per_source(e, policy.ids):
        charges = []
        if col["status"] in ("active", "shrunk"):
            if m.confident:
                charges.append(Charge(THRESHOLD, m.sigma1, col["gamma"], True))
            charges.append(Charge(GNMAX, m.sigma2, col["gamma"], e.answered))
        else:
            assert col["gamma"] == 0, col
        out[col["source_id"]] = charges
    return out


def check_consistent(ledger: Ledger, policy: ConsortiumPolicy) -> list[entry.Query]:
    """verify(); contiguous sequence numbers from the genesis record (which names
    this policy); every query entry's recomputed charges are the charges table's
    and the spend's; the stated cumulative spends (the float nearest the exact
    rational) and charge counts (+1 exactly when the source is charged) chain
    without gaps. Returns the query entries."""
    ledger.verify()
    records = list(ledger.records())
    assert [r.seq for r in records] == list(range(len(records)))
    genesis = records[0]
    assert isinstance(genesis, entry.Genesis) and ledger.next_seq() == len(records)
    assert genesis.query_id == "genesis" and genesis.policy_digest == policy.digest()
    assert genesis.sources == list(policy.ids)
    assert all(isinstance(r, entry.Query) for r in records[1:])     # these tests record only queries
    queries = records[1:]
    implied = [entry_charges(e, policy) for e in queries]
    spent, budgets, counts = ledger.spent(), ledger.budgets(), ledger.charged_counts()
    for j, src in enumerate(policy.sources):
        stored = ledger.charges(src.id)
        assert Counter(stored) == Counter(c for charges in implied for c in charges[src.id])
        assert sum((c.rho for c in stored), Fraction(0)) == spent[src.id] <= budgets[src.id]
        running, count = Fraction(0), 0
        for e, charges in zip(queries, implied):
            rho = sum((c.rho for c in charges[src.id]), Fraction(0))
            running += rho
            count += rho > 0
            col = entry.per_source(e, policy.ids)[j]
            assert col["spent"] == float(running) and col["charged"] == count
        assert running == spent[src.id] and count == counts[src.id]
    return queries


def reference_run(policy, path, votes, batch_size=1):
    """The same stream, in process, without crashing."""
    ledger = Ledger(path, policy)
    agg = Aggregator(policy, ledger, noise=make_noise("no_noise"))
    items = [(f"q{q}", submissions(f"q{q}", v)) for q, v in enumerate(votes)]
    results = []
    for i in range(0, len(items), batch_size):
        results += agg.query_batch(items[i:i + batch_size], NUM_CLASSES)
    return ledger, agg, results


@pytest.mark.parametrize("kill_seq,batch_size", [(0, 1), (4, 1), (9, 1), (4, 3), (6, 3)])
def test_sigkill_right_after_commit_keeps_the_charge(tmp_path, setup, kill_seq, batch_size):
    policy, policy_file = setup
    votes = stream(14)
    votes_file = tmp_path / "votes.json"
    votes_file.write_text(json.dumps(votes))
    path = tmp_path / "state" / "ledger.sqlite"
    proc = subprocess.run([sys.executable, "-c", CHILD_STOP_AFTER_COMMIT, str(policy_file), str(path),
                           str(kill_seq), str(batch_size), str(votes_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # The batch holding query kill_seq was committed but never returned.
    batch_end = (kill_seq // batch_size + 1) * batch_size          # first seq after that batch
    released = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in released] == list(range(1, batch_end - batch_size + 1))
    assert "finished" not in proc.stdout

    ledger = Ledger(path, policy)
    records = check_consistent(ledger, policy)
    assert ledger.has_query(f"q{kill_seq}")
    assert [r.query_id for r in records] == [f"q{i}" for i in range(batch_end)]

    # Exactly what an uninterrupted run records for the same queries: query k's
    # charges (and its whole batch's) are all there.
    ref_ledger, ref_agg, ref_results = reference_run(policy, tmp_path / "ref.sqlite", votes[:batch_end + 1],
                                                     batch_size=1)
    # Byte for byte (same nonces), from the genesis record to the killed batch's last entry.
    assert ledger.record_bytes(0) == ref_ledger.record_bytes(0, batch_end + 1)
    for q, e in enumerate(records):     # and each commitment is the one to the Submission sent
        subs = submissions(f"q{q}", votes[q])
        assert entry.unpack_commitments(e.commitments, len(policy.sources)) == [
            entry.ABSENT_COMMITMENT if subs[sid] is None else subs[sid].commitment(f"q{q}", sid)
            for sid in policy.ids]
    killed = ref_results[kill_seq]
    assert any(p.rho > 0 for p in killed.participants)     # query k did charge someone
    assert [(c["source_id"], c["gamma"], c["status"], c["spent"])
            for c in entry.per_source(records[kill_seq], policy.ids)] == \
        [(p.source_id, p.gamma, p.status, float(p.spent)) for p in killed.participants]

    # A new Aggregator on the same ledger carries on from the recorded spend.
    before = ledger.spent()
    assert before == {p.source_id: p.spent for p in ref_results[batch_end - 1].participants}
    agg = Aggregator(policy, ledger, noise=make_noise("no_noise"))
    nxt = agg.query(f"q{batch_end}", submissions(f"q{batch_end}", votes[batch_end]), NUM_CLASSES)
    assert nxt.seq == batch_end + 1
    assert nxt.to_dict() == ref_results[batch_end].to_dict()
    assert ledger.record_bytes(0) == ref_ledger.record_bytes(0)
    after = ledger.spent()
    for p in nxt.participants:
        assert after[p.source_id] == before[p.source_id] + p.rho == p.spent
    assert any(after[s] > before[s] for s in before)

    # Re-submitting the killed query is a replay, refused, and costs nothing.
    with pytest.raises(DuplicateQueryError):
        agg.query(f"q{kill_seq}", votes[kill_seq], NUM_CLASSES)
    with pytest.raises(DuplicateQueryError):
        agg.query_batch([("fresh", votes[0]), (f"q{kill_seq}", votes[kill_seq])], NUM_CLASSES)
    assert ledger.spent() == after and not ledger.has_query("fresh")
    check_consistent(ledger, policy)
    ledger.close()
    ref_ledger.close()


CHILD_LOOP = r"""
import json, sys
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.noise import make_noise
from dvsecure.policy import ConsortiumPolicy

policy = ConsortiumPolicy.load(sys.argv[1])
ledger = Ledger(sys.argv[2], policy)
agg = Aggregator(policy, ledger, noise=make_noise("private"))
start = ledger.next_seq()
print("ready", flush=True)
n = 0
while True:
    k = 1 + n % 3                                   # single queries and batches of 2 and 3
    items = []
    for _ in range(k):
        q = start + n
        items.append((f"r{q}", {"alpha": q % 3, "beta": [0.2, 0.3, 0.5], "gamma": None if q % 7 == 0 else 1}))
        n += 1
    results = agg.query_batch(items, 3) if k > 1 else [agg.query(items[0][0], items[0][1], 3)]
    for r in results:
        print(r.query_id, flush=True)
"""


def test_sigkill_at_random_moments_leaves_a_consistent_ledger(tmp_path):
    # Budgets large enough that charges keep flowing for the whole test.
    policy = ConsortiumPolicy(sources=(
        SourcePolicy("alpha", 0.1, 0.6, Budget("rho", 1e5)),
        SourcePolicy("beta", 0.05, 0.4, Budget("eps_delta", 500.0, delta=1e-6), votes="simplex"),
        SourcePolicy("gamma", 0.0, 0.5, Budget("rdp", 1e4, order=8.0), on_exhaustion="shrink"),
    ), mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.5))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy.to_toml())
    path = tmp_path / "ledger.sqlite"
    rng = random.Random()
    released: list[str] = []
    rounds = 6
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", CHILD_LOOP, str(policy_file), str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(rng.uniform(0.02, 0.4))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, err
        # Only complete lines are releases (a line cut by the kill was never released).
        lines = out.split("\n")
        released += [line for line in lines[:-1] if line]

        ledger = Ledger(path, policy)
        try:
            records = check_consistent(ledger, policy)
            ids = [r.query_id for r in records]
            # Durable before released: everything the child printed is in the ledger ...
            it = iter(ids)
            assert all(qid in it for qid in released), "a released query is missing or out of order"
            # ... and at most one batch per crash was committed without being released.
            assert len(ids) - len(released) <= 3 * rounds
        finally:
            ledger.close()

    assert released                        # the children did get work done
    ledger = Ledger(path, policy)
    try:
        before = ledger.spent()
        records = check_consistent(ledger, policy)
        agg = Aggregator(policy, ledger, noise=make_noise("private"))
        r = agg.query("after-crashes", {"alpha": 0, "beta": [1.0, 0.0, 0.0], "gamma": 2}, NUM_CLASSES)
        assert r.seq == len(records) + 1           # after the genesis and every query record
        for p in r.participants:
            assert ledger.spent()[p.source_id] == before[p.source_id] + p.rho == p.spent
        check_consistent(ledger, policy)
    finally:
        ledger.close()


# ---------------------------------------------------------------------------
# (c) wrong policy; over-budget commits
# ---------------------------------------------------------------------------
def _variants(policy: ConsortiumPolicy):
    s = policy.sources
    yield ConsortiumPolicy(sources=(SourcePolicy("alpha", 0.1, 0.6, Budget("rho", 3.5)),) + s[1:],
                           mechanism=policy.mechanism, name=policy.name)                 # another budget
    yield ConsortiumPolicy(sources=(SourcePolicy("alpha", 0.1, 0.7, Budget("rho", 3.0)),) + s[1:],
                           mechanism=policy.mechanism, name=policy.name)                 # another band
    yield ConsortiumPolicy(sources=s, mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.5, threshold=0.7),
                           name=policy.name)                                             # another threshold
    yield ConsortiumPolicy(sources=(s[1], s[0], s[2]), mechanism=policy.mechanism, name=policy.name)  # reordered
    yield ConsortiumPolicy(sources=s[:2], mechanism=policy.mechanism, name=policy.name)  # a source dropped
    yield ConsortiumPolicy(sources=s, mechanism=policy.mechanism, name="other")          # another name


def test_ledger_refuses_a_different_policy(tmp_path):
    policy = make_policy()
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, policy) as ledger:
        Aggregator(policy, ledger, noise=make_noise("no_noise")).query("q0", stream(1)[0], NUM_CLASSES)
        state = (ledger.spent(), list(ledger.records()))
    for other in _variants(policy):
        assert other.digest() != policy.digest()
        with pytest.raises(LedgerError):
            Ledger(path, other)
        with Ledger(tmp_path / f"fresh-{other.digest()[:8]}.sqlite", other) as other_ledger:
            with pytest.raises(ParameterError):
                Aggregator(policy, other_ledger)
    with Ledger(path, policy) as ledger:     # the refusals changed nothing
        assert (ledger.spent(), list(ledger.records())) == state
        ledger.verify()


def _record(qid, *charges):
    """A hand-made record (no aggregator): its entry is rendered with the spends and
    counts the ledger hands over, so a refused commit must leave no trace of it."""
    def render(seq, spent, charged):
        ids = sorted(spent)
        sp, ch = entry.columns(ids, spent, charged)
        return entry.encode(entry.Query(
            v=entry.VERSION, seq=seq, query_id=qid, noise="no_noise", backend="test",
            mechanism=entry.Mechanism(kind="gnmax", sigma2=1.0), num_classes=2, answered=True, label=0,
            gamma=entry.pack_u32([0] * len(ids)), status="X" * len(ids), spent=sp, charged=ch,
            commitments=entry.pack_commitments(entry.ABSENT_COMMITMENT * len(ids))))
    return LedgerRecord(qid, "query", tuple(charges), render)


def _state(ledger: Ledger, policy):
    return (ledger.spent(), list(ledger.records()), {s.id: ledger.charges(s.id) for s in policy.sources},
            ledger.next_seq())


def test_over_budget_commit_records_nothing(tmp_path):
    policy = ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.6, Budget("rho", 0.5)),
                                       SourcePolicy("b", 0.1, 0.6, Budget("rho", 10.0))),
                              mechanism=MechanismPolicy("gnmax", 1.0))
    path = tmp_path / "ledger.sqlite"
    quarter = Charge(GNMAX, 1.0, 0.5)                   # rho = 2 * 0.25 / 2 = 1/4
    assert quarter.rho == Fraction(1, 4)
    with Ledger(path, policy) as ledger:
        assert ledger.commit([_record("x0", ("a", quarter), ("b", quarter))]) == [1]
        # Filling the budget exactly is allowed: the test is spent <= budget, in rationals.
        assert ledger.commit([_record("x1", ("a", quarter))]) == [2]
        rendered = entry.per_source(list(ledger.records())[-1], ["a", "b"])
        assert [(c["spent"], c["charged"]) for c in rendered] == [(0.5, 2), (0.25, 1)]
        assert ledger.spent()["a"] == Fraction(1, 2) == ledger.budgets()["a"]
        full = _state(ledger, policy)

        tiny = Charge(THRESHOLD, 1000.0, 1 / 65536)      # the smallest positive charge there is
        assert tiny.rho > 0
        for attempt in (
            [_record("y0", ("a", tiny))],                                  # over by a hair
            [_record("y1", ("b", quarter), ("a", quarter))],               # b fits, a does not
            [_record("y2", ("b", quarter)), _record("y3", ("a", quarter))],  # first record fits
            [_record("y4", ("b", Charge(GNMAX, 0.1, 0.5)))],              # b: rho 25 > 10
        ):
            with pytest.raises(BudgetExceededError):
                ledger.commit(attempt)
            assert _state(ledger, policy) == full
            assert not any(ledger.has_query(r.query_id) for r in attempt)
        # A replay and a charge for an unknown source record nothing either.
        with pytest.raises(DuplicateQueryError):
            ledger.commit([_record("z0", ("b", quarter)), _record("x0", ("b", quarter))])
        with pytest.raises(LedgerError):
            ledger.commit([_record("z1", ("b", quarter), ("nobody", quarter))])
        assert _state(ledger, policy) == full
        ledger.verify()
        # Still usable afterwards; a zero charge (a refused query's GNMax step) fits an exhausted source.
        assert ledger.commit([_record("z2", ("a", Charge(GNMAX, 1.0, 0.5, answered=False)), ("b", quarter))]) == [3]
        assert ledger.spent() == {"a": Fraction(1, 2), "b": Fraction(1, 2)}
        ledger.verify()
        final = _state(ledger, policy)
    with Ledger(path, policy) as reopened:    # nothing of the refused commits reached the disk
        assert _state(reopened, policy) == final
        reopened.verify()
