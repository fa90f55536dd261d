"""The on-disk spool of the delivery layer: batches that a network sink has not confirmed yet.

Layout, under the spool root (``--spool DIR``; see :func:`default_root`)::

    ROOT/
      es-https-host-9200-flowlogs-3f2a9c01d4/     one directory per sink (readable prefix + hash)
        sink.json                                 the sink's URI (never a secret) and its options
        lock                                      flock(2)ed by the one process that sends from here
        00001732512345123456.batch                one file per batch, named in spool order
        00001732512345123456.0.batch              ... the halves of a batch that had to be split
        rejected/00001732512345123456.batch       items the server refused for good, with the reasons

A batch file is ``flowlog-spool 1``, a line of JSON (the batch's metadata, the item sizes and a
CRC-32 of the items), then the items' bytes back to back. Every file is written to a temporary
name, fsync'd, renamed into place, and the directory fsync'd: after a crash a batch is either
wholly there or not there at all, and a temporary file left over belongs to an emission that
was never acknowledged.

This module does only files; :mod:`flowlog.core.delivery` decides what goes in and out.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, SinkError
from .uri import redact

#: Environment variable naming the spool root (``--spool`` overrides it).
SPOOL_ENV = "FLOWLOG_SPOOL"
MAGIC = b"flowlog-spool 1\n"
INFO = "sink.json"
REJECTED = "rejected"
#: Default bound of one sink's spool (``--spool-max``).
DEFAULT_MAX = 1 << 30
FULL_POLICIES = ("wait", "drop-oldest")

_NAME = re.compile(r"^(\d{17})((?:\.[0-9a-z]+)*)\.batch$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_root() -> Path:
    """``$FLOWLOG_SPOOL``, else ``$XDG_STATE_HOME/flowlog/spool``, else ``~/.local/state/flowlog/spool``."""
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME")
    if state and os.path.isabs(state):
        return Path(state) / "flowlog" / "spool"
    return Path.home() / ".local" / "state" / "flowlog" / "spool"


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``64K``, ``1048576`` (units are powers of 1024; a trailing B or iB is allowed)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"{text!r} is not a size: expected a number with an optional unit K, M, G or T "
                          f"(for example 500M or 2G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise ConfigError(f"size {text!r} must be more than 0 bytes")
    return value


def dir_name(key: str) -> str:
    """The directory of a sink's spool: a readable prefix of its key (any credential in it
    redacted) and a short hash of the whole key."""
    prefix = re.sub(r"[^A-Za-z0-9.-]+", "-", redact(key)).strip("-.")[:48].rstrip("-.") or "sink"
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class CorruptBatch(Exception):
    """A batch file that cannot be read back (a disk error, or a hand edit)."""


def write_synced(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new (or truncated) file and fsync it: on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolBusy(SinkError):
    """Another process (or another sink of this run) sends from the same spool directory."""


@dataclass(eq=False)
class Entry:
    """One batch file waiting in a sink's spool."""

    name: str
    seq: int
    suffix: str          # "" or the split/rewrite path, e.g. ".0.r1"
    size: int            # bytes of the file
    batch_id: str
    start: int
    end: int
    interface_id: str
    account_id: str | None
    records: int
    #: set when the batch was removed while the sender held it (drop-oldest, flowlog spool drop)
    gone: bool = False

    @property
    def order(self) -> tuple:
        return (self.seq, tuple(self.suffix.split(".")[1:]))


@dataclass
class Rejected:
    batches: int = 0
    records: int = 0
    bytes: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(header: dict, items: list[bytes]) -> bytes:
    payload = b"".join(items)
    head = dict(header, sizes=[len(i) for i in items], crc32=zlib.crc32(payload))
    return MAGIC + json.dumps(head, separators=(",", ":")).encode() + b"\n" + payload


def _read_header(f) -> dict:
    if f.read(len(MAGIC)) != MAGIC:
        raise CorruptBatch("not a flowlog spool file")
    line = f.readline()
    try:
        header = json.loads(line)
    except ValueError:
        raise CorruptBatch("unreadable header") from None
    if not isinstance(header, dict) or "sizes" not in header or "batch_id" not in header:
        raise CorruptBatch("incomplete header")
    return header


def read_batch(path: Path) -> tuple[dict, list[bytes]]:
    """The header and items of a batch file; :class:`CorruptBatch` if it does not check."""
    try:
        with open(path, "rb") as f:
            header = _read_header(f)
            payload = f.read()
    except OSError as e:
        raise CorruptBatch(e.strerror or str(e)) from None
    sizes = header["sizes"]
    if sum(sizes) != len(payload) or zlib.crc32(payload) != header.get("crc32"):
        raise CorruptBatch("its items do not match their checksum")
    items, at = [], 0
    for n in sizes:
        items.append(payload[at:at + n])
        at += n
    return header, items


