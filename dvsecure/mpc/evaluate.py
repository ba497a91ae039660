"""One batch at one computing party: open its sealed shares, agree on which
submissions opened, run the secure pipeline (`secure.py`), and make its charges
durable (`party_ledger.py`) before any label can be reconstructed."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..errors import DvsecureError, SubmissionError
from ..fixedpoint import threshold_to_tally
from ..noise import make_noise
from ..policy import ONE_HOT
from ..sharing import open_submission
from . import secure


def _noise_shares(crypten, noise, sigma, shape):
    """This party's own discrete Gaussian N_Z(0, sigma^2) draws, as its share of a
    shared tensor (the other parties contribute theirs): a local addition, no
    communication. Privacy against any coalition of at most t parties rests on
    the h = n - t honest parties' draws: with h = 1 the one honest draw is the
    plaintext noise (data processing; CKS 2020 Thm 4/14); with h >= 2 their sum
    is analysed by Kairouz, Liu & Steinke 2021 Prop. 14 (`party_sigmas`)."""
    import torch

    count = int(np.prod(shape))
    draws = noise.sample(sigma, count).reshape(shape) if count else np.zeros(shape, np.int64)
    return crypten.mpc.MPCTensor.from_shares(torch.from_numpy(np.ascontiguousarray(draws, dtype=np.int64)),
                                             precision=0)


def party_sigmas(policy, world: int, num_classes: int):
    """This party's own noise scales (threshold, GNMax) on the tally grid, from
    the policy alone: scaled so that the h = n - t honest parties' draws together
    cost no more than the plaintext charge (`accounting.distributed`)."""
    from ..accounting.distributed import party_noise_scale
    from ..fixedpoint import sigma_on_tally_grid

    mech, t = policy.mechanism, policy.collusion_tolerance
    if t >= world:
        raise SubmissionError(f"the policy tolerates {t} colluding parties but only {world} compute; "
                              "it needs at least t + 1")
    sigma1 = Fraction(party_noise_scale(sigma_on_tally_grid(mech.sigma1), world, t, 1)) if mech.confident \
        else None
    return sigma1, Fraction(party_noise_scale(sigma_on_tally_grid(mech.sigma2), world, t, num_classes))


def evaluate_batch(crypten, cmd: dict, rank: int, world: int, party_key, ledger, peers) -> dict:
    """One batch at one party. Reveals, in order: which sources every party could
    open, the pass/fail bit of each vote, the answered bits; then, once this
    party's charges are durable (and every other party's, or the labels cannot
    be reconstructed), the labels of answered queries."""
    import torch
    from nacl.signing import VerifyKey

    from .party import job_arrays

    policy = ledger.policy
    source_ids, query_ids, C = list(cmd["source_ids"]), list(cmd["query_ids"]), int(cmd["num_classes"])
    error = None
    if tuple(source_ids) != tuple(policy.ids):
        error = "the batch's sources are not the policy's, in the policy's order"
    try:
        sigma1, sigma2 = party_sigmas(policy, world, C)
    except DvsecureError as e:
        error = str(e)
    peers.agree(error)
    S, Q = len(source_ids), len(query_ids)
    present, gammas_np = job_arrays(cmd)
    source_keys = {sid: VerifyKey(k) for sid, k in cmd["source_keys"].items()}
    col = {sid: j for j, sid in enumerate(source_ids)}
    row = {qid: i for i, qid in enumerate(query_ids)}
    x = torch.zeros((S, Q, C), dtype=torch.long)
    opened = torch.zeros(S, dtype=torch.long)
    for message in cmd["messages"][rank]:
        try:
            got = open_submission(message, rank, world, party_key, source_keys)
            j = col[got.source_id]
            if got.num_classes != C or any(q not in row for q in got.query_ids):
                raise SubmissionError(f"submission of {got.source_id!r} is for other queries or classes")
        except (SubmissionError, KeyError):
            continue                  # this party could not open it: the source does not count
        for k, qid in enumerate(got.query_ids):
            x[j, row[qid]] = torch.from_numpy(got.shares[k].view(np.int64))
        opened[j] = 1
    # Every party must have opened a source's submission for it to count.
    agreed = crypten.communicator.get().all_reduce(opened) == world     # returns a new tensor

    one_hot = [s.votes == ONE_HOT for s in policy.sources]
    shared = crypten.mpc.MPCTensor.from_shares(x, precision=0)
    valid = secure.validate(shared, one_hot)                                        # reveal: validity
    valid = valid & torch.from_numpy(present.T.copy()) & agreed.unsqueeze(1)
    gammas = torch.from_numpy(gammas_np) * valid.t().long()
    tallies = secure.tally(secure.to_tally_scale(shared, one_hot), gammas)
    seed = cmd["noise_seeds"][rank] if cmd.get("noise_seeds") else None
    noise = make_noise(cmd["noise_mode"], seed)
    if not policy.mechanism.confident:
        answered = torch.ones(Q, dtype=torch.bool)
    else:
        top, _ = secure.argmax_tree(tallies)
        noisy_top = top + _noise_shares(crypten, noise, sigma1, (Q,))
        threshold = threshold_to_tally(policy.mechanism.threshold)
        answered = (noisy_top - threshold).ge(0).get_plain_text().long().bool()     # reveal: answered bits

    # Charges durable here before this party sends its share of any label.
    error = None
    try:
        ledger.record_charges(query_ids, gammas.numpy(), answered.numpy(), cmd["noise_mode"])
    except DvsecureError as e:
        error = str(e)
    peers.agree(error)

    rows = torch.nonzero(answered).flatten()
    labels = torch.full((Q,), -1, dtype=torch.long)
    if rows.numel():
        noisy = tallies[rows] + _noise_shares(crypten, noise, sigma2, (int(rows.numel()), C))
        _, index = secure.argmax_tree(noisy)
        labels[rows] = index.get_plain_text().long()                                # reveal: labels of answered
    ledger.record_labels(query_ids, labels.tolist())
    return {"valid": valid.t().numpy().tobytes(), "answered": answered.numpy().tobytes(),
            "labels": labels.numpy().astype("<i8").tobytes(), "agreed": agreed.numpy().astype(bool).tobytes()}
