"""A party's own ledger, without CrypTen: entries written by the real aggregator
(the reference backend, given whole batches) are cosigned iff they match what
the party recorded; everything the party refuses is named."""
from __future__ import annotations

from fractions import Fraction

import msgspec
import numpy as np
import pytest

from dvsecure.backends.plaintext import PlaintextBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import BudgetExceededError, LedgerError
from dvsecure.log import entry
from dvsecure.log.note import Checkpoint, generate_signer, parse_note
from dvsecure.log.writer import LogWriter, operator_signer
from dvsecure.mpc.party_ledger import CosignError, PartyLedger
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

POLICY = ConsortiumPolicy(sources=tuple(SourcePolicy(f"s{i}", 0.125, 0.25, Budget("rho", 1.0)) for i in range(3)),
                          mechanism=MechanismPolicy("confident_gnmax", 1.0, sigma1=1.0, threshold=0.3),
                          name="party-ledger")
VKEY = generate_signer("dvsecure-mpc-party-0")[1]


class WholeBatch(PlaintextBackend):
    evaluates_whole_batch = True


def operator_log(tmp_path, items):
    """The operator's ledger and log after `items`, and what a party would have
    recorded for each query: the tallied weights, answered bits and labels."""
    from dvsecure.log.note import Signer

    ledger = Ledger(tmp_path / "op.sqlite", POLICY)
    party_signer = Signer.from_key_string(generate_signer("dvsecure-mpc-party-0")[0])
    log = LogWriter(tmp_path / "log", ledger, [operator_signer(tmp_path, POLICY), party_signer])
    agg = Aggregator(POLICY, ledger, backend=WholeBatch(), noise=make_noise("no_noise"), log=log)
    results = agg.query_batch(items, 3)
    seen = [(r.query_id, np.array([[int(p.gamma * 65536) for p in r.participants]]),
             np.array([r.answered]), [r.label if r.answered else -1]) for r in results]
    return ledger, log, party_signer.verifier_key_string, seen


def latest_checkpoint(tmp_path) -> bytes:
    path = sorted((tmp_path / "log" / "checkpoints").iterdir())[-1]
    return parse_note(path.read_bytes())[0]


ITEMS = [(f"q{i}", {"s0": i % 3, "s1": i % 3, "s2": 0}) for i in range(4)]


def party_with(tmp_path, vkey, seen, skip_label=None) -> PartyLedger:
    party = PartyLedger(tmp_path / "party.sqlite", POLICY, vkey)
    for qid, gammas, answered, label in seen:
        party.record_charges([qid], gammas, answered, "no_noise")
        if qid != skip_label:
            party.record_labels([qid], label)
            party.mark_delivered([qid])
    return party


