"""The auditor needs only the light install (issue 3): no torch, no CrypTen.

A fresh virtualenv gets `pip install <this project>` — the core dependencies
only, from the package index — and audits a log written by the full install.
It must pass, and torch must not be importable there, so the audit cannot have
leaned on it. (Slow: it installs numpy, scipy, OpenDP... into the new venv.)
"""
from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from dvsecure.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_audit_and_receipt_in_a_venv_without_torch(tmp_path):
    log = tmp_path / "log"
    assert main(["demo", "--backend", "plaintext", "--out", str(log), "--queries", "45", "--noise-seed", "3", "--json"]) == 0
    env_dir = tmp_path / "light"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(ROOT)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    dvsecure = env_dir / "bin" / "dvsecure"
    ok = subprocess.run([str(dvsecure), "audit", str(log), "--allow-nonprivate", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"ok": true' in ok.stdout
    receipt = tmp_path / "receipt"
    exported = subprocess.run([str(dvsecure), "receipt", "export", str(log), "--source", "inst-2",
                               "--out", str(receipt)], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    checked = subprocess.run([str(dvsecure), "audit", str(receipt), "--allow-nonprivate"],
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Without --allow-nonprivate the seeded (non-private) log is a finding: exit 1.
    strict = subprocess.run([str(dvsecure), "audit", str(log)], capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "non-private" in strict.stdout
    # The demo's default (MPC) needs the mpc extra: a clear error, not a dead party.
    bare = subprocess.run([str(dvsecure), "demo", "--out", str(tmp_path / "d")], capture_output=True, text=True,
                          timeout=300)
    assert bare.returncode == 2 and "needs the mpc extra" in bare.stderr, bare.stdout + bare.stderr
    bench = subprocess.run([str(dvsecure), "bench", "--queries", "20"], capture_output=True, text=True, timeout=300)
    assert bench.returncode == 2 and "bench needs the mpc extra" in bench.stderr, bench.stdout + bench.stderr
    loaded = subprocess.run([str(py), "-c", "import sys, dvsecure.audit.check, dvsecure.audit.receipt; "
                             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'crypten')))"],
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
