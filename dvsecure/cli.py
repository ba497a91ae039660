"""Command line: `dvsecure demo | audit | receipt export | bench | party | attestation verify | experiment |
report | keys new | consortium init | add-source | add-party | digest`."""
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
    d.add_argument("--backend", choices=["plaintext", "mpc", "enclave"], default="mpc",
                   help="mpc (default): CrypTen parties + a TTP dealer, local unless --roster; "
                        "enclave: a SIMULATED attested enclave process, sources as gRPC clients over TLS; "
                        "plaintext: the reference implementation, which sees every vote")
    d.add_argument("--parties", type=_positive_int, default=3, help="computing parties for --backend mpc")
    d.add_argument("--provider", choices=["TTP", "TFP"], default="TTP",
                   help="Beaver triples from a TTP dealer (default) or TFP, where party 0 deals and so could "
                        "unmask every vote (needs --allow-tfp)")
    d.add_argument("--allow-tfp", action="store_true", help="accept --provider TFP knowingly")
    d.add_argument("--roster", type=Path, metavar="FILE",
                   help="--backend mpc across machines: run party 0 here, linking to the members FILE lists "
                        "(JSON: each party's and the dealer's address and pinned key); parties 1..N-1 and the "
                        "dealer run `dvsecure party --roster FILE` elsewhere")
    d.add_argument("--sources", type=_positive_int, help="number of sources of the embedded consortium (default 5)")
    d.add_argument("--queries", type=_positive_int, default=300,
                   help="queries, the first third labelled for calibration (default 300)")
    d.add_argument("--classes", type=_positive_int, default=10, help="classes per query (default 10)")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic voters (not of the noise)")
    d.add_argument("--policy", type=Path, help="a consortium policy TOML file instead of the embedded one")
    d.add_argument("--consortium", choices=["slices", "prototype"],
                   help="the embedded consortium: slices (default; slice-unit budgets, eps <= 8 per slice) or "
                        "prototype (the deep-voting prototype's source-level budgets)")
    d.add_argument("--out", type=Path, default=Path("dvsecure-demo"),
                   help="published directory (default ./dvsecure-demo)")
    d.add_argument("--state", type=Path, help="private state directory (default: OUT.state beside OUT)")
    noise = d.add_mutually_exclusive_group()
    noise.add_argument("--no-noise", action="store_true", help="TEST ONLY: release without noise (not private)")
    noise.add_argument("--noise-seed", type=int,
                       help="RESEARCH ONLY: seeded exact sampler, reproducible and not private")
    d.add_argument("--json", action="store_true", help="print one JSON object")

    a = sub.add_parser("audit", help="verify a log directory or an exported receipt; exit 0 iff all holds")
    a.add_argument("path", help="log directory or receipt directory, or the http(s) URL of a coordinator's "
                                "published directory (its log is fetched into a temporary directory first)")
    a.add_argument("--source", help="report only this source (a receipt is always its own source's)")
    a.add_argument("--policy", type=Path, help="the policy you agreed to; the log must have used exactly it")
    a.add_argument("--witness", type=Path,
                   help="witness state file: checkpoints seen before are checked for consistency "
                        "(a fork is caught), and the latest is remembered after a clean audit")
    a.add_argument("--trust-key", action="append", default=[], metavar="VKEY",
                   help="pin a signer's verifier key (the string, a file holding it, or the ROLE.pub.json "
                        "dvsecure keys new wrote for the operator or a party); repeatable")
    a.add_argument("--allow-nonprivate", action="store_true",
                   help="do not fail on no-noise or seeded entries (they are still reported)")
    a.add_argument("--enclave-pcr0", metavar="HEX",
                   help="require every checkpoint signer to be an enclave key attested with this PCR0 "
                        "(its attestation, recorded in the signers entry, is verified at its own time)")
    a.add_argument("--trust-sim-root", action="append", default=[], type=Path, metavar="PEM",
                   help="with --enclave-pcr0: also accept attestations from this SIMULATED root")
    a.add_argument("--enclave-principals", type=Path, metavar="FILE",
                   help="with --enclave-pcr0: every attested instance must have run with exactly this "
                        "principals file (who may submit in a source's name)")
    a.add_argument("--submissions", type=Path, metavar="FILE",
                   help="a source's own submissions (JSON lines: query_id, vote, nonce): each must be logged "
                        "with its commitment, not as absent, and not as invalid if the vote is valid; the source "
                        "is the receipt's, or --source")
    a.add_argument("--submissions-complete", action="store_true",
                   help="the --submissions file holds every vote this source sent to this log: also flag any "
                        "entry that counts it, or judges its vote, without one")
    a.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser("bench", help="measure the MPC secure pipeline against CrypTen's own argmax")
    b.add_argument("--backend", choices=["mpc", "all"], default="mpc",
                   help="mpc: the secure pipeline against CrypTen's argmax; all: plaintext, MPC and enclave on one "
                        "workload, with a bar chart (experiments extra)")
    b.add_argument("--out", type=Path, default=Path("bench-all"), help="--backend all: where the JSON and chart go")
    b.add_argument("--queries", type=_positive_int, default=10000)
    b.add_argument("--classes", type=_positive_int, default=10)
    b.add_argument("--sources", type=_positive_int, default=50)
    b.add_argument("--parties", type=_positive_int, default=3)
    b.add_argument("--noise", choices=["private", "seeded"], default="private",
                   help="--backend mpc: private (OpenDP, as deployed) or seeded (reproducible, so the protected "
                        "and plain-gloo runs reveal the same outputs; tests only, not private)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the result to FILE")

    pa = sub.add_parser("party", help="run one MPC computing party (or the TTP dealer) that links to the "
                                      "others a roster names; party 0 runs with the coordinator")
    pa.add_argument("--rank", type=int, help="this party's rank, 1..N-1 (rank 0 is the coordinator's)")
    pa.add_argument("--dealer", action="store_true", help="run the TTP dealer (rank N) instead of a party")
    pa.add_argument("--roster", type=Path,
                    help="the roster JSON every member holds: each party's and the dealer's address and pinned "
                         "key (required to run); this member listens on its own address's port")
    pa.add_argument("--show-key", action="store_true",
                    help="print this member's key (made in --state on first use) for the roster and the "
                         "policy's [signers] (parties, or dealer with --dealer), and exit")
    pa.add_argument("--state", type=Path, help="this member's private state (keys; a party's ledger); required")
    pa.add_argument("--policy", type=Path, help="the consortium policy TOML this party enforces; required for a party")
    pa.add_argument("--allow-nonprivate", action="store_true",
                    help="accept seeded or no-noise batches (testing only; refused by default)")
    pa.add_argument("--listen", metavar="HOST:PORT",
                    help="take the sources' shares over gRPC with TLS here (certificate: STATE/tls.pem)")
    pa.add_argument("--principals", type=Path, help="JSON of the sources' Ed25519 keys (with --listen)")
    from .mpc.inbox import add_limit_arguments
    add_limit_arguments(pa)
    from .roles.cli import add_parsers as add_role_parsers
    from .roles.cli import add_party_serve_arguments
    add_party_serve_arguments(pa)
    add_role_parsers(sub)

    from .attestation.cli import add_parser as add_attestation_parser
    add_attestation_parser(sub)
    from .experiments.cli import add_parsers as add_experiment_parsers
    add_experiment_parsers(sub)
    from .roles.source_cli import add_parser as add_source_parser
    add_source_parser(sub)

    _add_role_parsers(sub)

    r = sub.add_parser("receipt", help="receipts for sources")
    rsub = r.add_subparsers(dest="receipt_command", required=True)
    e = rsub.add_parser("export", help="write what one source needs to check its own history")
    e.add_argument("log", type=Path, help="log directory")
    e.add_argument("--source", required=True, help="source id")
    e.add_argument("--out", type=Path, help="receipt directory (default: receipt-SOURCE)")
    return p


