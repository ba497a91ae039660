"""Test-only: separate hosts as Linux network namespaces, and a capture of what
crosses between them.

`Hosts` makes one namespace per host, each with its own address on a bridge
that lives in a hub namespace (veth pairs; as root, which CI is), and removes
them all on close. `sniff` (run inside a namespace: `python netcapture.py sniff
OUT READY`) records every frame that namespace sees, the way an eavesdropper on
the wire would; `tcp_streams` reassembles the TCP byte streams from it.
There is no pcap library on this machine's registries that we need for this:
a raw AF_PACKET socket and a page of header parsing do it (written by hand).
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
HUB_PORTS = "vh"          # hub-side veth names: vh<k>


def can_make_namespaces() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not Path("/sbin/ip").exists() and not Path("/usr/sbin/ip").exists() and not Path("/bin/ip").exists():
        return "the `ip` command (iproute2) is not installed"
    probe = f"dvsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Hosts:
    """Namespaces `names` (host name -> address 10.77.N.k/24) joined by a bridge
    in the hub namespace, where a capture sees every frame between them."""

    def __init__(self, names: list[str]):
        self.tag = f"dvs{os.getpid() % 100000}"
        self.hub = f"{self.tag}-hub"
        net = ipaddress.ip_network(f"10.77.{os.getpid() % 250}.0/24")
        self.names, self.addresses, self._made = list(names), {}, []
        try:
            self._add(self.hub)
            _ip("link", "add", "br0", "type", "bridge", ns=self.hub)
            _ip("link", "set", "br0", "up", ns=self.hub)
            _ip("link", "set", "lo", "up", ns=self.hub)
            for k, name in enumerate(self.names, start=1):
                ns, address = self.namespace(name), str(net[k])
                self._add(ns)
                _ip("link", "add", f"{HUB_PORTS}{k}", "netns", self.hub, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                _ip("link", "set", f"{HUB_PORTS}{k}", "master", "br0", ns=self.hub)
                _ip("link", "set", f"{HUB_PORTS}{k}", "up", ns=self.hub)
                _ip("addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0", ns=ns)
                _ip("link", "set", "eth0", "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
                self.addresses[name] = address
        except BaseException:
            self.close()
            raise

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def namespace(self, name: str) -> str:
        return self.hub if name == "hub" else f"{self.tag}-{name}"

    def command(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def close(self) -> None:
        for ns in reversed(self._made):          # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Capture:
    """A sniffer process in namespace `ns` (None: this one), recording to `path`."""

    def __init__(self, path: Path, ns: str | None = None):
        self.path, ready = Path(path), Path(f"{path}.ready")
        argv = [sys.executable, __file__, "sniff", str(self.path), str(ready)]
        self.proc = subprocess.Popen((["ip", "netns", "exec", ns] if ns else []) + argv)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the sniffer did not start (exit {self.proc.poll()})")
            time.sleep(0.05)

    def stop(self) -> dict:
        """Stop the sniffer; its statistics (frames kept, frames the kernel dropped)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        stats = Path(f"{self.path}.stats").read_text().split()
        return {"frames": int(stats[0]), "dropped": int(stats[1])}

    def frames(self) -> list[bytes]:
        data, out, at = self.path.read_bytes(), [], 0
        while at < len(data):
            (n,) = struct.unpack_from("<I", data, at)
            out.append(data[at + 4:at + 4 + n])
            at += 4 + n
        return out


def sniff(out: str, ready: str) -> None:
    """Record every frame this namespace receives, once (not again as it leaves)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 27)      # SO_RCVBUFFORCE (root): no drops under bursts
    s.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    kept = 0
    with open(out, "wb") as f:
        Path(ready).write_text("ready")
        while not stop:
            try:
                frame, addr = s.recvfrom(1 << 17)
            except (socket.timeout, InterruptedError):
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            f.write(struct.pack("<I", len(frame)) + frame)
            kept += 1
    _, dropped = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    Path(f"{out}.stats").write_text(f"{kept} {dropped}")


def tcp_streams(frames: list[bytes]) -> dict[tuple, bytes]:
    """(src, sport, dst, dport) -> the bytes that direction carried, in order."""
    segments: dict[tuple, dict[int, bytes]] = {}
    starts: dict[tuple, int] = {}
    for frame in frames:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
        if proto != 6:
            continue
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        flags, offset = tcp[13], (tcp[12] >> 4) * 4
        key = (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport)
        if flags & 0x02:                                   # SYN: data starts at seq + 1
            starts[key] = (seq + 1) & 0xFFFFFFFF
        payload = tcp[offset:]
        if payload:
            segments.setdefault(key, {})[seq] = payload
    streams = {}
    for key, parts in segments.items():
        base = starts.get(key, min(parts))
        buf = bytearray()
        for seq, payload in sorted(parts.items(), key=lambda kv: (kv[0] - base) & 0xFFFFFFFF):
            at = (seq - base) & 0xFFFFFFFF
            if at > len(buf):
                buf.extend(bytes(at - len(buf)))           # a hole: a frame the capture missed
            buf[at:at + len(payload)] = payload
        streams[key] = bytes(buf)
    return streams


if __name__ == "__main__" and sys.argv[1:2] == ["sniff"]:
    sniff(sys.argv[2], sys.argv[3])
