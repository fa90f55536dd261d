"""The delivery layer: batching, spooling, retries and draining for every network sink.

A :class:`~flowlog.core.api.DeliverySink` says how one record becomes an item of bytes and
how one batch is sent; a :class:`Courier` wraps it and does the rest, so that the run sees
an ordinary :class:`~flowlog.core.api.Sink`:

* the records of each emission are split into batches of one window and interface each,
  capped by the sink's ``max_items`` and ``max_bytes``;
* the batches go to the sink's spool on disk (:mod:`flowlog.core.spool`) in one group commit
  before :meth:`Courier.write` returns: only then do the records count as accepted;
* a thread of the courier's own sends the spooled batches in order, one at a time, and
  removes a batch only when the sink's :class:`~flowlog.core.api.Answer` confirms it;
  ``RETRY`` backs off exponentially with full jitter (honouring ``retry_after``), ``SPLIT``
  halves the batch, ``FAIL`` stops this sink (its batches stay), items the server refused
  for good go to the spool's ``rejected/`` area;
* when the run ends, :func:`finish` drains every courier for up to ``drain_timeout``
  seconds, then says what stays in the spool.

Couriers are independent: a sink that is down or slow delays only itself.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .api import Answer, BatchMeta, DeliverySink, Sink, Verdict
from .errors import ConfigError, SinkError
from .spool import DEFAULT_MAX, FULL_POLICIES, MAGIC, CorruptBatch, Entry, SinkSpool, default_root
from .uri import SECRET_QUERY_KEYS, redact

#: Environment variables for the backoff between retries (seconds, floats): the first delay's
#: ceiling and the longest delay. Tests use short ones.
RETRY_BASE_ENV = "FLOWLOG_RETRY_BASE"
RETRY_MAX_ENV = "FLOWLOG_RETRY_MAX"
RETRY_BASE = 0.5
RETRY_MAX = 30.0


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a number of seconds") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={text!r}: expected a number of seconds, 0 or more")
    return value


@dataclass
class DeliveryOptions:
    """How the delivery layer keeps and sends batches (``--spool``, ``--spool-max``, ...)."""

    #: the spool root; None: :func:`flowlog.core.spool.default_root`
    spool: str | Path | None = None
    #: most bytes of waiting batches in one sink's spool
    spool_max: int = DEFAULT_MAX
    #: what a full spool does: "wait" (the run waits for room) or "drop-oldest"
    spool_full: str = "wait"
    #: seconds the end of a run waits for the sinks to take what is spooled (0: not at all)
    drain_timeout: float = 30.0
    #: backoff: None reads FLOWLOG_RETRY_BASE / FLOWLOG_RETRY_MAX, else 0.5 s and 30 s
    retry_base: float | None = None
    retry_max: float | None = None

    def check(self) -> None:
        if self.spool_full not in FULL_POLICIES:
            raise ConfigError(f"--spool-full is one of: {', '.join(FULL_POLICIES)}")
        if not self.spool_max >= 1:
            raise ConfigError("--spool-max must be more than 0 bytes")
        if not (self.drain_timeout >= 0 and math.isfinite(self.drain_timeout)):
            raise ConfigError("--drain-timeout must be 0 seconds or more")

    def root(self) -> Path:
        return Path(self.spool).expanduser() if self.spool else default_root()

    def backoff(self) -> tuple[float, float]:
        base = self.retry_base if self.retry_base is not None else _env_seconds(RETRY_BASE_ENV, RETRY_BASE)
        cap = self.retry_max if self.retry_max is not None else _env_seconds(RETRY_MAX_ENV, RETRY_MAX)
        return base, max(base, cap)


@dataclass
class DeliveryReport:
    """What one sink's delivery did in a run (``--stats``, the exit status). Holds no secret."""

    sink: str                   # the URI, redacted
    spool: str                  # the sink's spool directory
    delivered_batches: int = 0
    delivered_records: int = 0
    retries: int = 0
    #: batches from an earlier run found in the spool at the start
    resumed_batches: int = 0
    pending_batches: int = 0
    pending_records: int = 0
    #: records the server refused for good in this run (kept in the spool's rejected/ area)
    rejected_records: int = 0
    #: records not kept: the spool was full (drop-oldest, or a stopped sink), or could not be written
    dropped_records: int = 0
    failed: str | None = None

    @property
    def undelivered(self) -> bool:
        return bool(self.pending_records or self.pending_batches or self.rejected_records
                    or self.dropped_records or self.failed)


