"""The embedded demo: a default consortium, synthetic voters, and the runs on
the plaintext, MPC (run) and enclave (enclave) backends."""
