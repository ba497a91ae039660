"""The consortium policy: what every source agreed to, and how it is written down.

A policy is immutable once built. `ConsortiumPolicy.from_toml` / `to_toml` give
the file format; `digest()` is the SHA-256 of a canonical encoding, so a ledger
or log can be bound to exactly one policy.

File format (every key checked; unknown keys are errors):

    [consortium]
    name = "demo"
    collusion_tolerance = 1          # t, used by the MPC backend

    [mechanism]
    kind = "confident_gnmax"         # or "gnmax"
    sigma1 = 1.0                     # threshold noise   (confident_gnmax only)
    threshold = 0.9                  # T, in weight units (confident_gnmax only)
    sigma2 = 1.0                     # GNMax noise

    [calibration]                    # optional
    budget_fraction = 0.1            # share of each budget calibration may spend

    [[sources]]
    id = "alpha"
    gamma_min = 0.10
    gamma_max = 0.60
    budget = { rdp = 100.0, order = 2.0 }   # or { rho = 50.0 } or { epsilon = 8.0, delta = 1e-5 }
    delta = 1e-5                     # reporting delta (defaults to the budget's, else 1e-5)
    on_exhaustion = "exclude"        # or "shrink"
    votes = "one-hot"                # or "simplex"
    # resolution = 16                # votes = "simplex": m, a power of two dividing 2**16 (default 16);
    #                                # each vote is rounded to m unit votes of weight gamma/m (below)
    unit = "source"                  # privacy unit (DESIGN §4): "source" (default) or "slice"
    # slices = 64                    # unit = "slice": m disjoint slices, one model each; votes are
    #                                # histograms of the m slice votes, and the budget protects one slice
    # influence_budget = { rho = 2000.0 }  # unit = "slice", optional: caps the source-level spend too

    [signers]                        # who must sign every checkpoint (DESIGN §5)
    operator = "<base64 Ed25519 public key>"
    parties = ["<key of party 0>", "<key of party 1>", ...]   # MPC: every computing party
    # dealer = "<base64 Ed25519 public key>"  # MPC: the TTP dealer, pinned for the links (no cosigning)
    # enclave_pcr0 = "<hex SHA-384>"  # enclave: every signer an enclave key attested with it

A policy without [signers] is the old (log format version 1) agreement: it names
no signer, so anyone holding the operator key could sign alone; the auditor
reports such a log.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from .accounting.conversions import rho_from_eps_delta, rho_from_rdp_budget
from .errors import PolicyError
from .log.files import POLICY_FILE, PublishedFileError, read_named
from .mechanism.fixedpoint import SCALE

GNMAX_KIND = "gnmax"
CONFIDENT_KIND = "confident_gnmax"
ONE_HOT = "one-hot"
SIMPLEX = "simplex"
HISTOGRAM = "histogram"          # a slice-unit source's vote: counts of its m slices' votes
SOURCE_UNIT = "source"
SLICE_UNIT = "slice"
MAX_SLICES = 1 << 16             # gamma/m must stay a positive multiple of 2**-16
DEFAULT_RESOLUTION = 16          # a simplex vote's unit votes when the policy does not say
MAX_RESOLUTION = 1 << 16         # m must divide 2**16: gamma/m on the grid, 2**16/m an integer
EXCLUDE = "exclude"
SHRINK = "shrink"
DEFAULT_DELTA = 1e-5


def resolution_ok(m: Any) -> bool:
    """Whether m can be a simplex resolution: a power of two that divides 2**16."""
    return not isinstance(m, bool) and isinstance(m, int) and 1 <= m <= MAX_RESOLUTION and m & (m - 1) == 0


def unit_label(unit: str, slices: int) -> str:
    """A privacy unit as people read it: "source", or "slice m=64"."""
    return unit if unit == SOURCE_UNIT else f"{unit} m={slices}"


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise PolicyError(f"{where}: {name} must be finite, got {value!r}")
    return value


def _positive(where: str, name: str, value: Any) -> float:
    value = _number(where, name, value)
    if value <= 0:
        raise PolicyError(f"{where}: {name} must be > 0, got {value!r}")
    return value


def _no_unknown(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class Budget:
    """A budget as the source stated it, and the zCDP rho it amounts to."""

    kind: str                     # "rho" | "eps_delta" | "rdp"
    value: float                  # rho, epsilon or B
    delta: float | None = None    # for eps_delta
    order: float | None = None    # for rdp

    def __post_init__(self) -> None:
        where = "budget"
        # Normalise numbers to float so equal policies encode (and hash) equally.
        for name in ("value", "delta", "order"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        if self.kind == "rho":
            _positive(where, "rho", self.value)
        elif self.kind == "eps_delta":
            _positive(where, "epsilon", self.value)
            if self.delta is None or not 0 < _number(where, "delta", self.delta) < 1:
                raise PolicyError(f"{where}: delta must be in (0, 1), got {self.delta!r}")
        elif self.kind == "rdp":
            _positive(where, "rdp", self.value)
            if self.order is None or _number(where, "order", self.order) <= 1:
                raise PolicyError(f"{where}: order must be > 1, got {self.order!r}")
        else:
            raise PolicyError(f"{where}: unknown budget kind {self.kind!r}")

    @property
    def rho(self) -> Fraction:
        if self.kind == "rho":
            return Fraction(self.value)
        if self.kind == "eps_delta":
            return rho_from_eps_delta(self.value, self.delta)
        return rho_from_rdp_budget(self.value, self.order)

    def to_dict(self) -> dict:
        if self.kind == "rho":
            return {"rho": self.value}
        if self.kind == "eps_delta":
            return {"epsilon": self.value, "delta": self.delta}
        return {"rdp": self.value, "order": self.order}

    @classmethod
    def from_dict(cls, where: str, d: Any) -> "Budget":
        if not isinstance(d, Mapping):
            raise PolicyError(f"{where}: budget must be a table like {{ rho = 1.0 }}, got {d!r}")
        keys = set(d)
        try:
            if keys == {"rho"}:
                return cls("rho", _positive(where, "budget.rho", d["rho"]))
            if keys == {"epsilon", "delta"}:
                return cls("eps_delta", _positive(where, "budget.epsilon", d["epsilon"]),
                           delta=_number(where, "budget.delta", d["delta"]))
            if keys == {"rdp", "order"}:
                return cls("rdp", _positive(where, "budget.rdp", d["rdp"]),
                           order=_number(where, "budget.order", d["order"]))
        except PolicyError as e:
            # __post_init__ does not know the source: say which one it was.
            msg = str(e)
            raise PolicyError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        raise PolicyError(f"{where}: budget must have exactly one of the forms "
                          f"{{rho}}, {{epsilon, delta}}, {{rdp, order}}; got keys {sorted(keys)}")


@dataclass(frozen=True)
class SourcePolicy:
    """One source's agreement: its weight band, its budget, its vote format and its
    privacy unit.

    unit "source" (default): the budget protects the source's whole vote stream
    (source-level replacement). unit "slice" with `slices` = m: the source's data
    is split into m disjoint slices, one model each, and its vote is the histogram
    of the m slice votes, each weighted gamma/m; the budget protects any one
    slice (hence any one record), every charge is 1/m^2 of the source-level one,
    and the source-level spend — its influence — is m^2 times the slice-level
    spend, reported beside it and capped by `influence_budget` if given.

    votes "simplex" with `resolution` = m (default 16; a power of two dividing
    2**16): each probability vector is rounded, by the source and identically by
    every backend, to a histogram of m unit votes (`mechanism.votes`: unbiased, so
    E[histogram / m] is the vector), and tallied at gamma/m per unit vote like a
    slice histogram — under MPC it travels as m class indices, valid by
    construction. The privacy unit stays the source: a rounded vote is still a
    point of the simplex (two differ by at most sqrt(2) in L2 and 1 in L-inf), so
    the charges are those of any one-hot or simplex vote.

    Weights are multiples of `grid_step` * 2**-16 — m for a slice histogram or a
    simplex vote of resolution m, else 1 — so each unit vote's weight gamma/m is
    exact on the 2**-16 grid."""

    id: str
    gamma_min: float
    gamma_max: float
    budget: Budget
    delta: float = DEFAULT_DELTA
    on_exhaustion: str = EXCLUDE
    votes: str | None = None          # None: one-hot for unit "source", histogram for unit "slice"
    unit: str = SOURCE_UNIT
    slices: int = 1
    influence_budget: Budget | None = None
    resolution: int | None = None     # votes "simplex": m unit votes per vote (None: DEFAULT_RESOLUTION)
    # The consortium whose policy this is (set by ConsortiumPolicy): with the source id
    # it keys the rounding of simplex votes, so every backend rounds them alike.
    consortium: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"source {self.id!r}"
        for name in ("gamma_min", "gamma_max", "delta"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        if not isinstance(self.id, str) or not self.id or not self.id.isprintable() or len(self.id) > 128:
            raise PolicyError("source id must be a non-empty printable string of at most 128 characters, "
                              f"got {self.id!r}")
        if self.unit not in (SOURCE_UNIT, SLICE_UNIT):
            raise PolicyError(f"{where}: unit must be {SOURCE_UNIT!r} or {SLICE_UNIT!r}, got {self.unit!r}")
        m = self.slices
        if isinstance(m, bool) or not isinstance(m, int):
            raise PolicyError(f"{where}: slices must be an integer, got {m!r}")
        if self.unit == SOURCE_UNIT:
            if m != 1:
                raise PolicyError(f"{where}: slices = {m} needs unit = {SLICE_UNIT!r} "
                                  f"(a source-unit source votes as one)")
            if self.influence_budget is not None:
                raise PolicyError(f"{where}: influence_budget is for unit = {SLICE_UNIT!r}; at unit "
                                  f"{SOURCE_UNIT!r} the budget already caps the source-level spend")
            if self.votes is None:
                object.__setattr__(self, "votes", ONE_HOT)
            if self.votes not in (ONE_HOT, SIMPLEX):
                raise PolicyError(f"{where}: votes must be {ONE_HOT!r} or {SIMPLEX!r}, got {self.votes!r}"
                                  + (f" ({HISTOGRAM!r} votes need unit = {SLICE_UNIT!r})"
                                     if self.votes == HISTOGRAM else ""))
        else:
            if not 2 <= m <= MAX_SLICES:
                raise PolicyError(f"{where}: unit = {SLICE_UNIT!r} needs slices = m with 2 <= m <= {MAX_SLICES}, "
                                  f"got {m!r}")
            if self.votes is None:
                object.__setattr__(self, "votes", HISTOGRAM)
            if self.votes != HISTOGRAM:
                raise PolicyError(f"{where}: a slice-unit source votes with the histogram of its slices' votes "
                                  f"(votes = {HISTOGRAM!r}), got votes = {self.votes!r}")
            if self.influence_budget is not None and not isinstance(self.influence_budget, Budget):
                raise PolicyError(f"{where}: influence_budget must be a Budget")
        if self.votes == SIMPLEX:
            if self.resolution is None:
                object.__setattr__(self, "resolution", DEFAULT_RESOLUTION)
            if not resolution_ok(self.resolution):
                raise PolicyError(f"{where}: resolution must be a power of two that divides 2**16 "
                                  f"(1, 2, 4, ..., {MAX_RESOLUTION}), got {self.resolution!r}")
        elif self.resolution is not None:
            raise PolicyError(f"{where}: resolution is for votes = {SIMPLEX!r} (how finely a probability vector "
                              f"is rounded), not for {self.votes!r} votes")
        lo = _number(where, "gamma_min", self.gamma_min)
        hi = _number(where, "gamma_max", self.gamma_max)
        if not 0 <= lo <= 1:
            raise PolicyError(f"{where}: gamma_min must be in [0, 1], got {lo}")
        if not 0 < hi <= 1:
            raise PolicyError(f"{where}: gamma_max must be in (0, 1], got {hi}")
        if lo > hi:
            raise PolicyError(f"{where}: gamma_min ({lo}) > gamma_max ({hi})")
        if self.grid_min > self.grid_max:
            step = self.grid_step
            raise PolicyError(f"{where}: the band [{lo}, {hi}] holds no multiple of "
                              + ("2**-16" if step == 1 else
                                 f"{step} * 2**-16 (gamma/{step} must be a multiple of 2**-16)"))
        if not isinstance(self.budget, Budget):
            raise PolicyError(f"{where}: budget must be a Budget")
        if not 0 < _number(where, "delta", self.delta) < 1:
            raise PolicyError(f"{where}: delta must be in (0, 1), got {self.delta}")
        if self.on_exhaustion not in (EXCLUDE, SHRINK):
            raise PolicyError(f"{where}: on_exhaustion must be {EXCLUDE!r} or {SHRINK!r}, got {self.on_exhaustion!r}")

    @property
    def grid_step(self) -> int:
        """Weights are multiples of grid_step * 2**-16: the unit votes each vote is
        tallied as, at gamma/grid_step each (m slices, the simplex resolution m, or 1;
        `vote_format.units`)."""
        if self.votes == HISTOGRAM:
            return self.slices
        return self.resolution if self.votes == SIMPLEX else 1

    # The band actually used: the multiples of grid_step * 2**-16 inside the agreed band.
    @cached_property
    def grid_min(self) -> float:
        step = self.grid_step
        g = -(-math.ceil(Fraction(self.gamma_min) * SCALE) // step) * step
        return max(g, step) / SCALE  # a participating weight is never 0

    @cached_property
    def grid_max(self) -> float:
        return (math.floor(Fraction(self.gamma_max) * SCALE) // self.grid_step) * self.grid_step / SCALE

    def on_grid(self, gamma: float) -> bool:
        """Whether gamma is a weight this source can have: a multiple of grid_step * 2**-16."""
        g = Fraction(gamma) * SCALE
        return g.denominator == 1 and g.numerator % self.grid_step == 0

    def floor_to_band(self, x: float) -> float:
        """The largest weight on this source's grid that is <= x, clamped to its band."""
        g = (math.floor(Fraction(x) * SCALE) // self.grid_step) * self.grid_step / SCALE
        return min(self.grid_max, max(self.grid_min, g))

    @cached_property
    def budget_rho(self) -> Fraction:
        """The stated budget in zCDP rho, at the source's unit."""
        return self.budget.rho

    @cached_property
    def influence_budget_rho(self) -> Fraction | None:
        """The cap on the source-level spend: influence_budget for a slice-unit
        source, the budget itself for a source-unit one."""
        if self.unit == SOURCE_UNIT:
            return self.budget_rho
        return None if self.influence_budget is None else self.influence_budget.rho

    @cached_property
    def cap_rho(self) -> Fraction:
        """What the filter and the ledgers enforce on the spend at the source's unit:
        its budget and, scaled down by m^2, its influence budget — both at once."""
        cap = self.budget_rho
        if self.influence_budget_rho is not None:
            cap = min(cap, self.influence_budget_rho / (self.slices * self.slices))
        return cap

    @cached_property
    def vote_format(self):
        from .mechanism.votes import VoteFormat  # mechanism imports policy: resolved at call time
        return VoteFormat(self.votes, self.slices, self.resolution, self.consortium, self.id)

    def influence(self, rho: Fraction) -> Fraction:
        """The source-level spend of a spend at the source's unit: every charge at the
        slice level is 1/m^2 of the source-level one (sensitivities scale by 1/m)."""
        return rho * self.slices * self.slices

    def to_dict(self) -> dict:
        d = {"id": self.id, "gamma_min": self.gamma_min, "gamma_max": self.gamma_max,
             "budget": self.budget.to_dict(), "delta": self.delta,
             "on_exhaustion": self.on_exhaustion, "votes": self.votes}
        if self.votes == SIMPLEX:          # always stated: the rounding is part of what was agreed
            d["resolution"] = self.resolution
        if self.unit != SOURCE_UNIT:       # absent at the default: an older policy's digest is unchanged
            d.update(unit=self.unit, slices=self.slices)
            if self.influence_budget is not None:
                d["influence_budget"] = self.influence_budget.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, index: int = 0) -> "SourcePolicy":
        if not isinstance(d, Mapping):
            raise PolicyError(f"sources[{index}] must be a table")
        where = f"source {d.get('id', f'#{index}')!r}"
        _no_unknown(where, d, {"id", "gamma_min", "gamma_max", "budget", "delta", "on_exhaustion", "votes",
                               "unit", "slices", "influence_budget", "resolution"})
        for key in ("id", "gamma_min", "gamma_max", "budget"):
            if key not in d:
                raise PolicyError(f"{where}: missing required key {key!r}")
        budget = Budget.from_dict(where, d["budget"])
        influence = (Budget.from_dict(f"{where}: influence_budget", d["influence_budget"])
                     if "influence_budget" in d else None)
        delta = d.get("delta", budget.delta if budget.kind == "eps_delta" else DEFAULT_DELTA)
        unit = d.get("unit", SOURCE_UNIT)
        if unit == SLICE_UNIT and "slices" not in d:
            raise PolicyError(f"{where}: unit = {SLICE_UNIT!r} needs slices = m (how many disjoint slices, "
                              "one model each)")
        return cls(id=d["id"], gamma_min=d["gamma_min"], gamma_max=d["gamma_max"], budget=budget,
                   delta=delta, on_exhaustion=d.get("on_exhaustion", EXCLUDE),
                   votes=d.get("votes"), unit=unit, slices=d.get("slices", 1), influence_budget=influence,
                   resolution=d.get("resolution"))