def test_matching_entries_are_cosigned_and_persist(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    text = latest_checkpoint(tmp_path)
    party = party_with(tmp_path, vkey, seen)
    party.check_and_cosign(ledger.record_bytes(0, None), text)
    assert party.size == Checkpoint.parse(text).size == ledger.next_seq()
    assert party.spent() == ledger.spent()
    party.close()
    reopened = PartyLedger(tmp_path / "party.sqlite", POLICY, vkey)
    assert reopened.size == ledger.next_seq() and reopened.spent() == ledger.spent()


@pytest.mark.parametrize("field, value, message", [
    ("label", 2, "label differs"), ("answered", False, "answered bit or label"),
    ("noise", "private", "noise mode"), ("query_id", "q-unknown", "was not revealed")])
def test_an_entry_that_differs_from_the_partys_record_is_refused(tmp_path, field, value, message):
    import msgspec

    from dvsecure.log import entry

    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    party = party_with(tmp_path, vkey, seen)
    entries = ledger.record_bytes(0, None)
    last = entry.decode(entries[-1])
    entries[-1] = entry.encode(msgspec.structs.replace(last, **{field: value}))
    with pytest.raises(CosignError, match=message):
        party.check_and_cosign(entries, latest_checkpoint(tmp_path))
    assert party.size == 0                      # nothing accepted


def test_a_wrong_root_or_size_is_refused(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    party = party_with(tmp_path, vkey, seen)
    cp = Checkpoint.parse(latest_checkpoint(tmp_path))
    forged = Checkpoint(cp.origin, cp.size, bytes(32), cp.extensions).to_text()
    with pytest.raises(CosignError, match="root"):
        party.check_and_cosign(ledger.record_bytes(0, None), forged)
    with pytest.raises(CosignError, match="size"):
        party.check_and_cosign(ledger.record_bytes(0, None)[:-1], cp.to_text())


def test_a_revealed_query_missing_from_the_log_is_refused(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    party = party_with(tmp_path, vkey, seen)
    gammas = np.array([[8192, 8192, 8192]])
    party.record_charges(["hidden"], gammas, np.array([False]), "no_noise")
    party.record_labels(["hidden"], [-1])
    # Revealed here but not known to have reached party 0 (its batch failed after the labels):
    # nothing the coordinator could have logged, so it does not block the cosignature ...
    cosigned_before = party.size
    hidden = tmp_path / "undelivered.sqlite"
    import shutil
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"party.sqlite{suffix}").exists():
            shutil.copy(tmp_path / f"party.sqlite{suffix}", f"{hidden}{suffix}")
    undelivered = PartyLedger(hidden, POLICY, vkey)
    undelivered.check_and_cosign(ledger.record_bytes(0, None), latest_checkpoint(tmp_path))
    assert undelivered.size > cosigned_before
    undelivered.close()
    # ... but once every party had it, the coordinator did too, and it must be in the log.
    party.mark_delivered(["hidden"])
    with pytest.raises(CosignError, match="missing from the log.*hidden"):
        party.check_and_cosign(ledger.record_bytes(0, None), latest_checkpoint(tmp_path))


def test_a_signer_set_without_this_party_is_refused(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    party = party_with(tmp_path, generate_signer("dvsecure-mpc-party-0")[1], seen)
    with pytest.raises(CosignError, match="does not name this party"):
        party.check_and_cosign(ledger.record_bytes(0, None), latest_checkpoint(tmp_path))


def test_band_and_budget_are_checked_before_anything_is_recorded(tmp_path):
    party = PartyLedger(tmp_path / "p.sqlite", POLICY, VKEY)
    with pytest.raises(LedgerError, match="outside its band"):
        party.record_charges(["a"], np.array([[4096, 8192, 8192]]), np.array([True]), "private")
    # Confident-GNMax at gamma 0.25, sigma1 = sigma2 = 1: 0.25^2/2 + 0.25^2 = 0.09375 per answered query.
    per_query = Fraction(1, 32) + Fraction(1, 16)
    fits = int(Fraction(1) / per_query)
    for k in range(fits):
        party.record_charges([f"q{k}"], np.array([[16384, 8192, 8192]]), np.array([True]), "private")
    assert party.spent()["s0"] == fits * per_query
    with pytest.raises(BudgetExceededError, match="'s0' would spend"):
        party.record_charges(["over"], np.array([[16384, 8192, 8192]]), np.array([True]), "private")
    assert party.spent()["s0"] == fits * per_query        # the refused query recorded nothing


def test_a_failed_attempt_stays_charged_and_a_revealed_query_cannot_rerun(tmp_path):
    party = PartyLedger(tmp_path / "p.sqlite", POLICY, VKEY)
    row, yes = np.array([[8192, 8192, 8192]]), np.array([True])
    party.record_charges(["q"], row, yes, "private")           # labels never revealed: the batch failed
    once = party.spent()["s0"]
    party.record_charges(["q"], row, yes, "private")           # the retry is charged again
    assert party.spent()["s0"] == 2 * once
    # Revealed here, but the batch failed before every party had the labels: party 0 may never
    # have had them, so a retry may reveal the query again — charged again, and it stays so.
    party.record_labels(["q"], [1])
    party.record_charges(["q"], row, yes, "private")
    assert party.spent()["s0"] == 3 * once
    party.record_labels(["q"], [2])
    party.mark_delivered(["q"])                                 # every party had it: the coordinator too
    with pytest.raises(LedgerError, match="already revealed"):
        party.record_charges(["q"], row, yes, "private")
    assert party.spent()["s0"] == 3 * once


def test_a_query_entered_twice_in_one_batch_is_refused(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, ITEMS)
    party = party_with(tmp_path, vkey, seen)
    entries = ledger.record_bytes(0, None)
    # The operator replays the last query as a new entry with the next sequence
    # number (its checkpoint root is never reached: the repeat is refused first).
    replay = msgspec.structs.replace(entry.decode(entries[-1]), seq=len(entries))
    cp = Checkpoint.parse(latest_checkpoint(tmp_path))
    forged = Checkpoint(cp.origin, cp.size + 1, cp.root_hash).to_text()
    with pytest.raises(CosignError, match=r"query 'q3' appears twice"):
        party.check_and_cosign(entries + [entry.encode(replay)], forged)
    assert party.size == 0                                   # nothing was taken in


def test_settling_releases_only_the_gnmax_reservation_of_refused_queries(tmp_path):
    party = PartyLedger(tmp_path / "p.sqlite", POLICY, VKEY)
    row = np.array([[16384, 8192, 8192], [16384, 8192, 8192]])
    party.record_charges(["a", "b"], row, np.array([True, True]), "private")      # worst case reserved
    reserved = party.spent()["s0"]
    party.settle(["a", "b"], [True, False])                                        # b was refused
    # s0 at 0.25, sigma 1: threshold 1/32 always, GNMax 1/16 only for the answered query.
    assert reserved == 2 * (Fraction(1, 32) + Fraction(1, 16))
    assert party.spent()["s0"] == 2 * Fraction(1, 32) + Fraction(1, 16)


# ---- issue 10, attack 2: the operator frames a source in what it logs ------------------

FRAMING_ITEMS = [("f0", {"s0": 1, "s1": 1, "s2": 2}), ("f1", {"s0": 0, "s1": 0}), ("f2", {"s0": 2, "s1": 2, "s2": 7})]
# What a party saw: all counted; s2 absent (no share); s2's vote rejected by the secure validation.
FRAMING_SEEN = ["VVV", "VVX", "VVR"]


def framed_party(tmp_path):
    ledger, log, vkey, seen = operator_log(tmp_path, FRAMING_ITEMS)
    entries = ledger.record_bytes(0, None)
    commitments = {entry.decode(e).query_id: b"".join(entry.unpack_commitments(entry.decode(e).commitments, 3))
                   for e in entries if isinstance(entry.decode(e), entry.Query)}
    party = PartyLedger(tmp_path / "party.sqlite", POLICY, vkey)
    for (qid, gammas, answered, label), letters in zip(seen, FRAMING_SEEN):
        c = np.frombuffer(commitments[qid], dtype=np.uint8).reshape(3, 1, 32)
        party.record_charges([qid], gammas, answered, "no_noise", [letters], c)
        party.record_labels([qid], label)
        party.mark_delivered([qid])
    return ledger, party, entries


def reason_fixed(entries):
    """The plaintext reference names its own reason for s2's bad vote; under MPC the
    parties' is REJECTED. Log that one, as an honest MPC coordinator would."""
    from dvsecure.mpc.party_ledger import REJECTED

    out = list(entries)
    for k, e in enumerate(out):
        d = entry.decode(e)
        if isinstance(d, entry.Query) and d.query_id == "f2":
            out[k] = entry.encode(msgspec.structs.replace(d, invalid={"s2": REJECTED}))
    return out


def test_statuses_and_commitments_matching_what_the_party_saw_are_cosigned(tmp_path):
    ledger, party, entries = framed_party(tmp_path)
    assert [entry.decode(e).status for e in entries if isinstance(entry.decode(e), entry.Query)] == \
        ["AAA", "AAX", "AAI"]
    entries = reason_fixed(entries)
    # The root changed with the reason; a checkpoint over these exact entries is what it checks.
    from dvsecure.log.merkle import MerkleTree, leaf_hash
    cp = Checkpoint.parse(latest_checkpoint(tmp_path))
    text = Checkpoint(cp.origin, len(entries), MerkleTree([leaf_hash(e) for e in entries]).root(),
                      cp.extensions).to_text()
    party.check_and_cosign(entries, text)
    assert party.size == len(entries)


@pytest.mark.parametrize("qid, status, invalid, message", [
    # a counted source logged absent or invalid (its weight made 0 as well): the weights differ
    ("f0", "AAX", {}, "weights differ"),
    # an absent source logged invalid with a made-up reason
    ("f1", "AAI", {"s2": "invalid: not one-hot"}, "logged 'excluded:invalid' but this party saw no share"),
    # a rejected vote logged absent (hiding that the source sent something)
    ("f2", "AAX", {}, "logged 'absent' but this party saw a vote the secure validation rejected"),
    # a rejected vote logged with another reason
    ("f2", "AAI", {"s2": "invalid: the source asked to be left out"}, "is not what this party saw"),
    # a budget exclusion where the party saw a valid vote counted
    ("f1", "ABX", {}, "weights differ|logged 'excluded:budget'"),
    # a reason for a source that is not logged invalid
    ("f1", "AAX", {"s0": "invalid: forged"}, "not logged invalid"),
])
def test_a_framing_status_or_reason_gets_no_cosignature(tmp_path, qid, status, invalid, message):
    ledger, party, entries = framed_party(tmp_path)
    entries = reason_fixed(entries)
    for k, e in enumerate(entries):
        d = entry.decode(e)
        if isinstance(d, entry.Query) and d.query_id == qid:
            g = entry.unpack(d.gamma, "<u4", 3).copy()
            g[[j for j, c in enumerate(status) if c not in "AS"]] = 0
            entries[k] = entry.encode(msgspec.structs.replace(d, status=status, invalid=invalid,
                                                              gamma=entry.pack_u32(g)))
    with pytest.raises(CosignError, match=message):
        party.check_and_cosign(entries, latest_checkpoint(tmp_path))
    assert party.size == 0


def test_a_commitment_other_than_the_sources_gets_no_cosignature(tmp_path):
    ledger, party, entries = framed_party(tmp_path)
    entries = reason_fixed(entries)
    d = entry.decode(entries[-1])
    raw = bytearray(b"".join(entry.unpack_commitments(d.commitments, 3)))
    raw[5] ^= 1                                     # s0's commitment for f2
    entries[-1] = entry.encode(msgspec.structs.replace(d, commitments=entry.pack_commitments(bytes(raw))))
    with pytest.raises(CosignError, match="commitment logged for 's0' is not the one it sent"):
        party.check_and_cosign(entries, latest_checkpoint(tmp_path))


def test_a_signers_entry_moving_this_partys_key_to_another_slot_is_refused(tmp_path):
    """Issue 10, attack 1 at a party: the parties' order (their ranks) is agreed too."""
    import base64

    from dvsecure.log.note import Signer
    from dvsecure.policy import SignerPolicy

    keys = [Signer.from_key_string(generate_signer(f"dvsecure-mpc-party-{r}")[0]) for r in range(2)]
    op = Signer.from_key_string(generate_signer("op")[0])
    b64 = [base64.b64encode(k.public_key).decode() for k in (op, *keys)]
    policy = POLICY.with_signers(SignerPolicy(operator=b64[0], parties=(b64[1], b64[2])))
    party = PartyLedger(tmp_path / "p.sqlite", policy, keys[0].verifier_key_string)
    genesis = entry.genesis(entry.log_origin(policy), policy.digest(), policy.to_toml().encode(), policy.ids)

    def signers(order):
        return entry.encode(entry.Signers(v=1, seq=1, query_id="signers-1", keys=[
            entry.SignerKey(name=op.name, vkey=op.verifier_key_string, role="operator"),
            *[entry.SignerKey(name=k.name, vkey=k.verifier_key_string, role="party") for k in order]]))
    from dvsecure.log.merkle import MerkleTree, leaf_hash

    def text(entries):
        return Checkpoint(entry.log_origin(policy), len(entries), MerkleTree([leaf_hash(x) for x in entries]).root(),
                          ("dvsecure-previous-checkpoint 0",)).to_text()
    swapped = [genesis, signers(keys[::-1])]
    with pytest.raises(CosignError, match="not in its slot party-0"):
        party.check_and_cosign(swapped, text(swapped))
    honest = [genesis, signers(keys)]
    party.check_and_cosign(honest, text(honest))
    assert party.size == 2


def test_what_a_party_saw_is_derived_in_order_of_precedence():
    """Weight 0 (the filter) first, then no share, a share not every party holds, a
    rejected vote; else counted. Relayed batches cannot tell absent from refused."""
    from dvsecure.mpc.evaluate import _seen

    gammas = np.array([[0, 5, 5, 5, 5], [5, 5, 5, 5, 0]])
    present = np.array([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    counts = np.array([[3, 3], [0, 3], [3, 3], [3, 3], [3, 3]])          # [S, Q]
    agreed = np.array([[1, 1], [0, 1], [0, 1], [1, 1], [1, 1]], bool)
    valid = np.array([[1, 1], [0, 1], [0, 1], [0, 1], [1, 1]], bool)
    assert _seen(gammas, present, counts, agreed, valid, inbox=True) == ["BXPRV", "VVVVB"]
    assert _seen(gammas, present, counts, agreed, valid, inbox=False) == ["BxPRV", "VVVVB"]
