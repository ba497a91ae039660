"""Issue 3, "must show": every kind of tampering with a log directory or a receipt
is caught by the auditor with a finding that names it.

The base log is the embedded demo with seeded (reproducible, non-private) noise,
so audits run with allow_nonprivate=True; one test checks that without it the
non-private entries are themselves a finding.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from dvsecure.audit.check import audit
from dvsecure.audit.receipt import export_receipt
from dvsecure.cli import main
from dvsecure.demo.consortium import default_policy
from dvsecure.engine.ledger import Ledger
from dvsecure.log import entry as E
from dvsecure.log.merkle import MerkleTree, leaf_hash
from dvsecure.log.note import Checkpoint, Signer, generate_signer, sign_checkpoint, sign_note
from dvsecure.log.writer import ENTRIES, PREVIOUS, checkpoint_name, operator_signer
from dvsecure.policy import ConsortiumPolicy


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    # The prototype's source-level consortium: the forgeries below name its bands and budgets.
    assert main(["demo", "--backend", "plaintext", "--consortium", "prototype", "--out", str(root / "log"),
                 "--queries", "60", "--noise-seed", "11", "--json"]) == 0
    return root


@pytest.fixture
def copy(base, tmp_path):
    shutil.copytree(base / "log", tmp_path / "log")
    shutil.copytree(base / "log.state", tmp_path / "log.state")
    return tmp_path / "log", tmp_path / "log.state"


def checks(report) -> set[str]:
    return {f.check for f in report.findings}


def lines_of(log: Path) -> list[bytes]:
    return (log / ENTRIES).read_bytes().split(b"\n")[:-1]


def test_clean_log_audits_and_matches_the_ledger(copy):
    log, state = copy
    report = audit(log, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    assert report.non_private_entries == report.entries - 2          # every query/calibration entry
    with Ledger(state / "ledger.sqlite", ConsortiumPolicy.load(log / "policy.toml")) as ledger:
        spent = ledger.spent()
    assert {s.id: s.spent_rho for s in report.sources} == {k: float(v) for k, v in spent.items()}
    assert all(s.spent_rho <= s.budget_rho for s in report.sources)
    strict = audit(log)
    assert checks(strict) == {"non-private"}


def _flip(path: Path, pos: int) -> bytes:
    data = path.read_bytes()
    b = bytearray(data)
    b[pos] ^= 0x01
    path.write_bytes(bytes(b))
    return data


@pytest.mark.slow
def test_any_flipped_byte_in_any_file_is_caught(copy):
    log, _ = copy
    files = sorted(p for p in log.rglob("*") if p.is_file())
    assert {p.relative_to(log).parts[0] for p in files} == {"checkpoints", "entries.jsonl", "keys", "policy.toml"}
    rng = np.random.default_rng(0)
    tried = 0
    for path in files:
        size = path.stat().st_size
        # Every byte of the small files; 300 spread positions (first and last included) of the entries.
        positions = range(size) if size < 4000 else sorted({0, size - 1, *rng.integers(0, size, 298).tolist()})
        for pos in positions:
            original = _flip(path, pos)
            try:
                report = audit(log, allow_nonprivate=True)
                assert not report.ok, f"{path.relative_to(log)} byte {pos} flipped, audit passed"
            finally:
                path.write_bytes(original)
            tried += 1
    assert tried > 1000
    assert audit(log, allow_nonprivate=True).ok


def test_truncated_deleted_and_unexpected_files(copy):
    log, _ = copy
    for path in sorted(p for p in log.rglob("*") if p.is_file()):
        rel = path.relative_to(log).as_posix()
        original = path.read_bytes()
        path.write_bytes(original[: len(original) // 2])
        assert not audit(log, allow_nonprivate=True).ok, f"truncated {rel}"
        path.unlink()
        report = audit(log, allow_nonprivate=True)
        assert not report.ok, f"deleted {rel}"
        path.write_bytes(original)
    (log / "notes.txt").write_text("hello")
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "file" and f.file == "notes.txt" for f in report.findings)


def test_torn_last_line(copy):
    log, _ = copy
    data = (log / ENTRIES).read_bytes()
    (log / ENTRIES).write_bytes(data[:-1])                           # the final newline lost
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "entry" and "incomplete" in f.message for f in report.findings)


@pytest.mark.parametrize("how", ["delete", "swap", "duplicate"])
def test_deleted_reordered_duplicated_entries(copy, how):
    log, _ = copy
    lines = lines_of(log)
    k = 20
    if how == "delete":
        del lines[k]
    elif how == "swap":
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
    else:
        lines.insert(k + 1, lines[k])
    (log / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines))
    report = audit(log, allow_nonprivate=True)
    assert "sequence" in checks(report) and checks(report) & {"merkle", "checkpoint"}
    assert any(f.check == "sequence" and f.seq in (k, k + 1) for f in report.findings)


def _latest(log: Path) -> Path:
    return sorted((log / "checkpoints").glob("*.note"))[-1]


def test_checkpoint_signed_by_an_unknown_key(copy):
    log, _ = copy
    path = _latest(log)
    original = path.read_bytes()
    text = original.split(b"\n\n")[0] + b"\n"
    stranger = Signer.from_key_string(generate_signer("someone-else")[0])
    # (a) an extra signature line from a key nobody recorded
    extra = sign_note(text, [stranger]).split(b"\n\n")[1]
    path.write_bytes(original + extra)
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "checkpoint" and "unknown key" in f.message for f in report.findings)
    # (b) signed only by the stranger, even with the operator's name
    impostor = Signer.from_key_string(generate_signer(
        Signer.from_key_string((log.parent / "log.state" / "operator.key").read_text().strip()).name)[0])
    for signer in (stranger, impostor):
        path.write_bytes(sign_note(text, [signer]))
        report = audit(log, allow_nonprivate=True)
        assert any(f.check == "checkpoint" and f.file == f"checkpoints/{path.name}" for f in report.findings)


def test_pinned_key_mismatch(copy):
    log, _ = copy
    other = Signer.from_key_string(generate_signer("x")[0]).verifier_key_string
    report = audit(log, allow_nonprivate=True, trusted_keys=[other])
    assert "signers" in checks(report)


def _continue_demo(log: Path, state: Path, seed: int) -> None:
    assert main(["demo", "--backend", "plaintext", "--consortium", "prototype", "--out", str(log),
                 "--state", str(state), "--queries", "30", "--noise-seed", str(seed), "--seed", str(seed), "--json"]) == 0


def test_fork_and_rollback_are_caught_by_the_witness(copy, tmp_path, capsys):
    log, state = copy
    twin_log, twin_state = tmp_path / "twin", tmp_path / "twin.state"
    shutil.copytree(log, twin_log)
    shutil.copytree(state, twin_state)
    # Two continuations of the same history, with the same operator key, that differ.
    _continue_demo(log, state, seed=1)
    _continue_demo(twin_log, twin_state, seed=2)
    capsys.readouterr()
    assert lines_of(log)[-1] != lines_of(twin_log)[-1]
    assert len(lines_of(log)) == len(lines_of(twin_log))
    witness = tmp_path / "witness.json"
    assert audit(log, allow_nonprivate=True, witness=witness).ok
    seen = json.loads(witness.read_text())
    assert list(seen["logs"].values())[0]["size"] == len(lines_of(log))
    forked = audit(twin_log, allow_nonprivate=True, witness=witness)
    assert "fork" in checks(forked)
    assert json.loads(witness.read_text()) == seen              # a failed audit does not move the witness
    # Rollback: the operator later shows an older, shorter, validly signed state of the same log.
    rolled = tmp_path / "rolled"
    shutil.copytree(log, rolled)
    older = sorted(int(cp.name[:12]) for cp in (rolled / "checkpoints").glob("*.note"))[-2]
    (rolled / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines_of(rolled)[:older]))
    for cp in (rolled / "checkpoints").glob("*.note"):
        if int(cp.name[:12]) > older:
            cp.unlink()
    assert audit(rolled, allow_nonprivate=True).ok                # consistent on its own ...
    assert "fork" in checks(audit(rolled, allow_nonprivate=True, witness=witness))   # ... not with the witness


# ---- a dishonest operator holding the real key --------------------------------------------


def _resign(log: Path, state: Path, lines: list[bytes]) -> None:
    """Write `lines` as the log and sign a checkpoint of them with the operator's real key."""
    policy = ConsortiumPolicy.load(log / "policy.toml")
    (log / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines))
    root = MerkleTree([leaf_hash(x) for x in lines]).root()
    previous = max(int(p.name[:12]) for p in (log / "checkpoints").glob("*.note") if int(p.name[:12]) < len(lines))
    cp = Checkpoint(E.log_origin(policy), len(lines), root, (f"{PREVIOUS}{previous}",))
    (log / "checkpoints" / checkpoint_name(len(lines))).write_bytes(
        sign_checkpoint(cp, [operator_signer(state, policy)]))


