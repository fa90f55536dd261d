"""The classic pcap record walk, compiled: :meth:`flowlog.core.capfile.CaptureFile._walk_pcap` as a numba kernel.

:func:`walk_pcap` walks the records that lie whole in ``buf[start:end]`` and writes their
columns; the caller (CaptureFile) keeps doing what needs Python: refilling the buffer,
damage and truncation messages, building the :class:`~flowlog.core.frames.FrameBatch`.
Tests (tests/test_fast.py) hold both walks to the same batches.
"""

from __future__ import annotations

import numpy as np

from flowlog.core.jit import kernel

__all__ = ["walk_pcap", "NEED_MORE", "CORRUPT", "FULL"]

#: the next record (header or data) is not whole in the buffer: refill, or the file ends there
NEED_MORE = 0
#: the next record claims more captured bytes than the limit: the file is corrupt from there
CORRUPT = 1
#: ``max_frames`` records written
FULL = 2


@kernel
def _u32(buf, p, big_endian):
    # unsigned indices: numba then leaves out its negative-index wraparound code
    b0 = np.int64(buf[np.uint64(p)])
    b1 = np.int64(buf[np.uint64(p + 1)])
    b2 = np.int64(buf[np.uint64(p + 2)])
    b3 = np.int64(buf[np.uint64(p + 3)])
    if big_endian:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return (b3 << 24) | (b2 << 16) | (b1 << 8) | b0


@kernel
def walk_pcap(buf, start, end, big_endian, unit, rsize, limit, link, max_frames,
              off, caplen, wirelen, sec, nsec, links):
    """Walk classic pcap records from ``buf[start]`` while they lie whole before ``end``.

    ``unit``: nanoseconds per unit of the timestamp fraction (1000: microseconds, 1:
    nanoseconds); ``rsize``: record header size (16, or 24 in the modified format);
    ``limit``: largest acceptable captured length; ``link``: the link index written
    for every frame. Frame ``i`` goes to ``off[i]`` (its offset in ``buf``), ``caplen[i]``,
    ``wirelen[i]``, ``sec[i]``, ``nsec[i]``, ``links[i]`` for ``i < max_frames``.

    Returns ``(frames written, start of the first record not taken, status, timestamps
    normalised)``: status is :data:`NEED_MORE`, :data:`CORRUPT` or :data:`FULL`; a fraction
    of one second or more is carried into the seconds and counted.
    """
    start = np.int64(start)
    end = min(np.int64(end), np.int64(buf.shape[0]))    # never read past the buffer
    rsize = np.int64(rsize)
    limit = np.int64(limit)
    unit = np.int64(unit)
    per_sec = np.int64(1_000_000_000) // unit
    lk = np.int32(link)
    big = bool(big_endian)
    n = 0
    normalised = 0
    status = FULL
    while n < max_frames:
        if end - start < rsize:
            status = NEED_MORE
            break
        cap = _u32(buf, start + 8, big)
        if cap > limit:
            status = CORRUPT
            break
        if end - start < rsize + cap:
            status = NEED_MORE
            break
        s = _u32(buf, start, big)
        frac = _u32(buf, start + 4, big)
        if frac >= per_sec:
            normalised += 1
            s += frac // per_sec
            frac = frac % per_sec
        off[n] = start + rsize
        caplen[n] = cap
        wirelen[n] = _u32(buf, start + 12, big)
        sec[n] = s
        nsec[n] = frac * unit
        links[n] = lk
        n += 1
        start += rsize + cap
    return n, start, status, normalised
