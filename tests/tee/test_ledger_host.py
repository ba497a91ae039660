"""Whoever holds the ledger file (the enclave's host) cannot free budget by
editing it: budgets come from the policy, and the derived spends and counts are
recomputed from the ledger's own records (the log's entries) at start."""
from __future__ import annotations

import sqlite3

import pytest

from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import LedgerError
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

POLICY = ConsortiumPolicy(
    sources=(SourcePolicy("a", 0.25, 0.5, Budget("rho", 1.0)), SourcePolicy("b", 0.25, 0.5, Budget("rho", 5.0))),
    mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.3), name="host")


def run(path, queries, start=0):
    with Ledger(path, POLICY) as ledger:
        agg = Aggregator(POLICY, ledger, noise=make_noise("seeded", 7))
        return agg.query_batch([(f"q{start + i}", {"a": i % 3, "b": i % 3}) for i in range(queries)], 3)


def edit(path, sql):
    db = sqlite3.connect(path)
    with db:
        db.execute(sql)
    db.close()


def test_an_honest_ledger_matches_its_records(tmp_path):
    run(tmp_path / "l.sqlite", 12)
    with Ledger(tmp_path / "l.sqlite", POLICY) as ledger:
        ledger.check_against_records()
        assert ledger.spent()["a"] > 0


def test_a_raised_budget_in_the_file_is_ignored(tmp_path):
    path = tmp_path / "l.sqlite"
    run(path, 1)
    edit(path, "UPDATE spend SET budget='1000' WHERE source_id='a'")
    with Ledger(path, POLICY) as ledger:
        assert ledger.budgets()["a"] == POLICY.sources[0].budget_rho
    results = run(path, 40, start=1)
    with Ledger(path, POLICY) as ledger:
        assert ledger.spent()["a"] <= POLICY.sources[0].budget_rho     # the policy's 1.0, not the file's 1000
    assert any(p.status.startswith("excluded") for r in results for p in r.participants if p.source_id == "a")


@pytest.mark.parametrize("sql, what", [
    ("UPDATE spend SET spent='0' WHERE source_id='a'", "'a': the ledger says spent 0"),
    ("UPDATE spend SET charged=charged-1 WHERE source_id='b'", "'b': the ledger says spent"),
])
def test_an_edited_spend_is_caught_from_the_records(tmp_path, sql, what):
    path = tmp_path / "l.sqlite"
    run(path, 12)
    edit(path, sql)
    with Ledger(path, POLICY) as ledger, pytest.raises(LedgerError, match=what):
        ledger.check_against_records()


def test_an_edited_record_is_caught_too(tmp_path):
    path = tmp_path / "l.sqlite"
    run(path, 12)
    # Lower a weight inside an entry: its stated cumulative spends no longer add up.
    db = sqlite3.connect(path)
    (body,) = db.execute("SELECT body FROM records WHERE seq=5").fetchone()
    with db:
        db.execute("UPDATE records SET body=? WHERE seq=5", (bytes(body).replace(b'"answered":true', b'"answered":false')
                                                             if b'"answered":true' in bytes(body)
                                                             else bytes(body).replace(b'"answered":false',
                                                                                      b'"answered":true'),))
    db.close()
    for chunk in (1, 5, 1000):               # the edited entry alone, first of a chunk, inside one
        with Ledger(path, POLICY) as ledger, pytest.raises(LedgerError, match="does not match its own records"):
            ledger.check_against_records(chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
def test_the_check_reads_in_chunks_with_the_same_verdict(tmp_path, chunk):
    path = tmp_path / "l.sqlite"
    run(path, 12)
    with Ledger(path, POLICY) as ledger:
        ledger.check_against_records(chunk=chunk)
    edit(path, "UPDATE spend SET spent='1/1000' WHERE source_id='b'")
    with Ledger(path, POLICY) as ledger, pytest.raises(LedgerError, match="'b': the ledger says spent 1/1000"):
        ledger.check_against_records(chunk=chunk)
