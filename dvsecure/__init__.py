"""dvsecure: verifiable, privacy-preserving aggregation of votes with per-source budgets.

The common entry points are importable from here; everything else lives in its
own module (one concept per module). Imports are lazy so that `import dvsecure`
stays cheap for tools that need only one part (the auditor, for instance).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ConsortiumPolicy": "policy", "SourcePolicy": "policy", "MechanismPolicy": "policy",
    "Budget": "policy", "CalibrationPolicy": "policy",
    "Aggregator": "engine.aggregator", "QueryResult": "engine.aggregator",
    "Ledger": "engine.ledger",
    "Charge": "accounting.charges",
    "PrivateNoise": "noise", "SeededNoise": "noise", "NoNoise": "noise",
    "DvsecureError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dvsecure' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
