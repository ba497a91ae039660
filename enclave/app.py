"""The enclave application: flags, attestation provider, TLS, and the gRPC server.

    python -m enclave.app --policy POLICY.toml --principals KEYS.json --state DIR --out LOGDIR \\
        --tls-dir DIR --listen 127.0.0.1:0 [--port-file FILE] --attestation sim --sim-ca DIR \\
        [--noise no_noise | --noise seeded --noise-seed N]     (test noise: simulated attestation only)

It prints one JSON line {port, pid, attestation, simulated, tls_cert, signer, noise}
once serving (and writes it to --port-file), and stops on SIGTERM or SIGINT.
What it does is described in service.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from dvsecure.errors import DvsecureError, EnclaveError
from dvsecure.log.writer import write_atomic
from dvsecure.noise import PRIVATE, SEEDED, make_noise
from dvsecure.policy import ConsortiumPolicy
from dvsecure.tee import protocol as proto
from dvsecure.tee.protocol import NOISE_MODES
from dvsecure.wire import rpc
from dvsecure.wire.tls import tls_identity

from .attest import SIM_BANNER, make_provider
from .service import Enclave

SERVICE = "dvsecure.v1.Enclave"


def serve(enclave: Enclave, listen: str, cert_pem: bytes, key_pem: bytes, max_message: int, workers: int = 8):
    methods = {"GetAttestation": enclave.get_attestation, "Open": enclave.open, "Submit": enclave.submit,
               "Query": enclave.query, "Calibrate": enclave.calibrate, "GetEntries": enclave.get_entries,
               "GetCheckpoint": enclave.get_checkpoint, "GetProofs": enclave.get_proofs}
    return rpc.serve(SERVICE, methods, "the enclave", listen, cert_pem, key_pem, max_message, workers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m enclave.app", description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, required=True, help="the consortium policy (TOML)")
    ap.add_argument("--principals", type=Path, required=True,
                    help="JSON: sources and coordinators -> base64 Ed25519 public keys")
    ap.add_argument("--state", type=Path, required=True, help="private state: the ledger")
    ap.add_argument("--out", type=Path, required=True, help="the published log directory")
    ap.add_argument("--tls-dir", type=Path, required=True, help="where server.pem (the TLS certificate) is written")
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks a free one")
    ap.add_argument("--port-file", type=Path, help="write {port, pid, ...} as JSON here once serving")
    ap.add_argument("--attestation", choices=["nitro", "sim"], default="nitro")
    ap.add_argument("--sim-ca", type=Path, help="the simulated CA directory (with --attestation sim)")
    ap.add_argument("--nsm-device", default="/dev/nsm", help="the NSM device (with --attestation nitro)")
    ap.add_argument("--max-message-bytes", type=int, default=16 << 20)
    ap.add_argument("--max-open", type=int, default=100_000, help="most queries open at once")
    ap.add_argument("--noise", choices=NOISE_MODES, default=PRIVATE,
                    help="TEST ONLY unless private: seeded or no_noise, with --attestation sim only")
    ap.add_argument("--noise-seed", type=int, help="with --noise seeded")
    args = ap.parse_args(argv)

    try:
        policy = ConsortiumPolicy.load(args.policy)
        principals, principals_raw = proto.Principals.load(args.principals)
        unknown = set(principals.sources) - set(policy.ids)
        if unknown:
            raise EnclaveError(f"principals name sources not in the policy: {sorted(unknown)}", "FAILED_PRECONDITION")
        # The host chooses these flags: test noise is refused where attestation means something
        # (and is bound in the attestation, so a source sees it anyway).
        if args.noise != PRIVATE and args.attestation != "sim":
            raise EnclaveError(f"--noise {args.noise} is for tests, with --attestation sim only", "FAILED_PRECONDITION")
        if args.noise_seed is not None and args.noise != SEEDED:
            raise EnclaveError("--noise-seed is for --noise seeded", "INVALID_ARGUMENT")
        noise = make_noise(args.noise, args.noise_seed)
        if not noise.private:
            print(f"!!! NOT PRIVATE: noise mode {noise.mode!r}, for tests only !!!", file=sys.stderr, flush=True)
        provider = make_provider(args.attestation, sim_ca=args.sim_ca, nsm_device=args.nsm_device,
                                 measurement=proto.enclave_measurement())
        if provider.simulated:
            print(SIM_BANNER, file=sys.stderr, flush=True)
        cert_pem, cert_der, key_pem = tls_identity(args.listen.rpartition(":")[0].strip("[]") or "127.0.0.1")
        args.tls_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(args.tls_dir / "server.pem", cert_pem)
        enclave = Enclave(policy, principals, principals_raw, args.state, args.out, provider, cert_der,
                          args.max_open, noise)
        server, port = serve(enclave, args.listen, cert_pem, key_pem, args.max_message_bytes)
    except (DvsecureError, OSError, RuntimeError) as e:   # RuntimeError: grpc cannot bind
        print(f"enclave: cannot start: {e}", file=sys.stderr)
        return 2

    ready = {"port": port, "pid": os.getpid(), "attestation": provider.name, "simulated": provider.simulated,
             "tls_cert": str(args.tls_dir / "server.pem"), "signer": enclave.signer.verifier_key_string,
             "noise": noise.mode}
    if provider.simulated:
        ready["warning"] = SIM_BANNER
    if args.port_file:
        write_atomic(args.port_file, json.dumps(ready).encode())
    print(json.dumps(ready), flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    enclave.close()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is closed and durable: exit now, not after threads a gRPC server left
    # behind (seen under load: shutdown outlived the supervisor's patience).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
