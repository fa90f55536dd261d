"""Decode: frames in, flow-key columns out, a whole batch at a time.

:func:`decode_batch` is the one entry point the rest of the core uses; which
implementation runs behind it is this package's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import FrameBatch
from .walk import MALFORMED, NON_IP, OK, R_LINKTYPE, R_TIMESTAMP, REASONS, decode_frame

__all__ = ["Columns", "decode_batch", "OK", "NON_IP", "MALFORMED", "REASONS"]

_FIELDS = ("status", "reason", "family", "src_hi", "src_lo", "dst_hi", "dst_lo",
           "sport", "dport", "proto", "nbytes", "flags")
_DTYPES = (np.uint8, np.uint8, np.uint8, np.uint64, np.uint64, np.uint64, np.uint64,
           np.int32, np.int32, np.int32, np.int64, np.int32)


@dataclass(slots=True)
class Columns:
    """Per-frame decode results, one array per field (see :mod:`flowlog.core.decode.walk`)."""

    status: np.ndarray
    reason: np.ndarray
    family: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    nbytes: np.ndarray
    flags: np.ndarray


def decode_batch(batch: FrameBatch, linktypes: np.ndarray, compiled: bool | None = None) -> Columns:
    """Decode every frame of ``batch``; ``linktypes[link]`` is the link type of each link index.

    ``compiled``: decode with the compiled kernel (:mod:`flowlog.core.fast.decode`) or the
    pure-Python walk (:mod:`.walk`); None: compiled when :func:`flowlog.core.jit.available`.
    Both give identical columns. The pure path never imports numba.
    """
    if compiled is None:
        from .. import jit
        compiled = jit.available()
    if compiled:
        from ..fast.decode import decode_batch_fast
        return decode_batch_fast(batch, linktypes)
    return _decode_batch_python(batch, linktypes)


def _decode_batch_python(batch: FrameBatch, linktypes: np.ndarray) -> Columns:
    n = len(batch)
    rows = [None] * n
    b = batch.buf.tobytes() if n else b""
    off = batch.off.tolist()
    cap = batch.caplen.tolist()
    wire = batch.wirelen.tolist()
    lt = linktypes[batch.link].tolist() if n else []
    bad_ts = (batch.sec < 0).tolist() if n else []
    bad = (MALFORMED, R_TIMESTAMP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for i in range(n):
        if bad_ts[i]:
            rows[i] = bad
        else:
            o = off[i]
            row = decode_frame(b, o, o + cap[i], lt[i], wire[i])
            if row[0] == MALFORMED and row[1] == R_LINKTYPE:
                # a link type the walk has no code for: the dpkt-based reference may know it
                from .reference import decode_frame_reference
                row = decode_frame_reference(b[o:o + cap[i]], lt[i], wire[i])
            rows[i] = row
    if n:
        cols = list(zip(*rows))
        return Columns(*(np.array(c, dtype=d) for c, d in zip(cols, _DTYPES)))
    return Columns(*(np.zeros(0, d) for d in _DTYPES))