def _add_role_parsers(sub) -> None:
    """`keys new` (each role's own keys) and `consortium ...` (the operator assembles the policy)."""
    k = sub.add_parser("keys", help="a role's own keys, made on its own host")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser("new", help="make this role's private key (mode 0600, never overwritten) and print what "
                                     "the others pin",
                         description="Make this role's private key in DIR (mode 0600; refused if one is there "
                                     "already) and its public file DIR/ROLE.pub.json, the one to send to the "
                                     "operator; print what the others pin. A party's key belongs to its rank "
                                     "(DIR/party-RANK.key, found by dvsecure party --state DIR --rank RANK).")
    kn.add_argument("--role", required=True, choices=["source", "party", "dealer", "operator"],
                    help="source (a data owner), party (an MPC computing party), dealer (the TTP dealer) or "
                         "operator (who signs the log's checkpoints)")
    kn.add_argument("--id", required=True, metavar="NAME",
                    help="who this is: a source's policy id; a name for the others")
    kn.add_argument("--rank", type=int, help="a party's rank, 0..N-1 (rank 0 runs with the coordinator)")
    kn.add_argument("--out", required=True, type=Path, metavar="DIR", help="this role's private state directory")
    kn.add_argument("--json", action="store_true", help="print one JSON object (the public file's content)")

    c = sub.add_parser("consortium", help="assemble the consortium policy from the published keys; print its digest")
    csub = c.add_subparsers(dest="consortium_command", required=True)
    ci = csub.add_parser("init", help="start a policy: the consortium, its mechanism and who signs its log",
                         description="Write a new policy file with no source yet (never replacing one). Its "
                                     "log is signed by the operator (--operator-key) or, for the enclave, by an "
                                     "enclave attested with --enclave-pcr0.")
    ci.add_argument("--name", required=True, help="the consortium's name")
    ci.add_argument("--mechanism", choices=["confident_gnmax", "gnmax"], default="confident_gnmax",
                    help="confident_gnmax (default: answer only above --threshold) or gnmax")
    ci.add_argument("--sigma1", type=float, help="confident_gnmax's threshold noise, weight units (default 0.4)")
    ci.add_argument("--threshold", type=float, help="confident_gnmax's threshold T, weight units (default 0.5)")
    ci.add_argument("--sigma2", type=float, help="the argmax noise, weight units (default 0.1)")
    ci.add_argument("--collusion-tolerance", type=_positive_int, default=1,
                    help="t: the noise stays private when up to t computing parties collude (default 1)")
    ci.add_argument("--calibration-fraction", type=float, default=0.1,
                    help="share of each budget calibration may spend (default 0.1)")
    who = ci.add_mutually_exclusive_group(required=True)
    who.add_argument("--operator-key", metavar="KEY",
                     help="the operator's key: its base64 key or its operator.pub.json (dvsecure keys new)")
    who.add_argument("--enclave-pcr0", metavar="HEX", help="instead, for the enclave: its measurement (96 hex)")
    ci.add_argument("--out", required=True, type=Path, metavar="POLICY", help="the policy file to write (.toml)")
    ci.add_argument("--json", action="store_true", help="print one JSON object")

    cs = csub.add_parser("add-source", help="add one source's band and budget (and its key to the principals file)",
                         description="Add a source's agreement to the policy. With --key, its published "
                                     "submission key goes to the principals file beside the policy "
                                     "(POLICY.principals.json unless --principals), the file the parties and the "
                                     "enclave check submissions with.")
    cs.add_argument("--policy", required=True, type=Path, help="the policy file")
    cs.add_argument("--id", required=True, help="the source's id")
    cs.add_argument("--band", required=True, metavar="LO..HI",
                    help="its weight band gamma_min..gamma_max, e.g. 0.1..0.6")
    cs.add_argument("--budget", required=True, metavar="BUDGET",
                    help="epsilon=E,delta=D or rho=R or rdp=B,order=A (at its unit)")
    cs.add_argument("--slices", type=int, metavar="M",
                    help="a slice-unit source: M disjoint slices, one model each (its vote: their histogram)")
    cs.add_argument("--influence-budget", metavar="BUDGET", help="with --slices: a cap on its source-level spend")
    cs.add_argument("--delta", type=float, help="the delta its epsilon is reported at (default: the budget's, "
                                                "else 1e-5)")
    cs.add_argument("--on-exhaustion", choices=["exclude", "shrink"], help="at the budget's end (default exclude)")
    cs.add_argument("--votes", choices=["one-hot", "simplex"], help="a source-unit source's votes (default one-hot)")
    cs.add_argument("--key", metavar="KEY", help="its submission key: base64, or its source.pub.json")
    cs.add_argument("--principals", type=Path, metavar="FILE", help="the principals file (with --key)")
    cs.add_argument("--json", action="store_true", help="print one JSON object")

    cp = csub.add_parser("add-party", help="pin the next computing party's key (rank order), or the dealer's",
                         description="Pin the next MPC computing party's cosigning key in the policy's [signers] "
                                     "(parties go in rank order, from 0), or with --dealer the TTP dealer's key.")
    cp.add_argument("--policy", required=True, type=Path, help="the policy file")
    cp.add_argument("--key", required=True, metavar="KEY",
                    help="its published key: base64, or its party-RANK.pub.json / dealer.pub.json")
    cp.add_argument("--rank", type=int, help="check that this party is the next rank")
    cp.add_argument("--dealer", action="store_true", help="the key is the TTP dealer's")
    cp.add_argument("--json", action="store_true", help="print one JSON object")

    cd = csub.add_parser("digest", help="print the digest of the policy everyone agrees to",
                         description="Print the SHA-256 digest of the policy as every role loads it; with "
                                     "--expect, refuse (exit 2) unless it is that one.")
    cd.add_argument("policy", type=Path, help="the policy file")
    cd.add_argument("--expect", metavar="DIGEST", help="the digest you agreed to")
    cd.add_argument("--json", action="store_true", help="print one JSON object")