def _last_query(lines: list[bytes]) -> E.Query:
    for line in reversed(lines):
        e = E.decode(line)
        if isinstance(e, E.Query):
            return e
    raise AssertionError("no query entry")


def _forge(prev: E.Query, seq: int, *, gamma=None, status=None, spent=None, charged=None, **kw) -> bytes:
    S = len(prev.status)
    g = E.unpack(prev.gamma, "<u4", S).copy() if gamma is None else gamma
    return E.encode(msgspec.structs.replace(
        prev, seq=seq, query_id=f"forged-{seq}", gamma=E.pack_u32(g),
        status=prev.status if status is None else status,
        spent=prev.spent if spent is None else E.pack_f64(spent),
        charged=prev.charged if charged is None else E.pack_u32(charged), **kw))


def _charge(policy, gamma_units: int, answered: bool) -> float:
    m = policy.mechanism
    g = gamma_units / 65536
    return g * g / m.sigma2 ** 2 * answered + (g * g / (2 * m.sigma1 ** 2) if m.confident else 0)


def test_dishonest_weight_outside_its_band(copy):
    log, state = copy
    lines = lines_of(log)
    prev = _last_query(lines)
    policy = default_policy(consortium="prototype")
    g = E.unpack(prev.gamma, "<u4", 5).copy()
    # inst-4 (band 0.03..0.20) weighted 0.25, status "active"; spends and counts made consistent.
    g[3] = int(0.25 * 65536)
    status = prev.status[:3] + "A" + prev.status[4:]
    spent = E.unpack(prev.spent, "<f8", 5).copy()
    counts = E.unpack(prev.charged, "<u4", 5).astype(np.int64)
    for j in range(5):
        if status[j] in "AS":
            spent[j] += _charge(policy, int(g[j]), prev.answered)
            counts[j] += 1
    seq = len(lines)
    _resign(log, state, lines + [_forge(prev, seq, gamma=g, status=status, spent=spent, charged=counts)])
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "band" and f.seq == seq and "inst-4" in f.message for f in report.findings)


