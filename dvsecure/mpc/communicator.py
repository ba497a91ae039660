"""CrypTen's communicator over dvsecure's links (`links.py`) instead of
torch.distributed/gloo, whose traffic is plain TCP (this torch build has no gloo
TLS) behind an unauthenticated rendezvous.

Every collective CrypTen uses is built from point-to-point messages on the
authenticated, encrypted links; with n = 2 or 3 parties a direct exchange costs
what gloo's ring costs, within a factor (n - 1) / n on all_reduce. Groups are
tuples of member indices: the parties (`main_group`), everyone with the dealer
(`ttp_group`), party 0 with the dealer (`ttp_comm_group`). Objects (the dealer's
requests) travel pickled and are read with CrypTen's restricted unpickler, from
an authenticated peer only. Counters: CrypTen's own (`_logging`, as for gloo, so
figures compare) plus the bytes really written to the links (`wire_bytes`).
"""
from __future__ import annotations

import pickle

import numpy as np


def build(crypten_communicator_module):
    """The communicator class, subclassing CrypTen's abstract `Communicator` (so
    its counters and `_logging` apply); built on first use because CrypTen is an
    optional dependency."""
    import torch
    from crypten.common import serial
    from crypten.communicator.communicator import Communicator, _logging
    from torch.distributed import ReduceOp

    from ..errors import ChannelError

    class _Done:
        def __init__(self, fn=None):
            self._fn = fn

        def wait(self):
            if self._fn is not None:
                fn, self._fn = self._fn, None
                fn()

        def is_completed(self):
            return self._fn is None

    class SecureCommunicator(Communicator):
        BYTES_PER_ELEMENT = 8
        instance = None

        def __init__(self, rank: int, world_size: int, links: dict, with_dealer: bool):
            self.rank, self.world_size, self.links = rank, world_size, links
            self.main_group = tuple(range(world_size))
            self.ttp_group = tuple(range(world_size + (1 if with_dealer else 0)))
            self.ttp_comm_group = (0, world_size)
            self.ttp_initialized = with_dealer
            self._name = f"rank{rank}"
            self.reset_communication_stats()

        # ---- lifecycle (module-level functions in crypten.communicator call these)
        @classmethod
        def is_initialized(cls):
            return cls.instance is not None

        @classmethod
        def get(cls):
            return cls.instance

        @classmethod
        def shutdown(cls):
            inst, cls.instance = cls.instance, None
            if inst is None:
                return
            try:
                if inst.rank == 0 and inst.ttp_initialized:
                    inst.send_obj("terminate", inst.get_ttp_rank(), inst.ttp_group)
            except ChannelError:
                pass
            for link in inst.links.values():
                link.close()

        # ---- bytes and tensors on one link
        def _link(self, peer):
            if peer == self.rank or peer not in self.links:
                raise ChannelError(f"member {self.rank} has no link to member {peer}")
            return self.links[peer]

        def send_bytes(self, data: bytes, dst: int) -> None:
            self._link(dst).send(data)

        def recv_bytes(self, src: int) -> bytes:
            return self._link(src).recv()

        def _send_tensor(self, tensor, dst):
            self.send_bytes(tensor.detach().contiguous().numpy().tobytes(), dst)

        def _recv_into(self, template, src):
            data = self.recv_bytes(src)
            expected = template.nelement() * template.element_size()
            if len(data) != expected:
                raise ChannelError(f"member {src} sent {len(data)} bytes where {expected} were expected")
            arr = np.frombuffer(data, dtype=template.numpy().dtype).reshape(tuple(template.size()))
            return torch.from_numpy(arr.copy())

        @property
        def wire_bytes(self) -> int:
            return sum(link.bytes_sent for link in self.links.values())

        # ---- CrypTen's API
        @_logging
        def send(self, tensor, dst):
            self._send_tensor(tensor, dst)

        @_logging
        def recv(self, tensor, src=None):
            if src is None:
                raise ChannelError("a receive must name its source on dvsecure links")
            return self._recv_into(tensor, src)

        @_logging
        def isend(self, tensor, dst):
            self._send_tensor(tensor, dst)           # the peer's reader drains: never blocks for long
            return _Done()

        @_logging
        def irecv(self, tensor, src=None):
            if src is None:
                raise ChannelError("a receive must name its source on dvsecure links")

            def fill():
                tensor.data.copy_(self._recv_into(tensor, src))
            return _Done(fill)

        @_logging
        def scatter(self, scatter_list, src, size=None, device=None):
            if src == self.rank:
                for r in self.main_group:
                    if r != src:
                        self._send_tensor(scatter_list[r], r)
                return scatter_list[self.rank].clone()
            template = torch.empty(size if size is not None else scatter_list[self.rank].size(), dtype=torch.long)
            return self._recv_into(template, src)

        def _combine(self, tensors, op):
            out = tensors[0].clone()
            for t in tensors[1:]:
                if op == ReduceOp.SUM:
                    out += t                          # int64 wraps: addition in the ring Z_2^64
                elif op == ReduceOp.BXOR:
                    out ^= t
                else:
                    raise ChannelError(f"reduce op {op} is not supported on dvsecure links")
            return out

        def _gather_all(self, tensor):
            for r in self.main_group:
                if r != self.rank:
                    self._send_tensor(tensor, r)
            return [tensor if r == self.rank else self._recv_into(tensor, r) for r in self.main_group]

        @_logging
        def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
            items = input if batched else [input]
            if self.rank != dst:
                for t in items:
                    self._send_tensor(t, dst)
                return None
            results = [self._combine([t if r == dst else self._recv_into(t, r) for r in self.main_group], op)
                       for t in items]
            return results if batched else results[0]

        @_logging
        def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
            items = input if batched else [input]
            results = [self._combine(self._gather_all(t), op) for t in items]
            return results if batched else results[0]

        @_logging
        def gather(self, tensor, dst):
            if self.rank != dst:
                self._send_tensor(tensor, dst)
                return [None]
            return [tensor.clone() if r == dst else self._recv_into(tensor, r) for r in self.main_group]

        @_logging
        def all_gather(self, tensor):
            return self._gather_all(tensor)

        @_logging
        def broadcast(self, input, src, group=None, batched=False):
            group = self.main_group if group is None else group
            items = input if batched else [input]
            for t in items:
                if self.rank == src:
                    for r in group:
                        if r != src:
                            self._send_tensor(t, r)
                else:
                    t.data.copy_(self._recv_into(t, src))
            return input

        @_logging
        def barrier(self):
            for r in self.main_group:
                if r != self.rank:
                    self.send_bytes(b"", r)
            for r in self.main_group:
                if r != self.rank and self.recv_bytes(r) != b"":
                    raise ChannelError(f"member {r} sent data where a barrier was expected")

        @_logging
        def send_obj(self, obj, dst, group=None):
            self.send_bytes(pickle.dumps(obj), dst)

        @_logging
        def recv_obj(self, src, group=None):
            return serial.restricted_loads(self.recv_bytes(src))

        @_logging
        def broadcast_obj(self, obj, src, group=None):
            group = self.main_group if group is None else group
            if self.rank == src:
                data = pickle.dumps(obj)
                for r in group:
                    if r != src:
                        self.send_bytes(data, r)
                return obj
            return serial.restricted_loads(self.recv_bytes(src))

        def get_world_size(self):
            return self.world_size

        def get_rank(self):
            return self.rank

        def get_ttp_rank(self):
            return self.world_size

        def set_name(self, name):
            self._name = name

        def get_name(self):
            return self._name

        def get_distributed_backend(self):
            return "dvsecure-links"

    return SecureCommunicator
