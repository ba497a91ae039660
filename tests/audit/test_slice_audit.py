"""Privacy units under audit (issue 12): from the log alone the auditor recomputes
both units' spends of slice-unit sources, and flags a forged slice count, a
weight off the slice grid, a histogram the policy does not allow, and an
influence spend past `influence_budget`."""
from __future__ import annotations

import dataclasses
import json
import shutil
from fractions import Fraction
from pathlib import Path

import msgspec
import numpy as np
import pytest

from dvsecure.accounting.charges import query_charges, total_rho
from dvsecure.accounting.conversions import zcdp_eps_tight
from dvsecure.audit.check import audit
from dvsecure.audit.submissions import submission_line
from dvsecure.cli import main
from dvsecure.demo.consortium import default_policy
from dvsecure.demo.run import run_demo
from dvsecure.engine.ledger import Ledger
from dvsecure.log import entry as E
from dvsecure.log.merkle import MerkleTree, leaf_hash
from dvsecure.log.note import Checkpoint, sign_checkpoint
from dvsecure.log.writer import ENTRIES, PREVIOUS, checkpoint_name, operator_signer
from dvsecure.noise import SEEDED, make_noise
from dvsecure.policy import Budget, ConsortiumPolicy
from dvsecure.wire.submission import Submission


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices")
    assert main(["demo", "--backend", "plaintext", "--out", str(root / "log"), "--queries", "60",
                 "--noise-seed", "5", "--json"]) == 0
    return root


@pytest.fixture
def copy(base, tmp_path):
    shutil.copytree(base / "log", tmp_path / "log")
    shutil.copytree(base / "log.state", tmp_path / "log.state")
    return tmp_path / "log", tmp_path / "log.state"


def lines_of(log: Path) -> list[bytes]:
    return (log / ENTRIES).read_bytes().split(b"\n")[:-1]


def resign(log: Path, state: Path, lines: list[bytes]) -> None:
    """The dishonest operator, holding its real key: writes `lines` and signs them."""
    policy = ConsortiumPolicy.load(log / "policy.toml")
    (log / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines))
    root = MerkleTree([leaf_hash(x) for x in lines]).root()
    previous = max(int(p.name[:12]) for p in (log / "checkpoints").glob("*.note") if int(p.name[:12]) < len(lines))
    cp = Checkpoint(E.log_origin(policy), len(lines), root, (f"{PREVIOUS}{previous}",))
    note = sign_checkpoint(cp, [operator_signer(state, policy)])
    (log / "checkpoints" / checkpoint_name(len(lines))).write_bytes(note)


def last_query(lines):
    return next(E.decode(x) for x in reversed(lines) if isinstance(E.decode(x), E.Query))


def forge_queries(lines, policy, count, gamma, answered=True, slices=None):
    """`count` query entries with these weights, every spend and count restated as an
    operator charging at `slices` (the policy's own by default) would state them."""
    prev = last_query(lines)
    S = len(policy.sources)
    spent = E.unpack(prev.spent, "<f8", S).copy()
    counts = E.unpack(prev.charged, "<u4", S).astype(np.int64)
    exact = [Fraction(float(x)) for x in spent]
    status = "".join("A" if g else "X" for g in gamma)
    out = []
    for k in range(count):
        for j, src in enumerate(policy.sources):
            m = src.slices if slices is None else slices[j]
            charge = total_rho(query_charges(policy.mechanism, gamma[j] / 65536, answered, m))
            if charge:
                exact[j] += charge
                counts[j] += 1
        out.append(E.encode(msgspec.structs.replace(
            prev, seq=len(lines) + k, query_id=f"forged-{k}", gamma=E.pack_u32(gamma), status=status,
            answered=answered, label=0 if answered else None,
            spent=E.pack_f64([float(x) for x in exact]), charged=E.pack_u32(counts))))
    return out