def _keys(args) -> int:
    from .keys import new_keys, private_file, public_file

    keys = new_keys(args.role, args.id, args.out, args.rank)
    if args.json:
        print(json.dumps(keys.to_dict(), indent=2))
        return 0
    private = private_file(args.role, args.out, args.rank)
    who = f"{keys.role} {keys.id}" + (f" (rank {keys.rank})" if keys.rank is not None else "")
    print(f"{who}: private key {private} (mode 0600; it never leaves this host)")
    print(f"publish {public_file(private)}, which holds what the others pin:")
    width = max(len(k) for k in keys.to_dict())
    for name, value in keys.to_dict().items():
        print(f"  {name:<{width}}  {value}")
    return 0


def _describe(s: dict) -> str:
    signed = (["the operator"] if s["operator"] else []) + \
        ([f"{s['parties']} part{'y' if s['parties'] == 1 else 'ies'}"] if s["parties"] else []) + \
        (["an enclave attested with PCR0 " + s["enclave_pcr0"]] if s["enclave_pcr0"] else [])
    lines = [f"{s['policy']}: consortium {s['name']}; sources: {', '.join(s['sources']) or 'none yet'}; "
             f"log signed by {', '.join(signed) or 'nobody named'}" + ("; dealer pinned" if s["dealer"] else "")]
    lines.append(f"digest {s['digest']}" if s["digest"] else
                 "no digest yet: a policy needs a source (dvsecure consortium add-source)")
    return "\n".join(lines)


