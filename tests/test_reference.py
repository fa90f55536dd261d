"""The dpkt-based reference decoder against the header walk, frame by frame, and on hand-built edge cases."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import numpy as np
import pytest
from flowlog.core.api import SourceContext
from flowlog.core.capfile import CaptureFile
from flowlog.core.decode import decode_batch
from flowlog.core.decode.reference import decode_batch_reference, decode_frame_reference
from flowlog.core.decode.walk import (
    MALFORMED,
    NON_IP,
    OK,
    R_IP4_IHL,
    R_IP4_SHORT,
    R_IP6_SHORT,
    R_LINK_SHORT,
    R_LINKTYPE,
    R_VERSION,
    decode_frame,
)
from flowlog.core.frames import FrameBatch
from flowlog.plugins.pcap import expand

BUNDLED = Path(__file__).resolve().parent / "data" / "captures"


# -- captures: walk == reference on every frame ------------------------------------------


def _captures(folder: Path) -> list[Path]:
    """The capture files in ``folder`` (by magic number), as the pcap source picks them."""
    return [Path(p) for p in expand(str(folder))]


def _compare(path: Path) -> tuple[int, dict, list, set]:
    """(frames, status counts, mismatches, link types) of walk vs reference over one capture file."""
    ctx = SourceContext()
    frames, statuses, mismatches = 0, {}, []
    for batch in CaptureFile(str(path), ctx).batches():
        linktypes = [link.linktype for link in ctx.links]
        buf = batch.buf.tobytes()
        for i in range(len(batch)):
            off, cap = int(batch.off[i]), int(batch.caplen[i])
            linktype, wirelen = linktypes[int(batch.link[i])], int(batch.wirelen[i])
            # the walk reads the frame inside the batch's buffer, as decode_batch runs it,
            # so a read past the frame's end would pick up the next frame's bytes
            walk = decode_frame(buf, off, off + cap, linktype, wirelen)
            ref = decode_frame_reference(buf[off:off + cap], linktype, wirelen)
            frames += 1
            statuses[walk[0]] = statuses.get(walk[0], 0) + 1
            same = walk == ref or (walk[0] == MALFORMED and ref[0] == MALFORMED)
            if not same:
                mismatches.append((path.name, frames, linktype, walk, ref))
    return frames, statuses, mismatches, {link.linktype for link in ctx.links}


def _report(mismatches: list) -> str:
    lines = [f"{len(mismatches)} frame(s) decode differently:"]
    for name, number, linktype, walk, ref in mismatches[:10]:
        lines.append(f"  {name} frame {number} (link type {linktype}):\n    walk      {walk}\n    reference {ref}")
    return "\n".join(lines)


@pytest.mark.parametrize("path", _captures(BUNDLED), ids=lambda p: p.name)
def test_bundled_capture_walk_equals_reference(path):
    frames, statuses, mismatches, _ = _compare(path)
    assert not mismatches, _report(mismatches)
    if path.stem.startswith("empty"):
        assert frames == 0
    else:
        assert frames > 0


def test_bundled_captures_cover_the_decoders():
    """The comparison above is only worth what it compares: many IP frames, over many link types."""
    total, ok, linktypes = 0, 0, set()
    for path in _captures(BUNDLED):
        frames, statuses, _, seen = _compare(path)
        linktypes.update(seen)
        total += frames
        ok += statuses.get(OK, 0)
    assert total >= 900 and ok >= 800
    assert {0, 1, 9, 101, 113, 228, 239, 276} <= linktypes


def test_corpus_walk_equals_reference(corpus):
    files = _captures(corpus)
    assert files, f"no capture files in {corpus}"
    mismatches, total = [], 0
    for path in files:
        frames, _, bad, _ = _compare(path)
        total += frames
        mismatches += bad
    assert total > 0
    assert not mismatches, _report(mismatches)


# -- hand-built frames -----------------------------------------------------------------

A4, B4 = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8:0:1::2"
MACS = bytes.fromhex("020000000002" "020000000001")


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def v4(sport, dport, proto, nbytes, flags=0, src=A4, dst=B4) -> tuple:
    return (OK, 0, 4, 0, int(ipaddress.ip_address(src)), 0, int(ipaddress.ip_address(dst)),
            sport, dport, proto, nbytes, flags)


def v6(sport, dport, proto, nbytes, flags=0, src=A6, dst=B6) -> tuple:
    s, d = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst))
    return (OK, 0, 6, s >> 64, s & (2**64 - 1), d >> 64, d & (2**64 - 1), sport, dport, proto, nbytes, flags)


def bad(reason: int) -> tuple:
    return (MALFORMED, reason, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


NON = (NON_IP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def ip4(proto, payload=b"", total=None, frag=0, ihl=5, src=A4, dst=B4) -> bytes:
    options = bytes(max(0, ihl - 5) * 4)
    if total is None:
        total = 20 + len(options) + len(payload)
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, frag, 64, proto, 0,
                       _addr(src), _addr(dst)) + options + payload


def ip6(nxt, payload=b"", plen=None, src=A6, dst=B6) -> bytes:
    if plen is None:
        plen = len(payload)
    return struct.pack(">IHBB16s16s", 0x60000000, plen, nxt, 64, _addr(src), _addr(dst)) + payload


def tcp(sport, dport, flags) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 65535, 0, 0)


def udp(sport, dport, data=b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def icmp(kind, code, ident, seq=1) -> bytes:
    return struct.pack(">BBHHH", kind, code, 0, ident, seq)


def eth(etype, payload) -> bytes:
    return MACS + struct.pack(">H", etype) + payload


def ext(nxt, body=b"\x01\x04\x00\x00\x00\x00") -> bytes:
    """A hop-by-hop/destination-options/routing header: next header, length, body (PadN by default)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nxt, (len(body) + 2) // 8 - 1]) + body


