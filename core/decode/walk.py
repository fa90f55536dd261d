"""The header walk: from a frame's first byte to its flow-key fields, for every link type flowlog reads.

This is the decoder flowlog runs on every frame (SPEC.md, "The record"). It is written
as straight-line integer code over a byte buffer so that it reads the same whether run
by CPython or compiled. :mod:`flowlog.core.decode.reference` is the independent check,
built on dpkt; tests hold the two equal on every corpus frame.

Result of :func:`decode_frame`: a tuple
``(status, reason, family, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, nbytes, tcpflags)``.
IPv4 addresses are in ``*_lo`` with ``*_hi == 0``; IPv6 addresses are split in two
64-bit halves.
"""

from __future__ import annotations

# status
OK = 0
NON_IP = 1
MALFORMED = 2

# malformed reasons (index into REASONS)
R_NONE = 0
R_LINK_SHORT = 1
R_IP4_SHORT = 2
R_IP6_SHORT = 3
R_IP4_IHL = 4
R_VERSION = 5
R_LINKTYPE = 6
R_TIMESTAMP = 7
R_IP4_LEN = 8
#: not malformed: the packet counts (with the IP header's length), but the frame is inconsistent
R_LONGER = 9

REASONS = (
    "",
    "frame shorter than its link-layer header",
    "IPv4 header cut short",
    "IPv6 header cut short",
    "IPv4 header length below 20 bytes",
    "IP version does not match the link layer",
    "link type not supported",
    "unusable timestamp",
    "IPv4 total length below its header length",
    "IP length beyond the frame on the wire",
)

ICMP4_ID_TYPES = (0, 8, 13, 14, 15, 16, 17, 18, 42, 43)
ICMP6_ID_TYPES = (128, 129, 160, 161)

