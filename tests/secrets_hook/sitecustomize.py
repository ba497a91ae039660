"""Test-only, imported at start-up by every interpreter that has this directory
on PYTHONPATH and DVSECURE_TEST_SECRETS set (the MPC members a capture test
starts): writes down each member's secrets — PRG seeds, link keys, the first
bytes of every plaintext frame, its vote shares — so the test can check that
none of them crossed the wire."""
import os

_DIR = os.environ.get("DVSECURE_TEST_SECRETS")
if _DIR:
    from dvsecure.mpc import evaluate, links, prg

    _out = open(os.path.join(_DIR, f"secrets-{os.getpid()}.txt"), "a", buffering=1)

    def _note(kind: str, data: bytes) -> None:
        _out.write(f"{kind} {bytes(data).hex()}\n")

    _prg_init = prg.ChaChaGenerator.__init__

    def _seeded(self, seed, label=""):
        _note("seed", seed)
        _prg_init(self, seed, label)
    prg.ChaChaGenerator.__init__ = _seeded

    _link_init, _link_send = links.Link.__init__, links.Link.send

    def _linked(self, sock, keys, timeout):
        for k in (keys.secret, keys.send, keys.recv):
            _note("key", k)
        _link_init(self, sock, keys, timeout)

    def _sent(self, data):
        if len(data) >= 32:
            _note("plain", bytes(data[:32]))
        _link_send(self, data)
    links.Link.__init__, links.Link.send = _linked, _sent

    _inputs = evaluate._relayed_inputs

    def _shares(*args, **kwargs):
        x, k, opened = _inputs(*args, **kwargs)
        _note("shares", x.tobytes() + k.tobytes())
        return x, k, opened
    evaluate._relayed_inputs = _shares
