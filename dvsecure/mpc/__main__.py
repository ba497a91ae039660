"""`python -m dvsecure.mpc --rank R ...`: one party process started by
`LocalParties` (a fresh interpreter, so a user's script is never re-imported
the way multiprocessing's spawn would). `dvsecure party` is the same for
people starting parties by hand on other machines."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..errors import DvsecureError
from .inbox import add_limit_arguments, limits_from_args
from .party import run_party


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m dvsecure.mpc")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--roster", help="the roster JSON (authenticated, encrypted links)")
    p.add_argument("--rendezvous", help="plain gloo on this machine only (the bench's comparison path)")
    p.add_argument("--provider", default="TTP")
    p.add_argument("--state")
    p.add_argument("--coordinator", help="party 0: the coordinator's local socket path")
    p.add_argument("--policy", help="the policy this party enforces (needed with --listen)")
    p.add_argument("--listen", help="take sources' shares over gRPC on HOST:PORT")
    p.add_argument("--principals", help="JSON: the sources' Ed25519 keys (with --listen)")
    p.add_argument("--private-only", action="store_true",
                   help="refuse batches without private noise (a party that does not trust the coordinator)")
    p.add_argument("--advertise", help="with --listen: the HOST:PORT sources reach this party at (endpoint.json)")
    add_limit_arguments(p)
    args = p.parse_args()
    # SIGTERM (a service stopping it) unwinds like an exception: the gRPC server and
    # CrypTen are shut down in run_party's finally blocks; the ledger is durable anyway.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    policy = Path(args.policy).read_text() if args.policy else None
    if (args.roster is None) == (args.rendezvous is None):
        p.error("give exactly one of --roster and --rendezvous")
    code = 0
    try:
        run_party(args.rank, args.world_size, args.provider, args.state, roster=args.roster,
                  rendezvous=args.rendezvous, coordinator=args.coordinator, pinned_policy_toml=policy,
                  listen=args.listen, principals=args.principals, advertise=args.advertise,
                  inbox_limits=limits_from_args(args), allow_nonprivate=not args.private_only)
    except DvsecureError as e:
        # The group broke (a peer went away, a link was cut) or a check failed: one
        # structured line, not a traceback; the service that runs it starts it again.
        from ..roles.events import event

        event("dealer" if args.rank == args.world_size else f"party {args.rank}", "member_failed",
              error=f"{type(e).__name__}: {e}")
        code = 1
    except SystemExit as e:               # SIGTERM
        code = e.code if isinstance(e.code, int) else 0
    except BaseException:                 # anything else: said in full, and a failure
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # Out now, whatever threads a broken group left behind (a gRPC call arriving
        # during shutdown, a link's reader): waiting for them could hang the member for
        # good, and the service would never start it again. Every ledger write was
        # committed (SQLite, synchronous=FULL) before it returned.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
