"""`dvsecure enclave serve --config enclave.toml [--provider sim|nitro]`: the
enclave application (`python -m enclave.app`) as a long-running service on the
enclave's host; and the two small steps an enclave consortium needs before it
starts: the simulated PCR0 to pin in the policy (`enclave measurement`) and
the coordinator's key in the agreed principals file (`enclave add-coordinator`).

Everything is checked before the enclave starts: the policy (its digest, and for
the simulated provider that the policy pins this build's PCR0, or every source
would refuse it), the principals (sources of the policy, at least one
coordinator), the provider (nitro needs the NSM device; sim needs its CA
directory). The application is supervised (`serve.supervise`): started again
when it exits, on the same state (its ledger; a new instance key, which the log's
signers entry records); SIGTERM/SIGINT stop it cleanly.
"""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from ..errors import DvsecureError
from .config import ConfigError, Key
from .events import event

SCHEMA = [
    Key("policy", "path", True, help="the consortium policy the enclave enforces (its [signers] pin enclave_pcr0)"),
    Key("expect_digest", "str", help="refuse to start unless the policy has this digest"),
    Key("principals", "path", True, help="the agreed principals file: the sources' keys and the coordinator's"),
    Key("state", "path", True, help="private state: the ledger (and ready.json, the running instance's port)"),
    Key("out", "path", True, help="the enclave's own log directory (the coordinator mirrors it for the others)"),
    Key("listen", "str", True, help="HOST:PORT where the sources and the coordinator reach the enclave"),
    Key("tls_dir", "path", help="where the enclave writes its TLS certificate server.pem (default: STATE/tls)"),
    Key("provider", "str", default="nitro", help="attestation: nitro (an NSM device) or sim (SIMULATED, no TEE)"),
    Key("sim_ca", "path", help="with provider sim: the simulated CA directory (root.pem is what clients trust)"),
    Key("nsm_device", "str", default="/dev/nsm", help="with provider nitro: the NSM device"),
    Key("noise", "str", default="private", help="private (TEST ONLY, provider sim: no_noise or seeded)"),
    Key("noise_seed", "int", help="with noise seeded"),
    Key("restart_delay", "float", default=1.0, help="seconds before the enclave is started again"),
]
READY_FILE = "ready.json"


def check_enclave(cfg: dict):
    """Everything the enclave's host checks before starting it: (policy, principals).
    Raises ConfigError naming the file and what is wrong."""
    from ..policy import ConsortiumPolicy
    from ..tee.protocol import Principals, enclave_measurement

    if cfg["provider"] not in ("sim", "nitro"):
        raise ConfigError(f"provider must be 'sim' or 'nitro', got {cfg['provider']!r}")
    try:
        policy = ConsortiumPolicy.load(cfg["policy"])
    except (DvsecureError, OSError) as e:
        raise ConfigError(f"policy {cfg['policy']}: {e}") from None
    if cfg["expect_digest"] is not None and policy.digest() != cfg["expect_digest"]:
        raise ConfigError(f"{cfg['policy']} has digest {policy.digest()}, not the agreed {cfg['expect_digest']}")
    pinned = policy.signers.enclave_pcr0 if policy.signers is not None else None
    if pinned is None:
        raise ConfigError(f"{cfg['policy']} pins no enclave measurement ([signers] enclave_pcr0): the sources "
                          "could not check what they send to (dvsecure consortium init --enclave-pcr0)")
    if cfg["provider"] == "sim":
        if cfg["sim_ca"] is None:
            raise ConfigError("provider sim needs key 'sim_ca' (the simulated CA directory)")
        built = enclave_measurement().hex()
        if built != pinned:
            raise ConfigError(f"{cfg['policy']} pins enclave_pcr0 {pinned[:16]}..., but this build measures "
                              f"{built[:16]}... (dvsecure enclave measurement): every source would refuse it")
    elif not os.path.exists(cfg["nsm_device"]):
        raise ConfigError(f"provider nitro: no Nitro Secure Module at {cfg['nsm_device']}: this host is not a "
                          "Nitro enclave (--provider sim runs a SIMULATED one, for development)")
    if cfg["noise"] != "private" and cfg["provider"] != "sim":
        raise ConfigError(f"noise {cfg['noise']!r} is for tests, with provider sim only")
    try:
        principals, _ = Principals.load(cfg["principals"])
    except DvsecureError as e:
        raise ConfigError(str(e)) from None
    unknown = sorted(set(principals.sources) - set(policy.ids))
    if unknown:
        raise ConfigError(f"{cfg['principals']} names sources not in the policy: {unknown}")
    if not principals.coordinators:
        raise ConfigError(f"{cfg['principals']} names no coordinator: nobody could open a query "
                          "(dvsecure enclave add-coordinator)")
    return policy, principals


def enclave_command(cfg: dict) -> list[str]:
    state = Path(cfg["state"])
    cmd = [sys.executable, "-m", "enclave.app", "--policy", str(cfg["policy"]), "--principals",
           str(cfg["principals"]), "--state", str(state / "ledger"), "--out", str(cfg["out"]),
           "--tls-dir", str(cfg["tls_dir"] or state / "tls"), "--listen", cfg["listen"],
           "--port-file", str(state / READY_FILE), "--attestation", cfg["provider"], "--noise", cfg["noise"]]
    if cfg["provider"] == "sim":
        cmd += ["--sim-ca", str(cfg["sim_ca"])]
    else:
        cmd += ["--nsm-device", cfg["nsm_device"]]
    if cfg["noise_seed"] is not None:
        cmd += ["--noise-seed", str(cfg["noise_seed"])]
    return cmd


def serve_enclave(cfg: dict) -> int:
    from ..tee.protocol import REPO_ROOT
    from .serve import supervise

    policy, principals = check_enclave(cfg)
    state = Path(cfg["state"])
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    (state / READY_FILE).unlink(missing_ok=True)      # written again by the instance once it serves
    # The application runs from the source checkout it is measured from.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    event("enclave", "serving", provider=cfg["provider"], policy_digest=policy.digest(), listen=cfg["listen"],
          coordinators=sorted(principals.coordinators), simulated=cfg["provider"] == "sim")
    return supervise("enclave", enclave_command(cfg), cfg["restart_delay"])


def add_coordinator(principals: Path, key_file: Path, name: str) -> dict:
    """Add the coordinator's key (its `keys new --role operator` public file) to the
    principals file: who may open, release and calibrate at the enclave."""
    from nacl.signing import VerifyKey

    from ..log.writer import write_atomic
    from ..tee.protocol import Principals

    try:
        current = Principals.load(principals)[0] if principals.exists() else Principals({}, {})
        public = json.loads(Path(key_file).read_text())
        key = VerifyKey(base64.b64decode(public["key"], validate=True))
    except (DvsecureError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot add coordinator {name!r} from {key_file} to {principals}: {e}") from None
    old = current.coordinators.get(name)
    if old is not None and bytes(old) != bytes(key):
        raise ConfigError(f"{principals} already names another key for coordinator {name!r}")
    new = Principals(dict(current.sources), {**current.coordinators, name: key})
    write_atomic(principals, new.to_json().encode() + b"\n")
    return {"principals": str(principals), "coordinator": name, "key": base64.b64encode(bytes(key)).decode()}
