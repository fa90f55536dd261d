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

    ``compiled``: walk the records with the compiled kernels (:mod:`flowlog.core.fast.pcap`,
    :mod:`flowlog.core.fast.pcapng`); None: when :func:`flowlog.core.jit.wanted` says so for
    the file's size. Both walks give the same frames, damage and warnings (follow mode,
    :meth:`poll`, always walks in Python).
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
            compiled = jit.wanted(self.size)
        #: the compiled walk is used
        self.compiled = bool(compiled)
        #: read and walk in a second thread (compiled walk, default batch size)
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
        #: pcapng: the time of the last frame handed on (a Simple Packet Block has none of its own)
        self._last_ts = (0, 0)
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
            # the section's interfaces, by interface id
            self._links: list[int] = []
            self._tsres: list[tuple[int, int]] = []   # (kind 10/2, exponent)
            self._tsoff: list[int] = []
            self._snaplens: list[int] = []
            self._tables = None                       # the same as arrays, for the compiled walk
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
            self._truncated("a section header")
            return False
        self._start += total
        self._links, self._tsres, self._tsoff, self._snaplens = [], [], [], []
        self._tables = None
        return True

    def _add_interface(self, name: str | None, linktype: int, tsres: tuple[int, int], tsoff: int,
                       snaplen: int) -> None:
        index = len(self._links)
        if name is None:
            name = self.name if index == 0 else f"{self.name}-{index}"
        self._links.append(self.ctx.add_link(name, linktype))
        self._tsres.append(tsres)
        self._tsoff.append(tsoff)
        self._snaplens.append(snaplen)
        self._tables = None

    def _other_block(self, btype: int, total: int) -> None:
        """A whole block at _start that is not a good packet block: an interface, a message, or nothing."""
        body = memoryview(self._buf)[self._start + 8:self._start + total - 4]
        try:
            events = _block_events(self.path, body, btype, total, self._endian, len(self._links), self._offset())
        finally:
            body.release()
        for event in events:
            if event[0] == "damaged":
                self._damaged(event[1])
            else:
                self._add_interface(*event[1:])

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
            return self._batches_prefetch() if self.kind == "pcap" else self._batches_prefetch_pcapng()
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

        yield from self._prefetched(reader, out, free, stop)

    def _prefetched(self, reader, out, free, stop, links: np.ndarray | None = None) -> Iterator[FrameBatch]:
        """Run ``reader`` in a second thread and hand on what it puts in ``out`` (the caller's side of
        both prefetching walks): batches of frames, and messages — ``normalised`` timestamps, a
        ``damaged`` file, an interface met (``link``: registered here, in file order), an ``error``
        raised in the reader. ``links`` maps the reader's own interface numbers to links (pcapng).
        ``free`` holds one semaphore per buffer: a buffer goes back to the reader once its batches
        are handed on."""
        import threading

        thread = threading.Thread(target=reader, name=f"flowlog-read-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                which, items, more = out.get()
                for item in items:
                    if isinstance(item, FrameBatch):
                        if links is not None:
                            item.link = links[item.link]
                        self.frames += len(item)
                        yield item
                    elif item[0] == "link":
                        links = np.append(links, np.int32(self.ctx.add_link(item[1], item[2]))).astype(np.int32)
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
        self._last_ts = (sec[-1], nsec[-1])
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
        walk = self._walk_pcap_compiled if self.kind == "pcap" else self._walk_pcapng_compiled
        try:
            while True:
                batch, more = walk()
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

    def _walk_pcapng_compiled(self) -> tuple[FrameBatch | None, bool]:
        """:meth:`_walk_pcapng` with the good packet blocks taken by the compiled kernel: the same
        batches. (the batch or None, whether more may follow)"""
        from .fast.pcapng import FULL, walk_pcapng

        first = True
        n = room = 0
        cols: tuple = ()
        buf = None
        last_sec, last_nsec = self._last_ts
        while n < self.batch_frames:
            if self._end - self._start >= 12:
                if n == 0:
                    # the buffer may have moved or grown since: view it afresh (with n > 0 it cannot
                    # have: like _walk_pcapng, this refills only before the batch's first block)
                    buf = np.frombuffer(self._buf, np.uint8)
                    room = min(self.batch_frames, max(1, (self._end - self._start) // 16))
                    cols = _columns(room)
                start = self._start
                n, self._start, status, last_sec, last_nsec = walk_pcapng(
                    buf, start, self._end, self._endian == ">", *self._pcapng_tables(), MAX_RECORD,
                    n, room, last_sec, last_nsec, *cols)
                if self._start != start:
                    first = False
                if status == FULL:
                    if n < self.batch_frames:        # not reached: a block is at least 16 bytes
                        room = min(self.batch_frames, 2 * room)
                        cols = tuple(np.concatenate((c, np.empty(room - len(c), c.dtype))) for c in cols)
                    continue
            # the block at _start is not one the kernel takes: as _walk_pcapng
            if self._end - self._start < 12:
                if not first:
                    break
                if not self._fill(12):
                    if self._end > self._start:
                        self._truncated("a block header")
                    return self._compiled_batch(buf, cols, n), False
                continue
            btype, total = struct.unpack_from(self._endian + "II", self._buf, self._start)
            if btype == PCAPNG_SHB:
                if not first and n:
                    break
                if not self._read_shb():
                    return self._compiled_batch(buf, cols, n), False
                first = True
                continue
            if total < 12 or total % 4 or total > MAX_RECORD:
                self._damaged(f"{self.path}: block at byte {self._offset()} has an impossible length "
                                 f"({total}); the file is corrupt from there, stopped reading it")
                return self._compiled_batch(buf, cols, n), False
            if self._end - self._start < total:
                if not first:
                    break
                if not self._fill(total):
                    self._truncated("a block")
                    return self._compiled_batch(buf, cols, n), False
                continue
            first = False
            self._other_block(btype, total)
            self._start += total
        return self._compiled_batch(buf, cols, n), True

    def _compiled_batch(self, buf, cols, n: int) -> FrameBatch | None:
        if not n:
            return None
        off, cap, wire, sec, nsec, link = (c[:n] for c in cols)
        self.batch_base = self._file_pos
        self.frames += n
        self._last_ts = (int(sec[-1]), int(nsec[-1]))
        return FrameBatch(buf, off, cap, wire, sec, nsec, link)

    def _pcapng_tables(self) -> tuple:
        if self._tables is None:
            self._tables = _tables(self._links, self._tsres, self._tsoff, self._snaplens)
        return self._tables

    def _batches_prefetch_pcapng(self) -> Iterator[FrameBatch]:
        """The compiled pcapng walk with reading and walking in a second thread (as
        :meth:`_batches_prefetch`). The reader numbers the interfaces it meets itself; this
        thread registers them (SourceContext.add_link) in file order and maps the numbers to
        links before handing a batch on, so the context is only ever changed from here.
        """
        import queue
        import threading

        from .fast.pcapng import BLOCK, CORRUPT, FULL, walk_pcapng

        bufs = [self._buf, bytearray(len(self._buf))]
        free = [threading.Semaphore(1), threading.Semaphore(1)]
        out: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        f = self._f
        path = self.path
        # the header was read into _buf by _open_header: what follows it is the first carry-over
        carry = bytes(self._buf[self._start:self._end])
        carry_pos = self._file_pos + self._start
        links = np.array(self._links, np.int32)      # the reader's interface numbers -> links
        first_section = (self._endian == ">", list(range(len(self._links))), list(self._tsres),
                         list(self._tsoff), list(self._snaplens))
        last = self._last_ts

        def reader():
            nonlocal carry, carry_pos
            big, ids, tsres, tsoff, snaplens = first_section
            tables = _tables(ids, tsres, tsoff, snaplens)
            numbered = len(ids)
            last_sec, last_nsec = last
            which = 0
            try:
                eof = False
                while not stop.is_set():
                    free[which].acquire()
                    if stop.is_set():
                        return
                    buf = bufs[which]
                    need = max(len(carry) + 16, _pending_block(carry, big))
                    if need > len(buf):
                        buf = bufs[which] = bytearray(max(need, 2 * len(buf)))
                    buf[:len(carry)] = carry
                    filled = len(carry)
                    base = carry_pos
                    items: list = []
                    while filled < len(buf) and not eof:
                        try:
                            got = f.readinto(memoryview(buf)[filled:])
                        except (OSError, EOFError, lzma.LZMAError, zlib_error()) as e:
                            items.append(("damaged", f"{path}: read error at byte {base + filled}: {e}"))
                            got = 0
                        if not got:
                            eof = True
                        filled += got or 0
                    view = np.frombuffer(buf, np.uint8)
                    start = n = room = 0
                    cols: tuple = ()
                    ended = False                      # damage: the file is not read further
                    while True:
                        if n == 0:
                            room = min(self.batch_frames, max(1, (filled - start) // 16))
                            cols = _columns(room)
                        n, start, status, last_sec, last_nsec = walk_pcapng(
                            view, start, filled, big, *tables, MAX_RECORD, n, room, last_sec, last_nsec, *cols)
                        if status == FULL:
                            items.append(FrameBatch(view, *(c[:n] for c in cols)))
                            n = 0
                            continue
                        if status == CORRUPT:
                            total = int.from_bytes(buf[start + 4:start + 8], "big" if big else "little")
                            items.append(("damaged", f"{path}: block at byte {base + start} has an impossible "
                                          f"length ({total}); the file is corrupt from there, stopped reading it"))
                            ended = True
                        elif status == BLOCK:
                            order = "big" if big else "little"
                            btype = int.from_bytes(buf[start:start + 4], order)
                            if btype == PCAPNG_SHB:
                                if filled - start < 16:
                                    break                      # the rest comes with the next read
                                bom = bytes(buf[start + 8:start + 12])
                                nbig = bom == b"\x1a\x2b\x3c\x4d"
                                total = int.from_bytes(buf[start + 4:start + 8], "big" if nbig else "little")
                                if (not nbig and bom != b"\x4d\x3c\x2b\x1a") or total < 28 or total % 4 \
                                        or total > MAX_RECORD:
                                    items.append(("damaged", f"{path}: bad pcapng section header at byte "
                                                  f"{base + start}; stopped reading"))
                                    ended = True
                                elif filled - start >= total:  # a new section: its byte order, no interfaces
                                    big = nbig
                                    ids, tsres, tsoff, snaplens = [], [], [], []
                                    tables = _tables(ids, tsres, tsoff, snaplens)
                                    start += total
                                    continue
                            else:
                                total = int.from_bytes(buf[start + 4:start + 8], order)
                                body = memoryview(buf)[start + 8:start + total - 4]
                                try:
                                    events = _block_events(path, body, btype, total, ">" if big else "<", len(ids),
                                                           base + start)
                                finally:
                                    body.release()
                                for event in events:
                                    if event[0] == "damaged":
                                        items.append(event)
                                        continue
                                    name, linktype, res, offset, snaplen = event[1:]
                                    if name is None:
                                        name = self.name if not ids else f"{self.name}-{len(ids)}"
                                    items.append(("link", name, linktype))
                                    ids.append(numbered)
                                    numbered += 1
                                    tsres.append(res)
                                    tsoff.append(offset)
                                    snaplens.append(snaplen)
                                    tables = _tables(ids, tsres, tsoff, snaplens)
                                start += total
                                continue
                        break                                  # NEED_MORE, damage, or a section header cut
                    if n:
                        items.append(FrameBatch(view, *(c[:n] for c in cols)))
                    if ended:
                        out.put((which, items, False))
                        return
                    carry = bytes(buf[start:filled])
                    carry_pos = base + start
                    if eof:
                        if carry:
                            what = ("a block header" if len(carry) < 12 else
                                    "a section header" if carry[:4] == b"\x0a\x0d\x0d\x0a" else "a block")
                            items.append(("damaged", f"{path}: cut short at byte {base + filled} inside {what} "
                                          f"(file still being written, or truncated); read what came before"))
                        out.put((which, items, False))
                        return
                    out.put((which, items, True))
                    which ^= 1
            except BaseException as e:    # noqa: BLE001 - handed to the caller's thread, raised there
                out.put((which, [("error", e)], False))

        yield from self._prefetched(reader, out, free, stop, links)

    def _walk_pcapng(self, cols) -> bool:
        """Walk blocks into ``cols``; True while more may follow."""
        off, cap, wire, sec_l, nsec_l, link_l = cols
        first = True
        buf = self._buf
        while len(off) < self.batch_frames:
            if self._end - self._start < 12:
                if not first:
                    return True
                if not self._fill(12):
                    if self._end > self._start:
                        self._truncated("a block header")
                    return False
                buf = self._buf
            e = self._endian
            pos = self._start
            btype, total = struct.unpack_from(e + "II", buf, pos)
            if btype == PCAPNG_SHB:
                if not first and off:
                    return True
                if not self._read_shb():
                    return False
                buf = self._buf
                first = True
                continue
            if total < 12 or total % 4 or total > MAX_RECORD:
                self._damaged(f"{self.path}: block at byte {self._offset()} has an impossible length "
                                 f"({total}); the file is corrupt from there, stopped reading it")
                return False
            if self._end - pos < total:
                if not first:
                    return True
                if not self._fill(total):
                    self._truncated("a block")
                    return False
                buf = self._buf
                pos = self._start
            first = False
            # good packet blocks here; everything else (and the messages) in _other_block
            if (btype == 6 or btype == 2) and total >= 32:    # enhanced packet block, obsolete packet block
                if btype == 6:
                    iface, hi, lo, caplen, wirelen = struct.unpack_from(e + "IIIII", buf, pos + 8)
                else:
                    iface, _drops, hi, lo, caplen, wirelen = struct.unpack_from(e + "HHIIII", buf, pos + 8)
                if iface < len(self._links) and caplen <= total - 32:
                    sec, nsec = self._timestamp(iface, (hi << 32) | lo)
                    off.append(self._file_pos + pos + 28)
                    cap.append(caplen)
                    wire.append(wirelen)
                    sec_l.append(sec)
                    nsec_l.append(nsec)
                    link_l.append(self._links[iface])
                    self._start = pos + total
                    continue
            elif btype == 3:                 # simple packet block: interface 0, the time of the frame before
                if self._links and total >= 16:
                    wirelen = struct.unpack_from(e + "I", buf, pos + 8)[0]
                    caplen = min(wirelen, total - 16)
                    if self._snaplens[0]:
                        caplen = min(caplen, self._snaplens[0])
                    off.append(self._file_pos + pos + 12)
                    cap.append(caplen)
                    wire.append(wirelen)
                    sec_l.append(sec_l[-1] if sec_l else self._last_ts[0])
                    nsec_l.append(nsec_l[-1] if nsec_l else self._last_ts[1])
                    link_l.append(self._links[0])
                    self._start = pos + total
                    continue
            self._other_block(btype, total)
            self._start = pos + total
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


def _columns(n: int) -> tuple:
    """Empty batch columns for ``n`` frames: off, caplen, wirelen, sec, nsec (int64), link (int32)."""
    return (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int32))


def _tables(links, tsres, tsoff, snaplens) -> tuple:
    """A pcapng section's interfaces as :func:`flowlog.core.fast.pcapng.walk_pcapng` takes them."""
    return (np.array(links, np.int32), np.array([b for b, _ in tsres], np.int64),
            np.array([x for _, x in tsres], np.int64), np.array(tsoff, np.int64), np.array(snaplens, np.int64))


def _pending_block(carry: bytes, big: bool) -> int:
    """The length of the pcapng block ``carry`` starts with, when known and possible; else 0."""
    if len(carry) < 12:
        return 0
    order = "big" if big else "little"
    if carry[:4] == b"\x0a\x0d\x0d\x0a":
        if len(carry) < 16 or carry[8:12] not in (b"\x1a\x2b\x3c\x4d", b"\x4d\x3c\x2b\x1a"):
            return 0
        order = "big" if carry[8:12] == b"\x1a\x2b\x3c\x4d" else "little"
    total = int.from_bytes(carry[4:8], order)
    return total if 12 <= total <= MAX_RECORD else 0


def _block_events(path: str, body: memoryview, btype: int, total: int, e: str, interfaces: int,
                  offset: int) -> list[tuple]:
    """What a whole pcapng block that is not a good packet block means, for either walk.

    ``body``: the block between its length fields; ``interfaces``: how many the section
    has described; ``offset``: the block's file offset. Returns ``("damaged", message)``
    and ``("interface", name or None, linktype, (10 or 2, exponent), if_tsoffset, snaplen)``
    events, in order; other blocks (statistics, name resolution, custom...) mean nothing.
    """
    try:
        if btype == 6 or btype == 2:   # enhanced packet block, obsolete packet block
            if btype == 6:
                iface, _hi, _lo, caplen, _wirelen = struct.unpack_from(e + "IIIII", body, 0)
            else:
                iface, _drops, _hi, _lo, caplen, _wirelen = struct.unpack_from(e + "HHIIII", body, 0)
            if iface >= interfaces:
                return [("damaged", f"{path}: packet at byte {offset} names interface {iface}, which the file "
                                    f"never described; frame skipped")]
            if caplen > len(body) - 20:
                return [("damaged", f"{path}: packet at byte {offset} claims {caplen} captured bytes in a "
                                    f"{total}-byte block; frame skipped")]
            raise AssertionError(f"{path}: the good packet block at byte {offset} was not taken")
        if btype == 3:                 # simple packet block: interface 0, no timestamp
            if not interfaces:
                return [("damaged", f"{path}: simple packet block before any interface; frame skipped")]
            struct.unpack_from(e + "I", body, 0)
            raise AssertionError(f"{path}: the good packet block at byte {offset} was not taken")
        if btype == 1:
            return [_interface(path, body, e, offset)]
    except struct.error:
        return [("damaged", f"{path}: block at byte {offset} is too short for its type; skipped")]
    return []


def _interface(path: str, body: memoryview, e: str, offset: int) -> tuple:
    """An interface description block's event (see :func:`_block_events`)."""
    if len(body) < 8:
        return ("damaged", f"{path}: interface description block too short at byte {offset}")
    linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", body, 0)
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
    return ("interface", name, linktype, tsres, tsoff, snaplen)


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
