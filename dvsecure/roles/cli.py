"""The command lines of the long-running roles: `party serve`, `dealer serve`,
`coordinator run` (each reads its --config TOML; flags override its keys)."""
from __future__ import annotations

import json
from pathlib import Path

from . import config


def add_party_serve_arguments(pa) -> None:
    """`dvsecure party serve --config F`: the party parser's own flags override the file."""
    from .serve import PARTY_SCHEMA

    pa.add_argument("action", nargs="?", choices=["serve"],
                    help="serve: run as a long-running service from --config (restarts the member when the "
                         "group breaks; SIGTERM stops it)")
    pa.add_argument("--config", type=Path, metavar="FILE",
                    help="with serve: the party's TOML config; keys: " + config.describe(PARTY_SCHEMA))
    pa.add_argument("--advertise", metavar="HOST:PORT", help="with serve: where the sources reach this party")
    pa.add_argument("--expect-digest", metavar="DIGEST", help="with serve: refuse unless the policy has it")


def add_parsers(sub) -> None:
    from .coordinator import SCHEMA as COORDINATOR_SCHEMA
    from .serve import DEALER_SCHEMA

    d = sub.add_parser("dealer", help="the TTP dealer as a long-running service (dealer serve --config F)",
                       description="Run the MPC parties' TTP dealer (Beaver triples and one-time tables) from "
                                   "its TOML config; it rejoins whenever the group breaks; SIGTERM stops it.")
    dsub = d.add_subparsers(dest="dealer_command", required=True)
    ds = dsub.add_parser("serve", help="serve from --config", description="keys: " + config.describe(DEALER_SCHEMA))
    ds.add_argument("--config", type=Path, metavar="FILE", help="the dealer's TOML config")
    ds.add_argument("--roster", type=Path, help="override the config's roster")
    ds.add_argument("--state", type=Path, help="override the config's state directory")

    c = sub.add_parser("coordinator", help="the operator's coordinator: open queries, release them, publish the log",
                       description="Run the coordinator of an MPC consortium whose parties, dealer and sources "
                                   "run on their own hosts.")
    csub = c.add_subparsers(dest="coordinator_command", required=True)
    cr = csub.add_parser("run", help="open the queries of --queries in rounds, release them, write results",
                         description="Queries file: JSONL, one {\"query_id\", \"classes\", optional \"label\"} "
                                     "per line (labelled queries calibrate the weights first). Config keys: "
                                     + config.describe(COORDINATOR_SCHEMA))
    cr.add_argument("--config", type=Path, metavar="FILE", help="the coordinator's TOML config")
    cr.add_argument("--queries", type=Path, required=True, metavar="FILE", help="the queries, JSONL")
    cr.add_argument("--results", type=Path, metavar="FILE", help="override where results go (JSONL)")
    cr.add_argument("--out", type=Path, help="override the published directory")
    cr.add_argument("--deadline", type=float, metavar="SECONDS", help="override the seconds a round waits")
    cr.add_argument("--batch", type=int, metavar="N", help="override the queries per round")
    cr.add_argument("--json", action="store_true", help="print one JSON object at the end")


def run_party_serve(args) -> int:
    from .serve import PARTY_SCHEMA, serve_party

    cfg = config.load(args.config, PARTY_SCHEMA, {
        "rank": args.rank, "roster": args.roster, "state": args.state, "policy": args.policy,
        "principals": args.principals, "listen": args.listen, "advertise": args.advertise,
        "expect_digest": args.expect_digest, "allow_nonprivate": args.allow_nonprivate or None}, "party")
    return serve_party(cfg)


def run(args) -> int:
    if args.command == "dealer":
        from .serve import DEALER_SCHEMA, serve_dealer

        cfg = config.load(args.config, DEALER_SCHEMA, {"roster": args.roster, "state": args.state}, "dealer")
        return serve_dealer(cfg)
    from .coordinator import SCHEMA, run_coordinator
    from .progress import Progress

    cfg = config.load(args.config, SCHEMA, {"results": args.results, "out": args.out, "deadline": args.deadline,
                                            "batch": args.batch}, "coordinator")
    if cfg["batch"] < 1 or cfg["deadline"] <= 0:
        raise config.ConfigError(f"{args.config}: batch must be >= 1 and deadline > 0")
    summary = run_coordinator(cfg, args.queries, Progress("queries"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"released {summary['released']} queries ({summary['answered']} answered), {summary['failed']} failed, "
              f"{summary['skipped']} bad rows skipped; calibrated: {'yes' if summary['calibrated'] else 'no'}")
        for e in summary["errors"][:20]:
            print(f"  {e}")
        print(f"log: {summary['log']} ({summary['log_entries']} entries); results: {summary['results']}")
    return 1 if summary["failed"] or summary["skipped"] else 0
