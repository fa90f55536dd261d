"""Building frames and capture files from scratch: for tests, benchmarks and demonstrations.

Everything here is deterministic. Addresses are text (``"192.0.2.1"``, ``"2001:db8::1"``).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable

ETH_IPV4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
ETH_IPV6 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"


def transport(proto: int, sport: int = 0, dport: int = 0, payload: bytes = b"", flags: int = 0x18,
              icmp_type: int = 8, icmp_code: int = 0, ident: int = 0) -> bytes:
    """A transport header plus payload: TCP (6), UDP (17), SCTP (132), ICMP (1) or ICMPv6 (58)."""
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    if proto == 17:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if proto == 132:
        return struct.pack("!HHII", sport, dport, 0, 0) + payload
    if proto in (1, 58):
        return struct.pack("!BBHHH", icmp_type, icmp_code, 0, ident, 1) + payload
    return payload


def ipv4(src: str, dst: str, proto: int, body: bytes, total_length: int | None = None,
         frag_offset: int = 0, more_fragments: bool = False) -> bytes:
    length = 20 + len(body) if total_length is None else total_length
    frag = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + body


def ipv6(src: str, dst: str, proto: int, body: bytes, payload_length: int | None = None) -> bytes:
    plen = len(body) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 6 << 28, plen, proto, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + body


def ether(ip_packet: bytes, vlan: int | None = None) -> bytes:
    head = ETH_IPV6 if ip_packet[0] >> 4 == 6 else ETH_IPV4
    if vlan is not None:
        return head[:12] + struct.pack("!HH", 0x8100, vlan) + head[12:] + ip_packet
    return head + ip_packet


def packet(src: str, dst: str, proto: int = 17, sport: int = 0, dport: int = 0, size: int = 0, **kw) -> bytes:
    """An Ethernet frame carrying one IPv4 or IPv6 packet, padded to ``size`` bytes of IP payload."""
    body = transport(proto, sport, dport, **kw)
    if size > len(body):
        body += bytes(size - len(body))
    if ":" in src:
        return ether(ipv6(src, dst, proto, body))
    return ether(ipv4(src, dst, proto, body))


def write_pcap(path, frames: Iterable[tuple], linktype: int = 1, nanoseconds: bool = False,
               big_endian: bool = False, snaplen: int = 262144) -> int:
    """Write a classic pcap of ``(time, frame)`` or ``(time, frame, wirelen)`` items; returns the frame count.

    ``time`` is a float, or a ``(sec, frac)`` pair in the file's unit (micro- or nanoseconds).
    """
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    unit = 1_000_000_000 if nanoseconds else 1_000_000
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for item in frames:
            t, data = item[0], item[1]
            wire = item[2] if len(item) > 2 else len(data)
            if isinstance(t, tuple):
                sec, frac = t
            else:
                sec = int(t)
                frac = int(round((t - sec) * unit))
                if frac >= unit:
                    sec, frac = sec + 1, frac - unit
            data = data[:snaplen]
            f.write(struct.pack(e + "IIII", sec, frac, len(data), wire) + data)
            n += 1
    return n


def pcapng_block(btype: int, body: bytes, e: str = "<") -> bytes:
    body += bytes(-len(body) % 4)
    total = len(body) + 12
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def pcapng_option(code: int, value: bytes, e: str = "<") -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def write_pcapng(path, interfaces: list[tuple[str | None, int, int | None]], packets: Iterable[tuple],
                 big_endian: bool = False) -> int:
    """Write a pcapng file.

    ``interfaces``: ``(name or None, linktype, if_tsresol byte or None)``; ``packets``:
    ``(interface index, timestamp in that interface's units, frame)``.
    """
    e = ">" if big_endian else "<"
    out = [pcapng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)]
    for name, linktype, tsresol in interfaces:
        opts = b""
        if name is not None:
            opts += pcapng_option(2, name.encode(), e)
        if tsresol is not None:
            opts += pcapng_option(9, bytes([tsresol]), e)
        if opts:
            opts += pcapng_option(0, b"", e)
        out.append(pcapng_block(1, struct.pack(e + "HHI", linktype, 0, 262144) + opts, e))
    n = 0
    for iface, units, data in packets:
        body = struct.pack(e + "IIIII", iface, (units >> 32) & 0xFFFFFFFF, units & 0xFFFFFFFF, len(data), len(data))
        out.append(pcapng_block(6, body + data, e))
        n += 1
    with open(path, "wb") as f:
        f.write(b"".join(out))
    return n
