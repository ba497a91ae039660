"""`dvsecure report LOG --out DIR`: an auditor's view of any log, from the log
alone — the audit's verdict, a per-source table (both units) and the per-source
spend over the log's entries with each cap drawn — as CSV/JSON and a PNG."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..audit.check import audit
from ..log import entry as E
from ..log.files import ENTRIES_FILE, POLICY_FILE, read_published
from ..log.writer import ENTRIES, POLICY
from ..policy import ConsortiumPolicy
from .plots import _pyplot, _save

TABLE_FIELDS = ["id", "unit", "slices", "gamma_min", "gamma_max", "gamma_used_min", "gamma_used_max", "budget_rho",
                "spent_rho", "epsilon", "delta", "influence_rho", "influence_epsilon", "influence_budget_rho",
                "charged_entries", "queries_answered"]


def report(log: Path, out: Path, **audit_options) -> dict:
    """Audit `log`, then write out/sources.csv, out/sources.json and out/spend.png
    (+ spend.json). The spends drawn are the entries' stated cumulative spends,
    which the audit checked against its own recomputation (its findings say where
    they disagree)."""
    log, out = Path(log), Path(out)
    verdict = audit(log, **audit_options)
    policy = ConsortiumPolicy.from_toml(read_published(log, POLICY, POLICY_FILE).decode())
    S = len(policy.sources)
    seqs, spent = [], []
    for line in read_published(log, ENTRIES, ENTRIES_FILE).split(b"\n"):
        if not line:
            continue
        e = E.decode(line)
        if isinstance(e, (E.Query, E.Calibration)):
            seqs.append(e.seq)
            spent.append(E.unpack(e.spent, "<f8", S))
    spent_arr = np.array(spent).reshape(len(spent), S)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: s.to_dict()[k] for k in TABLE_FIELDS} for s in verdict.sources]
    with (out / "sources.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    summary = {"log": str(log), "audit_ok": verdict.ok, "findings": [str(f) for f in verdict.findings],
               "entries": verdict.entries, "sources": rows}
    (out / "sources.json").write_text(json.dumps(summary, indent=1))

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    caps = {}
    for j, src in enumerate(policy.sources):
        line, = ax.plot(seqs, spent_arr[:, j], label=src.id)
        caps[src.id] = float(src.cap_rho)
        ax.axhline(caps[src.id], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("log entry (sequence number)")
    ax.set_ylabel("cumulative ρ at the source's unit")
    ax.set_title("Per-source spend over the log (dashed: each cap)" + ("" if verdict.ok else " — AUDIT FAILED"))
    ax.legend(fontsize=7)
    _save(fig, out, "spend", {"seqs": seqs, "spent": {s.id: spent_arr[:, j].tolist()
                                                      for j, s in enumerate(policy.sources)}, "caps": caps})
    return summary
