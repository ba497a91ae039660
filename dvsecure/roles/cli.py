"""The command lines of the long-running roles: `party serve`, `dealer serve`,
`enclave serve`, `coordinator run [--backend mpc|enclave]` (each reads its --config TOML; flags override its keys)."""
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

    from .enclave_coordinator import SCHEMA as ENCLAVE_COORDINATOR_SCHEMA
    from .enclave_serve import SCHEMA as ENCLAVE_SCHEMA

    e = sub.add_parser("enclave", help="the attested enclave as a long-running service (enclave serve --config F)",
                       description="Run the enclave application from its TOML config (enclave serve), print the "
                                   "simulated enclave's PCR0 to pin in the policy (enclave measurement), or add the "
                                   "coordinator's key to the agreed principals file (enclave add-coordinator).")
    esub = e.add_subparsers(dest="enclave_command", required=True)
    es = esub.add_parser("serve", help="serve from --config; SIGTERM stops it, a restart continues on its state",
                         description="keys: " + config.describe(ENCLAVE_SCHEMA))
    es.add_argument("--config", type=Path, metavar="FILE", help="the enclave's TOML config")
    es.add_argument("--provider", choices=["sim", "nitro"],
                    help="override the config's provider: nitro (needs the NSM device) or sim (SIMULATED, no TEE)")
    es.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    es.add_argument("--state", type=Path, help="override the config's state directory")
    em = esub.add_parser("measurement", help="print the PCR0 of the simulated enclave built from this checkout "
                                             "(what consortium init --enclave-pcr0 pins)")
    em.add_argument("--json", action="store_true", help="print one JSON object")
    ea = esub.add_parser("add-coordinator", help="add the coordinator's key to the principals file the enclave "
                                                 "is started with (who may open, release and calibrate)")
    ea.add_argument("--principals", type=Path, required=True, help="the principals file (beside the policy)")
    ea.add_argument("--key", type=Path, required=True, help="the operator's public file (operator.pub.json)")
    ea.add_argument("--name", default="operator", help="the coordinator's name (its config's name key)")

    c = sub.add_parser("coordinator", help="the operator's coordinator: open queries, release them, publish the log",
                       description="Run the coordinator of a consortium whose parties, dealer (MPC) or enclave, "
                                   "and sources run on their own hosts.")
    csub = c.add_subparsers(dest="coordinator_command", required=True)
    cr = csub.add_parser("run", help="open the queries of --queries in rounds, release them, write results",
                         description="Queries file: JSONL, one {\"query_id\", \"classes\", optional \"label\"} "
                                     "per line (labelled queries calibrate the weights first). Config keys (mpc): "
                                     + config.describe(COORDINATOR_SCHEMA) + ". Config keys (enclave): "
                                     + config.describe(ENCLAVE_COORDINATOR_SCHEMA))
    cr.add_argument("--backend", choices=["mpc", "enclave"], default="mpc",
                    help="mpc: party 0 runs here with the parties and dealer of the roster; enclave: the attested "
                         "enclave of the config's enclave key computes (default mpc)")
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
    if args.command == "enclave":
        return run_enclave(args)
    from .coordinator import SCHEMA, run_coordinator, summary_text
    from .enclave_coordinator import SCHEMA as ENCLAVE_SCHEMA
    from .enclave_coordinator import run_enclave_coordinator
    from .progress import Progress

    enclave = args.backend == "enclave"
    cfg = config.load(args.config, ENCLAVE_SCHEMA if enclave else SCHEMA,
                      {"results": args.results, "out": args.out, "deadline": args.deadline, "batch": args.batch},
                      "enclave coordinator" if enclave else "coordinator")
    if cfg["batch"] < 1 or cfg["deadline"] <= 0:
        raise config.ConfigError(f"{args.config}: batch must be >= 1 and deadline > 0")
    summary = (run_enclave_coordinator if enclave else run_coordinator)(cfg, args.queries, Progress("queries"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(summary_text(summary)))
    return 1 if summary["failed"] or summary["skipped"] else 0


def run_enclave(args) -> int:
    from .enclave_serve import SCHEMA, add_coordinator, serve_enclave

    if args.enclave_command == "serve":
        cfg = config.load(args.config, SCHEMA, {"provider": args.provider, "listen": args.listen,
                                                "state": args.state}, "enclave")
        return serve_enclave(cfg)
    if args.enclave_command == "measurement":
        from ..tee.protocol import enclave_measurement

        pcr0 = enclave_measurement().hex()
        print(json.dumps({"pcr0": pcr0, "simulated": True}) if args.json else pcr0)
        return 0
    out = add_coordinator(args.principals, args.key, args.name)
    print(f"coordinator {out['coordinator']} ({out['key']}) may open queries at the enclave started with "
          f"{out['principals']}")
    return 0
