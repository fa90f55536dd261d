"""The reference decoder: the same flow-key fields as :mod:`flowlog.core.decode.walk`, built on dpkt.

It is a second, independent implementation of SPEC.md's rules ("The record", fields 4–10):
the test oracle that holds the header walk to them frame by frame, and the fallback
:func:`flowlog.core.decode.decode_batch` uses for link types the walk does not know.
Only the result layout and the status/reason constants come from the walk; the parsing
does not. dpkt parses the headers it parses correctly for these rules (Ethernet with
802.1Q/QinQ tags and MPLS labels, Linux SLL/SLL2, PPPoE, PPP, the IPv4/IPv6 fixed headers and
IPv6 extension headers, TCP/UDP/SCTP/ICMP/ICMPv6); the small code here covers what dpkt lacks
or gets wrong for them:

* link types dpkt has no class for: NFLOG TLVs, Cisco HDLC, raw IP (12/14/101/228/229),
  PPPoE as a link type (51), and the BSD loopback address family in either byte order;
* more VLAN tags than dpkt's two, and what follows an MPLS label stack (dpkt guesses
  IPv4 only for a 20-byte header and Ethernet pseudowire otherwise);
* the IPv6 protocol rule: only hop-by-hop, routing, fragment and destination options are
  skipped (dpkt also skips AH and ESP); non-first fragments have no ports; jumbograms;
* an IPv4 total length of 0 (the IP packet's length on the wire), and transport headers cut
  short by the capture (ports from their first 4 bytes when present, else 0), which dpkt
  refuses whole;
* the ICMP identifier, only for the message types SPEC.md lists.

Link types dpkt can take to IP that the walk has no code for (802.11 with LLC/SNAP,
radiotap) are decoded too; any other link type is ``MALFORMED``/``R_LINKTYPE``.
"""

from __future__ import annotations

import struct
import sys
from typing import NamedTuple

import dpkt
import numpy as np
from dpkt import ethernet, icmp, icmp6, ieee80211, ip, ip6, llc, loopback, ppp, pppoe, radiotap, sctp, sll, sll2
from dpkt import tcp, udp

from ..frames import FrameBatch
from . import _DTYPES, Columns
from .walk import (
    MALFORMED, NON_IP, OK, R_IP4_IHL, R_IP4_SHORT, R_IP6_SHORT, R_LINK_SHORT, R_LINKTYPE, R_NONE, R_TIMESTAMP,
    R_VERSION, R_IP4_LEN, R_LONGER,
)

__all__ = ["decode_frame_reference", "decode_batch_reference"]

# SPEC.md, fields 6-8 (kept apart from the walk's copies on purpose: a typo in either shows up)
_ICMP4_WITH_ID = frozenset({0, 8, 13, 14, 15, 16, 17, 18, 42, 43})
_ICMP6_WITH_ID = frozenset({128, 129, 160, 161})
_PORT_HEADERS = {6: tcp.TCP, 17: udp.UDP, 132: sctp.SCTP}
_IP6_SKIPPED = {
    0: ip6.IP6HopOptsHeader,
    43: ip6.IP6RoutingHeader,
    44: ip6.IP6FragmentHeader,
    60: ip6.IP6DstOptsHeader,
}
_JUMBO_OPTION = 0xC2

_VLAN_TYPES = frozenset({ethernet.ETH_TYPE_8021Q, ethernet.ETH_TYPE_8021AD,
                         ethernet.ETH_TYPE_QINQ1, ethernet.ETH_TYPE_QINQ2})
_MPLS_TYPES = frozenset({ethernet.ETH_TYPE_MPLS, ethernet.ETH_TYPE_MPLS_MCAST})
_PPP_MPLS = frozenset({0x0281, 0x0283})
_NFLOG_PAYLOAD = 9
_NFLOG_FAMILY = {2: 4, 10: 6}                 # AF_INET, AF_INET6 (Linux values)
_LOOPBACK_FAMILY = {2: 4, 24: 6, 28: 6, 30: 6}  # AF_INET; AF_INET6 of NetBSD/OpenBSD, FreeBSD, Darwin

