"""Client-side sharing and the signed, sealed submission (issue 4, item 2)."""
from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from scipy import stats

from dvsecure.errors import SubmissionError, VoteError
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.mechanism.votes import VoteFormat
from dvsecure.mpc.sharing import (
    PartyKeys,
    ShareSubmission,
    Signed,
    encode_batch,
    open_submission,
    reconstruct,
    seal_submissions,
    share,
)

NUM_CLASSES = 4


@given(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=1, max_size=20), st.integers(2, 7))
@settings(max_examples=200, deadline=None)
def test_shares_reconstruct_exactly(values, n):
    v = np.array(values, dtype=np.int64)
    s = share(v, n)
    assert s.shape == (n, len(values)) and s.dtype == np.uint64
    assert np.array_equal(reconstruct(s), v)
    # Dropping any one share loses the value (with overwhelming probability).
    if n > 2 and len(values) > 3:
        assert not np.array_equal(reconstruct(s[1:]), v)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_any_single_share_is_independent_of_the_vote(n):
    """What one party receives is statistically independent of the vote: for two
    very different votes, each party's shares have the same (uniform) distribution.
    Chi-square on the low and high bytes against uniform, and two-sample between votes."""
    count = 4000
    vote_a = np.zeros((count, NUM_CLASSES), np.int64)
    vote_a[:, 0] = SCALE
    vote_b = np.zeros((count, NUM_CLASSES), np.int64)
    vote_b[:, 3] = SCALE
    sa, sb = share(vote_a, n), share(vote_b, n)
    for party in range(n):
        for shift in (0, 56):                       # low byte and high byte
            a = ((sa[party, :, 0] >> np.uint64(shift)) & np.uint64(255)).astype(np.int64)
            b = ((sb[party, :, 0] >> np.uint64(shift)) & np.uint64(255)).astype(np.int64)
            ca, cb = np.bincount(a, minlength=256), np.bincount(b, minlength=256)
            assert stats.chisquare(ca).pvalue > 1e-4
            assert stats.chisquare(cb).pvalue > 1e-4
            assert stats.chi2_contingency(np.stack([ca, cb]) + 1).pvalue > 1e-4
    # Whereas all shares together reveal the vote exactly.
    assert np.array_equal(reconstruct(sa), vote_a)


def test_share_rejects_bad_inputs():
    with pytest.raises(VoteError, match="at least 2 parties"):
        share(np.zeros(3, np.int64), 1)
    with pytest.raises(VoteError, match="integer"):
        share(np.zeros(3), 3)


def _setup(n=3):
    parties = [PartyKeys.generate() for _ in range(n)]
    source_key = SigningKey.generate()
    return parties, source_key, {"inst-1": source_key.verify_key}


def test_round_trip_batch():
    parties, sk, keys = _setup()
    qids = ["q1", "q2", "q3"]
    votes = encode_batch([0, [0, 0, 1, 0], 3], NUM_CLASSES)
    assert votes.tolist() == [[0], [2], [3]]                  # one-hot votes travel as class indices
    msgs = seal_submissions("inst-1", sk, qids, votes, [p.public for p in parties], num_classes=NUM_CLASSES)
    opened = [open_submission(m, i, 3, parties[i].private, keys) for i, m in enumerate(msgs)]
    assert all(o.query_ids == tuple(qids) and o.source_id == "inst-1" and o.num_classes == 4 and
               o.encoding == "index" for o in opened)
    assert all(o.shares.min() >= 0 and o.shares.max() < NUM_CLASSES for o in opened)
    assert np.array_equal(np.stack([o.shares for o in opened]).sum(axis=0) % NUM_CLASSES, votes)
    # Simplex votes are rounded to m = 16 unit votes and travel as their 16 class indices.
    fmt = VoteFormat("simplex", consortium="c", source_id="inst-1")
    soft = encode_batch([[0.5, 0.5, 0, 0]], NUM_CLASSES, fmt, ["s"])
    assert soft.tolist() == [[0] * 8 + [1] * 8]
    msgs_soft = seal_submissions("inst-1", sk, ["s"], soft, [p.public for p in parties], kind=fmt,
                                 num_classes=NUM_CLASSES)
    opened_soft = [open_submission(m, i, 3, parties[i].private, keys) for i, m in enumerate(msgs_soft)]
    assert all(o.encoding == "index" and o.rows == 16 for o in opened_soft)
    assert np.array_equal(np.stack([o.shares for o in opened_soft]).sum(axis=0) % NUM_CLASSES, soft)
    # Each party's message carries only its own sealed share: another party cannot open it.
    with pytest.raises(SubmissionError, match="party 0 of 3, not party 1"):
        open_submission(msgs[0], 1, 3, parties[1].private, keys)


