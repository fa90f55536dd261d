"""The pcapng packet-block walk, compiled: the packet part of :meth:`flowlog.core.capfile.CaptureFile._walk_pcapng`.

:func:`walk_pcapng` walks the blocks that lie whole in ``buf[start:end]`` as long as they
are packet blocks it can take as they are: Enhanced (type 6), Obsolete (type 2) and Simple
(type 3) Packet Blocks naming an interface the section described, with a captured length
that fits the block. It stops at anything else and says why (:data:`BLOCK`): section and
interface headers, statistics, name resolution, custom and unknown blocks, and packet blocks
that need a message (too short, unknown interface, captured length past the block). The
caller (CaptureFile) handles that block in Python exactly as the Python walk does, then
resumes the kernel; refilling the buffer, damage and truncation messages and building the
:class:`~flowlog.core.frames.FrameBatch` stay there too.

Timestamps are computed in integers exactly as ``CaptureFile._timestamp`` computes them with
Python's unbounded integers, for every resolution a file may declare (``if_tsresol``
10^-0..10^-127 and 2^-0..2^-127) and every ``if_tsoffset``. Tests (tests/test_fast_pcapng.py)
hold both walks to the same batches.
"""

from __future__ import annotations

import numpy as np

from flowlog.core.fast.pcap import _u32
from flowlog.core.jit import kernel

__all__ = ["walk_pcapng", "timestamp", "NEED_MORE", "CORRUPT", "FULL", "BLOCK"]

#: the next block (header or body) is not whole in the buffer: refill, or the file ends there
NEED_MORE = 0
#: the next block's length is impossible (below 12, not a multiple of 4, past the limit)
CORRUPT = 1
#: ``max_frames`` frames written and the next block is a packet block the kernel would take
FULL = 2
#: the next block is whole but not one the kernel takes: Python handles it, then resumes
BLOCK = 3

SHB = 0x0A0D0D0A
#: Timestamps at or beyond this many seconds are unusable (capfile.MAX_SECONDS)
MAX_SECONDS = np.int64(1 << 62)
#: 10**k for k = 0..19 (10**19 is the largest power of ten below 2**64)
_POW10 = np.array([10 ** k for k in range(20)], np.uint64)
_TOP = np.uint64(1 << 63)
_NS = np.int64(1_000_000_000)


@kernel
def _u16(buf, p, big_endian):
    b0 = np.int64(buf[np.uint64(p)])
    b1 = np.int64(buf[np.uint64(p + 1)])
    if big_endian:
        return (b0 << 8) | b1
    return (b1 << 8) | b0


@kernel
def _frac_ns(fh, fl, shift):
    """floor((fh * 2**32 + fl) * 10**9 / 2**shift) for fh, fl < 2**32, when the result is below 2**63."""
    lo = fl * _NS                       # < 2**62
    hi = fh * _NS                       # < 2**62
    upper = hi + (lo >> 32)             # the product shifted right by 32: < 2**63
    if shift >= 32:
        s = shift - 32
        return upper >> s if s < 63 else np.int64(0)
    # shift < 32: the callers' fraction is below 2**shift, so the product fits in 62 bits
    return ((upper << (32 - shift)) | ((lo & 0xFFFFFFFF) >> shift))


