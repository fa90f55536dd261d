"""BPF filter expressions, compiled by libpcap (through pcapy-ng) and applied to frame batches."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .frames import FrameBatch, linktype_name


class BpfFilter:
    """A filter expression in tcpdump's language, compiled once per link type."""

    def __init__(self, expression: str, snaplen: int = 262144):
        self.expression = expression
        self.snaplen = snaplen
        self._programs: dict[int, object] = {}

    def program(self, linktype: int):
        prog = self._programs.get(linktype)
        if prog is None:
            import pcapy

            try:
                prog = pcapy.compile(linktype, self.snaplen, self.expression, 1, 0xFFFFFFFF)
            except pcapy.PcapError as e:
                raise ConfigError(f"bad filter expression {self.expression!r} for "
                                  f"{linktype_name(linktype)} frames: {e}") from None
            self._programs[linktype] = prog
        return prog

    def mask(self, batch: FrameBatch, linktypes: np.ndarray) -> np.ndarray:
        """True for the frames of ``batch`` the expression accepts."""
        n = len(batch)
        keep = np.zeros(n, np.bool_)
        if not n:
            return keep
        lts = linktypes[batch.link].tolist()
        buf = batch.buf
        for i, (o, c) in enumerate(zip(batch.off.tolist(), batch.caplen.tolist())):
            keep[i] = self.program(lts[i]).filter(buf[o:o + c].tobytes()) != 0
        return keep

    def apply(self, batch: FrameBatch, linktypes: np.ndarray) -> FrameBatch:
        """The frames of ``batch`` the expression accepts."""
        keep = self.mask(batch, linktypes)
        if keep.all():
            return batch
        return batch.take(keep)
