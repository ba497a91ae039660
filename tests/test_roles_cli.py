"""`dvsecure keys new` and `dvsecure consortium ...` (issue 14): each role makes its
own keys; the operator assembles the policy from what they published; everyone
prints the digest they agree to. Bad input is refused with exit 2 and an error
that names the file and the field."""
from __future__ import annotations

import base64
import json
import stat

import pytest

from dvsecure.cli import main
from dvsecure.consortium import principals_path
from dvsecure.keys import load_source_key
from dvsecure.log.writer import operator_signer
from dvsecure.policy import ConsortiumPolicy
from dvsecure.tee.protocol import Principals

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()
PCR0 = "ab" * 48


def run(capsys, *argv):
    """(exit code, stdout, stderr) of one command line, as the shell would see them."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:          # argparse: --help (0) and usage errors (2)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def new_keys(capsys, tmp_path, role, ident, *extra):
    code, out, err = run(capsys, "keys", "new", "--role", role, "--id", ident, "--out", tmp_path / ident, *extra,
                         "--json")
    assert code == 0, err
    return json.loads(out)


# ---- keys new ----------------------------------------------------------------------------

def test_each_role_makes_its_keys_private_and_publishes_only_what_is_pinned(tmp_path, capsys):
    src = new_keys(capsys, tmp_path, "source", "alpha")
    party = new_keys(capsys, tmp_path, "party", "p1", "--rank", "1")
    dealer = new_keys(capsys, tmp_path, "dealer", "dealer")
    op = new_keys(capsys, tmp_path, "operator", "heart-study")
    assert set(src) == {"role", "id", "key"} and set(dealer) == {"role", "id", "key"}
    assert set(party) == {"role", "id", "rank", "key", "verifier_key"} and party["rank"] == 1
    assert set(op) == {"role", "id", "key", "verifier_key"}
    for ident, private, public, printed in [("alpha", "source.key", "source.pub.json", src),
                                            ("p1", "party-1.key", "party-1.pub.json", party),
                                            ("dealer", "dealer.key", "dealer.pub.json", dealer),
                                            ("heart-study", "operator.key", "operator.pub.json", op)]:
        assert stat.S_IMODE((tmp_path / ident / private).stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / ident).stat().st_mode) == 0o700
        assert json.loads((tmp_path / ident / public).read_text()) == printed      # the file to send
        text = json.dumps(printed)
        assert "PRIVATE" not in text and "signing_key" not in text
    # The running roles find the very same keys.
    ident, signing = load_source_key(tmp_path / "alpha")
    assert ident == "alpha" and base64.b64encode(bytes(signing.verify_key)).decode() == src["key"]
    code, out, _ = run(capsys, "party", "--state", tmp_path / "p1", "--rank", "1", "--show-key")
    assert code == 0 and json.loads(out) == {"rank": 1, "cosign_key": party["key"],
                                            "verifier_key": party["verifier_key"]}
    code, out, _ = run(capsys, "party", "--dealer", "--state", tmp_path / "dealer", "--show-key")
    assert code == 0 and json.loads(out) == {"dealer": True, "key": dealer["key"]}
    signer = operator_signer(tmp_path / "heart-study")
    assert signer.verifier_key_string == op["verifier_key"] and signer.name == "dvsecure/heart-study/operator"


def test_keys_new_prints_for_people_without_json(tmp_path, capsys):
    code, out, _ = run(capsys, "keys", "new", "--role", "party", "--id", "p0", "--rank", "0", "--out", tmp_path / "p")
    assert code == 0
    assert out.startswith(f"party p0 (rank 0): private key {tmp_path / 'p' / 'party-0.key'} (mode 0600")
    assert f"publish {tmp_path / 'p' / 'party-0.pub.json'}" in out and "verifier_key  dvsecure-mpc-party-0+" in out


@pytest.mark.parametrize("role,extra,private", [("source", [], "source.key"), ("party", ["--rank", "2"], "party-2.key"),
                                                ("dealer", [], "dealer.key"), ("operator", [], "operator.key")])
def test_an_existing_key_is_never_overwritten(tmp_path, capsys, role, extra, private):
    first = new_keys(capsys, tmp_path, role, "x", *extra)
    before = (tmp_path / "x" / private).read_bytes()
    code, out, err = run(capsys, "keys", "new", "--role", role, "--id", "x", "--out", tmp_path / "x", *extra)
    assert code == 2 and out == ""
    assert f"{tmp_path / 'x' / private} already exists: keys are never overwritten" in err
    assert (tmp_path / "x" / private).read_bytes() == before
    assert json.loads((tmp_path / "x" / private.replace(".key", ".pub.json")).read_text()) == first


def test_a_lone_public_file_is_not_replaced_either(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "source.pub.json").write_text("{}")
    code, _, err = run(capsys, "keys", "new", "--role", "source", "--id", "x", "--out", tmp_path / "x")
    assert code == 2 and "source.pub.json already exists" in err
    assert not (tmp_path / "x" / "source.key").exists()


@pytest.mark.parametrize("argv,message", [
    (["--role", "party"], "a party's key belongs to its rank: give --rank"),
    (["--role", "source", "--rank", "1"], "--rank is for a party's key"),
    (["--role", "party", "--rank", "-1"], "--rank must be an integer >= 0"),
    (["--role", "source", "--id", " x"], "--id must be a non-empty printable name"),
])
def test_keys_new_refuses_bad_arguments(tmp_path, capsys, argv, message):
    if "--id" not in argv:
        argv = argv + ["--id", "x"]
    code, _, err = run(capsys, "keys", "new", *argv, "--out", tmp_path / "k")
    assert code == 2 and message in err
    assert not (tmp_path / "k").exists()


def test_keys_new_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "keys", "new", "--role", "auditor", "--id", "x", "--out", tmp_path)
    assert code == 2 and "invalid choice: 'auditor'" in err
    code, _, err = run(capsys, "keys", "new", "--role", "source", "--out", tmp_path)
    assert code == 2 and "--id" in err


def test_a_source_key_file_that_is_not_one_is_named(tmp_path):
    from dvsecure.errors import ParameterError

    bad = tmp_path / "source.key"
    bad.write_text('{"id": "a"}')
    with pytest.raises(ParameterError, match=f"{bad} is not a source key file"):
        load_source_key(tmp_path)
    with pytest.raises(ParameterError, match=f"cannot read source key {tmp_path / 'none' / 'source.key'}"):
        load_source_key(tmp_path / "none" / "source.key")


# ---- consortium ----------------------------------------------------------------------------

@pytest.fixture
def policy(tmp_path, capsys):
    """A new consortium: the operator's key from its public file."""
    op = new_keys(capsys, tmp_path, "operator", "heart-study")
    path = tmp_path / "consortium.toml"
    code, out, err = run(capsys, "consortium", "init", "--name", "heart-study", "--operator-key",
                         tmp_path / "heart-study" / "operator.pub.json", "--out", path)
    assert code == 0, err
    assert "sources: none yet; log signed by the operator" in out and "no digest yet" in out
    return path, op


