"""A stopped live run (signal, --duration) still counts what its sources had already captured."""

from __future__ import annotations

import time

import numpy as np

from flowlog.core import synth
from flowlog.core.api import ListSink, Source
from flowlog.core.frames import FrameBatch
from flowlog.core.run import Run, RunOptions
from flowlog.core.uri import URI


class Captured(Source):
    """A live source whose kernel buffer holds three frames when the run stops."""

    scheme = "captured"
    live = True

    def open(self, ctx):
        super().open(ctx)
        self.link = ctx.add_link("eth9", 1)
        self.drained = False

    def batches(self):
        while True:
            time.sleep(0.02)
            yield FrameBatch.empty()

    def drain(self):
        self.drained = True
        now = int(time.time())
        frames = [synth.packet("10.0.0.1", "10.0.0.2", 17, 1000, 53, size=100) for _ in range(3)]
        buf = np.frombuffer(b"".join(frames), np.uint8)
        n = len(frames)
        caplen = np.array([len(f) for f in frames], np.int64)
        off = np.concatenate([[0], np.cumsum(caplen)[:-1]]).astype(np.int64)
        yield FrameBatch(buf, off, caplen, caplen.copy(), np.full(n, now, np.int64), np.zeros(n, np.int64),
                         np.full(n, self.link, np.int32))


def _run(**options):
    source = Captured(URI.parse("captured:eth9"))
    sink = ListSink()
    run = Run([source], [sink], RunOptions(compiled=False, **options))
    return run, source, sink


def _packets(sink):
    return sum(r.packets for r in sink.records if r.log_status == "OK")


def test_duration_stop_takes_what_was_captured():
    run, source, sink = _run(duration=0.2)
    result = run.run()
    assert result.interrupted and source.drained
    assert _packets(sink) == 3 and result.stats.ip_packets == 3


def test_signal_stop_takes_what_was_captured():
    import threading

    run, source, sink = _run()
    threading.Timer(0.2, run.stop).start()
    result = run.run()
    assert result.interrupted and source.drained and _packets(sink) == 3


def test_count_reached_does_not_drain():
    run, source, sink = _run(count=1, duration=5)
    # with -c, the run ends when the count is reached; a source with nothing to give never reaches
    # it, and --duration ends the run (then the drain's frames count up to the limit)
    result = run.run()
    assert source.drained and _packets(sink) == 1 and result.stats.frames == 1