def frag6(nxt, offset, more) -> bytes:
    return struct.pack(">BBHI", nxt, 0, (offset << 3) | more, 0xCAFE)


def both(frame: bytes, linktype: int, wirelen: int | None = None) -> tuple[tuple, tuple]:
    wirelen = len(frame) if wirelen is None else wirelen
    # the walk gets the frame inside a larger buffer, as in a batch, with bytes after its end
    buf = b"\xee" * 3 + frame + b"\x45\x11\x22\x33" * 8
    return decode_frame(buf, 3, 3 + len(frame), linktype, wirelen), decode_frame_reference(frame, linktype, wirelen)


SEG = tcp(40000, 443, 0x18)

CASES = {
    # IPv6 protocol: only 0, 43, 44, 60 are skipped; AH and ESP are the protocol
    "ipv6 hop-by-hop then AH": (
        eth(0x86DD, ip6(0, ext(51) + bytes([89, 4]) + bytes(22))), 1, None, v6(0, 0, 51, 72)),
    "ipv6 ESP": (eth(0x86DD, ip6(50, bytes(24))), 1, None, v6(0, 0, 50, 64)),
    "ipv6 routing, dest-options, then UDP": (
        eth(0x86DD, ip6(43, ext(60, bytes([0, 0]) + bytes(4)) + ext(17) + udp(5353, 53, b"q"))), 1, None,
        v6(5353, 53, 17, 65)),
    # fragments: the first keeps its ports, the others have none, ICMP included
    "ipv6 first fragment": (
        eth(0x86DD, ip6(44, frag6(17, 0, 1) + udp(1000, 53, bytes(16)))), 1, None, v6(1000, 53, 17, 72)),
    "ipv6 non-first fragment": (
        eth(0x86DD, ip6(0, ext(44) + frag6(17, 185, 0) + udp(1000, 53))), 1, None, v6(0, 0, 17, 64)),
    "ipv4 non-first fragment of ICMP": (
        eth(0x0800, ip4(1, icmp(8, 0, 77), frag=0x2000 | 100)), 1, None, v4(0, 0, 1, 28)),
    "ipv4 first fragment": (eth(0x0800, ip4(17, udp(68, 67), frag=0x2000)), 1, None, v4(68, 67, 17, 28)),
    # bytes: jumbogram, total length 0, snaplen never enters them
    "ipv6 jumbogram cut by snaplen": (    # wire length with an FCS: the jumbo length decides, not the wire
        eth(0x86DD, ip6(0, ext(6, b"\xc2\x04" + struct.pack(">I", 70000)) + SEG, plen=0)), 1, 14 + 70040 + 4,
        v6(40000, 443, 6, 70040, 0x18)),
    "ipv6 payload length 0 without jumbo option": (
        eth(0x86DD, ip6(6, SEG, plen=0)), 1, 14 + 9000, v6(40000, 443, 6, 9000, 0x18)),
    "ipv4 total length 0 (BIG TCP) behind a VLAN tag": (
        eth(0x8100, struct.pack(">HH", 7, 0x0800) + ip4(6, SEG, total=0)), 1, 18 + 80052,
        v4(40000, 443, 6, 80052, 0x18)),
    "ipv4 total length 0 in Linux SLL": (
        bytes(14) + b"\x08\x00" + ip4(6, SEG, total=0), 113, 16 + 65000, v4(40000, 443, 6, 65000, 0x18)),
    # transport headers cut short by snaplen
    "tcp with 3 bytes captured": (eth(0x0800, ip4(6, SEG, total=1500)[:23]), 1, 1514, v4(0, 0, 6, 1500)),
    "tcp with 4 bytes captured": (eth(0x0800, ip4(6, SEG, total=1500)[:24]), 1, 1514, v4(40000, 443, 6, 1500)),
    "tcp with 14 bytes captured": (
        eth(0x0800, ip4(6, SEG, total=1500)[:34]), 1, 1514, v4(40000, 443, 6, 1500, 0x18)),
    "tcp with a data offset below 5": (
        eth(0x0800, ip4(6, SEG[:12] + b"\x30\x02" + SEG[14:])), 1, None, v4(40000, 443, 6, 40, 0x02)),
    "udp with 5 bytes captured over IPv6": (
        eth(0x86DD, ip6(17, udp(123, 123, bytes(40)))[:45]), 1, 14 + 88, v6(123, 123, 17, 88)),
    "sctp": (eth(0x0800, ip4(132, struct.pack(">HHII", 2905, 2906, 1, 0))), 1, None, v4(2905, 2906, 132, 32)),
    "dccp has no ports": (eth(0x0800, ip4(33, struct.pack(">HH", 5001, 5002) + bytes(12))), 1, None,
                          v4(0, 0, 33, 36)),
    # a transport header never extends into the link layer's padding
    "ipv4 udp shorter than its header, padded frame": (
        eth(0x0800, ip4(17, b"\x13\x88", total=22) + b"\x27\x10" + bytes(24)), 1, None, v4(0, 0, 17, 22)),
    "ipv6 icmp echo shorter than its identifier, padded frame": (
        eth(0x86DD, ip6(58, icmp(128, 0, 0)[:4]) + b"\x12\x34"), 1, None, v6(0, 32768, 58, 44)),
    # ICMP: identifier only for the listed types; dstport = type * 256 + code
    "icmp echo request": (eth(0x0800, ip4(1, icmp(8, 0, 0x4242))), 1, None, v4(0x4242, 2048, 1, 28)),
    "icmp timestamp request": (eth(0x0800, ip4(1, icmp(13, 0, 99) + bytes(12))), 1, None, v4(99, 3328, 1, 40)),
    "icmp extended echo reply": (eth(0x0800, ip4(1, icmp(43, 2, 7))), 1, None, v4(7, 43 * 256 + 2, 1, 28)),
    "icmp port unreachable quoting udp": (
        eth(0x0800, ip4(1, icmp(3, 3, 0xABCD) + ip4(17, udp(53, 5353), src=B4, dst=A4)[:28])), 1, None,
        v4(0, 771, 1, 56)),
    "icmp with only the type captured": (eth(0x0800, ip4(1, icmp(8, 0, 5), total=28)[:21]), 1, 1000,
                                         v4(0, 0, 1, 28)),
    "icmp echo with 2 bytes captured": (eth(0x0800, ip4(1, icmp(8, 0, 5), total=28)[:22]), 1, 1000,
                                        v4(0, 2048, 1, 28)),
    "icmpv6 echo request": (eth(0x86DD, ip6(58, icmp(128, 0, 0x0102))), 1, None, v6(0x0102, 32768, 58, 48)),
    "icmpv6 extended echo request": (eth(0x86DD, ip6(58, icmp(160, 0, 31))), 1, None, v6(31, 160 * 256, 58, 48)),
    "icmpv6 router advertisement": (eth(0x86DD, ip6(58, icmp(134, 0, 0x4000) + bytes(8))), 1, None,
                                    v6(0, 134 * 256, 58, 56)),
    # tunnels: the outer header decides
    "ipv6 in ipv4": (eth(0x0800, ip4(41, ip6(17, udp(1, 2)))), 1, None, v4(0, 0, 41, 68)),
    # link layers
    "nflog ipv4 after a prefix TLV": (
        bytes([2, 0, 0, 1]) + struct.pack("<HH", 8, 10) + b"pfx\x00"
        + struct.pack("<HH", 4 + 40, 9) + ip4(6, SEG), 239, None, v4(40000, 443, 6, 40, 0x18)),
    "nflog ipv6 payload TLV bounds the packet": (
        bytes([10, 0, 0, 0]) + struct.pack("<HH", 4 + 48, 9) + ip6(17, udp(9, 9))
        + struct.pack("<HH", 8, 11) + b"\x00\x00\x00\x01", 239, None, v6(9, 9, 17, 48)),
    "nflog without a payload TLV": (bytes([2, 0, 0, 0]) + struct.pack("<HH", 8, 10) + bytes(4), 239, None, NON),
    "bsd loopback AF 30, little-endian host": (struct.pack("<I", 30) + ip6(17, udp(7, 7)), 0, None,
                                               v6(7, 7, 17, 48)),
    "bsd loopback AF 30, big-endian host": (struct.pack(">I", 30) + ip6(17, udp(7, 7)), 0, None,
                                            v6(7, 7, 17, 48)),
    "bsd loopback AF 2, big-endian host": (struct.pack(">I", 2) + ip4(17, udp(7, 7)), 0, None, v4(7, 7, 17, 28)),
    "openbsd loop AF 24": (struct.pack(">I", 24) + ip6(6, SEG), 108, None, v6(40000, 443, 6, 60, 0x18)),
    "openbsd loop, family in the wrong byte order": (struct.pack("<I", 24) + ip6(6, SEG), 108, None, NON),
    "bsd loopback unknown family": (struct.pack("<I", 7) + ip4(6, SEG), 0, None, NON),
    "linux sll2 ipv6": (b"\x86\xdd" + bytes(18) + ip6(6, SEG), 276, None, v6(40000, 443, 6, 60, 0x18)),
    "raw ip 12, ipv6": (ip6(17, udp(1, 2)), 12, None, v6(1, 2, 17, 48)),
    "raw ip 14, ipv4": (ip4(17, udp(1, 2)), 14, None, v4(1, 2, 17, 28)),
    "raw ip 101, ipv4": (ip4(6, SEG), 101, None, v4(40000, 443, 6, 40, 0x18)),
    "raw ipv4 228": (ip4(6, SEG), 228, None, v4(40000, 443, 6, 40, 0x18)),
    "raw ipv6 229": (ip6(6, SEG), 229, None, v6(40000, 443, 6, 60, 0x18)),
    "cisco hdlc": (b"\x0f\x00\x08\x00" + ip4(17, udp(520, 520)), 104, None, v4(520, 520, 17, 28)),
    "pppoe link type, 2-byte PPP protocol": (
        struct.pack(">BBHH", 0x11, 0, 0x1234, 2 + 48) + b"\x00\x57" + ip6(17, udp(546, 547)), 51, None,
        v6(546, 547, 17, 48)),
    "ppp with address/control, compressed protocol": (b"\xff\x03\x21" + ip4(17, udp(1, 2)), 9, None,
                                                       v4(1, 2, 17, 28)),
    "ppp over mpls": (b"\x02\x81" + struct.pack(">I", (16 << 12) | 0x1FF) + ip4(17, udp(3, 4)),
                      50, None, v4(3, 4, 17, 28)),
    "three vlan tags": (
        eth(0x88A8, struct.pack(">HHHHHH", 10, 0x8100, 20, 0x8100, 30, 0x0800) + ip4(17, udp(11, 12))), 1, None,
        v4(11, 12, 17, 28)),
    "legacy QinQ tags 0x9100, 0x9200": (
        eth(0x9100, struct.pack(">HHHH", 10, 0x9200, 20, 0x86DD) + ip6(17, udp(11, 12))), 1, None,
        v6(11, 12, 17, 48)),
    "vlan, then mpls, then ipv4 with options": (
        eth(0x8100, struct.pack(">HHII", 5, 0x8847, 100 << 12, (200 << 12) | 0x1FF) + ip4(6, SEG, ihl=6)), 1, None,
        v4(40000, 443, 6, 44, 0x18)),
    "vlan, pppoe session, ipv4": (
        eth(0x8100, struct.pack(">HH", 9, 0x8864) + struct.pack(">BBHH", 0x11, 0, 1, 30) + b"\x00\x21"
            + ip4(17, udp(1701, 1701))), 1, None, v4(1701, 1701, 17, 28)),
    "llc/snap ipv4": (MACS + struct.pack(">H", 36) + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip4(17, udp(1, 2)), 1,
                      None, v4(1, 2, 17, 28)),
    "arp": (eth(0x0806, bytes(28)), 1, None, NON),
    # malformed
    "ethernet header cut": (eth(0x0800, b"")[:10], 1, None, bad(R_LINK_SHORT)),
    "vlan tag cut": (eth(0x8100, b"\x00\x05"), 1, None, bad(R_LINK_SHORT)),
    "mpls without a payload": (eth(0x8847, struct.pack(">I", 0x1FF)), 1, None, bad(R_LINK_SHORT)),
    "ipv4 header cut": (eth(0x0800, ip4(6, SEG)[:12]), 1, 100, bad(R_IP4_SHORT)),
    "ppp ipv4 header cut": (b"\xff\x03\x00\x21" + ip4(6, SEG)[:10], 9, 100, bad(R_IP4_SHORT)),
    "linux sll header cut": (bytes(14) + b"\x08", 113, None, bad(R_LINK_SHORT)),
    "ipv4 header length 16": (eth(0x0800, ip4(6, SEG, ihl=4)), 1, None, bad(R_IP4_IHL)),
    "ipv6 header cut": (eth(0x86DD, ip6(6, SEG)[:39]), 1, 100, bad(R_IP6_SHORT)),
    "ipv6 behind the ipv4 EtherType": (eth(0x0800, ip6(6, SEG)), 1, None, bad(R_VERSION)),
    "raw ipv4 link type with ipv6": (ip6(6, SEG), 228, None, bad(R_VERSION)),
    "nflog TLV length below 4": (bytes([2, 0, 0, 0]) + struct.pack("<HH", 2, 9) + ip4(6, SEG), 239, None,
                                 bad(R_LINK_SHORT)),
    "unknown link type": (ip4(6, SEG), 147, None, bad(R_LINKTYPE)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_built_frame(name):
    frame, linktype, wirelen, expected = CASES[name]
    walk, ref = both(frame, linktype, wirelen)
    assert ref == expected, "reference"
    assert walk == expected, "walk"


# -- link types only the reference knows, through decode_batch's fallback ----------------

DOT11_DATA = (b"\x08\x01\x00\x00" + b"\x11" * 6 + b"\x22" * 6 + b"\x33" * 6 + b"\x10\x00"
              + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip4(17, udp(5353, 53, b"query")))
DOT11_BEACON = b"\x80\x00\x00\x00" + b"\xff" * 6 + b"\x22" * 6 + b"\x22" * 6 + b"\x10\x00" + bytes(12)
RADIOTAP = struct.pack("<BBHIB", 0, 0, 9, 0x2, 0x10)   # flags field present: the frame ends with an FCS


def test_walk_declines_80211():
    assert decode_frame(DOT11_DATA, 0, len(DOT11_DATA), 105, len(DOT11_DATA)) == bad(R_LINKTYPE)


@pytest.mark.parametrize("frame, linktype, expected", [
    (DOT11_DATA, 105, v4(5353, 53, 17, 33)),
    (DOT11_BEACON, 105, NON),
    (DOT11_DATA[:20], 105, bad(R_LINK_SHORT)),
    (RADIOTAP + DOT11_DATA + b"\xde\xad\xbe\xef", 127, v4(5353, 53, 17, 33)),
])
def test_reference_only_link_types(frame, linktype, expected):
    assert decode_frame_reference(frame, linktype, len(frame)) == expected


def _rows(cols) -> list[tuple]:
    return [tuple(int(v) for v in row) for row in zip(cols.status, cols.reason, cols.family, cols.src_hi,
                                                      cols.src_lo, cols.dst_hi, cols.dst_lo, cols.sport,
                                                      cols.dport, cols.proto, cols.nbytes, cols.flags)]


def test_decode_batch_falls_back_to_the_reference():
    wifi = FrameBatch.from_frames([(1, 0, DOT11_DATA), (2, 0, DOT11_BEACON), (3, 0, DOT11_DATA, 1500)], link=0)
    odd = FrameBatch.from_frames([(4, 0, ip4(6, SEG))], link=1)         # link type neither decoder knows
    ether = FrameBatch.from_frames([(5, 0, eth(0x0800, ip4(6, SEG)))], link=2)
    batch = FrameBatch.concat([wifi, odd, ether])
    linktypes = np.array([105, 147, 1], np.int64)
    rows = _rows(decode_batch(batch, linktypes))
    assert rows == [
        v4(5353, 53, 17, 33),
        NON,
        v4(5353, 53, 17, 33),
        bad(R_LINKTYPE),
        v4(40000, 443, 6, 40, 0x18),
    ]
    assert _rows(decode_batch_reference(batch, linktypes)) == rows


def test_decode_batch_reference_matches_decode_batch_on_a_capture(data):
    ctx = SourceContext()
    capture = CaptureFile(str(data / "captures" / "pppoe-over-qinq.pcap"), ctx, batch_frames=40)
    linktypes = np.array([link.linktype for link in ctx.links], np.int64)
    batches = ok = 0
    for batch in capture.batches():
        walk, ref = _rows(decode_batch(batch, linktypes)), _rows(decode_batch_reference(batch, linktypes))
        assert walk == ref
        batches += 1
        ok += sum(1 for row in walk if row[0] == OK)
    assert batches == 3 and ok == 86
    empty = decode_batch_reference(FrameBatch.empty(), linktypes)
    assert len(empty.status) == 0 and empty.nbytes.dtype == np.int64
