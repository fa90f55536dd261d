"""The ``file`` sink: records appended to one file, or one file per window and interface in a directory.

* ``file:PATH``: every emission is appended to PATH (created if need be; the header line of
  the format is written only to a new, empty file) and fsync'd.
* ``file:DIR/`` (a path ending in ``/``, or an existing directory): each window's records of
  each interface go to a file of their own, with the format's header line, named
  ``ACCOUNT_INTERFACE_YYYYMMDDTHHMMSSZ_START-END.log`` (``-N`` before the extension when a
  window is written again, after late packets: a file is never overwritten). Each file is
  written to a hidden temporary name, fsync'd, then linked into place, so a program watching
  the directory never reads half a file.
* ``?gzip=1`` compresses (``.gz``; appended emissions are gzip members of one file).

The sink is synchronous: when ``write`` returns, the records are on disk.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flowlog.core.api import Sink
from flowlog.core.delivery import group_records
from flowlog.core.errors import ConfigError, SinkError
from flowlog.core.formats import Formatter
from flowlog.core.hookspecs import hookimpl
from flowlog.core.spool import write_synced

#: File name extension by output format.
EXTENSIONS = {"text": "log", "json": "jsonl", "csv": "csv", "table": "txt"}
_UNSAFE = re.compile(r"[^A-Za-z0-9.@+=-]+")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@hookimpl
def register_sinks(register):
    register(FileSink)


def _flag(uri, name: str) -> bool:
    value = uri.query.get(name, "0").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{uri}: {name}={value!r}: expected 1 or 0")


def file_name(account_id: str | None, interface_id: str, start: int, end: int, fmt: str = "text",
              gzipped: bool = False, n: int = 0) -> str:
    """The name of a window's file: ``ACCOUNT_INTERFACE_YYYYMMDDTHHMMSSZ_START-END[-N].EXT[.gz]``."""
    account = _UNSAFE.sub("-", account_id or "-").strip("-") or "noaccount"
    iface = _UNSAFE.sub("-", interface_id or "-").strip("-") or "-"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start))
    return (f"{account}_{iface}_{stamp}_{start}-{end}{f'-{n}' if n else ''}.{EXTENSIONS.get(fmt, 'log')}"
            f"{'.gz' if gzipped else ''}")


class FileSink(Sink):
    """Records appended to a file, or one file per window and interface in a directory."""

    scheme = "file"
    description = "records in a file (file:PATH), or a file per window and interface (file:DIR/)"

    def __init__(self, uri, options):
        super().__init__(uri, options)
        parts = urlsplit(uri.text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{uri}: a file: URI names a local path (file:/var/log/flowlog/ or "
                              f"file:///var/log/flowlog/), not a host")
        unknown = sorted(set(uri.query) - {"gzip"})
        if unknown:
            raise ConfigError(f"{uri}: unknown setting {', '.join(unknown)} (file: takes gzip=1)")
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"{uri}: give a path, e.g. file:/var/log/flowlog/records.log, or a directory "
                              f"ending in /, e.g. file:/var/log/flowlog/")
        self.gzip = _flag(uri, "gzip")
        self.directory = path.endswith("/") or os.path.isdir(os.path.expanduser(path))
        self.path = Path(os.path.expanduser(path))
        self.written: list[Path] = []
        self._file = None

    def open(self) -> None:
        fmt, fields = self.options.format, self.options.fields
        self.formatter = Formatter(fmt, fields, self.options.header)     # checks the format
        if self.directory:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                if not os.access(self.path, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, "Permission denied")
            except OSError as e:
                raise SinkError(f"file:{self.path}/: {e.strerror or e}") from None
            return
        if self.path.is_dir():
            raise SinkError(f"file:{self.path}: is a directory (end the path with / for a file per window)")
        try:
            self._file = open(self.path, "ab")
        except OSError as e:
            raise SinkError(f"file:{self.path}: {e.strerror or e}") from None
        if self._file.tell() == 0:
            self._append(self.formatter.start())

    # -- one file, appended ------------------------------------------------------------------------
    def _append(self, lines: list[str]) -> None:
        if lines:
            self._append_bytes(("\n".join(lines) + "\n").encode())

    def _append_bytes(self, data: bytes) -> None:
        if self.gzip:
            data = gzip.compress(data, mtime=0)
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise SinkError(f"file:{self.path}: {e.strerror or e}") from None

    def write_batch(self, batch) -> None:
        if self._file is not None:
            chunks = self.formatter.render(batch)
            if chunks is not None:
                self._append_bytes(b"".join(bytes(c) for c in chunks))
                return
        self.write(batch.records())

    def write(self, records) -> None:
        if not records:
            return
        if self._file is not None:
            self._append(self.formatter.lines(records))
            return
        window = int(getattr(self.options, "window", 60) or 60)
        for (start, end, iface), group in group_records(records, window):
            f = Formatter(self.options.format, self.options.fields, header=True)
            lines = f.start() + f.lines(group) + f.finish()
            data = ("\n".join(lines) + "\n").encode()
            name = file_name(group[0].account_id, iface, start, end, self.options.format, self.gzip)
            self.written.append(self._publish(name, data, start, end, group[0].account_id, iface))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise SinkError(f"file:{self.path}/: {e.strerror or e}") from None

    # -- a file per window and interface -----------------------------------------------------------
    def _publish(self, name: str, data: bytes, start: int, end: int, account, iface) -> Path:
        """Write ``data`` under a hidden name, fsync it, and link it to the first free name: no file
        is ever overwritten, and no reader sees a partial one."""
        if self.gzip:
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as z:
                z.write(data)
            data = buf.getvalue()
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        try:
            write_synced(tmp, data, 0o644)
            n = 0
            while True:
                final = self.path / (name if n == 0 else
                                     file_name(account, iface, start, end, self.options.format, self.gzip, n))
                try:
                    os.link(tmp, final)
                    break
                except FileExistsError:
                    n += 1
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    if final.exists():             # a file system without hard links: check, then rename
                        n += 1
                        continue
                    os.rename(tmp, final)
                    return final
            os.unlink(tmp)
            return final
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise SinkError(f"file:{self.path}/: {e.strerror or e}") from None

    def close(self) -> None:
        if self._file is not None:
            self._append(self.formatter.finish())
            self._file.close()
            self._file = None
