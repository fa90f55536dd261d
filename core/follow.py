"""Following a ring of capture files as another program writes and rotates it.

``tcpdump -C/-G -W`` and ``dumpcap -b`` write a capture as a series of files in one
directory, start a new file when one is big or old enough, and (with a file limit)
overwrite or delete the oldest. :class:`FileRing` reads such a ring as one stream: files in
the order of their first packet, a file still being written up to its last complete record
and on as it grows, a file that the rotation rewrote recognised as new data.

A checkpoint (``--checkpoint PATH``) makes a restart exact. After the run has delivered
records, the ring writes down (atomically) where reading must resume: the earliest packet
whose records were not delivered yet, and up to where, and for which windows, packets were
delivered. A restarted flowlog reads from the resume point and skips what was delivered
before, so no packet is counted twice and none is missed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .api import SourceContext
from .capfile import CaptureFile
from .errors import SourceError
from .frames import FrameBatch

#: how long the ring waits between looks at files that have not grown (seconds)
POLL_INTERVAL = 0.1
CHECKPOINT_VERSION = 1


def _signature(path: str) -> str | None:
    """Identity of a file's content: its first 40 bytes (None while shorter).

    For classic pcap that is the file header and the first record's header (its time and
    lengths): bytes that do not change once written, and that differ when a rotation rewrites
    the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(40)
    except OSError:
        return None
    if len(head) < 40:
        return None
    return hashlib.sha1(head).hexdigest()[:16]


@dataclass
class _File:
    path: str
    signature: str
    order: int                   # position in the stream: files read earlier have lower numbers
    reader: CaptureFile | None = None