def test_the_operator_assembles_a_policy_every_role_loads(tmp_path, capsys, policy):
    path, op = policy
    src = new_keys(capsys, tmp_path, "source", "alpha")
    code, out, err = run(capsys, "consortium", "digest", path)
    assert code == 2 and f"{path}: no [[sources]] yet" in err
    code, out, err = run(capsys, "consortium", "add-source", "--policy", path, "--id", "alpha", "--band", "0.1..0.6",
                         "--budget", "epsilon=8,delta=1e-5", "--slices", "50",
                         "--key", tmp_path / "alpha" / "source.pub.json")
    assert code == 0, err
    assert out.startswith(f"added source alpha to {path}; its key to {principals_path(path)}")
    code, _, err = run(capsys, "consortium", "add-source", "--policy", path, "--id", "beta", "--band", "0.05..0.4",
                       "--budget", "rho=2", "--on-exhaustion", "shrink", "--votes", "simplex", "--key", KEY_B)
    assert code == 0, err
    parties = [new_keys(capsys, tmp_path, "party", f"p{r}", "--rank", str(r)) for r in range(3)]
    for r in range(3):
        code, out, err = run(capsys, "consortium", "add-party", "--policy", path, "--rank", str(r),
                             "--key", tmp_path / f"p{r}" / f"party-{r}.pub.json")
        assert code == 0 and f"added party {r}'s key to {path}" in out, err
    dealer = new_keys(capsys, tmp_path, "dealer", "dealer")
    code, out, err = run(capsys, "consortium", "add-party", "--policy", path, "--dealer", "--key", dealer["key"])
    assert code == 0 and "dealer pinned" in out, err

    loaded = ConsortiumPolicy.load(path)          # what parties, the enclave and auditors load
    assert loaded.ids == ("alpha", "beta")
    a, b = loaded.sources
    assert (a.gamma_min, a.gamma_max, a.unit, a.slices, a.budget.to_dict()) == \
        (0.1, 0.6, "slice", 50, {"epsilon": 8.0, "delta": 1e-5})
    assert (b.budget.to_dict(), b.on_exhaustion, b.votes) == ({"rho": 2.0}, "shrink", "simplex")
    assert loaded.mechanism.to_dict() == {"kind": "confident_gnmax", "sigma2": 0.1, "sigma1": 0.4, "threshold": 0.5}
    assert loaded.signers.operator == op["key"] and loaded.signers.parties == tuple(p["key"] for p in parties)
    assert loaded.signers.dealer == dealer["key"]
    principals, _ = Principals.load(principals_path(path))
    assert {s: base64.b64encode(bytes(k)).decode() for s, k in principals.sources.items()} == \
        {"alpha": src["key"], "beta": KEY_B}

    code, out, _ = run(capsys, "consortium", "digest", path)
    assert code == 0 and out.splitlines()[-1] == f"digest {loaded.digest()}"
    code, out, _ = run(capsys, "consortium", "digest", path, "--expect", loaded.digest().upper(), "--json")
    assert code == 0 and json.loads(out)["digest"] == loaded.digest()
    summary = json.loads(out)
    assert summary["sources"] == ["alpha", "beta"] and summary["parties"] == 3 and summary["dealer"]


