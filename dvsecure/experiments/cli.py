"""`dvsecure experiment` and `dvsecure report` (the experiments extra). Parsing
needs nothing beyond the standard library, so without the extra each command
says which extra to install instead of failing on an import."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ParameterError


def add_parsers(sub) -> None:
    x = sub.add_parser("experiment", help="run an experiment grid on real data (experiments extra)")
    x.add_argument("--grid", type=Path, help="grid TOML file (dvsecure/experiments/grid.py documents it)")
    x.add_argument("--dataset", default="digits", help="dataset bundled with scikit-learn (default digits)")
    x.add_argument("--quick", action="store_true", help="the small built-in grid (12 configurations)")
    x.add_argument("--out", type=Path, required=True, help="results directory (re-running skips finished work)")
    x.add_argument("--no-plots", action="store_true", help="results only")
    x.add_argument("--json", action="store_true", help="print a JSON summary")
    r = sub.add_parser("report", help="a log's per-source table and spend plot, from the log alone")
    r.add_argument("log", type=Path, help="log directory")
    r.add_argument("--out", type=Path, required=True, help="where to write sources.csv/json and spend.png")
    r.add_argument("--trust-sim-root", type=Path, action="append", default=[],
                   help="trust this simulated enclave root (an enclave's log)")
    r.add_argument("--json", action="store_true", help="print the table as JSON")


def _extra():
    from . import require_extra

    try:
        require_extra()
    except ImportError as e:
        raise ParameterError(str(e)) from None


def run_experiment(args) -> int:
    _extra()
    import sys

    from . import grid, plots
    from .run import run_grid

    if args.grid is not None and args.quick:
        raise ParameterError("--quick is the built-in small grid; --grid gives your own")
    configs = grid.load(args.grid) if args.grid else grid.parse(
        {**(grid.QUICK if args.quick else grid.FULL),
         "experiment": {**(grid.QUICK if args.quick else grid.FULL)["experiment"], "dataset": args.dataset}})
    results = run_grid(configs, args.out, progress=sys.stderr.isatty())
    figures = [] if args.no_plots else [str(p) for p in plots.draw_all(results, args.out / "figures")]
    best = plots.best_configuration(results)
    summary = {"out": str(args.out), "configurations": len(results), "figures": figures,
               "results": [str(args.out / "results.json"), str(args.out / "results.csv")],
               "best": None if best is None else {k: best[k] for k in (
                   "key", "skew", "slices", "sigma1", "threshold", "sigma2", "epsilon", "accuracy", "coverage",
                   "max_epsilon", "best_single_accuracy", "best_single_accuracy_on_answered",
                   "best_single_slice_vote_accuracy", "best_single_slice_vote_accuracy_on_answered")}}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{len(results)} configurations in {args.out}/results.json and results.csv")
        if best is not None:
            print(f"largest gain: configuration {best['key']} (skew {best['skew']}, m = {best['slices']}, sigma1 "
                  f"{best['sigma1']}, T {best['threshold']}, sigma2 {best['sigma2']}, budget eps {best['epsilon']}): "
                  f"accuracy {best['accuracy']:.3f} on {best['coverage']:.0%} of queries, max eps "
                  f"{best['max_epsilon']:.2f}; best single institution's own vote "
                  f"{best['best_single_slice_vote_accuracy_on_answered']:.3f} on those queries, one model on all its "
                  f"data (no privacy) {best['best_single_accuracy_on_answered']:.3f}")
        for f in figures:
            print(f"figure: {f}")
    return 0


def run_report(args) -> int:
    _extra()
    from ..log.files import KEY_FILE, read_named
    from .report import report

    roots = [read_named(p, KEY_FILE, follow_links=True) for p in args.trust_sim_root]
    summary = report(args.log, args.out, trusted_sim_roots=roots)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"audit of {args.log}: " + ("OK" if summary["audit_ok"] else "FAILED"))
        for f in summary["findings"]:
            print(f"  {f}")
        for s in summary["sources"]:
            print(f"{s['id']:<12} {s['unit']:>6} m={s['slices']:<5} spent rho {s['spent_rho']:.4f} "
                  f"eps {s['epsilon']:.3f} influence eps {s['influence_epsilon']:.1f}")
        print(f"written: {args.out}/sources.csv, sources.json, spend.png, spend.json")
    return 0 if summary["audit_ok"] else 1