def _consortium(args) -> int:
    from . import consortium

    cmd = args.consortium_command
    if cmd == "init":
        out = consortium.init(args.out, args.name, mechanism=args.mechanism, sigma1=args.sigma1,
                              threshold=args.threshold, sigma2=args.sigma2,
                              collusion_tolerance=args.collusion_tolerance,
                              calibration_fraction=args.calibration_fraction, operator_key=args.operator_key,
                              enclave_pcr0=args.enclave_pcr0)
    elif cmd == "add-source":
        out = consortium.add_source(args.policy, args.id, args.band, args.budget, slices=args.slices,
                                    influence_budget=args.influence_budget, delta=args.delta,
                                    on_exhaustion=args.on_exhaustion, votes=args.votes, key=args.key,
                                    principals=args.principals)
    elif cmd == "add-party":
        out = consortium.add_party(args.policy, args.key, dealer=args.dealer, rank=args.rank)
    else:
        out = consortium.digest(args.policy, args.expect)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    added = out.get("added", {})
    if "source" in added:
        print(f"added source {added['source']} to {out['policy']}"
              + (f"; its key to {added['principals']}" if added["principals"] else ""))
    elif "party" in added:
        print(f"added party {added['party']}'s key to {out['policy']}")
    elif added.get("dealer"):
        print(f"added the dealer's key to {out['policy']}")
    print(_describe(out))
    return 0


def _key_arg(text: str) -> str:
    """--trust-key: a verifier key, a file holding one, or the public file `dvsecure keys
    new` writes (ROLE.pub.json: its verifier_key). Read capped: never a FIFO."""
    from .keys import PUBLIC_SUFFIX
    from .log.files import KEY_FILE, read_named

    path = Path(text)
    if not path.exists():
        if text.endswith(PUBLIC_SUFFIX):
            raise ParameterError(f"--trust-key {path}: no such public key file")
        return text
    try:
        held = read_named(path, KEY_FILE, follow_links=True).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ParameterError(f"--trust-key {path}: not a UTF-8 verifier key file") from None
    if not held.startswith("{"):
        return held
    try:
        public = json.loads(held)
    except ValueError:
        public = None
    if not isinstance(public, dict) or "role" not in public:
        raise ParameterError(f"--trust-key {path}: neither a verifier key nor a public key file (the JSON "
                             "dvsecure keys new writes)")
    if not isinstance(public.get("verifier_key"), str):
        raise ParameterError(f"--trust-key {path}: a {public['role']}'s public key file holds no verifier key "
                             "(the operator's and the parties' files have one: their keys sign a log)")
    return public["verifier_key"]


