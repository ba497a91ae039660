"""`dvsecure bench --backend mpc` runs end to end over the protected links and,
in the same run, over plain gloo, and reports consistent figures: both
transports reveal the same outputs from the same shares (seeded noise), CrypTen
counts the same traffic on both, the links' bytes cover what CrypTen counts,
and the tally with public weights costs no communication at all. No timing is
asserted (the machine is shared)."""
from __future__ import annotations

import json

import pytest

from dvsecure.cli import main

PIPELINE = ("index_votes", "tally", "threshold", "gnmax_argmax")


@pytest.mark.slow
def test_bench_cli_small(tmp_path, capsys):
    out = tmp_path / "bench.json"
    queries = 6
    assert main(["bench", "--backend", "mpc", "--queries", str(queries), "--classes", "3", "--sources", "4",
                 "--parties", "3", "--noise", "seeded", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    captured = capsys.readouterr()
    assert json.loads(captured.out) == data                         # stdout stays one JSON object
    assert "protected links" in captured.err and "plain gloo" in captured.err and "comparison only" in captured.err

    # The protected run (top level) and the plain-gloo comparison, each self-consistent.
    plain = data["plain_gloo"]
    assert "never for real data" in plain["note"]
    for run in (data, plain):
        for key in ("pipeline_s", "rounds", "rounds_per_query", "bytes_per_query_per_party",
                    "baseline_crypten_argmax_s"):
            assert run[key] > 0
        phases = run["phases"]
        assert phases["tally"]["rounds"] == 0 and phases["tally"]["bytes_per_query_per_party"] == 0
        assert run["rounds"] == sum(phases[k]["rounds"] for k in PIPELINE)
        assert run["rounds_per_query"] == pytest.approx(run["rounds"] / queries, abs=1e-4)
        assert abs(run["pipeline_s"] - sum(phases[k]["seconds"] for k in PIPELINE)) < 1e-3
        # Threshold and argmax with the masked comparisons send less than CrypTen's own argmax alone.
        assert phases["threshold"]["bytes_per_query_per_party"] + phases["gnmax_argmax"]["bytes_per_query_per_party"] \
            < phases["baseline_crypten_argmax"]["bytes_per_query_per_party"]
        for k in ("threshold", "gnmax_argmax"):
            assert 0 <= phases[k]["noise_seconds"] <= phases[k]["seconds"]
        assert run["noise_s"] <= run["pipeline_s"] and run["speedup_vs_baseline_argmax_without_noise"] >= \
            run["speedup_vs_baseline_argmax"]
        # The dealer's bytes for the pipeline are its tables' and comparisons' requests; the baseline's
        # are CrypTen's own (Beaver triples and B2A bits), counted apart.
        by = run["dealer_by_request"]
        assert by["onehot_table"]["requests"] == 1 and by["dvsecure_compare"]["requests"] == 2
        assert run["dealer_bytes_per_query"] == pytest.approx(
            by["onehot_table"]["bytes_per_query"] + by["dvsecure_compare"]["bytes_per_query"], abs=0.2)
        assert run["dealer_bytes_per_query"] > 0 and {"additive", "binary"} <= set(by)
    assert "wire_bytes_per_query_per_party" not in plain          # gloo's own framing is not measured

    # Same shares, same seeded noise: the same revealed validity, answered bits and labels, and the
    # same operations, so CrypTen's counters agree exactly across the transports.
    assert data["revealed"]["same_on_both_transports"] == {"answered": True, "labels": True}
    for k in PIPELINE + ("baseline_crypten_argmax",):
        assert data["phases"][k]["rounds"] == plain["phases"][k]["rounds"]
        assert data["phases"][k]["bytes_per_query_per_party"] == plain["phases"][k]["bytes_per_query_per_party"]

    # Link bytes: nothing for the local tally, something wherever CrypTen communicates, and over the
    # whole run at least what CrypTen counts (it counts each tensor at both ends: half the sum).
    assert data["phases"]["tally"]["wire_bytes_per_query_per_party"] == 0
    for k in ("index_votes", "threshold", "gnmax_argmax", "baseline_crypten_argmax"):
        assert data["phases"][k]["wire_bytes_per_query_per_party"] > 0
    assert data["wire_bytes_per_query_per_party"] == pytest.approx(
        sum(data["phases"][k]["wire_bytes_per_query_per_party"] for k in PIPELINE), abs=0.2)
    assert data["dealer_wire_bytes_per_query"] > 0                  # the dealer's triples travel on links too
    totals = data["run_totals"]
    assert totals["wire_bytes_all_members"] >= totals["counted_bytes_all_parties"] / 2 > 0

    assert data["protected_over_plain_time_ratio"] > 0
    # The wide-area model is its printed formula applied to this run's rounds and link bytes.
    wan = data["wide_area_model"]
    assert "rounds x RTT" in wan["formula"] and "rounds x RTT" in captured.err
    assert wan["network_s"] == pytest.approx(data["rounds"] * wan["rtt_s"] + data["wire_bytes_per_query_per_party"]
                                             * queries * 8 / wan["bandwidth_bit_per_s"], abs=1e-3)
    assert wan["with_local_pipeline_s"] == pytest.approx(wan["network_s"] + data["pipeline_s"], abs=1e-3)
    prg = data["prg"]
    assert prg["chacha20_words_per_s"] > 0 and prg["mt19937_words_per_s"] > 0
    assert prg["chacha20_over_mt19937_ratio"] == pytest.approx(
        prg["chacha20_words_per_s"] / prg["mt19937_words_per_s"], rel=1e-2)


def test_bench_rejects_one_party():
    assert main(["bench", "--parties", "1", "--queries", "2"]) == 2
