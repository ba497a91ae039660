"""The mechanism: what one query computes from votes and public parameters.

votes (encoding and validation), fixedpoint (the 2^-16 weight grid), filter
(the per-source budget filter), release (tally and the noisy argmax). Pure
functions of their inputs: no ledger, no log, no network.
"""