def _audit(args) -> int:
    from .audit.check import audit

    pcr0 = None
    if args.enclave_pcr0 is not None:
        try:
            pcr0 = bytes.fromhex(args.enclave_pcr0)
        except ValueError:
            raise ParameterError(f"--enclave-pcr0 is not hex: {args.enclave_pcr0!r}") from None
    roots = [_read_arg(path, "--trust-sim-root") for path in args.trust_sim_root]
    principals = None if args.enclave_principals is None else _read_arg(args.enclave_principals,
                                                                        "--enclave-principals")
    if args.path.startswith(("http://", "https://")):
        import tempfile

        from .roles.published import mirror

        with tempfile.TemporaryDirectory(prefix="dvsecure-audit-") as tmp:
            args.path = str(mirror(args.path, Path(tmp) / "log"))
            return _audit(args)
    report = audit(args.path, source=args.source, policy=args.policy, witness=args.witness,
                   trusted_keys=[_key_arg(k) for k in args.trust_key], allow_nonprivate=args.allow_nonprivate,
                   submissions=args.submissions, submissions_complete=args.submissions_complete,
                   enclave_pcr0=pcr0, trusted_sim_roots=roots,
                   enclave_principals=principals)
    if (roots or principals is not None) and not report.attested:
        raise ParameterError("--trust-sim-root and --enclave-principals only apply to an enclave's log "
                             "(--enclave-pcr0, or a policy whose [signers] names enclave_pcr0)")
    attested = [str(f) for f in report.findings if f.check == "attestation"]
    if args.json:
        out = report.to_dict()
        if report.attested:
            out["attested_signers"] = {"ok": not attested, "findings": attested}
        print(json.dumps(out, indent=2))
    else:
        print(report.to_text())
        if report.attested:
            print("attested signers: " + ("OK" if not attested else "FAILED (findings above)"))
    return 0 if report.ok else 1


def _read_arg(path: Path, flag: str) -> bytes:
    """A small file the user names (a root certificate, a principals file), read capped."""
    from .log.files import POLICY_FILE, read_named

    try:
        return read_named(path, POLICY_FILE, follow_links=True)
    except OSError as e:
        raise ParameterError(f"cannot read {flag} {path}: {e.strerror or e}") from None


def _party(args) -> int:
    import base64

    from .mpc.party import load_or_create_dealer_key, load_or_create_keys

    if args.action == "serve":
        from .roles.cli import run_party_serve

        return run_party_serve(args)
    if args.state is None:
        raise ParameterError("a party or dealer needs --state (where it keeps its keys)")
    if args.show_key:
        if args.dealer:
            key = load_or_create_dealer_key(args.state)
            print(json.dumps({"dealer": True, "key": base64.b64encode(key.public_key).decode()}))
            return 0
        if args.rank is None:
            raise ParameterError("--show-key needs --rank (or --dealer)")
        _, signer = load_or_create_keys(args.state, args.rank)
        print(json.dumps({"rank": args.rank, "cosign_key": base64.b64encode(signer.public_key).decode(),
                          "verifier_key": signer.verifier_key_string}))
        return 0
    if args.roster is None:
        raise ParameterError("a party needs --roster (or --show-key)")
    from .mpc.inbox import limits_from_args
    from .mpc.party import run_party
    from .roles.serve import check_dealer, check_party

    if args.dealer:
        roster = check_dealer(args.roster, args.state)
        run_party(roster.num_parties, roster.num_parties, "TTP", str(args.state), roster=str(args.roster))
        return 0
    if args.policy is None:
        raise ParameterError("a party needs --policy (what it enforces)")
    policy, roster = check_party(args.rank if args.rank is not None else -1, args.roster, args.state, args.policy)
    world = roster.num_parties
    if (args.listen is None) != (args.principals is None):
        raise ParameterError("--listen and --principals go together")
    run_party(args.rank, world, "TTP", str(args.state), roster=str(args.roster),
              pinned_policy_toml=policy.to_toml(), allow_nonprivate=args.allow_nonprivate,
              listen=args.listen, principals=None if args.principals is None else str(args.principals),
              inbox_limits=limits_from_args(args))
    return 0