class SinkSpool:
    """The spool directory of one sink, with an in-memory index of its batches in spool order.

    Safe for one writer thread (the run) and one sender thread: the index is guarded by a lock.
    """

    def __init__(self, root: Path | str, key: str | None = None, *, directory: Path | str | None = None):
        self.root = Path(root)
        self.path = Path(directory) if directory is not None else self.root / dir_name(key or "")
        self.key = key
        self.lock = threading.Lock()
        self.entries: list[Entry] = []
        self.bytes = 0
        self._last_seq = 0
        self._lock_fd: int | None = None

    # -- setting up ----------------------------------------------------------------------------
    def create(self, info: dict) -> None:
        """Make the directory (0700: records are private) and write ``sink.json``."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.path / REJECTED).mkdir(exist_ok=True, mode=0o700)
            self._write_file(self.path / INFO, json.dumps(info, indent=1, sort_keys=True).encode() + b"\n")
            _fsync_dir(self.path)
        except OSError as e:
            raise SinkError(f"spool {self.path}: {e.strerror or e}") from None

    def info(self) -> dict:
        try:
            return json.loads((self.path / INFO).read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the directory's lock for this process; SpoolBusy if someone else holds it."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolBusy(f"spool {self.path} is in use by another flowlog process (or the same sink "
                                f"is given twice); give this run its own --spool DIR") from None
            raise SinkError(f"spool {self.path}: {e.strerror or e}") from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> None:
        """Index the batches already in the directory (a restart): temporary files left over are
        removed (never renamed, so never acknowledged) and unreadable batches set aside in rejected/."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            names = []
        for name in names:
            path = self.path / name
            try:
                if name.startswith(".tmp-"):
                    os.unlink(path)
                elif _NAME.match(name):
                    with open(path, "rb") as f:
                        _read_header(f)
            except CorruptBatch as e:
                self._quarantine(name, str(e))
            except OSError:
                pass
        self.load_readonly()
        with self.lock:
            if self.entries:
                self._last_seq = max(self._last_seq, max(e.seq for e in self.entries))

    def load_readonly(self) -> None:
        """Index the batches without touching the directory (another process may be sending from it)."""
        entries = []
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            names = []
        for name in names:
            if not _NAME.match(name):
                continue
            try:
                with open(self.path / name, "rb") as f:
                    header = _read_header(f)
                entries.append(self._entry(name, header, os.path.getsize(self.path / name)))
            except (CorruptBatch, OSError):
                continue        # being replaced or removed by the sender right now, or damaged
        entries.sort(key=lambda e: e.order)
        with self.lock:
            self.entries = entries
            self.bytes = sum(e.size for e in entries)

    @staticmethod
    def _entry(name: str, header: dict, size: int) -> Entry:
        m = _NAME.match(name)
        return Entry(name, int(m.group(1)), m.group(2), size, header["batch_id"], int(header.get("start", 0)),
                     int(header.get("end", 0)), str(header.get("interface_id", "-")), header.get("account_id"),
                     int(header["records"] if "records" in header else len(header["sizes"])))

    # -- the index -------------------------------------------------------------------------------
    def head(self) -> Entry | None:
        with self.lock:
            return self.entries[0] if self.entries else None

    def records(self) -> int:
        with self.lock:
            return sum(e.records for e in self.entries)

    def next_seq(self) -> int:
        """A sequence number above every one used before, also across restarts (microseconds)."""
        seq = max(self._last_seq + 1, time.time_ns() // 1000)
        self._last_seq = seq
        return seq

    # -- writing ---------------------------------------------------------------------------------
    @staticmethod
    def _write_tmp(path: Path, data: bytes) -> Path:
        """``data`` in a temporary file next to ``path``, fsync'd; returns the temporary name."""
        tmp = path.with_name(f".tmp-{path.name}")
        write_synced(tmp, data, 0o600)
        return tmp

    def _write_file(self, path: Path, data: bytes) -> None:
        os.replace(self._write_tmp(path, data), path)

    def put(self, batches: list[tuple[dict, list[bytes]]]) -> list[Entry]:
        """Write new batches (``(header, items)``, header without a batch id) in one group commit.

        Each file is written and fsync'd, then all are renamed, then the directory is fsync'd
        once: when this returns, the batches survive a crash. Their batch ids are set here.
        """
        entries, done = [], []
        try:
            for header, items in batches:
                seq = self.next_seq()
                name = f"{seq:017d}.batch"
                header = dict(header, batch_id=f"{header['start']}-{_short(header['interface_id'])}-{seq}",
                              records=len(items))
                data = _encode(header, items)
                done.append((self._write_tmp(self.path / name, data), self.path / name))
                entries.append(self._entry(name, header, len(data)))
            for tmp, final in done:
                os.rename(tmp, final)
            _fsync_dir(self.path)
        except OSError as e:
            for tmp, final in done:
                for p in (tmp, final):
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
            raise SinkError(f"spool {self.path}: {e.strerror or e}") from None
        with self.lock:
            self.entries.extend(entries)
            self.bytes += sum(e.size for e in entries)
        return entries

    def replace(self, entry: Entry, parts: list[tuple[str, dict, list[bytes]]]) -> list[Entry]:
        """Put ``parts`` (``(suffix, header, items)``) where ``entry`` was, atomically for each file.

        The new files are in place before the old one goes: a crash in between leaves the
        items twice (sent twice at worst), never lost.
        """
        new = []
        for suffix, header, items in parts:
            name = f"{entry.seq:017d}{suffix}.batch"
            data = _encode(dict(header, records=len(items)), items)
            self._write_file(self.path / name, data)
            new.append(self._entry(name, dict(header, records=len(items)), len(data)))
        if entry.name not in {e.name for e in new}:
            self._unlink(entry.name)
        _fsync_dir(self.path)
        with self.lock:
            if entry in self.entries:
                i = self.entries.index(entry)
                self.entries[i:i + 1] = new
            else:                                   # dropped meanwhile: keep the new parts in order
                self.entries.extend(new)
                self.entries.sort(key=lambda e: e.order)
            self.bytes += sum(e.size for e in new) - (entry.size if not entry.gone else 0)
            entry.gone = True
        return new

    def remove(self, entry: Entry, sync: bool = True) -> None:
        """A batch confirmed by the sink (or dropped): its file goes."""
        with self.lock:
            if entry.gone:
                return
            entry.gone = True
            if entry in self.entries:
                self.entries.remove(entry)
            self.bytes -= entry.size
        self._unlink(entry.name)
        if sync:
            try:
                _fsync_dir(self.path)
            except OSError:
                pass

    def drop_oldest(self, need: int, limit: int, keep: Entry | None = None) -> tuple[int, int]:
        """Remove the oldest batches (never ``keep``, the one being sent) until ``need`` more bytes
        fit under ``limit``. Returns (batches, records) removed."""
        gone = []
        with self.lock:
            for e in list(self.entries):
                if self.bytes + need <= limit:
                    break
                if e is keep:
                    continue
                e.gone = True
                self.entries.remove(e)
                self.bytes -= e.size
                gone.append(e)
        for e in gone:
            self._unlink(e.name)
        if gone:
            _fsync_dir(self.path)
        return len(gone), sum(e.records for e in gone)

    def reject(self, entry: Entry, header: dict, items: list[bytes], reasons: dict[int, str]) -> None:
        """Keep refused items, with their reasons, in ``rejected/``: shown by ``flowlog spool``."""
        idx = sorted(reasons)
        head = dict(header, records=len(idx), reasons=[str(reasons[i])[:500] for i in idx],
                    rejected_at=int(time.time()))
        name = f"{entry.seq:017d}{entry.suffix}.{len(os.listdir(self.path / REJECTED)):x}.batch"
        (self.path / REJECTED).mkdir(exist_ok=True, mode=0o700)
        self._write_file(self.path / REJECTED / name, _encode(head, [items[i] for i in idx]))
        _fsync_dir(self.path / REJECTED)

    def _quarantine(self, name: str, reason: str) -> None:
        """A batch file that cannot be read goes to rejected/ as it is, with a note of why."""
        try:
            (self.path / REJECTED).mkdir(exist_ok=True, mode=0o700)
            os.replace(self.path / name, self.path / REJECTED / (name + ".corrupt"))
            (self.path / REJECTED / (name + ".corrupt.reason")).write_text(reason + "\n")
        except OSError:
            pass

    def quarantine(self, entry: Entry, reason: str) -> None:
        with self.lock:
            if entry in self.entries:
                self.entries.remove(entry)
                self.bytes -= entry.size
            entry.gone = True
        self._quarantine(entry.name, reason)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self.path / name)
        except FileNotFoundError:
            pass

    def read(self, entry: Entry) -> tuple[dict, list[bytes]]:
        return read_batch(self.path / entry.name)

    # -- what is waiting ------------------------------------------------------------------------
    def rejected(self) -> Rejected:
        out = Rejected()
        d = self.path / REJECTED
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        for name in names:
            if name.endswith(".reason"):
                continue
            out.batches += 1
            try:
                out.bytes += os.path.getsize(d / name)
                if name.endswith(".batch"):
                    with open(d / name, "rb") as f:
                        out.records += int(_read_header(f).get("records", 0))
            except (OSError, CorruptBatch, ValueError):
                pass
        return out

    def clear_rejected(self) -> Rejected:
        counted = self.rejected()
        d = self.path / REJECTED
        for name in os.listdir(d) if d.is_dir() else ():
            try:
                os.unlink(d / name)
            except OSError:
                pass
        return counted


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class SpoolDir:
    """A sink directory found under a spool root (for ``flowlog spool``)."""

    spool: SinkSpool
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spool.path.name

    @property
    def uri(self) -> str:
        return str(self.info.get("uri") or "?")


def scan(root: Path | str) -> list[SpoolDir]:
    """The sink directories under a spool root, each indexed (read-only: nothing is removed)."""
    root = Path(root)
    out = []
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"spool {root}: {e.strerror or e}") from None
    for name in names:
        path = root / name
        if not (path / INFO).is_file():
            continue
        sp = SinkSpool(root, directory=path)
        sp.load_readonly()
        out.append(SpoolDir(sp, sp.info()))
    return out


