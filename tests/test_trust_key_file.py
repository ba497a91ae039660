"""`dvsecure audit --trust-key` takes the public file `dvsecure keys new` writes
(ROLE.pub.json, its verifier_key) as well as the verifier key itself (issue 14):
the auditor pins what the operator published without copying a string out of it."""
from __future__ import annotations

import json

import pytest

from dvsecure.cli import main


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A log signed by an operator key made with `keys new` (the demo uses the key it
    finds in its state directory), plus a second operator's and a source's public files."""
    root = tmp_path_factory.mktemp("trust")
    state, log = root / "op.state", root / "log"
    assert main(["keys", "new", "--role", "operator", "--id", "op-a", "--out", str(state)]) == 0
    assert main(["keys", "new", "--role", "operator", "--id", "op-b", "--out", str(root / "other")]) == 0
    assert main(["keys", "new", "--role", "source", "--id", "inst-9", "--out", str(root / "src")]) == 0
    assert main(["demo", "--backend", "plaintext", "--out", str(log), "--state", str(state), "--queries", "12",
                 "--noise-seed", "5", "--json"]) == 0
    return root, log


def _audit(capsys, log, *pins: str) -> tuple[int, dict]:
    capsys.readouterr()
    args = ["audit", str(log), "--allow-nonprivate", "--json"]
    for pin in pins:
        args += ["--trust-key", pin]
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def _signer_findings(report: dict) -> list[str]:
    return [f for f in map(str, report["findings"]) if "pinned" in f or "signs nothing" in f]


def test_the_operators_public_file_pins_its_key(signed, capsys):
    root, log = signed
    public = root / "op.state" / "operator.pub.json"
    code, report = _audit(capsys, log, str(public))
    assert code == 0 and report["ok"], report
    # The same as pinning the verifier key string it holds.
    vkey = json.loads(public.read_text())["verifier_key"]
    code, same = _audit(capsys, log, vkey)
    assert code == 0 and same["ok"]


def test_another_operators_public_file_is_a_finding(signed, capsys):
    root, log = signed
    code, report = _audit(capsys, log, str(root / "other" / "operator.pub.json"))
    assert code == 1 and not report["ok"]
    found = _signer_findings(report)
    assert any("signs nothing" in f for f in found), report["findings"]
    assert any("is not among the pinned keys" in f for f in found), report["findings"]


def test_a_source_public_file_is_refused_naming_it(signed, capsys):
    root, log = signed
    public = root / "src" / "source.pub.json"
    capsys.readouterr()
    assert main(["audit", str(log), "--allow-nonprivate", "--trust-key", str(public)]) == 2
    err = capsys.readouterr().err
    assert str(public) in err and "a source's public key file holds no verifier key" in err


@pytest.mark.parametrize("content, says", [
    ('{"id": "x"}', "neither a verifier key nor a public key file"),
    ("{not json", "neither a verifier key nor a public key file"),
    ('{"role": "party"}', "a party's public key file holds no verifier key"),
])
def test_a_json_file_that_is_no_public_file_is_refused(signed, capsys, tmp_path, content, says):
    _, log = signed
    bad = tmp_path / "bad.pub.json"
    bad.write_text(content)
    capsys.readouterr()
    assert main(["audit", str(log), "--trust-key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and says in err


def test_a_missing_public_file_is_named(signed, capsys, tmp_path):
    _, log = signed
    missing = tmp_path / "nobody" / "operator.pub.json"
    capsys.readouterr()
    assert main(["audit", str(log), "--trust-key", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such public key file" in err
