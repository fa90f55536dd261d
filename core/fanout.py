"""Capture with several worker processes: the kernel spreads packets by flow hash, each
worker meters its share, and the run merges their records window by window.

``flowlog capture --from ring:eth0 --workers N``. Every worker opens its own copy of the
source joined to one PACKET_FANOUT group, decodes and meters with its own flow table, and
sends its closed windows (as :class:`~flowlog.core.records.RecordBatch` columns) to the
parent. The parent holds a window until every worker has closed it, then merges:

* flow rows of the same key (the kernel's rollover can split a flow when one worker's ring is
  full) are summed, their TCP flags OR'ed, first/last-seen kept as the earliest/latest;
* SKIPDATA rows of an interface are summed (bytes stay unknown if any part is unknown);
* NODATA is written for an interface only when no worker saw any of its traffic.

Rows come out as a single process writes them: by interface, then by first-seen time. The
workers share one start time and one stop time, so they close the same windows. Policy,
formats and sinks run in the parent, on the merged records.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any

import numpy as np

from .errors import SourceError
from .meter import MeterStats
from .records import KIND_NODATA, KIND_OK, KIND_SKIPDATA, RecordBatch

#: the flow key within one window: rows with equal values here are one flow
_KEY = ("iface", "fam", "shi", "slo", "dhi", "dlo", "sport", "dport", "proto")
#: MeterStats counters that add up over workers (the rest the parent counts from the merged records)
_SUMMED = ("frames", "ip_packets", "ip_bytes", "non_ip", "malformed", "late_packets", "overflow_packets",
           "lost_packets")
#: how long the parent waits for a worker to open its copy of the source
OPEN_TIMEOUT = 60.0


@dataclass
class WorkerSpec:
    """What a worker needs to rebuild the run's source and meter in its own process."""

    source_cls: type
    uri: str
    source_options: dict
    run_options: dict
    group: int | None           # the fanout group to join; None: create one (the first worker)
    index: int


@dataclass
class FanoutResult:
    stats: MeterStats = field(default_factory=MeterStats)
    capture: dict = field(default_factory=dict)


