"""The MPC backend (issue 4, partial): with no noise it releases exactly what the
plaintext backend releases and charges exactly the same; a one-hot vote travels
as a shared class index, so whatever shares a source sends count as one valid
vote of its weight, never more; an invalid vote of any kind is not sent; a party
that dies makes the batch fail with nothing recorded; TFP needs an explicit flag.

Parties are real processes (3 CrypTen parties + a TTP dealer over gloo on
loopback), started once per module and always stopped.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dvsecure.backends.mpc import MPCBackend
from dvsecure.backends.plaintext import PlaintextBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import ParameterError
from dvsecure.mpc.parties import PartyError
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

pytestmark = pytest.mark.slow
NUM_CLASSES = 4


class WholeBatchPlaintext(PlaintextBackend):
    """The reference, given whole batches as the MPC backend is (same reservations)."""
    evaluates_whole_batch = True


@pytest.fixture(scope="module")
def mpc():
    backend = MPCBackend(num_parties=3, timeout=120)
    yield backend
    backend.close()


def random_policy(rng) -> ConsortiumPolicy:
    sources = []
    for i in range(4):
        hi = float(rng.uniform(0.2, 0.6))
        sources.append(SourcePolicy(f"src{i}", float(rng.uniform(0.0, hi / 2)), hi,
                                    Budget("rho", float(rng.uniform(0.5, 4.0))),
                                    on_exhaustion=("shrink", "exclude")[i % 2],
                                    votes=("one-hot", "simplex")[i == 3]))
    if rng.random() < 0.3:
        mech = MechanismPolicy("gnmax", float(rng.uniform(0.5, 2)))
    else:
        mech = MechanismPolicy("confident_gnmax", float(rng.uniform(0.5, 2)), sigma1=float(rng.uniform(0.5, 2)),
                               threshold=float(rng.uniform(0.1, 0.9)))
    return ConsortiumPolicy(sources=tuple(sources), mechanism=mech, name="mpc-eq")


MALICIOUS = [[2.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0],
             [1e6, 0.0, 0.0, 0.0], [-1.0, 1.0, 1.0, 0.0]]


def random_stream(rng, count: int) -> list:
    items = []
    for q in range(count):
        votes = {}
        for i in range(4):
            r = rng.random()
            if r < 0.1:
                votes[f"src{i}"] = None                                 # absent
            elif r < 0.2:
                votes[f"src{i}"] = MALICIOUS[rng.integers(len(MALICIOUS))]
            elif i == 3:
                p = rng.dirichlet(np.ones(NUM_CLASSES))
                votes[f"src{i}"] = p.tolist() if rng.random() < 0.5 else int(rng.integers(NUM_CLASSES))
            else:
                votes[f"src{i}"] = int(rng.integers(2)) if rng.random() < 0.5 else int(rng.integers(NUM_CLASSES))
        items.append((f"q{q}", votes))
    return items


def run(policy, items, backend, path, batch=8):
    with Ledger(path, policy) as ledger:
        agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"))
        results = []
        for i in range(0, len(items), batch):
            results += agg.query_batch(items[i:i + batch], NUM_CLASSES)
        return results, ledger.spent(), [ledger.charges(s.id) for s in policy.sources]


@pytest.mark.parametrize("seed", range(4))
def test_no_noise_mpc_equals_plaintext(mpc, tmp_path, seed):
    rng = np.random.default_rng(seed)
    policy = random_policy(rng)
    items = random_stream(rng, 24)
    ref, ref_spent, ref_charges = run(policy, items, WholeBatchPlaintext(), tmp_path / "p.sqlite")
    got, spent, charges = run(policy, items, mpc, tmp_path / "m.sqlite")
    assert [(r.answered, r.label) for r in got] == [(r.answered, r.label) for r in ref]
    assert [[(p.gamma, p.status) for p in r.participants] for r in got] == \
        [[(p.gamma, p.status) for p in r.participants] for r in ref]
    assert spent == ref_spent and charges == ref_charges
    statuses = {p.status for r in got for p in r.participants}
    assert "excluded:invalid" in statuses and "absent" in statuses
    assert all(r.backend == "mpc" and not r.private for r in got)


def test_ties_break_to_the_lowest_index(mpc, tmp_path):
    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 100.0))
                                            for i in range(4)),
                              mechanism=MechanismPolicy("gnmax", 1.0), name="ties")
    items = [("t0", {"src0": 3, "src1": 1, "src2": 1, "src3": 3}),           # tie 1 vs 3 -> 1
             ("t1", {"src0": 2, "src1": 0, "src2": None, "src3": None}),     # tie 0 vs 2 -> 0
             ("t2", {"src0": 3, "src1": 2, "src2": 1, "src3": 0})]           # four-way -> 0
    got, _, _ = run(policy, items, mpc, tmp_path / "t.sqlite")
    assert [r.label for r in got] == [1, 0, 0]


@pytest.mark.parametrize("kind", ["one-hot", "simplex"])
def test_malicious_vote_cannot_move_the_tally(mpc, tmp_path, kind):
    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.3125, 0.3125, Budget("rho", 100.0),
                                                         votes=kind if i == 3 else "one-hot")
                                            for i in range(4)),
                              mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.5),
                              name=f"malice-{kind}")
    honest = {"src0": 1, "src1": 1, "src2": 2}
    bad_votes = [b for b in MALICIOUS if kind == "one-hot" or b != [0.5, 0.5, 0.0, 0.0]]   # a valid simplex vote
    items = [(f"m{k}", dict(honest, src3=bad)) for k, bad in enumerate(bad_votes)]
    items.append(("clean", dict(honest, src3=None)))
    got, _, _ = run(policy, items, mpc, tmp_path / "m.sqlite", batch=len(items))
    clean = got[-1]
    assert clean.answered and clean.label == 1
    for r in got[:-1]:
        p = r.participant("src3")
        assert p.status == "excluded:invalid" and p.gamma == 0 and p.rho == 0
        assert (r.answered, r.label) == (clean.answered, clean.label)
    # An honest client never shares an invalid vote (every kind travels as class indices):
    # the plaintext backend's reason.
    assert got[0].participant("src3").reason.startswith("invalid: ")


def test_malformed_commands_are_refused_by_every_party_and_none_dies(mpc, tmp_path):
    parties = mpc._ensure_started()
    policy = ConsortiumPolicy(
        sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 100.0)) for i in range(4)),
        mechanism=MechanismPolicy("gnmax", 1.0), name="malformed")
    toml = policy.to_toml()
    good = {"op": "batch", "policy": toml, "query_ids": ["x"], "source_ids": list(policy.ids), "source_keys": {},
            "messages": [[], [], []], "present": bytes(4), "gammas": bytes(32), "num_classes": 4,
            "noise_mode": "no_noise", "noise_seeds": None}
    for cmd, message in [({"op": "reboot"}, "malformed command"),
                         ({"op": "cosign", "policy": toml}, "missing required field `start`"),
                         (dict(good, num_classes="four"), "Expected `int`"),
                         (dict(good, messages=[[]]), "relays messages for 1 parties, not 3"),
                         (dict(good, gammas=bytes(3)), "malformed batch arrays"),
                         (dict(good, query_ids=["x", "x"], present=bytes(8), gammas=bytes(64)), "distinct query ids"),
                         (dict(good, source_keys={"src0": b"short"}), "source key for 'src0'")]:
        with pytest.raises(PartyError, match=message):
            parties.call(cmd)
    # Every party is still up and in step: a real batch goes through.
    got, _, _ = run(policy, [("after", {"src0": 2, "src1": 2, "src2": 1, "src3": None})], mpc,
                    tmp_path / "a.sqlite")
    assert got[0].label == 2


# Share words a malicious source might send its three parties for one vote, bypassing
# the honest client: huge, wrapping, far from any class index.
SHARE_TRICKS = [
    [1, 1 << 32, (1 << 64) - (1 << 32)],
    [(1 << 63), (1 << 63) + 1, 1],
    [(1 << 64) - 1, (1 << 64) - 1, (1 << 64) - 1],
    [1 << 48, 12345, (1 << 64) - (1 << 48)],
    [2, 0, 0],
    [7, 11, 13],
]


def test_any_index_shares_count_as_one_vote_of_the_sources_weight(mpc, tmp_path, monkeypatch):
    """A source that bypasses the honest client and sends its parties any 64-bit words
    as shares of its class index: the parties read them modulo C, so together they are
    some class index k and the source counts once, at its weight, for k. Class 1 holds
    two honest votes; src3 can at most tie class 2 with it (the tie goes to class 1):
    any influence beyond its weight would flip the label."""
    import dvsecure.backends.mpc as backend_module
    import dvsecure.mpc.sharing as sharing

    real_seal, real_shares = backend_module.seal_submissions, sharing.index_shares

    def seal(source_id, key, query_ids, encoded, party_keys, commitments=(), **kw):
        if source_id != "src3":
            return real_seal(source_id, key, query_ids, encoded, party_keys, commitments, **kw)
        words = np.array([SHARE_TRICKS[int(q[1:])] for q in query_ids], dtype=np.uint64)
        monkeypatch.setattr(sharing, "index_shares", lambda *a: words.T.reshape(3, len(query_ids), 1).view(np.int64))
        try:
            return real_seal(source_id, key, query_ids, encoded, party_keys, commitments, **kw)
        finally:
            monkeypatch.setattr(sharing, "index_shares", real_shares)
    monkeypatch.setattr(backend_module, "seal_submissions", seal)
    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.3125, 0.3125, Budget("rho", 100.0))
                                            for i in range(4)),
                              mechanism=MechanismPolicy("gnmax", 1.0), name="index-tricks")
    items = [(f"w{k}", {"src0": 1, "src1": 1, "src2": 2, "src3": 0}) for k in range(len(SHARE_TRICKS))]
    got, spent, _ = run(policy, items, mpc, tmp_path / "w.sqlite", batch=len(items))
    implied = [sum(t) % NUM_CLASSES for t in SHARE_TRICKS]
    assert 2 in implied and len(set(implied)) > 1                 # some tricks aim at class 2
    for r in got:
        p = r.participant("src3")
        assert p.status == "active" and p.gamma == 0.3125 and p.rho > 0   # counted once, charged normally
        assert r.answered and r.label == 1


def test_a_submission_one_party_cannot_open_excludes_only_that_source(mpc, tmp_path, monkeypatch):
    """Garbage for party 1 from src3 (its other parties' messages are fine): every
    party must open a source's submission for it to count, so src3 is excluded
    and charged nothing, and the others' query is still answered."""
    import dvsecure.backends.mpc as backend_module
    from dvsecure.backends.mpc import UNOPENED

    real = backend_module.seal_submissions

    def tampered(source_id, key, query_ids, encoded, party_keys, **kw):
        messages = real(source_id, key, query_ids, encoded, party_keys, **kw)
        if source_id == "src3":
            messages[1] = messages[1][:-5] + bytes(5)
        return messages
    monkeypatch.setattr(backend_module, "seal_submissions", tampered)
    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.3125, 0.3125, Budget("rho", 100.0))
                                            for i in range(4)),
                              mechanism=MechanismPolicy("gnmax", 1.0), name="garbage")
    got, _, _ = run(policy, [("g0", {"src0": 2, "src1": 2, "src2": 1, "src3": 0})], mpc, tmp_path / "g.sqlite")
    p = got[0].participant("src3")
    assert p.status == "excluded:invalid" and p.reason == UNOPENED and p.rho == 0
    assert got[0].answered and got[0].label == 2
    assert all(got[0].participant(f"src{i}").status == "active" for i in range(3))


