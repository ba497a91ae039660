"""One batch at one computing party: open its sealed shares, agree on which
submissions opened, run the secure pipeline (`secure.py`), and make its charges
durable (`party_ledger.py`) before any label can be reconstructed."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import DvsecureError, LedgerError, SubmissionError
from ..mechanism.filter import BudgetFilter
from ..mechanism.fixedpoint import threshold_to_tally
from ..noise import PRIVATE, make_noise
from ..wire.limits import check_query_id
from . import secure, tables
from .sharing import INDEX, open_submission, wire_encoding, wire_rows

MAX_CLASSES = 4096
MAX_BATCH_ENTRIES = 1 << 25        # sources x queries x classes in one batch: bounds every party's memory


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
    from ..mechanism.fixedpoint import sigma_on_tally_grid

    mech, t = policy.mechanism, policy.collusion_tolerance
    if t >= world:
        raise SubmissionError(f"the policy tolerates {t} colluding parties but only {world} compute; "
                              "it needs at least t + 1")
    sigma1 = Fraction(party_noise_scale(sigma_on_tally_grid(mech.sigma1), world, t, 1)) if mech.confident \
        else None
    return sigma1, Fraction(party_noise_scale(sigma_on_tally_grid(mech.sigma2), world, t, num_classes))


def batch_noise_demand(sigma1, sigma2, num_queries: int, num_classes: int) -> dict:
    """{scale: draws} a batch takes at most at one party: one threshold draw per query
    (Confident GNMax) and C GNMax draws per query if every query is answered."""
    want = {sigma2: num_queries * num_classes}
    if sigma1 is not None:
        want[sigma1] = want.get(sigma1, 0) + num_queries       # the same scale: one pool for both
    return want


def batch_noise(cmd: dict, rank: int, private_noise=None):
    """The noise a batch or calibration command asks for: the party's own private
    noise if it has one (what it drew ahead), else a fresh source of that mode."""
    if private_noise is not None and cmd["noise_mode"] == PRIVATE:
        return private_noise
    return make_noise(cmd["noise_mode"], cmd["noise_seeds"][rank] if cmd.get("noise_seeds") else None)


def _relayed_inputs(cmd, rank, world, party_key, rows, encodings, Q, C):
    """Shares relayed by the coordinator in the command (each sealed to this
    party): x int64[R, Q, C] (FIXED rows), k int64[R, Q] (INDEX rows: class
    indices mod C), where source j's vote fills rows[j] consecutive rows, and
    opened int64[S, Q]."""
    from nacl.signing import VerifyKey

    source_keys = {sid: VerifyKey(k) for sid, k in cmd["source_keys"].items()}
    col = {sid: j for j, sid in enumerate(cmd["source_ids"])}
    row = {qid: i for i, qid in enumerate(cmd["query_ids"])}
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    x = np.zeros((int(offsets[-1]), Q, C), dtype=np.int64)
    k = np.zeros((int(offsets[-1]), Q), dtype=np.int64)
    opened = np.zeros((len(rows), Q), dtype=np.int64)
    for message in cmd["messages"][rank]:
        try:
            got = open_submission(message, rank, world, party_key, source_keys)
            j = col[got.source_id]
            if got.num_classes != C or any(q not in row for q in got.query_ids):
                raise SubmissionError(f"submission of {got.source_id!r} is for other queries or classes")
            if got.rows != rows[j] or got.encoding != encodings[j]:
                raise SubmissionError(f"submission of {got.source_id!r} has {got.rows} {got.encoding} rows per "
                                      f"vote, its policy {rows[j]} {encodings[j]}")
        except (SubmissionError, KeyError):
            continue                  # this party could not open it: the source does not count
        for i, qid in enumerate(got.query_ids):
            if got.encoding == INDEX:
                k[offsets[j]:offsets[j + 1], row[qid]] = got.shares[i]
            else:
                x[offsets[j]:offsets[j + 1], row[qid]] = got.shares[i].view(np.int64).reshape(rows[j], C)
            opened[j, row[qid]] = 1
    return x, k, opened


def vote_rows(policy) -> list[int]:
    """Rows each source's vote fills in the shared input: m one-hot rows for a
    slice-unit source's histogram, 1 otherwise (`sharing.wire_rows`)."""
    return [wire_rows(s.vote_format) for s in policy.sources]