_NON_IP = (NON_IP, R_NONE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _bad(reason: int) -> tuple:
    return (MALFORMED, reason, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _be16(b, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


def _be32(b, p: int) -> int:
    return (b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]


def _be64(b, p: int) -> int:
    return (_be32(b, p) << 32) | _be32(b, p + 4)


def decode_frame(b, start: int, end: int, linktype: int, wirelen: int) -> tuple:
    """Decode the frame ``b[start:end]`` of the given link type (``wirelen``: its length on the wire)."""
    if linktype == 1:                                   # Ethernet
        if end - start < 14:
            return _bad(R_LINK_SHORT)
        return _ethertype(b, start + 14, end, _be16(b, start + 12), start, wirelen)
    if linktype == 12 or linktype == 14 or linktype == 101:   # raw IP
        return _ip_by_version(b, start, end, 0, start, wirelen)
    if linktype == 228:                                  # raw IPv4
        return _ip_by_version(b, start, end, 4, start, wirelen)
    if linktype == 229:                                  # raw IPv6
        return _ip_by_version(b, start, end, 6, start, wirelen)
    if linktype == 113:                                  # Linux cooked capture v1
        if end - start < 16:
            return _bad(R_LINK_SHORT)
        return _ethertype(b, start + 16, end, _be16(b, start + 14), start, wirelen)
    if linktype == 276:                                  # Linux cooked capture v2
        if end - start < 20:
            return _bad(R_LINK_SHORT)
        return _ethertype(b, start + 20, end, _be16(b, start), start, wirelen)
    if linktype == 0 or linktype == 108:                 # BSD loopback (host order), OpenBSD loop (network)
        if end - start < 4:
            return _bad(R_LINK_SHORT)
        if linktype == 108:
            af = _be32(b, start)
        else:
            af = b[start] | (b[start + 1] << 8) | (b[start + 2] << 16) | (b[start + 3] << 24)
            if af > 0xFFFF:                              # written by a big-endian host
                af = _be32(b, start)
        if af == 2:
            return _ip_by_version(b, start + 4, end, 4, start, wirelen)
        if af == 24 or af == 28 or af == 30:
            return _ip_by_version(b, start + 4, end, 6, start, wirelen)
        return _NON_IP
    if linktype == 9 or linktype == 50:                  # PPP, PPP in HDLC framing
        return _ppp(b, start, end, start, wirelen)
    if linktype == 51:                                   # PPPoE
        if end - start < 6:
            return _bad(R_LINK_SHORT)
        return _ppp(b, start + 6, end, start, wirelen)
    if linktype == 104:                                  # Cisco HDLC
        if end - start < 4:
            return _bad(R_LINK_SHORT)
        return _ethertype(b, start + 4, end, _be16(b, start + 2), start, wirelen)
    if linktype == 239:                                  # NFLOG
        return _nflog(b, start, end, wirelen)
    return _bad(R_LINKTYPE)


def _ethertype(b, p: int, end: int, etype: int, frame_start: int, wirelen: int) -> tuple:
    """Follow an EtherType through VLAN tags, MPLS, PPPoE and LLC/SNAP to the IP header."""
    while True:
        if etype == 0x0800:
            return _ip_by_version(b, p, end, 4, frame_start, wirelen)
        if etype == 0x86DD:
            return _ip_by_version(b, p, end, 6, frame_start, wirelen)
        if etype == 0x8100 or etype == 0x88A8 or etype == 0x9100 or etype == 0x9200:
            if end - p < 4:
                return _bad(R_LINK_SHORT)
            etype = _be16(b, p + 2)
            p += 4
            continue
        if etype == 0x8847 or etype == 0x8848:           # MPLS: labels until bottom of stack
            while True:
                if end - p < 4:
                    return _bad(R_LINK_SHORT)
                bottom = b[p + 2] & 1
                p += 4
                if bottom:
                    break
            if end - p < 1:
                return _bad(R_LINK_SHORT)
            v = b[p] >> 4
            if v == 4 or v == 6:
                return _ip_by_version(b, p, end, v, frame_start, wirelen)
            return _NON_IP
        if etype == 0x8864:                              # PPPoE session
            if end - p < 6:
                return _bad(R_LINK_SHORT)
            return _ppp(b, p + 6, end, frame_start, wirelen)
        if etype <= 1500:                                # 802.3 length: LLC, maybe SNAP
            if end - p >= 8 and b[p] == 0xAA and b[p + 1] == 0xAA and b[p + 2] == 0x03:
                etype = _be16(b, p + 6)
                p += 8
                continue
            return _NON_IP
        return _NON_IP


def _ppp(b, p: int, end: int, frame_start: int, wirelen: int) -> tuple:
    if end - p >= 2 and b[p] == 0xFF and b[p + 1] == 0x03:   # address and control fields
        p += 2
    if end - p < 1:
        return _bad(R_LINK_SHORT)
    if b[p] & 1:                                          # protocol field compressed to one byte
        proto = b[p]
        p += 1
    else:
        if end - p < 2:
            return _bad(R_LINK_SHORT)
        proto = _be16(b, p)
        p += 2
    if proto == 0x21:
        return _ip_by_version(b, p, end, 4, frame_start, wirelen)
    if proto == 0x57:
        return _ip_by_version(b, p, end, 6, frame_start, wirelen)
    if proto == 0x281 or proto == 0x283:                  # MPLS over PPP
        return _ethertype(b, p, end, 0x8847, frame_start, wirelen)
    return _NON_IP


def _nflog(b, start: int, end: int, wirelen: int) -> tuple:
    """NFLOG: a 4-byte header, then TLVs (host byte order); type 9 holds the packet."""
    if end - start < 4:
        return _bad(R_LINK_SHORT)
    family = b[start]
    p = start + 4
    while end - p >= 4:
        length = b[p] | (b[p + 1] << 8)
        tlv_type = b[p + 2] | (b[p + 3] << 8)
        if length < 4:
            return _bad(R_LINK_SHORT)
        if tlv_type & 0x7FFF == 9:
            version = 4 if family == 2 else 6 if family == 10 else 0
            # the packet may be cut by the capture; its own length is in its header
            return _ip_by_version(b, p + 4, min(end, p + length), version, start, wirelen)
        p += (length + 3) & ~3
    return _NON_IP


def _ip_by_version(b, p: int, end: int, expect: int, frame_start: int, wirelen: int) -> tuple:
    if end - p < 1:
        return _bad(R_IP4_SHORT if expect != 6 else R_IP6_SHORT)
    v = b[p] >> 4
    if expect and v != expect:
        return _bad(R_VERSION)
    # what the IP packet measures on the wire, for an IPv4 total length of 0 (TSO, BIG TCP)
    onwire = wirelen - (p - frame_start)
    if v == 4:
        return _ipv4(b, p, end, onwire)
    if v == 6:
        return _ipv6(b, p, end, onwire)
    return _bad(R_VERSION)


def _ipv4(b, p: int, end: int, onwire: int) -> tuple:
    if end - p < 20:
        return _bad(R_IP4_SHORT)
    ihl = (b[p] & 0x0F) * 4
    if ihl < 20:
        return _bad(R_IP4_IHL)
    total = _be16(b, p + 2)
    if total and total < ihl:
        return _bad(R_IP4_LEN)
    nbytes = total if total else onwire
    nonfirst = (_be16(b, p + 6) & 0x1FFF) != 0
    proto = b[p + 9]
    src = _be32(b, p + 12)
    dst = _be32(b, p + 16)
    sport, dport, flags = 0, 0, 0
    if not nonfirst:
        # the transport header ends with the IP packet, never in the link layer's padding
        tend = min(end, p + total) if total else end
        sport, dport, flags = _transport(b, p + ihl, tend, proto, 1)
    return (OK, R_LONGER if nbytes > onwire else R_NONE, 4, 0, src, 0, dst, sport, dport, proto, nbytes, flags)


def _ipv6(b, p: int, end: int, onwire: int) -> tuple:
    if end - p < 40:
        return _bad(R_IP6_SHORT)
    plen = _be16(b, p + 4)
    if plen:
        end = min(end, p + 40 + plen)                   # the packet ends there, padding may follow
    nh = b[p + 6]
    src_hi, src_lo = _be64(b, p + 8), _be64(b, p + 16)
    dst_hi, dst_lo = _be64(b, p + 24), _be64(b, p + 32)
    q = p + 40
    nonfirst = False
    jumbo = 0
    complete = True
    while nh == 0 or nh == 43 or nh == 44 or nh == 60:
        if nh == 44:
            if end - q < 8:
                complete = False
                break
            if _be16(b, q + 2) & 0xFFF8:
                nonfirst = True
            nxt, hlen = b[q], 8
        else:
            if end - q < 2:
                complete = False
                break
            nxt, hlen = b[q], (b[q + 1] + 1) * 8
            if nh == 0 and plen == 0:
                jumbo = _jumbo(b, q + 2, min(end, q + hlen))
        if end - q < hlen:
            # the header is cut by the capture: its next-header value is still known
            nh = nxt
            complete = False
            break
        nh = nxt
        q += hlen
    if plen:
        nbytes = plen + 40
    elif jumbo:
        nbytes = jumbo + 40
    else:
        nbytes = onwire
    sport, dport, flags = 0, 0, 0
    if complete and not nonfirst:
        sport, dport, flags = _transport(b, q, end, nh, 58)
    return (OK, R_LONGER if nbytes > onwire else R_NONE, 6, src_hi, src_lo, dst_hi, dst_lo, sport, dport, nh,
            nbytes, flags)


def _jumbo(b, p: int, end: int) -> int:
    """The Jumbo Payload option's length in a hop-by-hop header's options, else 0."""
    while p < end:
        opt = b[p]
        if opt == 0:                 # Pad1
            p += 1
            continue
        if end - p < 2:
            return 0
        olen = b[p + 1]
        if opt == 0xC2 and olen == 4 and end - p >= 6:
            return _be32(b, p + 2)
        p += 2 + olen
    return 0


def _transport(b, t: int, end: int, proto: int, icmp_proto: int) -> tuple:
    """(sport, dport, tcp flags) from the transport header at ``t``; 0 for what the capture cut off."""
    if proto == 6 or proto == 17 or proto == 132:
        if end - t < 4:
            return 0, 0, 0
        flags = b[t + 13] if proto == 6 and end - t >= 14 else 0
        return _be16(b, t), _be16(b, t + 2), flags
    if proto == icmp_proto:
        if end - t < 2:
            return 0, 0, 0
        icmp_type = b[t]
        ident = _be16(b, t + 4) if end - t >= 6 and _has_identifier(icmp_proto, icmp_type) else 0
        return ident, icmp_type * 256 + b[t + 1], 0
    return 0, 0, 0


def _has_identifier(icmp_proto: int, icmp_type: int) -> bool:
    """Whether an ICMP (1) or ICMPv6 (58) message of this type carries an identifier (SPEC.md)."""
    if icmp_proto == 1:
        return (icmp_type == 0 or icmp_type == 8 or 13 <= icmp_type <= 18 or icmp_type == 42
                or icmp_type == 43)
    return icmp_type == 128 or icmp_type == 129 or icmp_type == 160 or icmp_type == 161
