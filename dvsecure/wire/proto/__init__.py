"""Generated gRPC/protobuf code for protocols/dvsecure.proto (do not edit: regenerate,
see the header of protocols/dvsecure.proto; tests/test_protocols_current.py checks it)."""
