"""Simplex votes as m class indices (issue 13): a probability vector is rounded to
m unit votes once, by the one quantiser (`mechanism.votes`), so the source's MPC
client, the plaintext backend and calibration hold the same histogram; under MPC
it travels as m shared class indices — a party receives index shares only — and
with no noise the MPC backend releases and charges exactly what the plaintext
backend does on streams mixing one-hot, slice and simplex sources, ties included."""
from __future__ import annotations

from fractions import Fraction

import msgspec
import numpy as np
import pytest
from nacl.public import SealedBox
from nacl.signing import SigningKey
from test_slice_backends import run  # the same batched run, both backends, C = 4

from dvsecure.backends.mpc import MPCBackend, _client_encoding
from dvsecure.backends.plaintext import PlaintextBackend
from dvsecure.engine.calibration import PrivateCalibration, accuracy_sum
from dvsecure.engine.ledger import Ledger
from dvsecure.errors import ParameterError, VoteError
from dvsecure.mechanism.filter import SHRUNK, BudgetFilter
from dvsecure.mechanism.fixedpoint import SCALE
from dvsecure.mechanism.release import tally
from dvsecure.mechanism.votes import encode_vote, encode_votes, slice_histogram
from dvsecure.mpc import sharing
from dvsecure.mpc.evaluate import _relayed_inputs, vote_encodings, vote_rows
from dvsecure.mpc.sharing import INDEX, PartyKeys, encode_batch, open_submission, seal_submissions
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy

C = 4


class WholeBatchPlaintext(PlaintextBackend):
    evaluates_whole_batch = True


def mixed_policy(rng, name: str) -> ConsortiumPolicy:
    """One-hot, slice (m = 3) and simplex sources at resolutions 4, 16 and 64, with
    random bands and budgets (some run out: exclude, or shrink onto their grid)."""
    specs = [dict(votes="one-hot"), dict(unit="slice", slices=3), dict(votes="simplex", resolution=4),
             dict(votes="simplex"), dict(votes="simplex", resolution=64)]
    srcs = []
    for i, spec in enumerate(specs):
        hi = float(rng.uniform(0.3, 0.6))
        srcs.append(SourcePolicy(f"src{i}", float(rng.uniform(0.0, hi / 2)), hi,
                                 Budget("rho", float(rng.uniform(3.0, 30.0))),
                                 on_exhaustion=("shrink", "exclude")[i % 2], **spec))
    mech = MechanismPolicy("confident_gnmax", float(rng.uniform(0.5, 2)), sigma1=float(rng.uniform(0.5, 2)),
                           threshold=float(rng.uniform(0.1, 0.6)))
    return ConsortiumPolicy(sources=tuple(srcs), mechanism=mech, name=name)


def random_vote(rng, src, bad=True):
    r = rng.random()
    if r < 0.08:
        return None
    if bad and r < 0.16:
        return [[0.5, 0.6, 0, 0], [2, -1, 0, 0], [0.5, 0.5, 0, 0], 7, ["1", 0, 0, 0]][rng.integers(5)]
    if src.slices > 1:
        return slice_histogram(rng.integers(0, C, src.slices).tolist(), C)
    if src.votes == "simplex" and r < 0.7:
        return rng.dirichlet(np.ones(C) * 0.7).tolist()
    return int(rng.integers(C))


def same_outcome(got, ref):
    assert [(r.answered, r.label) for r in got[0]] == [(r.answered, r.label) for r in ref[0]]
    assert [[(p.gamma, p.status, p.reason) for p in r.participants] for r in got[0]] == \
        [[(p.gamma, p.status, p.reason) for p in r.participants] for r in ref[0]]
    assert got[1] == ref[1] and got[2] == ref[2]


@pytest.fixture(scope="module")
def mpc():
    backend = MPCBackend(num_parties=3, timeout=120)
    yield backend
    backend.close()


# ---------------------------------------------------------------- one quantiser

