"""Calibration inside the parties, without CrypTen: a party's record of a
calibration (charges checked before anything is revealed, the noisy sums it
revealed) and its cosignature of the calibration entry the operator writes
with the same code as the plaintext backend. The secure computation itself is
exercised end to end in tests/test_backend_parity.py."""
from __future__ import annotations

from fractions import Fraction

import msgspec
import numpy as np
import pytest

from dvsecure.engine.calibration import PrivateCalibration, calibration_charge
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import BudgetExceededError, LedgerError, SubmissionError
from dvsecure.log import entry
from dvsecure.log.note import Signer, generate_signer, parse_note
from dvsecure.log.writer import LogWriter, operator_signer
from dvsecure.mpc.calibrate import calibration_plan
from dvsecure.mpc.party_ledger import CosignError, PartyLedger
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy

POLICY = ConsortiumPolicy(
    sources=(SourcePolicy("s0", 0.125, 0.5, Budget("rho", 1.0)), SourcePolicy("s1", 0.125, 0.5, Budget("rho", 1.0)),
             SourcePolicy("poor", 0.125, 0.5, Budget("rho", 0.05))),
    mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.3),
    calibration=CalibrationPolicy(budget_fraction=0.9), name="party-calibration")
LABELS = (0, 1, 2, 1)
CMD = {"calibration_id": "cal-1", "query_ids": ["a", "b", "c", "d"], "labels": list(LABELS), "num_classes": 3,
       "calibrated": list(POLICY.ids)}


def operator(tmp_path, sums):
    """The operator's ledger and log after one calibration released with `sums`,
    and the party's cosigning key."""
    ledger = Ledger(tmp_path / "op.sqlite", POLICY)
    party_signer = Signer.from_key_string(generate_signer("dvsecure-mpc-party-0")[0])
    log = LogWriter(tmp_path / "log", ledger, [operator_signer(tmp_path, POLICY), party_signer])
    cal = PrivateCalibration(POLICY, ledger, make_noise("no_noise"))
    # The coordinator leaves 'poor' at its ceiling (costs nothing); the others are calibrated.
    plan = calibration_plan({**CMD, "calibrated": ["s0", "s1"]}, POLICY)
    assert cal.plan("cal-1", LABELS, 3).charges.keys() == set(POLICY.ids)     # it could have calibrated all
    result = cal.commit(plan, {sid: sums[sid] for sid in plan.charges})
    log.sync()
    return ledger, plan, result, party_signer.verifier_key_string


def checkpoint(tmp_path) -> bytes:
    return parse_note(sorted((tmp_path / "log" / "checkpoints").iterdir())[-1].read_bytes())[0]


def revealed(tmp_path, vkey, plan, sums) -> PartyLedger:
    party = PartyLedger(tmp_path / "party.sqlite", POLICY, vkey)
    party.record_calibration(plan, "no_noise")
    party.record_calibration_sums(plan.query_id, [sums.get(sid) if sid in plan.charges else None
                                                  for sid in POLICY.ids])
    party.mark_calibration_delivered(plan.query_id)
    return party


SUMS = {"s0": 4 * 65536, "s1": 3 * 65536 + 17, "poor": 65536}


def test_the_plaintext_entry_is_cosigned_and_the_spends_match(tmp_path):
    ledger, plan, result, vkey = operator(tmp_path, SUMS)
    assert "poor" in plan.skipped and set(plan.charges) == {"s0", "s1"}
    party = revealed(tmp_path, vkey, plan, SUMS)
    assert party.spent() == ledger.spent()
    party.check_and_cosign(ledger.record_bytes(0, None), checkpoint(tmp_path))
    assert party.size == ledger.next_seq()
    assert result.weights["s0"] == 0.5 and result.weights["poor"] == 0.5     # perfect accuracy; skipped: ceiling


@pytest.mark.parametrize("field, value", [
    ("accuracy", [1.0, 0.5, None]), ("gamma", entry.pack_u32([32768, 32768, 32768])),
    ("status", "CCC"), ("noise", "private"), ("num_queries", 5), ("sigma", [1.0, 1.0, None])])
def test_a_calibration_entry_other_than_the_revealed_one_is_refused(tmp_path, field, value):
    ledger, plan, _, vkey = operator(tmp_path, SUMS)
    party = revealed(tmp_path, vkey, plan, SUMS)
    entries = ledger.record_bytes(0, None)
    k = next(i for i, data in enumerate(entries) if isinstance(entry.decode(data), entry.Calibration))
    entries[k] = entry.encode(msgspec.structs.replace(entry.decode(entries[k]), **{field: value}))
    with pytest.raises(CosignError, match="differs from what the parties revealed"):
        party.check_and_cosign(entries, checkpoint(tmp_path))
    assert party.size == 0


