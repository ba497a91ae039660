"""Slice-unit sources on every backend (issue 12): with no noise MPC releases and
charges exactly what the plaintext backend does on random streams mixing
source- and slice-unit sources; whatever shares a slice-unit source sends count as
one histogram of m votes and cannot move the tally further; the enclave releases the
plaintext labels and charges on streams whose margins no noise can flip."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dvsecure.backends.mpc import MPCBackend
from dvsecure.backends.plaintext import PlaintextBackend
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.mechanism.release import tally
from dvsecure.mechanism.votes import encode_votes, slice_histogram
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SignerPolicy, SourcePolicy

C = 4


class WholeBatchPlaintext(PlaintextBackend):
    evaluates_whole_batch = True


def mixed_policy(rng, name="mixed", signers=None) -> ConsortiumPolicy:
    """Two source-unit sources (one-hot, simplex) and two slice-unit ones (m = 3, 5)."""
    srcs = []
    for i, (unit, m, votes) in enumerate([("source", 1, "one-hot"), ("source", 1, "simplex"),
                                          ("slice", 3, None), ("slice", 5, None)]):
        hi = float(rng.uniform(0.3, 0.6))
        srcs.append(SourcePolicy(f"src{i}", float(rng.uniform(0.0, hi / 2)), hi,
                                 Budget("rho", float(rng.uniform(0.3, 2.0))),
                                 on_exhaustion=("shrink", "exclude")[i % 2], votes=votes, unit=unit, slices=m))
    mech = MechanismPolicy("confident_gnmax", float(rng.uniform(0.5, 2)), sigma1=float(rng.uniform(0.5, 2)),
                           threshold=float(rng.uniform(0.1, 0.6)))
    return ConsortiumPolicy(sources=tuple(srcs), mechanism=mech, name=name, signers=signers)


BAD_HISTOGRAMS = [[4, 0, 0, 0], [2, 2, 1, -1], [6, 0, 0, -1], [1, 1, 0, 0], [1.5, 1.5, 0, 0], [0, 0, 0, 0]]


def random_vote(rng, src, bad=True, absent=True):
    r = rng.random()
    if r < 0.1:
        return None if absent else int(rng.integers(C))
    if src.slices > 1:
        if bad and r < 0.25:
            return BAD_HISTOGRAMS[rng.integers(len(BAD_HISTOGRAMS))]
        return slice_histogram(rng.integers(0, C, src.slices).tolist(), C)
    if src.votes == "simplex" and r < 0.6:
        return rng.dirichlet(np.ones(C)).tolist()
    return int(rng.integers(C))


def run(policy, items, backend, path, batch=8):
    with Ledger(path, policy) as ledger:
        agg = Aggregator(policy, ledger, backend=backend, noise=make_noise("no_noise"))
        results = []
        for i in range(0, len(items), batch):
            results += agg.query_batch(items[i:i + batch], C)
        return results, ledger.spent(), [ledger.charges(s.id) for s in policy.sources]


@pytest.fixture(scope="module")
def mpc():
    backend = MPCBackend(num_parties=3, timeout=120)
    yield backend
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_no_noise_mpc_equals_plaintext_with_slice_sources(mpc, tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    policy = mixed_policy(rng)
    items = [(f"q{q}", {s.id: random_vote(rng, s) for s in policy.sources}) for q in range(24)]
    ref = run(policy, items, WholeBatchPlaintext(), tmp_path / "p.sqlite")
    got = run(policy, items, mpc, tmp_path / "m.sqlite")
    assert [(r.answered, r.label) for r in got[0]] == [(r.answered, r.label) for r in ref[0]]
    assert [[(p.gamma, p.status) for p in r.participants] for r in got[0]] == \
        [[(p.gamma, p.status) for p in r.participants] for r in ref[0]]
    assert got[1] == ref[1] and got[2] == ref[2]
    slice_statuses = {p.status for r in got[0] for p in r.participants if p.source_id in ("src2", "src3")}
    assert {"active", "excluded:invalid"} <= slice_statuses
    assert any(c.slices == 5 for c in got[2][3])             # charged at the slice unit


@pytest.mark.slow
def test_any_slice_shares_count_as_exactly_one_histogram_of_m_votes(mpc, tmp_path, monkeypatch):
    """A slice-unit source (m = 3) that bypasses the honest client and sends its
    parties any 64-bit words as shares of its 3 slices' class indices: huge,
    wrapping, random. The parties read them modulo C, so together they are some 3
    class indices: the source counts as exactly that histogram of 3 slice votes at
    its weight, never more — each release is the plaintext release of that vote."""
    import dvsecure.backends.mpc as backend_module
    import dvsecure.mpc.sharing as sharing

    ring = 1 << 64
    tricks = [                                                     # [slice][party] words
        [[ring - 1, 1, 0], [1 << 63, 1 << 63, 2], [5, 7, 11]],
        [[2, 0, 0], [2, 0, 0], [2, 0, 0]],                          # all three slices on class 2
        [[1 << 40, 0, 0], [ring - (1 << 40), 1, 0], [3, 3, 3]],
        np.random.default_rng(7).integers(0, ring, size=(3, 3), dtype=np.uint64).tolist(),
    ]
    real_seal, real_shares = backend_module.seal_submissions, sharing.index_shares

    def seal(source_id, key, query_ids, encoded, party_keys, commitments=(), **kw):
        if source_id != "s":
            return real_seal(source_id, key, query_ids, encoded, party_keys, commitments, **kw)
        words = np.array([tricks[int(q[1:])] for q in query_ids], dtype=np.uint64)       # [Q, slice, party]
        monkeypatch.setattr(sharing, "index_shares", lambda *a: words.transpose(2, 0, 1).copy().view(np.int64))
        try:
            return real_seal(source_id, key, query_ids, encoded, party_keys, commitments, **kw)
        finally:
            monkeypatch.setattr(sharing, "index_shares", real_shares)
    monkeypatch.setattr(backend_module, "seal_submissions", seal)
    policy = ConsortiumPolicy(
        sources=(SourcePolicy("a", 0.25, 0.25, Budget("rho", 100.0)),
                 SourcePolicy("b", 0.25, 0.25, Budget("rho", 100.0)),
                 SourcePolicy("s", 0.375, 0.375, Budget("rho", 100.0), unit="slice", slices=3)),
        mechanism=MechanismPolicy("gnmax", 1.0), name="slice-malice")
    # The honest client is asked for some histogram; the shares sent are the tricks above.
    items = [(f"c{k}", {"a": 1, "b": 2, "s": [3, 0, 0, 0]}) for k in range(len(tricks))]
    got, _, _ = run(policy, items, mpc, tmp_path / "c.sqlite", batch=len(items))
    implied = [[int(sum(int(w) for w in slice_words) % 4) for slice_words in t] for t in tricks]
    reference = [(f"r{k}", {"a": 1, "b": 2, "s": np.bincount(ks, minlength=4).tolist()})
                 for k, ks in enumerate(implied)]
    ref, _, _ = run(policy, reference, WholeBatchPlaintext(), tmp_path / "r.sqlite", batch=len(reference))
    assert implied[1] == [2, 2, 2] and len({tuple(k) for k in implied}) > 2
    for r, e in zip(got, ref):
        p = r.participant("s")
        assert p.status == "active" and p.gamma == 0.375
        assert (r.answered, r.label) == (e.answered, e.label)
    assert got[1].label == 2                                       # its full weight, on class 2: it decides


@pytest.mark.slow
def test_enclave_releases_the_plaintext_labels_and_charges_with_slice_sources(tmp_path):
    """The enclave adds private noise only, so the stream is chosen with margins
    (top two tallies, and the top against the threshold) of at least 40 sigma:
    no draw of the noise can change a release (probability below 1e-300)."""
    import sys
    from pathlib import Path

    from dvsecure.audit.check import audit
    from dvsecure.tee.protocol import enclave_measurement

    sys.path.insert(0, str(Path(__file__).with_name("tee")))     # the enclave tests' deployment harness
    from enclave_harness import deployed

    rng = np.random.default_rng(5)
    policy = mixed_policy(rng, "enclave-slices", SignerPolicy(enclave_pcr0=enclave_measurement().hex()))
    # Budgets that such small noise cannot exhaust: every source takes part at its ceiling.
    policy = ConsortiumPolicy(sources=tuple(dataclasses.replace(s, budget=Budget("rho", 1e12)) for s in policy.sources),
                              name=policy.name, signers=policy.signers,
                              mechanism=MechanismPolicy("confident_gnmax", 0.002, sigma1=0.002, threshold=0.3))
    kinds = [s.vote_format for s in policy.sources]
    weights = np.array([[s.grid_max * 65536 for s in policy.sources]], np.int64)
    units = [k.units for k in kinds]
    items = []
    while len(items) < 30:
        qid = f"e{len(items)}"
        votes = {s.id: random_vote(rng, s, bad=len(items) % 2 == 0, absent=False) for s in policy.sources}
        fixed, problems = encode_votes(list(votes.values()), kinds, C, qid)     # simplex votes rounded as for qid
        w = weights * np.array([[p is None for p in problems]])
        v = np.sort(tally(w, fixed[None], units)[0]) / 2.0 ** 32
        if v[-1] - v[-2] >= 0.08 and abs(v[-1] - 0.3) >= 0.08:
            items.append((qid, votes))
    ref, ref_spent, ref_charges = run(policy, items, PlaintextBackend(), tmp_path / "p.sqlite", batch=10)
    with deployed(tmp_path / "enc", policy=policy) as dep:
        released = []
        for b in range(0, len(items), 10):
            batch = items[b:b + 10]
            qids = [q for q, _ in batch]
            released += dep.batch(qids, {s.id: [v[s.id] for _, v in batch] for s in policy.sources})
        assert dep.check() == []
        report = audit(dep.out, enclave_pcr0=dep.pcr0, enclave_principals=dep.principals,
                       trusted_sim_roots=dep.roots)
    assert [(r.answered, r.label if r.HasField("label") else None) for r in released] == \
        [(r.answered, r.label) for r in ref]
    assert {s.id: s.spent_rho for s in report.sources} == {k: float(v) for k, v in ref_spent.items()}
    assert any(p.status == "excluded:invalid" for r in ref for p in r.participants if p.source_id in ("src2", "src3"))


@pytest.mark.parametrize("vote", [[0, 1.2, 0, 0], [0, 1.4, -0.3, 0], [True, False, False, False], ["1", 0, 0, 0],
                                  [0.5, 0.5, 0, 0]])
def test_a_malformed_vote_is_invalid_on_mpc_exactly_as_in_plaintext(vote):
    """The MPC backend's stand-in for a misbehaving source sends nothing for a vote
    that has no index encoding, with the plaintext backend's reason."""
    from dvsecure.backends.mpc import _client_encoding
    from dvsecure.mechanism.votes import VoteFormat

    simplex = VoteFormat("simplex", resolution=16, consortium="c", source_id="s")
    for kind in ("one-hot", VoteFormat("histogram", 3), simplex):
        if kind is simplex and vote == [0.5, 0.5, 0, 0]:
            continue                            # a valid simplex vote
        _, problems = encode_votes([vote], [kind], C, "q")
        assert problems[0].startswith("invalid")
        # Every kind travels as class indices: an invalid vote has none, so nothing is sent.
        assert _client_encoding(vote, C, kind, "q") == problems[0]


@pytest.mark.parametrize("vote", [[True, False, True, False], ["1", "0", "0", "0"], "0100"])
def test_the_enclave_client_refuses_a_vote_that_is_not_numeric(vote):
    from dvsecure.errors import VoteError
    from dvsecure.tee.client import _vote_message

    with pytest.raises(VoteError, match="vector of numbers"):
        _vote_message(vote, bytes(32))
    msg, value = _vote_message([0, 3, 1, 0], bytes(32))
    assert msg.WhichOneof("value") == "counts" and value == [0, 3, 1, 0]
