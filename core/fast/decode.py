"""The header walk, compiled: :mod:`flowlog.core.decode.walk` as a numba kernel over a whole batch.

This module mirrors :mod:`flowlog.core.decode.walk` rule for rule and gives the same
result for every frame: the same status and reason codes, addresses, ports, protocol,
IP-layer length and TCP flags. walk.py stays the one statement of the behaviour; this
is a second text of it because numba's typing (and its speed) needs code written
differently from what reads naturally in Python:

* every byte is widened to ``int64`` before any shift or OR (``uint8`` arithmetic gives
  ``uint64``, and ``uint64`` mixed with ``int64`` gives ``float64`` without a word), and
  every helper returns ``int64`` only;
* the 64-bit IPv6 address halves are built in ``int64`` (the top bit wraps into the sign,
  the bit pattern stays) and written through ``int64`` views of the ``uint64`` columns;
* the link layers are walked by one loop with a state (EtherType or PPP) instead of
  walk.py's mutually recursive ``_ethertype``/``_ppp``: numba neither infers nor caches
  mutual recursion well;
* the helpers read bytes by address (:func:`_u8`) rather than from the array: an array
  handed to a helper costs an atomic reference count increment and decrement per call,
  which halved the speed. It is safe because :func:`decode_into` checks that each frame
  lies inside the buffer and, as in walk.py, every read is guarded by the frame's end;
* the large helpers are inlined by numba (``inline="always"``): LLVM would leave them
  as calls, at half the speed.

Tests (tests/test_fast.py) hold the two equal on every bundled and corpus capture and
on a few hundred thousand random and mutated frames. A change to walk.py needs the
same change here.

:func:`decode_batch_fast` is :func:`flowlog.core.decode.decode_batch`'s compiled path,
with the same contract, including the dpkt reference decoder for frames of link types
the walk has no code for.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from flowlog.core.jit import kernel

from ..decode.walk import (
    MALFORMED, NON_IP, OK, R_IP4_IHL, R_IP4_LEN, R_IP4_SHORT, R_IP6_SHORT, R_LINK_SHORT, R_LINKTYPE, R_LONGER,
    R_NONE, R_TIMESTAMP, R_VERSION,
)

__all__ = ["decode_into", "decode_batch_fast"]

# where the link layer left the walk (first element of _locate's result)
_AT_IP = 0
_AT_NON_IP = 1
_AT_BAD = 2

# link-layer walk states
_ST_ETHERTYPE = 0
_ST_PPP = 1


@intrinsic
def _u8(typingctx, b, p):
    """The byte at address ``b + p`` as an int64 (``b``: the batch buffer's address, see decode_into)."""
    if not isinstance(b, types.Integer) or not isinstance(p, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        base = context.cast(builder, args[0], signature.args[0], types.int64)
        off = context.cast(builder, args[1], signature.args[1], types.int64)
        ptr = builder.inttoptr(builder.add(base, off), ir.IntType(8).as_pointer())
        return builder.zext(builder.load(ptr), i64)

    return types.int64(b, p), codegen


@kernel
def _be16(b, p):
    return (_u8(b, p) << 8) | _u8(b, p + 1)


@kernel
def _be32(b, p):
    return ((_u8(b, p) << 24) | (_u8(b, p + 1) << 16) | (_u8(b, p + 2) << 8)
            | _u8(b, p + 3))


@kernel
def _be64(b, p):
    """The 8 bytes at ``p`` as the bit pattern of a big-endian 64-bit value (in an int64)."""
    return (_be32(b, p) << 32) | _be32(b, p + 4)


@kernel
def _bad(reason):
    z = np.int64(0)
    return (np.int64(MALFORMED), np.int64(reason), z, z, z, z, z, z, z, z, z, z)


@kernel
def _non_ip():
    z = np.int64(0)
    return (np.int64(NON_IP), np.int64(R_NONE), z, z, z, z, z, z, z, z, z, z)


@kernel(inline="always")
def _locate(b, start, end, linktype):
    """Walk the link layers: ``(_AT_IP, p, end, expected version)``, ``(_AT_NON_IP, ...)`` or ``(_AT_BAD, reason, ...)``.

    walk.decode_frame, _ethertype, _ppp and _nflog up to their call of _ip_by_version.
    """
    z = np.int64(0)
    state = _ST_ETHERTYPE
    etype = z
    p = start
    if linktype == 1:                                   # Ethernet
        if end - start < 14:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        etype = _be16(b, start + 12)
        p = start + 14
    elif linktype == 12 or linktype == 14 or linktype == 101:   # raw IP
        return _AT_IP, start, end, z
    elif linktype == 228:
        return _AT_IP, start, end, np.int64(4)
    elif linktype == 229:
        return _AT_IP, start, end, np.int64(6)
    elif linktype == 113:                               # Linux cooked capture v1
        if end - start < 16:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        etype = _be16(b, start + 14)
        p = start + 16
    elif linktype == 276:                               # Linux cooked capture v2
        if end - start < 20:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        etype = _be16(b, start)
        p = start + 20
    elif linktype == 0 or linktype == 108:              # BSD loopback, OpenBSD loop
        if end - start < 4:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        if linktype == 108:
            af = _be32(b, start)
        else:
            af = (_u8(b, start) | (_u8(b, start + 1) << 8) | (_u8(b, start + 2) << 16)
                  | (_u8(b, start + 3) << 24))
            if af > 0xFFFF:
                af = _be32(b, start)
        if af == 2:
            return _AT_IP, start + 4, end, np.int64(4)
        if af == 24 or af == 28 or af == 30:
            return _AT_IP, start + 4, end, np.int64(6)
        return _AT_NON_IP, z, z, z
    elif linktype == 9 or linktype == 50:               # PPP, PPP in HDLC framing
        state = _ST_PPP
    elif linktype == 51:                                # PPPoE
        if end - start < 6:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        state = _ST_PPP
        p = start + 6
    elif linktype == 104:                               # Cisco HDLC
        if end - start < 4:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        etype = _be16(b, start + 2)
        p = start + 4
    elif linktype == 239:                               # NFLOG
        if end - start < 4:
            return _AT_BAD, np.int64(R_LINK_SHORT), z, z
        family = _u8(b, start)
        q = start + 4
        while end - q >= 4:
            length = _u8(b, q) | (_u8(b, q + 1) << 8)
            tlv_type = _u8(b, q + 2) | (_u8(b, q + 3) << 8)
            if length < 4:
                return _AT_BAD, np.int64(R_LINK_SHORT), z, z
            if tlv_type & 0x7FFF == 9:
                version = np.int64(4) if family == 2 else np.int64(6) if family == 10 else z
                return _AT_IP, q + 4, min(end, q + length), version
            q += (length + 3) & ~np.int64(3)
        return _AT_NON_IP, z, z, z
    else:
        return _AT_BAD, np.int64(R_LINKTYPE), z, z

    while True:
        if state == _ST_ETHERTYPE:                      # walk._ethertype
            if etype == 0x0800:
                return _AT_IP, p, end, np.int64(4)
            if etype == 0x86DD:
                return _AT_IP, p, end, np.int64(6)
            if etype == 0x8100 or etype == 0x88A8 or etype == 0x9100 or etype == 0x9200:
                if end - p < 4:
                    return _AT_BAD, np.int64(R_LINK_SHORT), z, z
                etype = _be16(b, p + 2)
                p += 4
                continue
            if etype == 0x8847 or etype == 0x8848:      # MPLS: labels until bottom of stack
                while True:
                    if end - p < 4:
                        return _AT_BAD, np.int64(R_LINK_SHORT), z, z
                    bottom = _u8(b, p + 2) & 1
                    p += 4
                    if bottom:
                        break
                if end - p < 1:
                    return _AT_BAD, np.int64(R_LINK_SHORT), z, z
                v = _u8(b, p) >> 4
                if v == 4 or v == 6:
                    return _AT_IP, p, end, v
                return _AT_NON_IP, z, z, z
            if etype == 0x8864:                         # PPPoE session
                if end - p < 6:
                    return _AT_BAD, np.int64(R_LINK_SHORT), z, z
                p += 6
                state = _ST_PPP
                continue
            if etype <= 1500:                           # 802.3 length: LLC, maybe SNAP
                if end - p >= 8 and _u8(b, p) == 0xAA and _u8(b, p + 1) == 0xAA and _u8(b, p + 2) == 0x03:
                    etype = _be16(b, p + 6)
                    p += 8
                    continue
                return _AT_NON_IP, z, z, z
            return _AT_NON_IP, z, z, z
        else:                                           # walk._ppp
            if end - p >= 2 and _u8(b, p) == 0xFF and _u8(b, p + 1) == 0x03:
                p += 2
            if end - p < 1:
                return _AT_BAD, np.int64(R_LINK_SHORT), z, z
            if _u8(b, p) & 1:
                proto = _u8(b, p)
                p += 1
            else:
                if end - p < 2:
                    return _AT_BAD, np.int64(R_LINK_SHORT), z, z
                proto = _be16(b, p)
                p += 2
            if proto == 0x21:
                return _AT_IP, p, end, np.int64(4)
            if proto == 0x57:
                return _AT_IP, p, end, np.int64(6)
            if proto == 0x281 or proto == 0x283:        # MPLS over PPP
                etype = np.int64(0x8847)
                state = _ST_ETHERTYPE
                continue
            return _AT_NON_IP, z, z, z


@kernel
def _has_identifier(icmp_proto, icmp_type):
    if icmp_proto == 1:
        return (icmp_type == 0 or icmp_type == 8 or (13 <= icmp_type and icmp_type <= 18) or icmp_type == 42
                or icmp_type == 43)
    return icmp_type == 128 or icmp_type == 129 or icmp_type == 160 or icmp_type == 161


@kernel(inline="always")
def _transport(b, t, end, proto, icmp_proto):
    """walk._transport: (sport, dport, tcp flags)."""
    z = np.int64(0)
    if proto == 6 or proto == 17 or proto == 132:
        if end - t < 4:
            return z, z, z
        flags = _u8(b, t + 13) if proto == 6 and end - t >= 14 else z
        return _be16(b, t), _be16(b, t + 2), flags
    if proto == icmp_proto:
        if end - t < 2:
            return z, z, z
        icmp_type = _u8(b, t)
        ident = _be16(b, t + 4) if end - t >= 6 and _has_identifier(icmp_proto, icmp_type) else z
        return ident, icmp_type * 256 + _u8(b, t + 1), z
    return z, z, z


@kernel(inline="always")
def _jumbo(b, p, end):
    """walk._jumbo: the Jumbo Payload option's length, else 0."""
    while p < end:
        opt = _u8(b, p)
        if opt == 0:
            p += 1
            continue
        if end - p < 2:
            return np.int64(0)
        olen = _u8(b, p + 1)
        if opt == 0xC2 and olen == 4 and end - p >= 6:
            return _be32(b, p + 2)
        p += 2 + olen
    return np.int64(0)


@kernel(inline="always")
def _ipv4(b, p, end, onwire):
    if end - p < 20:
        return _bad(R_IP4_SHORT)
    ihl = (_u8(b, p) & 0x0F) * 4
    if ihl < 20:
        return _bad(R_IP4_IHL)
    total = _be16(b, p + 2)
    if total != 0 and total < ihl:
        return _bad(R_IP4_LEN)
    nbytes = total if total != 0 else onwire
    nonfirst = (_be16(b, p + 6) & 0x1FFF) != 0
    proto = _u8(b, p + 9)
    src = _be32(b, p + 12)
    dst = _be32(b, p + 16)
    sport = np.int64(0)
    dport = np.int64(0)
    flags = np.int64(0)
    if not nonfirst:
        tend = min(end, p + total) if total != 0 else end
        sport, dport, flags = _transport(b, p + ihl, tend, proto, 1)
    z = np.int64(0)
    reason = np.int64(R_LONGER) if nbytes > onwire else np.int64(R_NONE)
    return (np.int64(OK), reason, np.int64(4), z, src, z, dst, sport, dport, proto, nbytes, flags)


@kernel(inline="always")
def _ipv6(b, p, end, onwire):
    if end - p < 40:
        return _bad(R_IP6_SHORT)
    plen = _be16(b, p + 4)
    if plen != 0:
        end = min(end, p + 40 + plen)
    nh = _u8(b, p + 6)
    src_hi = _be64(b, p + 8)
    src_lo = _be64(b, p + 16)
    dst_hi = _be64(b, p + 24)
    dst_lo = _be64(b, p + 32)
    q = p + 40
    nonfirst = False
    jumbo = np.int64(0)
    complete = True
    while nh == 0 or nh == 43 or nh == 44 or nh == 60:
        if nh == 44:
            if end - q < 8:
                complete = False
                break
            if _be16(b, q + 2) & 0xFFF8:
                nonfirst = True
            nxt = _u8(b, q)
            hlen = np.int64(8)
        else:
            if end - q < 2:
                complete = False
                break
            nxt = _u8(b, q)
            hlen = (_u8(b, q + 1) + 1) * 8
            if nh == 0 and plen == 0:
                jumbo = _jumbo(b, q + 2, min(end, q + hlen))
        if end - q < hlen:
            nh = nxt
            complete = False
            break
        nh = nxt
        q += hlen
    if plen != 0:
        nbytes = plen + 40
    elif jumbo != 0:
        nbytes = jumbo + 40
    else:
        nbytes = onwire
    sport = np.int64(0)
    dport = np.int64(0)
    flags = np.int64(0)
    if complete and not nonfirst:
        sport, dport, flags = _transport(b, q, end, nh, 58)
    reason = np.int64(R_LONGER) if nbytes > onwire else np.int64(R_NONE)
    return (np.int64(OK), reason, np.int64(6), src_hi, src_lo, dst_hi, dst_lo, sport, dport, nh, nbytes, flags)


@kernel(inline="always")
def _decode_frame(b, start, end, linktype, wirelen):
    """walk.decode_frame: the 12 result fields, all int64 (address halves as bit patterns)."""
    at, p, ipend, expect = _locate(b, start, end, linktype)
    if at == _AT_BAD:
        return _bad(p)
    if at == _AT_NON_IP:
        return _non_ip()
    # walk._ip_by_version
    if ipend - p < 1:
        return _bad(R_IP4_SHORT if expect != 6 else R_IP6_SHORT)
    v = _u8(b, p) >> 4
    if expect != 0 and v != expect:
        return _bad(R_VERSION)
    onwire = wirelen - (p - start)
    if v == 4:
        return _ipv4(b, p, ipend, onwire)
    if v == 6:
        return _ipv6(b, p, ipend, onwire)
    return _bad(R_VERSION)


@kernel
def decode_into(buf, off, caplen, wirelen, sec, link, linktype_of_link, status, reason, family,
                src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, nbytes, flags):
    """Decode frames ``0..len(off)`` into the output columns (allocated by the caller).

    ``buf`` (``uint8``) must be contiguous: it is read by address. Returns ``len(off)``, or
    ``-1 - i`` when frame ``i`` lies outside ``buf`` or names a link index outside
    ``linktype_of_link`` (the outputs of frames before ``i`` are filled).
    """
    n = off.shape[0]
    nbuf = buf.shape[0]
    if nbuf > 1 and buf.strides[0] != 1:
        raise ValueError("decode_into: the frame buffer must be contiguous")
    nlinks = linktype_of_link.shape[0]
    b = np.int64(buf.ctypes.data)
    shi = src_hi.view(np.int64)
    slo = src_lo.view(np.int64)
    dhi = dst_hi.view(np.int64)
    dlo = dst_lo.view(np.int64)
    for i in range(n):
        if sec[i] < 0:
            r = _bad(R_TIMESTAMP)
        else:
            start = np.int64(off[i])
            end = start + np.int64(caplen[i])
            lk = np.int64(link[i])
            if start < 0 or end > nbuf or lk < 0 or lk >= nlinks:
                return -1 - i
            r = _decode_frame(b, start, end, np.int64(linktype_of_link[lk]), np.int64(wirelen[i]))
        status[i] = r[0]
        reason[i] = r[1]
        family[i] = r[2]
        shi[i] = r[3]
        slo[i] = r[4]
        dhi[i] = r[5]
        dlo[i] = r[6]
        sport[i] = r[7]
        dport[i] = r[8]
        proto[i] = r[9]
        nbytes[i] = r[10]
        flags[i] = r[11]
    return n


def decode_batch_fast(batch, linktypes):
    """:func:`flowlog.core.decode.decode_batch` by the compiled kernel (same contract, same Columns)."""
    from ..decode import _DTYPES, Columns

    n = len(batch)
    cols = [np.zeros(n, d) if not n else np.empty(n, d) for d in _DTYPES]
    if not n:
        return Columns(*cols)
    buf = np.ascontiguousarray(batch.buf, np.uint8)   # the kernel reads it by address
    off = np.ascontiguousarray(batch.off, np.int64)
    caplen = np.ascontiguousarray(batch.caplen, np.int64)
    wirelen = np.ascontiguousarray(batch.wirelen, np.int64)
    sec = np.ascontiguousarray(batch.sec, np.int64)
    link = np.ascontiguousarray(batch.link, np.int32)
    lts = np.ascontiguousarray(linktypes, np.int64)
    done = decode_into(buf, off, caplen, wirelen, sec, link, lts, *cols)
    if done < 0:
        i = -1 - done
        raise ValueError(f"frame {i} of the batch (offset {int(off[i])}, {int(caplen[i])} bytes, link "
                         f"{int(link[i])}) lies outside the batch's buffer ({len(buf)} bytes) or link table "
                         f"({len(lts)} links)")
    # (only MALFORMED frames have this reason)
    other = np.flatnonzero(cols[1] == R_LINKTYPE)
    if len(other):
        # a link type the walk has no code for: the dpkt-based reference may know it
        from ..decode.reference import decode_frame_reference
        for i in other.tolist():
            o, c = int(off[i]), int(caplen[i])
            row = decode_frame_reference(buf[o:o + c].tobytes(), int(lts[link[i]]), int(wirelen[i]))
            for col, value in zip(cols, row):
                col[i] = value
    return Columns(*cols)