def window_of(record, window: int) -> tuple[int, int]:
    """The (start, end) of the window a record belongs to (a NODATA record may span several)."""
    start = record.start if record.start is not None else 0
    ws = start - start % window
    end = record.end if record.end is not None else ws + window
    return ws, max(ws + window, end)


def group_records(records: Sequence, window: int) -> list[tuple[tuple[int, int, str], list]]:
    """The records of an emission by (window start, window end, interface-id), in order of first appearance."""
    groups: dict[tuple[int, int, str], list] = {}
    for r in records:
        ws, we = window_of(r, window)
        key = (ws, we, r.interface_id)
        g = groups.get(key)
        if g is None:
            groups[key] = g = []
        g.append(r)
    return list(groups.items())


def _batch_size(items: list[bytes]) -> int:
    """About the size of a batch file (the bound of the spool is counted in these)."""
    return len(MAGIC) + 200 + sum(len(i) + 7 for i in items)


class Courier(Sink):
    """The delivery layer around one :class:`DeliverySink`: a plain Sink for the run."""

    def __init__(self, sink: DeliverySink, options: DeliveryOptions | None = None, *, window: int = 60,
                 warn: Callable[[str], None] | None = None, stopping: Callable[[], bool] | None = None,
                 directory: Path | str | None = None):
        super().__init__(sink.uri, sink.options)
        self.sink = sink
        self.scheme = sink.scheme
        self.description = sink.description
        self.opts = options or DeliveryOptions()
        self.opts.check()
        self.window = int(window)
        self.base, self.cap = self.opts.backoff()
        self._warn = warn or (lambda m: None)
        self._stopping = stopping or (lambda: False)
        self.name = redact(sink.uri.text)
        self.spool = SinkSpool(self.opts.root(), sink.spool_key(), directory=directory)
        self.report = DeliveryReport(self.name, str(self.spool.path))
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._in_flight: Entry | None = None
        self._next_try = 0.0
        self._streak = 0                    # failed attempts in a row
        self._attempts: dict[str, int] = {}
        self._said: set[str] = set()        # messages given once
        self._stop_seen: float | None = None
        self._opened = False

    # -- the run's side ----------------------------------------------------------------------------
    def open(self) -> None:
        self.sink.open()
        info = {"uri": self.name, "scheme": self.sink.scheme, "key": redact(self.sink.spool_key()),
                "window": self.window, "options": _options_info(self.sink.options)}
        self.spool.create(info)
        self.spool.acquire()
        self.spool.load()
        self.report.resumed_batches = len(self.spool.entries)
        self._opened = True
        self._thread = threading.Thread(target=self._run, name=f"flowlog-deliver-{self.sink.scheme}",
                                        daemon=True)
        self._thread.start()

    def write_batch(self, batch) -> None:
        self.write(batch.records())

    def write(self, records) -> None:
        """Spool the records of one emission; returns once they are on disk (or counted as dropped)."""
        if not records:
            return
        batches = self._batches(records)
        self._admit(batches)

    def _batches(self, records) -> list[tuple[dict, list[bytes]]]:
        out = []
        max_items = max(1, int(self.sink.max_items))
        max_bytes = max(1, int(self.sink.max_bytes))
        for (ws, we, iface), group in group_records(records, self.window):
            header = {"start": ws, "end": we, "interface_id": iface, "account_id": group[0].account_id}
            items: list[bytes] = []
            size = 0
            for r in group:
                try:
                    item = self.sink.encode(r)
                    if not isinstance(item, (bytes, bytearray)):
                        raise TypeError(f"encode() returned {type(item).__name__}, not bytes")
                except Exception as e:
                    self._bug("encode", e)
                    self.report.dropped_records += 1
                    continue
                if items and (len(items) >= max_items or size + len(item) > max_bytes):
                    out.append((header, items))
                    items, size = [], 0
                items.append(bytes(item))
                size += len(item)
            if items:
                out.append((header, items))
        return out

    def _admit(self, batches: list[tuple[dict, list[bytes]]]) -> None:
        """Spool ``batches`` within ``--spool-max``, by the ``--spool-full`` policy; one group commit
        for all of them unless the spool must make room in between."""
        limit = self.opts.spool_max
        ready: list[tuple[dict, list[bytes]]] = []
        reserved = 0
        for header, items in batches:
            size = _batch_size(items)
            why = None
            while self.spool.bytes + reserved + size > limit:
                if size > limit:
                    why = "a batch is larger than the spool may hold"
                    break
                if self.opts.spool_full == "drop-oldest":
                    with self._cv:
                        n, recs = self.spool.drop_oldest(reserved + size, limit, keep=self._in_flight)
                    if n:
                        self.report.dropped_records += recs
                        self._say_once("drop-oldest", f"warning: sink {self.name}: the spool is full (--spool-max "
                                                      f"{_size(limit)}): the oldest batches are dropped")
                        continue
                    if not ready:
                        why = "the spool is full"
                        break
                else:
                    why = self._cannot_wait()
                    if why is not None:
                        break
                    if not ready:
                        self._say_once("wait", f"warning: sink {self.name}: the spool is full (--spool-max "
                                               f"{_size(limit)}): the run waits for delivery to make room")
                        with self._cv:
                            self._cv.notify_all()
                            self._cv.wait(0.1)
                        continue
                self._commit(ready)         # room is made only among batches already written
                ready, reserved = [], 0
            if why is None:
                ready.append((header, items))
                reserved += size
            else:
                self.report.dropped_records += len(items)
                self._say_once("full-" + why, f"warning: sink {self.name}: records dropped: {why} "
                                              f"(--spool-max {_size(limit)})")
        if ready:
            self._commit(ready)

    def _cannot_wait(self) -> str | None:
        """Why a full spool cannot be waited out (policy "wait"), or None while delivery may make room."""
        if self.report.failed:
            return "the spool is full and the sink has stopped"
        if self._stopping():
            now = time.monotonic()
            if self._stop_seen is None:
                self._stop_seen = now
            if now - self._stop_seen >= self.opts.drain_timeout:
                return "the spool stayed full after the run was stopped"
        return None

    def _commit(self, batches: list[tuple[dict, list[bytes]]]) -> None:
        try:
            self.spool.put(batches)
        except SinkError as e:
            n = sum(len(items) for _, items in batches)
            self.report.dropped_records += n
            self._say_once("spool-error", f"warning: sink {self.name}: records dropped: cannot write the spool ({e})")
            return
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """Nothing more comes; the run then calls :meth:`drain` and :meth:`shut`."""

    def drain(self, deadline: float, abort: Callable[[], bool] | None = None) -> bool:
        """Wait until the spool is empty, the sink has failed, ``deadline`` (monotonic) passes, or
        ``abort()`` is true."""
        with self._cv:
            self._cv.notify_all()
            while True:
                if not self.spool.entries and self._in_flight is None:
                    return True
                if self.report.failed or (abort is not None and abort()):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.2))

    def shut(self, grace: float = 0.5) -> DeliveryReport:
        """Stop the sender (a request in flight gets ``grace`` seconds), close the sink, and report."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(grace)
            if not self._thread.is_alive():
                try:
                    self.sink.close()
                except Exception as e:          # a plugin's close failing must not hide the report
                    self._bug("close", e)
        if self._opened:
            self.spool.release()
        with self.spool.lock:
            self.report.pending_batches = len(self.spool.entries)
            self.report.pending_records = sum(e.records for e in self.spool.entries)
        return self.report

    # -- the sender thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closing:
                        return
                    entry = None if self.report.failed else self.spool.head()
                    wait = None
                    if entry is not None:
                        wait = self._next_try - time.monotonic()
                        if wait <= 0:
                            self._in_flight = entry
                            break
                    self._cv.notify_all()           # drain() watches for an empty spool
                    self._cv.wait(wait)
            try:
                self._send(entry)
            except Exception as e:                 # the spool itself failed (disk): back off and retry
                self._say_once("send-" + type(e).__name__,
                               f"warning: sink {self.name}: delivery error ({type(e).__name__}: {e}); retrying")
                self._backoff(None)
            finally:
                with self._cv:
                    self._in_flight = None
                    self._cv.notify_all()

    def _send(self, entry: Entry) -> None:
        try:
            header, items = self.spool.read(entry)
        except CorruptBatch as e:
            self.spool.quarantine(entry, str(e))
            self.report.rejected_records += entry.records
            self._say_once("corrupt", f"warning: sink {self.name}: a spooled batch could not be read ({e}); "
                                      f"it is kept in {self.spool.path / 'rejected'}")
            return
        attempt = self._attempts.get(entry.name, 0) + 1
        self._attempts[entry.name] = attempt
        meta = BatchMeta(batch_id=header["batch_id"], start=int(header["start"]), end=int(header["end"]),
                         interface_id=str(header["interface_id"]), account_id=header.get("account_id"),
                         records=len(items), attempt=attempt)
        try:
            answer = self.sink.send(items, meta)
            if not isinstance(answer, Answer):
                raise TypeError(f"send() returned {type(answer).__name__}, not an Answer")
        except Exception as e:
            self._bug("send", e)
            answer = Answer(Verdict.RETRY, reason=f"{type(e).__name__} in the sink plugin")
        verdict = Verdict(answer.verdict)
        if verdict is Verdict.OK:
            self._ok(entry, header, items, answer)
        elif verdict is Verdict.RETRY:
            self.report.retries += 1
            self._trouble(answer.reason or "the sink asked to retry")
            self._backoff(answer.retry_after)
        elif verdict is Verdict.SPLIT:
            self._split(entry, header, items, answer)
        else:
            self._fail(answer.reason or "the sink refused the batch for good")

    def _ok(self, entry: Entry, header: dict, items: list[bytes], answer: Answer) -> None:
        n = len(items)
        rejected = {}
        for k, why in dict(answer.rejected or {}).items():
            try:
                i = int(k)
            except (TypeError, ValueError):
                continue
            if 0 <= i < n:
                rejected[i] = str(why) or "refused by the server"
        pending = sorted({int(i) for i in answer.pending or () if 0 <= int(i) < n and int(i) not in rejected})
        if rejected:
            self.spool.reject(entry, header, items, rejected)
            self.report.rejected_records += len(rejected)
            first = rejected[min(rejected)]
            self._say_once("rejected", f"warning: sink {self.name}: the server refused {len(rejected)} record(s) "
                                       f"for good (first: {first}); they are kept in "
                                       f"{self.spool.path / 'rejected'}")
        delivered = n - len(rejected) - len(pending)
        self.report.delivered_records += delivered
        if pending:
            suffix = _next_rewrite(entry.suffix)
            head = dict(header, batch_id=_rewrite_id(header["batch_id"], suffix, entry.suffix))
            self.spool.replace(entry, [(suffix, head, [items[i] for i in pending])])
            self.report.retries += 1
            self._trouble(answer.reason or f"{len(pending)} record(s) of a batch to be sent again")
            self._backoff(answer.retry_after)
        else:
            self.spool.remove(entry)
            self.report.delivered_batches += 1
            self._recovered()
        self._attempts.pop(entry.name, None)

    def _split(self, entry: Entry, header: dict, items: list[bytes], answer: Answer) -> None:
        self._attempts.pop(entry.name, None)
        if len(items) <= 1:
            reason = answer.reason or "the sink cannot take this item"
            self.spool.reject(entry, header, items, {0: reason})
            self.spool.remove(entry)
            self.report.rejected_records += len(items)
            self._say_once("rejected", f"warning: sink {self.name}: the server refused a record for good "
                                       f"({reason}); it is kept in {self.spool.path / 'rejected'}")
            return
        half = len(items) // 2
        parts = []
        for k, chunk in enumerate((items[:half], items[half:])):
            suffix = f"{entry.suffix}.{k}"
            parts.append((suffix, dict(header, batch_id=f"{header['batch_id']}.{k}"), chunk))
        self.spool.replace(entry, parts)

    def _fail(self, reason: str) -> None:
        with self._cv:
            self.report.failed = reason
            self._cv.notify_all()
        self._warn(f"sink {self.name}: stopped: {reason}; its batches stay in the spool "
                   f"({self.spool.path}) for 'flowlog spool retry'")

    # -- backoff and messages ------------------------------------------------------------------
    def _backoff(self, retry_after: float | None) -> None:
        self._streak += 1
        delay = random.uniform(0, min(self.cap, self.base * 2 ** (self._streak - 1)))
        try:
            if retry_after is not None and math.isfinite(float(retry_after)):
                delay = max(delay, float(retry_after))
        except (TypeError, ValueError):
            pass
        with self._cv:
            self._next_try = time.monotonic() + delay

    def _trouble(self, reason: str) -> None:
        if self._streak == 0:
            self._warn(f"warning: sink {self.name}: cannot deliver yet ({reason}); "
                       f"retrying, the batches wait in the spool")

    def _recovered(self) -> None:
        if self._streak:
            self._warn(f"warning: sink {self.name}: delivering again")
        self._streak = 0
        with self._cv:
            self._next_try = 0.0

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._warn(message)

    def _bug(self, where: str, e: BaseException) -> None:
        """A plugin raised: say so once, with the exception's type and place (its text may hold data)."""
        tb = traceback.extract_tb(e.__traceback__)
        at = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        self._say_once(f"bug-{where}-{type(e).__name__}",
                       f"warning: sink {self.name}: {type(e).__name__} raised by the plugin's {where}(){at}: "
                       f"a bug in the {self.sink.scheme}: sink plugin" + ("; retrying" if where == "send" else ""))


