"""A service's supervisor stops on SIGTERM even when its child does not: the child
gets STOP_GRACE seconds, then SIGKILL, and the supervisor exits 0 ("stopped")."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
           "time.sleep(600)"
SUPERVISOR = ("import sys; from dvsecure.roles import serve; serve.STOP_GRACE = 1.0; "
              "sys.exit(serve.supervise('stubborn', [sys.executable, '-c', sys.argv[1]], 1.0))")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:          # a zombie not yet reaped is not alive
        return f.read().split(") ")[1][0] != "Z"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_and_the_supervisor_exits_0():
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, STUBBORN], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        started = json.loads(proc.stderr.readline())
        assert started["event"] == "started"
        child = started["pid"]
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        waited = time.monotonic() - t
        err = proc.stderr.read()
        assert '"stopped"' in err
        assert waited >= 1.0                        # it gave the child its grace first
        assert not _alive(child)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