def test_dishonest_overspend_with_understated_totals(copy):
    """Entries that push inst-5 past its budget while stating tiny spends and
    consistent counts: caught by recomputing the charges, not by the stated totals."""
    log, state = copy
    lines = lines_of(log)
    prev = _last_query(lines)
    spent = E.unpack(prev.spent, "<f8", 5).copy()
    counts = E.unpack(prev.charged, "<u4", 5).astype(np.int64)
    g = np.zeros(5, np.int64)
    g[4] = int(0.15 * 65536)                                   # inst-5 at its ceiling, alone
    status = "XXXXA"
    forged = []
    for k in range(60):
        counts[4] += 1
        spent[4] += 1e-9                                      # the lie: almost nothing spent
        forged.append(_forge(prev, len(lines) + k, gamma=g, status=status, spent=spent, charged=counts,
                             answered=True, label=0))
    _resign(log, state, lines + forged)
    report = audit(log, allow_nonprivate=True)
    assert "budget" in checks(report)
    budget = [f for f in report.findings if f.check == "budget"]
    assert "inst-5" in budget[0].message and budget[0].seq >= len(lines)
    assert any(f.check == "spend" and "inst-5" in f.message for f in report.findings)
    inst5 = next(s for s in report.sources if s.id == "inst-5")
    assert inst5.spent_rho > inst5.budget_rho > inst5.stated_spent_rho


