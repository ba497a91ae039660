"""Parties on other machines: `dvsecure party` processes (ranks 1..N-1 and the
TTP dealer) link to each other by a roster of loopback ports and pinned keys;
the coordinator runs only party 0. The released labels are the plaintext backend's, every party cosigns,
and each remote party enforces the policy it was started with."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from dvsecure.audit.check import audit
from dvsecure.backends.mpc import MPCBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.log.signers import public_key_b64
from dvsecure.log.writer import LogWriter, operator_signer
from dvsecure.mpc.parties import PartyError
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SignerPolicy, SourcePolicy

pytestmark = pytest.mark.slow

POLICY = ConsortiumPolicy(sources=tuple(SourcePolicy(f"src{i}", 0.25, 0.25, Budget("rho", 50.0))
                                        for i in range(3)),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="remote")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _show(tmp_path, *args) -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "dvsecure.cli", "party", "--show-key", *args],
                                     capture_output=True, text=True, check=True, timeout=60).stdout)


def signed_policy(tmp_path) -> ConsortiumPolicy:
    """POLICY naming its signers: the operator's key and each party's, as every party
    publishes it (`dvsecure party --show-key`; rank 0 is the coordinator's own), and
    the dealer's link key; the roster (tmp_path/roster.json) pins the same keys."""
    keys = [_show(tmp_path, "--rank", str(r), "--state", str(tmp_path / (f"remote-{r}" if r else "local/party-0")))
            ["cosign_key"] for r in range(3)]
    dealer = _show(tmp_path, "--dealer", "--state", str(tmp_path / "dealer"))["key"]
    roster = {"parties": [{"address": f"127.0.0.1:{free_port()}", "key": k} for k in keys],
              "dealer": {"address": f"127.0.0.1:{free_port()}", "key": dealer}}
    (tmp_path / "roster.json").write_text(json.dumps(roster))
    operator = operator_signer(tmp_path, POLICY)
    return POLICY.with_signers(SignerPolicy(operator=public_key_b64(operator.verifier_key_string),
                                            parties=tuple(keys), dealer=dealer))


def start_remote(tmp_path, *extra: str) -> list[subprocess.Popen]:
    (tmp_path / "policy.toml").write_text(signed_policy(tmp_path).to_toml())
    cmd = [sys.executable, "-m", "dvsecure.cli", "party", "--roster", str(tmp_path / "roster.json")]
    procs = [subprocess.Popen(cmd + ["--rank", str(r), "--state", str(tmp_path / f"remote-{r}"),
                                     "--policy", str(tmp_path / "policy.toml"), *extra])
             for r in (1, 2)]
    procs.append(subprocess.Popen(cmd + ["--dealer", "--state", str(tmp_path / "dealer")]))
    return procs


def stop(procs) -> list[int | None]:
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=60))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def test_remote_parties_release_and_cosign(tmp_path):
    procs = start_remote(tmp_path, "--allow-nonprivate")
    backend = MPCBackend(num_parties=3, timeout=120, roster=str(tmp_path / "roster.json"), spawn_ranks=[0],
                         state_dir=str(tmp_path / "local"))
    try:
        with Ledger(tmp_path / "ledger.sqlite", ConsortiumPolicy.load(tmp_path / "policy.toml")) as ledger:
            log = LogWriter(tmp_path / "log", ledger,
                            [operator_signer(tmp_path, ledger.policy), *backend.cosigners(ledger)])
            agg = Aggregator(ledger.policy, ledger, backend=backend, noise=make_noise("no_noise"), log=log)
            votes = [{"src0": c % 4, "src1": c % 4, "src2": (c + 1) % 4} for c in range(12)]
            results = agg.query_batch([(f"r{i}", v) for i, v in enumerate(votes)], 4)
            assert [r.label for r in results] == [c % 4 for c in range(12)]
    finally:
        backend.close()
    assert stop(procs) == [0, 0, 0]        # the stop command reaches every remote process
    assert audit(tmp_path / "log", allow_nonprivate=True).ok
    assert (tmp_path / "remote-1" / "party-1.key").stat().st_mode & 0o777 == 0o600