@dataclass(frozen=True)
class MechanismPolicy:
    """GNMax (sigma2) or Confident-GNMax (sigma1, threshold, sigma2); weight units."""

    kind: str
    sigma2: float
    sigma1: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        where = "mechanism"
        for name in ("sigma1", "sigma2", "threshold"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        _positive(where, "sigma2", self.sigma2)
        if self.kind == CONFIDENT_KIND:
            if self.sigma1 is None or self.threshold is None:
                raise PolicyError(f"{where}: confident_gnmax needs sigma1 and threshold")
            _positive(where, "sigma1", self.sigma1)
            _number(where, "threshold", self.threshold)
        elif self.kind == GNMAX_KIND:
            if self.sigma1 is not None or self.threshold is not None:
                raise PolicyError(f"{where}: gnmax takes no sigma1/threshold (use kind = \"confident_gnmax\")")
        else:
            raise PolicyError(f"{where}: kind must be {GNMAX_KIND!r} or {CONFIDENT_KIND!r}, got {self.kind!r}")

    @property
    def confident(self) -> bool:
        return self.kind == CONFIDENT_KIND

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "sigma2": self.sigma2}
        if self.confident:
            d.update(sigma1=self.sigma1, threshold=self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "MechanismPolicy":
        if not isinstance(d, Mapping):
            raise PolicyError("mechanism must be a table")
        _no_unknown("mechanism", d, {"kind", "sigma1", "sigma2", "threshold"})
        if "kind" not in d or "sigma2" not in d:
            raise PolicyError("mechanism: 'kind' and 'sigma2' are required")
        return cls(kind=d["kind"], sigma2=d["sigma2"], sigma1=d.get("sigma1"), threshold=d.get("threshold"))


@dataclass(frozen=True)
class CalibrationPolicy:
    """How much of each source's budget private calibration may spend."""

    budget_fraction: float = 0.1

    def __post_init__(self) -> None:
        f = _number("calibration", "budget_fraction", self.budget_fraction)
        if not 0 < f < 1:
            raise PolicyError(f"calibration: budget_fraction must be in (0, 1), got {f}")

    def to_dict(self) -> dict:
        return {"budget_fraction": self.budget_fraction}

    @classmethod
    def from_dict(cls, d: Any) -> "CalibrationPolicy":
        if not isinstance(d, Mapping):
            raise PolicyError("calibration must be a table")
        _no_unknown("calibration", d, {"budget_fraction"})
        return cls(**d)


def read_policy_text(path: Path) -> str:
    """A policy file's text; errors name the file."""
    try:
        # The user named this path, so a link is theirs to make; a FIFO or device is not a policy.
        return read_named(path, POLICY_FILE, follow_links=True).decode("utf-8")
    except PublishedFileError as e:
        raise PolicyError(f"cannot read policy file {e}") from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"policy file {path} is not UTF-8: {e}") from None


