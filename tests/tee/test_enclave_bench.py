"""benchmarks/bench_enclave.py runs end to end and reports both paths on the same
queries (a tiny configuration: this checks the harness, not the speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_reports_enclave_and_baseline(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_enclave.py", "--sources", "3", "--classes", "4",
                           "--batch", "5", "--batches", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert report["queries"] == 10 and report["sources"] == 3
    assert set(report["queries_per_second"]) == {"baseline_in_process_aggregator", "enclave_grpc_tls",
                                                 "enclave_release_only"}
    assert all(v > 0 for v in report["queries_per_second"].values())
    assert report["ratio_to_baseline"]["baseline_in_process_aggregator"] == 1.0
