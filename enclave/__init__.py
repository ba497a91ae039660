"""The attested enclave application (see README.md); run as `python -m enclave.app`."""
