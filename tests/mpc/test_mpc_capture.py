"""What an eavesdropper on the wire between MPC members gets (issue 11).

A batch (3 sources x 10 queries x 4 classes, private noise) runs in network
namespaces while a raw socket records every frame; `eavesdropper.py` then does
what anyone on the wire could: parse gloo, take the dealer's seeds, replay the
dealer and unmask every opening (Beaver products, the one-time tables of the
index votes).

- Plain gloo (kept only for comparison, on one machine): the attack rebuilds
  every vote, 30/30 (120/120 entries) — so the attack, and this test, are real.
- Protected links, on one host's loopback and across four hosts (coordinator
  with party 0, party 1, party 2, dealer; each its own namespace and address):
  the attack finds nothing, and no seed, link key, plaintext frame or share any
  member held (written down by `secrets_hook/`) appears in the captured bytes,
  whole or as any aligned 8-byte piece.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import capture_run  # noqa: E402
from eavesdropper import reconstruct  # noqa: E402
from netcapture import Capture, Hosts, can_make_namespaces, tcp_streams  # noqa: E402

pytestmark = pytest.mark.slow
WHY_NOT = can_make_namespaces()
needs_namespaces = pytest.mark.skipif(WHY_NOT is not None, reason=f"cannot make network namespaces: {WHY_NOT}")
ENTRIES = capture_run.SOURCES * capture_run.QUERIES * capture_run.CLASSES


def member_env(secrets: Path) -> dict:
    env = dict(os.environ, DVSECURE_TEST_SECRETS=str(secrets))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "secrets_hook"), env.get("PYTHONPATH")]))
    return env


def one_hot(votes) -> np.ndarray:
    """The vote bits as the parties hold them: source-major [S, Q, C]."""
    v = np.asarray(votes).T
    return (v[..., None] == np.arange(capture_run.CLASSES)).astype(np.int64).reshape(-1)


def recorded_secrets(secrets: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for f in secrets.glob("secrets-*.txt"):
        for line in f.read_text().splitlines():
            kind, value = line.split()
            found.setdefault(kind, []).append(bytes.fromhex(value))
    return found


def assert_nothing_secret_on_the_wire(streams: dict, secrets: Path, votes) -> None:
    wire = b"\x00".join(streams.values())
    findings = reconstruct(streams, world=3)
    assert findings.gloo_streams == 0 and not findings.requests and findings.seeds is None
    assert not findings.opened(ENTRIES) and not findings.indices
    got = recorded_secrets(secrets)
    # Every member wrote down its seeds, link keys, frames and (parties) shares.
    assert len(got.get("seed", [])) >= 4 and len(got.get("key", [])) >= 3 * 12
    assert len(got.get("plain", [])) > 10 and len(got.get("shares", [])) == 3
    for kind in ("seed", "key", "plain"):
        for value in got[kind]:
            pieces = [value] + [value[i:i + 8] for i in range(0, len(value), 8)]
            assert not any(p in wire for p in pieces), f"a {kind} ({value.hex()}) crossed the wire in the clear"
    for shares in got["shares"]:
        words = {shares[i:i + 8] for i in range(0, len(shares), 8)} - {bytes(8)}
        assert words and not any(w in wire for w in words), "a vote share crossed the wire in the clear"
    # The vote bits themselves (as 64-bit words, as the parties hold them) never appear either.
    assert one_hot(votes).tobytes() not in wire


def run_batch_in(ns_cmd, tmp_path: Path, transport: str, extra=(), env=None) -> dict:
    out = tmp_path / "released.json"
    cmd = ns_cmd([sys.executable, str(TESTS / "capture_run.py"), str(out), str(tmp_path / "coordinator"),
                  "--transport", transport, *extra])
    subprocess.run(cmd, check=True, timeout=600, env=env)
    return json.loads(out.read_text())


@pytest.fixture
def loopback_host():
    """One namespace (its own loopback, nothing else on it) for a whole local run."""
    with Hosts(["solo"]) as hosts:
        yield hosts


@needs_namespaces
def test_plain_gloo_lets_an_eavesdropper_rebuild_every_vote(loopback_host, tmp_path):
    cap = Capture(tmp_path / "frames.bin", ns=loopback_host.namespace("solo"))
    try:
        released = run_batch_in(lambda c: loopback_host.command("solo", c), tmp_path, "gloo", ["--no-noise"])
    finally:
        stats = cap.stop()
    assert stats["dropped"] == 0
    streams = tcp_streams(cap.frames())
    # Plain gloo is bound to loopback, even on a host that has another address.
    assert loopback_host.addresses["solo"] != "127.0.0.1"
    assert streams and all(src == dst == "127.0.0.1" for src, _, dst, _ in streams)
    labels = [lab if answered else None for answered, lab in released["released"]]
    findings = reconstruct(streams, world=3, labels=labels)
    assert findings.seeds is not None and findings.requests
    # Every vote's class index, from the dealer's tables and the opened masks: 30/30 votes,
    # all 120 vote entries.
    truth = np.asarray(released["votes"]).T
    assert any(np.array_equal(k, truth) for k in findings.indices), "the eavesdropper did not rebuild the votes"
    # Of the orders of the mask's segments (6! here), the released labels leave few (usually one).
    assert len(findings.indices) < 720
    assert one_hot(released["votes"]).size == ENTRIES == 120


@needs_namespaces
def test_protected_links_on_loopback_leave_nothing_to_rebuild(loopback_host, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cap = Capture(tmp_path / "frames.bin", ns=loopback_host.namespace("solo"))
    try:
        released = run_batch_in(lambda c: loopback_host.command("solo", c), tmp_path, "links",
                                env=member_env(secrets))
    finally:
        stats = cap.stop()
    assert stats["dropped"] == 0 and stats["frames"] > 100
    assert len(released["released"]) == capture_run.QUERIES
    assert_nothing_secret_on_the_wire(tcp_streams(cap.frames()), secrets, released["votes"])


def _show_key(*args) -> str:
    out = subprocess.run([sys.executable, "-m", "dvsecure.cli", "party", "--show-key", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    info = json.loads(out)
    return info.get("cosign_key") or info["key"]


@needs_namespaces
def test_protected_links_across_hosts_leave_nothing_to_rebuild(tmp_path):
    """Coordinator and party 0 on one host, parties 1 and 2 and the dealer on
    three others; the capture sits on the bridge between all four."""
    from dvsecure.log.signers import public_key_b64
    from dvsecure.log.writer import operator_signer
    from dvsecure.policy import SignerPolicy

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    names = ["p0", "p1", "p2", "dealer"]
    with Hosts(names) as hosts:
        states = [tmp_path / "coordinator" / "local" / "party-0", tmp_path / "p1", tmp_path / "p2"]
        keys = [_show_key("--rank", str(r), "--state", str(states[r])) for r in range(3)]
        dealer = _show_key("--dealer", "--state", str(tmp_path / "dealer"))
        roster = {"parties": [{"address": f"{hosts.addresses[n]}:7100", "key": k} for n, k in zip(names, keys)],
                  "dealer": {"address": f"{hosts.addresses['dealer']}:7100", "key": dealer}}
        assert all(base64.b64decode(k) for k in keys)
        (tmp_path / "roster.json").write_text(json.dumps(roster))
        operator = operator_signer(tmp_path, capture_run.POLICY)
        policy = capture_run.POLICY.with_signers(SignerPolicy(
            operator=public_key_b64(operator.verifier_key_string), parties=tuple(keys), dealer=dealer))
        (tmp_path / "policy.toml").write_text(policy.to_toml())
        party = [sys.executable, "-m", "dvsecure.cli", "party", "--roster", str(tmp_path / "roster.json")]
        env = member_env(secrets)
        cap = Capture(tmp_path / "frames.bin", ns=hosts.namespace("hub"))
        procs = [subprocess.Popen(hosts.command(f"p{r}", party + ["--rank", str(r), "--state", str(states[r]),
                                                                  "--policy", str(tmp_path / "policy.toml")]),
                                  env=env) for r in (1, 2)]
        procs.append(subprocess.Popen(hosts.command("dealer", party + ["--dealer", "--state",
                                                                       str(tmp_path / "dealer")]), env=env))
        try:
            released = run_batch_in(lambda c: hosts.command("p0", c), tmp_path, "links",
                                    ["--roster", str(tmp_path / "roster.json"),
                                     "--policy", str(tmp_path / "policy.toml")], env=env)
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            stats = cap.stop()
    assert codes == [0, 0, 0]
    assert stats["dropped"] == 0
    assert len(released["released"]) == capture_run.QUERIES
    streams = tcp_streams(cap.frames())
    # The traffic really crossed hosts: streams between each pair of members' addresses.
    pairs = {frozenset((src, dst)) for src, _, dst, _ in streams}
    assert len(pairs) == 6
    assert_nothing_secret_on_the_wire(streams, secrets, released["votes"])
