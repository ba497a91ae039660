"""CrypTen imports on this stack (via the one compat module), and shares made by
dvsecure's client-side sharing become CrypTen tensors whose reconstruction is the
vote: three parties and a TTP dealer over gloo on loopback, started and stopped
here (no run_multiprocess, which deadlocks on large returns)."""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from dvsecure.mpc.compat import import_crypten, set_provider
from dvsecure.mpc.sharing import reconstruct, share


def test_import_crypten_with_shims():
    crypten = import_crypten()
    assert crypten.__version__ == "0.4.1"
    with pytest.raises(ValueError, match="provider"):
        set_provider(crypten, "HE")


def _party(rank, world, rendezvous, shares, result_q):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo")
    crypten = import_crypten()
    set_provider(crypten, "TTP")
    import torch
    if rank == world:                      # the dealer
        crypten.init()
        crypten.mpc.provider.TTPServer()
        return
    crypten.init()
    x = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(shares[rank].view(np.int64)), precision=16)
    y = x * x                              # one Beaver multiplication: needs the dealer
    out = (x.get_plain_text(), y.get_plain_text())
    crypten.uninit()
    if rank == 0:
        result_q.put([t.numpy().tolist() for t in out])


@pytest.mark.slow
def test_three_parties_rebuild_client_shares_and_multiply_with_a_dealer(tmp_path):
    votes = np.eye(3, dtype=np.int64)[[1, 0, 2]] << 16                    # int64 at 2**16
    shares = share(votes, 3)
    assert np.array_equal(reconstruct(shares), votes)
    rendezvous = f"file://{tmp_path / 'rdv'}"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_party, args=(r, 3, rendezvous, shares, q)) for r in range(4)]
    for p in procs:
        p.start()
    try:
        plain, squared = q.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert np.allclose(plain, votes / 65536)
    assert np.allclose(squared, (votes / 65536) ** 2, atol=1e-4)
    assert all(p.exitcode == 0 for p in procs)
