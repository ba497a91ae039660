"""Issue 10, attack 1: a dishonest operator holding only its own key cannot drop,
add or replace the cosigners the policy names, nor sign a forged entry alone.

The log is written as under MPC: the operator and three parties sign every
checkpoint (the parties' keys are held here, as DelegatedSigners, so the test
needs no CrypTen). The attacker then edits the published directory with the
operator key only, as a real one would: entries appended by hand, checkpoints
signed with whatever keys it holds. Every variant must fail the audit — as a
log and as a receipt, with and without pinned keys and a witness — while a key
change cosigned by the replaced key audits clean.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from dvsecure.audit.check import audit
from dvsecure.audit.receipt import export_receipt
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import LogError
from dvsecure.log import entry as E
from dvsecure.log.merkle import MerkleTree, leaf_hash
from dvsecure.log.note import Checkpoint, DelegatedSigner, Signer, generate_signer, sign_checkpoint
from dvsecure.log.signers import public_key_b64
from dvsecure.log.writer import CHECKPOINTS, ENTRIES, KEYS, PREVIOUS, LogWriter, checkpoint_name, key_file_name
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SignerPolicy, SourcePolicy

SOURCES = ("a", "b", "c")


def new_signer(name: str) -> Signer:
    return Signer.from_key_string(generate_signer(name)[0])


def as_party(signer: Signer) -> DelegatedSigner:
    return DelegatedSigner(signer.verifier_key_string, signer.sign, "party")


def b64(signer: Signer) -> str:
    return public_key_b64(signer.verifier_key_string)


def base_policy() -> ConsortiumPolicy:
    return ConsortiumPolicy(
        sources=tuple(SourcePolicy(s, 0.1, 0.5, Budget("rho", 50.0)) for s in SOURCES), name="signers-test",
        mechanism=MechanismPolicy("confident_gnmax", sigma2=0.5, sigma1=0.5, threshold=0.3))


def run_queries(log: LogWriter, ledger: Ledger, start: int, count: int) -> None:
    agg = Aggregator(ledger.policy, ledger, noise=make_noise("seeded", 7 + start), log=log)
    for q in range(start, start + count):
        agg.query(f"q{q}", {s: (q + i) % 3 for i, s in enumerate(SOURCES)}, 3)
    log.sync()


@pytest.fixture
def deployment(tmp_path):
    """A log signed by the operator and three parties, as the policy names them."""
    op, parties = new_signer("dvsecure/signers-test/operator"), [new_signer(f"party-{r}") for r in range(3)]
    policy = base_policy().with_signers(SignerPolicy(operator=b64(op), parties=tuple(b64(p) for p in parties)))
    out = tmp_path / "log"
    with Ledger(tmp_path / "ledger.sqlite", policy) as ledger:
        log = LogWriter(out, ledger, [op, *map(as_party, parties)])
        run_queries(log, ledger, 0, 6)
    return {"out": out, "op": op, "parties": parties, "policy": policy, "tmp": tmp_path}


def lines(out: Path) -> list[bytes]:
    return (out / ENTRIES).read_bytes().split(b"\n")[:-1]


def forge(out: Path, new_entries: list, signers: list[Signer], publish_keys: list[Signer] = ()) -> None:
    """What an operator can do alone: append entries and sign a checkpoint with the keys it holds."""
    old = lines(out)
    appended = []
    for e in new_entries:
        e.seq = len(old) + len(appended)
        appended.append(E.encode(e))
    every = old + appended
    with open(out / ENTRIES, "ab") as f:
        f.write(b"".join(a + b"\n" for a in appended))
    previous = max(int(p.name[:12]) for p in (out / CHECKPOINTS).glob("*.note"))
    root = MerkleTree([leaf_hash(x) for x in every]).root()
    cp = Checkpoint(E.decode(old[0]).origin, len(every), root, (f"{PREVIOUS}{previous}",))
    (out / CHECKPOINTS / checkpoint_name(len(every))).write_bytes(sign_checkpoint(cp, signers))
    for s in publish_keys:
        (out / KEYS / key_file_name(s.verifier_key_string)).write_text(s.verifier_key_string + "\n")


def forged_query(out: Path, label: int) -> E.Query:
    """A query entry no party computed: the last real one, relabelled, under a new id."""
    last = next(E.decode(x) for x in reversed(lines(out)) if isinstance(E.decode(x), E.Query))
    last.query_id, last.answered, last.label = "forged", True, label
    return last


def signers_entry(keys) -> E.Signers:
    return E.Signers(v=E.VERSION, seq=0, query_id="signers-forged",
                     keys=[E.SignerKey(name=s.name, vkey=s.verifier_key_string, role=role) for s, role in keys])


def all_vkeys(d) -> list[str]:
    return [s.verifier_key_string for s in [d["op"], *d["parties"]]]


def signer_findings(report) -> list[str]:
    return [str(f) for f in report.findings if f.check in ("signers", "checkpoint")]


def test_the_honest_log_audits_clean_pinned_and_witnessed(deployment, tmp_path):
    out = deployment["out"]
    report = audit(out, trusted_keys=all_vkeys(deployment), witness=tmp_path / "w.json", allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    seen = json.loads((tmp_path / "w.json").read_text())["logs"]
    assert set(next(iter(seen.values()))["signers"]) == {"operator", "party-0", "party-1", "party-2"}


def attacks(d):
    """Every way the operator alone can try to get a forged entry past the auditor."""
    op, parties = d["op"], d["parties"]
    mine = [new_signer(f"party-{r}") for r in range(3)]          # keys the operator made itself
    return {
        # the attack: a signers entry naming the operator alone, then a forged query
        "drop-cosigners": ([signers_entry([(op, "operator")]), forged_query(d["out"], 2)], [op], []),
        # replace every party's key with one the operator holds (a "rotation" nobody consented to)
        "replace-parties": ([signers_entry([(op, "operator"), *[(m, "party") for m in mine]]),
                             forged_query(d["out"], 2)], [op, *mine], mine),
        # replace one party's key: the other two never signed the forged root either
        "replace-one-party": ([signers_entry([(op, "operator"), (mine[0], "party"), (parties[1], "party"),
                                              (parties[2], "party")]), forged_query(d["out"], 2)],
                              [op, mine[0]], mine[:1]),
        # no new signers entry at all: the forged query signed by the operator alone
        "operator-alone": ([forged_query(d["out"], 2)], [op], []),
        # an extra key in another role, the parties dropped
        "enclave-role": ([E.Signers(v=1, seq=0, query_id="s", keys=[E.SignerKey(
            name=mine[0].name, vkey=mine[0].verifier_key_string, role="enclave", attestation="AAAA")]),
            forged_query(d["out"], 2)], [mine[0]], mine[:1]),
    }


@pytest.mark.parametrize("attack", ["drop-cosigners", "replace-parties", "replace-one-party", "operator-alone",
                                    "enclave-role"])
def test_forged_signer_sets_and_entries_do_not_audit(deployment, tmp_path, attack):
    out, d = deployment["out"], deployment
    witness = tmp_path / "w.json"
    assert audit(out, witness=witness, allow_nonprivate=True).ok          # the witness saw the honest log
    entries, signing, published = attacks(d)[attack]
    forge(out, entries, signing, published)
    for kwargs in ({}, {"trusted_keys": all_vkeys(d)}, {"witness": witness},
                   {"trusted_keys": all_vkeys(d), "witness": witness}):
        report = audit(out, allow_nonprivate=True, **kwargs)
        assert not report.ok and signer_findings(report), (attack, kwargs, [str(f) for f in report.findings])
    # As a receipt: the forged entry is the last, so every source's receipt carries it.
    receipt = export_receipt(out, "a", tmp_path / "receipt")
    for kwargs in ({}, {"trusted_keys": all_vkeys(d)}):
        report = audit(receipt, allow_nonprivate=True, **kwargs)
        assert not report.ok and signer_findings(report), (attack, kwargs, [str(f) for f in report.findings])


def test_a_policy_rewritten_to_name_the_operator_alone_fails_against_the_agreed_one(deployment, tmp_path):
    """The operator rewrites the whole log under a policy naming only itself: the
    sources' own copy of the policy (--policy) or pinned keys expose it."""
    d = deployment
    agreed = tmp_path / "agreed.toml"
    agreed.write_text(d["policy"].to_toml())
    fake = base_policy().with_signers(SignerPolicy(operator=b64(d["op"])))
    out = tmp_path / "rewritten"
    with Ledger(tmp_path / "fake.sqlite", fake) as ledger:
        run_queries(LogWriter(out, ledger, [d["op"]]), ledger, 0, 6)
    assert audit(out, allow_nonprivate=True).ok          # self-consistent: only an outside anchor shows it
    assert not audit(out, policy=agreed, allow_nonprivate=True).ok
    pinned = audit(out, trusted_keys=all_vkeys(d), allow_nonprivate=True)
    assert any("a required signer is missing" in f for f in signer_findings(pinned))