def test_every_encoder_holds_the_same_histogram_of_a_simplex_vote():
    """The plaintext backend's encoding, the MPC client's indices (relayed, and as a
    networked source sends them), and calibration's accuracy sum: one rounding."""
    rng = np.random.default_rng(0)
    policy = mixed_policy(rng, "one-quantiser")
    for src in policy.sources[2:]:
        fmt, m = src.vote_format, src.resolution
        for t in range(40):
            vote, qid = rng.dirichlet(np.ones(C)).tolist(), f"q{t}"
            fixed, problems = encode_votes([vote], [fmt], C, qid)
            counts = fixed[0] // SCALE
            assert problems == [None] and counts.sum() == m
            assert np.array_equal(fixed[0], encode_vote(vote, C, fmt, qid))
            for indices in (encode_batch([vote], C, fmt, [qid])[0], _client_encoding(vote, C, fmt, qid)):
                assert indices.shape == (m,) and np.array_equal(np.bincount(indices, minlength=C), counts)
            label = int(rng.integers(C))
            assert accuracy_sum(vote, label, C, fmt, qid) == counts[label] * SCALE
    # without its source and query a simplex vote has no rounding: a caller's mistake, said so
    with pytest.raises(ParameterError, match="query id"):
        encode_batch([[0.5, 0.5, 0, 0]], C, policy.sources[3].vote_format)
    with pytest.raises(ParameterError, match="pass the queries' ids"):
        PlaintextBackend().evaluate(np.zeros((1, 5), np.int64), [[None] * 5], [s.vote_format for s in policy.sources],
                                    C, policy.mechanism, make_noise("no_noise"))


def test_an_invalid_simplex_vote_is_not_sent_and_has_the_plaintext_reason():
    fmt = mixed_policy(np.random.default_rng(1), "invalid").sources[3].vote_format
    for vote in ([0.5, 0.6, 0, 0], [2.0, -1.0, 0, 0], [True, False, False, False], 9, [0.5, 0.5]):
        _, problems = encode_votes([vote], [fmt], C, "q")
        assert problems[0].startswith("invalid: ")
        assert _client_encoding(vote, C, fmt, "q") == problems[0]


def test_a_shrunk_simplex_weight_stays_on_its_grid():
    """The filter's shrink floors to the source's grid (multiples of m * 2**-16), so
    gamma/m stays exact; the charge still fits what is left."""
    mech = MechanismPolicy("gnmax", 1.0)
    src = SourcePolicy("s", 0.01, 0.5, Budget("rho", 10.0), on_exhaustion="shrink", votes="simplex", resolution=64)
    flt = BudgetFilter(mech)
    for remaining in (Fraction(1, 30), Fraction(1, 7), Fraction(2, 9)):
        d = flt.decide(src, src.grid_max, Fraction(0), remaining)
        assert d.status == SHRUNK and src.on_grid(d.gamma) and round(d.gamma * SCALE) % 64 == 0
        assert flt.worst_case(d.gamma) <= remaining < flt.worst_case(d.gamma + 64 / SCALE)


# ---------------------------------------------------------------- what a party receives