def test_other_noisy_sums_than_the_revealed_ones_are_refused(tmp_path):
    ledger, plan, _, vkey = operator(tmp_path, {**SUMS, "s1": SUMS["s1"] + 1})
    party = revealed(tmp_path, vkey, plan, SUMS)
    with pytest.raises(CosignError, match="calibration 'cal-1' differs"):
        party.check_and_cosign(ledger.record_bytes(0, None), checkpoint(tmp_path))


def test_a_calibration_never_revealed_or_left_out_of_the_log_is_refused(tmp_path):
    ledger, plan, _, vkey = operator(tmp_path, SUMS)
    party = PartyLedger(tmp_path / "party.sqlite", POLICY, vkey)
    with pytest.raises(CosignError, match="was not revealed by the parties"):
        party.check_and_cosign(ledger.record_bytes(0, None), checkpoint(tmp_path))
    # Revealed and delivered, but the operator logs only what came before it.
    (tmp_path / "b").mkdir()
    party = revealed(tmp_path / "b", vkey, plan, SUMS)
    entries = ledger.record_bytes(0, None)
    k = next(i for i, data in enumerate(entries) if isinstance(entry.decode(data), entry.Calibration))
    from dvsecure.log.merkle import CompactRange, leaf_hash
    from dvsecure.log.note import Checkpoint

    tree = CompactRange()
    tree.extend(leaf_hash(d) for d in entries[:k])
    cp = Checkpoint(entry.log_origin(POLICY), k, tree.root(), ()).to_text()
    with pytest.raises(CosignError, match="missing from the log.*cal-1"):
        party.check_and_cosign(entries[:k], cp)


def test_charges_are_checked_by_the_partys_own_record_before_anything_is_revealed(tmp_path):
    party = PartyLedger(tmp_path / "p.sqlite", POLICY, "vkey")
    # This party charged a query the operator's ledger may not show (a failed batch stays charged here).
    party.record_charges(["q0"], np.array([[8192, 8192, 8192]]), np.array([True]), "private")
    before = party.spent()
    charge = calibration_charge(POLICY, "poor").rho
    assert before["poor"] + charge > POLICY.source("poor").cap_rho
    with pytest.raises(BudgetExceededError, match="'poor' has no budget left"):
        party.record_calibration(calibration_plan(CMD, POLICY), "private")
    assert party.spent() == before                                           # nothing recorded
    fair = calibration_plan({**CMD, "calibrated": ["s0", "s1"]}, POLICY)
    party.record_calibration(fair, "private")
    assert party.spent()["s0"] == before["s0"] + calibration_charge(POLICY, "s0").rho
    assert party.spent()["poor"] == before["poor"]
    # The policy's calibration share (0.9 of the budget) is a cap on all calibration.
    with pytest.raises(BudgetExceededError, match="calibration share"):
        party.record_calibration(calibration_plan({**CMD, "calibration_id": "cal-2", "calibrated": ["s0"]},
                                                  POLICY), "private")
    # Revealed and delivered: a party releases a calibration once; undelivered, a retry is charged again.
    party.record_calibration_sums("cal-1", [1, 2, None])
    retry = party.spent()
    party.record_calibration(calibration_plan({**CMD, "calibrated": []}, POLICY), "private")
    assert party.spent() == retry
    party.record_calibration_sums("cal-1", [None, None, None])
    party.mark_calibration_delivered("cal-1")
    with pytest.raises(LedgerError, match="already revealed"):
        party.record_calibration(fair, "private")
    with pytest.raises(LedgerError, match="a query's id"):
        party.record_calibration(calibration_plan({**CMD, "calibration_id": "q0"}, POLICY), "private")


@pytest.mark.parametrize("change, message", [
    ({"labels": [0, 1, 3, 1]}, "labels must be in"), ({"labels": [0]}, "1 labels for 4"),
    ({"calibrated": ["s0", "nobody"]}, "distinct policy sources"), ({"calibrated": ["s0", "s0"]}, "distinct"),
    ({"calibration_id": "a"}, "one of its labelled queries"), ({"calibration_id": "bad\nid"}, "query id")])
def test_a_malformed_calibration_command_is_refused(change, message):
    with pytest.raises(SubmissionError, match=message):
        calibration_plan({**CMD, **change}, POLICY)


def test_the_sum_scale_is_the_plaintext_noise_on_the_sum():
    plan = calibration_plan(CMD, POLICY)
    sigma = calibration_charge(POLICY, "s0").sigma
    assert plan.sum_scale(POLICY, "s0") == Fraction(sigma) * 4 * 65536
    # rho = 1 / (2 sigma^2) for sensitivity 1 (the mean accuracy), the share of the budget.
    assert calibration_charge(POLICY, "s0").rho == pytest.approx(1 / (2 * sigma ** 2))
    assert calibration_charge(POLICY, "s0").rho <= Fraction(9, 10) * POLICY.source("s0").cap_rho
    assert np.isclose(float(calibration_charge(POLICY, "s0").rho), 0.9 * float(POLICY.source("s0").cap_rho),
                      rtol=1e-4)
