"""Every MPC party enforces the policy itself and cosigns only what it checked:
a weight outside its band or a spend past a budget is refused before any label
exists; a log entry that differs from what the parties computed, or a log that
omits a query whose label they revealed, gets no cosignature — so no checkpoint
the auditor accepts can cover it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dvsecure.audit.check import audit
from dvsecure.backends.base import Backend, BackendOutput
from dvsecure.backends.mpc import MPCBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger, LedgerRecord
from dvsecure.log import entry as E
from dvsecure.log.writer import LogWriter, name_signers, operator_signer
from dvsecure.mechanism.release import Release
from dvsecure.mpc.parties import PartyError
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mpc():
    backend = MPCBackend(num_parties=3, timeout=120)
    yield backend
    backend.close()


def policy(name: str, budget: float = 10.0) -> ConsortiumPolicy:
    # Each test its own policy name, so each has its own ledger at every party.
    return ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.125, 0.25, Budget("rho", budget))
                                          for i in range(3)),
                            mechanism=MechanismPolicy("gnmax", 1.0), name=name)


def operator(tmp_path, pol, backend):
    """The operator's ledger and log, under `pol` naming the operator and the parties as signers."""
    ledger = Ledger(tmp_path / "ledger.sqlite", name_signers(pol, tmp_path, backend))
    log = LogWriter(tmp_path / "log", ledger, [operator_signer(tmp_path, pol), *backend.cosigners(ledger)])
    return ledger, log


VOTES = {"src0": 1, "src1": 1, "src2": 0}


def test_checkpoints_carry_every_partys_signature(mpc, tmp_path):
    pol = policy("cosign-ok")
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        agg = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log)
        agg.query_batch([(f"q{i}", VOTES) for i in range(3)], 2)
    assert audit(tmp_path / "log", allow_nonprivate=True).ok
    latest = sorted((tmp_path / "log" / "checkpoints").iterdir())[-1]
    lines = latest.read_bytes().split(b"\n")
    assert sum(line.startswith("— dvsecure-mpc-party-".encode()) for line in lines) == 3
    # Without one party's signature the checkpoint does not satisfy the policy.
    latest.write_bytes(b"\n".join(line for line in lines if b"dvsecure-mpc-party-2 " not in line))
    report = audit(tmp_path / "log", allow_nonprivate=True)
    assert not report.ok and any(f.check == "checkpoint" and "dvsecure-mpc-party-2" in f.message
                                 for f in report.findings)


class LyingAggregatorBackend(Backend):
    """What a dishonest operator logs: the parties' release with the label changed."""

    def __init__(self, inner):
        self.inner, self.name, self.evaluates_whole_batch = inner, inner.name, True

    def bind(self, pol):
        self.inner.bind(pol)

    def evaluate(self, *args, **kwargs):
        outs = self.inner.evaluate(*args, **kwargs)
        return [BackendOutput(Release(o.release.answered, 1 - o.release.label if o.release.answered else None),
                              o.problems) for o in outs]


def test_a_forged_label_gets_no_cosignature(mpc, tmp_path):
    pol = policy("cosign-forged")
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        honest = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log)
        honest.query("honest", VOTES, 2)
        good = log.size
        liar = Aggregator(ledger.policy, ledger, backend=LyingAggregatorBackend(mpc), noise=make_noise("no_noise"), log=log)
        with pytest.raises(PartyError, match="label differs"):
            liar.query("forged", VOTES, 2)
    names = sorted(p.name for p in (tmp_path / "log" / "checkpoints").iterdir())
    assert int(names[-1][:12]) == good        # no checkpoint covers the forged entry
    report = audit(tmp_path / "log", allow_nonprivate=True)
    assert not report.ok            # the forged entry is in the file but no checkpoint the policy accepts covers it


def test_a_revealed_query_missing_from_the_log_gets_no_cosignature(mpc, tmp_path):
    pol = policy("cosign-omitted")
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        agg = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log)
        agg.query("first", VOTES, 2)
        # The operator has the parties answer a query and never logs (or charges) it.
        gammas = np.full((1, 3), 8192, dtype=np.int64)
        mpc.evaluate(gammas, [[1, 1, 0]], ["one-hot"] * 3, 2, pol.mechanism, make_noise("no_noise"),
                     query_ids=["hidden"])
        with pytest.raises(PartyError, match="missing from the log.*hidden"):
            agg.query("second", VOTES, 2)


@pytest.mark.parametrize("gamma, message", [(20000, "outside its band"), (4096, "outside its band")])
def test_a_weight_outside_its_band_is_refused_before_any_label(mpc, tmp_path, gamma, message):
    pol = policy(f"band-{gamma}")
    mpc.bind(pol)
    gammas = np.array([[gamma, 8192, 8192]], dtype=np.int64)      # band [0.125, 0.25] = [8192, 16384]
    with pytest.raises(PartyError, match=message):
        mpc.evaluate(gammas, [[1, 1, 0]], ["one-hot"] * 3, 2, pol.mechanism, make_noise("no_noise"),
                     query_ids=["q"])