def test_tfp_is_refused_without_its_flag(tmp_path, capsys):
    from dvsecure.cli import main

    with pytest.raises(ParameterError, match="TFP"):
        MPCBackend(provider="TFP")
    assert main(["demo", "--provider", "TFP", "--out", str(tmp_path / "o")]) == 2
    assert "party 0 generate every Beaver triple" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="could unmask every vote"):
        MPCBackend(provider="TFP", allow_tfp=True).close()
    with pytest.raises(ParameterError, match="at least 2"):
        MPCBackend(num_parties=1)


@pytest.mark.parametrize("mode", ["private", "seeded"])
def test_with_noise_the_charges_are_the_plaintext_charges(mpc, tmp_path, mode):
    """Charges depend only on public data (weights, answered bits): each record is
    exactly what the plaintext aggregator charges for the same weight and bit."""
    rng = np.random.default_rng(5)
    # Its own policy per mode: the parties outlive each test's ledger and keep
    # one record per policy, whose budgets they enforce.
    policy = dataclasses.replace(random_policy(rng), name=f"mpc-eq-{mode}")
    items = random_stream(rng, 16)
    with Ledger(tmp_path / "n.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, backend=mpc, noise=make_noise(mode, 3 if mode == "seeded" else None))
        results = agg.query_batch(items, NUM_CLASSES)
        reference = Aggregator(policy, ledger, noise=make_noise("no_noise"))
        for r in results:
            assert r.noise_mode == mode and r.private == (mode == "private")
            for p in r.participants:
                assert (p.charges, p.rho) == reference._source_charges(p.gamma, r.answered)
        assert all(ledger.spent()[s.id] <= ledger.budgets()[s.id] for s in policy.sources)


def test_noisy_labels_match_the_plaintext_distribution(mpc, tmp_path):
    """The same tallies, released many times: MPC labels (collusion tolerance 1,
    so each of the 3 parties adds N_Z(0, sigma_p^2) with sigma_p^2 just over
    sigma^2 / 2, and the total is the sum of 3) against the plaintext mechanism
    with variance 3 sigma_p^2 — a chi-square two-sample test."""
    from scipy import stats

    from dvsecure.accounting.distributed import party_noise_scale
    from dvsecure.mechanism.fixedpoint import sigma_on_tally_grid
    from dvsecure.mechanism.release import release_batch, tally

    sigma = 0.3
    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 1e9))
                                            for i in range(4)),
                              mechanism=MechanismPolicy("gnmax", sigma), name="freq")
    votes = {"src0": 0, "src1": 1, "src2": 1, "src3": 2}              # tallies 0.25, 0.5, 0.25, 0
    items = [(f"f{k}", votes) for k in range(400)]
    with Ledger(tmp_path / "f.sqlite", policy) as ledger:
        agg = Aggregator(policy, ledger, backend=mpc, noise=make_noise("seeded", 17))
        mpc_labels = [r.label for r in agg.query_batch(items, NUM_CLASSES)]
    g = np.full((4000, 4), 16384, np.int64)
    v = np.zeros((4000, 4, NUM_CLASSES), np.int64)
    for j, c in enumerate([0, 1, 1, 2]):
        v[:, j, c] = 65536
    assert policy.collusion_tolerance == 1
    sigma_p = party_noise_scale(sigma_on_tally_grid(sigma), 3, 1, NUM_CLASSES) / 2 ** 32
    assert sigma / 2 ** 0.5 < sigma_p < sigma / 2 ** 0.5 * 1.001
    wide = MechanismPolicy("gnmax", sigma_p * 3 ** 0.5)
    plain_labels = [r.label for r in release_batch(tally(g, v), wide, make_noise("seeded", 99))]
    a = np.bincount(mpc_labels, minlength=NUM_CLASSES)
    b = np.bincount(plain_labels, minlength=NUM_CLASSES)
    assert a[1] > a[3] and b[1] > b[3]                                  # the signal is there
    assert stats.chi2_contingency(np.stack([a, b]) + 1).pvalue > 1e-3