def vote_encodings(policy) -> list[str]:
    """How each source's vote travels (`sharing.wire_encoding`)."""
    return [wire_encoding(s.vote_format) for s in policy.sources]


def input_checks(cmd: dict, policy, world: int, inbox) -> None:
    """What every command that reads votes must satisfy, checked before anything is
    revealed: the policy's sources in its order, where the shares come from, the
    classes, distinct valid query ids, and a bounded size. Raises SubmissionError."""
    C = int(cmd["num_classes"])
    if tuple(cmd["source_ids"]) != tuple(policy.ids):
        raise SubmissionError("the batch's sources are not the policy's, in the policy's order")
    if cmd.get("inbox") and inbox is None:
        raise SubmissionError("this party takes no submissions over the network (start it with --listen)")
    if not cmd.get("inbox") and inbox is not None:
        # Relayed shares would come with keys the coordinator chose, not this party's principals.
        raise SubmissionError("this party takes shares only from its sources over gRPC, not relayed ones")
    if not cmd.get("inbox") and len(cmd["messages"]) != world:
        raise SubmissionError(f"the batch relays messages for {len(cmd['messages'])} parties, not {world}")
    if not 2 <= C <= MAX_CLASSES:
        raise SubmissionError(f"num_classes {C} is outside 2..{MAX_CLASSES}")
    query_ids = cmd["query_ids"]
    if not query_ids or len(set(query_ids)) != len(query_ids):
        raise SubmissionError("a batch needs distinct query ids")
    for qid in query_ids:
        check_query_id(qid, SubmissionError)
    R = sum(vote_rows(policy))
    if R * len(query_ids) * C > MAX_BATCH_ENTRIES:
        raise SubmissionError(f"{len(query_ids)} queries x {R} vote rows (of {len(policy.ids)} sources) x {C} "
                              f"classes is more than {MAX_BATCH_ENTRIES} entries in one batch")
    for sid, key in cmd["source_keys"].items():
        if sid not in policy.ids or len(key) != 32:
            raise SubmissionError(f"source key for {sid!r}: not a policy source's 32-byte Ed25519 key")


def _public_checks(cmd: dict, policy, world: int, inbox):
    """Everything public in a batch command, checked before anything is revealed:
    (present bool[Q, S], gammas int64[Q, S], noise source, sigma1, sigma2).
    Raises DvsecureError naming the problem."""
    from .party import job_arrays

    input_checks(cmd, policy, world, inbox)
    try:
        present, gammas = job_arrays(cmd)
    except (ValueError, TypeError) as e:
        raise SubmissionError(f"malformed batch arrays: {e}") from None
    for src, column in zip(policy.sources, gammas.T):
        outside = column[(column != 0) & ((column < round(src.grid_min * 65536)) |
                                          (column > round(src.grid_max * 65536)) | (column % src.grid_step != 0))]
        if outside.size:
            raise LedgerError(f"weight {int(outside[0]) / 65536} of {src.id!r} is outside its band "
                              f"[{src.grid_min}, {src.grid_max}] on its grid (multiples of {src.slices} * 2**-16)")
    sigma1, sigma2 = party_sigmas(policy, world, int(cmd["num_classes"]))
    return present, gammas, sigma1, sigma2