def test_a_spend_past_a_budget_is_refused_by_the_parties(mpc, tmp_path):
    """An operator whose filter would overspend: the parties' own records refuse
    the batch, every party in step, and stay ready for the next one."""
    pol = policy("budget", budget=0.05)         # one GNMax at gamma 0.25, sigma 1 costs 0.0625
    mpc.bind(pol)
    gammas = np.array([[16384, 8192, 8192]], dtype=np.int64)
    with pytest.raises(PartyError, match="would spend .* of its budget") as info:
        mpc.evaluate(gammas, [[1, 1, 0]], ["one-hot"] * 3, 2, pol.mechanism, make_noise("no_noise"),
                     query_ids=["over"])
    assert all(f"party {r}" in str(info.value) for r in range(3))
    out = mpc.evaluate(np.array([[8192, 8192, 8192]], dtype=np.int64), [[1, 1, 0]], ["one-hot"] * 3, 2,
                       pol.mechanism, make_noise("no_noise"), query_ids=["within"])
    assert out[0].release.label == 1


def test_a_signers_entry_dropping_a_party_gets_no_cosignature(mpc, tmp_path):
    """Issue 10, attack 1 at the parties: the operator records a signer set naming
    itself and two parties (around the LogWriter, which refuses it) and asks for
    cosignatures: every honest party checks the set against the policy and refuses."""
    pol = policy("cosign-signers")
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        agg = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log)
        agg.query("before", VOTES, 2)
        good = log.size
        current = [rec for rec in ledger.records(kind=E.SIGNERS)][-1].keys
        fewer = [k for k in current if k.name != "dvsecure-mpc-party-2"]
        assert len(fewer) == len(current) - 1

        def render(seq, spent, charged):
            return E.encode(E.Signers(v=E.VERSION, seq=seq, query_id=f"signers-{seq}", keys=fewer))
        ledger.commit([LedgerRecord("signers-forged", E.SIGNERS, (), render)])
        with pytest.raises(PartyError, match="not the policy's signer set"):
            log.sync()
    names = sorted(p.name for p in (tmp_path / "log" / "checkpoints").iterdir())
    assert int(names[-1][:12]) == good          # nothing covers the forged signer set
    assert not audit(tmp_path / "log", allow_nonprivate=True).ok


class FramingBackend(LyingAggregatorBackend):
    """What a dishonest coordinator sends the parties: weight 0 for src0, which has
    budget left (it would log src0 as excluded, invalid or absent)."""

    def evaluate(self, gammas, *args, **kwargs):
        gammas = np.array(gammas, copy=True)
        gammas[:, 0] = 0
        return self.inner.evaluate(gammas, *args, **kwargs)


@pytest.mark.parametrize("shrink", [False, True])
def test_a_source_with_budget_cannot_be_given_weight_zero(mpc, tmp_path, shrink):
    """Issue 10, attack 2: every party re-runs the budget filter before anything is
    revealed; the batch is refused and nothing is recorded or released."""
    pol = policy(f"framing-{shrink}")
    if shrink:                  # src0 nearly out of budget: the filter would shrink it, never exclude it
        pol = dataclasses.replace(pol, sources=(dataclasses.replace(pol.sources[0], on_exhaustion="shrink",
                                                                    budget=Budget("rho", 0.03)),
                                                *pol.sources[1:]))
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        framing = Aggregator(ledger.policy, ledger, backend=FramingBackend(mpc), noise=make_noise("no_noise"),
                             log=log)
        with pytest.raises(PartyError, match="src0.*has budget for weight .* but the coordinator gave it weight 0"):
            framing.query_batch([("framed", VOTES), ("framed-2", VOTES)], 2)
        assert not ledger.has_query("framed") and ledger.next_seq() == 2     # genesis and signers only
        honest = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log)
        assert honest.query("after", VOTES, 2).participant("src0").gamma > 0
    assert audit(tmp_path / "log", allow_nonprivate=True).ok


def test_a_source_out_of_budget_may_be_given_weight_zero(mpc, tmp_path):
    pol = policy("framing-exhausted", budget=0.02)     # one GNMax query at 0.125 costs 0.015625
    ledger, log = operator(tmp_path, pol, mpc)
    with ledger:
        agg = Aggregator(ledger.policy, ledger, backend=mpc, noise=make_noise("no_noise"), log=log,
                         weights={s: 0.125 for s in ledger.policy.ids})
        first, second = agg.query_batch([("a", VOTES), ("b", VOTES)], 2)
        assert [p.status for p in second.participants] == ["excluded:budget"] * 3
    assert audit(tmp_path / "log", allow_nonprivate=True).ok