def test_a_wrong_digest_is_refused_naming_the_file(capsys, policy):
    path, _ = policy
    assert run(capsys, "consortium", "add-source", "--policy", path, "--id", "a", "--band", "0..1",
               "--budget", "rho=1")[0] == 0
    code, out, err = run(capsys, "consortium", "digest", path, "--expect", "0" * 64)
    assert code == 2 and out == ""
    assert f"{path}: its digest is {ConsortiumPolicy.load(path).digest()}, not the {'0' * 64} expected" in err


def test_init_never_replaces_a_policy_and_needs_who_signs(tmp_path, capsys, policy):
    path, _ = policy
    before = path.read_bytes()
    code, _, err = run(capsys, "consortium", "init", "--name", "x", "--operator-key", KEY_A, "--out", path)
    assert code == 2 and f"{path} already exists: consortium init never replaces a policy" in err
    assert path.read_bytes() == before
    code, _, err = run(capsys, "consortium", "init", "--name", "x", "--out", tmp_path / "n.toml")
    assert code == 2 and "one of the arguments --operator-key --enclave-pcr0 is required" in err
    code, _, err = run(capsys, "consortium", "init", "--name", "x", "--operator-key", KEY_A, "--enclave-pcr0", PCR0,
                       "--out", tmp_path / "n.toml")
    assert code == 2 and "not allowed with argument" in err
    assert not (tmp_path / "n.toml").exists()


@pytest.mark.parametrize("argv,message", [
    (["--mechanism", "gnmax", "--sigma1", "1"], "--mechanism gnmax takes no --sigma1 or --threshold"),
    (["--sigma2", "0"], "mechanism: sigma2 must be > 0"),
    (["--calibration-fraction", "1.5"], "calibration: budget_fraction must be in (0, 1)"),
    (["--operator-key", "nope"], "--operator-key 'nope': neither a base64 Ed25519 public key"),
    (["--operator-key", "missing/operator.pub.json"], "missing/operator.pub.json"),
    (["--enclave-pcr0", "abc"], "signers: enclave_pcr0 must be 96 hex digits"),
])
def test_init_refuses_bad_arguments(tmp_path, capsys, argv, message):
    if "--operator-key" not in argv and "--enclave-pcr0" not in argv:
        argv = argv + ["--operator-key", KEY_A]
    code, _, err = run(capsys, "consortium", "init", "--name", "x", *argv, "--out", tmp_path / "p.toml")
    assert code == 2 and message in err, err
    assert not (tmp_path / "p.toml").exists()