def ed25519_public_key(value: Any) -> bytes | None:
    """The 32 raw bytes of a base64 Ed25519 public key, or None if `value` is not one
    (each caller names the field in its own error)."""
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _public_key(where: str, value: Any) -> str:
    """A base64 Ed25519 public key (32 bytes), normalised to its canonical text."""
    raw = ed25519_public_key(value)
    if raw is None:
        raise PolicyError(f"{where} must be a base64 Ed25519 public key (32 bytes), got {value!r}")
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class SignerPolicy:
    """Who must sign every checkpoint of the log: part of what every source agreed
    to, so no later log entry written by the operator can drop or replace one.

    operator   the operator's checkpoint key (base64 Ed25519 public key), if it signs
    parties    every MPC computing party's cosigning key, in rank order
    enclave_pcr0  for the enclave backend: every signer must be an enclave key whose
               attestation carries this measurement (its keys are new at every start,
               so the measurement is what is agreed, not a key)
    dealer     the MPC Beaver-triple dealer's key: not a checkpoint signer, but pinned
               like the parties' keys for the links between them (`mpc.roster`)
    """

    operator: str | None = None
    parties: tuple[str, ...] = ()
    enclave_pcr0: str | None = None
    dealer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parties", tuple(self.parties))
        if self.operator is not None:
            object.__setattr__(self, "operator", _public_key("signers: operator", self.operator))
        object.__setattr__(self, "parties", tuple(_public_key(f"signers: parties[{i}]", k)
                                                  for i, k in enumerate(self.parties)))
        if self.dealer is not None:
            if not self.parties:
                raise PolicyError("signers: a dealer key goes with the computing parties' keys")
            object.__setattr__(self, "dealer", _public_key("signers: dealer", self.dealer))
        if self.enclave_pcr0 is not None:
            pcr = self.enclave_pcr0
            try:
                ok = isinstance(pcr, str) and len(bytes.fromhex(pcr)) == 48
            except ValueError:
                ok = False
            if not ok:
                raise PolicyError(f"signers: enclave_pcr0 must be 96 hex digits (SHA-384), got {pcr!r}")
            object.__setattr__(self, "enclave_pcr0", pcr.lower())
            if self.operator is not None or self.parties:
                raise PolicyError("signers: an enclave log is signed by the attested enclave alone; "
                                  "enclave_pcr0 takes no operator or parties")
        elif self.operator is None and not self.parties:
            raise PolicyError("signers: name the operator's key, the parties' keys or enclave_pcr0")
        keys = ([self.operator] if self.operator else []) + list(self.parties) + \
            ([self.dealer] if self.dealer else [])
        if len(set(keys)) != len(keys):
            raise PolicyError("signers: a key is named twice (every signer needs its own key)")

    def slots(self) -> list[tuple[str, str, str]]:
        """(slot, role, public key) of every signer named by key, operator first."""
        out = [("operator", "operator", self.operator)] if self.operator else []
        return out + [(f"party-{i}", "party", k) for i, k in enumerate(self.parties)]

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.operator is not None:
            d["operator"] = self.operator
        if self.parties:
            d["parties"] = list(self.parties)
        if self.enclave_pcr0 is not None:
            d["enclave_pcr0"] = self.enclave_pcr0
        if self.dealer is not None:
            d["dealer"] = self.dealer
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "SignerPolicy":
        if not isinstance(d, Mapping):
            raise PolicyError("signers must be a table")
        _no_unknown("signers", d, {"operator", "parties", "enclave_pcr0", "dealer"})
        parties = d.get("parties", [])
        if not isinstance(parties, list):
            raise PolicyError(f"signers: parties must be a list of keys, got {parties!r}")
        return cls(operator=d.get("operator"), parties=tuple(parties), enclave_pcr0=d.get("enclave_pcr0"),
                   dealer=d.get("dealer"))