class FileRing:
    """The frames of a directory (or glob) of rotating capture files, as they are written."""

    def __init__(self, spec: str, ctx: SourceContext, checkpoint: str | None = None):
        self.spec = spec
        # one capture, one interface: the ring's name, unless the files name their interfaces
        base = spec.rstrip("/") if os.path.isdir(spec) else os.path.dirname(spec) or "."
        self.name = os.path.basename(os.path.abspath(base)) or "ring"
        self.ctx = ctx
        self.checkpoint_path = checkpoint
        self._seen: dict[tuple[str, str], _File] = {}
        self._order = 0
        self._current: _File | None = None
        self._stop = False
        # per window start: the earliest position of a frame in it not yet delivered
        self._window_first: dict[int, tuple[int, int]] = {}
        self._last_pos: np.ndarray | None = None      # positions of the last batch's frames
        self._last_file: _File | None = None
        self._last_ws: np.ndarray | None = None
        self._next_pos: tuple[int, int] | None = None  # position after the last frame handed on
        self._resume = None
        self._filter = None
        if ctx.bpf_filter:
            from .bpf import BpfFilter

            # filtered here, before positions are noted, so that checkpoints count what the run counts
            self._filter = BpfFilter(ctx.bpf_filter, ctx.snaplen)
        if not (os.path.isdir(spec) or glob.has_magic(spec)):
            raise SourceError(f"{spec}: --follow takes a directory or a glob of capture files")
        if checkpoint:
            self._load_checkpoint()

    # -- files -------------------------------------------------------------------------
    def _candidates(self) -> list[str]:
        if os.path.isdir(self.spec):
            names = [os.path.join(self.spec, n) for n in os.listdir(self.spec)]
        else:
            names = glob.glob(self.spec)
        out = []
        for n in names:
            if n == self.checkpoint_path or n.endswith((".tmp", ".json")) or not os.path.isfile(n):
                continue
            out.append(n)
        return out

    def _first_time(self, path: str) -> tuple[int, int] | None:
        try:
            cf = CaptureFile(path, SourceContext(), compiled=False, buffer_size=1 << 16)
        except SourceError:
            return None
        t = cf.first_time()
        return None if t == (-1, 0) else t

    def _next_file(self) -> _File | None:
        """The oldest file not read yet whose first record is written (by its first packet's time)."""
        ready = []
        for path in self._candidates():
            sig = _signature(path)
            if sig is None or (path, sig) in self._seen:
                continue
            t = self._first_time(path)
            if t is None:
                continue
            ready.append((t, path, sig))
        if not ready:
            return None
        ready.sort()
        t, path, sig = ready[0]
        f = _File(path, sig, self._order)
        self._order += 1
        self._seen[(path, sig)] = f
        return f

    def _open(self, f: _File) -> bool:
        try:
            f.reader = CaptureFile(f.path, self.ctx, name=self.name, compiled=False)
        except SourceError as e:
            self.ctx.warn(f"{e}; skipped")
            return False
        f.reader.follow = True
        return True

    def _rewritten(self, f: _File) -> bool:
        """The rotation overwrote the file we are reading (same name, new content, or shorter)."""
        try:
            size = os.path.getsize(f.path)
        except OSError:
            return True
        return size < f.reader.read_position() or _signature(f.path) != f.signature

    # -- reading -------------------------------------------------------------------------
    def _fresh(self, f: _File) -> Iterator[FrameBatch]:
        """The batches of the records written to ``f`` since the last look, positions noted."""
        for batch in f.reader.poll():
            batch = self._positions(f, batch)
            if len(batch):
                yield batch

    def _leave(self, f: _File) -> None:
        f.reader.close()
        self._current = None

    def batches(self) -> Iterator[FrameBatch]:
        idle_since = time.monotonic()
        while not self._stop:
            f = self._current
            if f is None:
                f = self._next_file()
                if f is None or not self._open(f):
                    yield FrameBatch.empty()
                    time.sleep(POLL_INTERVAL)
                    continue
                self._current = f
            got = False
            for batch in self._fresh(f):
                got = True
                yield batch
            if got:
                idle_since = time.monotonic()
                continue
            if f.reader.failed:
                self._leave(f)
                continue
            # nothing new in this file: a newer file means the writer has moved on
            if self._rewritten(f):
                self.ctx.warn(f"{f.path}: overwritten by the rotation before it was read to its end; "
                              f"frames written after byte {f.reader.read_position()} were lost")
                self._leave(f)
                continue
            newer = self._next_file()
            if newer is not None:
                yield from self._fresh(f)        # what the writer may have added last
                tail = os.path.getsize(f.path) - f.reader.read_position()
                if tail > 0:
                    self.ctx.damaged(f"{f.path}: {tail} bytes at the end are not a whole record "
                                     f"(the writer moved on to {os.path.basename(newer.path)})")
                self._leave(f)
                if self._open(newer):
                    self._current = newer
                continue
            yield FrameBatch.empty()
            time.sleep(POLL_INTERVAL if time.monotonic() - idle_since > 1 else POLL_INTERVAL / 4)

    def _positions(self, f: _File, batch: FrameBatch) -> FrameBatch:
        """Note where the batch's frames are; on a resumed run, drop what was delivered before."""
        if not len(batch):
            return batch
        offsets = batch.off + f.reader.batch_base
        if self._filter is not None:
            linktypes = np.array([link.linktype for link in self.ctx.links], np.int64)
            keep = self._filter.mask(batch, linktypes)
            batch, offsets = batch.take(keep), offsets[keep]
        W = self.ctx.window
        ws = np.where(batch.sec >= 0, batch.sec - batch.sec % W, -1)
        if self._resume is not None:
            keep = self._skip_delivered(f, offsets, ws)
            if not keep.all():
                batch = batch.take(keep)
                offsets, ws = offsets[keep], ws[keep]
        self._last_file = f
        self._last_pos = offsets
        self._last_ws = ws
        if len(batch):
            self._next_pos = (f.order, int(offsets[-1]) + int(batch.caplen[-1]))
            for w in np.unique(ws).tolist():
                first = (f.order, int(offsets[ws == w][0]))
                if w not in self._window_first or first < self._window_first[w]:
                    self._window_first[w] = first
        return batch

    # -- checkpoint ----------------------------------------------------------------------
    def _load_checkpoint(self) -> None:
        path = self.checkpoint_path
        if not os.path.exists(path):
            return
        try:
            with open(path) as fh:
                cp = json.load(fh)
            if cp.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"version {cp.get('version')}")
            if int(cp["window"]) != self.ctx.window:
                raise SourceError(f"{path}: the checkpoint was written with --window {cp['window']}; "
                                  f"resume with the same window, or remove it to start afresh")
            self._resume = cp
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise SourceError(f"{path}: not a flowlog checkpoint ({e}); remove it to start afresh") from None
        candidates = {(p, _signature(p)) for p in self._candidates()}
        marks = [m for m in (cp["resume"], cp["delivered"]) if m]
        known = {(m["path"], m["signature"]) for m in marks}
        if marks and not known & candidates:
            self.ctx.warn(f"{path}: the files it points into were overwritten since; frames in between are lost")
        # files whose first packet is older than the resume file's are finished
        first_of = {}
        for key in candidates:
            t = self._first_time(key[0])
            if t is not None and key[1] is not None:
                first_of[key] = t
        anchor = None
        if cp["resume"] and (cp["resume"]["path"], cp["resume"]["signature"]) in first_of:
            anchor = (cp["resume"]["path"], cp["resume"]["signature"])
        elif cp["delivered"] and (cp["delivered"]["path"], cp["delivered"]["signature"]) in first_of:
            anchor = (cp["delivered"]["path"], cp["delivered"]["signature"])
        if anchor is not None:
            for key, t in first_of.items():
                if t < first_of[anchor]:
                    self._seen[key] = _File(key[0], key[1], -1)      # read before the stop
        self._resume_first = first_of

    def _skip_delivered(self, f: _File, offsets: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """On a resumed run: False for frames before the resume point, or delivered before the stop."""
        cp = self._resume
        keep = np.ones(len(offsets), np.bool_)
        here = (f.path, f.signature)
        resume, delivered = cp["resume"], cp["delivered"]
        horizon = cp["horizon"]
        t_here = self._resume_first.get(here)

        def where(mark):
            """-1: the file comes before the mark's file, 0: same file, 1: after."""
            key = (mark["path"], mark["signature"])
            if key == here:
                return 0
            t_mark = self._resume_first.get(key)
            if t_mark is None or t_here is None:
                return 1
            return -1 if t_here < t_mark else 1

        if resume is not None:
            w = where(resume)
            if w < 0:
                keep[:] = False
            elif w == 0:
                keep &= offsets >= resume["offset"]
        if delivered is not None and horizon is not None:
            w = where(delivered)
            before = np.ones(len(offsets), np.bool_) if w < 0 else (
                offsets < delivered["offset"] if w == 0 else np.zeros(len(offsets), np.bool_))
            keep &= ~(before & (ws < horizon))
        return keep

    def _mark(self, pos: tuple[int, int] | None) -> dict | None:
        if pos is None:
            return None
        for f in self._seen.values():
            if f.order == pos[0]:
                return {"path": f.path, "signature": f.signature, "offset": pos[1]}
        return None

    def commit(self, emitted: int | None, horizon: int | None, consumed: int | None = None) -> None:
        """Write the checkpoint after the run delivered records (see Source.commit)."""
        if not self.checkpoint_path:
            return
        if consumed is not None and self._last_pos is not None and consumed < len(self._last_pos):
            # the run stopped inside the last batch (-c): what it did not take is read again next time
            self._next_pos = (self._last_file.order, int(self._last_pos[consumed]))
        if emitted is None:                       # the end: everything read was delivered
            delivered = resume = self._next_pos
            horizon = None
            self._window_first.clear()
        else:
            if self._last_pos is None:
                return
            n = len(self._last_pos)
            f = self._last_file
            delivered = (f.order, int(self._last_pos[emitted])) if emitted < n else self._next_pos
            for w in [w for w in self._window_first if w < horizon]:
                del self._window_first[w]
            starts = list(self._window_first.values())
            late = self._last_ws[emitted:] < horizon      # read after the emission, for written windows
            if late.any():
                starts.append((f.order, int(self._last_pos[emitted:][late][0])))
            resume = min(starts) if starts else self._next_pos
            if resume is not None and delivered is not None and resume > delivered:
                resume = delivered
        cp = {"version": CHECKPOINT_VERSION, "window": self.ctx.window, "horizon": horizon,
              "resume": self._mark(resume), "delivered": self._mark(delivered)}
        tmp = self.checkpoint_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(cp, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.checkpoint_path)
        d = os.open(os.path.dirname(os.path.abspath(self.checkpoint_path)), os.O_RDONLY)
        try:
            os.fsync(d)
        finally:
            os.close(d)

    def close(self) -> None:
        self._stop = True
        if self._current is not None and self._current.reader is not None:
            self._current.reader.close()
