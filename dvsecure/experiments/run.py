"""Running a grid: each configuration is a consortium of institutions trained on
disjoint non-IID partitions (`data`), a policy built from the configuration, a
ledger and a published log of its own (`DIR/runs/KEY/`), and one row of results.

Results are written after every configuration (`results.json`, `results.csv`),
so a re-run skips the configurations already there (resumable).

Per configuration: accuracy on answered queries, coverage, every institution's
ε at its unit and its influence ε (enforced, data-independent, recomputed by
`dvsecure audit` from the log), the PATE data-dependent ε beside it (ANALYSIS
ONLY: it reads every vote, it is not a charge and releasing it would leak), the
best single institution's accuracy and the non-private Hedge ensemble on the same
queries, wall time and the published log's size.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..accounting import pate
from ..accounting.conversions import DEFAULT_ORDERS
from ..audit.check import audit
from ..demo.consortium import single_source_accuracy, vote_vectors
from ..engine.aggregator import Aggregator
from ..engine.calibration import PrivateCalibration, hedge_baseline
from ..engine.ledger import Ledger
from ..errors import ParameterError
from ..log import entry as E
from ..log.writer import LogWriter, name_signers, operator_signer
from ..mechanism.release import tally
from ..mechanism.votes import encode_votes
from ..noise import PrivateNoise
from ..policy import Budget, CalibrationPolicy, ConsortiumPolicy, MechanismPolicy, SourcePolicy
from . import data
from .grid import Config

BAND = (0.1, 0.5)
BATCH = 50
CSV_FIELDS = ["key", "dataset", "skew", "institutions", "slices", "sigma1", "threshold", "sigma2", "calibration",
              "epsilon", "backend", "queries", "answered", "coverage", "accuracy", "best_single_accuracy",
              "best_single_accuracy_on_answered", "best_single_slice_vote_accuracy",
              "best_single_slice_vote_accuracy_on_answered",
              "hedge_accuracy", "max_epsilon", "max_influence_epsilon", "max_pate_epsilon", "seconds", "log_bytes"]


def policy_for(cfg: Config) -> ConsortiumPolicy:
    unit = {"unit": "slice", "slices": cfg.slices} if cfg.slices > 1 else {}
    sources = tuple(SourcePolicy(f"inst-{i + 1}", BAND[0], BAND[1], Budget("eps_delta", cfg.epsilon, delta=cfg.delta),
                                 delta=cfg.delta, **unit) for i in range(cfg.institutions))
    return ConsortiumPolicy(sources=sources, name=f"experiment-{cfg.key()}",
                            mechanism=MechanismPolicy("confident_gnmax", sigma2=cfg.sigma2, sigma1=cfg.sigma1,
                                                      threshold=cfg.threshold),
                            calibration=CalibrationPolicy(budget_fraction=0.1))


class Votes:
    """Trained institutions' votes on the held-out queries, cached per partition."""

    def __init__(self):
        self._cache: dict[tuple, tuple] = {}

    def get(self, cfg: Config):
        key = (cfg.dataset, cfg.seed, cfg.skew, cfg.institutions, cfg.slices)
        if key not in self._cache:
            ds = data.load(cfg.dataset, cfg.seed)
            rng = np.random.default_rng([cfg.seed, int(cfg.skew * 1000), cfg.institutions, cfg.slices])
            parts = data.dirichlet_partition(ds.y_train, cfg.institutions, cfg.skew, rng)
            models = [data.train_slices(ds.X_train[p], ds.y_train[p], cfg.slices, rng) for p in parts]
            # The baseline an institution has on its own: one model on all of its data.
            alone = [data.train_slices(ds.X_train[p], ds.y_train[p], 1, rng)[0].predict(ds.X_query) for p in parts]
            self._cache[key] = (data.institution_votes(models, ds.X_query, ds.num_classes), ds.y_query,
                                ds.num_classes, [len(p) for p in parts], np.stack(alone, axis=1))
        return self._cache[key]


def _pate_epsilons(policy, items, results, num_classes: int, delta: float) -> list[float]:
    """Per institution, the PATE 2018 data-dependent ε of the releases made (Theorem
    6 / Prop. 10 on GNMax and the threshold check), for a change of one of its
    units: the tally in units of its unit weight gamma/m. ANALYSIS ONLY."""
    mech = policy.mechanism
    kinds = [s.vote_format for s in policy.sources]
    slices = [s.slices for s in policy.sources]
    orders = np.array(DEFAULT_ORDERS)
    rdp = np.zeros((len(policy.sources), len(orders)))
    for (_, votes), r in zip(items, results):
        gammas = np.array([[int(p.gamma * 65536) for p in r.participants]], np.int64)
        fixed, _ = encode_votes(votes, kinds, num_classes)
        v = tally(gammas, fixed[None], slices)[0] / 2.0 ** 32
        for j, (p, src) in enumerate(zip(r.participants, policy.sources)):
            if not p.gamma:
                continue
            unit = p.gamma / src.slices
            counts = v / unit
            rdp[j] += pate.rdp_threshold(pate.logpr_answered(mech.threshold / unit, mech.sigma1 / unit, counts),
                                         mech.sigma1 / unit, orders)
            if r.answered:
                rdp[j] += pate.rdp_gnmax(pate.logq_gaussian(counts, mech.sigma2 / unit), mech.sigma2 / unit, orders)
    return [float(pate.eps_from_rdp(orders, row, delta)[0]) if row.any() else 0.0 for row in rdp]


