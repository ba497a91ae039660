"""An experiment grid from TOML: every key checked, unknown keys are errors.

    [experiment]
    dataset = "digits"           # bundled with scikit-learn
    seed = 0                     # data split, partition and slices
    queries = 200                # non-calibration queries per configuration
    delta = 1e-5

    [grid]                       # every combination of these lists is one configuration
    skew = [0.3, 1.0]            # Dirichlet alpha of the non-IID partition (smaller: more skewed)
    institutions = [5]
    slices = [1, 8]              # 1: source-unit institutions; m > 1: slice-unit, m models each
    sigma1 = [1.0]               # threshold noise (weight units)
    threshold = [0.6]
    sigma2 = [0.5]               # GNMax noise
    calibration = [0, 40]        # labelled queries for private calibration (plaintext backend)
    epsilon = [8.0]              # every institution's budget at its unit, at delta
    backend = ["plaintext"]      # or "mpc", "enclave" (simulated attestation; both without calibration)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .data import DATASETS

BACKENDS = ("plaintext", "mpc", "enclave")
_EXPERIMENT_KEYS = {"dataset": str, "seed": int, "queries": int, "delta": float}
_GRID_KEYS = {"skew": float, "institutions": int, "slices": int, "sigma1": float, "threshold": float,
              "sigma2": float, "calibration": int, "epsilon": float, "backend": str}

QUICK = {
    "experiment": {"dataset": "digits", "seed": 0, "queries": 100, "delta": 1e-5},
    "grid": {"skew": [0.3, 1.0], "institutions": [5], "slices": [1, 20], "sigma1": [1.0], "threshold": [0.3, 0.6],
             "sigma2": [0.15], "calibration": [0], "epsilon": [4.0, 8.0], "backend": ["plaintext"]},
}
FULL = {    # 480 configurations, as the prototype's sweep
    "experiment": {"dataset": "digits", "seed": 0, "queries": 200, "delta": 1e-5},
    "grid": {"skew": [0.1, 0.3, 1.0, 10.0], "institutions": [5], "slices": [1, 5, 10, 20, 40],
             "sigma1": [0.5, 1.0], "threshold": [0.3, 0.6, 0.9], "sigma2": [0.15, 0.3],
             "calibration": [0, 40], "epsilon": [8.0], "backend": ["plaintext"]},
}


@dataclass(frozen=True)
class Config:
    dataset: str
    seed: int
    queries: int
    delta: float
    skew: float
    institutions: int
    slices: int
    sigma1: float
    threshold: float
    sigma2: float
    calibration: int
    epsilon: float
    backend: str

    def key(self) -> str:
        """A short stable name: the SHA-256 of the canonical JSON of every field."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def _typed(where: str, name: str, value: Any, kind: type):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParameterError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ParameterError(f"{where}: {name} must be finite, got {value!r}")
    return value


def parse(spec: dict, where: str = "grid") -> list[Config]:
    """Every configuration of a grid specification (a dict as TOML gives it)."""
    if not isinstance(spec, dict) or set(spec) - {"experiment", "grid"}:
        raise ParameterError(f"{where}: tables must be [experiment] and [grid], got {sorted(spec)}")
    exp, grid = spec.get("experiment", {}), spec.get("grid", {})
    for table, keys, name in ((exp, _EXPERIMENT_KEYS, "experiment"), (grid, _GRID_KEYS, "grid")):
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise ParameterError(f"{where}: [{name}] unknown key(s) {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(keys))}")
    fixed = {k: _typed(f"{where} [experiment]", k, exp.get(k, QUICK["experiment"][k]), t)
             for k, t in _EXPERIMENT_KEYS.items()}
    if fixed["dataset"] not in DATASETS:
        raise ParameterError(f"{where}: unknown dataset {fixed['dataset']!r}; available: {', '.join(DATASETS)}")
    if fixed["queries"] < 1 or not 0 < fixed["delta"] < 1:
        raise ParameterError(f"{where}: queries must be >= 1 and delta in (0, 1)")
    axes = {}
    for k, t in _GRID_KEYS.items():
        values = grid.get(k, QUICK["grid"][k])
        if not isinstance(values, list) or not values:
            raise ParameterError(f"{where}: [grid] {k} must be a non-empty list, got {values!r}")
        axes[k] = [_typed(f"{where} [grid]", k, v, t) for v in values]
    for b in axes["backend"]:
        if b not in BACKENDS:
            raise ParameterError(f"{where}: [grid] backend {b!r} is not one of {', '.join(BACKENDS)}")
    for k in ("institutions", "slices"):
        if min(axes[k]) < 1:
            raise ParameterError(f"{where}: [grid] {k} must be >= 1")
    for k in ("skew", "sigma1", "sigma2", "epsilon"):
        if min(axes[k]) <= 0:
            raise ParameterError(f"{where}: [grid] {k} must be > 0")
    if min(axes["calibration"]) < 0:
        raise ParameterError(f"{where}: [grid] calibration must be >= 0")
    names = list(axes)
    return [Config(**fixed, **dict(zip(names, combo))) for combo in itertools.product(*axes.values())]


def load(path: str | Path) -> list[Config]:
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ParameterError(f"cannot read grid file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ParameterError(f"{path}: not valid TOML: {e}") from None
    return parse(spec, str(path))