@kernel
def timestamp(hi, lo, base, exp, tsoff):
    """(seconds, nanoseconds) of a pcapng timestamp ``hi * 2**32 + lo`` in units of ``base**-exp``
    seconds, plus ``tsoff`` seconds; (-1, 0) when the seconds are not in [0, 2**62).

    ``hi``, ``lo`` < 2**32; ``base`` 10 or 2; 0 <= ``exp`` <= 127.
    """
    hi = np.int64(hi)
    lo = np.int64(lo)
    exp = np.int64(exp)
    tsoff = np.int64(tsoff)
    units = (np.uint64(hi) << np.uint64(32)) | np.uint64(lo)
    if base == 10:
        if exp <= 19:
            d = _POW10[exp]
            q = units // d
            f = units - q * d
            if exp <= 9:
                ns = np.int64(f) * np.int64(_POW10[9 - exp])
            else:
                ns = np.int64(f // _POW10[exp - 9])
        else:
            # 10**exp > units: no whole seconds; 10**(exp - 9) > units too past exp 28
            q = np.uint64(0)
            ns = np.int64(units // _POW10[exp - 9]) if exp - 9 <= 19 else np.int64(0)
    else:
        if exp == 0:
            q = units
            ns = np.int64(0)
        elif exp < 32:
            q = np.uint64((hi << (32 - exp)) | (lo >> exp))
            ns = _frac_ns(np.int64(0), lo & ((np.int64(1) << exp) - 1), exp)
        elif exp < 64:
            q = np.uint64(hi >> (exp - 32))
            ns = _frac_ns(hi & ((np.int64(1) << (exp - 32)) - 1), lo, exp)
        else:
            q = np.uint64(0)
            ns = _frac_ns(hi, lo, exp)
    if q >= _TOP:
        # seconds of 2**63 or more (resolution of one second): only a negative offset helps
        if tsoff >= 0:
            return np.int64(-1), np.int64(0)
        a = np.int64(q - _TOP)                      # in [0, 2**63)
        b = (tsoff + (np.int64(1) << 62)) + (np.int64(1) << 62)   # tsoff + 2**63, in [0, 2**63)
        if a >= MAX_SECONDS or b >= MAX_SECONDS - a:
            return np.int64(-1), np.int64(0)
        return a + b, ns
    s = np.int64(q)
    if tsoff > 0 and s >= MAX_SECONDS - tsoff:
        return np.int64(-1), np.int64(0)
    s += tsoff
    if s < 0 or s >= MAX_SECONDS:
        return np.int64(-1), np.int64(0)
    return s, ns


@kernel
def walk_pcapng(buf, start, end, big_endian, links, tsbase, tsexp, tsoff, snaplen, max_record,
                n, max_frames, last_sec, last_nsec, off, caplen, wirelen, sec, nsec, link):
    """Walk pcapng packet blocks from ``buf[start]`` while they lie whole before ``end``.

    The section's interfaces are given per interface id: ``links`` (the link index written
    for its frames, int32), ``tsbase``/``tsexp`` (timestamp unit ``tsbase**-tsexp``
    seconds), ``tsoff`` (``if_tsoffset``, seconds), ``snaplen`` (0: none; Simple Packet
    Blocks are cut to interface 0's). ``max_record``: the largest acceptable block length.
    Frames go to ``off[i]`` (offset in ``buf``), ``caplen[i]``, ``wirelen[i]``, ``sec[i]``,
    ``nsec[i]``, ``link[i]`` for ``n <= i < max_frames``; a Simple Packet Block carries no
    time and takes the time of the frame before it (``last_sec``/``last_nsec`` for the first).

    Returns ``(frames written in all, start of the first block not taken, status, last_sec,
    last_nsec)``; status is :data:`NEED_MORE`, :data:`CORRUPT`, :data:`FULL` or :data:`BLOCK`.
    """
    start = np.int64(start)
    end = min(np.int64(end), np.int64(buf.shape[0]))    # never read past the buffer
    big = bool(big_endian)
    nif = np.int64(links.shape[0])
    max_record = np.int64(max_record)
    n = np.int64(n)
    max_frames = np.int64(max_frames)
    ls = np.int64(last_sec)
    lns = np.int64(last_nsec)
    status = FULL
    while True:
        if end - start < 12:
            status = NEED_MORE
            break
        btype = _u32(buf, start, big)
        if btype == SHB:                    # its byte order may differ: Python reads it
            status = BLOCK
            break
        total = _u32(buf, start + 4, big)
        if total < 12 or total % 4 != 0 or total > max_record:
            status = CORRUPT
            break
        if end - start < total:
            status = NEED_MORE
            break
        if btype == 6 or btype == 2:
            if total < 32:
                status = BLOCK
                break
            iface = _u32(buf, start + 8, big) if btype == 6 else _u16(buf, start + 8, big)
            cap = _u32(buf, start + 20, big)
            if iface >= nif or cap > total - 32:
                status = BLOCK
                break
            if n >= max_frames:
                status = FULL
                break
            ls, lns = timestamp(_u32(buf, start + 12, big), _u32(buf, start + 16, big),
                                tsbase[iface], tsexp[iface], tsoff[iface])
            off[n] = start + 28
            caplen[n] = cap
            wirelen[n] = _u32(buf, start + 24, big)
            link[n] = links[iface]
        elif btype == 3:
            if nif == 0 or total < 16:
                status = BLOCK
                break
            if n >= max_frames:
                status = FULL
                break
            wire = _u32(buf, start + 8, big)
            cap = min(wire, total - 16)
            if snaplen[0] > 0:
                cap = min(cap, np.int64(snaplen[0]))
            off[n] = start + 12
            caplen[n] = cap
            wirelen[n] = wire
            link[n] = links[0]
        else:
            status = BLOCK
            break
        sec[n] = ls
        nsec[n] = lns
        n += 1
        start += total
    return n, start, status, ls, lns
