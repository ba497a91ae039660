"""The committed generated code in dvsecure/wire/proto/ is what protocols/dvsecure.proto
generates today (the regeneration command is in the .proto's header)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("dvsecure_pb2.py", "dvsecure_pb2_grpc.py")


def test_generated_code_is_current(tmp_path):
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Idvsecure/wire/proto=protocols",
                           f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", "protocols/dvsecure.proto"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "dvsecure" / "wire" / "proto" / name).read_bytes()
        committed = (ROOT / "dvsecure" / "wire" / "proto" / name).read_bytes()
        assert fresh == committed, (f"dvsecure/wire/proto/{name} is stale: regenerate it with the command in "
                                    f"protocols/dvsecure.proto")


def test_generated_modules_import_as_a_package_without_grpc_tools():
    # The light install has grpcio and protobuf but not grpcio-tools (grpc imports it when it is
    # there, optionally): with it made unimportable, the client side must still import.
    code = ("import sys; sys.modules['grpc_tools'] = None; "
            "import dvsecure.wire.proto.dvsecure_pb2_grpc as g, dvsecure.tee.client; "
            "assert g.EnclaveStub; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'crypten')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