@dataclass(frozen=True)
class ConsortiumPolicy:
    sources: tuple[SourcePolicy, ...]
    mechanism: MechanismPolicy
    name: str = "consortium"
    collusion_tolerance: int = 1
    calibration: CalibrationPolicy = field(default_factory=CalibrationPolicy)
    signers: SignerPolicy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.signers is not None and not isinstance(self.signers, SignerPolicy):
            raise PolicyError("signers must be a SignerPolicy")
        if not self.sources:
            raise PolicyError("a policy needs at least one source")
        seen: set[str] = set()
        for s in self.sources:
            if not isinstance(s, SourcePolicy):
                raise PolicyError(f"sources must be SourcePolicy objects, got {type(s).__name__}")
            if s.id in seen:
                raise PolicyError(f"duplicate source id {s.id!r}")
            seen.add(s.id)
        if not isinstance(self.mechanism, MechanismPolicy):
            raise PolicyError("mechanism must be a MechanismPolicy")
        t = self.collusion_tolerance
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise PolicyError(f"consortium: collusion_tolerance must be an integer >= 1, got {t!r}")
        if not isinstance(self.name, str) or not self.name:
            raise PolicyError("consortium: name must be a non-empty string")
        # Each source's agreement names this consortium (it keys the rounding of simplex votes).
        object.__setattr__(self, "sources", tuple(s if s.consortium == self.name else replace(s, consortium=self.name)
                                                  for s in self.sources))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.sources)

    def source(self, source_id: str) -> SourcePolicy:
        for s in self.sources:
            if s.id == source_id:
                return s
        raise PolicyError(f"unknown source id {source_id!r}")

    def to_dict(self) -> dict:
        return {"consortium": {"name": self.name, "collusion_tolerance": self.collusion_tolerance},
                "mechanism": self.mechanism.to_dict(),
                "calibration": self.calibration.to_dict(),
                "sources": [s.to_dict() for s in self.sources],
                # absent, not empty, without signers: the digest of an older policy is unchanged
                **({"signers": self.signers.to_dict()} if self.signers is not None else {})}

    def with_signers(self, signers: SignerPolicy) -> "ConsortiumPolicy":
        """The same agreement, naming who must sign its log."""
        return replace(self, signers=signers)

    def canonical_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @classmethod
    def from_dict(cls, d: Any) -> "ConsortiumPolicy":
        if not isinstance(d, Mapping):
            raise PolicyError("a policy must be a table")
        _no_unknown("policy", d, {"consortium", "mechanism", "calibration", "sources", "signers"})
        if "mechanism" not in d:
            raise PolicyError("policy: missing [mechanism] table")
        if "sources" not in d or not isinstance(d["sources"], list):
            raise PolicyError("policy: missing [[sources]] entries")
        c = d.get("consortium", {})
        if not isinstance(c, Mapping):
            raise PolicyError("consortium must be a table")
        _no_unknown("consortium", c, {"name", "collusion_tolerance"})
        return cls(sources=tuple(SourcePolicy.from_dict(s, i) for i, s in enumerate(d["sources"])),
                   mechanism=MechanismPolicy.from_dict(d["mechanism"]),
                   name=c.get("name", "consortium"),
                   collusion_tolerance=c.get("collusion_tolerance", 1),
                   calibration=CalibrationPolicy.from_dict(d.get("calibration", {})),
                   signers=SignerPolicy.from_dict(d["signers"]) if "signers" in d else None)

    @classmethod
    def from_toml(cls, text: str) -> "ConsortiumPolicy":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"policy file is not valid TOML: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "ConsortiumPolicy":
        path = Path(path)
        text = read_policy_text(path)
        try:
            return cls.from_toml(text)
        except PolicyError as e:
            raise PolicyError(f"{path}: {e}") from None

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())
