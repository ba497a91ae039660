"""Command line: `dvsecure demo ...`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DvsecureError
from .noise import make_noise, NO_NOISE, PRIVATE, SEEDED
from .policy import ConsortiumPolicy


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvsecure", description="Verifiable private aggregation of votes.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the embedded demo consortium on synthetic voters")
    d.add_argument("--backend", choices=["plaintext"], default="plaintext")
    d.add_argument("--sources", type=_positive_int, default=5, help="number of sources (default 5)")
    d.add_argument("--queries", type=_positive_int, default=300,
                   help="queries, the first third labelled for calibration (default 300)")
    d.add_argument("--classes", type=_positive_int, default=10, help="classes per query (default 10)")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic voters (not of the noise)")
    d.add_argument("--policy", type=Path, help="a consortium policy TOML file instead of the embedded one")
    d.add_argument("--out", type=Path, default=Path("dvsecure-demo"),
                   help="published directory (default ./dvsecure-demo)")
    d.add_argument("--state", type=Path, help="private state directory (default: OUT.state beside OUT)")
    noise = d.add_mutually_exclusive_group()
    noise.add_argument("--no-noise", action="store_true", help="TEST ONLY: release without noise (not private)")
    noise.add_argument("--noise-seed", type=int,
                       help="RESEARCH ONLY: seeded exact sampler, reproducible and not private")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            if args.no_noise:
                noise = make_noise(NO_NOISE)
            elif args.noise_seed is not None:
                noise = make_noise(SEEDED, args.noise_seed)
            else:
                noise = make_noise(PRIVATE)
            policy = ConsortiumPolicy.load(args.policy) if args.policy else None
            state = args.state or args.out.with_name(args.out.name + ".state")
            report = run_demo(out=args.out, state=state, num_sources=args.sources, num_queries=args.queries,
                              num_classes=args.classes, seed=args.seed, noise=noise, policy=policy)
            print(report.to_json() if args.json else report.to_text())
            return 0
    except DvsecureError as e:
        print(f"dvsecure: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
