"""Calibration inside the computing parties: each source's noisy mean accuracy on
labelled queries, computed from shares, so that MPC learns the same weights as
the plaintext backend (`engine.calibration`) without any party seeing a vote.

Per source s, its accuracy sum sum_t v_s[t, y_t] (at 2**16) is linear in its
shares, and the labels y_t are public to the computing side: each party computes
its share of every sum locally, adds its own discrete Gaussian draw, and only the
noisy sums are revealed. Noise: each party's scale is `party_noise_scale` of the
plaintext scale on the sum (dimension 1), so the h = n - t honest parties' draws
together cost no more than the one plaintext draw (CKS 2020 Thm 14 with h = 1;
Kairouz, Liu & Steinke 2021 Prop. 14 for h >= 2); the charge recorded is the
plaintext one (`calibration_charge`). Every party checks and durably records that
charge before any noisy sum can be reconstructed, as for queries.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..engine.calibration import CalibrationPlan, calibration_charge
from ..errors import DvsecureError, SubmissionError
from ..wire.limits import check_query_id
from . import secure
from .evaluate import batch_noise, input_checks, shared_votes


def calibration_plan(cmd: dict, policy) -> CalibrationPlan:
    """The coordinator's plan, checked: the labels, the calibrated sources (the
    rest keep their ceilings, which costs nothing), their charges from the policy."""
    C, labels, query_ids = int(cmd["num_classes"]), list(cmd["labels"]), list(cmd["query_ids"])
    check_query_id(cmd["calibration_id"], SubmissionError)
    if cmd["calibration_id"] in query_ids:
        raise SubmissionError("the calibration's id is one of its labelled queries' ids")
    if len(labels) != len(query_ids):
        raise SubmissionError(f"{len(labels)} labels for {len(query_ids)} labelled queries")
    if any(not 0 <= y < C for y in labels):
        raise SubmissionError(f"labels must be in [0, {C})")
    calibrated = list(cmd["calibrated"])
    unknown = [sid for sid in calibrated if sid not in policy.ids]
    if unknown or len(set(calibrated)) != len(calibrated):
        raise SubmissionError(f"calibrated sources must be distinct policy sources, got {calibrated}")
    charges = {sid: calibration_charge(policy, sid) for sid in policy.ids if sid in calibrated}
    skipped = {sid: "budget" for sid in policy.ids if sid not in charges}
    return CalibrationPlan(cmd["calibration_id"], tuple(labels), C, charges, skipped)


def calibrate_batch(crypten, cmd: dict, rank: int, world: int, party_key, ledger, peers, inbox=None,
                    private_noise=None) -> dict:
    """One calibration at one party. Reveals how many parties hold each share (as a
    batch does), then — once every party has recorded the charges — the noisy sums
    of the calibrated sources, and nothing else."""
    import torch

    from ..accounting.distributed import party_noise_scale

    policy = ledger.policy
    error, plan = None, None
    try:
        input_checks(cmd, policy, world, inbox)
        plan = calibration_plan(cmd, policy)
        noise = batch_noise(cmd, rank, private_noise)
        t = policy.collusion_tolerance
        sigmas = {sid: Fraction(party_noise_scale(plan.sum_scale(policy, sid), world, t, 1)) for sid in plan.charges}
    except (DvsecureError, KeyError, IndexError) as e:
        error = str(e)
    peers.agree(error)
    S, Q = len(policy.ids), len(plan.labels)
    present = np.ones((Q, S), dtype=bool) if cmd.get("inbox") else \
        np.frombuffer(cmd["present"], dtype=np.uint8).reshape(Q, S).astype(bool)
    votes = shared_votes(crypten, cmd, rank, world, party_key, policy, inbox, present, plan.num_classes)
    # sum over t and over the source's rows of its vote's mass on y_t: shares times
    # public 0/1 masks, local (an invalid or absent vote counts 0, as in plaintext).
    scaled = secure.to_tally_scale(votes.shared, votes.one_hot)                       # [R, Q, C]
    on_label = torch.zeros(Q, plan.num_classes, dtype=torch.long)
    on_label[torch.arange(Q), torch.tensor(plan.labels, dtype=torch.long)] = 1
    counted = votes.valid.long()[votes.owner]                                          # [R, Q]
    per_row = ((scaled * on_label.unsqueeze(0)).sum(-1) * counted).sum(-1)             # [R]
    of_source = (votes.owner.unsqueeze(0) == torch.arange(S).unsqueeze(1)).long()      # [S, R]
    sums = (per_row.unsqueeze(0) * of_source).sum(-1)                                  # [S]

    error = None
    try:
        ledger.record_calibration(plan, cmd["noise_mode"])
    except Exception as e:             # a budget refusal, or a local fault (disk): every party stops in step
        error = str(e) if isinstance(e, DvsecureError) else f"{type(e).__name__}: {e}"
    peers.agree(error)

    released: list[int | None] = [None] * S
    chosen = [j for j, sid in enumerate(policy.ids) if sid in plan.charges]
    if chosen:
        picked = sums.index_select(0, torch.tensor(chosen, dtype=torch.long))
        # This party's own draws, one per calibrated source at its scale: its share of the noise.
        draws = np.array([int(noise.sample(sigmas[policy.ids[j]], 1)[0]) for j in chosen], dtype=np.int64)
        noisy = picked + crypten.mpc.MPCTensor.from_shares(torch.from_numpy(draws), precision=0)
        for j, value in zip(chosen, noisy.get_plain_text().long().tolist()):       # reveal: the noisy sums
            released[j] = int(value)
    ledger.record_calibration_sums(plan.query_id, released)
    # Once more in step, as after a batch's labels (`evaluate_batch`).
    try:
        peers.agree(None)
        ledger.mark_calibration_delivered(plan.query_id)
    except DvsecureError:
        if rank != 0:
            raise
        ledger.mark_calibration_delivered(plan.query_id)
    return {"sums": released, "valid": votes.valid.t().numpy().tobytes(),
            "counts": votes.counts.numpy().astype("<i8").tobytes(),
            "agreed": votes.agreed.numpy().astype(bool).tobytes()}
