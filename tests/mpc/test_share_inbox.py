"""What a listening party accepts before any secure computation, without CrypTen:
the share inbox's limits and a batch command's public checks."""
from __future__ import annotations

import numpy as np
import pytest
from nacl.signing import SigningKey

from dvsecure.errors import LedgerError, PartyRefusal, SubmissionError
from dvsecure.mpc.evaluate import MAX_CLASSES, _public_checks
from dvsecure.mpc.inbox import ShareInbox
from dvsecure.mpc.sharing import PartyKeys, encode_batch, seal_submissions
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

WORLD = 3
KEYS = [PartyKeys.generate() for _ in range(WORLD)]
SOURCE = SigningKey.generate()


def envelope_for_party0(query_ids, num_classes, labels=None):
    labels = labels if labels is not None else [0] * len(query_ids)
    encoded = encode_batch(labels, num_classes)
    return seal_submissions("s0", SOURCE, query_ids, encoded, [k.public for k in KEYS], num_classes=num_classes)[0]


def inbox(**limits) -> ShareInbox:
    return ShareInbox(0, WORLD, KEYS[0].private, {"s0": SOURCE.verify_key}, evaluated=set(), **limits)


def test_too_many_classes_are_refused_before_anything_is_held():
    box = inbox(max_classes=8)
    with pytest.raises(PartyRefusal, match="9 classes; at most 8") as e:
        box.submit(envelope_for_party0(["q"], 9))
    assert e.value.code == "INVALID_ARGUMENT"
    assert box.submit(envelope_for_party0(["q"], 8)) == 1        # the same query, within the limit


def test_pending_bytes_are_bounded_and_freed_when_taken():
    one = envelope_for_party0(["a"], 4)
    # Room for exactly two pending shares: 4 classes of 8 bytes, the overhead, the ids "s0" and "a".
    box = inbox(max_pending_bytes=2 * (4 * 8 + 256 + 2 + 1))
    box.submit(one)
    box.submit(envelope_for_party0(["b"], 4))
    with pytest.raises(PartyRefusal, match="bytes of shares pending") as e:
        box.submit(envelope_for_party0(["c"], 4))
    assert e.value.code == "RESOURCE_EXHAUSTED"
    x, k, opened, _ = box.take(["a"], ["s0"], 4)                      # evaluating 'a' frees its room
    assert opened.tolist() == [[1]] and x.shape == (1, 1, 4)
    assert box.submit(envelope_for_party0(["c"], 4)) == 1
    with pytest.raises(PartyRefusal, match="late"):
        box.submit(one)                                           # 'a' was evaluated: never again


def test_many_tiny_shares_count_their_overhead():
    # 2 classes are 16 bytes each; without the per-share overhead 1000 of them would fit in 16 KB.
    box = inbox(max_pending_bytes=16_000)
    with pytest.raises(PartyRefusal, match="bytes of shares pending"):
        box.submit(envelope_for_party0([f"q{i}" for i in range(1000)], 2))


POLICY = ConsortiumPolicy(
    sources=(SourcePolicy("s0", 0.25, 0.5, Budget("rho", 1.0)), SourcePolicy("s1", 0.125, 1.0, Budget("rho", 1.0))),
    mechanism=MechanismPolicy("gnmax", 2.0), name="inbox")


def command(**overrides) -> dict:
    cmd = {"source_ids": ["s0", "s1"], "query_ids": ["q0", "q1"], "num_classes": 3, "inbox": True, "source_keys": {},
           "present": np.ones((2, 2), dtype=np.uint8).tobytes(),
           "gammas": np.array([[16384, 8192], [32768, 0]], dtype="<i8").tobytes()}
    cmd.update(overrides)
    return cmd


LISTENING = inbox()


def test_a_well_formed_batch_passes_the_public_checks():
    present, gammas, sigma1, sigma2 = _public_checks(command(), POLICY, WORLD, LISTENING)
    assert present.all() and gammas.tolist() == [[16384, 8192], [32768, 0]]
    assert sigma1 is None and sigma2 > 0


