"""Command line: `dvsecure demo | audit | receipt export`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DvsecureError, ParameterError


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
    d.add_argument("--backend", choices=["plaintext", "mpc"], default="plaintext",
                   help="plaintext reference, or mpc: local CrypTen parties + a TTP dealer")
    d.add_argument("--parties", type=_positive_int, default=3, help="computing parties for --backend mpc")
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

    a = sub.add_parser("audit", help="verify a log directory or an exported receipt; exit 0 iff all holds")
    a.add_argument("path", type=Path, help="log directory or receipt directory")
    a.add_argument("--source", help="report only this source (a receipt is always its own source's)")
    a.add_argument("--policy", type=Path, help="the policy you agreed to; the log must have used exactly it")
    a.add_argument("--witness", type=Path,
                   help="witness state file: checkpoints seen before are checked for consistency "
                        "(a fork is caught), and the latest is remembered after a clean audit")
    a.add_argument("--trust-key", action="append", default=[], metavar="VKEY",
                   help="pin a signer's verifier key (the string, or a file holding it); repeatable")
    a.add_argument("--allow-nonprivate", action="store_true",
                   help="do not fail on no-noise or seeded entries (they are still reported)")
    a.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser("bench", help="measure the MPC secure pipeline against CrypTen's own argmax")
    b.add_argument("--backend", choices=["mpc"], default="mpc")
    b.add_argument("--queries", type=_positive_int, default=10000)
    b.add_argument("--classes", type=_positive_int, default=10)
    b.add_argument("--sources", type=_positive_int, default=50)
    b.add_argument("--parties", type=_positive_int, default=3)
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the result to FILE")

    r = sub.add_parser("receipt", help="receipts for sources")
    rsub = r.add_subparsers(dest="receipt_command", required=True)
    e = rsub.add_parser("export", help="write what one source needs to check its own history")
    e.add_argument("log", type=Path, help="log directory")
    e.add_argument("--source", required=True, help="source id")
    e.add_argument("--out", type=Path, help="receipt directory (default: receipt-SOURCE)")
    return p


def _key_arg(text: str) -> str:
    path = Path(text)
    return path.read_text().strip() if path.is_file() else text


def _audit(args) -> int:
    from .audit import audit

    report = audit(args.path, source=args.source, policy=args.policy, witness=args.witness,
                   trusted_keys=[_key_arg(k) for k in args.trust_key], allow_nonprivate=args.allow_nonprivate)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "audit":
            return _audit(args)
        if args.command == "bench":
            from .mpc.bench import run_bench

            if args.parties < 2 or args.classes < 2:
                raise ParameterError("--parties and --classes must be at least 2")
            result = json.dumps(run_bench(args.queries, args.classes, args.sources, args.parties), indent=2)
            if args.json:
                args.json.write_text(result + "\n")
            print(result)
            return 0
        if args.command == "receipt":
            from .receipt import export_receipt

            out = export_receipt(args.log, args.source, args.out or Path(f"receipt-{args.source}"))
            print(f"receipt for {args.source} written to {out}")
            return 0
        if args.command == "demo":
            from .demo import run_demo
            from .noise import NO_NOISE, PRIVATE, SEEDED, make_noise
            from .policy import ConsortiumPolicy

            if args.no_noise:
                noise = make_noise(NO_NOISE)
            elif args.noise_seed is not None:
                noise = make_noise(SEEDED, args.noise_seed)
            else:
                noise = make_noise(PRIVATE)
            policy = ConsortiumPolicy.load(args.policy) if args.policy else None
            state = args.state or args.out.with_name(args.out.name + ".state")
            backend = None
            if args.backend == "mpc":
                from .backends.mpc import MPCBackend

                backend = MPCBackend(num_parties=args.parties, state_dir=str(state / "parties"))
            try:
                report = run_demo(out=args.out, state=state, num_sources=args.sources, num_queries=args.queries,
                                  num_classes=args.classes, seed=args.seed, noise=noise, policy=policy,
                                  backend=backend)
            finally:
                if backend is not None:
                    backend.close()
            print(report.to_json() if args.json else report.to_text())
            return 0
    except DvsecureError as e:
        print(f"dvsecure: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
