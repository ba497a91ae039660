"""One batch at one computing party: open its sealed shares, agree on which
submissions opened, and run the secure pipeline (`secure.py`)."""
from __future__ import annotations

import numpy as np

from ..errors import SubmissionError
from ..noise import make_noise
from ..sharing import open_submission
from . import secure


def _noise_shares(crypten, noise, sigma, shape):
    """This party's own discrete Gaussian N_Z(0, sigma^2) draws, as its share of a
    shared tensor (the other parties contribute theirs): a local addition, no
    communication. Privacy: whichever single party is honest, its draw alone is
    the plaintext mechanism's noise, and the others' draws are independent of
    the data, so by the data-processing inequality for Rényi divergence the
    release is at least as private as the plaintext release and is charged the
    same (DESIGN §3, §4; CKS 2020 Thm 4/14 for the discrete Gaussian itself)."""
    import torch

    count = int(np.prod(shape))
    draws = noise.sample(sigma, count).reshape(shape) if count else np.zeros(shape, np.int64)
    return crypten.mpc.MPCTensor.from_shares(torch.from_numpy(np.ascontiguousarray(draws, dtype=np.int64)),
                                             precision=0)


def evaluate_batch(crypten, job, rank: int, world: int, party_key, source_keys) -> dict:
    import torch

    S, Q, C = len(job.source_ids), len(job.query_ids), job.num_classes
    col = {sid: j for j, sid in enumerate(job.source_ids)}
    row = {qid: i for i, qid in enumerate(job.query_ids)}
    x = torch.zeros((S, Q, C), dtype=torch.long)
    opened = torch.zeros(S, dtype=torch.long)
    for message in job.messages:
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

    shared = crypten.mpc.MPCTensor.from_shares(x, precision=0)
    valid = secure.validate(shared, job.one_hot).get_plain_text().long().bool()     # reveal: pass/fail bits
    present = torch.from_numpy(job.present.T.copy())                               # [S, Q]
    valid = valid & present & agreed.unsqueeze(1)
    gammas = torch.from_numpy(job.gammas) * valid.t().long()
    tallies = secure.tally(shared, gammas)
    noise = make_noise(job.noise_mode, job.noise_seed)
    if job.threshold is None:
        answered = torch.ones(Q, dtype=torch.bool)
    else:
        top, _ = secure.argmax_tree(tallies)
        noisy_top = top + _noise_shares(crypten, noise, job.sigma1, (Q,))
        answered = (noisy_top - job.threshold).ge(0).get_plain_text().long().bool()  # reveal: answered bits
    rows = torch.nonzero(answered).flatten()
    labels = torch.full((Q,), -1, dtype=torch.long)
    if rows.numel():
        noisy = tallies[rows] + _noise_shares(crypten, noise, job.sigma2, (int(rows.numel()), C))
        _, index = secure.argmax_tree(noisy)
        labels[rows] = index.get_plain_text().long()                                # reveal: labels of answered
    return {"valid": valid.t().numpy(), "answered": answered.numpy(), "labels": labels.numpy(),
            "agreed": agreed.numpy()}
