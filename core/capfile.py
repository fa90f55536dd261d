"""Capture files: classic pcap (both byte orders, micro- and nanoseconds, the modified
format) and pcapng (several sections and interfaces, per-interface timestamp resolution
and offset), told apart by magic number; gzip, bzip2 and xz compression read transparently.

Records are walked in a reused buffer and handed on as :class:`FrameBatch` columns.
A record that is cut short (a file still being written) ends the file with a warning;
a record whose header is impossible (a corrupt file) ends it as damage.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from typing import BinaryIO, Iterator

import numpy as np

from . import jit
from .api import SourceContext
from .errors import SourceError
from .frames import FrameBatch

PCAP_MAGICS = {
    # magic as read little-endian -> (byte order, fraction unit, record header size)
    0xA1B2C3D4: ("<", 1000, 16),
    0xD4C3B2A1: (">", 1000, 16),
    0xA1B23C4D: ("<", 1, 16),
    0x4D3CB2A1: (">", 1, 16),
    0xA1B2CD34: ("<", 1000, 24),   # Alexey Kuznetzov's modified pcap
    0x34CDB2A1: (">", 1000, 24),
}
PCAPNG_SHB = 0x0A0D0D0A
COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}

#: Largest record flowlog accepts; a larger one means the file is corrupt (libpcap's own
#: limit is 256 KiB; BIG TCP captures need more).
MAX_RECORD = 1 << 24
#: Timestamps beyond this many seconds are unusable (window arithmetic stays in int64).
MAX_SECONDS = 1 << 62

BATCH_FRAMES = 32768
#: Frames per batch on the compiled path (classic pcap): per-batch costs matter more there.
BATCH_FRAMES_COMPILED = 65536
BUFFER_SIZE = 4 << 20
#: The compiled path reads in larger pieces: fewer batches, less per-batch work.
BUFFER_SIZE_COMPILED = 8 << 20


def sniff(path: str) -> str:
    """'pcap', 'pcapng', or raise SourceError saying what the file is not."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory") from None
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None
    for magic, opener in COMPRESSED.items():
        if head.startswith(magic):
            try:
                with opener(path, "rb") as f:
                    head = f.read(8)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise SourceError(f"{path}: damaged compressed file: {e}") from None
            break
    return _kind(path, head)


def _kind(path: str, head: bytes) -> str:
    if len(head) < 4:
        raise SourceError(f"{path}: not a capture file ({'empty' if not head else 'too short'})")
    magic = struct.unpack("<I", head[:4])[0]
    if magic == PCAPNG_SHB:
        return "pcapng"
    if magic in PCAP_MAGICS:
        return "pcap"
    raise SourceError(f"{path}: not a pcap or pcapng capture (magic number {head[:4].hex()})")


def _open(path: str) -> BinaryIO:
    raw = open(path, "rb")
    head = raw.read(6)
    raw.seek(0)
    for magic, opener in COMPRESSED.items():
        if head.startswith(magic):
            return opener(raw, "rb")
    return raw