def test_a_killed_party_fails_the_batch_and_records_nothing(tmp_path):
    """Party 1 is killed while a batch runs: the batch fails with PartyError, the
    operator records and releases nothing; restarted parties (same keys and
    ledgers) answer the same queries, charged once by the operator, and the log,
    cosigned by every party across the restart, audits clean."""
    from dvsecure.audit.check import audit
    from dvsecure.log.writer import LogWriter, name_signers, operator_signer
    from dvsecure.mpc.party_ledger import PartyLedger

    policy = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 10.0))
                                            for i in range(2)),
                              mechanism=MechanismPolicy("gnmax", 1.0), name="kill")
    state, log_dir = tmp_path / "state", tmp_path / "log"
    lost = [(f"lost-{k}", {"src0": k % 2, "src1": 0}) for k in range(300)]
    backend = MPCBackend(timeout=60, state_dir=str(state / "parties"))
    policy = name_signers(policy, state, backend)
    try:
        with Ledger(state / "k.sqlite", policy) as ledger:
            log = LogWriter(log_dir, ledger, [operator_signer(state, policy), *backend.cosigners(ledger)])
            agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log)
            first = agg.query("ok", {"src0": 1, "src1": 1}, 2)
            assert first.answered and first.label == 1
            before = (ledger.spent(), ledger.next_seq(), log.size)
            parties = backend._parties
            send, victim = parties._send, parties._procs[1]

            def send_then_kill(data: bytes):         # party 1 dies while the batch is in flight
                send(data)
                if b"batch" in data[:40]:
                    victim.kill()
            parties._send = send_then_kill
            with pytest.raises(PartyError, match="died|did not answer"):
                agg.query_batch(lost, 2)
            assert (ledger.spent(), ledger.next_seq(), log.size) == before
            assert not ledger.has_query("lost-0")
            # Restart the parties on their state; the same queries now go through.
            backend.close()
            backend = MPCBackend(timeout=120, state_dir=str(state / "parties"))
            log = LogWriter(log_dir, ledger, [operator_signer(state, policy), *backend.cosigners(ledger)])
            agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log)
            again = agg.query_batch(lost, 2)
            # Label 0 (a tie to the lowest index) while a source takes part; once both are
            # out of budget a query has no participant and is refused.
            took_part = [any(p.gamma for p in r.participants) for r in again]
            assert took_part[0] and not took_part[-1]
            assert [r.label for r in again] == [0 if t else None for t in took_part]
            assert ledger.next_seq() == before[1] + 300
            operator_spent = ledger.spent()
        backend.close()
        report = audit(log_dir, allow_nonprivate=True)
        assert report.ok, [str(f) for f in report.findings]
        assert report.entries == before[1] + 300
        signers = [e for e in map(json.loads, (log_dir / "entries.jsonl").read_text().splitlines())
                   if e["kind"] == "signers"]
        assert len(signers) == 1 and [k["role"] for k in signers[0]["keys"]] == ["operator"] + ["party"] * 3
        # Each party's own record: never below the operator's (a failed batch stays charged there).
        for rank in range(3):
            pl = PartyLedger(next((state / "parties" / f"party-{rank}").glob("ledger-*.sqlite")), policy, "")
            assert pl.size == report.entries
            assert all(pl.spent()[s] >= operator_spent[s] for s in policy.ids)
            pl.close()
    finally:
        backend.close()