def _filter_checks(cmd: dict, policy, ledger, gammas: np.ndarray) -> None:
    """The coordinator's weights against the budget filter, re-run from public data
    and this party's own spends: a source the filter admits for a query (at its
    desired weight, or shrunk) must not get weight 0 — its floor gamma_min is what
    it agreed to. Weights are decided before any vote is seen, so this holds
    whether or not it submitted. This party's spends are never below the operator's
    (a failed batch stays charged here), so an honest exclusion is one here too;
    and a filter that excludes at some spend excludes at any larger one, so for each
    source only its first weight-0 query needs the filter."""
    desired = (np.frombuffer(cmd["desired"], dtype="<i8") if cmd.get("desired") is not None else
               np.array([round(src.grid_max * 65536) for src in policy.sources], dtype=np.int64))
    if desired.shape != (len(policy.sources),):
        raise SubmissionError(f"the batch gives {desired.size} desired weights for {len(policy.sources)} sources")
    flt = BudgetFilter(policy.mechanism)
    spent = ledger.spent()
    # Earlier queries of the batch reserve their worst case, as the coordinator's filter
    # does: unit * (g / (m 2**16))**2 each, summed exactly as integers g**2.
    before = np.cumsum(gammas ** 2, axis=0) - gammas ** 2
    for j, src in enumerate(policy.sources):
        zeros = np.nonzero(gammas[:, j] == 0)[0]
        if not zeros.size:
            continue
        q = int(zeros[0])
        provisional = spent[src.id] + flt.unit * Fraction(int(before[q, j]), (1 << 32) * src.slices ** 2)
        d = flt.decide(src, int(desired[j]) / 65536, provisional, src.cap_rho)
        if d.gamma > 0:
            raise LedgerError(f"query {cmd['query_ids'][q]!r}: source {src.id!r} has budget for weight {d.gamma} "
                              "but the coordinator gave it weight 0 (the budget filter does not exclude it)")


def _seen(gammas_cmd: np.ndarray, present: np.ndarray, counts: np.ndarray, agreed: np.ndarray,
          valid: np.ndarray, inbox: bool) -> list[str]:
    """Per query, the letter of what this party saw of each source (party_ledger.SEEN_*),
    the first that applies in this order (vectorised: Q*S can be 500,000)."""
    from .party_ledger import (SEEN_COUNTED, SEEN_EXCLUDED, SEEN_NOT_RELAYED, SEEN_NOTHING, SEEN_PARTIAL,
                               SEEN_REJECTED)

    none = (counts.T == 0) if inbox else ~present
    letters = np.select([gammas_cmd == 0, none, ~agreed.T, ~valid.T],
                        [ord(SEEN_EXCLUDED), ord(SEEN_NOTHING if inbox else SEEN_NOT_RELAYED), ord(SEEN_PARTIAL),
                         ord(SEEN_REJECTED)], ord(SEEN_COUNTED)).astype(np.uint8)
    return [row.tobytes().decode("ascii") for row in letters]


@dataclass(frozen=True)
class SharedVotes:
    """A batch's votes at one party, after every party agreed on which it holds:
    shared int [R, Q, C] (zero where not every party holds the share), the rows of
    each source and the source of each row, whether each row is a one-hot bit row,
    and per source and query: present, counts (parties holding it), agreed, valid."""
    shared: object
    rows: list
    owner: object
    one_hot: list
    present: np.ndarray
    counts: object
    agreed: object
    valid: object
    commitments: np.ndarray | None


