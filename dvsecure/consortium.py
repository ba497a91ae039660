"""The operator assembles a consortium policy from the keys the others published
(`dvsecure consortium init | add-source | add-party | digest`).

The file is a policy TOML (`policy.ConsortiumPolicy`), checked by the policy's own
code after every step: a policy being assembled may have no source yet (then it
has no digest), but every table it has is checked as a policy's, so a file these
commands wrote is always a policy or a step towards one. A source's submission
key is not part of the policy: it goes to the principals file beside it
(`<policy>.principals.json`, the format `dvsecure party --principals` and the
enclave take), which maps each source id to the key it published.
"""
from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import tomli_w

from .errors import DvsecureError, ParameterError, PolicyError
from .keys import DEALER, OPERATOR, PARTY, SOURCE, read_public
from .log.files import POLICY_FILE, PublishedFileError, read_named
from .policy import (
    CONFIDENT_KIND,
    GNMAX_KIND,
    SLICE_UNIT,
    SOURCE_UNIT,
    Budget,
    CalibrationPolicy,
    ConsortiumPolicy,
    MechanismPolicy,
    SignerPolicy,
    SourcePolicy,
    read_policy_text,
)

# The embedded demo consortium's mechanism (demo.consortium.default_policy).
DEFAULT_SIGMA1, DEFAULT_THRESHOLD, DEFAULT_SIGMA2 = 0.4, 0.5, 0.1
# Stands in for the sources while there is none yet, so the other tables are checked
# by ConsortiumPolicy itself; it never reaches a file.
_PLACEHOLDER = SourcePolicy(id="no source yet", gamma_min=0.0, gamma_max=1.0, budget=Budget("rho", 1.0))


def principals_path(policy: Path) -> Path:
    """The principals file beside a policy: consortium.toml -> consortium.principals.json."""
    policy = Path(policy)
    return policy.with_name(policy.stem + ".principals.json")


def _normalised(data: object) -> dict:
    """The policy tables `data` holds, checked and in canonical form (sources may be none)."""
    if not isinstance(data, dict):
        raise PolicyError("a policy must be a table")
    sources = data.get("sources", [])
    if sources == []:
        d = ConsortiumPolicy.from_dict({**data, "sources": [_PLACEHOLDER.to_dict()]}).to_dict()
        del d["sources"]
        return d
    return ConsortiumPolicy.from_dict(data).to_dict()


