"""Enclave attestation: verify AWS Nitro documents; simulate them for development.

`verify` needs only the light install (cbor2, cryptography). A simulated
document (from `sim.SimulatedNSM`) is refused unless its root is trusted
explicitly.
"""
from .nitro import AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_G1_SHA256, AttestationDocument, aws_nitro_root, verify

__all__ = ["AWS_NITRO_ROOT_G1_PEM", "AWS_NITRO_ROOT_G1_SHA256", "AttestationDocument", "aws_nitro_root", "verify"]
