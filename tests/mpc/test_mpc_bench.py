"""`dvsecure bench --backend mpc` runs end to end and reports consistent figures;
the tally with public weights costs no communication at all."""
from __future__ import annotations

import json

import pytest

from dvsecure.cli import main


@pytest.mark.slow
def test_bench_cli_small(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "mpc", "--queries", "6", "--classes", "3", "--sources", "4",
                 "--parties", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == data
    for key in ("pipeline_s", "rounds", "bytes_per_query_per_party", "baseline_crypten_argmax_s"):
        assert data[key] > 0
    phases = data["phases"]
    assert phases["tally"]["rounds"] == 0 and phases["tally"]["bytes_per_query_per_party"] == 0
    assert data["rounds"] == sum(phases[k]["rounds"] for k in ("validation", "tally", "threshold_argmax_reveal"))
    assert abs(data["pipeline_s"] - sum(phases[k]["seconds"] for k in
                                        ("validation", "tally", "threshold_argmax_reveal"))) < 1e-3
    # The index-carrying tree argmax sends less than CrypTen's own argmax on the same tally.
    assert phases["threshold_argmax_reveal"]["bytes_per_query_per_party"] < \
        phases["baseline_crypten_argmax"]["bytes_per_query_per_party"]


def test_bench_rejects_one_party():
    assert main(["bench", "--parties", "1", "--queries", "2"]) == 2
