"""Frames as sources hand them to the core: in batches of columns, never one call per packet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# Link types (https://www.tcpdump.org/linktypes.html) that flowlog decodes.
LINKTYPES: dict[int, str] = {
    0: "NULL",          # BSD loopback, host-order address family
    1: "ETHERNET",
    9: "PPP",
    12: "RAW",          # DLT_RAW on some BSDs
    14: "RAW",          # DLT_RAW on OpenBSD
    50: "PPP_HDLC",
    51: "PPP_ETHER",    # PPPoE
    101: "RAW",
    104: "C_HDLC",
    108: "LOOP",        # OpenBSD loopback, network-order address family
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    239: "NFLOG",
    276: "LINUX_SLL2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPES.get(linktype, f"link type {linktype}")


class Loss(NamedTuple):
    """Traffic a source could not deliver (kernel drops, overflow): becomes SKIPDATA."""

    sec: int
    link: int
    packets: int
    bytes: int | None


@dataclass(slots=True, eq=False)
class FrameBatch:
    """A batch of captured frames as columns over one byte buffer.

    ``buf`` holds the frames' bytes; frame ``i`` is ``buf[off[i]:off[i]+caplen[i]]``.
    ``sec``/``nsec`` are the capture time (``sec == -1``: the record's timestamp
    was unusable). ``link`` indexes the run's link table (interface and link type,
    see :class:`flowlog.core.api.SourceContext`). A batch is valid until the next
    batch is asked of the same source: sources may reuse the buffer.
    """

    buf: np.ndarray
    off: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    sec: np.ndarray
    nsec: np.ndarray
    link: np.ndarray
    losses: list[Loss] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.off)

    def frame(self, i: int) -> bytes:
        o = int(self.off[i])
        return self.buf[o:o + int(self.caplen[i])].tobytes()

    @classmethod
    def empty(cls) -> "FrameBatch":
        z = np.zeros(0, np.int64)
        return cls(np.zeros(0, np.uint8), z, z, z, z, z, np.zeros(0, np.int32))

    @classmethod
    def from_frames(cls, frames, link: int = 0) -> "FrameBatch":
        """Build a batch from ``(sec, nsec, bytes[, wirelen])`` tuples (tests, small sources)."""
        bufs, off, cap, wire, sec, nsec, pos = [], [], [], [], [], [], 0
        for f in frames:
            data = f[2]
            bufs.append(data)
            off.append(pos)
            cap.append(len(data))
            wire.append(f[3] if len(f) > 3 else len(data))
            sec.append(f[0])
            nsec.append(f[1])
            pos += len(data)
        n = len(off)
        return cls(
            np.frombuffer(b"".join(bufs), np.uint8).copy(),
            np.array(off, np.int64), np.array(cap, np.int64), np.array(wire, np.int64),
            np.array(sec, np.int64), np.array(nsec, np.int64), np.full(n, link, np.int32),
        )

    def take(self, idx) -> "FrameBatch":
        """A compact copy holding only the frames ``idx`` (an index array or mask)."""
        idx = np.flatnonzero(idx) if getattr(idx, "dtype", None) == np.bool_ else np.asarray(idx, np.int64)
        caplen = self.caplen[idx]
        off = self.off[idx]
        newoff = np.zeros(len(idx), np.int64)
        if len(idx):
            np.cumsum(caplen[:-1], out=newoff[1:])
        total = int(caplen.sum()) if len(idx) else 0
        buf = np.empty(total, np.uint8)
        for o, n, c in zip(newoff.tolist(), off.tolist(), caplen.tolist()):
            buf[o:o + c] = self.buf[n:n + c]
        return FrameBatch(buf, newoff, caplen.copy(), self.wirelen[idx].copy(), self.sec[idx].copy(),
                          self.nsec[idx].copy(), self.link[idx].copy(), list(self.losses))

    @classmethod
    def concat(cls, batches: list["FrameBatch"]) -> "FrameBatch":
        batches = [b for b in batches if len(b) or b.losses]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        bufs, offs, base = [], [], 0
        for b in batches:
            end = int((b.off + b.caplen).max()) if len(b) else 0
            bufs.append(b.buf[:end])
            offs.append(b.off + base)
            base += end
        losses = [loss for b in batches for loss in b.losses]
        return cls(np.concatenate(bufs), np.concatenate(offs),
                   np.concatenate([b.caplen for b in batches]), np.concatenate([b.wirelen for b in batches]),
                   np.concatenate([b.sec for b in batches]), np.concatenate([b.nsec for b in batches]),
                   np.concatenate([b.link for b in batches]), losses)
