"""Recomputing a run of log entries against the agreed policy (the auditor's core).

For a contiguous run of entry lines (all of a log, a shard of it, or the entries
of a receipt) this hashes every line into its Merkle leaf, decodes it, and checks
it column-wise over sources and entries (numpy, not a Python loop per entry):
sequence numbers, status letters, every weight inside its band (or 0 when the
source did not take part), labels, the mechanism against the policy's, and —
for the sources whose whole history is present — every charge recomputed from
the entry's own data (mechanism parameters, weight, answered bit), the stated
cumulative spends and charge counts against that recomputation, and exact
rational totals, one per distinct (mechanism, weight, answered) group.

A shard starts from a carry: the stated columns of the last query or
calibration entry before it. The previous shard verifies those stated values,
so checking each shard against its carry checks the whole chain; a log is
therefore audited in shards on several cores with the same findings.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import msgspec
import numpy as np

from ..accounting.charges import CALIBRATION, GNMAX, THRESHOLD, Charge
from ..errors import DvsecureError
from ..log import entry as E
from ..mechanism.filter import worst_case_unit
from ..mechanism.fixedpoint import SCALE, gamma_to_fixed
from ..policy import SHRINK, ConsortiumPolicy

_RECOMPUTE_ERRORS = (DvsecureError, TypeError, ValueError, ZeroDivisionError, OverflowError)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
PARALLEL_THRESHOLD = 16 << 20      # bytes of entries; below this one process is faster than forking


@dataclass(frozen=True)
class Context:
    """What every shard needs: the policy (None if it could not be established:
    then only hashing, decoding and sequence checks run) and which sources'
    histories are complete here (all, for a log; the receipt's own source)."""

    policy: ConsortiumPolicy | None
    complete: frozenset[str]


@dataclass
class SourceStats:
    exact: Fraction = Fraction(0)          # complete sources only
    charged: int = 0
    answered: int = 0
    used_min: int | None = None
    used_max: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    first_over: int | None = None          # first seq whose cumulative spend passed the budget
    calibration: list[tuple[int, Fraction]] = field(default_factory=list)   # (seq, charge) of calibration entries


@dataclass
class Shard:
    findings: list[tuple[str, str, int | None]] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    specials: list[tuple[int, object]] = field(default_factory=list)   # (line index, Genesis | Signers)
    query_ids: list[tuple[str, int]] = field(default_factory=list)    # (query id, seq)
    nonprivate: list[int] = field(default_factory=list)
    stats: dict[str, SourceStats] = field(default_factory=dict)
    last_stated: np.ndarray | None = None  # stated spend columns of the last query/calibration row
    rows: int = 0
    lines: int = 0


def _int64(v: int) -> int:
    """A stated integer squeezed into int64 for numpy checks; out-of-range values
    stay out of every valid range (msgspec admits up to 2**64 - 1)."""
    return v if -(1 << 62) < v < (1 << 62) else -(1 << 62)


def _carry(data: bytes, before: int, S: int):
    """Stated spend and count columns of the last query/calibration entry that ends
    before byte offset `before` of the entries file."""
    end = before - 1                                  # the newline ending the previous line
    while end > 0:
        begin = data.rfind(b"\n", 0, end) + 1
        try:
            e = E.decode(data[begin:end])
        except (msgspec.DecodeError, msgspec.ValidationError):
            e = None                                  # reported by the shard that holds it
        if isinstance(e, (E.Query, E.Calibration)):
            if len(e.spent) == 8 * S and len(e.charged) == 4 * S:
                return (np.frombuffer(e.spent, "<f8").copy(),
                        np.frombuffer(e.charged, "<u4").astype(np.int64))
            break
        end = begin - 1
    return np.zeros(S), np.zeros(S, np.int64)


def check_shard(data: bytes, begin: int, end: int, start: int, seqs: list[int], ctx: Context) -> Shard:
    """Check the complete lines in data[begin:end], whose first is line `start` of
    the file (line i has sequence number seqs[i])."""
    out = Shard()
    add = out.findings.append
    # Lines as views into `data`: no copy of the file, which matters when forked
    # workers share it.
    view, lines, pos, find = memoryview(data), [], begin, data.find
    while pos < end:
        nl = find(b"\n", pos, end)
        lines.append(view[pos:nl])
        pos = nl + 1
    out.lines = len(lines)
    stop = start + len(lines)
    sha = hashlib.sha256
    out.leaves = [sha(b"\x00" + line).digest() for line in lines]
    try:
        decoded = list(map(E.decode, lines))                      # the common case: all well-formed
    except _DECODE_ERRORS:
        decoded = []
        for i, line in zip(range(start, stop), lines):
            try:
                decoded.append(E.decode(line))
            except _DECODE_ERRORS as e:
                add(("entry", f"line {i + 1} is not a valid entry: {e}", seqs[i]))
                decoded.append(None)
    expected = np.asarray(seqs[start:stop], dtype=np.int64)
    big = 1 << 62                                   # stated numbers beyond int64 still compare unequal
    stated = np.array([-1 if e is None else (e.seq if 0 <= e.seq < big else -2) for e in decoded], np.int64)
    versions = np.array([E.VERSION if e is None else (e.v if 0 <= e.v < big else -2) for e in decoded], np.int64)
    for k in np.nonzero((stated != expected) & (stated != -1))[0]:
        add(("sequence", f"line {start + k + 1} says seq {decoded[k].seq}, expected {expected[k]} (a deleted, "
             f"reordered or duplicated entry)", int(expected[k])))
    for k in np.nonzero(versions != E.VERSION)[0]:
        add(("entry", f"entry format version {decoded[k].v} is not {E.VERSION}", int(expected[k])))
    items = [(seqs[i], e) for i, e in zip(range(start, stop), decoded) if e is not None]
    out.specials = [(i, e) for i, e in zip(range(start, stop), decoded) if type(e) in (E.Genesis, E.Signers)]
    out.query_ids = [(e.query_id, seq) for seq, e in items]
    policy = ctx.policy
    if policy is None:
        return out
    ids, S = policy.ids, len(policy.sources)

    QT, CT = E.Query, E.Calibration
    rows = [(seq, e) for seq, e in items if type(e) is QT or type(e) is CT]
    want = (4 * S, 8 * S, 4 * S, S)
    shapes = [(len(e.gamma), len(e.spent), len(e.charged), len(e.status)) for _, e in rows]
    if any(sh != want for sh in shapes):
        for (seq, _), sh in zip(rows, shapes):
            if sh != want:
                add(("entry", f"per-source column lengths {sh}, expected {want} for {S} sources", seq))
        rows = [row for row, sh in zip(rows, shapes) if sh == want]
    n = out.rows = len(rows)
    seq_arr = np.array([seq for seq, _ in rows], np.int64)
    gamma = np.frombuffer(b"".join([e.gamma for _, e in rows]), "<u4").reshape(n, S).astype(np.int64)
    stated = np.frombuffer(b"".join([e.spent for _, e in rows]), "<f8").reshape(n, S)
    counts = np.frombuffer(b"".join([e.charged for _, e in rows]), "<u4").reshape(n, S).astype(np.int64)
    status = np.frombuffer("".join([e.status for _, e in rows]).encode("ascii", "replace"),
                           np.uint8).reshape(n, S)
    is_query = np.array([type(e) is QT for _, e in rows], bool)
    out.nonprivate = [seq for seq, e in rows if e.noise != "private"]

    # Scalar checks of query entries.
    mech = policy.mechanism
    policy_mech = E.Mechanism(kind=mech.kind, sigma2=mech.sigma2, sigma1=mech.sigma1, threshold=mech.threshold)
    queries = [(k, seq, e) for k, (seq, e) in enumerate(rows) if type(e) is QT]
    qk = np.array([k for k, _, _ in queries], np.int64)
    answered = np.zeros(n, bool)
    answered[qk] = [e.answered for _, _, e in queries]
    want_c = E.commitments_text_length(S)
    for _, seq, e in queries:
        if len(e.commitments) != want_c:
            add(("entry", f"commitments are {len(e.commitments)} characters, expected {want_c} "
                 f"(32 bytes per source, base64)", seq))
    for _, seq, e in [x for x in queries if x[2].mechanism != policy_mech]:
        add(("charge", "mechanism parameters differ from the agreed policy's", seq))
    labels = np.array([-1 if e.label is None else _int64(e.label) for _, _, e in queries], np.int64)
    classes = np.array([_int64(e.num_classes) for _, _, e in queries], np.int64)
    plain = np.array([e.mechanism.kind == "gnmax" for _, _, e in queries], bool)
    has_label = np.array([e.label is not None for _, _, e in queries], bool)
    ans_q = answered[qk]
    for i in np.nonzero(ans_q & (~has_label | (labels < 0) | (labels >= classes)))[0]:
        add(("release", f"answered with label {queries[i][2].label!r} outside [0, {classes[i]})", queries[i][1]))
    for i in np.nonzero(~ans_q & has_label)[0]:
        add(("release", "a refused query released a label", queries[i][1]))
    groups: dict[tuple, list[int]] = {}                # (mechanism key, answered) -> row indices
    for k, _, e in queries:
        m = e.mechanism
        groups.setdefault((m.kind, m.sigma1, m.sigma2, e.answered), []).append(k)
    for _, seq, e in queries:
        if not e.invalid and "I" not in e.status:
            continue
        for j, sid in enumerate(ids):
            if (e.status[j] == "I") != (sid in e.invalid):
                add(("status", f"source {sid!r}: status {e.status[j]!r} but the invalid-vote reasons "
                     f"{'name' if sid in e.invalid else 'do not name'} it", seq))
        if set(e.invalid) - set(ids):
            add(("status", f"invalid-vote reasons for unknown sources {sorted(set(e.invalid) - set(ids))}", seq))
    calibration: list[tuple[int, int, float]] = []     # (row, source index, sigma)
    for k, (seq, e) in enumerate(rows):
        if type(e) is QT:
            continue
        if len(e.sigma) != S or len(e.accuracy) != S:
            add(("entry", "calibration columns do not have one value per source", seq))
            continue
        for j, (sig, acc) in enumerate(zip(e.sigma, e.accuracy)):
            if e.status[j] == "C":
                if sig is None or acc is None:
                    add(("status", f"source {ids[j]!r} calibrated without a noise scale or release", seq))
                else:
                    calibration.append((k, j, sig))
            elif sig is not None or acc is not None:
                add(("status", f"source {ids[j]!r} skipped yet has a calibration release", seq))

    # Status letters and bands, every source of every entry.
    msl = np.array([s.slices for s in policy.sources], np.int64)     # privacy unit: 1, or m slices
    lo = np.array([gamma_to_fixed(s.grid_min) for s in policy.sources], np.int64)
    hi = np.array([gamma_to_fixed(s.grid_max) for s in policy.sources], np.int64)
    shrink_ok = np.array([s.on_exhaustion == SHRINK for s in policy.sources])
    A, S_, B, I, X, C, K = (ord(x) for x in "ASBIXCK")
    q, c = is_query[:, None], ~is_query[:, None]
    takes_part = (status == A) | (status == S_)
    query_letter = takes_part | (status == B) | (status == I) | (status == X)
    for k, j in zip(*np.nonzero((q & ~query_letter) | (c & ~((status == C) | (status == K))))):
        add(("status", f"source {ids[j]!r}: unknown status letter {chr(status[k, j])!r}", int(seq_arr[k])))
    for k, j in zip(*np.nonzero(((q & takes_part) | c) & ~((gamma >= lo) & (gamma <= hi)))):
        add(("band", f"source {ids[j]!r}: gamma {gamma[k, j] / SCALE} outside its band "
             f"[{policy.sources[j].gamma_min}, {policy.sources[j].gamma_max}]", int(seq_arr[k])))
    # Each unit vote (a slice's, or one of a simplex vote's m) weighs gamma/m, on the 2**-16 grid.
    step = np.array([s.grid_step for s in policy.sources], np.int64)
    for k, j in zip(*np.nonzero(((q & takes_part) | c) & (gamma % step != 0))):
        unit = f"{step[j]} slices" if policy.sources[j].slices > 1 else f"simplex resolution {step[j]}"
        add(("band", f"source {ids[j]!r}: gamma {gamma[k, j] / SCALE} is not a multiple of its {unit} "
             "times 2**-16", int(seq_arr[k])))
    for k, j in zip(*np.nonzero(q & ~takes_part & (gamma != 0))):
        add(("band", f"source {ids[j]!r} was excluded ({chr(status[k, j])}) yet weighted {gamma[k, j] / SCALE}",
             int(seq_arr[k])))
    for k, j in zip(*np.nonzero(q & (status == S_) & ~shrink_ok)):
        add(("status", f"source {ids[j]!r} was shrunk but its policy says exclude", int(seq_arr[k])))
    # Releases against participation: a query no source took part in is refused (its
    # label would be noise alone); plain GNMax refuses nothing else.
    anyone = takes_part[qk].any(axis=1)
    for i in np.nonzero(ans_q & ~anyone)[0]:
        add(("release", "answered although no source took part (the label is noise alone)", queries[i][1]))
    for i in np.nonzero(~ans_q & ~has_label & plain & anyone)[0]:
        add(("release", "plain GNMax refuses only a query no source took part in, but this entry is a refusal",
             queries[i][1]))

    # Charges recomputed from each entry's own data: a float per entry for the
    # per-entry checks, and exact rationals per distinct group for the totals.
    # Threshold check: gamma^2/(2 sigma1^2) on every Confident query; GNMax:
    # gamma^2/sigma2^2 when answered; both over m^2 for a slice-unit source
    # (DESIGN §4; the Charge records cite the theorems).
    rho_f = np.zeros((n, S))
    g2 = (gamma / (SCALE * msl)) ** 2
    exact = [Fraction(0)] * S
    width = SCALE + 1
    offsets = np.arange(S, dtype=np.int64) * width
    want_exact = np.array([sid in ctx.complete for sid in ids])
    for (kind, s1, s2, ans), idx in groups.items():
        idx = np.array(idx)
        try:
            unit = Charge(GNMAX, s2, 1.0, ans).rho
            if kind == "confident_gnmax":
                unit += Charge(THRESHOLD, s1, 1.0, True).rho
        except _RECOMPUTE_ERRORS as ex:
            add(("charge", f"cannot recompute the charge: {ex}", int(seq_arr[idx[0]])))
            continue
        part = takes_part[idx] & (gamma[idx] >= 0) & (gamma[idx] <= SCALE)
        rho_f[idx] = np.where(part, g2[idx] * float(unit), 0.0)
        sub = np.where(part, gamma[idx], 0)
        tally = np.bincount((sub + offsets).ravel(), minlength=S * width).reshape(S, width)
        for j, v in zip(*np.nonzero(tally[:, 1:] * want_exact[:, None])):
            g, m = (int(v) + 1) / SCALE, int(msl[j])
            rho = Charge(GNMAX, s2, g, ans, m).rho
            if kind == "confident_gnmax":
                rho += Charge(THRESHOLD, s1, g, True, m).rho
            exact[j] += int(tally[j, v + 1]) * rho
    calib: list[list[tuple[int, Fraction]]] = [[] for _ in range(S)]
    for k, j, sig in calibration:
        try:
            rho = Charge(CALIBRATION, sig, 1.0, True, int(msl[j])).rho
        except _RECOMPUTE_ERRORS as ex:
            add(("charge", f"source {ids[j]!r}: cannot recompute the calibration charge: {ex}", int(seq_arr[k])))
            continue
        rho_f[k, j] = float(rho)
        exact[j] += rho
        calib[j].append((int(seq_arr[k]), rho))      # check.py adds them up against the policy's share

    # Who re-runs the filter is the signer set's business, not the entry's (the operator
    # writes its backend field): where the policy names computing parties, they do,
    # before any reveal; anywhere else the auditor does, on every query entry.
    parties_check = policy.signers.parties if policy.signers is not None else None
    per_query = np.array([type(e) is QT and (not parties_check if parties_check is not None else e.backend != "mpc")
                          for _, e in rows], bool)
    wc_unit = float(worst_case_unit(mech))

    # The latest calibration row at or before each row (-1: none in this shard): its
    # weights are the desired ones from then on.
    last_cal = np.maximum.accumulate(np.where(~is_query, np.arange(n), -1)) if n else np.zeros(0, np.int64)

    # Stated spends and counts against the recomputation, from the carry.
    charged = rho_f > 0
    carry_spent, carry_counts = _carry(data, begin, S)
    cum = carry_spent + np.cumsum(rho_f, axis=0)
    cum_counts = carry_counts + np.cumsum(charged, axis=0)
    for j, src in enumerate(policy.sources):
        sid = src.id
        st = SourceStats()
        out.stats[sid] = st
        part = q[:, 0] & takes_part[:, j]
        used = gamma[part, j]
        if used.size:
            st.used_min, st.used_max = int(used.min()), int(used.max())
        st.charged = int(charged[:, j].sum())
        st.answered = int((part & answered).sum())
        hist = np.bincount(status[is_query, j], minlength=128)
        st.statuses = {E.STATUS_NAMES.get(chr(x), chr(x)): int(hist[x]) for x in np.nonzero(hist)[0]}
        if sid not in ctx.complete or not n:
            continue
        st.exact = exact[j]
        st.calibration = calib[j]
        wrong = np.nonzero(counts[:, j] != cum_counts[:, j])[0]
        if wrong.size:
            k = wrong[0]
            add(("spend", f"source {sid!r}: the entry says it was charged {counts[k, j]} times so far, the "
                 f"entries show {cum_counts[k, j]}" + (" (an entry that charged it is missing)"
                                                       if counts[k, j] > cum_counts[k, j] else ""),
                 int(seq_arr[k])))
        tol = 1e-9 * np.maximum(np.abs(cum[:, j]), 1e-12)
        # NaN compares false with everything: a non-finite stated spend is wrong by itself.
        wrong = np.nonzero(~np.isfinite(stated[:, j]) | (np.abs(stated[:, j] - cum[:, j]) > tol))[0]
        if wrong.size:
            k = wrong[0]
            add(("spend", f"source {sid!r}: stated cumulative spend {stated[k, j]!r} but the recomputed charges "
                 f"sum to {cum[k, j]!r}", int(seq_arr[k])))
        cap = float(src.cap_rho)        # the budget and the influence budget / m^2 at once
        over = np.nonzero(cum[:, j] > cap)[0]
        if over.size:
            st.first_over = int(seq_arr[over[0]])
        # The budget filter re-run (DESIGN §4): it is a function of public data, so an
        # exclusion it did not require is framing. A backend that decides query by query
        # sees the spend before each entry; an MPC batch reserves earlier queries' worst
        # case, which the log does not show, so its exclusions are the parties' to check
        # (`per_query` above).
        # A source is surely admitted when even the smallest weight its filter may give
        # fits (gamma_min under "shrink"; under "exclude" its desired weight: the one the
        # latest calibration entry published, or else any, so the ceiling), with a
        # margin far wider than float rounding.
        if src.on_exhaustion == SHRINK:
            w = np.full(n, lo[j] / SCALE)
        else:
            w = np.where(last_cal >= 0, gamma[np.maximum(last_cal, 0), j], hi[j]) / SCALE
        fits = cum[:, j] + wc_unit * (w / msl[j]) ** 2 < cap * (1 - 1e-9)
        for k in np.nonzero(q[:, 0] & (status[:, j] == B) & per_query & fits)[0]:
            add(("filter", f"source {sid!r} was excluded by the budget filter although it could afford this "
                 f"query at weight {w[k]} (spent {cum[k, j]:.6g} of {cap:.6g}): an exclusion the "
                 "filter does not make", int(seq_arr[k])))
            break
    out.last_stated = stated[-1].copy() if n else None
    return out


# ---- running shards, in this process or in several --------------------------------

_SHARED: tuple | None = None


def _run_shared(begin: int, end: int, start: int) -> Shard:
    data, seqs, ctx = _SHARED
    return check_shard(data, begin, end, start, seqs, ctx)


def check_entries(data: bytes, seqs, ctx: Context, workers: int | None = None) -> list[Shard]:
    """Every complete line of the entries file `data`, in shards over `workers`
    processes (default: one per core when the log is large enough to pay for the
    fork). Forked workers share `data` (one object, so no copy-on-write of
    per-line objects) and split their own byte range."""
    end = data.rfind(b"\n") + 1
    if workers is None:
        workers = (os.cpu_count() or 1) if len(data) >= PARALLEL_THRESHOLD else 1
    workers = max(1, workers)
    if workers == 1:
        return [check_shard(data, 0, end, 0, seqs, ctx)]
    bounds, starts = [0], [0]
    for k in range(1, workers):
        cut = data.find(b"\n", max(bounds[-1], end * k // workers)) + 1
        if cut <= bounds[-1] or cut >= end:
            continue
        starts.append(starts[-1] + data.count(b"\n", bounds[-1], cut))
        bounds.append(cut)
    bounds.append(end)
    global _SHARED
    _SHARED = (data, seqs, ctx)           # inherited by the forked workers, not pickled
    try:
        with ProcessPoolExecutor(len(starts), mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_run_shared, a, b, st) for a, b, st in zip(bounds, bounds[1:], starts)]
            return [f.result() for f in futures]
    finally:
        _SHARED = None
