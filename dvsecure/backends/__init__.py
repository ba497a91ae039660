"""Backends combine votes and release the noisy argmax. The plaintext backend is
the reference; every other backend must agree with it exactly."""
from .base import Backend, BackendOutput
from .plaintext import PlaintextBackend

__all__ = ["Backend", "BackendOutput", "PlaintextBackend"]