def shared_votes(crypten, cmd: dict, rank: int, world: int, party_key, policy, inbox, present, C: int) -> SharedVotes:
    """Open this party's shares (relayed in the command, or from its inbox), agree
    with the others on which every party holds, and turn them into shared vote
    rows. Reveals only how many parties hold each share, the one-time tables'
    uniform masks, and one validity bit per simplex row."""
    import torch

    source_ids, query_ids = list(cmd["source_ids"]), list(cmd["query_ids"])
    S, Q = len(source_ids), len(query_ids)
    comm = crypten.communicator.get()
    commitments = None
    rows, encodings = vote_rows(policy), vote_encodings(policy)
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    owner = torch.from_numpy(np.repeat(np.arange(S), rows))          # the source of each vote row
    if cmd.get("inbox"):
        x_np, k_np, opened_np, commitments = inbox.take(query_ids, source_ids, C, rows, encodings)
        present = np.ones((Q, S), dtype=bool)
    else:
        x_np, k_np, opened_np = _relayed_inputs(cmd, rank, world, party_key, rows, encodings, Q, C)
    # Every party must hold a source's share for its vote to count ...
    counts = comm.all_reduce(torch.from_numpy(opened_np))                   # returns a new tensor
    agreed = counts == world
    if commitments is not None:
        # ... and, when the source sent its commitments, the same ones at every party.
        digest = torch.from_numpy(np.ascontiguousarray(commitments).view(np.int64))      # [S, Q, 4]: all 32 bytes
        for other in comm.all_gather(digest):
            agreed &= (other == digest).all(-1)
    # Index rows (one-hot votes, a histogram's slices) become shares of their one-hot
    # vectors through the dealer's one-time tables: valid by construction, and what
    # is opened (k - r mod C) is uniform (`tables`).
    index_rows = np.repeat(np.array([e == INDEX for e in encodings], dtype=bool), rows)
    one_hot = index_rows.tolist()
    if index_rows.any():
        x_np[index_rows] = tables.one_hot_shares(crypten, k_np[index_rows], C).numpy()
    # A share that not every party holds is zeroed by every party before anything is
    # computed: otherwise the parties that do hold theirs would reconstruct the vote
    # minus the missing share, and validation would reveal a function of it.
    x = torch.from_numpy(x_np) * agreed.long()[owner].unsqueeze(-1)
    shared = crypten.mpc.MPCTensor.from_shares(x, precision=0)
    # Only simplex votes are checked (their reveal: a pass/fail bit each); index votes are valid.
    valid_rows = np.ones((int(offsets[-1]), Q), dtype=bool)
    if not index_rows.all():
        soft = torch.from_numpy(np.nonzero(~index_rows)[0])
        valid_rows[~index_rows] = secure.validate_simplex(shared.index_select(0, soft)).numpy()   # reveal
    # A source's vote is valid iff all its rows are: m one-hot rows are exactly a histogram of m votes.
    valid = torch.from_numpy(np.logical_and.reduceat(valid_rows, offsets[:-1], axis=0))
    valid = valid & torch.from_numpy(present.T.copy()) & agreed
    return SharedVotes(shared, rows, owner, one_hot, present, counts, agreed, valid, commitments)