@pytest.mark.parametrize("overrides, inbox_, error, message", [
    ({"source_ids": ["s1", "s0"]}, LISTENING, SubmissionError, "not the policy's, in the policy's order"),
    ({"inbox": False}, LISTENING, SubmissionError, "only from its sources over gRPC, not relayed"),
    ({}, None, SubmissionError, "takes no submissions over the network"),
    ({"num_classes": MAX_CLASSES + 1}, LISTENING, SubmissionError, "outside 2..4096"),
    ({"num_classes": 1}, LISTENING, SubmissionError, "outside 2..4096"),
    ({"gammas": b"\x00" * 8}, LISTENING, SubmissionError, "malformed batch arrays"),
    # s0's band is [0.25, 0.5]: 0.125 is outside (a weight of 0 is an exclusion, allowed)
    ({"gammas": np.array([[8192, 8192], [0, 8192]], dtype="<i8").tobytes()}, LISTENING, LedgerError,
     "weight 0.125 of 's0' is outside its band"),
    ({"gammas": np.array([[16384, 65536 + 1], [0, 0]], dtype="<i8").tobytes()}, LISTENING, LedgerError,
     "of 's1' is outside its band"),
])
def test_a_bad_batch_is_refused_before_anything_is_revealed(overrides, inbox_, error, message):
    with pytest.raises(error, match=message):
        _public_checks(command(**overrides), POLICY, WORLD, inbox_)


def test_a_policy_tolerating_every_party_colluding_is_refused():
    import dataclasses
    policy = dataclasses.replace(POLICY, collusion_tolerance=WORLD)
    with pytest.raises(SubmissionError, match="needs at least t \\+ 1"):
        _public_checks(command(), policy, WORLD, LISTENING)


def test_a_submission_naming_a_query_twice_is_refused_and_holds_nothing():
    # Signed by the real source key, so only the duplicate is wrong.
    import msgspec
    from nacl.public import SealedBox

    from dvsecure.mpc.sharing import _DOMAIN, ShareSubmission, Signed

    body = msgspec.msgpack.encode(ShareSubmission(
        v=2, source_id="s0", query_ids=["q", "q"], num_classes=2, party_index=0, num_parties=WORLD,
        sealed=bytes(SealedBox(KEYS[0].public).encrypt(bytes(32)))))
    envelope = msgspec.msgpack.encode(Signed("s0", body, SOURCE.sign(_DOMAIN + body).signature))
    box = inbox(max_pending_bytes=1000)
    with pytest.raises(PartyRefusal, match="names a query twice"):
        box.submit(envelope)
    box.submit(envelope_for_party0(["q"], 2))
    box.take(["q"], ["s0"], 2)
    assert box._bytes == 0                    # nothing drifted: the whole limit is free again


def test_batch_limits_on_query_ids_size_and_source_keys(monkeypatch):
    import dvsecure.mpc.evaluate as ev

    with pytest.raises(SubmissionError, match="distinct query ids"):
        _public_checks(command(query_ids=["q0", "q0"]), POLICY, WORLD, LISTENING)
    monkeypatch.setattr(ev, "MAX_BATCH_ENTRIES", 2 * 2 * 3)           # two queries of 2 sources x 3 classes
    _public_checks(command(), POLICY, WORLD, LISTENING)
    too_many = r"3 queries x 2 vote rows \(of 2 sources\) x 3 classes is more than 12 entries"
    with pytest.raises(SubmissionError, match=too_many):
        _public_checks(command(query_ids=["q0", "q1", "q2"], present=bytes(6), gammas=bytes(48)),
                       POLICY, WORLD, LISTENING)
    relayed = {"inbox": False, "messages": [[], [], []]}
    with pytest.raises(SubmissionError, match="source key for 's0'"):
        _public_checks(command(source_keys={"s0": b"short"}, **relayed), POLICY, WORLD, None)
    with pytest.raises(SubmissionError, match="source key for 'intruder'"):
        _public_checks(command(source_keys={"intruder": bytes(32)}, **relayed), POLICY, WORLD, None)


# ---- a malicious source filling the inbox ----------------------------------------------------

HONEST = SigningKey.generate()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def two_source_inbox(**limits) -> ShareInbox:
    keys = {"s0": SOURCE.verify_key, "honest": HONEST.verify_key}
    return ShareInbox(0, WORLD, KEYS[0].private, keys, evaluated=set(), **limits)


