"""The transparency log: what is published, and how it is signed.

entry (the JSON format of one entry), merkle (RFC 9162 tree and proofs), note
(C2SP signed checkpoints), writer (mirrors the ledger into a log directory).
"""