def _require_mpc_extra(what: str, alternative: str = "") -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("crypten") is None:
        raise ParameterError(f"{what} needs the mpc extra: torch 2.13.0 and CrypTen 0.4.1 "
                             f"(`make install` sets them up){alternative}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("experiment", "report"):
            from .experiments.cli import run_experiment, run_report
            return (run_experiment if args.command == "experiment" else run_report)(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "bench":
            from .mpc.bench import human_summary, run_bench

            _require_mpc_extra("bench")
            if args.parties < 2 or args.classes < 2:
                raise ParameterError("--parties and --classes must be at least 2")
            if args.backend == "all":
                from .experiments.cli import _extra
                from .experiments.overhead import run_all

                _extra()
                result = json.dumps(run_all(args.queries, args.classes, args.sources, args.parties, args.out),
                                    indent=2)
                if args.json:
                    args.json.write_text(result + "\n")
                print(result)
                return 0
            measured = run_bench(args.queries, args.classes, args.sources, args.parties, noise=args.noise)
            result = json.dumps(measured, indent=2)
            if args.json:
                args.json.write_text(result + "\n")
            print(human_summary(measured), file=sys.stderr)      # stdout stays one JSON object
            print(result)
            return 0
        if args.command == "party":
            return _party(args)
        if args.command in ("dealer", "coordinator", "enclave"):
            from .roles.cli import run as run_role

            return run_role(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "consortium":
            return _consortium(args)
        if args.command == "source":
            from .roles.source_cli import run as run_source
            return run_source(args)
        if args.command == "attestation":
            from .attestation.cli import run as run_attestation
            return run_attestation(args)
        if args.command == "receipt":
            from .audit.receipt import export_receipt

            out = export_receipt(args.log, args.source, args.out or Path(f"receipt-{args.source}"))
            print(f"receipt for {args.source} written to {out}")
            return 0
        if args.command == "demo":
            from .demo.run import run_demo
            from .noise import NO_NOISE, PRIVATE, SEEDED, make_noise
            from .policy import ConsortiumPolicy

            if args.no_noise:
                noise = make_noise(NO_NOISE)
            elif args.noise_seed is not None:
                noise = make_noise(SEEDED, args.noise_seed)
            else:
                noise = make_noise(PRIVATE)
            policy = ConsortiumPolicy.load(args.policy) if args.policy else None
            if policy is not None and args.sources is not None:
                raise ParameterError("--sources applies to the embedded consortium; with --policy the sources "
                                     "are the policy's")
            if policy is not None and args.consortium is not None:
                raise ParameterError("--consortium picks an embedded consortium; --policy gives your own")
            if args.sources is None:
                args.sources = len(policy.sources) if policy is not None else 5
            if policy is None:
                from .demo.consortium import DEFAULT_CONSORTIUM, default_policy

                policy = default_policy(args.sources, args.consortium or DEFAULT_CONSORTIUM)
            state = args.state or args.out.with_name(args.out.name + ".state")
            if args.backend == "enclave":
                from .demo.enclave import run_enclave_demo

                # Test noise runs only under the simulated provider, which is all the demo uses;
                # the enclave's attestation states the noise mode, and sources refuse it unasked.
                report = run_enclave_demo(args.out, state, num_sources=args.sources, num_queries=args.queries,
                                          num_classes=args.classes, seed=args.seed, policy=policy, noise=noise)
                print(report.to_json() if args.json else report.to_text())
                return 0
            backend = None
            if args.backend == "mpc":
                from .backends.mpc import MPCBackend

                _require_mpc_extra("--backend mpc (the default)", "; or run --backend plaintext")

                # Local parties take the sources' shares over gRPC; with remote parties
                # (--roster) the coordinator relays the sealed shares through party 0.
                principals = None
                if not args.roster:
                    from .demo.run import demo_sources
                    _, principals = demo_sources(state, policy)
                backend = MPCBackend(num_parties=args.parties, provider=args.provider, allow_tfp=args.allow_tfp,
                                     state_dir=str(state / "parties"), principals=principals,
                                     roster=None if args.roster is None else str(args.roster),
                                     spawn_ranks=[0] if args.roster else None)
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
