"""Every workaround CrypTen 0.4.1 needs on this stack, in one place.

CrypTen is unmaintained (last release 2022-12). Each shim below says what it
works around; nothing else in dvsecure patches CrypTen or torch.
"""
from __future__ import annotations

import sys
import types

_PROVIDERS = ("TTP", "TFP")


def _alias_onnx_registration() -> None:
    """`crypten.nn.onnx_converter` imports `torch.onnx._internal.registration`,
    which torch removed (2.x); only CrypTen's ONNX model import uses it, and
    dvsecure never does. An empty module with a `registry = None` attribute lets
    `import crypten` succeed; the ONNX path would still fail loudly if used."""
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        shim = types.ModuleType(name)
        shim.registry = None
        sys.modules[name] = shim


def import_crypten():
    """Import CrypTen with the shims applied. Raises ImportError with the install
    hint if the `mpc` extra is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("the MPC backend needs torch: run `make install` (torch==2.13.0, CPU)") from e
    _alias_onnx_registration()
    try:
        import crypten
    except ImportError as e:
        raise ImportError("the MPC backend needs CrypTen 0.4.1, installed without its declared deps "
                          "(`make install` does it)") from e
    _register_tables(crypten)
    return crypten


def _register_tables(crypten) -> None:
    """The TTP dealer answers requests by method name (`TTPServer.__init__` loop):
    add the one-time tables of index votes (`tables.deal`), the comparisons'
    masks, lookup tables and bit triples (`compare.deal`) and the material for
    selecting values with shared bits (`compare.deal_select`) to what it can deal."""
    from . import compare, tables

    server = crypten.mpc.provider.ttp_provider.TTPServer
    if not hasattr(server, tables.FUNCTION):
        setattr(server, tables.FUNCTION, lambda self, size, num_classes: tables.deal(self, size, num_classes))
    if not hasattr(server, compare.FUNCTION):
        setattr(server, compare.FUNCTION, lambda self, count, bits, ands: compare.deal(self, count, bits, ands))
    if not hasattr(server, compare.SELECT):
        setattr(server, compare.SELECT, lambda self, count, values: compare.deal_select(self, count, values))


def set_provider(crypten, provider: str) -> None:
    """Choose the Beaver-triple provider before `crypten.init()`. CrypTen's default
    is TFP, where party 0 generates every triple in the clear and so could unmask
    every product; dvsecure uses TTP (a dealer that is not a computing party)
    unless TFP is asked for explicitly."""
    if provider not in _PROVIDERS:
        raise ValueError(f"provider must be one of {_PROVIDERS}, got {provider!r}")
    crypten.cfg.mpc.provider = provider


# ---- secure transport: links instead of gloo, ChaCha20 instead of MT19937 ----------------
# CrypTen 0.4.1 sends every PRG seed over its communicator in the clear
# (`crypten._setup_prng`/`_sync_seeds`: the pairwise zero-share seeds and the
# global seed; `TTPServer._setup_generators`: the dealer's per-party seeds, by
# `dist.isend`), seeds MT19937 `torch.Generator`s with them, and talks plain TCP
# (gloo). `use_secure_transport` replaces all three, before `crypten.init()`:
#   - the communicator is `communicator.SecureCommunicator` over `links.Link`s;
#   - every shared seed is derived from the key agreement of the link between
#     its holders (`prg.derive_seed`), so no seed is ever sent; the global seed,
#     which all parties share, is party 0's random draw sent on its links;
#   - every generator is a `prg.ChaChaGenerator`, and CrypTen's two ring samplers
#     (`crypten.common.rng`) are rebound, in every CrypTen module that imported
#     them, to draw from it (refusing a torch.Generator, so nothing falls back).

def _generator_for(crypten, generator, kwargs):
    from .prg import ChaChaGenerator

    if generator is None:
        generator = crypten.generators["local"].get(_cpu())
    if not isinstance(generator, ChaChaGenerator):
        raise RuntimeError(f"dvsecure: refusing a non-cryptographic generator {generator!r}")
    device = kwargs.get("device")
    if device is not None and str(device) != "cpu":
        raise RuntimeError("dvsecure runs CrypTen on the CPU only")
    return generator


def _cpu():
    import torch
    return torch.device("cpu")


def _ring_sampler(crypten):
    import torch

    def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
        if ring_size != 2**64:
            raise RuntimeError(f"dvsecure: ring size {ring_size} (only 2**64 is used)")
        shape = torch.Size([size]) if isinstance(size, int) else torch.Size(size)
        words = _generator_for(crypten, generator, kwargs).words(shape.numel())
        return torch.from_numpy(words.reshape(tuple(shape)))

    def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
        if bitlength is None or bitlength == 64:
            return generate_random_ring_element(size, generator=generator, **kwargs)
        if not 0 < bitlength < 64:
            raise RuntimeError(f"dvsecure: bit length {bitlength}")
        return generate_random_ring_element(size, generator=generator, **kwargs) & ((1 << bitlength) - 1)

    return generate_random_ring_element, generate_kbit_random_tensor


def _rebind_samplers(crypten) -> None:
    import crypten.common.rng as rng

    new = dict(zip(("generate_random_ring_element", "generate_kbit_random_tensor"), _ring_sampler(crypten)))
    old = {name: getattr(rng, name) for name in new}
    if getattr(old["generate_random_ring_element"], "_dvsecure", False):
        return
    for fn in new.values():
        fn._dvsecure = True
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("crypten"):
            for name, fn in old.items():
                if getattr(module, name, None) is fn:
                    setattr(module, name, new[name])


def use_secure_transport(crypten, rank: int, world: int, links: dict, with_dealer: bool) -> None:
    """Run this process's CrypTen over `links` (index -> links.Link; the dealer
    is index `world`) with ChaCha20 generators seeded from the links' secrets."""
    import os

    import crypten.communicator as comm_module
    import crypten.mpc.provider.ttp_provider as ttp

    from .communicator import build
    from .prg import ChaChaGenerator, derive_seed

    cls = build(comm_module)
    ours = cls(rank, world, links, with_dealer)

    def init(*args, **kwargs):               # crypten.init() calls this once it sees no communicator
        cls.instance = ours

    # crypten.communicator's module functions pick gloo or threads: point them here.
    comm_module.get = cls.get
    comm_module.is_initialized = cls.is_initialized
    comm_module._init = init
    comm_module.uninit = cls.shutdown
    _rebind_samplers(crypten)

    def seed_between(a: int, b: int, purpose: str) -> bytes:
        """The seed member a shares with member b, from their link: a -> b names
        the direction, so (0 -> 1) and (1 -> 0) are two seeds, as CrypTen's
        next/prev pair needs when n = 2."""
        peer = b if a == rank else a
        return derive_seed(links[peer].secret, f"dvsecure {purpose} {a}->{b}")

    def setup_prng():
        cpu = _cpu()
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        if rank == 0:
            global_seed = os.urandom(32)
            for r in range(1, world):
                links[r].send(b"global-seed" + global_seed)     # encrypted and authenticated on the link
        else:
            msg = links[0].recv()
            if len(msg) != 43 or not msg.startswith(b"global-seed"):
                from ..errors import ChannelError
                raise ChannelError("party 0 did not send the global seed")
            global_seed = msg[11:]
        crypten.generators["next"][cpu] = ChaChaGenerator(seed_between(rank, nxt, "przs"), "next")
        crypten.generators["prev"][cpu] = ChaChaGenerator(seed_between(prv, rank, "przs"), "prev")
        crypten.generators["local"][cpu] = ChaChaGenerator.fresh("local")
        crypten.generators["global"][cpu] = ChaChaGenerator(global_seed, "global")

    def client_generators(self):
        self.generator = ChaChaGenerator(seed_between(world, rank, "ttp"), "ttp")
        self.generator_cuda = None

    def server_generators(self):
        self.generators = [ChaChaGenerator(seed_between(world, r, "ttp"), f"ttp->{r}") for r in range(world)]
        self.generators_cuda = [None] * world

    crypten._setup_prng = setup_prng
    ttp.TTPClient._TTPClient__TTPClient._setup_generators = client_generators
    ttp.TTPServer._setup_generators = server_generators