def test_a_key_file_of_another_role_or_source_is_refused(tmp_path, capsys, policy):
    path, _ = policy
    new_keys(capsys, tmp_path, "source", "alpha")
    pub = tmp_path / "alpha" / "source.pub.json"
    code, _, err = run(capsys, "consortium", "init", "--name", "x", "--operator-key", pub, "--out", tmp_path / "n.toml")
    assert code == 2 and f"--operator-key {pub}: this is a source's key, not an operator's" in err
    code, _, err = run(capsys, "consortium", "add-source", "--policy", path, "--id", "beta", "--band", "0.1..0.5",
                       "--budget", "rho=1", "--key", pub)
    assert code == 2 and f"--key {pub}: this key is alpha's, not beta's" in err
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--key", pub)
    assert code == 2 and "this is a source's key, not a party's" in err
    assert "beta" not in path.read_text() and "parties" not in path.read_text()


def test_a_missing_key_file_is_named(tmp_path, capsys, policy):
    path, _ = policy
    missing = tmp_path / "nowhere" / "source.pub.json"
    code, _, err = run(capsys, "consortium", "add-source", "--policy", path, "--id", "a", "--band", "0.1..0.5",
                       "--budget", "rho=1", "--key", missing)
    assert code == 2 and str(missing) in err and "--key" in err
    assert not principals_path(path).exists() and "[[sources]]" not in path.read_text()


@pytest.mark.parametrize("band,budget,message", [
    ("0.1-0.6", "rho=1", "--band must be LO..HI, the weight band gamma_min..gamma_max"),
    ("0.6..0.1", "rho=1", "consortium.toml: source 'a': gamma_min (0.6) > gamma_max (0.1)"),
    ("0.1..1.5", "rho=1", "gamma_max must be in (0, 1]"),
    ("0.1..nan", "rho=1", "--band must be two finite numbers"),
    ("0.1..0.5", "eps=8", "--budget: budget must have exactly one of the forms"),
    ("0.1..0.5", "epsilon=8", "--budget: budget must have exactly one of the forms"),
    ("0.1..0.5", "rho=-1", "--budget: budget.rho must be > 0"),
    ("0.1..0.5", "rho", "--budget must be epsilon=E,delta=D or rho=R or rdp=B,order=A"),
])
def test_a_bad_band_or_budget_is_refused_naming_the_field(capsys, policy, band, budget, message):
    path, _ = policy
    before = path.read_bytes()
    code, _, err = run(capsys, "consortium", "add-source", "--policy", path, "--id", "a", "--band", band,
                       "--budget", budget)
    assert code == 2 and message in err, err
    assert path.read_bytes() == before


def test_source_options_are_checked_by_the_policy(capsys, policy):
    path, _ = policy
    add = ("consortium", "add-source", "--policy", path, "--band", "0.1..0.5", "--budget", "rho=1")
    code, _, err = run(capsys, *add, "--id", "a", "--slices", "1")
    assert code == 2 and f"{path}: source 'a': unit = 'slice' needs slices = m with 2 <= m" in err
    code, _, err = run(capsys, *add, "--id", "a", "--influence-budget", "rho=5")
    assert code == 2 and "influence_budget is for unit = 'slice'" in err
    assert run(capsys, *add, "--id", "a", "--slices", "10", "--influence-budget", "rho=5", "--delta", "1e-6")[0] == 0
    s = ConsortiumPolicy.load(path).source("a")
    assert (s.slices, float(s.influence_budget_rho), s.delta) == (10, 5.0, 1e-6)
    code, _, err = run(capsys, *add, "--id", "a")
    assert code == 2 and f"{path}: adding source 'a': duplicate source id 'a'" in err
    code, _, err = run(capsys, *add, "--id", "b", "--principals", path.with_name("p.json"))
    assert code == 2 and "--principals goes with --key" in err


