"""One run: sources -> filter -> decode -> meter -> sinks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import jit
from .api import Sink, Source, SourceContext
from .bpf import BpfFilter
from .decode import decode_batch
from .delivery import DeliveryOptions, DeliveryReport, finish, wrap
from .errors import ConfigError, OutputClosed
from .frames import FrameBatch
from .merge import merge
from .meter import Meter, MeterStats


#: Longest window (seconds): about 68 years; times within a window are kept in nanoseconds.
MAX_WINDOW = 2**31 - 1


@dataclass
class RunOptions:
    window: int = 60
    lateness: int = 5
    max_flows: int = 1_000_000
    account_id: str | None = None
    interface_ids: dict[str, str] = field(default_factory=dict)
    default_interface_id: str | None = None
    timestamps: str = "window"
    count: int | None = None
    bpf_filter: str | None = None
    snaplen: int = 262144
    #: the compiled (numba) path: True, False, or None to decide by the input's size (flowlog.core.jit)
    compiled: bool | None = None
    #: stop after this many seconds of wall-clock time
    duration: float | None = None
    #: network sinks: the spool, its bound and policy, the drain at the end (flowlog.core.delivery)
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    #: security groups and network ACL (flowlog.core.policy.Policy) that set ACCEPT/REJECT, or None
    policy: object | None = None
    #: which records are written: "accept", "reject" or "all" (NODATA and SKIPDATA always are)
    traffic_type: str = "all"
    #: the interfaces' own addresses (text), for flow-direction and the policy: every interface of the run
    interface_addresses: tuple = ()

    def check(self) -> None:
        self.delivery.check()
        if not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"--window must be from 1 to {MAX_WINDOW} seconds")
        if self.lateness < 0:
            raise ConfigError("--lateness cannot be negative")
        if self.max_flows < 1:
            raise ConfigError("--max-flows must be at least 1")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError("--duration must be more than 0 seconds")
        if self.count is not None and self.count < 1:
            raise ConfigError("-c/--count must be at least 1")
        if self.timestamps not in ("window", "first-last"):
            raise ConfigError("--timestamps is 'window' or 'first-last'")
        if self.traffic_type not in ("accept", "reject", "all"):
            raise ConfigError("--traffic-type is 'accept', 'reject' or 'all'")
        for what, value in (("--account-id", self.account_id), ("--interface-id", self.default_interface_id),
                            *(("--interface-id", v) for v in self.interface_ids.values())):
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise ConfigError(f"{what} {value!r}: must be non-empty with no white space")


@dataclass
class RunResult:
    stats: MeterStats
    interfaces: list[str]
    warnings: list[str]
    damage: list[str]
    filtered_out: int = 0
    elapsed: float = 0.0
    output_closed: bool = False
    interrupted: bool = False
    #: capturing sources' counters (received, dropped by the kernel, ...), summed
    capture: dict = field(default_factory=dict)
    #: network sinks: what each delivered, and what waits in its spool
    delivery: list[DeliveryReport] = field(default_factory=list)
    #: with a policy or --traffic-type: flows judged, rejected, replies left out, records not written
    policy: dict | None = None

    @property
    def status(self) -> int:
        """0: all input read; 1: records written, but some input was damaged; 3: records were
        produced but some wait in the spool (or were refused or dropped): 3 wins over 1."""
        if any(d.undelivered for d in self.delivery):
            return 3
        return 1 if self.damage else 0


class Run:
    """Wires sources, the meter and sinks together for one run."""

    def __init__(self, sources: Sequence[Source], sinks: Sequence[Sink], options: RunOptions,
                 warn: Callable[[str], None] | None = None,
                 progress: Callable[[int, int | None], None] | None = None):
        options.check()
        self.sources = list(sources)
        self.sinks = list(sinks)
        self.options = options
        self.ctx = SourceContext(bpf_filter=options.bpf_filter, snaplen=options.snaplen,
                                 interface_ids=options.interface_ids,
                                 default_interface_id=options.default_interface_id, warn=warn)
        self.ctx.window = options.window
        self._warn = warn or (lambda m: None)
        self._progress = progress
        self._stop = False
        self._stop_at: float | None = None
        self._fanout = None
        self._consumed: int | None = None
        self._linktypes = np.zeros(0, np.int64)
        self._link_iface = np.zeros(0, np.int64)
        self._meter_options = dict(window=options.window, lateness=options.lateness,
                                   max_flows=options.max_flows, account_id=options.account_id,
                                   timestamps=options.timestamps)
        self.meter: Meter | None = None
        from .policy import parse_addresses

        self._own = parse_addresses(options.interface_addresses)
        self.policy_counts: dict | None = None
        if options.policy is not None or options.traffic_type != "all":
            self.policy_counts = options.policy.counters if options.policy is not None else {}
            self.policy_counts.setdefault("traffic_filtered", 0)

    def link_iface(self) -> np.ndarray:
        self._refresh_links()
        return self._link_iface

    def _refresh_links(self) -> None:
        links = self.ctx.links
        if len(self._linktypes) != len(links):
            self._linktypes = np.array([l.linktype for l in links], np.int64)
            self._link_iface = np.array([l.interface for l in links], np.int64)

    def open(self) -> None:
        """Open every source and sink; errors here stop the run before any output. Once only."""
        if self.meter is not None or self._fanout is not None:
            return
        self._wrap_sinks()
        workers = self._workers()
        if workers > 1:
            self._open_fanout(workers)
            return
        if self.options.compiled is not False and any(s.live for s in self.sources) and jit.available():
            jit.warm_up()        # before capturing starts: the kernel's buffer need not absorb the loading
        for s in self.sources:
            s.open(self.ctx)
        compiled = self.options.compiled
        if compiled is None:
            hints = [s.size_hint() for s in self.sources]
            compiled = jit.wanted(None if None in hints else sum(hints))
        elif compiled and not jit.available():
            raise ConfigError("the compiled path needs numba (pip install numba), or set FLOWLOG_NO_JIT=1")
        self.compiled = self.ctx.compiled = compiled
        self.live = any(s.live for s in self.sources)
        self.meter = Meter(self.ctx.interfaces, self.link_iface, compiled=compiled, live=self.live,
                           addresses=self.ctx.addresses, **self._meter_options)
        if self.live:
            self.meter.start(time.time())
        self._filter = None
        if self.options.bpf_filter:
            self._filter = BpfFilter(self.options.bpf_filter, self.options.snaplen)
            if not all(s.applies_filter for s in self.sources):
                for link in self.ctx.links:       # compile now: a bad expression fails before any output
                    self._filter.program(link.linktype)
        for k in self.sinks:
            k.open()

    def _wrap_sinks(self) -> None:
        """Network sinks (DeliverySink) get the delivery layer: spool, retries, drain at the end."""
        for k in self.sinks:
            k.options.window = self.options.window
        self.sinks = wrap(self.sinks, self.options.delivery, window=self.options.window, warn=self._warn,
                          stopping=lambda: self._stop)

    def _finish_delivery(self, result: RunResult) -> None:
        """Drain the network sinks for up to --drain-timeout seconds; what stays is reported."""
        stopped_before = self._stop             # a signal that comes during the wait ends it
        result.delivery = finish(self.sinks, self.options.delivery.drain_timeout, self._warn,
                                 abort=lambda: self._stop and not stopped_before)

    def _workers(self) -> int:
        """Worker processes the sources ask for (ring: --workers); more than one needs one such source."""
        wanted = [(s, int(s.options.get("workers") or 1)) for s in self.sources]
        many = [(s, n) for s, n in wanted if n > 1]
        if not many:
            return 1
        source, n = many[0]
        if not getattr(source, "fanout", False):
            raise ConfigError(f"{source.uri}: --workers applies to sources that can share an interface among "
                              f"processes (ring:IFACE), not to {source.scheme}:")
        if len(self.sources) > 1:
            raise ConfigError("--workers needs a single source (one ring:IFACE)")
        if self.options.count is not None:
            raise ConfigError("-c/--count counts frames in one process: leave it out with --workers, or use "
                              "--duration")
        return n

    def _open_fanout(self, workers: int) -> None:
        from .fanout import Fanout

        def say(message: str) -> None:
            (self.ctx.warnings if message.startswith("warning:") else self.ctx.damage).append(message)
            self.ctx._warn(message)

        self.live = True
        self.compiled = self.ctx.compiled = self.options.compiled is not False and jit.available()
        fanout = Fanout(self.sources[0], self.options, workers, self.ctx.interfaces, self.options.account_id, say)
        fanout.start()
        self._fanout = fanout
        try:
            for k in self.sinks:
                k.open()
        except BaseException:
            fanout.stop()
            fanout.close()
            raise

    def _run_fanout(self, started: float) -> RunResult:
        fanout = self._fanout
        result = RunResult(fanout.result.stats, self.ctx.interfaces, self.ctx.warnings, self.ctx.damage,
                           policy=self.policy_counts)
        deadline = None if self.options.duration is None else time.monotonic() + self.options.duration

        def should_stop() -> bool:
            if self._stop:
                result.interrupted = True
                return True
            if deadline is not None and time.monotonic() >= deadline:
                result.interrupted = True
                return True
            return False

        try:
            try:
                for batch in fanout.batches(should_stop):
                    self._deliver([batch])
            finally:
                fanout.stop()
                fanout.close()
                result.capture.update(fanout.result.capture)
            for k in self.sinks:
                k.close()
        except OutputClosed:
            result.output_closed = True
        self._finish_delivery(result)
        result.elapsed = time.monotonic() - started
        return result

    def close_sources(self) -> None:
        for s in self.sources:
            s.close()

    def run(self) -> RunResult:
        started = time.monotonic()
        self.open()
        if self._fanout is not None:
            return self._run_fanout(started)
        result = RunResult(self.meter.stats, self.ctx.interfaces, self.ctx.warnings, self.ctx.damage,
                           policy=self.policy_counts)
        try:
            try:
                self._loop(result)
            finally:
                for s in self.sources:
                    for k, v in (s.capture_stats() or {}).items():
                        result.capture[k] = result.capture.get(k, 0) + v
                    s.close()
            self._deliver(self.meter.flush((self._stop_at or time.time()) if self.live else None))
            for k in self.sinks:
                k.close()
            for s in self.sources:
                s.commit(None, None, self._consumed)
        except OutputClosed:
            result.output_closed = True
        self._finish_delivery(result)
        result.elapsed = time.monotonic() - started
        return result

    def stop(self, at: float | None = None) -> None:
        """Stop reading after the batch in hand; open windows are then written as at the end of input.

        Safe to call from a signal handler (SIGINT, SIGTERM). ``at``: live capture writes the
        windows up to the one holding this wall-clock time (workers of one run stop together).
        """
        self._stop_at = at
        self._stop = True

    def _streams(self):
        if len(self.sources) == 1:
            return self.sources[0].batches()
        return merge([((0, 0), s.batches) for s in self.sources])

    def _loop(self, result: RunResult) -> None:
        remaining = self.options.count
        self._consumed = None
        deadline = None if self.options.duration is None else time.monotonic() + self.options.duration
        total = sum(s.size_hint() or 0 for s in self.sources) or None
        for batch in self._with_drain(self._streams(), result):
            self._refresh_links()
            if self._filter is not None and len(batch) and not all(s.applies_filter for s in self.sources):
                before = len(batch)
                batch = self._filter.apply(batch, self._linktypes)
                result.filtered_out += before - len(batch)
            if remaining is not None and len(batch) >= remaining:
                batch = batch.take(np.arange(remaining))
                self._consumed = remaining
                remaining = 0
            elif remaining is not None:
                remaining -= len(batch)
            cols = decode_batch(batch, self._linktypes, compiled=self.compiled)
            self._deliver(self.meter.add(batch, cols))
            emitted = self.meter.last_trigger
            if self.live:
                ticked = self.meter.tick(time.time())
                if ticked:
                    self._deliver(ticked)
                    emitted = len(batch)
            if emitted is not None:
                for s in self.sources:
                    s.commit(emitted, self.meter.agg.horizon)
            if self._progress is not None:
                self._progress(sum(s.progress() for s in self.sources), total)
            if remaining == 0:
                break
            if self._stop or (deadline is not None and time.monotonic() >= deadline):
                result.interrupted = True       # (_with_drain ends the stream after the drain)

    def _with_drain(self, stream, result: RunResult):
        """The sources' batches; when the run is stopped (signal, --duration), then what the sources
        had already captured (Source.drain), so that a stop does not lose it."""
        for batch in stream:
            yield batch
            if result.interrupted:
                break
        if result.interrupted:
            for s in self.sources:
                yield from s.drain()

    def _deliver(self, batches) -> None:
        for batch in batches:
            had = len(batch)
            batch = self._judge(batch)
            if had and not len(batch):         # every record of it left out (policy, --traffic-type)
                continue
            for k in self.sinks:
                k.write_batch(batch)

    def _judge(self, batch):
        """The interfaces' addresses (flow-direction), the policy's ACCEPT/REJECT and --traffic-type."""
        if self._own:
            own = self.ctx.addresses
            for i in range(len(batch.interfaces)):
                own.setdefault(i, set()).update(self._own)
            batch.addresses = own
        if self.options.policy is not None:
            batch = self.options.policy.apply(batch)
        if self.options.traffic_type != "all":
            from .policy import filter_traffic

            before = len(batch)
            batch = filter_traffic(batch, self.options.traffic_type)
            self.policy_counts["traffic_filtered"] += before - len(batch)
        return batch


def run_batches(batches, linktypes: Sequence[int], interfaces: Sequence[str], **meter_options):
    """Records for ready-made batches (tests and embedding): one interface per link, in order."""
    lt = np.array(list(linktypes), np.int64)
    link_iface = np.arange(len(lt), dtype=np.int64)
    meter = Meter(list(interfaces), lambda: link_iface, **meter_options)
    out = []
    for b in batches:
        for rb in meter.add(b, decode_batch(b, lt, compiled=meter.compiled)):
            out += rb.records()
    for rb in meter.flush():
        out += rb.records()
    return out, meter.stats


__all__ = ["Run", "RunOptions", "RunResult", "run_batches", "FrameBatch"]
