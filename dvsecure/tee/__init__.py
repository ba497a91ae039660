"""The library side of the enclave in `enclave/`.

protocol (signed requests, bindings, the measurement), client (sources and the
coordinator talking to an attested enclave), process (starting the enclave
application as a child process).
"""
