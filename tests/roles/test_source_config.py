"""`dvsecure source ...` refuses a bad configuration before anything is sent
(issue 14): exit 2, an error naming the file and what is wrong, and nothing
sealed in the source's state. No party runs here: an endpoint that points
nowhere shows that nothing was even tried."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvsecure.cli import main
from dvsecure.log.note import Signer, generate_signer
from dvsecure.log.writer import name_signers
from dvsecure.mpc.party import load_or_create_keys
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from dvsecure.roles.published import OpenQueries, endpoint_json, write_open

POLICY = ConsortiumPolicy(sources=(SourcePolicy("alpha", 0.25, 0.25, Budget("rho", 50.0)),
                                   SourcePolicy("beta", 0.25, 0.25, Budget("rho", 50.0))),
                          mechanism=MechanismPolicy("gnmax", 1.0), name="roles-config")


class _Parties:
    """What name_signers asks of a backend: the parties' cosigning keys."""

    def __init__(self, root: Path, n: int):
        self.signers = [load_or_create_keys(root / f"party-{r}", r)[1] for r in range(n)]

    def signer_keys(self):
        import base64

        return [base64.b64encode(s.public_key).decode() for s in self.signers]

    def dealer_key(self):
        return None


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def setup(tmp_path, capsys):
    return make_setup(tmp_path, capsys)


def make_setup(tmp_path, capsys):
    """Two parties' signed endpoints (pointing nowhere), a policy naming their keys,
    alpha's key, an open round and a vote file: (directory, policy)."""
    parties = _Parties(tmp_path / "parties", 2)
    policy = name_signers(POLICY, tmp_path / "operator", parties)
    (tmp_path / "consortium.toml").write_text(policy.to_toml())
    assert run(capsys, "keys", "new", "--role", "source", "--id", "alpha", "--out", tmp_path / "alpha")[0] == 0
    for rank, signer in enumerate(parties.signers):
        # Nothing listens there: a source that tried to connect would fail differently.
        (tmp_path / f"endpoint-{rank}.json").write_bytes(
            endpoint_json(signer, rank, "127.0.0.1:9", "-----BEGIN CERTIFICATE-----\n", bytes(32)))
    (tmp_path / "pub").mkdir()
    write_open(tmp_path / "pub", OpenQueries(1, ("q0",), 3, 0.0, policy.digest()))
    (tmp_path / "votes.jsonl").write_text(json.dumps({"query_id": "q0", "vote": 1}) + "\n")
    return tmp_path, policy


def write_config(tmp_path, **over):
    cfg = {"id": "alpha", "key": "alpha", "policy": "consortium.toml",
           "parties": ["endpoint-0.json", "endpoint-1.json"], "coordinator": "pub", "state": "alpha-state"} | over
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items() if v is not None)
    path = tmp_path / "source.toml"
    path.write_text(text)
    return path


def refused(capsys, tmp_path, cfg, *extra):
    code, out, err = run(capsys, "source", "submit", "--config", cfg, "--votes", tmp_path / "votes.jsonl", *extra)
    assert code == 2, out + err
    assert not (tmp_path / "alpha-state" / "sealed.jsonl").exists()
    return err


def test_missing_and_unknown_keys_name_the_file_and_the_key(setup, capsys):
    tmp_path, _ = setup
    err = refused(capsys, tmp_path, write_config(tmp_path, coordinator=None))
    assert "source.toml" in err and "'coordinator'" in err
    err = refused(capsys, tmp_path, write_config(tmp_path, partys=["endpoint-0.json"]))
    assert "source.toml" in err and "unknown key 'partys'" in err
    err = refused(capsys, tmp_path, write_config(tmp_path, poll="soon"))
    assert "'poll' must be a number" in err


def test_a_wrong_digest_a_foreign_id_and_a_foreign_key_are_refused(setup, capsys):
    tmp_path, policy = setup
    err = refused(capsys, tmp_path, write_config(tmp_path, expect_digest="ab" * 32))
    assert f"its digest is {policy.digest()}" in err and "not the policy that was agreed" in err
    err = refused(capsys, tmp_path, write_config(tmp_path, id="gamma"))
    assert "no source 'gamma'" in err
    err = refused(capsys, tmp_path, write_config(tmp_path, id="beta"))
    assert "is source 'alpha''s, not 'beta''s" in err
    # The digest pinned right: this config only fails later, at the unreachable party (still exit 2).
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path, expect_digest=policy.digest()),
                         "--votes", tmp_path / "votes.jsonl")
    assert code == 2 and "party at 127.0.0.1:9" in err, out + err


def test_an_endpoint_not_signed_by_the_policys_key_is_refused_before_sending(setup, capsys):
    tmp_path, _ = setup
    stranger = Signer.from_key_string(generate_signer("dvsecure-mpc-party-1")[0])
    (tmp_path / "endpoint-1.json").write_bytes(endpoint_json(stranger, 1, "127.0.0.1:9", "x", bytes(32)))
    err = refused(capsys, tmp_path, write_config(tmp_path))
    assert "parties[1]" in err and "endpoint-1.json: not signed by party 1's key in the policy" in err
    # Party 0's endpoint given as party 1's, and one endpoint too few.
    err = refused(capsys, tmp_path, write_config(tmp_path, parties=["endpoint-0.json", "endpoint-0.json"]))
    assert "party 0's endpoint, not party 1's" in err
    err = refused(capsys, tmp_path, write_config(tmp_path, parties=["endpoint-0.json"]))
    assert "policy names 2 computing parties" in err


def test_flags_override_the_config_and_an_unreadable_vote_file_stops_everything(setup, capsys):
    tmp_path, _ = setup
    cfg = write_config(tmp_path, id="gamma")
    code, out, err = run(capsys, "source", "submit", "--config", cfg, "--id", "alpha",
                         "--votes", tmp_path / "missing.csv")
    assert code == 2 and "cannot read vote file" in err and "missing.csv" in err
    code, out, err = run(capsys, "source", "submit", "--votes", tmp_path / "votes.jsonl")
    assert code == 2 and "missing --id" in err
