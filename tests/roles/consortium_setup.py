"""A whole MPC consortium made the way its members make it, with the commands of
docs/: every role's keys on its own state directory (`keys new`), the policy and
principals (`consortium ...`), a roster, and a TOML config per role. Used by the
role tests on loopback (the namespace walk-through does the same in bash:
examples/consortium/run.sh)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dvsecure.cli import main

SOURCES = ("hospital-a", "hospital-b", "clinic-c")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    """Stop a service started in its own process group (by pid), killing it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*argv) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, (argv, code)


def _pub(path: Path) -> dict:
    return json.loads(path.read_text())


@dataclass
class Consortium:
    root: Path
    policy: Path
    principals: Path
    roster: Path
    party_configs: list
    dealer_config: Path
    coordinator_config: Path
    sources: dict          # id -> key dir
    out: Path
    results: Path


def make_consortium(root: Path, parties: int = 3, noise: str = "no_noise", deadline: float = 20.0,
                    batch: int = 10, band: str = "0.2..0.6", budget: str = "rho=100") -> Consortium:
    root = Path(root)
    op_state = root / "operator" / "state"
    _cli("keys", "new", "--role", "operator", "--id", "op", "--out", op_state)
    party_dirs = [op_state / "parties" / "party-0"] + [root / f"party-{r}" / "state" for r in range(1, parties)]
    for r, d in enumerate(party_dirs):
        _cli("keys", "new", "--role", "party", "--id", f"p{r}", "--rank", r, "--out", d)
    dealer_dir = root / "dealer" / "state"
    _cli("keys", "new", "--role", "dealer", "--id", "dealer", "--out", dealer_dir)
    sources = {}
    for sid in SOURCES:
        sources[sid] = root / sid / "state"
        _cli("keys", "new", "--role", "source", "--id", sid, "--out", sources[sid])
    policy = root / "consortium.toml"
    # Noise scales (weight units) and budgets roomy enough that every query of a test can be
    # answered: the point here is the deployment, not the budget filter.
    _cli("consortium", "init", "--name", "walkthrough", "--operator-key", op_state / "operator.pub.json",
         "--sigma1", 1.0, "--threshold", 0.5, "--sigma2", 0.5, "--out", policy)
    for sid in SOURCES:
        _cli("consortium", "add-source", "--policy", policy, "--id", sid, "--band", band, "--budget", budget,
             "--key", sources[sid] / "source.pub.json")
    for r, d in enumerate(party_dirs):
        _cli("consortium", "add-party", "--policy", policy, "--rank", r, "--key", d / f"party-{r}.pub.json")
    _cli("consortium", "add-party", "--policy", policy, "--dealer", "--key", dealer_dir / "dealer.pub.json")
    principals = root / "consortium.principals.json"

    links = [free_port() for _ in range(parties + 1)]
    roster = root / "roster.json"
    roster.write_text(json.dumps({
        "parties": [{"address": f"127.0.0.1:{links[r]}", "key": _pub(d / f"party-{r}.pub.json")["key"]}
                    for r, d in enumerate(party_dirs)],
        "dealer": {"address": f"127.0.0.1:{links[-1]}", "key": _pub(dealer_dir / "dealer.pub.json")["key"]}}))
    party_configs = []
    for r in range(1, parties):
        cfg = root / f"party-{r}" / "party.toml"
        cfg.write_text(f'rank = {r}\nroster = "{roster}"\nstate = "state"\npolicy = "{policy}"\n'
                       f'principals = "{principals}"\nlisten = "127.0.0.1:{free_port()}"\n'
                       f'allow_nonprivate = {"true" if noise != "private" else "false"}\nrestart_delay = 0.5\n')
        party_configs.append(cfg)
    dealer_config = root / "dealer" / "dealer.toml"
    dealer_config.write_text(f'roster = "{roster}"\nstate = "state"\nrestart_delay = 0.5\n')
    out = root / "operator" / "published"
    results = root / "operator" / "results.jsonl"
    coordinator_config = root / "operator" / "coordinator.toml"
    coordinator_config.write_text(
        f'policy = "{policy}"\nroster = "{roster}"\nprincipals = "{principals}"\nstate = "state"\n'
        f'out = "published"\nresults = "results.jsonl"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'batch = {batch}\ndeadline = {deadline}\nnoise = "{noise}"\ntimeout = 120\nrejoin = 120\n')
    return Consortium(root, policy, principals, roster, party_configs, dealer_config, coordinator_config, sources,
                      out, results)


def endpoint_files(c: Consortium) -> list[Path]:
    """Where each party publishes its signed endpoint (party 0: beside the coordinator)."""
    return [c.root / "operator" / "state" / "parties" / "party-0" / "endpoint.json"] + \
        [cfg.parent / "state" / "endpoint.json" for cfg in c.party_configs]
