"""Backends combine votes and release the noisy argmax. The plaintext backend is
the reference; every other backend must agree with it exactly."""
from .base import FROM_SOURCES, Backend, BackendOutput
from .plaintext import PlaintextBackend

__all__ = ["Backend", "BackendOutput", "FROM_SOURCES", "PlaintextBackend"]
