"""The ``stdout`` sink: records on standard output, in any of the core's formats."""

from __future__ import annotations

import os
import sys

from flowlog.core.api import Sink
from flowlog.core.errors import OutputClosed
from flowlog.core.formats import Formatter
from flowlog.core.hookspecs import hookimpl


@hookimpl
def register_sinks(register):
    register(StdoutSink)


class StdoutSink(Sink):
    """Records on standard output (text, json, csv or table)."""

    scheme = "stdout"
    description = "records on standard output (text, json, csv, table)"

    def open(self) -> None:
        self.formatter = Formatter(self.options.format, self.options.fields, self.options.header)
        self._out(self.formatter.start())

    def write(self, records) -> None:
        self._out(self.formatter.lines(records))

    def write_batch(self, batch) -> None:
        chunks = self.formatter.render(batch)
        if chunks is None:
            self.write(batch.records())
            return
        try:
            sys.stdout.flush()
            for data in chunks:
                sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            _closed()

    def close(self) -> None:
        self._out(self.formatter.finish())

    @staticmethod
    def _out(lines) -> None:
        if not lines:
            return
        try:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            _closed()


def _closed():
    """The reader is gone (| head): point stdout at /dev/null so that the interpreter's
    own flush at exit stays quiet, and end the run."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise OutputClosed("output closed") from None