def test_a_party_receives_only_index_shares_for_a_simplex_source():
    policy = mixed_policy(np.random.default_rng(2), "party-view")
    src = policy.sources[4]                                        # simplex, m = 64
    assert vote_encodings(policy) == [INDEX] * 5 and vote_rows(policy) == [1, 3, 4, 16, 64]
    parties = [PartyKeys.generate() for _ in range(3)]
    key = SigningKey.generate()
    votes = [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], 2]
    qids = ["a", "b", "c"]
    encoded = encode_batch(votes, C, src.vote_format, qids)
    messages = seal_submissions(src.id, key, qids, encoded, [p.public for p in parties], kind=src.vote_format,
                                num_classes=C)
    opened = []
    for rank, (p, msg) in enumerate(zip(parties, messages)):
        got = open_submission(msg, rank, 3, p.private, {src.id: key.verify_key})
        assert (got.encoding, got.rows) == (INDEX, 64)
        # what the party decrypts is 64 words per vote, nothing of C entries
        body = msgspec.msgpack.decode(msgspec.msgpack.decode(msg, type=sharing.Signed).body,
                                      type=sharing.ShareSubmission)
        assert len(SealedBox(p.private).decrypt(body.sealed)) == 8 * 3 * 64
        assert got.shares.dtype == np.int64 and got.shares.shape == (3, 64)
        assert got.shares.min() >= 0 and got.shares.max() < C
        opened.append(got.shares)
    indices = np.sum(opened, axis=0) % C
    for vote, qid, k in zip(votes, qids, indices):
        assert np.array_equal(np.bincount(k, minlength=C) * SCALE, encode_vote(vote, C, src.vote_format, qid))
    # Party 0 fills the source's 64 index rows with its shares; a fixed-point vector for a
    # simplex source (the old encoding) is not its policy's, and no party takes it.
    cmd = {"source_keys": {src.id: bytes(key.verify_key)}, "source_ids": list(policy.ids), "query_ids": qids}
    rows, encodings, first = vote_rows(policy), vote_encodings(policy), sum(vote_rows(policy)[:4])
    _, k_rows, opened_at = _relayed_inputs(dict(cmd, messages=[[messages[0]]]), 0, 3, parties[0].private, rows,
                                           encodings, 3, C)
    assert opened_at[4].tolist() == [1, 1, 1] and np.array_equal(k_rows[first:], opened[0].T)
    _, _, opened_at = _relayed_inputs(dict(cmd, messages=[[_fixed_submission(src.id, key, parties[0], C)]]), 0, 3,
                                      parties[0].private, rows, encodings, 3, C)
    assert not opened_at.any()


def _fixed_submission(source_id, key, party, num_classes):
    body = msgspec.msgpack.encode(sharing.ShareSubmission(
        v=sharing.VERSION, source_id=source_id, query_ids=["a"], num_classes=num_classes, party_index=0,
        num_parties=3, sealed=bytes(SealedBox(party.public).encrypt(bytes(8 * num_classes))), rows=1,
        encoding=sharing.FIXED))
    signature = key.sign(sharing._DOMAIN + body).signature
    return msgspec.msgpack.encode(sharing.Signed(source_id=source_id, body=body, signature=signature))