def evaluate_batch(crypten, cmd: dict, rank: int, world: int, party_key, ledger, peers, inbox=None,
                   private_noise=None) -> dict:
    """One batch at one party. Every public check comes first. Then it reveals,
    in order: how many parties hold each source's share of each query, whether
    each vote is valid; then — once this party has checked every budget at the
    worst case and reserved it durably (and so has every other party, or no
    answered bit can be reconstructed) — the answered bits; then, once the
    reservations of refused queries are settled, the labels of answered queries.

    Shares come either relayed in the command (sealed to each party) or, with
    cmd["inbox"], from what the sources sent this party over gRPC (`ShareInbox`)."""
    import torch

    policy = ledger.policy
    query_ids, C = list(cmd["query_ids"]), int(cmd["num_classes"])
    error = None
    try:
        present, gammas_np, sigma1, sigma2 = _public_checks(cmd, policy, world, inbox)
        _filter_checks(cmd, policy, ledger, gammas_np)
        noise = batch_noise(cmd, rank, private_noise)
    except (DvsecureError, KeyError, IndexError) as e:
        error = str(e)
    peers.agree(error)
    Q = len(query_ids)
    votes = shared_votes(crypten, cmd, rank, world, party_key, policy, inbox, present, C)
    present, counts, agreed, valid = votes.present, votes.counts, votes.agreed, votes.valid
    rows, owner, shared, one_hot, commitments = votes.rows, votes.owner, votes.shared, votes.one_hot, votes.commitments
    gammas = torch.from_numpy(gammas_np) * valid.t().long()
    # What this party saw of each source, checked against the log when it cosigns.
    seen = _seen(gammas_np, present, counts.numpy(), agreed.numpy(), valid.numpy(), bool(cmd.get("inbox")))
    mine = None
    if commitments is not None:
        mine = np.array(commitments, dtype=np.uint8, copy=True)
        mine[~agreed.numpy()] = 0
    # Each row is tallied at gamma/m (exact: gamma is a multiple of m * 2**-16).
    per_row = (gammas // torch.tensor(rows, dtype=torch.long))[:, owner]
    tallies = secure.tally(secure.to_tally_scale(shared, one_hot), per_row)

    # Worst-case charges (every query answered) checked and durable before any
    # answered bit can be reconstructed.
    error = None
    try:
        ledger.record_charges(query_ids, gammas.numpy(), np.ones(Q, dtype=bool), cmd["noise_mode"], seen, mine)
    except Exception as e:             # a budget refusal, or a local fault (disk): every party stops in step
        error = str(e) if isinstance(e, DvsecureError) else f"{type(e).__name__}: {e}"
    peers.agree(error)

    # A query in which no source takes part is refused (`mechanism`): public, from
    # the weights and validity bits alone.
    taken_part = (gammas != 0).any(dim=1)
    # Every tally lies in [0, V] (public, from the weights): the comparisons' width
    # follows from it and the noise's tail (`secure.threshold_bits`, `compare.py`).
    tally_max = secure.tally_bound(gammas.numpy())
    if not policy.mechanism.confident:
        answered = taken_part.clone()
    else:
        threshold = threshold_to_tally(policy.mechanism.threshold)
        z = _noise_shares(crypten, noise, sigma1, (Q,))           # one draw per query: max_j v_j + z >= T
        bits = secure.threshold_bits(tally_max, threshold, sigma1, world)
        answered = torch.from_numpy(secure.threshold_any(crypten, tallies, z, threshold, bits))  # reveal: answered
        answered &= taken_part
    if not answered.all():
        # A refused query's GNMax step never runs: its reservation is released,
        # durably, before any label share is sent.
        error = None
        try:
            ledger.settle(query_ids, answered.numpy())
        except Exception as e:         # the worst case stays charged; every party stops in step
            error = f"{type(e).__name__}: {e}"
        peers.agree(error)

    rows = torch.nonzero(answered).flatten()
    labels = torch.full((Q,), -1, dtype=torch.long)
    if rows.numel():
        noisy = tallies[rows] + _noise_shares(crypten, noise, sigma2, (int(rows.numel()), C))
        bits = secure.argmax_bits(tally_max, sigma2, world)
        labels[rows] = torch.from_numpy(secure.argmax_label(crypten, noisy, bits))  # reveal: labels of answered
    ledger.record_labels(query_ids, labels.tolist())
    # Once more in step: every party has recorded the labels, so party 0 has them and
    # they reach the coordinator. If this fails, a party's labels stay undelivered (a
    # retry may reveal them again, charged again) — except at party 0, which has them
    # and returns them whatever the others said.
    try:
        peers.agree(None)
        ledger.mark_delivered(query_ids)
    except DvsecureError:
        if rank != 0:
            raise
        ledger.mark_delivered(query_ids)
    return {"valid": valid.t().numpy().tobytes(), "answered": answered.numpy().tobytes(),
            "labels": labels.numpy().astype("<i8").tobytes(), "counts": counts.numpy().astype("<i8").tobytes(),
            "agreed": agreed.numpy().astype(bool).tobytes(),
            "commitments": None if commitments is None else commitments.tobytes()}