def worker_run_options(options, workers: int) -> dict:
    """The run options a worker uses: the parent's, without what only the parent does (the flow
    table's capacity is shared out)."""
    return dict(window=options.window, lateness=options.lateness,
                max_flows=max(1, -(-options.max_flows // workers)),
                account_id=options.account_id, interface_ids=dict(options.interface_ids),
                default_interface_id=options.default_interface_id, timestamps="window",
                bpf_filter=options.bpf_filter, snaplen=options.snaplen, compiled=options.compiled)


# -- the worker process -------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker_main(conn, spec: WorkerSpec) -> None:
    """One worker: its copy of the source, its own meter; closed windows go to the parent."""
    # the parent handles signals and tells the workers when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent()
    from .api import Sink, SinkOptions
    from .errors import FlowlogError
    from .run import Run, RunOptions
    from .uri import URI

    class ToParent(Sink):
        scheme = "fanout"

        def write(self, records):       # pragma: no cover - write_batch is what the run calls
            raise TypeError

        def write_batch(self, batch):
            send(("records", batch))

    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            try:
                conn.send(message)
            except OSError:         # the parent is gone: nobody to write for
                os._exit(0)

    def say(message: str) -> None:
        send(("say", message))

    options = {**spec.source_options, "workers": 1, "fanout_group": spec.group if spec.group is not None else 0}
    try:
        source = spec.source_cls(URI.parse(spec.uri), options)
        run = Run([source], [ToParent(URI.parse("fanout:"), SinkOptions())], RunOptions(**spec.run_options), warn=say)
        run.open()
    except FlowlogError as e:
        send(("error", str(e)))
        return
    except Exception as e:      # a bug: said in one line by the parent, not as a worker's traceback
        send(("error", f"worker {spec.index + 1}: internal error: {type(e).__name__}: {e}"))
        return
    send(("ready", getattr(source, "fanout_group", None)))
    msg = conn.recv()
    if msg[0] != "go":
        run.close_sources()
        return
    run.meter.start(msg[1])     # every worker's windows start together

    def listen():
        try:
            while True:
                m = conn.recv()
                if m[0] == "stop":
                    run.stop(at=m[1])
                    return
        except (EOFError, OSError):
            run.stop()

    threading.Thread(target=listen, daemon=True).start()
    try:
        result = run.run()
    except FlowlogError as e:
        send(("error", str(e)))
        return
    except Exception as e:
        send(("error", f"worker {spec.index + 1}: internal error: {type(e).__name__}: {e}"))
        return
    send(("done", (result.stats, result.capture)))


# -- the parent ----------------------------------------------------------------------------------

class Fanout:
    """The parent's side: starts the workers, merges their windows, yields merged record batches."""

    def __init__(self, source, run_options, workers: int, interfaces: list[str], account_id, say):
        self.source = source
        self.n = workers
        self.options = run_options
        self.interfaces = interfaces        # the run's interface list (the parent's SourceContext's)
        self.addresses: dict[int, set] = {}
        self.account_id = account_id
        self._say = say
        self.result = FanoutResult()
        self._procs: list = []
        self._conns: list = []
        self._pending: dict[int, dict[int, list[RecordBatch]]] = {}   # window start -> worker -> rows
        self._done: set[int] = set()
        self._merged_upto: int | None = None    # windows up to here are delivered
        self._stopping = False
        self._workers_opts = worker_run_options(run_options, workers)

    def _spawn(self, index: int, group: int | None):
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        spec = WorkerSpec(type(self.source), self.source.uri.text, dict(self.source.options), self._workers_opts,
                          group, index)
        proc = ctx.Process(target=_worker_main, args=(child_end, spec), name=f"flowlog-worker-{index}",
                           daemon=True)
        proc.start()
        child_end.close()
        self._procs.append(proc)
        self._conns.append(parent_end)
        return parent_end

    def _await_ready(self, conn, index: int):
        if not conn.poll(OPEN_TIMEOUT):
            raise SourceError(f"{self.source.uri}: worker {index + 1} did not open the source in {OPEN_TIMEOUT:.0f} s")
        try:
            kind, value = conn.recv()
        except EOFError:
            raise SourceError(f"{self.source.uri}: worker {index + 1} exited while opening the source") from None
        while kind == "say":
            self._say(value)
            kind, value = conn.recv()
        if kind == "error":
            raise SourceError(value)
        return value

    def start(self) -> None:
        """Start the workers; the first creates the fanout group, the others join it."""
        try:
            group = self._await_ready(self._spawn(0, None), 0)
            if group is None:
                raise SourceError(f"{self.source.uri}: this source cannot share its input among workers")
            for i in range(1, self.n):
                self._spawn(i, group)
            for i in range(1, self.n):
                self._await_ready(self._conns[i], i)
        except BaseException:
            self.close()
            raise
        t0 = time.time()
        for c in self._conns:
            c.send(("go", t0))
        W = self.options.window
        self._merged_upto = int(t0) - int(t0) % W

    def stop(self) -> None:
        """Ask every worker to stop and write its open windows, all as of the same moment."""
        if self._stopping:
            return
        self._stopping = True
        at = time.time()
        for c in self._conns:
            try:
                c.send(("stop", at))
            except OSError:
                pass

    def batches(self, should_stop):
        """Merged record batches, in window order, until every worker is done.

        ``should_stop()`` is asked between messages: True makes every worker stop and flush.
        """
        live = {i: c for i, c in enumerate(self._conns)}
        while live:
            if not self._stopping and should_stop():
                self.stop()
            for conn in wait_any(list(live.values()), timeout=0.1):
                i = next(k for k, v in live.items() if v is conn)
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    code = self._procs[i].exitcode
                    del live[i]
                    self._done.add(i)
                    raise SourceError(f"{self.source.uri}: worker {i + 1} ended unexpectedly"
                                      f"{'' if code is None else f' (exit status {code})'}; its open windows are lost")
                if kind == "records":
                    self._take(i, value)
                elif kind == "say":
                    self._say(value)
                elif kind == "error":
                    del live[i]
                    self._done.add(i)
                    raise SourceError(value)
                elif kind == "done":
                    stats, capture = value
                    for name in _SUMMED:
                        setattr(self.result.stats, name, getattr(self.result.stats, name) + getattr(stats, name))
                    for k, v in stats.malformed_reasons.items():
                        self.result.stats.malformed_reasons[k] = self.result.stats.malformed_reasons.get(k, 0) + v
                    for k, v in stats.anomalies.items():
                        self.result.stats.anomalies[k] = self.result.stats.anomalies.get(k, 0) + v
                    for k, v in capture.items():
                        self.result.capture[k] = self.result.capture.get(k, 0) + v
                    if "received" in capture:       # how evenly the kernel spread the packets
                        self.result.capture[f"received by worker {i + 1}"] = capture["received"]
                    self._done.add(i)
                    del live[i]
            yield from self._complete(final=not live)

    # -- merging ---------------------------------------------------------------------------------
    def _take(self, worker: int, batch: RecordBatch) -> None:
        """File a worker's emission under the windows it holds (live windows: one row, one window)."""
        index = np.array([self._interface(name) for name in batch.interfaces], np.int64)
        for local, own in batch.addresses.items():
            self.addresses.setdefault(int(index[local]), set()).update(own)
        cols = {c: getattr(batch, c) for c in RecordBatch.COLUMNS}
        cols["iface"] = index[cols["iface"]] if len(index) else cols["iface"]
        W = self.options.window
        window = cols["start"] - cols["start"] % W
        for ws in np.unique(window).tolist():
            rows = {c: v[window == ws] for c, v in cols.items()}
            self._pending.setdefault(int(ws), {}).setdefault(worker, []).append(rows)

    def _interface(self, name: str) -> int:
        if name not in self.interfaces:
            self.interfaces.append(name)
        return self.interfaces.index(name)

    def _complete(self, final: bool):
        """Merge and yield every window all workers have closed (all of them, at the end), in order."""
        ready = []
        for ws in sorted(self._pending):
            parts = self._pending[ws]
            late = self._merged_upto is not None and ws < self._merged_upto
            if final or late or all(w in parts or w in self._done for w in range(self.n)):
                ready.append(ws)
            else:
                break       # windows go out in order: a later one waits for this one
        for ws in ready:
            parts = self._pending.pop(ws)
            late = self._merged_upto is not None and ws < self._merged_upto
            batch = self._merge(ws, [rows for w in sorted(parts) for rows in parts[w]], late)
            if not late:
                self.result.stats.windows += 1
            end = ws + self.options.window
            if self._merged_upto is None or end > self._merged_upto:
                self._merged_upto = end
            if len(batch):
                yield batch

    def _merge(self, ws: int, parts: list[dict], late: bool) -> RecordBatch:
        cols = {c: np.concatenate([p[c] for p in parts]) for c in RecordBatch.COLUMNS}
        kind = cols["kind"]
        ok = kind == KIND_OK
        out_pieces = []
        # flows: one row per key, summed
        flows = {c: v[ok] for c, v in cols.items()}
        if len(flows["kind"]):
            order = np.lexsort(tuple(flows[c] for c in reversed(_KEY)))
            f = {c: v[order] for c, v in flows.items()}
            keys = np.stack([f[c].astype(np.int64) if f[c].dtype != np.uint64 else f[c].view(np.int64)
                             for c in _KEY], axis=1)
            new = np.ones(len(keys), bool)
            new[1:] = (keys[1:] != keys[:-1]).any(axis=1)
            starts = np.flatnonzero(new)
            merged = {c: f[c][starts] for c in f}
            merged["packets"] = np.add.reduceat(f["packets"], starts)
            merged["bytes"] = np.add.reduceat(f["bytes"], starts)
            merged["flags"] = np.bitwise_or.reduceat(f["flags"], starts)
            first = f["fs"] * 1_000_000_000 + f["fns"]
            last = f["ls"] * 1_000_000_000 + f["lns"]
            fmin = np.minimum.reduceat(first, starts)
            lmax = np.maximum.reduceat(last, starts)
            merged["fs"], merged["fns"] = fmin // 1_000_000_000, fmin % 1_000_000_000
            merged["ls"], merged["lns"] = lmax // 1_000_000_000, lmax % 1_000_000_000
            # a single process writes an interface's flows in the order it first saw them
            order = np.lexsort((merged["fns"], merged["fs"], merged["iface"]))
            flows = {c: v[order] for c, v in merged.items()}
        active: set[int] = set(flows["iface"].tolist())
        skip_rows: dict[int, list[int]] = {}
        for i in np.flatnonzero(kind == KIND_SKIPDATA).tolist():
            skip_rows.setdefault(int(cols["iface"][i]), []).append(i)
        active.update(skip_rows)
        nodata_ifaces = sorted({int(x) for x in cols["iface"][kind == KIND_NODATA].tolist()} - active)
        W = self.options.window
        for iface in sorted(active | set(nodata_ifaces)):
            if iface in active:
                sel = np.flatnonzero(flows["iface"] == iface)
                if len(sel):
                    out_pieces.append({c: v[sel] for c, v in flows.items()})
                rows = skip_rows.get(iface)
                if rows:
                    nbytes = cols["bytes"][rows]
                    out_pieces.append(self._special(KIND_SKIPDATA, iface, ws, ws + W, int(cols["packets"][rows].sum()),
                                                    -1 if (nbytes < 0).any() else int(nbytes.sum()), cols))
            elif not late:
                out_pieces.append(self._special(KIND_NODATA, iface, ws, ws + W, 0, -1, cols))
        if out_pieces:
            out = {c: np.concatenate([p[c] for p in out_pieces]) for c in RecordBatch.COLUMNS}
        else:
            out = {c: v[:0] for c, v in cols.items()}
        if self.options.timestamps == "first-last":
            okr = out["kind"] == KIND_OK
            out["start"] = np.where(okr, out["fs"], out["start"])
            out["end"] = np.where(okr, out["ls"], out["end"])
        self._count(out)
        return RecordBatch(self.interfaces, self.account_id, compiled=bool(self.options.compiled),
                           addresses=self.addresses, **out)

    @staticmethod
    def _special(kind: int, iface: int, start: int, end: int, packets: int, nbytes: int, like: dict) -> dict:
        row = {c: np.zeros(1, v.dtype) for c, v in like.items()}
        row["kind"][0], row["iface"][0], row["start"][0], row["end"][0] = kind, iface, start, end
        row["packets"][0], row["bytes"][0] = packets, nbytes
        return row

    def _count(self, out: dict) -> None:
        st = self.result.stats
        kind = out["kind"]
        n_ok = int((kind == KIND_OK).sum())
        st.flows += n_ok
        st.nodata_records += int((kind == KIND_NODATA).sum())
        st.skipdata_records += int((kind == KIND_SKIPDATA).sum())
        st.records += len(kind)

    def close(self) -> None:
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs.clear()
        self._conns.clear()


__all__ = ["Fanout", "WorkerSpec", "worker_run_options"]