def honest_envelope(query_ids, num_classes=4):
    encoded = encode_batch([1] * len(query_ids), num_classes)
    return seal_submissions("honest", HONEST, query_ids, encoded, [k.public for k in KEYS],
                            [bytes([i % 256]) * 32 for i in range(len(query_ids))], num_classes=num_classes)[0]


def test_an_8_mib_query_id_is_refused_by_name_and_holds_nothing():
    box = inbox()
    huge = "q" * (8 << 20)
    with pytest.raises(PartyRefusal) as e:
        box.submit(envelope_for_party0(["fine", huge], 4))
    assert e.value.code == "INVALID_ARGUMENT"
    assert f"query id {'q' * 32!r}... is {8 << 20} bytes" in str(e.value) and "1..256 bytes" in str(e.value)
    assert len(str(e.value)) < 300
    assert box.pending_bytes() == 0                     # not even the well-formed id of that envelope is held
    assert box.submit(envelope_for_party0(["fine"], 4)) == 1


@pytest.mark.parametrize("qid, words", [("é" * 129, "is 258 bytes"),
                                        ("tab\there", r"non-printable character '\\t'")])
def test_query_ids_over_256_bytes_or_not_printable_are_refused(qid, words):
    with pytest.raises(PartyRefusal, match=words) as e:
        inbox().submit(envelope_for_party0([qid], 4))
    assert e.value.code == "INVALID_ARGUMENT"
    assert inbox().submit(envelope_for_party0(["é" * 128], 4)) == 1        # exactly 256 bytes


def test_query_id_and_commitment_bytes_count_against_the_budget():
    box = two_source_inbox()
    box.submit(envelope_for_party0(["a"], 4))
    box.submit(envelope_for_party0(["b" * 256], 4))
    box.submit(honest_envelope(["c"]))                   # carries a 32-byte commitment
    base = 1 * 8 + 256                                   # the share (one class index) and the fixed overhead
    assert box.pending_bytes("s0") == 2 * (base + len("s0")) + 1 + 256
    assert box.pending_bytes("honest") == base + len("honest") + 1 + 32
    assert box.pending_bytes() == box.pending_bytes("s0") + box.pending_bytes("honest")
    # Each share is held on its own, not as a view keeping its whole envelope alive.
    assert all(held.share.base is None for held in box._pending.values())
    box.take(["a", "b" * 256, "c"], ["s0", "honest"], 4)
    assert box.pending_bytes() == 0


def test_a_flood_of_never_opened_ids_stays_within_its_quota_expires_and_the_honest_source_is_served():
    clock = Clock()
    budget = 64 << 10
    box = two_source_inbox(max_pending_bytes=budget, ttl=60, clock=clock)
    assert box.max_source_bytes == budget // 2          # default: an equal part of the budget per source
    # The attack: one source sends shares under 256-byte ids nobody will open, until refused.
    sent, refusals = 0, []
    for batch in range(200):
        try:
            sent += box.submit(envelope_for_party0([f"{batch:04d}-{i:03d}-".ljust(256, "x") for i in range(10)], 4))
        except PartyRefusal as e:
            refusals.append(e)
            if len(refusals) == 3:
                break
    assert refusals and all(e.code == "RESOURCE_EXHAUSTED" for e in refusals)
    assert "source 's0'" in str(refusals[0]) and f"quota of {budget // 2} bytes" in str(refusals[0])
    assert 0 < box.pending_bytes("s0") <= box.max_source_bytes and box.pending_bytes() <= budget
    assert sent * (1 * 8 + 256 + 2 + 256) == box.pending_bytes("s0")     # each share counted, ids included

    # The honest source is still served, and its queries are evaluated with its shares.
    qids = [f"h{i}" for i in range(20)]
    assert box.submit(honest_envelope(qids)) == 20
    _, _, opened, commitments = box.take(qids, ["s0", "honest"], 4)
    assert opened.tolist() == [[0] * 20, [1] * 20] and commitments[1, 3].tolist() == [3] * 32

    # Nobody opens the flood's ids: just before the ttl they are held, after it they are gone.
    clock.now += 59.9
    box.submit(honest_envelope(["late-honest"]))
    assert box.pending_bytes("s0") > 0
    clock.now += 0.2
    box.submit(honest_envelope(["later-honest"]))       # any submit (or take) drops what expired
    assert box.pending_bytes("s0") == 0
    assert box.pending_bytes() == box.pending_bytes("honest") > 0
    # The freed quota is usable again; an expired share is not evaluated, and may be sent again.
    assert box.submit(envelope_for_party0(["0000-000-".ljust(256, "x")], 4)) == 1
    clock.now += 61
    _, _, opened, _ = box.take(["late-honest", "later-honest"], ["s0", "honest"], 4)
    assert opened.tolist() == [[0, 0], [0, 0]]           # both expired before the coordinator asked
    assert box.pending_bytes() == 0