def test_the_wire_refuses_a_simplex_vote_given_as_a_vector():
    src = mixed_policy(np.random.default_rng(3), "wire").sources[3]
    parties = [PartyKeys.generate() for _ in range(3)]
    with pytest.raises(VoteError, match=r"shape \[1, 16\]"):
        seal_submissions(src.id, SigningKey.generate(), ["q"], np.array([[SCALE // 2, SCALE // 2, 0, 0]]),
                         [p.public for p in parties], kind=src.vote_format, num_classes=C)


# ---------------------------------------------------------------- backends agree

@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_no_noise_mpc_equals_plaintext_mixing_one_hot_slice_and_simplex(mpc, tmp_path, seed):
    rng = np.random.default_rng(200 + seed)
    policy = mixed_policy(rng, f"simplex-indices-{seed}")
    items = [(f"q{q}", {s.id: random_vote(rng, s) for s in policy.sources}) for q in range(32)]
    ref = run(policy, items, WholeBatchPlaintext(), tmp_path / "p.sqlite")
    got = run(policy, items, mpc, tmp_path / "m.sqlite")
    same_outcome(got, ref)
    for r in got[0]:
        for p, src in zip(r.participants, policy.sources):
            assert round(p.gamma * SCALE) % src.grid_step == 0          # every weight on its grid
    statuses = {p.status for r in got[0] for p in r.participants if p.source_id in ("src2", "src3", "src4")}
    assert {"active", "excluded:invalid"} <= statuses, statuses


@pytest.mark.slow
def test_ties_break_to_the_lowest_index_exactly_as_in_plaintext(mpc, tmp_path):
    """Equal weights and coarse votes: many queries end with two or more classes at
    the top tally; the label is the lowest of them on both backends."""
    srcs = (SourcePolicy("one", 0.25, 0.25, Budget("rho", 1e6)),
            SourcePolicy("sl", 0.25, 0.25, Budget("rho", 1e6), unit="slice", slices=4),
            SourcePolicy("sx4", 0.25, 0.25, Budget("rho", 1e6), votes="simplex", resolution=4),
            SourcePolicy("sx16", 0.25, 0.25, Budget("rho", 1e6), votes="simplex"))
    policy = ConsortiumPolicy(sources=srcs, mechanism=MechanismPolicy("gnmax", 1.0), name="simplex-ties")
    rng = np.random.default_rng(9)
    coarse = [[0.5, 0.5, 0, 0], [0, 0.5, 0, 0.5], [0.25, 0.25, 0.25, 0.25], [0.75, 0, 0.25, 0], [0, 0, 1, 0],
              [0.3, 0.3, 0.2, 0.2], [0.45, 0.05, 0.45, 0.05]]

    def vote(src):
        if src.unit == "slice":
            return slice_histogram(rng.integers(0, C, 4).tolist(), C)
        if src.votes == "simplex":
            return coarse[rng.integers(len(coarse))]
        return int(rng.integers(C))
    items = [(f"t{q}", {s.id: vote(s) for s in srcs}) for q in range(120)]
    ref = run(policy, items, WholeBatchPlaintext(), tmp_path / "p.sqlite", batch=24)
    got = run(policy, items, mpc, tmp_path / "m.sqlite", batch=24)
    same_outcome(got, ref)
    kinds = [s.vote_format for s in policy.sources]           # bound to the consortium: they can round
    gammas = np.array([round(s.grid_max * SCALE) for s in srcs], np.int64)
    ties = 0
    for (qid, votes), r in zip(items, got[0]):
        fixed, _ = encode_votes([votes[s.id] for s in srcs], kinds, C, qid)
        v = tally(gammas, fixed, [k.units for k in kinds])
        top = np.flatnonzero(v == v.max())
        ties += len(top) > 1
        assert r.answered and r.label == top[0]
    assert ties >= 8, ties


@pytest.mark.slow
def test_calibration_on_mpc_equals_plaintext_with_simplex_sources(mpc, tmp_path):
    """The parties' accuracy sums count each source's unit votes on the label; the
    plaintext calibration rounds the same simplex votes for the same labelled query
    ids: the same released accuracies and weights."""
    rng = np.random.default_rng(4)
    srcs = (SourcePolicy("one", 0.1, 0.6, Budget("rho", 50.0)),
            SourcePolicy("sl", 0.1, 0.6, Budget("rho", 50.0), unit="slice", slices=3),
            SourcePolicy("sx", 0.1, 0.6, Budget("rho", 50.0), votes="simplex"),
            SourcePolicy("sx2", 0.1, 0.6, Budget("rho", 50.0), votes="simplex", resolution=2))
    policy = ConsortiumPolicy(sources=srcs, mechanism=MechanismPolicy("gnmax", 1.0), name="simplex-calibration",
                              calibration=CalibrationPolicy(0.5))
    labels = rng.integers(0, C, 30).tolist()
    votes = [[y, slice_histogram([y, y, int(rng.integers(C))], C),
              rng.dirichlet(np.ones(C) + 3 * np.eye(C)[y]).tolist(), rng.dirichlet(np.ones(C)).tolist()]
             for y in labels]
    ids = [f"cal/t{t}" for t in range(len(labels))]
    with Ledger(tmp_path / "p.sqlite", policy) as ledger:
        ref = PrivateCalibration(policy, ledger, make_noise("no_noise")).run("cal", votes, labels, C, ids)
    with Ledger(tmp_path / "m.sqlite", policy) as ledger:
        got = PrivateCalibration(policy, ledger, make_noise("no_noise"), backend=mpc).run("cal", votes, labels, C, ids)
    assert got.noisy_accuracy == ref.noisy_accuracy and got.weights == ref.weights
    # the released accuracy is the mean share of unit votes on the label, of the rounded votes
    for j, src in enumerate(policy.sources[2:], start=2):
        units = sum(int(encode_vote(v[j], C, src.vote_format, q)[y]) // SCALE for v, y, q in zip(votes, labels, ids))
        assert ref.noisy_accuracy[src.id] == units / (len(labels) * src.resolution)
        assert src.on_grid(ref.weights[src.id])