@dataclass(frozen=True)
class _Part:
    gamma: float
    spent: float


@dataclass(frozen=True)
class _Released:
    """One query as its log entry records it (the enclave path reads its results there)."""
    answered: bool
    label: int | None
    participants: tuple[_Part, ...]


def _enclave(policy, state: Path, out: Path, items, num_classes: int) -> tuple[list, dict]:
    """The queries through the simulated enclave (sources seal and sign, the coordinator
    opens and releases); the releases as its published log records them, and the
    options that audit that log (its measurement and simulated root, trusted by name)."""
    from ..demo.enclave import COORDINATOR, launch, prepare
    from ..log.files import ENTRIES_FILE, read_published
    from ..log.writer import ENTRIES
    from ..policy import SignerPolicy
    from ..tee.client import CoordinatorClient, SourceClient, connect, verify_enclave
    from ..tee.protocol import enclave_measurement

    pcr0 = enclave_measurement()
    policy = policy.with_signers(SignerPolicy(enclave_pcr0=pcr0.hex()))
    keys, coordinator_key = prepare(state, policy)
    proc = launch(state, out)
    try:
        roots = [(state / "sim-ca" / "root.pem").read_bytes()]
        principals = (state / "principals.json").read_bytes()
        conn = connect(proc.address, proc.tls_cert)
        ident = verify_enclave(conn, expected_pcr0=pcr0, expected_principals=principals, expected_policy=policy,
                               trusted_sim_roots=roots)
        coordinator = CoordinatorClient(COORDINATOR, coordinator_key, conn, ident)
        sources = [SourceClient(sid, keys[sid], conn, ident) for sid in policy.ids]
        for b in range(0, len(items), BATCH):
            batch = items[b:b + BATCH]
            qids = [q for q, _ in batch]
            coordinator.open(qids, num_classes)
            for j, src in enumerate(sources):
                src.submit(qids, [v[j] for _, v in batch], num_classes)
            coordinator.release(qids)
        conn.close()
    finally:
        proc.stop()
    released = []
    for line in read_published(out, ENTRIES, ENTRIES_FILE).split(b"\n"):
        e = E.decode(line) if line else None
        if isinstance(e, E.Query):
            rows = E.per_source(e, policy.ids)
            released.append(_Released(e.answered, e.label, tuple(_Part(r["gamma"], r["spent"]) for r in rows)))
    return released, {"enclave_pcr0": pcr0, "trusted_sim_roots": roots, "enclave_principals": principals}