def test_dishonest_stated_spend(copy):
    log, state = copy
    lines = lines_of(log)
    k = max(i for i, x in enumerate(lines) if isinstance(E.decode(x), E.Query))
    e = E.decode(lines[k])
    spent = E.unpack(e.spent, "<f8", 5).copy()
    spent[0] -= 0.01
    lines[k] = E.encode(msgspec.structs.replace(e, spent=E.pack_f64(spent)))
    _resign(log, state, lines)
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "spend" and f.seq == k and "inst-1" in f.message for f in report.findings)


def test_dishonest_excluded_source_with_weight_and_changed_mechanism(copy):
    log, state = copy
    lines = lines_of(log)
    prev = _last_query(lines)
    g = E.unpack(prev.gamma, "<u4", 5).copy()
    g[0] = int(0.2 * 65536)
    status = "B" + prev.status[1:]
    seq = len(lines)
    forged = _forge(prev, seq, gamma=g, status=status,
                    mechanism=E.Mechanism(kind="confident_gnmax", sigma2=50.0, sigma1=50.0, threshold=0.8))
    _resign(log, state, lines + [forged])
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == "band" and f.seq == seq and "excluded" in f.message for f in report.findings)
    assert any(f.check == "charge" and f.seq == seq for f in report.findings)


def test_dishonest_answer_without_any_participant(copy):
    """A label released for a query every source sat out (all absent): noise alone,
    presented as an answer. Charges are zero, so only the release check catches it."""
    log, state = copy
    lines = lines_of(log)
    prev = _last_query(lines)
    seq = len(lines)
    forged = _forge(prev, seq, gamma=np.zeros(5, np.int64), status="XXXXX", answered=True, label=3)
    _resign(log, state, lines + [forged])
    report = audit(log, allow_nonprivate=True)
    assert [(f.check, f.seq) for f in report.findings] == [("release", seq)], [str(f) for f in report.findings]
    assert "no source took part" in report.findings[0].message


def test_sharded_audit_reports_the_same_findings(copy):
    log, state = copy
    lines = lines_of(log)
    k = len(lines) // 2 + 3
    e = E.decode(lines[k])
    assert isinstance(e, E.Query)
    spent = E.unpack(e.spent, "<f8", 5).copy()
    spent[2] += 0.5
    lines[k] = E.encode(msgspec.structs.replace(e, spent=E.pack_f64(spent)))
    _resign(log, state, lines)
    reports = [audit(log, allow_nonprivate=True, workers=w).to_dict() for w in (1, 2, 3)]
    assert reports[0] == reports[1] == reports[2]
    assert not reports[0]["ok"]


# ---- receipts ---------------------------------------------------------------------------


def test_receipt_audits_alone_and_checks_the_policy(copy, tmp_path):
    log, _ = copy
    receipt = export_receipt(log, "inst-3", tmp_path / "r3")
    report = audit(receipt, allow_nonprivate=True)
    assert report.ok and report.kind == "receipt", [str(f) for f in report.findings]
    assert [s.id for s in report.sources] == ["inst-3"]
    full = next(s for s in audit(log, allow_nonprivate=True).sources if s.id == "inst-3")
    assert report.sources[0].spent_rho == full.spent_rho
    mine = tmp_path / "agreed.toml"
    mine.write_text((log / "policy.toml").read_text())
    assert audit(receipt, allow_nonprivate=True, policy=mine).ok
    mine.write_text((log / "policy.toml").read_text().replace("gamma_max = 0.35", "gamma_max = 0.3"))
    report = audit(receipt, allow_nonprivate=True, policy=mine)
    assert "policy" in checks(report)