def test_the_writer_refuses_a_signer_set_the_policy_does_not_name(deployment):
    d = deployment
    with Ledger(d["tmp"] / "ledger.sqlite", d["policy"]) as ledger:
        with pytest.raises(LogError, match="party key"):
            LogWriter(d["out"], ledger, [d["op"]])
        with pytest.raises(LogError, match="must cosign the first checkpoint"):
            LogWriter(d["out"], ledger, [d["op"], as_party(new_signer("party-0")), *map(as_party, d["parties"][1:])])


def rotate_party_0(d, crash_before_checkpoint: bool = False) -> Signer:
    """party-0 restarts with a new key; its old key cosigns the change."""
    new = new_signer("party-0")                       # same name: only the key id tells them apart
    signers = [d["op"], as_party(new), *map(as_party, d["parties"][1:])]
    with Ledger(d["tmp"] / "ledger.sqlite", d["policy"]) as ledger:
        log = LogWriter(d["out"], ledger, signers, retiring=[as_party(d["parties"][0])])
        if crash_before_checkpoint:
            # The signers entry is recorded, then the process dies before signing: the
            # next writer must still have the old key's consent.
            with pytest.raises(LogError, match="must cosign"):
                LogWriter(d["out"], ledger, signers)
            log = LogWriter(d["out"], ledger, signers, retiring=[as_party(d["parties"][0])])
        run_queries(log, ledger, 100, 4)
        # Later checkpoints need the new set only.
        run_queries(LogWriter(d["out"], ledger, signers), ledger, 200, 3)
    return new


