"""Version-2 text records written by a compiled kernel, straight from a RecordBatch's columns.

The output is byte for byte what :class:`flowlog.core.formats.Formatter` writes for the
``text`` format with the 14 version-2 fields (tests hold the two equal); formatting a
million records one Python object at a time would take longer than reading the capture.
"""

from __future__ import annotations

import numpy as np

from ..jit import kernel
from ..records import KIND_NODATA, KIND_OK, RecordBatch

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_ACCEPT = np.frombuffer(b"ACCEPT", np.uint8)
_REJECT = np.frombuffer(b"REJECT", np.uint8)
_OK = np.frombuffer(b"OK", np.uint8)
_NODATA = np.frombuffer(b"NODATA", np.uint8)
_SKIPDATA = np.frombuffer(b"SKIPDATA", np.uint8)
SPACE, DASH, NEWLINE, DOT, COLON = 32, 45, 10, 46, 58


@kernel
def _put(out, pos, src):
    for k in range(len(src)):
        out[pos + k] = src[k]
    return pos + len(src)


@kernel
def _uint(out, pos, v):
    if v == 0:
        out[pos] = 48
        return pos + 1
    n = 0
    x = v
    while x > 0:
        n += 1
        x //= 10
    x = v
    for k in range(n - 1, -1, -1):
        out[pos + k] = 48 + x % 10
        x //= 10
    return pos + n


@kernel
def _ipv4(out, pos, a):
    for shift in (24, 16, 8, 0):
        pos = _uint(out, pos, (a >> shift) & 255)
        if shift:
            out[pos] = DOT
            pos += 1
    return pos


@kernel
def _hex16(out, pos, g):
    started = False
    for shift in (12, 8, 4, 0):
        d = (g >> shift) & 15
        if d or started or shift == 0:
            out[pos] = _HEX[d]
            pos += 1
            started = True
    return pos


@kernel
def _ipv6(out, pos, hi, lo):
    """RFC 5952: lower case, no leading zeros, the longest run (first of equals, two or more) of zero groups as ::."""
    h = np.uint64(hi)
    l = np.uint64(lo)
    if h == 0 and (l >> np.uint64(32)) == np.uint64(0xFFFF):
        for c in (58, 58, 102, 102, 102, 102, 58):     # "::ffff:"
            out[pos] = c
            pos += 1
        return _ipv4(out, pos, np.int64(l & np.uint64(0xFFFFFFFF)))
    groups = np.empty(8, np.int64)
    for k in range(4):
        groups[k] = np.int64((h >> np.uint64(48 - 16 * k)) & np.uint64(0xFFFF))
        groups[4 + k] = np.int64((l >> np.uint64(48 - 16 * k)) & np.uint64(0xFFFF))
    best, best_len, run, run_len = -1, 0, -1, 0
    for k in range(8):
        if groups[k] == 0:
            if run_len == 0:
                run = k
            run_len += 1
            if run_len > best_len:
                best, best_len = run, run_len
        else:
            run_len = 0
    if best_len < 2:
        best = -1
    k = 0
    while k < 8:
        if k == best:
            out[pos] = COLON
            out[pos + 1] = COLON
            pos += 2
            k += best_len
            continue
        if k and k != best + best_len:
            out[pos] = COLON
            pos += 1
        pos = _hex16(out, pos, groups[k])
        k += 1
    return pos


@kernel
def _addr(out, pos, fam, hi, lo):
    if fam == 4:
        return _ipv4(out, pos, lo)
    return _ipv6(out, pos, hi, lo)


@kernel
def _text(kind, iface, fam, shi, slo, dhi, dlo, sport, dport, proto, packets, nbytes, start, end, action,
          names, name_off, acct, out):
    pos = 0
    for i in range(len(kind)):
        out[pos] = 50                                   # "2"
        out[pos + 1] = SPACE
        pos = _put(out, pos + 2, acct)
        out[pos] = SPACE
        f = iface[i]
        pos = _put(out, pos + 1, names[name_off[f]:name_off[f + 1]])
        out[pos] = SPACE
        pos += 1
        kd = kind[i]
        if kd == KIND_OK:
            pos = _addr(out, pos, fam[i], shi[i], slo[i])
            out[pos] = SPACE
            pos = _addr(out, pos + 1, fam[i], dhi[i], dlo[i])
            out[pos] = SPACE
            pos = _uint(out, pos + 1, sport[i])
            out[pos] = SPACE
            pos = _uint(out, pos + 1, dport[i])
            out[pos] = SPACE
            pos = _uint(out, pos + 1, proto[i])
            out[pos] = SPACE
            pos = _uint(out, pos + 1, packets[i])
            out[pos] = SPACE
            pos = _uint(out, pos + 1, nbytes[i])
        else:
            for k in range(5):                          # srcaddr .. protocol
                out[pos] = DASH
                out[pos + 1] = SPACE
                pos += 2
            if kd == KIND_NODATA:
                out[pos] = DASH
                out[pos + 1] = SPACE
                out[pos + 2] = DASH
                pos += 3
            else:
                pos = _uint(out, pos, packets[i])
                out[pos] = SPACE
                pos += 1
                if nbytes[i] < 0:
                    out[pos] = DASH
                    pos += 1
                else:
                    pos = _uint(out, pos, nbytes[i])
        out[pos] = SPACE
        pos = _uint(out, pos + 1, start[i])
        out[pos] = SPACE
        pos = _uint(out, pos + 1, end[i])
        out[pos] = SPACE
        pos += 1
        if kd == KIND_OK:
            pos = _put(out, pos, _REJECT if action[i] == 1 else _ACCEPT)
            out[pos] = SPACE
            pos = _put(out, pos + 1, _OK)
        else:
            out[pos] = DASH
            out[pos + 1] = SPACE
            pos = _put(out, pos + 2, _NODATA if kd == KIND_NODATA else _SKIPDATA)
        out[pos] = NEWLINE
        pos += 1
    return pos


#: Records rendered per call of the kernel: bounds the memory the text takes.
CHUNK = 16384


def text_v2(batch: RecordBatch) -> bytes:
    """The batch's records as version-2 text lines (each ending in a newline)."""
    return b"".join(text_v2_chunks(batch))


def text_v2_chunks(batch: RecordBatch):
    """The batch's version-2 text lines, :data:`CHUNK` records at a time."""
    n = len(batch)
    if not n:
        return
    encoded = [name.encode() for name in batch.interfaces]
    name_off = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=name_off[1:])
    names = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
    acct = np.frombuffer((batch.account_id or "-").encode(), np.uint8)
    width = 230 + len(acct) + int(max(len(e) for e in encoded))
    out = np.empty(min(n, CHUNK) * width, np.uint8)
    u = np.int64
    cols = (batch.kind, batch.iface.astype(u), batch.fam.astype(u), batch.shi.view(u), batch.slo.view(u),
            batch.dhi.view(u), batch.dlo.view(u), batch.sport.astype(u), batch.dport.astype(u),
            batch.proto.astype(u), batch.packets.astype(u), batch.bytes.astype(u), batch.start.astype(u),
            batch.end.astype(u), batch.action)
    for lo in range(0, n, CHUNK):
        used = _text(*(c[lo:lo + CHUNK] for c in cols), names, name_off, acct, out)
        yield out[:used].tobytes()