def test_receipt_with_an_omitted_charge_or_flipped_byte_fails(copy, tmp_path):
    log, _ = copy
    receipt = export_receipt(log, "inst-4", tmp_path / "r4")
    meta = json.loads((receipt / "receipt.json").read_text())
    lines = lines_of(receipt)
    # Drop a query entry that charged inst-4 (not the last entry), and its proof.
    k = next(i for i in range(len(lines) - 2, 0, -1)
             if isinstance(E.decode(lines[i]), E.Query) and E.decode(lines[i]).status[3] in "AS")
    del lines[k]
    del meta["seqs"][k]
    del meta["inclusion"][k]
    (receipt / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines))
    (receipt / "receipt.json").write_text(json.dumps(meta))
    report = audit(receipt, allow_nonprivate=True)
    assert any(f.check == "spend" and "missing" in f.message for f in report.findings)

    fresh = export_receipt(log, "inst-4", tmp_path / "r4b")
    for name in ("receipt.json", ENTRIES):
        path = fresh / name
        for pos in (10, path.stat().st_size // 2, path.stat().st_size - 3):
            original = _flip(path, pos)
            assert not audit(fresh, allow_nonprivate=True).ok, f"{name} byte {pos}"
            path.write_bytes(original)
    assert audit(fresh, allow_nonprivate=True).ok


def test_cli_exit_codes_and_json(copy, capsys):
    log, _ = copy
    assert main(["audit", str(log), "--allow-nonprivate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["findings"] == []
    assert main(["audit", str(log)]) == 1
    assert "non-private" in capsys.readouterr().out
    assert main(["audit", str(log / "nope")]) == 2


@pytest.mark.parametrize("changes,check", [
    (dict(label=2 ** 64 - 1), "release"),                 # beyond int64: a finding, not a crash
    (dict(num_classes=2 ** 64 - 1, label=None, answered=True), "release"),
    (dict(seq=2 ** 64 - 1), "sequence"),
    (dict(v=2 ** 63), "entry"),
    (dict(label=-5, answered=True), "release"),
])
def test_dishonest_scalars_are_findings_not_crashes(copy, changes, check):
    log, state = copy
    lines = lines_of(log)
    k = max(i for i, x in enumerate(lines) if isinstance(E.decode(x), E.Query))
    lines[k] = E.encode(msgspec.structs.replace(E.decode(lines[k]), **changes))
    _resign(log, state, lines)
    report = audit(log, allow_nonprivate=True)
    assert any(f.check == check and f.seq == k for f in report.findings), [str(f) for f in report.findings]


def test_a_receipt_proof_in_non_canonical_base64_is_refused(copy, tmp_path):
    """The last base64 character of a 32-byte hash carries two unused bits: flipping
    them decodes to the same hash, so a receipt could have two spellings."""
    log, _ = copy
    receipt = export_receipt(log, "inst-4", tmp_path / "r")
    meta = json.loads((receipt / "receipt.json").read_text())
    proof = next(p for p in meta["inclusion"] if p)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = proof[0][-2]                       # "....X=": X holds 4 data bits and 2 unused ones
    proof[0] = proof[0][:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    (receipt / "receipt.json").write_text(json.dumps(meta))
    report = audit(receipt, allow_nonprivate=True)
    assert any(f.check == "merkle" and "canonical base64" in f.message for f in report.findings), \
        [str(f) for f in report.findings]


@pytest.mark.parametrize("garbage", [b"{not json", b'{"kind":"query"}', b""])
def test_receipt_export_of_a_log_with_a_malformed_entry_is_a_clear_error(copy, tmp_path, capsys, garbage):
    log, _ = copy
    lines = (log / ENTRIES).read_bytes().split(b"\n")
    lines[5] = garbage
    (log / ENTRIES).write_bytes(b"\n".join(lines))
    assert main(["receipt", "export", str(log), "--source", "inst-1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "entry 5 does not decode" in err and "audit the log first" in err and "Traceback" not in err