def _next_rewrite(suffix: str) -> str:
    """The suffix of a batch rewritten with its remaining items: .r1, then .r2, ..."""
    parts = suffix.split(".")
    if parts[-1].startswith("r") and parts[-1][1:].isdigit():
        parts[-1] = f"r{int(parts[-1][1:]) + 1}"
        return ".".join(parts)
    return suffix + ".r1"


def _rewrite_id(batch_id: str, new_suffix: str, old_suffix: str) -> str:
    """A new batch id for the remaining items: a sink may name items by batch id and index."""
    last_old = old_suffix.rsplit(".", 1)[-1] if old_suffix else ""
    if last_old.startswith("r") and last_old[1:].isdigit() and batch_id.endswith("." + last_old):
        batch_id = batch_id[: -len(last_old) - 1]
    return batch_id + "." + new_suffix.rsplit(".", 1)[-1]


def _options_info(options) -> dict:
    extra = {k: v for k, v in (options.extra or {}).items()
             if k.lower().replace("-", "_") not in SECRET_QUERY_KEYS and isinstance(v, (str, int, float, bool))}
    return {"format": options.format, "fields": list(options.fields) if options.fields else None,
            "header": bool(options.header), "extra": extra}


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def wrap(sinks: Sequence[Sink], options: DeliveryOptions, *, window: int,
         warn: Callable[[str], None] | None = None, stopping: Callable[[], bool] | None = None) -> list[Sink]:
    """The run's sinks with every DeliverySink wrapped in a Courier."""
    return [Courier(k, options, window=window, warn=warn, stopping=stopping) if isinstance(k, DeliverySink) else k
            for k in sinks]


