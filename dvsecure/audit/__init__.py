"""The auditor: checks a log or a receipt from published bytes alone.

check (the audit of a directory), recompute (every charge and spend from the
entries), receipt (one source's entries and proofs). Light install only.
"""