class CaptureFile:
    """One capture file, read as a stream of frame batches.

    ``compiled``: walk classic pcap records with the compiled kernel
    (:mod:`flowlog.core.fast.pcap`); None: when :func:`flowlog.core.jit.wanted` says so for
    the file's size. Both walks give the same batches; pcapng is always walked in Python.
    ``batch_frames``: most frames per batch (None: :data:`BATCH_FRAMES`, or
    :data:`BATCH_FRAMES_COMPILED` on the compiled path); a batch also ends where the data
    in the buffer does.
    """

    def __init__(self, path: str, ctx: SourceContext, name: str | None = None,
                 batch_frames: int | None = None, buffer_size: int | None = None,
                 compiled: bool | None = None):
        self.path = path
        self.ctx = ctx
        self.name = name or _stem(path)
        self.kind = sniff(path)
        self.size = os.path.getsize(path)
        if compiled is None:
            compiled = self.kind == "pcap" and jit.wanted(self.size)
        #: the compiled walk is used (classic pcap only)
        self.compiled = bool(compiled) and self.kind == "pcap"
        #: read and walk in a second thread (compiled classic pcap, default batch size)
        self.prefetch = self.compiled and batch_frames is None
        if batch_frames is None:
            batch_frames = BATCH_FRAMES_COMPILED if self.compiled else BATCH_FRAMES
        self.batch_frames = batch_frames
        #: frames handed on so far
        self.frames = 0
        if buffer_size is None:
            buffer_size = BUFFER_SIZE_COMPILED if self.compiled else BUFFER_SIZE
        self._buf = bytearray(buffer_size)
        self._f: BinaryIO | None = None
        self._start = 0      # start of unread data in _buf
        self._end = 0        # end of valid data in _buf
        self._eof = False
        self._file_pos = 0   # offset in the (decompressed) file of _buf[0]
        self.normalised_timestamps = 0   # fraction past one second, carried into the seconds
        self._quiet = False
        #: follow mode: the end of the data is not the end of the file (see poll)
        self.follow = False
        #: damage was met: the file is not read further
        self.failed = False
        self.batch_base = 0
        self._open_header()

    def _damaged(self, message: str) -> None:
        self.failed = True
        if not self._quiet:
            self.ctx.damaged(message)

    def poll(self) -> Iterator[FrameBatch]:
        """Follow mode (a file still being written): the batches of the records complete now.

        Call again later for what has been written since; a record cut short at the end is
        simply not there yet. ``batch_base`` is the file offset that the last batch's
        ``off`` column counts from.
        """
        self.follow = True
        self._eof = False
        walk = self._walk_pcap if self.kind == "pcap" else self._walk_pcapng
        while not self.failed:
            cols = ([], [], [], [], [], [])
            more = walk(cols)
            if cols[0]:
                yield self._batch(cols)
            if not more:
                return

    def read_position(self) -> int:
        """File offset of the first byte not yet taken (follow mode)."""
        return self._file_pos + self._start

    def first_time(self) -> tuple[int, int]:
        """The first frame's time (seconds, nanoseconds), for ordering files; consumes and closes the file.

        A file with no frames sorts first. Problems are reported when the file is read for real.
        """
        self._quiet = True
        self.batch_frames = 1
        try:
            for b in self.batches():
                if len(b):
                    return int(b.sec[0]), int(b.nsec[0])
            return (-1, 0)
        finally:
            self.normalised_timestamps = 0
            self.close()

    # -- buffer management ---------------------------------------------------------------
    def _fill(self, need: int) -> bool:
        """Make at least ``need`` bytes available from _start; False at end of file."""
        while self._end - self._start < need:
            if self._eof:
                return False
            if self._start:
                n = self._end - self._start
                self._buf[:n] = self._buf[self._start:self._end]
                self._file_pos += self._start
                self._start, self._end = 0, n
            if need > len(self._buf):
                bigger = bytearray(max(need, 2 * len(self._buf)))
                bigger[:self._end] = self._buf[:self._end]
                self._buf = bigger
            try:
                got = self._f.readinto(memoryview(self._buf)[self._end:])
            except (OSError, EOFError, lzma.LZMAError, zlib_error()) as e:
                self._damaged(f"{self.path}: read error at byte {self._file_pos + self._end}: {e}")
                got = 0
            if not got:
                self._eof = True
            self._end += got or 0
        return True

    def _offset(self) -> int:
        return self._file_pos + self._start

    # -- headers -------------------------------------------------------------------------
    def _open_header(self) -> None:
        try:
            self._f = _open(self.path)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read: {e.strerror or e}") from None
        if self.kind == "pcap":
            if not self._fill(24):
                raise SourceError(f"{self.path}: not a capture file (pcap header cut short)")
            magic = struct.unpack_from("<I", self._buf, 0)[0]
            self._endian, self._frac_unit, self._rec_size = PCAP_MAGICS[magic]
            major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(
                self._endian + "HHiIII", self._buf, 4)
            self._snaplen = snaplen
            self._link = self.ctx.add_link(self.name, linktype & 0x0FFFFFFF)
            self._start = 24
        else:
            self._links: list[int] = []
            self._tsres: list[tuple[int, int]] = []   # (kind 10/2, exponent)
            self._tsoff: list[int] = []
            if not self._fill(12):
                raise SourceError(f"{self.path}: not a capture file (pcapng header cut short)")
            self._read_shb(first=True)

    def _read_shb(self, first: bool = False) -> bool:
        if not self._fill(16):
            if first:
                raise SourceError(f"{self.path}: not a capture file (pcapng section header cut short)")
            self._truncated("a section header")
            return False
        bom = self._buf[self._start + 8:self._start + 12]
        if bytes(bom) == b"\x4d\x3c\x2b\x1a":
            self._endian = "<"
        elif bytes(bom) == b"\x1a\x2b\x3c\x4d":
            self._endian = ">"
        else:
            if first:
                raise SourceError(f"{self.path}: not a capture file (bad pcapng byte-order magic)")
            self._damaged(f"{self.path}: bad pcapng section header at byte {self._offset()}; stopped reading")
            return False
        total = struct.unpack_from(self._endian + "I", self._buf, self._start + 4)[0]
        if total < 28 or total % 4 or total > MAX_RECORD:
            if first:
                raise SourceError(f"{self.path}: not a capture file (bad pcapng section header length)")
            self._damaged(f"{self.path}: bad pcapng section header at byte {self._offset()}; stopped reading")
            return False
        if not self._fill(total):
            if first:
                raise SourceError(f"{self.path}: not a capture file (pcapng section header cut short)")
            return False
        self._start += total
        self._links, self._tsres, self._tsoff = [], [], []
        return True

    def _read_idb(self, body: memoryview) -> None:
        e = self._endian
        if len(body) < 8:
            self._damaged(f"{self.path}: interface description block too short at byte {self._offset()}")
            return
        linktype, _reserved, _snaplen = struct.unpack_from(e + "HHI", body, 0)
        name = None
        tsres = (10, 6)
        tsoff = 0
        for code, value in _options(body[8:], e):
            if code == 2:
                name = bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace") or None
            elif code == 9 and len(value) >= 1:
                v = value[0]
                tsres = (2, v & 0x7F) if v & 0x80 else (10, v)
            elif code == 14 and len(value) >= 8:
                tsoff = struct.unpack_from(e + "q", value, 0)[0]
        index = len(self._links)
        if name is None:
            name = self.name if index == 0 else f"{self.name}-{index}"
        self._links.append(self.ctx.add_link(name, linktype))
        self._tsres.append(tsres)
        self._tsoff.append(tsoff)

    # -- frames --------------------------------------------------------------------------
    def progress(self) -> int:
        """Bytes of the file read so far (compressed bytes for a compressed file)."""
        f = self._f
        raw = getattr(f, "fileobj", None) or getattr(f, "_fp", None) or f
        try:
            return raw.tell()
        except (OSError, ValueError, AttributeError):
            return 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def batches(self) -> Iterator[FrameBatch]:
        if self.compiled and self.prefetch:
            return self._batches_prefetch()
        if self.compiled:
            return self._batches_compiled()
        return self._batches_python()

    def _batches_prefetch(self) -> Iterator[FrameBatch]:
        """The compiled walk with reading and walking in a second thread, two buffers in turn.

        ``readinto`` and the walk kernel release the GIL, so the file is read and walked
        while the caller decodes and counts the batch before. A buffer is refilled only
        once the caller has asked for the batch after the last one in it (the batch
        contract of :class:`FrameBatch`).
        """
        import queue
        import threading

        from .fast.pcap import CORRUPT, FULL, walk_pcap

        rsize = self._rec_size
        limit = max(self._snaplen, 262144, MAX_RECORD)
        big = self._endian == ">"
        bufs = [self._buf, bytearray(len(self._buf))]
        free = [threading.Semaphore(1), threading.Semaphore(1)]
        out: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        f = self._f
        # the header was read into _buf by _open_header: what follows it is the first carry-over
        carry = bytes(self._buf[self._start:self._end])
        carry_pos = self._file_pos + self._start

        def reader():
            nonlocal carry, carry_pos
            which = 0
            try:
                eof = False
                while not stop.is_set():
                    free[which].acquire()
                    if stop.is_set():
                        return
                    buf = bufs[which]
                    need = len(carry) + rsize
                    if len(carry) >= rsize:
                        caplen = int.from_bytes(carry[8:12], "big" if big else "little")
                        if caplen <= limit:       # a larger one is corrupt: the walk says so
                            need = max(need, rsize + caplen)
                    if need > len(buf):
                        buf = bufs[which] = bytearray(max(need, 2 * len(buf)))
                    buf[:len(carry)] = carry
                    filled = len(carry)
                    base = carry_pos
                    while filled < len(buf) and not eof:
                        got = f.readinto(memoryview(buf)[filled:])
                        if not got:
                            eof = True
                        filled += got or 0
                    view = np.frombuffer(buf, np.uint8)
                    start = 0
                    batches = []
                    while True:
                        room = min(self.batch_frames, max(1, (filled - start) // rsize))
                        cols = (np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.int64),
                                np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.int32))
                        n, start, status, normalised = walk_pcap(view, start, filled, big, self._frac_unit, rsize,
                                                                 limit, self._link, room, *cols)
                        if n:
                            batches.append(FrameBatch(view, *(c[:n] for c in cols)))
                        if normalised:
                            batches.append(("normalised", normalised))
                        if status == CORRUPT:
                            caplen = int.from_bytes(buf[start + 8:start + 12], "big" if big else "little")
                            batches.append(("damaged", f"{self.path}: record at byte {base + start} claims {caplen} "
                                            f"captured bytes; the file is corrupt from there, stopped reading it"))
                            out.put((which, batches, False))
                            return
                        if status != FULL:
                            break
                    carry = bytes(buf[start:filled])
                    carry_pos = base + start
                    if eof:
                        if carry:
                            what = "a record header" if len(carry) < rsize else "a record"
                            batches.append(("damaged", f"{self.path}: cut short at byte {base + filled} inside "
                                            f"{what} (file still being written, or truncated); read what came "
                                            f"before"))
                        out.put((which, batches, False))
                        return
                    out.put((which, batches, True))
                    which ^= 1
            except (OSError, EOFError, lzma.LZMAError, zlib_error()) as e:
                out.put((which, [("damaged", f"{self.path}: read error: {e}")], False))
            except BaseException as e:    # noqa: BLE001 - handed to the caller's thread, raised there
                out.put((which, [("error", e)], False))

        thread = threading.Thread(target=reader, name=f"flowlog-read-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                which, items, more = out.get()
                for item in items:
                    if isinstance(item, FrameBatch):
                        self.frames += len(item)
                        yield item
                    elif item[0] == "normalised":
                        self.normalised_timestamps += item[1]
                    elif item[0] == "damaged":
                        self._damaged(item[1])
                    else:
                        raise item[1]
                free[which].release()
                if not more:
                    break
        finally:
            stop.set()
            free[0].release()
            free[1].release()
            thread.join()
            self.close()

    def _batches_python(self) -> Iterator[FrameBatch]:
        walk = self._walk_pcap if self.kind == "pcap" else self._walk_pcapng
        try:
            while True:
                cols = ([], [], [], [], [], [])
                more = walk(cols)
                if cols[0]:
                    yield self._batch(cols)
                if not more:
                    break
        finally:
            self.close()

    def _batch(self, cols) -> FrameBatch:
        off, cap, wire, sec, nsec, link = cols
        self.batch_base = self._file_pos
        self.frames += len(off)
        return FrameBatch(np.frombuffer(self._buf, np.uint8),
                          np.array(off, np.int64) - self._file_pos, np.array(cap, np.int64),
                          np.array(wire, np.int64), np.array(sec, np.int64), np.array(nsec, np.int64),
                          np.array(link, np.int32))

    def _truncated(self, what: str) -> None:
        if self.follow:                  # the rest is still being written
            return
        have = self._end - self._start
        self._damaged(f"{self.path}: cut short at byte {self._offset() + have} inside {what} "
                         f"(file still being written, or truncated); read what came before")

    def _walk_pcap(self, cols) -> bool:
        """Walk records into ``cols``; True while more may follow."""
        off, cap, wire, sec_l, nsec_l, link_l = cols
        rec = struct.Struct(self._endian + "IIII")
        rsize = self._rec_size
        unit = self._frac_unit
        per_sec = 1_000_000_000 // unit
        link = self._link
        limit = max(self._snaplen, 262144, MAX_RECORD)
        # A batch's frames must stay in the buffer until the caller is done with it, so
        # stop the batch when the buffer would have to move.
        first = True
        while len(off) < self.batch_frames:
            if self._end - self._start < rsize:
                if not first:
                    return True
                if not self._fill(rsize):
                    if self._end > self._start:
                        self._truncated("a record header")
                    return False
            sec, frac, caplen, wirelen = rec.unpack_from(self._buf, self._start)
            if caplen > limit:
                self._damaged(f"{self.path}: record at byte {self._offset()} claims {caplen} captured bytes; "
                                 f"the file is corrupt from there, stopped reading it")
                return False
            if self._end - self._start < rsize + caplen:
                if not first:
                    return True
                if not self._fill(rsize + caplen):
                    self._truncated("a record")
                    return False
            first = False
            if frac >= per_sec:
                self.normalised_timestamps += 1
                sec += frac // per_sec
                frac %= per_sec
            off.append(self._file_pos + self._start + rsize)
            cap.append(caplen)
            wire.append(wirelen)
            sec_l.append(sec)
            nsec_l.append(frac * unit)
            link_l.append(link)
            self._start += rsize + caplen
        return True

    def _batches_compiled(self) -> Iterator[FrameBatch]:
        try:
            while True:
                batch, more = self._walk_pcap_compiled()
                if batch is not None:
                    yield batch
                if not more:
                    break
        finally:
            self.close()

    def _walk_pcap_compiled(self) -> tuple[FrameBatch | None, bool]:
        """:meth:`_walk_pcap` by the compiled kernel: (the batch or None, whether more may follow)."""
        from .fast.pcap import CORRUPT, FULL, walk_pcap

        rsize = self._rec_size
        limit = max(self._snaplen, 262144, MAX_RECORD)
        big = self._endian == ">"
        while True:
            # the buffer object changes when _fill grows it: view it afresh
            buf = np.frombuffer(self._buf, np.uint8)
            room = min(self.batch_frames, max(1, (self._end - self._start) // rsize))
            cols = (np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.int64),
                    np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.int32))
            n, self._start, status, normalised = walk_pcap(
                buf, self._start, self._end, big, self._frac_unit, rsize, limit, self._link, room, *cols)
            self.normalised_timestamps += normalised
            if n:
                off, cap, wire, sec, nsec, link = (c[:n] for c in cols)
                self.frames += n
                return FrameBatch(buf, off, cap, wire, sec, nsec, link), status != CORRUPT or self._corrupt()
            if status == FULL:          # batch_frames < 1: as _walk_pcap, an empty batch
                return None, True
            if status == CORRUPT:
                return None, self._corrupt()
            # the batch's first record is not whole in the buffer: refill, as _walk_pcap does
            if self._end - self._start < rsize:
                if not self._fill(rsize):
                    if self._end > self._start:
                        self._truncated("a record header")
                    return None, False
            else:
                caplen = struct.unpack_from(self._endian + "I", self._buf, self._start + 8)[0]
                if not self._fill(rsize + caplen):
                    self._truncated("a record")
                    return None, False

    def _corrupt(self) -> bool:
        caplen = struct.unpack_from(self._endian + "I", self._buf, self._start + 8)[0]
        self._damaged(f"{self.path}: record at byte {self._offset()} claims {caplen} captured bytes; "
                         f"the file is corrupt from there, stopped reading it")
        return False

    def _walk_pcapng(self, cols) -> bool:
        off, cap, wire, sec_l, nsec_l, link_l = cols
        first = True
        last_sec, last_nsec = 0, 0
        while len(off) < self.batch_frames:
            if self._end - self._start < 12:
                if not first:
                    return True
                if not self._fill(12):
                    if self._end > self._start:
                        self._truncated("a block header")
                    return False
            e = self._endian
            btype, total = struct.unpack_from(e + "II", self._buf, self._start)
            if btype == PCAPNG_SHB:
                if not first and off:
                    return True
                if not self._read_shb():
                    return False
                first = True
                continue
            if total < 12 or total % 4 or total > MAX_RECORD:
                self._damaged(f"{self.path}: block at byte {self._offset()} has an impossible length "
                                 f"({total}); the file is corrupt from there, stopped reading it")
                return False
            if self._end - self._start < total:
                if not first:
                    return True
                if not self._fill(total):
                    self._truncated("a block")
                    return False
            first = False
            body_start = self._start + 8
            body = memoryview(self._buf)[body_start:self._start + total - 4]
            try:
                if btype == 6 or btype == 2:   # enhanced packet block, obsolete packet block
                    if btype == 6:
                        iface, hi, lo, caplen, wirelen = struct.unpack_from(e + "IIIII", body, 0)
                    else:
                        iface, _drops, hi, lo, caplen, wirelen = struct.unpack_from(e + "HHIIII", body, 0)
                    if iface >= len(self._links):
                        self._damaged(f"{self.path}: packet at byte {self._offset()} names interface {iface}, "
                                         f"which the file never described; frame skipped")
                    elif caplen > len(body) - 20:
                        self._damaged(f"{self.path}: packet at byte {self._offset()} claims {caplen} captured "
                                         f"bytes in a {total}-byte block; frame skipped")
                    else:
                        sec, nsec = self._timestamp(iface, (hi << 32) | lo)
                        last_sec, last_nsec = sec, nsec
                        off.append(self._file_pos + body_start + 20)
                        cap.append(caplen)
                        wire.append(wirelen)
                        sec_l.append(sec)
                        nsec_l.append(nsec)
                        link_l.append(self._links[iface])
                elif btype == 3:                 # simple packet block: interface 0, no timestamp
                    if not self._links:
                        self._damaged(f"{self.path}: simple packet block before any interface; frame skipped")
                    else:
                        wirelen = struct.unpack_from(e + "I", body, 0)[0]
                        caplen = min(wirelen, len(body) - 4)
                        off.append(self._file_pos + body_start + 4)
                        cap.append(caplen)
                        wire.append(wirelen)
                        sec_l.append(sec_l[-1] if sec_l else last_sec)
                        nsec_l.append(nsec_l[-1] if nsec_l else last_nsec)
                        link_l.append(self._links[0])
                elif btype == 1:
                    self._read_idb(body)
            except struct.error:
                self._damaged(f"{self.path}: block at byte {self._offset()} is too short for its type; skipped")
            finally:
                body.release()
            self._start += total
        return True

    def _timestamp(self, iface: int, units: int) -> tuple[int, int]:
        base, exp = self._tsres[iface]
        if base == 10:
            div = 10 ** exp
            sec, frac = divmod(units, div)
            nsec = frac * 1_000_000_000 // div
        else:
            sec = units >> exp
            nsec = ((units & ((1 << exp) - 1)) * 1_000_000_000) >> exp
        sec += self._tsoff[iface]
        if not 0 <= sec < MAX_SECONDS:
            return -1, 0          # unusable: the frame is counted as malformed
        return sec, nsec


def _options(buf: memoryview, e: str):
    pos = 0
    n = len(buf)
    while pos + 4 <= n:
        code, length = struct.unpack_from(e + "HH", buf, pos)
        if code == 0:
            return
        value = buf[pos + 4:pos + 4 + length]
        if len(value) < length:
            return
        yield code, value
        pos += 4 + ((length + 3) & ~3)


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    for ext in (".gz", ".bz2", ".xz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


def zlib_error():
    import zlib
    return zlib.error