def finish(sinks: Sequence[Sink], timeout: float, warn: Callable[[str], None] | None = None,
           abort: Callable[[], bool] | None = None) -> list[DeliveryReport]:
    """Drain every courier among ``sinks`` for up to ``timeout`` seconds, shut them, and report.

    The wait ends early when ``abort()`` turns true (a signal during the wait) or on
    KeyboardInterrupt. Each sink with batches left is named with what stays in its spool.
    """
    warn = warn or (lambda m: None)
    couriers = [k for k in sinks if isinstance(k, Courier) and k._opened]
    deadline = time.monotonic() + max(0.0, timeout)
    try:
        for c in couriers:
            c.drain(deadline, abort)
    except KeyboardInterrupt:
        pass
    reports = []
    for c in couriers:
        r = c.shut(grace=0.5 if timeout > 0 else 0.05)
        if r.pending_batches:
            warn(f"sink {r.sink}: {r.pending_batches} batch(es) ({r.pending_records} record(s)) stay in the "
                 f"spool ({r.spool}); 'flowlog spool retry' sends them")
        reports.append(r)
    return reports


__all__ = ["Courier", "DeliveryOptions", "DeliveryReport", "finish", "group_records", "wrap",
           "RETRY_BASE_ENV", "RETRY_MAX_ENV"]
