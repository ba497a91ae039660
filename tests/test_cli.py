"""The demo command: JSON contract, published vs private directories, continuation."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dvsecure.cli import main
from dvsecure.demo.consortium import default_policy
from dvsecure.engine.ledger import Ledger
from dvsecure.log.signers import public_key_b64
from dvsecure.log.writer import key_file_name, operator_signer
from dvsecure.policy import ConsortiumPolicy, SignerPolicy

REQUIRED_SOURCE_KEYS = {"id", "gamma_min", "gamma_max", "gamma_used_min", "gamma_used_max", "budget_rho",
                        "spent_rho", "epsilon", "delta", "status"}


def run_json(capsys, *args) -> dict:
    assert main(["demo", "--backend", "plaintext", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_demo_json_contract(tmp_path, capsys):
    out = tmp_path / "pub"
    data = run_json(capsys, "--out", str(out), "--queries", "90", "--seed", "3")
    assert data["backend"] == "plaintext"
    assert data["noise_mode"] == "private" and data["private"] is True
    assert data["answered"] + data["refused"] == 60 == len(data["labels"])  # first third calibrates
    assert sum(label is not None for label in data["labels"]) == data["answered"]
    assert all(label is None or 0 <= label < 10 for label in data["labels"])
    assert len(data["sources"]) == 5
    for s in data["sources"]:
        assert REQUIRED_SOURCE_KEYS <= set(s)
        assert s["spent_rho"] <= s["budget_rho"]
        if s["gamma_used_min"] is not None:
            assert s["gamma_min"] <= s["gamma_used_min"] <= s["gamma_used_max"] <= s["gamma_max"]
        assert s["status"] in ("active", "exhausted")
    # the JSON's spends are the ledger's
    with Ledger(Path(str(out) + ".state") / "ledger.sqlite", ConsortiumPolicy.load(out / "policy.toml")) as ledger:
        spent = ledger.spent()
    assert {s["id"]: s["spent_rho"] for s in data["sources"]} == {k: float(v) for k, v in spent.items()}


def test_published_directory_holds_no_private_state(tmp_path, capsys):
    out, state = tmp_path / "pub", tmp_path / "secret"
    run_json(capsys, "--out", str(out), "--state", str(state), "--queries", "30")
    published = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # Only the log: the policy, the entries, signed checkpoints and public keys.
    assert published[:2] == ["checkpoints/000000000002.note", "checkpoints/000000000003.note"]
    assert [p for p in published if not p.startswith("checkpoints/")] == [
        "entries.jsonl", "keys/" + key_file_name(operator_signer(state, default_policy()).verifier_key_string),
        "policy.toml"]
    # The policy names that key as the one operator signer (its [signers] table).
    named = ConsortiumPolicy.load(out / "policy.toml").signers
    assert named.operator == public_key_b64(operator_signer(state, default_policy()).verifier_key_string)
    assert named.parties == () and named.enclave_pcr0 is None
    assert (state / "ledger.sqlite").exists() and (state / "operator.key").exists()
    assert oct((state / "operator.key").stat().st_mode & 0o777) == "0o600"
    # PRIVATE+KEY+<name>+<key id>+<base64>: the base64 may itself contain '+'.
    secret_b64 = (state / "operator.key").read_text().strip().split("+", 4)[4]
    seed = base64.b64decode(secret_b64)[1:]
    assert len(seed) == 32
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert secret_b64.encode() not in data and seed not in data
            assert base64.b64encode(seed)[:40] not in data
            assert not p.name.endswith((".sqlite", ".key"))


def test_second_run_continues_from_state(tmp_path, capsys):
    out = tmp_path / "pub"
    # Seeded noise: with private noise the first run may, by chance, exhaust every source.
    first = run_json(capsys, "--out", str(out), "--queries", "60", "--noise-seed", "4")
    second = run_json(capsys, "--out", str(out), "--queries", "60", "--noise-seed", "4")
    for a, b in zip(first["sources"], second["sources"]):
        assert b["spent_rho"] >= a["spent_rho"]
        assert b["spent_rho"] <= b["budget_rho"]
        if a["status"] == "exhausted":
            assert b["spent_rho"] == a["spent_rho"]          # excluded sources stay excluded
    assert any(a["status"] != "exhausted" for a in first["sources"])
    assert sum(b["spent_rho"] for b in second["sources"]) > sum(a["spent_rho"] for a in first["sources"])
    with Ledger(Path(str(out) + ".state") / "ledger.sqlite", ConsortiumPolicy.load(out / "policy.toml")) as ledger:
        kinds = [type(r).__name__.lower() for r in ledger.records()]
        ledger.verify()
    assert kinds[:2] == ["genesis", "signers"]      # one log, one signer set across runs
    assert kinds.count("calibration") == 1          # calibrated once, reused afterwards
    assert (first["calibration_queries"], second["calibration_queries"]) == (20, 0)
    assert kinds.count("query") == 40 + 60          # the second run answers all of its queries
    assert len(second["labels"]) == 60
    assert data_audits_clean(second)


def data_audits_clean(data) -> bool:
    return data["audit"]["ok"] and not data["audit"]["findings"]


def test_no_noise_is_marked_non_private(tmp_path, capsys):
    data = run_json(capsys, "--out", str(tmp_path / "o"), "--no-noise", "--queries", "30")
    assert data["noise_mode"] == "no_noise" and data["private"] is False
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "o2"), "--no-noise", "--queries", "30"]) == 0
    assert "NOT PRIVATE" in capsys.readouterr().out


def test_policy_file_and_mismatched_state(tmp_path, capsys):
    pol = tmp_path / "p.toml"
    pol.write_text(default_policy(3).to_toml())
    data = run_json(capsys, "--out", str(tmp_path / "o"), "--policy", str(pol), "--queries", "30")
    assert [s["id"] for s in data["sources"]] == ["inst-1", "inst-2", "inst-3"]
    # --sources sizes the embedded consortium only: with --policy it is an error, not silently ignored
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "x"), "--policy", str(pol),
                 "--sources", "2"]) == 2
    assert "--sources applies to the embedded consortium" in capsys.readouterr().err
    # the same state with a different policy is refused, not silently mixed
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "o"), "--queries", "30"]) == 2
    assert "another policy" in capsys.readouterr().err


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mechanism]\nkind = 'gnmax'\nsigma2 = -1\n[[sources]]\nid='a'\ngamma_min=0.1\n"
                   "gamma_max=0.2\nbudget={rho=1}\n")
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "o"), "--policy", str(bad)]) == 2
    assert "sigma2 must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--backend", "plaintext", "--queries", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dvsecure.cli", "demo", "--backend", "plaintext", "--out", str(tmp_path / "o"),
                           "--queries", "30"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "inst-1" in proc.stdout and "spent rho" in proc.stdout


def test_a_party_refuses_a_policy_that_does_not_name_its_key(tmp_path, capsys):
    """Before joining any rendezvous: a party cosigns only under a policy naming it."""
    assert main(["party", "--show-key", "--rank", "1", "--state", str(tmp_path / "p1")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rank"] == 1 and len(base64.b64decode(shown["cosign_key"])) == 32
    assert (tmp_path / "p1" / "party-1.key").stat().st_mode & 0o777 == 0o600
    others = [base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 4)]
    policy = default_policy(2).with_signers(SignerPolicy(operator=others[0], parties=tuple(others[1:])))
    (tmp_path / "p.toml").write_text(policy.to_toml())
    roster = {"parties": [{"address": f"127.0.0.1:{9 + i}", "key": k} for i, k in enumerate(others[1:])],
              "dealer": {"address": "127.0.0.1:11", "key": base64.b64encode(b"d" * 32).decode()}}
    (tmp_path / "roster.json").write_text(json.dumps(roster))
    code = main(["party", "--rank", "1", "--roster", str(tmp_path / "roster.json"),
                 "--state", str(tmp_path / "p1"), "--policy", str(tmp_path / "p.toml")])
    err = capsys.readouterr().err
    assert code == 2 and shown["cosign_key"] in err and "does not name this party's cosigning key" in err
