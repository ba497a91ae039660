"""The demo on the plaintext and MPC backends: the embedded consortium
(`consortium`) queried end to end, its log audited, a report.

On a fresh ledger the first third of the queries are labelled and used for
private calibration (on the MPC backend, inside the parties); the rest are answered.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


from ..accounting.conversions import zcdp_eps_tight
from ..audit.check import audit
from ..backends import FROM_SOURCES, PlaintextBackend
from ..engine.aggregator import Aggregator
from ..engine.calibration import PrivateCalibration, hedge_baseline, labelled_query_ids, stored_weights
from ..engine.ledger import Ledger
from ..errors import ParameterError
from ..log.writer import LogWriter, name_signers, operator_signer
from ..mechanism.filter import BudgetFilter
from ..noise import NoiseSource
from ..policy import ConsortiumPolicy
from .consortium import default_policy, single_source_accuracy, synthetic_votes, vote_vectors


@dataclass
class DemoReport:
    data: dict

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    def to_text(self) -> str:
        d = self.data
        lines = []
        if not d["private"]:
            lines.append(f"!!! NOT PRIVATE: noise mode {d['noise_mode']!r} — for testing only !!!")
        lines.append(f"dvsecure demo — backend {d['backend']}, mechanism {d['mechanism']['kind']}, "
                     f"noise {d['noise_mode']}")
        if d.get("votes_sent", "").startswith("by each source"):
            lines.append(f"votes sent {d['votes_sent']}")
        lines.append(f"queries: {d['answered'] + d['refused']} released ({d['answered']} answered, "
                     f"{d['refused']} refused); accuracy on answered: "
                     + (f"{d['accuracy']:.3f}" if d['accuracy'] is not None else "n/a"))
        if d.get("best_single_source_accuracy") is not None:
            lines.append(f"best single source alone (NOT private, comparison only): "
                         f"{d['best_single_source_accuracy']:.3f}")
        if d.get("hedge_baseline_accuracy") is not None:
            lines.append(f"non-private Hedge baseline (NOT private, comparison only): "
                         f"{d['hedge_baseline_accuracy']:.3f}")
        lines.append("")
        hdr = f"{'source':<10} {'unit':>6} {'slices':>6} {'band':>13} {'gamma used':>17} {'spent rho':>10} " \
              f"{'budget rho':>10} {'eps@delta':>16} {'influence eps':>13} {'answered':>8}  status"
        lines.append(hdr)
        lines.append("-" * len(hdr))
        for s in d["sources"]:
            used = "-" if s["gamma_used_min"] is None else f"{s['gamma_used_min']:.3f}..{s['gamma_used_max']:.3f}"
            lines.append(f"{s['id']:<10} {s['unit']:>6} {s['slices']:>6} "
                         f"{s['gamma_min']:>6.3f}..{s['gamma_max']:<5.3f} {used:>17} {s['spent_rho']:>10.4f} {s['budget_rho']:>10.4f} "
                         f"{s['epsilon']:>7.3f}@{s['delta']:<8.0e} {s['influence_epsilon']:>13.1f} "
                         f"{s['queries_answered']:>8}  {s['status']}")
        if any(s["unit"] != "source" for s in d["sources"]):
            lines.append("eps@delta protects one slice (any one record) of a slice-unit source, one whole source "
                         "otherwise; influence eps is the source-level spend")
        lines.append("")
        a = d["audit"]
        lines.append("audit of the published log: " + ("OK" if a["ok"] else "FAILED") +
                     f" ({a['entries']} entries, {a['checkpoints']} signed checkpoints; "
                     f"{a.get('command', 'dvsecure audit ' + d['out'])})")
        lines += [f"  {f}" for f in a["findings"]]
        lines.append(f"published log: {d['out']}   private state (ledgers and keys): {d['state']}")
        return "\n".join(lines)


def source_row(src, spent, influence, gamma_calibrated, used, answered: int, status: str) -> dict:
    """One source's line of the demo report, both units labelled: `epsilon` and
    `spent_rho` at the source's unit (one slice of a slice-unit source), the
    `influence_*` at the source level."""
    return {
        "id": src.id, "unit": src.unit, "slices": src.slices,
        "gamma_min": src.gamma_min, "gamma_max": src.gamma_max, "gamma_calibrated": gamma_calibrated,
        "gamma_used_min": min(used) if used else None, "gamma_used_max": max(used) if used else None,
        "budget_rho": float(src.budget_rho), "enforced_rho": float(src.cap_rho), "spent_rho": float(spent),
        "epsilon": zcdp_eps_tight(spent, src.delta), "delta": src.delta,
        "influence_rho": float(influence), "influence_epsilon": zcdp_eps_tight(influence, src.delta),
        "influence_budget_rho": None if src.influence_budget_rho is None else float(src.influence_budget_rho),
        "queries_answered": answered, "status": status,
    }


def demo_sources(state: Path, policy: ConsortiumPolicy) -> tuple[dict, Path]:
    """The demo plays the sources: their Ed25519 signing keys (state/sources.json,
    0600, kept across runs) and the principals file the parties check them with."""
    import base64
    import stat

    from nacl.signing import SigningKey

    from ..tee.protocol import Principals

    state.mkdir(parents=True, exist_ok=True)
    path, principals = state / "sources.json", state / "principals.json"
    if not path.exists():
        keys = {sid: base64.b64encode(bytes(SigningKey.generate())).decode() for sid in policy.ids}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f)
    keys = {sid: SigningKey(base64.b64decode(k)) for sid, k in json.loads(path.read_text()).items()}
    if set(keys) != set(policy.ids):
        raise ParameterError(f"{path} holds keys for other sources than the policy's")
    principals.write_text(Principals(sources={s: k.verify_key for s, k in keys.items()}, coordinators={}).to_json())
    return keys, principals


def _submitted(submitters, policy: ConsortiumPolicy, query_ids, votes, num_classes: int) -> list:
    """With submitters, each source first sends every party its own shares over gRPC
    and the coordinator asks with FROM_SOURCES rows; else the votes themselves."""
    if not submitters:
        return list(votes)
    for j, submitter in enumerate(submitters):
        submitter.submit(list(query_ids), [row[j] for row in votes], num_classes, policy.sources[j].vote_format)
    return [[FROM_SOURCES] * len(policy.sources) for _ in query_ids]


def _ask(agg: Aggregator, items, num_classes: int, submitters) -> list:
    """One batch, its votes sent by the sources themselves when there are submitters."""
    if not submitters:
        return agg.query_batch(items, num_classes)
    qids = [q for q, _ in items]
    _submitted(submitters, agg.policy, qids, [votes for _, votes in items], num_classes)
    return agg.query_batch([(q, FROM_SOURCES) for q in qids], num_classes)


def run_demo(*, out: Path, state: Path, num_sources: int = 5, num_queries: int = 300, num_classes: int = 10,
             seed: int = 0, noise: NoiseSource, policy: ConsortiumPolicy | None = None,
             backend=None, consortium: str = "slices") -> DemoReport:
    if num_queries < 2:
        raise ParameterError(f"--queries must be >= 2, got {num_queries}")
    if num_classes < 2:
        raise ParameterError(f"--classes must be >= 2, got {num_classes}")
    policy = policy or default_policy(num_sources, consortium)
    num_sources = len(policy.sources)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    policy = name_signers(policy, state, backend)

    ledger = Ledger(state / "ledger.sqlite", policy)
    try:
        # The published directory is the log: policy, entries, checkpoints, keys.
        # Under MPC every party cosigns each checkpoint after checking it (DESIGN §5).
        cosigners = backend.cosigners(ledger) if hasattr(backend, "cosigners") else []
        log = LogWriter(out, ledger, [operator_signer(state, policy), *cosigners])
        log.sync()      # catches up whatever a crash left unlogged
        # Each run continues the ledger: query ids continue where the last run stopped.
        start = ledger.next_seq()
        labels, votes = synthetic_votes(num_queries, policy, num_classes, seed + start)
        weights = stored_weights(ledger)
        # The first third is labelled for calibration only on the first run: a run that
        # continues a calibrated ledger keeps its weights and answers every query.
        n_cal = 0 if weights is not None else num_queries // 3
        submitters = []
        if getattr(backend, "takes_votes_from_sources", False):
            from ..mpc.client import PartySubmitter

            keys, _ = demo_sources(state, policy)
            submitters = [PartySubmitter(sid, keys[sid], backend.endpoints()) for sid in policy.ids]
        try:
            if weights is None and n_cal:
                # Calibration runs where the votes are: here (plaintext), or inside the
                # MPC parties on shares; the same entry and charges either way.
                cal_id = f"calibration-{start:06d}"
                cal_ids = labelled_query_ids(cal_id, n_cal)
                cal_votes = _submitted(submitters, policy, cal_ids, votes[:n_cal], num_classes)
                weights = PrivateCalibration(policy, ledger, noise, backend=backend).run(
                    cal_id, cal_votes, labels[:n_cal], num_classes, cal_ids).weights
                log.sync()
            hedge = hedge_baseline(vote_vectors(votes[n_cal:], num_classes), labels[n_cal:], policy.ids)
            alone = single_source_accuracy(votes[n_cal:], labels[n_cal:], num_classes)
            agg = Aggregator(policy, ledger, backend=backend or PlaintextBackend(), noise=noise, weights=weights,
                             log=log)
            items = [(f"run{start:06d}-q{i:05d}", votes[i]) for i in range(n_cal, num_queries)]
            results = []
            for i in range(0, len(items), 50):
                results.extend(_ask(agg, items[i:i + 50], num_classes, submitters))
        finally:
            for s in submitters:
                s.close()

        released = [r.label for r in results]
        answered = sum(r.answered for r in results)
        correct = sum(1 for r, y in zip(results, labels[n_cal:]) if r.answered and r.label == int(y))
        spent = ledger.spent()
        budgets = ledger.budgets()
        influence = ledger.influence()
        flt = BudgetFilter(policy.mechanism)
        sources = []
        for src in policy.sources:
            used = [p.gamma for r in results for p in r.participants if p.source_id == src.id and p.gamma > 0]
            took_part = sum(1 for r in results for p in r.participants
                            if p.source_id == src.id and p.gamma > 0 and r.answered)
            can_continue = flt.decide(src, weights[src.id], spent[src.id], budgets[src.id]).gamma > 0
            sources.append(source_row(src, spent[src.id], influence[src.id], weights[src.id], used, took_part,
                                      "active" if can_continue else "exhausted"))
        data = {
            "backend": agg.backend.name, "noise_mode": noise.mode, "private": noise.private,
            "votes_sent": "by each source to each party, as sealed shares over gRPC+TLS" if submitters
            else "through the coordinator",
            "mechanism": policy.mechanism.to_dict(), "policy_digest": policy.digest(),
            "calibration_queries": n_cal, "answered": answered, "refused": len(results) - answered,
            "accuracy": (correct / answered) if answered else None,
            "hedge_baseline_accuracy": hedge.accuracy, "hedge_baseline_private": False,
            "best_single_source_accuracy": max(alone) if alone else None,
            "single_source_accuracy": dict(zip(policy.ids, alone)),
            "labels": released, "sources": sources, "out": str(out), "state": str(state),
        }
        # The sources' view: audit the published log from signed data alone.
        audited = audit(out, allow_nonprivate=not noise.private)
        data["audit"] = {"ok": audited.ok, "entries": audited.entries, "checkpoints": audited.checkpoints,
                         "findings": [str(f) for f in audited.findings]}
        return DemoReport(data)
    finally:
        ledger.close()
