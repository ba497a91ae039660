"""The engine: runs the mechanism against durable state.

aggregator (filter -> backend -> charges -> ledger, one query or a batch),
calibration (weights within bands from labelled queries, charged), ledger (the
SQLite record of every charge, written before a release is returned).
"""
