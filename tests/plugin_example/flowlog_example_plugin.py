"""An example third-party flowlog plugin (flowlog's own tests install it into a venv).

* ``tsv:/path/out.tsv``: a sink writing each record's 14 version-2 fields, tab-separated;
* ``synth:``: a source generating a few fixed Ethernet/IPv4/UDP frames (three DNS
  queries and their answers), to try a pipeline without a capture file.
"""

from __future__ import annotations

import struct

from flowlog.core.api import Sink, Source
from flowlog.core.errors import ConfigError, SinkError
from flowlog.core.frames import FrameBatch
from flowlog.core.hookspecs import hookimpl


@hookimpl
def register_sinks(register):
    register(TsvSink)


@hookimpl
def register_sources(register):
    register(SynthSource)


class TsvSink(Sink):
    """Records as tab-separated lines in a file."""

    scheme = "tsv"
    description = "records as tab-separated values in a file (tsv:/path/out.tsv)"

    def __init__(self, uri, options):
        super().__init__(uri, options)
        self.path = uri.path
        if not self.path:
            raise ConfigError(f"{uri}: give a file, e.g. tsv:/var/log/flows.tsv")

    def open(self) -> None:
        try:
            self.file = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise SinkError(f"{self.path}: {e.strerror}") from None

    def write(self, records) -> None:
        for r in records:
            self.file.write("\t".join("-" if v is None else str(v) for v in r.values()) + "\n")

    def close(self) -> None:
        self.file.close()


class SynthSource(Source):
    """A few fixed Ethernet/IPv4/UDP frames."""

    scheme = "synth"
    description = "a few generated Ethernet/IPv4/UDP frames (DNS queries and answers)"

    CLIENT = (bytes([10, 0, 0, 1]), 40000)
    SERVER = (bytes([10, 0, 0, 2]), 53)
    START = 1_700_000_000

    def open(self, ctx) -> None:
        super().open(ctx)
        self.link = ctx.add_link("synth0", 1)       # link type 1: Ethernet

    def batches(self):
        frames = []
        for i in range(3):
            frames.append((self.START + i, 0, _udp_frame(self.CLIENT, self.SERVER, b"q" * 20)))
            frames.append((self.START + i, 500_000_000, _udp_frame(self.SERVER, self.CLIENT, b"a" * 60)))
        yield FrameBatch.from_frames(frames, link=self.link)


def _udp_frame(src, dst, payload: bytes) -> bytes:
    (saddr, sport), (daddr, dport) = src, dst
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ether = b"\x02\x00\x00\x00\x00" + daddr[3:] + b"\x02\x00\x00\x00\x00" + saddr[3:] + b"\x08\x00"
    return ether + ip + udp


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