@pytest.mark.parametrize("crash", [False, True])
def test_a_key_change_cosigned_by_the_replaced_key_audits_clean(deployment, tmp_path, crash):
    d = deployment
    witness = tmp_path / "w.json"
    assert audit(d["out"], witness=witness, trusted_keys=all_vkeys(d), allow_nonprivate=True).ok
    new = rotate_party_0(d, crash)
    for kwargs in ({}, {"witness": witness}, {"trusted_keys": all_vkeys(d)}):
        report = audit(d["out"], allow_nonprivate=True, **kwargs)
        assert report.ok, (kwargs, [str(f) for f in report.findings])
    receipt = export_receipt(d["out"], "b", tmp_path / "receipt")
    report = audit(receipt, trusted_keys=all_vkeys(d), allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    seen = json.loads(witness.read_text())["logs"]
    assert next(iter(seen.values()))["signers"]["party-0"] == new.verifier_key_string


def test_a_key_change_without_the_replaced_keys_signature_does_not_audit(deployment, tmp_path):
    """The operator writes the rotation with the new key but the introducing
    checkpoint lacks the old key's signature (here: drop it from the note)."""
    d = deployment
    rotate_party_0(d)
    sizes = sorted(int(p.name[:12]) for p in (d["out"] / CHECKPOINTS).glob("*.note"))
    rotation_seq = max(E.decode(x).seq for x in lines(d["out"]) if isinstance(E.decode(x), E.Signers))
    intro = min(m for m in sizes if m > rotation_seq)
    path = d["out"] / CHECKPOINTS / checkpoint_name(intro)
    old = d["parties"][0]
    tag = f"\u2014 {old.name} ".encode()               # a signature line: "— name base64(key id || sig)"
    note = path.read_bytes().split(b"\n")
    kept = [ln for ln in note
            if not (ln.startswith(tag) and base64.b64decode(ln[len(tag):])[:4] == old.key_id.to_bytes(4, "big"))]
    assert len(kept) == len(note) - 1
    path.write_bytes(b"\n".join(kept))
    report = audit(d["out"], allow_nonprivate=True)
    assert any("replaced key" in f for f in signer_findings(report)), [str(f) for f in report.findings]


def test_a_policy_without_signers_is_reported_as_format_version_1(tmp_path):
    op = new_signer("dvsecure/signers-test/operator")
    with Ledger(tmp_path / "l.sqlite", base_policy()) as ledger:
        run_queries(LogWriter(tmp_path / "log", ledger, [op]), ledger, 0, 3)
    report = audit(tmp_path / "log", allow_nonprivate=True)
    assert [f.check for f in report.findings] == ["signers"]
    assert "log format version 1" in report.findings[0].message


def test_a_copied_directory_still_audits(deployment, tmp_path):
    # Guard for the fixtures above: a plain copy is not an attack.
    shutil.copytree(deployment["out"], tmp_path / "copy")
    assert audit(tmp_path / "copy", allow_nonprivate=True).ok


def test_an_enclave_policy_takes_no_operator_signature(tmp_path):
    """Under an enclave policy the host holds no signing key the auditor accepts: a
    log it signs itself (role operator) is refused by the writer and by the audit."""
    host = new_signer("host")
    policy = base_policy().with_signers(SignerPolicy(enclave_pcr0="ab" * 48))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        with pytest.raises(LogError, match="attested enclave"):
            LogWriter(tmp_path / "log", ledger, [host])
    # Forged by hand: genesis under the enclave policy, a signers entry naming the host.
    out = tmp_path / "forged"
    with Ledger(tmp_path / "l2.sqlite", base_policy()) as ledger:
        run_queries(LogWriter(out, ledger, [host]), ledger, 0, 2)
    (out / "policy.toml").write_text(policy.to_toml())
    report = audit(out, allow_nonprivate=True)
    assert any("attested enclave" in f for f in signer_findings(report)), [str(f) for f in report.findings]


def test_the_library_audit_verifies_enclave_attestations(tmp_path):
    """A host that signs an enclave-policy log itself, with a junk attestation in the
    signers entry, fails the audit however the auditor is called (library, receipt)."""
    host = new_signer("host-pretending-enclave")
    policy = base_policy().with_signers(SignerPolicy(enclave_pcr0="ab" * 48))
    with Ledger(tmp_path / "l.sqlite", policy) as ledger:
        log = LogWriter(tmp_path / "log", ledger, [host], role="enclave", attestations={host.name: "AAAA"})
        run_queries(log, ledger, 0, 3)
    agreed = tmp_path / "agreed.toml"
    agreed.write_text(policy.to_toml())
    for path in (tmp_path / "log", export_receipt(tmp_path / "log", "a", tmp_path / "receipt")):
        report = audit(path, policy=agreed, allow_nonprivate=True)
        assert report.attested and any(f.check == "attestation" and "attestation refused" in f.message
                                       for f in report.findings), [str(f) for f in report.findings]
