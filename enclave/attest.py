"""Attestation providers: the Nitro Secure Module, or a loudly labelled simulation.

Both return a COSE_Sign1 document in AWS's format binding `public_key`,
`user_data` and `nonce` to the enclave's measurement. Verifiers refuse the
simulated one unless they are told to trust its root.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from pathlib import Path

import cbor2

from dvsecure.attestation.sim import SimulatedNSM
from dvsecure.errors import EnclaveError

SIM_BANNER = "!!! SIMULATED ATTESTATION: NOT A TEE — whoever holds the simulated CA key can forge it !!!"

NSM_DEVICE = "/dev/nsm"
# Linux uapi/linux/nsm.h: NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw), where nsm_raw is two
# {u64 addr, u64 len} iovecs (request, response): 32 bytes.
_NSM_IOCTL_RAW = (3 << 30) | (32 << 16) | (0x0A << 8)
_NSM_RESPONSE_MAX = 0x3000


class SimProvider:
    name = "sim"
    simulated = True

    def __init__(self, ca_dir: str | Path, measurement: bytes):
        self._nsm = SimulatedNSM(ca_dir, measurement=measurement)
        self.measurement = measurement

    def attest(self, *, public_key: bytes, user_data: bytes, nonce: bytes | None) -> bytes:
        return self._nsm.attest(public_key=public_key, user_data=user_data, nonce=nonce)


class NitroProvider:
    """The NSM device of a Nitro enclave (its CBOR request/response API over one ioctl).
    Not exercised on the development machine, which has no NSM device."""

    name = "nitro"
    simulated = False

    def __init__(self, device: str = NSM_DEVICE):
        if not os.path.exists(device):
            raise EnclaveError(f"no Nitro Secure Module at {device}: this is not a Nitro enclave "
                               f"(use --attestation sim for development)", "FAILED_PRECONDITION")
        self._device = device

    def attest(self, *, public_key: bytes, user_data: bytes, nonce: bytes | None) -> bytes:
        request = cbor2.dumps({"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}})
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(_NSM_RESPONSE_MAX)
        arg = bytearray(struct.pack("<QQQQ", ctypes.addressof(req), len(request),
                                    ctypes.addressof(resp), _NSM_RESPONSE_MAX))
        fd = os.open(self._device, os.O_RDWR)
        try:
            fcntl.ioctl(fd, _NSM_IOCTL_RAW, arg, True)
        except OSError as e:
            raise EnclaveError(f"NSM attestation request failed: {e}", "INTERNAL") from None
        finally:
            os.close(fd)
        length = struct.unpack("<QQQQ", bytes(arg))[3]
        answer = cbor2.loads(resp.raw[:length])
        document = answer.get("Attestation", {}).get("document") if isinstance(answer, dict) else None
        if not isinstance(document, bytes):
            raise EnclaveError(f"the NSM refused the attestation request: {answer!r}", "INTERNAL")
        return document


def make_provider(kind: str, *, sim_ca: str | Path | None, measurement: bytes, nsm_device: str = NSM_DEVICE):
    if kind == "nitro":
        return NitroProvider(nsm_device)
    if kind == "sim":
        if sim_ca is None:
            raise EnclaveError("--attestation sim needs --sim-ca DIR (the simulated CA's root and key)",
                               "FAILED_PRECONDITION")
        return SimProvider(sim_ca, measurement)
    raise EnclaveError(f"unknown attestation provider {kind!r}; expected 'nitro' or 'sim'", "FAILED_PRECONDITION")
