"""Every workaround CrypTen 0.4.1 needs on this stack, in one place.

CrypTen is unmaintained (last release 2022-12). Each shim below says what it
works around; nothing else in dvsecure patches CrypTen or torch.
"""
from __future__ import annotations

import sys
import types

_PROVIDERS = ("TTP", "TFP")


def _alias_onnx_registration() -> None:
    """`crypten.nn.onnx_converter` imports `torch.onnx._internal.registration`,
    which torch removed (2.x); only CrypTen's ONNX model import uses it, and
    dvsecure never does. An empty module with a `registry = None` attribute lets
    `import crypten` succeed; the ONNX path would still fail loudly if used."""
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        shim = types.ModuleType(name)
        shim.registry = None
        sys.modules[name] = shim


def import_crypten():
    """Import CrypTen with the shims applied. Raises ImportError with the install
    hint if the `mpc` extra is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("the MPC backend needs torch: run `make install` (torch==2.13.0, CPU)") from e
    _alias_onnx_registration()
    try:
        import crypten
    except ImportError as e:
        raise ImportError("the MPC backend needs CrypTen 0.4.1, installed without its declared deps "
                          "(`make install` does it)") from e
    return crypten


def set_provider(crypten, provider: str) -> None:
    """Choose the Beaver-triple provider before `crypten.init()`. CrypTen's default
    is TFP, where party 0 generates every triple in the clear and so could unmask
    every product; dvsecure uses TTP (a dealer that is not a computing party)
    unless TFP is asked for explicitly."""
    if provider not in _PROVIDERS:
        raise ValueError(f"provider must be one of {_PROVIDERS}, got {provider!r}")
    crypten.cfg.mpc.provider = provider