def test_a_source_key_already_named_differently_is_refused(capsys, policy):
    path, _ = policy
    fresh = path.read_text()
    add = ("consortium", "add-source", "--band", "0.1..0.5", "--budget", "rho=1", "--id", "a")
    assert run(capsys, *add, "--policy", path, "--key", KEY_A)[0] == 0
    other = path.with_name("other.toml")      # another policy sharing this principals file
    other.write_text(fresh)
    code, _, err = run(capsys, *add, "--policy", other, "--key", KEY_B, "--principals", principals_path(path))
    assert code == 2 and f"{principals_path(path)} already names another key for source 'a'" in err
    assert other.read_text() == fresh
    assert run(capsys, *add, "--policy", other, "--key", KEY_A, "--principals", principals_path(path))[0] == 0


def test_an_unknown_toml_key_is_an_error_naming_file_and_field(capsys, policy):
    path, _ = policy
    path.write_text(path.read_text().replace("[mechanism]\n", "[mechanism]\nsigma3 = 1.0\n"))
    for argv in (["consortium", "digest", path],
                 ["consortium", "add-source", "--policy", path, "--id", "a", "--band", "0.1..0.5", "--budget", "rho=1"],
                 ["consortium", "add-party", "--policy", path, "--key", KEY_A]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"{path}: mechanism: unknown key(s) sigma3" in err, err
    path.write_text("[consortium\n")
    code, _, err = run(capsys, "consortium", "digest", path)
    assert code == 2 and f"{path}: not valid TOML" in err and "line 1" in err
    code, _, err = run(capsys, "consortium", "digest", path.with_name("absent.toml"))
    assert code == 2 and "cannot read policy file" in err and "absent.toml" in err


def test_add_party_keeps_rank_order_and_one_dealer(tmp_path, capsys, policy):
    path, _ = policy
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--key", KEY_A, "--rank", "1")
    assert code == 2 and f"{path}: names 0 parties, so the next one is rank 0, not 1" in err
    new_keys(capsys, tmp_path, "party", "p1", "--rank", "1")
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path,
                       "--key", tmp_path / "p1" / "party-1.pub.json")
    assert code == 2 and "this is party 1's key; the next party is rank 0" in err
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--dealer", "--key", KEY_A)
    assert code == 2 and "a dealer key goes with the computing parties' keys" in err
    assert run(capsys, "consortium", "add-party", "--policy", path, "--key", KEY_A)[0] == 0
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--key", KEY_A)
    assert code == 2 and "a key is named twice" in err
    assert run(capsys, "consortium", "add-party", "--policy", path, "--dealer", "--key", KEY_B)[0] == 0
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--dealer", "--key", KEY_B)
    assert code == 2 and f"{path}: names a dealer already" in err
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--dealer", "--rank", "0", "--key", KEY_B)
    assert code == 2 and "--rank is a party's" in err


def test_an_enclave_consortium_has_no_parties(tmp_path, capsys):
    path = tmp_path / "enclave.toml"
    code, out, err = run(capsys, "consortium", "init", "--name", "e", "--enclave-pcr0", PCR0.upper(),
                         "--mechanism", "gnmax", "--sigma2", "0.5", "--out", path)
    assert code == 0 and "an enclave attested with PCR0 " + PCR0 in out, err
    code, _, err = run(capsys, "consortium", "add-party", "--policy", path, "--key", KEY_A)
    assert code == 2 and "signed by the attested enclave alone" in err
    assert run(capsys, "consortium", "add-source", "--policy", path, "--id", "a", "--band", "0.1..0.5",
               "--budget", "rdp=10,order=2")[0] == 0
    loaded = ConsortiumPolicy.load(path)
    assert loaded.signers.enclave_pcr0 == PCR0 and loaded.mechanism.to_dict() == {"kind": "gnmax", "sigma2": 0.5}


@pytest.mark.parametrize("argv", [["keys"], ["keys", "new"], ["consortium"], ["consortium", "init"],
                                  ["consortium", "add-source"], ["consortium", "add-party"],
                                  ["consortium", "digest"]])
def test_every_new_command_has_help(capsys, argv):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0 and out.startswith("usage: dvsecure " + " ".join(argv))
    assert len(out.splitlines()) > 3