def run_config(cfg: Config, workdir: Path, votes_cache: Votes) -> tuple[dict, dict]:
    """One configuration's row of results, and the options that audit its log."""
    started = time.perf_counter()
    votes, labels, num_classes, sizes, alone_preds = votes_cache.get(cfg)
    n_cal = cfg.calibration if cfg.backend in ("plaintext", "mpc") else 0
    n_q = min(cfg.queries, len(labels) - n_cal)
    if n_q < 1:
        raise ValueError(f"configuration {cfg.key()}: {cfg.calibration} calibration queries leave none to answer")
    workdir.mkdir(parents=True, exist_ok=True)
    state, out = workdir / "state", workdir / "log"
    items = [(f"q{i:05d}", votes[i]) for i in range(n_cal, n_cal + n_q)]
    audit_options: dict = {}
    if cfg.backend == "enclave":
        policy = policy_for(cfg)
        results, audit_options = _enclave(policy, state, out, items, num_classes)
    else:
        results, policy = _aggregate(cfg, state, out, items, votes[:n_cal], labels[:n_cal], num_classes)
    # Every spend as the auditor recomputes it, exactly, from the published log.
    verdict = audit(out, **audit_options)
    by_id = {r.id: r for r in verdict.sources}
    seconds = time.perf_counter() - started
    truth = labels[n_cal:n_cal + n_q]
    answered = [r.answered for r in results]
    correct = sum(1 for r, y in zip(results, truth) if r.answered and r.label == int(y))
    eps = [by_id[s.id].epsilon for s in policy.sources]
    influence = [by_id[s.id].influence_epsilon for s in policy.sources]
    pate_eps = _pate_epsilons(policy, items, results, num_classes, cfg.delta)
    alone = single_source_accuracy(votes[n_cal:n_cal + n_q], truth, num_classes)
    hedge = hedge_baseline(vote_vectors(votes[n_cal:n_cal + n_q], num_classes), truth, policy.ids)
    n_answered = sum(answered)
    # Each institution alone, one model on all its data (non-private): on every query,
    # and on the queries the consortium answered (the same, easier, subset).
    own = alone_preds[n_cal:n_cal + n_q] == np.asarray(truth)[:, None]
    mask = np.array(answered, bool)
    own_all = own.mean(axis=0)
    own_answered = own[mask].mean(axis=0) if mask.any() else np.full(own.shape[1], np.nan)
    # ... and its own vote in the consortium (the plurality of its slices), on the answered queries.
    kept = [v for v, a in zip(votes[n_cal:n_cal + n_q], answered) if a]
    vote_answered = single_source_accuracy(kept, np.asarray(truth)[mask], num_classes) if kept else []
    return {
        "key": cfg.key(), **cfg.to_dict(), "queries": n_q, "answered": n_answered, "coverage": n_answered / n_q,
        "accuracy": correct / n_answered if n_answered else None,
        "best_single_accuracy": float(max(own_all)),
        "best_single_accuracy_on_answered": float(np.nanmax(own_answered)) if mask.any() else None,
        "best_single_slice_vote_accuracy": max(alone),
        "best_single_slice_vote_accuracy_on_answered": max(vote_answered) if vote_answered else None,
        "hedge_accuracy": hedge.accuracy, "hedge_private": False,
        "institution_examples": sizes,
        "sources": [{"id": s.id, "unit": s.unit, "slices": s.slices, "epsilon": e, "influence_epsilon": ie,
                     "spent_rho": by_id[s.id].spent_rho, "pate_epsilon": pe, "pate_is_analysis_only": True,
                     "single_accuracy": float(o), "slice_vote_accuracy": a}
                    for s, e, ie, pe, a, o in zip(policy.sources, eps, influence, pate_eps, alone, own_all)],
        "max_epsilon": max(eps), "max_influence_epsilon": max(influence), "max_pate_epsilon": max(pate_eps),
        "spend_over_time": [[float(p.spent) for p in r.participants] for r in results],
        "answered_flags": answered,
        "seconds": seconds, "log_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "log": str(out.relative_to(workdir.parent.parent)), "audit_ok": verdict.ok,
        "audit_findings": [str(f) for f in verdict.findings][:5],
    }, audit_options


def _aggregate(cfg: Config, state: Path, out: Path, items, cal_votes, cal_labels, num_classes: int):
    """The queries through an Aggregator on the plaintext or MPC backend, after private
    calibration on the labelled queries (under MPC, inside the parties, on shares)."""
    backend = None
    if cfg.backend == "mpc":
        from ..backends.mpc import MPCBackend

        backend = MPCBackend(num_parties=3, state_dir=str(state / "parties"))
    try:
        policy = name_signers(policy_for(cfg), state, backend)
        with Ledger(state / "ledger.sqlite", policy) as ledger:
            cosigners = backend.cosigners(ledger) if backend is not None else []
            log = LogWriter(out, ledger, [operator_signer(state, policy), *cosigners])
            weights = None
            if len(cal_labels):
                weights = PrivateCalibration(policy, ledger, backend=backend).run(
                    "calibration", cal_votes, cal_labels, num_classes).weights
                log.sync()
            kw = {} if backend is None else {"backend": backend}
            agg = Aggregator(policy, ledger, noise=PrivateNoise(), weights=weights, log=log, **kw)
            results = []
            for b in range(0, len(items), BATCH):
                results += agg.query_batch(items[b:b + BATCH], num_classes)
    finally:
        if backend is not None:
            backend.close()
    return results, policy


def load_results(out: Path) -> list[dict]:
    path = out / "results.json"
    return json.loads(path.read_text())["results"] if path.exists() else []


def write_results(out: Path, results: list[dict]) -> None:
    """Both files, atomically each (a crash leaves the previous complete copy)."""
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"results": results}, indent=1))
    tmp.replace(out / "results.json")
    tmp = out / "results.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    tmp.replace(out / "results.csv")


def run_grid(configs: list[Config], out: Path, progress: bool = True, verify: bool = True) -> list[dict]:
    """Run every configuration not already in out/results.json; returns all results.
    With verify, each configuration's log is audited and its ε checked against the
    auditor's recomputation before its row is kept."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    done = {r["key"] for r in results}
    todo = [c for c in configs if c.key() not in done]
    cache = Votes()
    for cfg in tqdm(todo, desc="configurations", disable=not progress, unit="config"):
        try:
            row, options = run_config(cfg, out / "runs" / cfg.key(), cache)
        except ParameterError as e:          # e.g. more slices than an institution has examples
            results.append({"key": cfg.key(), **cfg.to_dict(), "error": str(e)})
            write_results(out, results)
            continue
        if verify:
            # Audited again, as anyone would from the directory alone.
            report = audit(out / row["log"], **options)
            if not report.ok:
                raise RuntimeError(f"configuration {cfg.key()}: its log does not audit: {report.findings[0]}")
            row["audited_epsilon"] = [s.epsilon for s in report.sources]
        results.append(row)
        write_results(out, results)
    return results
