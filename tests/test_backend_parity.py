"""The same consortium gets the same weights, labels and charges on every backend:
with noise switched off (test only), the plaintext and MPC demos — calibration
included, which under MPC runs inside the parties on shares — release identical
labels and per-source spends, and both logs audit clean. (The enclave's side of
this is tests/tee/test_enclave_calibration.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvsecure.audit.check import audit
from dvsecure.backends.mpc import MPCBackend
from dvsecure.demo.run import run_demo
from dvsecure.log import entry
from dvsecure.noise import make_noise

QUERIES = 40


def outcome(report) -> dict:
    d = report.data
    return {"labels": d["labels"], "calibration_queries": d["calibration_queries"],
            "weights": {s["id"]: s["gamma_calibrated"] for s in d["sources"]},
            "spent": {s["id"]: s["spent_rho"] for s in d["sources"]},
            "answered": {s["id"]: s["queries_answered"] for s in d["sources"]}}


def plaintext(tmp: Path, seed: int) -> dict:
    return outcome(run_demo(out=tmp / "plain", state=tmp / "plain.state", num_queries=QUERIES, seed=seed,
                            noise=make_noise("no_noise")))


def calibration_entries(log_dir: Path) -> list:
    lines = (log_dir / "entries.jsonl").read_bytes().splitlines()
    return [e for e in map(entry.decode, lines) if isinstance(e, entry.Calibration)]


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_plaintext_and_mpc_release_the_same_labels_and_spends(tmp_path, seed):
    plain = plaintext(tmp_path, seed)
    backend = MPCBackend(3, state_dir=str(tmp_path / "parties"))
    try:
        report = run_demo(out=tmp_path / "mpc", state=tmp_path / "mpc.state", num_queries=QUERIES, seed=seed,
                          noise=make_noise("no_noise"), backend=backend)
    finally:
        backend.close()
    assert report.data["backend"] == "mpc" and report.data["audit"]["ok"], report.data["audit"]
    mpc = outcome(report)
    assert mpc["calibration_queries"] == QUERIES // 3
    assert mpc == plain
    # Calibration moved the weights off the ceilings, the same way on both.
    assert len(set(mpc["weights"].values())) > 1
    cal_plain, cal_mpc = calibration_entries(tmp_path / "plain"), calibration_entries(tmp_path / "mpc")
    assert len(cal_mpc) == 1 and cal_mpc[0].accuracy == cal_plain[0].accuracy
    assert cal_mpc[0].gamma == cal_plain[0].gamma and cal_mpc[0].spent == cal_plain[0].spent
    assert audit(tmp_path / "mpc", allow_nonprivate=True).ok


def test_the_networked_mpc_demo_calibrates_from_the_sources_shares(tmp_path):
    """`dvsecure demo --backend mpc`: the sources send each party their shares over
    gRPC, for the labelled queries as for the others; the parties calibrate."""
    plain = plaintext(tmp_path, 3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "dvsecure.cli", "demo", "--backend", "mpc", "--no-noise", "--queries",
                          str(QUERIES), "--seed", "3", "--out", str(tmp_path / "net"), "--json"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(run.stdout)
    assert data["votes_sent"].startswith("by each source to each party")
    assert data["audit"]["ok"], data["audit"]
    net = {"labels": data["labels"], "calibration_queries": data["calibration_queries"],
           "weights": {s["id"]: s["gamma_calibrated"] for s in data["sources"]},
           "spent": {s["id"]: s["spent_rho"] for s in data["sources"]},
           "answered": {s["id"]: s["queries_answered"] for s in data["sources"]}}
    assert net == plain
    (cal,) = calibration_entries(tmp_path / "net")
    assert cal.noise == "no_noise" and cal.num_queries == QUERIES // 3


def test_private_calibration_under_mpc_releases_noisy_accuracies_and_charges_them(tmp_path):
    """With private noise the accuracies differ from the exact ones (each party added
    its draw) but the charges are the plaintext ones, and the log audits clean."""
    exact = tmp_path / "exact"
    exact.mkdir()
    run_demo(out=exact / "out", state=exact / "state", num_queries=QUERIES, seed=5, noise=make_noise("no_noise"))
    backend = MPCBackend(3, state_dir=str(tmp_path / "parties"))
    try:
        report = run_demo(out=tmp_path / "mpc", state=tmp_path / "mpc.state", num_queries=QUERIES, seed=5,
                          noise=make_noise("private"), backend=backend)
    finally:
        backend.close()
    assert report.data["audit"]["ok"], report.data["audit"]
    (noisy,), (clean,) = calibration_entries(tmp_path / "mpc"), calibration_entries(exact / "out")
    assert noisy.noise == "private" and noisy.sigma == clean.sigma and noisy.status == clean.status
    assert noisy.accuracy != clean.accuracy
    # sigma is the noise on a mean accuracy in [0, 1]: the noisy one is within 8 sigma.
    for a, b, s in zip(noisy.accuracy, clean.accuracy, noisy.sigma):
        assert abs(a - b) <= 8 * s
