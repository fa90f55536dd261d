"""The TPACKET_V3 block walk: the blocks of a Linux AF_PACKET ring -> FrameBatch columns.

The ring (see :mod:`flowlog.plugins.ring`) is ``nblocks`` blocks of ``block_size`` bytes.
Each block starts with ``struct tpacket_block_desc``; its ``struct tpacket_hdr_v1`` says
whether user space owns the block (``block_status & TP_STATUS_USER``), how many packets it
holds and where the first one is. Packets are ``struct tpacket3_hdr`` chained by
``tp_next_offset``; the frame itself starts ``tp_mac`` bytes into its header and is
``tp_snaplen`` bytes long (``tp_len`` on the wire), stamped ``tp_sec``/``tp_nsec``.

:func:`walk_blocks` reads the blocks user space owns, in ring order, and writes one column
row per packet with the frame's offset into the ring itself (no copy). It does not hand the
blocks back: the caller does that (:func:`release_blocks`) once the batch is no longer used.
The same function runs compiled (:func:`compiled_walk`) or as plain Python.
"""

from __future__ import annotations

import numpy as np

__all__ = ["walk_blocks", "compiled_walk", "release_blocks", "TP_STATUS_USER", "TP_STATUS_KERNEL",
           "BLOCK_STATUS", "BLOCK_NUM_PKTS", "BLOCK_FIRST_PKT"]

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

# struct tpacket_block_desc: version (u32), offset_to_priv (u32), then struct tpacket_hdr_v1
BLOCK_STATUS = 8
BLOCK_NUM_PKTS = 12
BLOCK_FIRST_PKT = 16
# struct tpacket3_hdr
PKT_NEXT = 0
PKT_SEC = 4
PKT_NSEC = 8
PKT_SNAPLEN = 12
PKT_LEN = 16
PKT_MAC = 24      # u16


def walk_blocks(ring16, ring32, block_size, nblocks, first, max_blocks, link,
                off, caplen, wirelen, sec, nsec, links):
    """Walk the user-owned blocks from block ``first`` on (at most ``max_blocks`` of them).

    ``ring16``/``ring32`` are the ring viewed as native-order u16/u32 arrays. A block is taken
    only if all its packets fit in the columns (whose length is the capacity). Returns
    ``(frames written, blocks taken)``; the blocks taken are ``first, first + 1, ...`` modulo
    ``nblocks``. A packet whose header points outside its block ends that block's walk
    (the kernel never writes one; this only keeps a corrupt ring from reading astray).
    """
    block_size = np.int64(block_size)
    nblocks = np.int64(nblocks)
    cap = np.int64(off.shape[0])
    lk = np.int32(link)
    n = np.int64(0)
    taken = np.int64(0)
    b = np.int64(first)
    while taken < max_blocks and taken < nblocks:
        base = b * block_size
        status = np.int64(ring32[(base + BLOCK_STATUS) >> 2])
        if (status & TP_STATUS_USER) == 0:
            break
        npkts = np.int64(ring32[(base + BLOCK_NUM_PKTS) >> 2])
        if n + npkts > cap:
            break
        p = base + np.int64(ring32[(base + BLOCK_FIRST_PKT) >> 2])
        end = base + block_size
        for _ in range(npkts):
            if p < base or p + 32 > end or (p & 3) != 0:
                break
            mac = np.int64(ring16[(p + PKT_MAC) >> 1])
            snap = np.int64(ring32[(p + PKT_SNAPLEN) >> 2])
            start = p + mac
            if start + snap > end:
                break
            off[n] = start
            caplen[n] = snap
            wirelen[n] = np.int64(ring32[(p + PKT_LEN) >> 2])
            sec[n] = np.int64(ring32[(p + PKT_SEC) >> 2])
            nsec[n] = np.int64(ring32[(p + PKT_NSEC) >> 2])
            links[n] = lk
            n += 1
            nxt = np.int64(ring32[(p + PKT_NEXT) >> 2])
            if nxt == 0:
                break
            p += nxt
        taken += 1
        b += 1
        if b == nblocks:
            b = 0
    return n, taken


_compiled = None


def compiled_walk():
    """:func:`walk_blocks` compiled with numba (imported and compiled on first use)."""
    global _compiled
    if _compiled is None:
        from flowlog.core.jit import kernel

        _compiled = kernel(walk_blocks)
    return _compiled


def release_blocks(ring32, block_size: int, nblocks: int, first: int, count: int) -> None:
    """Hand ``count`` blocks from block ``first`` on back to the kernel."""
    for i in range(count):
        b = (first + i) % nblocks
        ring32[(b * block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
