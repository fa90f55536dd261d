"""The ``pcap`` source: capture files (pcap, pcapng, compressed), several files, globs and directories.

``pcap:trace.pcap``, ``pcap:/var/spool/ring/``, ``pcap:'/var/spool/ring/*.pcap*'``. Several
files are read in capture-time order as one stream; each file's interfaces keep their own
interface-id (the pcapng interface name, else the file's stem).
"""

from __future__ import annotations

import glob
import os

from flowlog.core.api import Source, SourceContext
from flowlog.core.capfile import CaptureFile, sniff
from flowlog.core.errors import SourceError
from flowlog.core.hookspecs import hookimpl
from flowlog.core.merge import merge


@hookimpl
def register_sources(register):
    register(PcapSource)


def expand(spec: str, ctx_warn=None) -> list[str]:
    """The capture files a path, glob or directory names (checked by magic number)."""
    if os.path.isdir(spec):
        names = sorted(os.path.join(spec, n) for n in os.listdir(spec))
        files = [n for n in names if os.path.isfile(n)]
        picked = _captures(files, ctx_warn)
        if not picked:
            raise SourceError(f"{spec}: no capture files in this directory")
        return picked
    if glob.has_magic(spec) and not os.path.exists(spec):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise SourceError(f"{spec}: no file matches")
        picked = _captures(files, ctx_warn)
        if not picked:
            raise SourceError(f"{spec}: no capture files match")
        return picked
    sniff(spec)   # raises a clear error for a missing, unreadable or non-capture file
    return [spec]


def _captures(files: list[str], warn) -> list[str]:
    picked = []
    for f in files:
        try:
            sniff(f)
        except SourceError as e:
            if warn:
                warn(f"{e}; skipped")
            continue
        picked.append(f)
    return picked


class PcapSource(Source):
    """Capture files: pcap and pcapng (told by magic number), gzip/bzip2/xz, globs and directories."""

    scheme = "pcap"
    description = "capture files (pcap, pcapng; gzip/bzip2/xz; globs, directories)"

    def __init__(self, uri, options=None):
        super().__init__(uri, options)
        self.spec = uri.rest[2:] if uri.rest.startswith("//") else uri.rest
        if not self.spec:
            raise SourceError(f"{uri}: give a file, glob or directory, e.g. pcap:trace.pcap")
        self._files: list[tuple[tuple[int, int], str]] = []
        self._done = 0
        self._current: list[CaptureFile] = []

    def open(self, ctx: SourceContext) -> None:
        super().open(ctx)
        if self.options.get("follow"):
            from flowlog.core.follow import FileRing

            # a ring being written: read as it grows, windows close on the wall clock
            self.live = True
            self.applies_filter = True            # the ring filters before it notes positions
            self._ring = FileRing(self.spec, ctx, self.options.get("checkpoint"))
            return
        for path in expand(self.spec, ctx.warn):
            cf = CaptureFile(path, ctx, compiled=False)
            first = cf.first_time()
            self._files.append((first, path))

    _ring = None

    def size_hint(self) -> int | None:
        if self._ring is not None:
            return None
        return sum(os.path.getsize(p) for _, p in self._files)

    def progress(self) -> int:
        return self._done + sum(cf.progress() for cf in self._current)

    def batches(self):
        if self._ring is not None:
            return self._ring.batches()
        if len(self._files) == 1:
            return self._read(self._files[0][1])
        return merge([(first, (lambda p=path: self._read(p))) for first, path in self._files])

    def _read(self, path: str):
        cf = CaptureFile(path, self.ctx, compiled=self.ctx.compiled)
        self._current.append(cf)
        try:
            yield from cf.batches()
        finally:
            self._current.remove(cf)
            self._done += cf.size
            if cf.normalised_timestamps:
                self.ctx.warn(f"{path}: {cf.normalised_timestamps} frame(s) whose timestamp fraction is a "
                              f"second or more (carried into the seconds)")

    def commit(self, emitted, horizon, consumed=None) -> None:
        if self._ring is not None:
            self._ring.commit(emitted, horizon, consumed)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
