"""A party draws a round's private noise while the round waits (`pending` with
`predraw`), at the scales its batch will use, and its batch then takes those
samples: the noise is the same distribution, drawn earlier."""
from __future__ import annotations

import time

from dvsecure.errors import SubmissionError
from dvsecure.mpc.evaluate import party_sigmas
from dvsecure.mpc.party import Party, decode_command
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy


def _policy(t=1):
    mech = MechanismPolicy("confident_gnmax", 4.0, sigma1=6.0, threshold=2.0)
    return ConsortiumPolicy(sources=tuple(SourcePolicy(f"s{i}", 0.2, 1.0, Budget("rho", 5.0)) for i in range(3)),
                            mechanism=mech, collusion_tolerance=t)


def _party(world):
    party = object.__new__(Party)          # only what _predraw touches: no CrypTen group needed
    party.world, party._noise, party._reserved = world, None, set()
    return party


def _wait(noise, sigma, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while noise.ready(sigma) < count:
        assert time.monotonic() < deadline, f"{noise.ready(sigma)} of {count} drawn ahead"
        time.sleep(0.02)


def test_pending_with_predraw_draws_the_batch_noise_at_the_party_scales():
    policy, party = _policy(), _party(3)
    party._predraw(policy, 50, 7)
    sigma1, sigma2 = party_sigmas(policy, 3, 7)
    assert sigma1 != sigma2
    _wait(party._noise, sigma1, 50)           # one threshold draw per query
    _wait(party._noise, sigma2, 350)          # C GNMax draws per query, if all are answered
    # The batch takes them (what evaluate_batch is handed for private noise).
    before = party._noise.ready(sigma2)
    assert len(party._noise.sample(sigma2, 70)) == 70 and party._noise.ready(sigma2) <= before


def test_predraw_asks_nothing_of_a_policy_the_batch_would_refuse():
    policy, party = _policy(t=3), _party(3)       # t >= n: the batch refuses it, naming why
    try:
        party_sigmas(policy, 3, 5)
    except SubmissionError:
        pass
    else:
        raise AssertionError("t >= n accepted")
    party._predraw(policy, 10, 5)                 # no exception: best effort only
    party._predraw(policy, 10, 0)                 # nor for a class count out of range
    assert party._noise is None or not party._noise._pools


def test_pending_command_carries_predraw_and_still_decodes_without_it():
    import msgspec

    raw = msgspec.msgpack.encode({"op": "pending", "policy": "x", "query_ids": ["q1"], "predraw": 10})
    assert decode_command(raw)["predraw"] == 10
    raw = msgspec.msgpack.encode({"op": "pending", "policy": "x", "query_ids": ["q1"]})
    assert decode_command(raw)["predraw"] is None


def test_only_the_latest_rounds_scales_stay_reserved():
    first = _policy()
    second = ConsortiumPolicy(sources=first.sources, mechanism=MechanismPolicy("gnmax", 9.0))
    party = _party(3)
    party._predraw(first, 20, 4)
    old = set(party_sigmas(first, 3, 4))
    party._predraw(second, 20, 4)                 # another round whose scales are other ones
    _, new = party_sigmas(second, 3, 4)
    assert new not in old
    with party._noise._lock:
        assert party._noise._pools[float(new)].reserved == 80
        for sigma in old:
            assert party._noise._pools[float(sigma)].reserved == 0