def load(path: Path) -> dict:
    """A policy file being assembled, checked; errors name the file."""
    path = Path(path)
    text = read_policy_text(path)
    try:
        return _normalised(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML: {e}") from None
    except PolicyError as e:
        raise PolicyError(f"{path}: {e}") from None


def _write(path: Path, data: bytes, *, new: bool = False) -> None:
    """Write a file whole or not at all (temp file, fsync, rename); a new file never
    replaces an existing one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if new:
        try:
            os.link(tmp, path)          # fails if `path` appeared meanwhile: never overwrite
        finally:
            os.unlink(tmp)
    else:
        os.replace(tmp, path)


def _toml(data: dict) -> bytes:
    return tomli_w.dumps(data).encode()


def summary(path: Path, data: dict) -> dict:
    """What a policy file holds, for people and for --json: its digest once complete."""
    signers = data.get("signers", {})
    complete = bool(data.get("sources"))
    return {"policy": str(path), "name": data["consortium"]["name"],
            "digest": ConsortiumPolicy.from_dict(data).digest() if complete else None,
            "sources": [s["id"] for s in data.get("sources", [])],
            "parties": len(signers.get("parties", [])), "dealer": "dealer" in signers,
            "operator": "operator" in signers, "enclave_pcr0": signers.get("enclave_pcr0")}


# ---- init ------------------------------------------------------------------------------

def init(out: Path, name: str, *, mechanism: str = CONFIDENT_KIND, sigma1: float | None = None,
         threshold: float | None = None, sigma2: float | None = None, collusion_tolerance: int = 1,
         calibration_fraction: float = CalibrationPolicy().budget_fraction, operator_key: str | None = None,
         enclave_pcr0: str | None = None) -> dict:
    """A new policy file with no source yet: the consortium, its mechanism, and who
    signs its log (the operator's key, or for the enclave its measurement)."""
    out = Path(out)
    if os.path.lexists(out):
        raise ParameterError(f"{out} already exists: consortium init never replaces a policy")
    if (operator_key is None) == (enclave_pcr0 is None):
        raise ParameterError("consortium init needs exactly one of --operator-key (the operator's published key: "
                             "dvsecure keys new --role operator) and --enclave-pcr0 (an enclave's measurement)")
    if mechanism == GNMAX_KIND:
        if sigma1 is not None or threshold is not None:
            raise ParameterError("--mechanism gnmax takes no --sigma1 or --threshold (those are confident_gnmax's)")
        mech = MechanismPolicy(GNMAX_KIND, sigma2=DEFAULT_SIGMA2 if sigma2 is None else sigma2)
    elif mechanism == CONFIDENT_KIND:
        mech = MechanismPolicy(CONFIDENT_KIND, sigma2=DEFAULT_SIGMA2 if sigma2 is None else sigma2,
                               sigma1=DEFAULT_SIGMA1 if sigma1 is None else sigma1,
                               threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    else:
        raise ParameterError(f"--mechanism must be {CONFIDENT_KIND} or {GNMAX_KIND}, got {mechanism!r}")
    signers = (SignerPolicy(operator=read_public(operator_key, "--operator-key", OPERATOR))
               if operator_key is not None else SignerPolicy(enclave_pcr0=enclave_pcr0))
    data = _normalised({"consortium": {"name": name, "collusion_tolerance": collusion_tolerance},
                        "mechanism": mech.to_dict(), "calibration": {"budget_fraction": calibration_fraction},
                        "signers": signers.to_dict()})
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, _toml(data), new=True)
    return summary(out, data)


# ---- add-source ---------------------------------------------------------------------------

def parse_band(text: str) -> tuple[float, float]:
    """--band LO..HI: the weight band gamma_min..gamma_max."""
    lo, sep, hi = text.partition("..")
    try:
        if not sep:
            raise ValueError
        values = float(lo), float(hi)
    except ValueError:
        raise ParameterError(f"--band must be LO..HI, the weight band gamma_min..gamma_max (e.g. 0.1..0.6), "
                             f"got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ParameterError(f"--band must be two finite numbers, got {text!r}")
    return values


def parse_budget(text: str, flag: str = "--budget") -> Budget:
    """--budget epsilon=E,delta=D | rho=R | rdp=B,order=A (the policy's budget forms)."""
    table: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        try:
            if not sep or not key or key in table:
                raise ValueError
            table[key] = float(value)
        except ValueError:
            raise ParameterError(f"{flag} must be epsilon=E,delta=D or rho=R or rdp=B,order=A (e.g. "
                                 f"epsilon=8,delta=1e-5), got {text!r}") from None
    try:
        return Budget.from_dict(flag, table)
    except PolicyError as e:
        raise ParameterError(str(e)) from None


def _principals_with(path: Path, source_id: str, key_b64: str) -> bytes:
    """The principals file with `source_id`'s key added (the same key again: unchanged)."""
    import base64

    from nacl.signing import VerifyKey

    from .tee.protocol import Principals

    if os.path.lexists(path):
        try:
            current = Principals.from_json(read_named(path, POLICY_FILE, follow_links=True).decode("utf-8"))
        except (PublishedFileError, UnicodeDecodeError, DvsecureError) as e:
            raise ParameterError(f"principals file {path}: {e}") from None
    else:
        current = Principals(sources={}, coordinators={})
    sources = dict(current.sources)
    old = sources.get(source_id)
    if old is not None and base64.b64encode(bytes(old)).decode() != key_b64:
        raise ParameterError(f"{path} already names another key for source {source_id!r}")
    sources[source_id] = VerifyKey(base64.b64decode(key_b64))
    return Principals(sources=sources, coordinators=dict(current.coordinators)).to_json().encode() + b"\n"


def add_source(policy: Path, source_id: str, band: str, budget: str, *, slices: int | None = None,
               influence_budget: str | None = None, delta: float | None = None, on_exhaustion: str | None = None,
               votes: str | None = None, key: str | None = None, principals: Path | None = None) -> dict:
    """Add one source's agreement (and, with `key`, its submission key to the
    principals file)."""
    policy = Path(policy)
    data = load(policy)
    if principals is not None and key is None:
        raise ParameterError("--principals goes with --key (the file the source's key is added to)")
    lo, hi = parse_band(band)
    stated = parse_budget(budget)
    entry = {"id": source_id, "gamma_min": lo, "gamma_max": hi, "budget": stated.to_dict()}
    if slices is not None:
        entry.update(unit=SLICE_UNIT, slices=slices)
    if influence_budget is not None:
        entry["influence_budget"] = parse_budget(influence_budget, "--influence-budget").to_dict()
    for name, value in (("delta", delta), ("on_exhaustion", on_exhaustion), ("votes", votes)):
        if value is not None:
            entry[name] = value
    try:
        SourcePolicy.from_dict(entry)
        data = _normalised({**data, "sources": [*data.get("sources", []), entry]})
    except PolicyError as e:
        msg = str(e)      # the policy's own messages name the source already
        raise PolicyError(f"{policy}: {msg if msg.startswith('source ') else f'adding source {source_id!r}: {msg}'}") \
            from None
    principals_bytes = None
    if key is not None:
        principals = principals_path(policy) if principals is None else Path(principals)
        principals_bytes = _principals_with(principals, source_id,
                                            read_public(key, "--key", SOURCE, ident=source_id))
    if principals_bytes is not None:
        _write(principals, principals_bytes)
    _write(policy, _toml(data))
    out = summary(policy, data)
    out["added"] = {"source": source_id, "unit": SOURCE_UNIT if slices is None else SLICE_UNIT,
                    "principals": None if principals_bytes is None else str(principals)}
    return out


# ---- add-party ----------------------------------------------------------------------------

def add_party(policy: Path, key: str, *, dealer: bool = False, rank: int | None = None) -> dict:
    """Pin the next computing party's cosigning key (parties go in rank order), or
    with `dealer` the TTP dealer's link key."""
    policy = Path(policy)
    data = load(policy)
    signers = dict(data.get("signers", {}))
    if "enclave_pcr0" in signers:
        raise ParameterError(f"{policy}: an enclave's log is signed by the attested enclave alone; it has no "
                             "computing parties")
    parties = list(signers.get("parties", []))
    if dealer:
        if rank is not None:
            raise ParameterError("--rank is a party's; the dealer has none")
        if "dealer" in signers:
            raise ParameterError(f"{policy}: names a dealer already ({signers['dealer']})")
        signers["dealer"] = read_public(key, "--key", DEALER)
    else:
        if rank is not None and rank != len(parties):
            raise ParameterError(f"{policy}: names {len(parties)} parties, so the next one is rank {len(parties)}, "
                                 f"not {rank} (parties are added in rank order)")
        parties.append(read_public(key, "--key", PARTY, rank=len(parties)))
        signers["parties"] = parties
    try:
        data = _normalised({**data, "signers": signers})
    except PolicyError as e:
        raise PolicyError(f"{policy}: {e}") from None
    _write(policy, _toml(data))
    out = summary(policy, data)
    out["added"] = {"dealer": True} if dealer else {"party": len(parties) - 1}
    return out


# ---- digest -------------------------------------------------------------------------------

def digest(policy: Path, expect: str | None = None) -> dict:
    """The digest of the policy as every role loads it (`ConsortiumPolicy.load`), and
    with `expect` a refusal unless it is that one."""
    policy = Path(policy)
    data = load(policy)
    if not data.get("sources"):
        raise PolicyError(f"{policy}: no [[sources]] yet, so nothing to agree to (consortium add-source)")
    value = ConsortiumPolicy.load(policy).digest()
    if expect is not None and expect.strip().lower() != value:
        raise PolicyError(f"{policy}: its digest is {value}, not the {expect.strip()} expected: this is not "
                          "the policy that was agreed")
    return {**summary(policy, data), "digest": value}
