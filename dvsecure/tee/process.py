"""Running the enclave application (`python -m enclave.app`) as a child process.

For the demo, the benchmark and the tests: it starts the application from the
source checkout, waits until it has written its port file (or died), and stops
it — SIGTERM, then SIGKILL if it does not exit. `kill()` is the crash of a test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnclaveError
from .protocol import REPO_ROOT


@dataclass
class EnclaveProcess:
    proc: subprocess.Popen
    port: int
    tls_cert: Path
    ready: dict
    stderr_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_enclave(*, policy: Path, principals: Path, state: Path, out: Path, tls_dir: Path, sim_ca: Path | None,
                  run_dir: Path, attestation: str = "sim", extra: tuple[str, ...] = (),
                  timeout: float = 60) -> EnclaveProcess:
    """Start the enclave on a free loopback port; `run_dir` receives its port file and stderr."""
    # The enclave runs from the repository root: every path it gets is made absolute here.
    policy, principals, state, out, tls_dir, run_dir = (Path(p).resolve() for p in
                                                        (policy, principals, state, out, tls_dir, run_dir))
    sim_ca = Path(sim_ca).resolve() if sim_ca is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file, stderr_path = run_dir / "enclave.port.json", run_dir / "enclave.stderr"
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "enclave.app", "--policy", str(policy), "--principals", str(principals),
           "--state", str(state), "--out", str(out), "--tls-dir", str(tls_dir), "--listen", "127.0.0.1:0",
           "--port-file", str(port_file), "--attestation", attestation, *extra]
    if sim_ca is not None:
        cmd += ["--sim-ca", str(sim_ca)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            raise EnclaveError(f"the enclave exited with status {proc.returncode} before serving: "
                               f"{stderr_path.read_text(errors='replace')[-2000:]}", "UNAVAILABLE")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise EnclaveError(f"the enclave did not start within {timeout} s", "DEADLINE_EXCEEDED")
        time.sleep(0.05)    # polling for readiness, not an assertion
    ready = json.loads(port_file.read_text())
    return EnclaveProcess(proc, int(ready["port"]), Path(ready["tls_cert"]), ready, stderr_path)
