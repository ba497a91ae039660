"""One batch at one computing party: open its sealed shares, agree on which
submissions opened, and run the secure pipeline (`secure.py`)."""
from __future__ import annotations

import numpy as np

from ..errors import SubmissionError
from ..sharing import open_submission
from . import secure


def evaluate_batch(crypten, job, rank: int, world: int, party_key, source_keys) -> dict:
    import torch

    S, Q, C = len(job.source_ids), len(job.query_ids), job.num_classes
    col = {sid: j for j, sid in enumerate(job.source_ids)}
    row = {qid: i for i, qid in enumerate(job.query_ids)}
    x = torch.zeros((S, Q, C), dtype=torch.long)
    opened = torch.zeros(S, dtype=torch.long)
    reasons: dict[str, str] = {}
    for message in job.messages:
        try:
            got = open_submission(message, rank, world, party_key, source_keys)
            j = col[got.source_id]
            if got.num_classes != C or any(q not in row for q in got.query_ids):
                raise SubmissionError(f"submission of {got.source_id!r} is for other queries or classes")
        except (SubmissionError, KeyError) as e:
            reasons[getattr(e, "source_id", "?")] = str(e)
            continue
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
    top, index = secure.argmax_tree(tallies)
    if job.threshold is None:
        answered = torch.ones(Q, dtype=torch.bool)
    else:
        answered = (top - job.threshold).ge(0).get_plain_text().long().bool()       # reveal: answered bits
    rows = torch.nonzero(answered).flatten()
    labels = torch.full((Q,), -1, dtype=torch.long)
    if rows.numel():
        labels[rows] = index[rows].get_plain_text().long()                         # reveal: labels of answered
    return {"valid": valid.t().numpy(), "answered": answered.numpy(), "labels": labels.numpy(),
            "agreed": agreed.numpy()}