def test_an_explicit_per_source_quota_and_bad_limits():
    box = two_source_inbox(max_pending_bytes=1 << 20, max_source_bytes=800)
    box.submit(envelope_for_party0(["a", "b"], 4))       # 2 x 267 bytes
    with pytest.raises(PartyRefusal, match="source 's0': 801 bytes of shares pending would pass its quota of "
                                           "800 bytes") as e:
        box.submit(envelope_for_party0(["c"], 4))
    assert e.value.code == "RESOURCE_EXHAUSTED"
    assert box.submit(honest_envelope(["c"])) == 1       # another source has its own quota
    for bad in ({"max_source_bytes": 0}, {"ttl": 0}, {"max_pending_bytes": -1}):
        with pytest.raises(ValueError, match="inbox limits must be positive"):
            two_source_inbox(**bad)


def test_a_batch_command_with_an_oversized_query_id_is_refused_by_name():
    with pytest.raises(SubmissionError, match=r"query id 'qqqq.*'\.\.\. is 8388608 bytes"):
        _public_checks(command(query_ids=["q0", "q" * (8 << 20)]), POLICY, WORLD, LISTENING)


def test_the_refusal_status_is_chosen_by_what_failed_not_by_the_senders_words():
    """A source id is the sender's own text and is quoted in refusals: one spelled like
    an authentication failure must not turn a malformed body into UNAUTHENTICATED, and
    an unknown source stays UNAUTHENTICATED whatever it calls itself."""
    import msgspec

    from dvsecure.mpc import sharing

    tricky = SigningKey.generate()
    box = ShareInbox(0, WORLD, KEYS[0].private, {"bad signature": tricky.verify_key}, evaluated=set())
    body = b"\xc1 not msgpack"                       # signed correctly, but no submission inside
    signed = sharing.Signed(source_id="bad signature", body=body,
                             signature=tricky.sign(sharing._DOMAIN + body).signature)
    with pytest.raises(PartyRefusal, match="malformed submission body") as e:
        box.submit(msgspec.msgpack.encode(signed))
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(PartyRefusal, match="unknown source") as e:
        inbox().submit(seal_submissions("malformed", SOURCE, ["q"], encode_batch([0], 2),
                                        [k.public for k in KEYS], num_classes=2)[0])
    assert e.value.code == "UNAUTHENTICATED"


def test_a_share_counts_only_in_its_policys_vote_layout():
    """A slice source with m = 3 slices of 4 classes: a one-hot vote, a histogram of
    6 slices, a histogram of 3 slices of 2 classes, or a simplex vote's 16 units are not its
    vote, as on the relay path; only 3 class indices of 4 classes are."""
    import numpy as np

    from dvsecure.mechanism.votes import VoteFormat

    box = inbox()
    pks = [k.public for k in KEYS]
    for qid, encoded, kind, c in (("one-hot", [[1]], "one-hot", 4),
                                  ("six-slices", [[0, 0, 1, 1, 2, 3]], VoteFormat("histogram", 6), 4),
                                  ("two-classes", [[0, 1, 1]], VoteFormat("histogram", 3), 2),
                                  ("simplex", [[0] * 16], "simplex", 4),
                                  ("right", [[0, 2, 2]], VoteFormat("histogram", 3), 4)):
        box.submit(seal_submissions("s0", SOURCE, [qid], np.array(encoded), pks, kind=kind, num_classes=c)[0])
    qids = ["one-hot", "six-slices", "two-classes", "simplex", "right"]
    x, k, opened, _ = box.take(qids, ["s0"], 4, rows=[3], encodings=["index"])
    assert opened.tolist() == [[0, 0, 0, 0, 1]] and x.shape == (3, 5, 4) and k.shape == (3, 5)
    assert not x.any() and (k[:, :4] == 0).all() and (k[:, 4] < 4).all()