def test_demo_on_the_mpc_backend(tmp_path, capsys):
    import json

    from dvsecure.cli import main

    assert main(["demo", "--backend", "mpc", "--no-noise", "--out", str(tmp_path / "log"), "--queries", "30",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "mpc" and data["private"] is False and data["audit"]["ok"]
    # The first third calibrates the weights inside the parties; the rest is released.
    assert data["calibration_queries"] == 10
    assert data["answered"] + data["refused"] == 20 and len(data["labels"]) == 20
    # A bare demo is the MPC path with private noise; its log audits without --allow-nonprivate.
    assert main(["demo", "--out", str(tmp_path / "log2"), "--queries", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "mpc" and data["private"] is True and data["audit"]["ok"]
    assert main(["audit", str(tmp_path / "log2")]) == 0


def test_a_plain_script_without_a_main_guard_can_use_the_backend(tmp_path):
    """Parties are fresh interpreters (`python -m dvsecure.mpc`), so a user's
    script is not re-imported by them, as multiprocessing's spawn would do."""
    import subprocess
    import sys

    script = tmp_path / "use_mpc.py"
    script.write_text(
        "from dvsecure import Aggregator, Ledger\n"
        "from dvsecure.backends.mpc import MPCBackend\n"
        "from dvsecure.noise import make_noise\n"
        "from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy\n"
        "policy = ConsortiumPolicy(sources=(SourcePolicy('a', 0.5, 0.5, Budget('rho', 9.0)),"
        " SourcePolicy('b', 0.5, 0.5, Budget('rho', 9.0))), mechanism=MechanismPolicy('gnmax', 1.0))\n"
        "with MPCBackend(num_parties=2, timeout=120) as mpc, Ledger('l.sqlite', policy) as ledger:\n"
        "    agg = Aggregator(policy, ledger, backend=mpc, noise=make_noise('no_noise'))\n"
        "    print('LABEL', agg.query('q', {'a': 1, 'b': 1}, 3).label)\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("LABEL") == 1 and "LABEL 1" in out.stdout