def test_honest_client_refuses_invalid_votes():
    with pytest.raises(VoteError, match="invalid vote"):
        encode_batch([[0.5, 0.5, 0, 0]], NUM_CLASSES)          # not one-hot
    with pytest.raises(VoteError, match="invalid vote"):
        encode_batch([7], NUM_CLASSES)
    fmt = VoteFormat("simplex", consortium="c", source_id="s")
    assert np.bincount(encode_batch([[0.5, 0.5, 0, 0]], NUM_CLASSES, fmt, ["q"])[0]).tolist() == [8, 8]


def _resign(msg: bytes, sk: SigningKey, **changes) -> bytes:
    from dvsecure.mpc.sharing import _DOMAIN
    signed = msgspec.msgpack.decode(msg, type=Signed)
    body = msgspec.msgpack.decode(signed.body, type=ShareSubmission)
    body = msgspec.structs.replace(body, **changes)
    raw = msgspec.msgpack.encode(body)
    return msgspec.msgpack.encode(Signed(source_id=signed.source_id, body=raw,
                                         signature=sk.sign(_DOMAIN + raw).signature))


def test_each_bad_submission_gets_a_specific_error():
    parties, sk, keys = _setup()
    msgs = seal_submissions("inst-1", sk, ["q1"], encode_batch([1], NUM_CLASSES), [p.public for p in parties],
                            num_classes=NUM_CLASSES)
    p0 = parties[0].private
    with pytest.raises(SubmissionError, match="malformed submission"):
        open_submission(b"\x00garbage", 0, 3, p0, keys)
    with pytest.raises(SubmissionError, match="unknown source"):
        open_submission(msgs[0], 0, 3, p0, {})
    # A flipped bit anywhere in the signed body or the signature: bad signature (or malformed).
    signed = msgspec.msgpack.decode(msgs[0], type=Signed)
    for pos in range(0, len(signed.body), 7):
        body = bytearray(signed.body)
        body[pos] ^= 0x01
        tampered = msgspec.msgpack.encode(Signed(source_id="inst-1", body=bytes(body), signature=signed.signature))
        with pytest.raises(SubmissionError, match="bad signature"):
            open_submission(tampered, 0, 3, p0, keys)
    sig = bytearray(signed.signature)
    sig[5] ^= 0x80
    with pytest.raises(SubmissionError, match="bad signature"):
        open_submission(msgspec.msgpack.encode(Signed(source_id="inst-1", body=signed.body, signature=bytes(sig))),
                        0, 3, p0, keys)
    # A source signing a body that names another source.
    keys2 = dict(keys, **{"inst-2": sk.verify_key})
    with pytest.raises(SubmissionError, match="names source"):
        open_submission(_resign(msgs[0], sk, source_id="inst-2"), 0, 3, p0, keys2)
    # Another source's key signing as inst-1: bad signature.
    with pytest.raises(SubmissionError, match="bad signature"):
        open_submission(_resign(msgs[0], SigningKey.generate()), 0, 3, p0, keys)
    # Validly signed but sealed to another key: does not decrypt.
    with pytest.raises(SubmissionError, match="does not decrypt"):
        open_submission(msgs[0], 0, 3, PartyKeys.generate().private, keys)
    # Validly signed, claiming more queries than the share holds.
    with pytest.raises(SubmissionError, match="holds 8 bytes, expected 16"):
        open_submission(_resign(msgs[0], sk, query_ids=["q1", "q2"]), 0, 3, p0, keys)
    with pytest.raises(SubmissionError, match="party 0 of 2"):
        open_submission(_resign(msgs[0], sk, num_parties=2), 0, 3, p0, keys)
    with pytest.raises(SubmissionError, match="unknown encoding 'bits'"):
        open_submission(_resign(msgs[0], sk, encoding="bits"), 0, 3, p0, keys)
    with pytest.raises(SubmissionError, match="holds 8 bytes, expected 32"):      # index share passed off as fixed
        open_submission(_resign(msgs[0], sk, encoding="fixed"), 0, 3, p0, keys)
    with pytest.raises(SubmissionError, match="version 1 is not 2"):
        open_submission(_resign(msgs[0], sk, v=1), 0, 3, p0, keys)


def test_seal_rejects_mismatched_batches():
    parties, sk, _ = _setup()
    pks = [p.public for p in parties]
    with pytest.raises(VoteError, match="shape"):
        seal_submissions("inst-1", sk, ["q1", "q2"], encode_batch([1], NUM_CLASSES), pks, num_classes=NUM_CLASSES)
    with pytest.raises(VoteError, match="distinct"):
        seal_submissions("inst-1", sk, ["q1", "q1"], encode_batch([1, 2], NUM_CLASSES), pks, num_classes=NUM_CLASSES)
    with pytest.raises(VoteError, match="0..3"):                  # an honest client never shares a bad index
        seal_submissions("inst-1", sk, ["q1"], np.array([[4]]), pks, num_classes=NUM_CLASSES)
    with pytest.raises(VoteError, match="num_classes"):
        seal_submissions("inst-1", sk, ["q1"], np.array([[0]]), pks, num_classes=1)