def test_a_remote_party_refuses_non_private_noise_unless_allowed(tmp_path):
    procs = start_remote(tmp_path)
    backend = MPCBackend(num_parties=3, timeout=120, roster=str(tmp_path / "roster.json"), spawn_ranks=[0],
                         state_dir=str(tmp_path / "local"))
    try:
        with Ledger(tmp_path / "ledger.sqlite", ConsortiumPolicy.load(tmp_path / "policy.toml")) as ledger:
            agg = Aggregator(ledger.policy, ledger, backend=backend, noise=make_noise("no_noise"))
            with pytest.raises(PartyError, match="party 1: noise mode 'no_noise' refused"):
                agg.query("q", {"src0": 1, "src1": 1, "src2": 0}, 2)
            assert ledger.next_seq() == 1          # nothing recorded: only the genesis entry
            # Private noise is accepted by the same parties, which stayed ready.
            agg = Aggregator(ledger.policy, ledger, backend=backend, noise=make_noise("private"))
            assert agg.query("q", {"src0": 1, "src1": 1, "src2": 0}, 2).answered
    finally:
        backend.close()
    assert stop(procs) == [0, 0, 0]


def test_remote_parties_take_the_sources_shares_over_grpc(tmp_path):
    """The whole networked deployment as separate processes: parties 1 and 2 and the
    dealer via `dvsecure party --listen`, party 0 with the coordinator; every
    source sends each party its own share over gRPC with TLS."""
    from nacl.signing import SigningKey

    from dvsecure.backends import FROM_SOURCES
    from dvsecure.errors import PartyRefusal
    from dvsecure.mpc.client import PartySubmitter
    from dvsecure.tee.protocol import Principals

    keys = {sid: SigningKey.generate() for sid in POLICY.ids}
    principals = tmp_path / "principals.json"
    principals.write_text(Principals(sources={s: k.verify_key for s, k in keys.items()}, coordinators={}).to_json())
    # Parties 1 and 2 hold at most 4000 bytes of pending shares per source (a share here costs ~330).
    procs = start_remote(tmp_path, "--listen", "127.0.0.1:0", "--principals", str(principals),
                         "--inbox-source-bytes", "4000", "--inbox-ttl", "300")
    backend = MPCBackend(num_parties=3, timeout=120, roster=str(tmp_path / "roster.json"), spawn_ranks=[0], principals=principals,
                         state_dir=str(tmp_path / "local"))
    try:
        with Ledger(tmp_path / "ledger.sqlite", ConsortiumPolicy.load(tmp_path / "policy.toml")) as ledger:
            log = LogWriter(tmp_path / "log", ledger, [operator_signer(tmp_path, ledger.policy), *backend.cosigners(ledger)])
            agg = Aggregator(ledger.policy, ledger, backend=backend, noise=make_noise("private"), log=log)
            endpoints = backend.endpoints()
            assert endpoints[1]["tls"] == (tmp_path / "remote-1" / "tls.pem").read_bytes()   # published by party 1
            qids = [f"g{i}" for i in range(4)]
            for sid, key in keys.items():
                with PartySubmitter(sid, key, endpoints) as submitter:
                    submitter.submit(qids, [i % 4 for i in range(4)], 4)
            results = agg.query_batch([(q, FROM_SOURCES) for q in qids], 4)
            assert all(p.status == "active" for r in results for p in r.participants)
            assert all(r.answered for r in results)            # GNMax answers every query
            # The quota flag reaches the remote parties: src0 sending shares for queries nobody
            # opens is stopped at its quota (party 0, with the default, still takes them) ...
            with PartySubmitter("src0", keys["src0"], endpoints) as flooder:
                flooder.submit([f"never-{i}" for i in range(5)], [0] * 5, 4)
                flooder.submit([f"never-{i}" for i in range(5, 10)], [0] * 5, 4)
                with pytest.raises(PartyRefusal, match="party at .*: source 'src0': .* would pass its quota of "
                                                       "4000 bytes") as refusal:
                    flooder.submit([f"never-{i}" for i in range(10, 15)], [0] * 5, 4)
                assert refusal.value.code == "RESOURCE_EXHAUSTED"
            # ... and every source, src0 included, is still served within its own quota.
            for sid, key in keys.items():
                with PartySubmitter(sid, key, endpoints) as submitter:
                    submitter.submit(["after-flood"], [2], 4)
            (result,) = agg.query_batch([("after-flood", FROM_SOURCES)], 4)
            assert all(p.status == "active" for p in result.participants)      # private noise: any label
    finally:
        backend.close()
    assert stop(procs) == [0, 0, 0]
    assert audit(tmp_path / "log").ok
