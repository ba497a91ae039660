"""The one rule for query ids (`wire.limits.check_query_id`), and the
coordinator's entry point (`Aggregator.query` / `query_batch`) applying it
before anything is charged. The parties' and the enclave's entry points are
tested beside them (tests/mpc/test_share_inbox.py, tests/tee/test_enclave_limits.py)."""
from __future__ import annotations

import pytest

from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import EnclaveError, ParameterError, PartyRefusal
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.wire.limits import MAX_QUERY_ID_BYTES, check_query_id

POLICY = ConsortiumPolicy(sources=(SourcePolicy("s0", 0.5, 0.5, Budget("rho", 100.0)),),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="query-ids")


@pytest.mark.parametrize("qid", ["q", "x" * 256, "é" * 128, "日本" * 42, "q-1 with spaces", "€" * 85])
def test_ids_up_to_256_printable_bytes_pass(qid):
    assert len(qid.encode()) <= MAX_QUERY_ID_BYTES
    assert check_query_id(qid) == qid


@pytest.mark.parametrize("qid, words", [
    ("", "empty query id"),
    ("x" * 257, "is 257 bytes"),
    ("é" * 129, "is 258 bytes"),                  # 129 characters: bytes are what count
    ("q" * (8 << 20), "is 8388608 bytes"),
    ("a\nb", "non-printable character '\\n'"),
    ("\x00", "non-printable character '\\x00'"),
    ("\ud800", "non-printable character '\\ud800'"),   # a lone surrogate: no UTF-8 at all
    (b"bytes", "is a bytes, not a string"),
    (7, "is a int, not a string"),
])
def test_other_ids_are_refused_naming_the_id_and_the_rule(qid, words):
    for error in (ParameterError, PartyRefusal, EnclaveError):
        with pytest.raises(error) as e:
            check_query_id(qid, error)
        assert words in str(e.value)
        assert len(str(e.value)) < 200                   # the id is quoted truncated, never whole
        if isinstance(qid, str) and qid:
            assert repr(qid[:32]) in str(e.value) and "1..256 bytes (UTF-8) of printable characters" in str(e.value)
    assert getattr(e.value, "code", None) == "INVALID_ARGUMENT"     # as a service refusal: its gRPC status


def test_the_aggregator_refuses_an_oversized_query_id_before_charging_anything(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite", POLICY) as ledger:
        agg = Aggregator(POLICY, ledger, noise=make_noise("no_noise"))
        huge = "q" * (8 << 20)
        with pytest.raises(ParameterError, match=r"query id 'q{32}'\.\.\. is 8388608 bytes"):
            agg.query(huge, {"s0": 1}, 3)
        with pytest.raises(ParameterError, match="is 258 bytes"):
            agg.query_batch([("fine", {"s0": 1}), ("é" * 129, {"s0": 1})], 3)
        assert not ledger.has_query("fine") and ledger.spent()["s0"] == 0     # the whole batch refused
        assert agg.query("é" * 128, {"s0": 1}, 3).label == 1                  # 256 bytes: answered


def test_calibration_takes_its_query_id_under_the_same_rule(tmp_path):
    from dvsecure.engine.calibration import PrivateCalibration

    with Ledger(tmp_path / "ledger.sqlite", POLICY) as ledger:
        with pytest.raises(ParameterError, match="non-printable character"):
            PrivateCalibration(POLICY, ledger, noise=make_noise("no_noise")).run("cal\n1", [[1]], [1], 3)
        assert ledger.spent()["s0"] == 0
