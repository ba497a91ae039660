"""Plots of a grid's results (matplotlib, Agg: no display), each a PNG beside the
JSON of exactly the data drawn, so a test or a reader can check what a figure
shows without looking at pixels."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..accounting.conversions import rho_from_eps_delta


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str, data: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    _pyplot().close(fig)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    return out / f"{name}.png"


def _ok(results):
    return [r for r in results if "error" not in r]


def frontier(results, out: Path) -> Path:
    """Accuracy on answered queries against the largest per-source ε (at its unit),
    one point per configuration, by slice count; the best single institution and
    the non-private Hedge ensemble as lines (their mean over the configurations)."""
    plt = _pyplot()
    rows = [r for r in _ok(results) if r["accuracy"] is not None]
    series = defaultdict(list)
    for r in rows:
        series[r["slices"]].append((r["max_epsilon"], r["accuracy"], r["key"]))
    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)
    best, vote, hedge = mean("best_single_accuracy"), mean("best_single_slice_vote_accuracy"), mean("hedge_accuracy")
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, pts in sorted(series.items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"m = {m}" if m > 1 else "source unit")
    ax.axhline(best, color="k", linestyle="--", label="best institution alone: one model, all its data (non-private)")
    ax.axhline(vote, color="k", linestyle="-.", label="best institution's own vote (its slices, non-private)")
    ax.axhline(hedge, color="grey", linestyle=":", label="Hedge ensemble (non-private)")
    ax.set_xlabel("max per-source ε at its unit (δ = 1e-5)")
    ax.set_ylabel("accuracy on answered queries")
    ax.set_title("Accuracy vs privacy")
    ax.legend(fontsize=7)
    return _save(fig, out, "frontier", {"series": {str(m): pts for m, pts in series.items()},
                                        "best_single_accuracy": best, "best_single_slice_vote_accuracy": vote,
                                        "hedge_accuracy": hedge})


def _mean_by_slices(results, out: Path, name: str, x: str, y: str, xlabel: str, ylabel: str, title: str) -> Path:
    """Mean of result[y] against result[x], one line per slice count (mean over the
    other parameters)."""
    plt = _pyplot()
    acc = defaultdict(lambda: defaultdict(list))
    for r in _ok(results):
        acc[r["slices"]][r[x]].append(r[y])
    series = {m: sorted((k, sum(v) / len(v)) for k, v in by.items()) for m, by in acc.items()}
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"m = {m}" if m > 1 else "source unit")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, out, name, {"series": {str(m): pts for m, pts in series.items()}})


def answered_vs_budget(results, out: Path) -> Path:
    return _mean_by_slices(results, out, "answered_vs_budget", "epsilon", "answered",
                           "budget ε per source at its unit (δ = 1e-5)", "queries answered",
                           "Queries answered vs budget")


def spend_over_time(result: dict, out: Path, name: str = "spend_over_time") -> Path:
    """Per-source cumulative spend (ρ at its unit) over one configuration's query
    stream, each budget drawn as a cap."""
    plt = _pyplot()
    spends = list(zip(*result["spend_over_time"]))          # per source
    cap = float(rho_from_eps_delta(result["epsilon"], result["delta"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, series in zip(result["sources"], spends):
        ax.plot(range(1, len(series) + 1), series, label=s["id"])
    ax.axhline(cap, color="r", linestyle="--", label=f"budget (ε = {result['epsilon']:g})")
    ax.set_xlabel("query")
    ax.set_ylabel("cumulative ρ at the source's unit")
    ax.set_title(f"Spend over the query stream (m = {result['slices']})")
    ax.legend(fontsize=7)
    return _save(fig, out, name, {"key": result["key"], "cap_rho": cap,
                                  "spend": {s["id"]: list(v) for s, v in zip(result["sources"], spends)}})


def coverage_vs_threshold(results, out: Path) -> Path:
    return _mean_by_slices(results, out, "coverage_vs_threshold", "threshold", "coverage",
                           "threshold T (weight units)", "coverage (answered / asked)", "Coverage vs threshold")


def gain(r: dict, baseline: str = "best_single_slice_vote_accuracy") -> float:
    """Accuracy on answered queries over a single-institution baseline, taking the
    stronger of its accuracy on every query and on the answered ones (the
    consortium answers the easier queries). Baselines: the institution's own vote
    in the consortium, the plurality of its slices ("best_single_slice_vote_accuracy",
    the most it could release alone from the same slices, before any noise), or
    one model trained on all its data, with no privacy ("best_single_accuracy")."""
    return r["accuracy"] - max(r[baseline], r.get(f"{baseline}_on_answered") or 0.0)


def best_configuration(results) -> dict | None:
    """The configuration with the largest `gain` among those answering at least a
    quarter of their queries."""
    rows = [r for r in _ok(results) if r["accuracy"] is not None and r["coverage"] >= 0.25]
    return max(rows, key=gain, default=None)


def draw_all(results, out: Path) -> list[Path]:
    paths = [frontier(results, out), answered_vs_budget(results, out), coverage_vs_threshold(results, out)]
    best = best_configuration(results)
    if best is not None:
        paths.append(spend_over_time(best, out))
    return paths