def test_both_units_recomputed_from_the_log_alone(copy):
    log, state = copy
    report = audit(log, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    policy = ConsortiumPolicy.load(log / "policy.toml")
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        spent, influence = ledger.spent(), ledger.influence()
    for s, src in zip(report.sources, policy.sources):
        assert (s.unit, s.slices) == ("slice", src.slices) and src.slices > 1
        assert s.spent_rho == float(spent[s.id]) > 0
        assert s.influence_rho == float(influence[s.id]) == float(spent[s.id] * src.slices ** 2)
        assert s.epsilon == zcdp_eps_tight(spent[s.id], src.delta) < s.influence_epsilon
    text = report.to_text()
    assert "slice m=100" in text and "influence eps" in text


def test_charges_at_a_forged_slice_count_are_caught(copy):
    """The operator charges inst-1 as if it had 4x the slices it agreed (16x cheaper)
    and states spends to match: the recomputation at the policy's m disagrees."""
    log, state = copy
    lines = lines_of(log)
    policy = ConsortiumPolicy.load(log / "policy.toml")
    gamma = np.array([src.grid_max * 65536 for src in policy.sources], np.int64)
    forged_m = [src.slices * (4 if j == 0 else 1) for j, src in enumerate(policy.sources)]
    resign(log, state, lines + forge_queries(lines, policy, 3, gamma, slices=forged_m))
    report = audit(log, allow_nonprivate=True)
    spend = [f for f in report.findings if f.check == "spend"]
    assert spend and all("inst-1" in f.message for f in spend) and spend[0].seq == len(lines)
    # Charged at the agreed m, the same entries audit clean.
    resign(log, state, lines + forge_queries(lines, policy, 3, gamma))
    assert audit(log, allow_nonprivate=True).ok


def test_a_policy_published_with_another_slice_count_is_caught(copy, tmp_path):
    log, _ = copy
    agreed = tmp_path / "agreed.toml"
    shutil.copy(log / "policy.toml", agreed)
    policy = ConsortiumPolicy.load(agreed)
    srcs = list(policy.sources)
    srcs[0] = dataclasses.replace(srcs[0], slices=srcs[0].slices * 4)
    (log / "policy.toml").write_text(dataclasses.replace(policy, sources=tuple(srcs)).to_toml())
    report = audit(log, allow_nonprivate=True)
    assert not report.ok and {f.check for f in report.findings} & {"genesis", "policy"}
    assert not audit(log, allow_nonprivate=True, policy=agreed).ok


def test_a_weight_off_the_slice_grid_is_caught(copy):
    log, state = copy
    lines = lines_of(log)
    policy = ConsortiumPolicy.load(log / "policy.toml")
    gamma = np.array([src.grid_max * 65536 for src in policy.sources], np.int64)
    gamma[1] -= 1                # inside inst-2's band, but gamma/m is not a multiple of 2**-16
    resign(log, state, lines + forge_queries(lines, policy, 1, gamma))
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "band" and "inst-2" in f.message and "slices" in f.message for f in report.findings)


def test_an_influence_spend_past_its_budget_is_caught(tmp_path):
    policy = default_policy(3)
    srcs = list(policy.sources)
    # inst-1: 100 slices; influence capped at rho 1500, so at most 0.15 at the slice level.
    srcs[0] = dataclasses.replace(srcs[0], influence_budget=Budget("rho", 1500.0))
    policy = dataclasses.replace(policy, sources=tuple(srcs))
    log, state = tmp_path / "log", tmp_path / "state"
    data = run_demo(out=log, state=state, num_queries=60, seed=1, noise=make_noise(SEEDED, 3), policy=policy).data
    row = data["sources"][0]
    assert row["influence_rho"] <= 1500 and row["spent_rho"] <= 0.15 and row["influence_budget_rho"] == 1500
    assert data["audit"]["ok"]
    lines = lines_of(log)
    gamma = np.array([src.grid_max * 65536 for src in policy.sources], np.int64)
    forged = forge_queries(lines, policy, 200, gamma)      # 200 more answered queries, honestly stated
    resign(log, state, lines + forged)
    report = audit(log, allow_nonprivate=True)
    budget = [f for f in report.findings if f.check == "budget"]
    assert any("influence" in f.message and "inst-1" in f.message for f in budget)
    inst1 = report.sources[0]
    assert inst1.influence_rho > 1500 and inst1.spent_rho < inst1.budget_rho   # only the influence cap broke


def test_a_counted_histogram_the_policy_does_not_allow_is_caught(copy, tmp_path):
    """inst-1 sent a histogram of 99 slice votes (it has 100) and the operator counted
    it: with its submissions file, inst-1's audit flags it."""
    log, state = copy
    lines = lines_of(log)
    policy = ConsortiumPolicy.load(log / "policy.toml")
    k = max(i for i, x in enumerate(lines) if isinstance(E.decode(x), E.Query) and E.decode(x).status[0] == "A")
    e = E.decode(lines[k])
    bad = Submission.new([99] + [0] * (e.num_classes - 1))
    commitments = E.unpack_commitments(e.commitments, len(policy.sources))
    commitments[0] = bad.commitment(e.query_id, "inst-1")
    lines[k] = E.encode(msgspec.structs.replace(e, commitments=E.pack_commitments(b"".join(commitments))))
    resign(log, state, lines)
    subs = tmp_path / "subs.jsonl"
    subs.write_text(submission_line(e.query_id, bad) + "\n")
    report = audit(log, allow_nonprivate=True, source="inst-1", submissions=subs)
    assert any(f.check == "submission" and "does not allow" in f.message and f.seq == k for f in report.findings)
    # The same vote logged invalid is what the policy requires: no finding.
    fine = Submission.new([100] + [0] * (e.num_classes - 1))
    commitments[0] = fine.commitment(e.query_id, "inst-1")
    lines[k] = E.encode(msgspec.structs.replace(e, commitments=E.pack_commitments(b"".join(commitments))))
    resign(log, state, lines)
    subs.write_text(json.dumps(json.loads(submission_line(e.query_id, fine))) + "\n")
    assert audit(log, allow_nonprivate=True, source="inst-1", submissions=subs).ok


