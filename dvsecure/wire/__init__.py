"""What travels between sources, parties, the coordinator and the enclave.

submission (a vote and its commitment), rpc (gRPC service plumbing), tls
(self-signed identities pinned by peers), proto (code generated from
protocols/dvsecure.proto).
"""
