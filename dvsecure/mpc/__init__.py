"""The MPC backend: CrypTen computing parties over torch.distributed (gloo).

Importing this package needs the `mpc` extra (torch, CrypTen); nothing in the
light install (policy, accounting, audit, receipts, sharing) imports it.
"""