_NON_IP = (NON_IP, R_NONE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _bad(reason: int) -> tuple:
    return (MALFORMED, reason, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class _Short(Exception):
    """A link-layer header is cut short."""


class _IPAt(NamedTuple):
    """Where the link layer put the IP header: ``frame[off:end]``, of version ``expect`` (0: either)."""

    expect: int
    off: int
    end: int


def _header_only(cls):
    """``cls`` parsing its own fixed header and nothing behind it (dpkt's classes parse eagerly)."""
    return type("_" + cls.__name__ + "Header", (cls,), {"unpack": dpkt.Packet.unpack})


_LoopbackHeader = _header_only(loopback.Loopback)
_Dot11Header = _header_only(ieee80211.IEEE80211)
_RadiotapHeader = _header_only(radiotap.Radiotap)
_IP6Header = _header_only(ip6.IP6)


class _IP4Header(ip.IP):
    """dpkt's IPv4 header, without the payload dispatch (the header length is checked as dpkt does)."""

    def unpack(self, buf):
        dpkt.Packet.unpack(self, buf)
        if self.hl < 5:
            raise dpkt.UnpackError("invalid header length")


class _Ethernet(ethernet.Ethernet):
    """dpkt's Ethernet, unpacked once.

    ``dpkt.ethernet.Ethernet.__init__`` unpacks a payload it left as bytes a second time, as if
    it followed the last tag: a third VLAN tag, or MPLS behind a tag, then replaces the tags
    it found first, and the header length can no longer be told from them.
    """

    def __init__(self, buf: bytes):
        self._next_type = None
        dpkt.Packet.__init__(self, buf)


def _parse(cls, buf: bytes):
    """``cls(buf)``, a link-layer header cut short raising :class:`_Short`."""
    try:
        return cls(buf)
    except dpkt.NeedData:
        raise _Short from None


# -- public interface ------------------------------------------------------------------


def decode_frame_reference(frame: bytes, linktype: int, wirelen: int) -> tuple:
    """Decode one frame; the same 12-tuple as :func:`flowlog.core.decode.walk.decode_frame`."""
    frame = bytes(frame)
    try:
        at = _link(frame, linktype)
    except _Short:
        return _bad(R_LINK_SHORT)
    if not isinstance(at, _IPAt):
        return at
    return _ip_packet(frame, at, wirelen - at.off)


def decode_batch_reference(batch: FrameBatch, linktypes: np.ndarray) -> Columns:
    """:func:`flowlog.core.decode.decode_batch`, with every frame decoded by the reference decoder."""
    n = len(batch)
    if not n:
        return Columns(*(np.zeros(0, d) for d in _DTYPES))
    lts = linktypes[batch.link].tolist()
    bad_ts = (batch.sec < 0).tolist()
    wire = batch.wirelen.tolist()
    rows = []
    for i in range(n):
        if bad_ts[i]:
            rows.append(_bad(R_TIMESTAMP))
        else:
            rows.append(decode_frame_reference(batch.frame(i), lts[i], wire[i]))
    return Columns(*(np.array(c, dtype=d) for c, d in zip(zip(*rows), _DTYPES)))


# -- link layers -----------------------------------------------------------------------


def _link(frame: bytes, linktype: int):
    """The IP header's place in the frame (:class:`_IPAt`), or a final result tuple."""
    end = len(frame)
    if linktype == 1:
        return _ethernet(frame)
    if linktype in (12, 14, 101):
        return _IPAt(0, 0, end)
    if linktype == 228:
        return _IPAt(4, 0, end)
    if linktype == 229:
        return _IPAt(6, 0, end)
    if linktype == 113:
        head = _parse(sll.SLL, frame[:sll.SLL.__hdr_len__])
        return _ethertype(frame, sll.SLL.__hdr_len__, head.ethtype)
    if linktype == 276:
        head = _parse(sll2.SLL2, frame[:sll2.SLL2.__hdr_len__])
        return _ethertype(frame, sll2.SLL2.__hdr_len__, head.ethtype)
    if linktype in (0, 108):
        return _loopback(frame, linktype)
    if linktype in (9, 50):
        return _ppp(frame, 0)
    if linktype == 51:
        _parse(pppoe.PPPoE, frame[:pppoe.PPPoE.__hdr_len__])
        return _ppp(frame, pppoe.PPPoE.__hdr_len__)
    if linktype == 104:
        # Cisco HDLC: address, control, then an EtherType
        if len(frame) < 4:
            raise _Short
        return _ethertype(frame, 4, int.from_bytes(frame[2:4], "big"))
    if linktype == 239:
        return _nflog(frame)
    if linktype == 105:
        return _dot11(frame, 0, end)
    if linktype == 127:
        return _radiotap(frame)
    return _bad(R_LINKTYPE)


def _ethernet(frame: bytes):
    if len(frame) < ethernet.ETH_HDR_LEN:
        raise _Short
    etype = int.from_bytes(frame[12:14], "big")
    if etype <= 1500:
        # 802.3: only LLC/SNAP leads to IP here (dpkt would also take ISL, Novell raw, LLC SAP 6)
        return _ethertype(frame, ethernet.ETH_HDR_LEN, etype)
    try:
        eth = _Ethernet(frame)
    except Exception:   # a tag cut short, or a payload dpkt chokes on: step through from the EtherType
        return _ethertype(frame, ethernet.ETH_HDR_LEN, etype)
    tags = getattr(eth, "vlan_tags", [])
    labels = getattr(eth, "mpls_labels", [])
    off = ethernet.ETH_HDR_LEN + sum(t.__hdr_len__ for t in tags) + sum(m.__hdr_len__ for m in labels)
    if labels:
        return _after_mpls(frame, off)
    return _ethertype(frame, off, tags[-1].type if tags else eth.type)


def _ethertype(frame: bytes, off: int, etype: int):
    """Follow an EtherType (further VLAN tags, MPLS, PPPoE, LLC/SNAP) to the IP header."""
    while True:
        if etype == ethernet.ETH_TYPE_IP:
            return _IPAt(4, off, len(frame))
        if etype == ethernet.ETH_TYPE_IP6:
            return _IPAt(6, off, len(frame))
        if etype in _VLAN_TYPES:
            tag = _parse(ethernet.VLANtag8021Q, frame[off:off + 4])
            off += tag.__hdr_len__
            etype = tag.type
            continue
        if etype in _MPLS_TYPES:
            while True:
                label = _parse(ethernet.MPLSlabel, frame[off:off + 4])
                off += label.__hdr_len__
                if label.s:
                    return _after_mpls(frame, off)
        if etype == ethernet.ETH_TYPE_PPPoE:
            _parse(pppoe.PPPoE, frame[off:off + pppoe.PPPoE.__hdr_len__])
            return _ppp(frame, off + pppoe.PPPoE.__hdr_len__)
        if etype <= 1500:
            # an 802.3 length: IP only behind LLC/SNAP (AA AA 03, OUI, EtherType)
            try:
                head = llc.LLC(frame[off:off + 8])
            except (dpkt.UnpackError, struct.error):
                return _NON_IP
            if not (head.is_snap and head.ctl == 3):
                return _NON_IP
            off += 8
            etype = head.type
            continue
        return _NON_IP


def _after_mpls(frame: bytes, off: int):
    """What follows the bottom MPLS label: IP told by its version nibble, else not IP."""
    if off >= len(frame):
        raise _Short
    version = frame[off] >> 4
    if version in (4, 6):
        return _IPAt(version, off, len(frame))
    return _NON_IP


def _ppp(frame: bytes, off: int):
    """PPP, with or without the address and control bytes, protocol field 1 or 2 bytes long."""
    with_ac = frame[off:off + 2] == b"\xff\x03"
    cls = ppp.PPP if with_ac else pppoe.PPP    # dpkt's PPPoE flavour has no address/control bytes
    # at most the longest header, so that dpkt's eager payload parsing has nothing to chew on
    buf = frame[off:off + (4 if with_ac else 2)]
    head = _parse(cls, buf)
    off += len(buf) - len(head.data)
    if head.p == ppp.PPP_IP:
        return _IPAt(4, off, len(frame))
    if head.p == ppp.PPP_IP6:
        return _IPAt(6, off, len(frame))
    if head.p in _PPP_MPLS:
        return _ethertype(frame, off, ethernet.ETH_TYPE_MPLS)
    return _NON_IP


def _loopback(frame: bytes, linktype: int):
    head = _parse(_LoopbackHeader, frame[:4])     # dpkt reads the family in this machine's byte order
    if linktype == 108:
        family = int.from_bytes(frame[:4], "big")     # OpenBSD loop: network byte order
    else:
        # the capturing host's byte order: read little-endian, a family above 16 bits
        # was written by a big-endian host
        family = head.family if sys.byteorder == "little" else _bswap32(head.family)
        if family > 0xFFFF:
            family = _bswap32(family)
    version = _LOOPBACK_FAMILY.get(family)
    if version is None:
        return _NON_IP
    return _IPAt(version, 4, len(frame))


def _bswap32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def _nflog(frame: bytes):
    """NFLOG: family, version, resource id, then TLVs in host (little-endian) order; type 9 is the packet."""
    if len(frame) < 4:
        raise _Short
    version = _NFLOG_FAMILY.get(frame[0], 0)
    off = 4
    while len(frame) - off >= 4:
        length, tlv_type = struct.unpack_from("<HH", frame, off)
        if length < 4:
            raise _Short
        if tlv_type & 0x7FFF == _NFLOG_PAYLOAD:
            return _IPAt(version, off + 4, min(len(frame), off + length))
        off += (length + 3) & ~3
    return _NON_IP


def _dot11(frame: bytes, off: int, end: int):
    """802.11: a data frame's payload, when it is LLC/SNAP, leads to IP."""
    buf = frame[off:end]
    head = _parse(_Dot11Header, buf)
    if head.type != ieee80211.DATA_TYPE or head.wep:
        return _NON_IP
    try:
        dot11 = ieee80211.IEEE80211(buf)
    except dpkt.NeedData:
        raise _Short from None
    except Exception:    # a subtype dpkt has no decoder for
        return _NON_IP
    data_frame = getattr(dot11, "data_frame", None)
    if data_frame is None or data_frame.fragment_number or not isinstance(dot11.data, bytes):
        return _NON_IP
    return _ethertype(frame[:end], end - len(dot11.data), 0)    # 0: an 802.3 length, i.e. LLC


def _radiotap(frame: bytes):
    head = _parse(_RadiotapHeader, frame)
    if head.length < head.__hdr_len__ + 4 or len(frame) < head.length:
        raise _Short
    try:
        rt = radiotap.Radiotap(frame[:head.length])
    except (dpkt.UnpackError, struct.error, IndexError):
        raise _Short from None
    fcs = 4 if rt.flags_present and rt.flags.fcs else 0
    return _dot11(frame, head.length, len(frame) - fcs)


# -- IP --------------------------------------------------------------------------------


def _ip_packet(frame: bytes, at: _IPAt, onwire: int) -> tuple:
    buf = frame[at.off:at.end]
    if not buf:
        return _bad(R_IP6_SHORT if at.expect == 6 else R_IP4_SHORT)
    version = buf[0] >> 4
    if (at.expect and version != at.expect) or version not in (4, 6):
        return _bad(R_VERSION)
    return _ipv4(buf, onwire) if version == 4 else _ipv6(buf, onwire)


def _ipv4(buf: bytes, onwire: int) -> tuple:
    try:
        h = _IP4Header(buf)
    except dpkt.NeedData:
        return _bad(R_IP4_SHORT)
    except dpkt.UnpackError:
        return _bad(R_IP4_IHL)
    if h.len and h.len < h.hl * 4:
        return _bad(R_IP4_LEN)
    sport = dport = flags = 0
    if h.offset == 0:
        # the transport header ends where the IP packet ends (not in Ethernet padding), or the capture
        end = min(len(buf), h.len) if h.len else len(buf)
        sport, dport, flags = _transport(buf[h.hl * 4:end], h.p, 1)
    nbytes = h.len or onwire
    return (OK, R_LONGER if nbytes > onwire else R_NONE, 4, 0, int.from_bytes(h.src, "big"), 0,
            int.from_bytes(h.dst, "big"), sport, dport, h.p, nbytes, flags)


def _ipv6(buf: bytes, onwire: int) -> tuple:
    try:
        h = _IP6Header(buf)
    except dpkt.NeedData:
        return _bad(R_IP6_SHORT)
    hl = h.__hdr_len__
    payload = buf[hl:hl + h.plen] if h.plen else buf[hl:]
    nxt = h.nxt
    pos = 0
    jumbo = 0
    nonfirst = False
    complete = True
    while nxt in _IP6_SKIPPED:
        rest = payload[pos:]
        try:
            ext = _IP6_SKIPPED[nxt](rest)
        except dpkt.NeedData:
            ext = None
        if ext is None or len(rest) < ext.length:
            # cut short by the capture: its next-header value counts when it was captured
            complete = False
            if nxt == 0 and h.plen == 0:
                jumbo = _jumbo_raw(rest)
            if ext is not None:
                nxt = ext.nxt
            elif nxt != 44 and len(rest) >= 2:
                nxt = rest[0]
            break
        if nxt == 44 and ext.frag_off:
            nonfirst = True
        if nxt == 0 and h.plen == 0:
            jumbo = _jumbo(ext.options)
        nxt = ext.nxt
        pos += ext.length
    if h.plen:
        nbytes = h.plen + 40
    elif jumbo:
        nbytes = jumbo + 40
    else:
        nbytes = onwire
    sport = dport = flags = 0
    if complete and not nonfirst:
        sport, dport, flags = _transport(payload[pos:], nxt, 58)
    src, dst = h.src, h.dst
    return (OK, R_LONGER if nbytes > onwire else R_NONE, 6, int.from_bytes(src[:8], "big"), int.from_bytes(src[8:], "big"),
            int.from_bytes(dst[:8], "big"), int.from_bytes(dst[8:], "big"), sport, dport, nxt, nbytes, flags)


def _jumbo(options: list) -> int:
    for opt in options:
        if opt["type"] == _JUMBO_OPTION and opt["opt_length"] == 4 and len(opt["data"]) == 4:
            return int.from_bytes(opt["data"], "big")
    return 0


def _jumbo_raw(header: bytes) -> int:
    """The Jumbo Payload option of a hop-by-hop header the capture cut short, if it was captured."""
    if len(header) < 2:
        return 0
    options = header[2:(header[1] + 1) * 8]
    i = 0
    while i < len(options):
        if options[i] == 0:
            i += 1
            continue
        if i + 1 >= len(options):
            break
        kind, size = options[i], options[i + 1]
        if kind == _JUMBO_OPTION and size == 4 and i + 6 <= len(options):
            return int.from_bytes(options[i + 2:i + 6], "big")
        i += 2 + size
    return 0


def _transport(t: bytes, proto: int, icmp_proto: int) -> tuple:
    """(sport, dport, tcp flags) from transport header bytes ``t``; 0 for what is missing."""
    cls = _PORT_HEADERS.get(proto)
    if cls is not None:
        try:
            h = cls(t[:cls.__hdr_len__])
        except dpkt.UnpackError:      # cut short, or a TCP data offset dpkt refuses: the raw bytes
            if len(t) < 4:
                return 0, 0, 0
            sport, dport = struct.unpack_from(">HH", t)
            return sport, dport, t[13] if proto == 6 and len(t) >= 14 else 0
        return h.sport, h.dport, h.flags & 0xFF if proto == 6 else 0
    if proto == icmp_proto:
        cls, with_id = (icmp.ICMP, _ICMP4_WITH_ID) if proto == 1 else (icmp6.ICMP6, _ICMP6_WITH_ID)
        try:
            h = cls(t[:4])
            kind, code = h.type, h.code
        except dpkt.NeedData:
            if len(t) < 2:
                return 0, 0, 0
            kind, code = t[0], t[1]
        ident = 0
        if kind in with_id:
            try:
                ident = cls.Echo(t[4:8]).id     # the identifier sits where echo has it, for all these types
            except dpkt.NeedData:
                ident = int.from_bytes(t[4:6], "big") if len(t) >= 6 else 0
        return ident, kind * 256 + code, 0
    return 0, 0, 0