def test_a_receipt_reports_both_units_of_its_source(copy, tmp_path):
    from dvsecure.audit.receipt import export_receipt

    log, _ = copy
    full = {s.id: s for s in audit(log, allow_nonprivate=True).sources}
    receipt = export_receipt(log, "inst-3", tmp_path / "receipt")
    report = audit(receipt, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    mine = next(s for s in report.sources if s.id == "inst-3")
    assert mine.complete and (mine.unit, mine.slices) == ("slice", 64)
    assert (mine.spent_rho, mine.influence_rho, mine.influence_epsilon) == \
        (full["inst-3"].spent_rho, full["inst-3"].influence_rho, full["inst-3"].influence_epsilon)
    assert "slice m=64" in report.to_text()


def test_a_non_finite_stated_spend_is_a_finding_whatever_the_sharding(copy):
    log, state = copy
    lines = lines_of(log)
    k = next(i for i, x in enumerate(lines) if isinstance(E.decode(x), E.Query))
    e = E.decode(lines[k])
    spent = E.unpack(e.spent, "<f8", 5).copy()
    spent[2] = float("nan")
    lines[k] = E.encode(msgspec.structs.replace(e, spent=E.pack_f64(spent)))
    resign(log, state, lines)
    for workers in (1, 3):
        report = audit(log, allow_nonprivate=True, workers=workers)
        assert any(f.check == "spend" and f.seq == k and "inst-3" in f.message for f in report.findings)


def test_a_calibrated_exclude_source_framed_as_out_of_budget_is_caught(tmp_path):
    """After calibration the desired weight is the calibrated one the log publishes:
    excluding a source that can still afford it is framing, even where its ceiling
    would no longer fit (the window an auditor testing only the ceiling misses)."""
    from dvsecure.mechanism.filter import BudgetFilter

    log, state = tmp_path / "log", tmp_path / "state"
    run_demo(out=log, state=state, num_queries=30, seed=2, noise=make_noise(SEEDED, 1), policy=default_policy(2))
    lines = lines_of(log)
    policy = ConsortiumPolicy.load(log / "policy.toml")
    src = policy.sources[0]                                    # inst-1: on_exhaustion "exclude"
    cal = next(E.decode(x) for x in lines if isinstance(E.decode(x), E.Calibration))
    g = int(E.unpack(cal.gamma, "<u4", 2)[0])
    flt = BudgetFilter(policy.mechanism)
    wc_cal, wc_top = flt.worst_case(g / 65536, src.slices), flt.worst_case(src.grid_max, src.slices)
    assert wc_top > 2 * wc_cal                                 # calibrated well below its ceiling
    spent = Fraction(float(E.unpack(last_query(lines).spent, "<f8", 2)[0]))
    n = int((src.cap_rho - wc_cal - spent) / wc_cal) - 1       # answered queries at the calibrated weight ...
    more = forge_queries(lines, policy, n, np.array([g, 0], np.int64))
    assert src.cap_rho - wc_top < spent + n * wc_cal < src.cap_rho - wc_cal   # ... into the window
    lines = lines + more
    framed = msgspec.structs.replace(E.decode(forge_queries(lines, policy, 1, np.array([0, 0], np.int64))[0]),
                                     status="BX")
    resign(log, state, lines + [E.encode(framed)])
    report = audit(log, allow_nonprivate=True)
    assert [f.seq for f in report.findings if f.check == "filter" and "inst-1" in f.message] == [len(lines)]


def test_a_complete_submissions_file_exposes_participation_fabricated_in_its_name(copy, tmp_path):
    log, state = copy
    lines = lines_of(log)
    policy = ConsortiumPolicy.load(log / "policy.toml")
    subs = tmp_path / "subs.jsonl"
    subs.write_text("")                                   # inst-2 sent nothing to this log
    report = audit(log, allow_nonprivate=True, source="inst-2", submissions=subs, submissions_complete=True)
    counted = [f for f in report.findings if f.check == "submission" and "submitted nothing" in f.message]
    assert counted and all("inst-2" in f.message for f in counted)
    assert audit(log, allow_nonprivate=True, source="inst-2", submissions=subs).ok     # a partial file: no claim
    assert policy and lines
