"""`dvsecure source submit | watch | verify`: a source's commands (issue 14),
reading its TOML config (`roles.source.SCHEMA`; flags override its keys): to
the MPC parties (key `parties`) or to an attested enclave (key `enclave`,
`roles.enclave_source`).

Exit codes: 0 every vote that could be sent was sent (verify: the audit is
clean); 1 some rows were bad or some vote was not taken (verify: findings);
2 nothing was sent because something failed before sending (the config, the
policy, an endpoint, the vote file, the coordinator, a party's keys).
Register with `add_parser(subparsers)`, dispatch with `run(args)`.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from .config import describe
from .enclave_source import make_source
from .source import SCHEMA, load_config, watch


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE", help="this source's TOML config; keys: " + describe(SCHEMA))
    p.add_argument("--id", help="overrides the config's id")
    p.add_argument("--key", help="overrides key (the key directory or source.key)")
    p.add_argument("--policy", help="overrides policy (the consortium policy TOML)")
    p.add_argument("--expect-digest", help="overrides expect_digest")
    p.add_argument("--party", action="append", metavar="ENDPOINT",
                   help="overrides parties: each party's endpoint.json (path or URL), repeated in rank order")
    p.add_argument("--enclave", metavar="HOST:PORT",
                   help="overrides enclave (the attested enclave, instead of parties)")
    p.add_argument("--coordinator", metavar="LOCATION", help="overrides coordinator (published directory or URL)")
    p.add_argument("--state", help="overrides state (this source's own directory)")
    p.add_argument("--timeout", type=float, help="overrides timeout (seconds for a party's answer)")
    p.add_argument("--json", action="store_true", help="print JSON (one object; watch: one per line)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("source", help="a source's commands: submit its votes, watch for open queries, "
                                             "verify the log")
    ssub = s.add_subparsers(dest="source_command", required=True)
    sm = ssub.add_parser("submit", help="check everything, then seal and send this source's vote for each open "
                                        "query to every party; exit 0 iff every good row was sent")
    _common(sm)
    sm.add_argument("--votes", type=Path, required=True, metavar="FILE",
                    help="the votes: .jsonl ({\"query_id\", \"vote\"} per line), .csv (query_id, then the vote's "
                         "column(s)) or .npy (structured: query_id, vote)")
    w = ssub.add_parser("watch", help="poll the open queries and submit for each new round until the run is "
                                      "closed; SIGTERM/SIGINT stop it cleanly")
    _common(w)
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--votes", type=Path, metavar="FILE", help="the vote file (read again each round)")
    src.add_argument("--model-cmd", metavar="CMD",
                     help="a command given {\"query_ids\": [...], \"num_classes\": C} on stdin that prints JSON "
                          "lines {\"query_id\", \"vote\"}")
    w.add_argument("--poll", type=float, help="overrides poll (seconds between polls)")
    v = ssub.add_parser("verify", help="mirror the log into the state directory and audit it against this "
                                       "source's policy, submissions and witness; exit 0 iff clean")
    _common(v)
    v.add_argument("--log", metavar="LOCATION", help="the log's directory or URL (default: the coordinator's)")
    v.add_argument("--allow-nonprivate", action="store_true", default=None,
                   help="accept a log released without private noise (testing only)")
    return s


def _config(args) -> dict:
    over = {"id": args.id, "key": args.key, "policy": args.policy, "expect_digest": args.expect_digest,
            "parties": args.party, "enclave": args.enclave, "coordinator": args.coordinator, "state": args.state,
            "timeout": args.timeout, "poll": getattr(args, "poll", None),
            "allow_nonprivate": getattr(args, "allow_nonprivate", None)}
    return load_config(args.config, over)


def _print(args, obj, text: str) -> None:
    print(json.dumps(obj) if args.json else text, flush=True)


def run(args) -> int:
    src = make_source(_config(args))
    try:
        if args.source_command == "submit":
            votes = src.read_votes(args.votes)          # unreadable as a whole: exit 2, nothing sent
            oq = src.open_queries()
            report = src.submit_round(oq, votes)
            out = report.to_dict() | {"source": src.id, "submissions": str(src.state.root / "submissions.jsonl")}
            _print(args, out, report.to_text() + f"\nrecorded in {out['submissions']}")
            return 0 if report.ok else 1
        if args.source_command == "watch":
            if args.votes is not None:
                src.read_votes(args.votes)              # refuse a file that cannot be read before polling
            stop = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}

            def emit(kind, item):
                if kind == "round":
                    _print(args, {"event": "round"} | item.to_dict(), item.to_text())
                else:
                    print(f"dvsecure source watch: {item}", file=sys.stderr, flush=True)
            try:
                report = watch(src, votes=args.votes, model_cmd=args.model_cmd, stop=stop, emit=emit)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            d = report.to_dict()
            _print(args, {"event": "end"} | d,
                   f"stopped ({report.stopped}): {d['rounds']} round(s), {d['sent']} vote(s) sent, "
                   f"{d['errors']} bad row(s), {d['unsent']} not sent")
            return 0 if report.ok else 1
        report = src.verify(args.log)
        if args.json:
            print(json.dumps(report.to_dict() | {"source": src.id}, indent=2))
        else:
            print(report.to_text())
        return 0 if report.ok else 1
    finally:
        src.close()
