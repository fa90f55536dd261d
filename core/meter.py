"""The meter: tumbling event-time windows, flow tables, NODATA and SKIPDATA (SPEC.md).

Pure logic, no I/O. :meth:`Meter.add` takes a decoded batch and returns the records
of every window that batch closed; :meth:`Meter.flush` closes the rest.

Rules, in the order SPEC.md gives them:

* a frame at time ``t`` belongs to the window starting at ``floor(t / W) * W``;
* a window is emitted once the newest frame time seen reaches its end plus the
  lateness; a frame for a window already emitted is "late": its flow is emitted again
  for that window at the next emission;
* an interface with no record in a window, from the window of its first frame to the
  run's last window, is idle; consecutive idle windows make one NODATA record;
* traffic that cannot become a flow record (flow table full, malformed frames, losses
  the source reports) is counted in a SKIPDATA record of its window and interface.

The per-packet work (window tables, flow lookup, capacity) is done by an aggregator:
:class:`PyAggregator` here, or the compiled one in :mod:`flowlog.core.fast.meter`.
Both stop at the packet whose time closes windows, so that the meter emits them before
that packet is counted, exactly as a packet-at-a-time meter would. Emission itself
(ordering, NODATA, SKIPDATA, statistics) is this module's, for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .decode import NON_IP, OK, REASONS, Columns
from .frames import FrameBatch, Loss
from .records import KIND_NODATA, KIND_OK, KIND_SKIPDATA, RecordBatch

DONE, EMIT = 0, 1

# flow entry list indices (PyAggregator)
_PK, _BY, _FL, _FS, _FNS, _LS, _LNS = range(7)


@dataclass
class MeterStats:
    frames: int = 0
    ip_packets: int = 0
    ip_bytes: int = 0
    non_ip: int = 0
    malformed: int = 0
    malformed_reasons: dict = field(default_factory=dict)
    #: packets counted although their frame is inconsistent (reason text -> count)
    anomalies: dict = field(default_factory=dict)
    late_packets: int = 0
    overflow_packets: int = 0
    lost_packets: int = 0
    flows: int = 0
    windows: int = 0
    records: int = 0
    nodata_records: int = 0
    skipdata_records: int = 0


@dataclass
class Taken:
    """Flows and skipped traffic of the windows an aggregator hands over, as columns.

    ``flows`` rows are ordered by window (in the order asked), then interface, then first
    sighting; ``skips`` rows are (window, interface, packets, bytes, bytes known).
    """

    flows: dict[str, np.ndarray]
    skips: list[tuple[int, int, int, int, bool]]


FLOW_COLUMNS = ("ws", "iface", "fam", "shi", "slo", "dhi", "dlo", "sport", "dport", "proto",
                "pk", "by", "fl", "fs", "fns", "ls", "lns")
_FLOW_DTYPES = {"shi": np.uint64, "slo": np.uint64, "dhi": np.uint64, "dlo": np.uint64}


class _Window:
    __slots__ = ("flows", "skip")

    def __init__(self):
        self.flows: dict[tuple, list] = {}
        self.skip: dict[int, list] = {}     # iface -> [packets, bytes, bytes_known]


class PyAggregator:
    """Per-packet accounting in plain Python: dicts of flows per window."""

    def __init__(self, window: int, lateness: int, max_flows: int, stats: MeterStats):
        self.W, self.L, self.max_flows, self.stats = window, lateness, max_flows, stats
        self.open: dict[int, _Window] = {}
        self.late: dict[int, _Window] = {}
        self.nflows = 0
        self.max_sec: int | None = None
        self.horizon: int | None = None          # windows starting before this were emitted
        self.first_window: dict[int, int] = {}   # interface -> window of its first frame
        self.early_bad: list[int] = []           # ifaces of unusable-timestamp frames before any time

    def open_windows(self) -> list[int]:
        return sorted(self.open)

    def late_windows(self) -> list[int]:
        return sorted(self.late)

    def add(self, i0: int, ifaces: np.ndarray, batch: FrameBatch, cols: Columns) -> tuple[int, int]:
        """Count packets from ``i0``; stop before a packet whose time closes windows: (EMIT, i), else (DONE, n)."""
        W, L = self.W, self.L
        st = self.stats
        first_window = self.first_window
        n = len(batch)
        iface_l = ifaces[i0:].tolist()
        sec_l = batch.sec[i0:].tolist()
        nsec_l = batch.nsec[i0:].tolist()
        status_l = cols.status[i0:].tolist()
        reason_l = cols.reason[i0:].tolist()
        fam_l = cols.family[i0:].tolist()
        shi_l = cols.src_hi[i0:].tolist()
        slo_l = cols.src_lo[i0:].tolist()
        dhi_l = cols.dst_hi[i0:].tolist()
        dlo_l = cols.dst_lo[i0:].tolist()
        sp_l = cols.sport[i0:].tolist()
        dp_l = cols.dport[i0:].tolist()
        pr_l = cols.proto[i0:].tolist()
        by_l = cols.nbytes[i0:].tolist()
        fl_l = cols.flags[i0:].tolist()
        for j in range(n - i0):
            sec = sec_l[j]
            iface = iface_l[j]
            status = status_l[j]
            if sec < 0:                                   # unusable timestamp: counted where we are
                if self.max_sec is None:
                    self.early_bad.append(iface)
                    self._count_malformed(reason_l[j])
                    continue
                sec = self.max_sec
            elif self.max_sec is None or sec > self.max_sec:
                self.max_sec = sec
                if self.early_bad:
                    ws0 = sec - sec % W
                    for bad_iface in self.early_bad:
                        self.skip(ws0, bad_iface, 1, None)
                    self.early_bad.clear()
                if self.horizon is None or sec - W - L >= self.horizon:
                    if self.open and min(self.open) + W + L <= sec:
                        return EMIT, i0 + j
            ws = sec - sec % W
            if iface not in first_window:
                first_window[iface] = ws
            table = self._table(ws)
            if status == OK:
                st.ip_packets += 1
                if reason_l[j]:
                    text = REASONS[reason_l[j]]
                    st.anomalies[text] = st.anomalies.get(text, 0) + 1
                nbytes = by_l[j]
                st.ip_bytes += nbytes
                key = (iface, fam_l[j], shi_l[j], slo_l[j], dhi_l[j], dlo_l[j], sp_l[j], dp_l[j], pr_l[j])
                entry = table.flows.get(key)
                nsec = nsec_l[j]
                if entry is None:
                    if self.nflows >= self.max_flows:
                        st.overflow_packets += 1
                        self._skip_in(table, iface, 1, nbytes)
                        continue
                    self.nflows += 1
                    table.flows[key] = [1, nbytes, fl_l[j], sec, nsec, sec, nsec]
                else:
                    entry[_PK] += 1
                    entry[_BY] += nbytes
                    entry[_FL] |= fl_l[j]
                    if sec < entry[_FS] or (sec == entry[_FS] and nsec < entry[_FNS]):
                        entry[_FS], entry[_FNS] = sec, nsec
                    if sec > entry[_LS] or (sec == entry[_LS] and nsec > entry[_LNS]):
                        entry[_LS], entry[_LNS] = sec, nsec
            elif status == NON_IP:
                st.non_ip += 1
            else:
                self._count_malformed(reason_l[j])
                self._skip_in(table, iface, 1, None)
        return DONE, n

    def _count_malformed(self, reason: int) -> None:
        count_malformed(self.stats, reason, 1)

    def _table(self, ws: int) -> _Window:
        if self.horizon is not None and ws < self.horizon:
            self.stats.late_packets += 1
            tables = self.late
        else:
            tables = self.open
        table = tables.get(ws)
        if table is None:
            table = tables[ws] = _Window()
        return table

    def skip(self, ws: int, iface: int, packets: int, nbytes: int | None) -> None:
        """Count skipped traffic for a window and interface (SKIPDATA)."""
        self._skip_in(self._table(ws), iface, packets, nbytes)

    @staticmethod
    def _skip_in(table: _Window, iface: int, packets: int, nbytes: int | None) -> None:
        s = table.skip.get(iface)
        if s is None:
            s = table.skip[iface] = [0, 0, True]
        s[0] += packets
        if nbytes is None:
            s[2] = False
        else:
            s[1] += nbytes

    def take(self, windows: list[int]) -> Taken:
        """Remove the given windows (late or open) and hand over their contents."""
        cols: dict[str, list] = {c: [] for c in FLOW_COLUMNS}
        skips = []
        for ws in windows:
            table = self.late.pop(ws, None) or self.open.pop(ws, None)
            if table is None:
                continue
            groups: dict[int, list] = {}
            for key, e in table.flows.items():
                groups.setdefault(key[0], []).append((key, e))
            for iface in sorted(groups):
                for key, e in groups[iface]:
                    cols["ws"].append(ws)
                    for name, v in zip(FLOW_COLUMNS[1:10], key):
                        cols[name].append(v)
                    for name, v in zip(FLOW_COLUMNS[10:], e):
                        cols[name].append(v)
            self.nflows -= len(table.flows)
            for iface, s in table.skip.items():
                skips.append((ws, iface, s[0], s[1], s[2]))
        flows = {c: np.array(v, dtype=_FLOW_DTYPES.get(c, np.int64)) for c, v in cols.items()}
        return Taken(flows, skips)


def count_malformed(st: MeterStats, reason: int, n: int) -> None:
    st.malformed += n
    text = REASONS[reason] or "undecodable"
    st.malformed_reasons[text] = st.malformed_reasons.get(text, 0) + n


class Meter:
    """Aggregates decoded frames into per-window flow records.

    ``interfaces`` is the run's interface list (it may grow while the run goes on);
    ``link_iface()`` maps a frame's link index to its interface index. ``compiled``
    chooses the compiled aggregator (numba) over the plain-Python one; both give the
    same records.
    """

    def __init__(self, interfaces: Sequence[str], link_iface: Callable[[], np.ndarray], *,
                 window: int = 60, lateness: int = 5, max_flows: int = 1_000_000,
                 account_id: str | None = None, timestamps: str = "window", compiled: bool = False,
                 live: bool = False, addresses: dict | None = None):
        if window < 1:
            raise ValueError("window must be at least 1 second")
        self.interfaces = interfaces
        self._link_iface = link_iface
        self.W = int(window)
        self.L = int(lateness)
        self.max_flows = int(max_flows)
        self.account_id = account_id
        self.first_last = timestamps == "first-last"
        self.compiled = compiled
        self.stats = MeterStats()
        if compiled:
            from .fast.meter import JitAggregator
            self.agg = JitAggregator(self.W, self.L, self.max_flows, self.stats)
        else:
            self.agg = PyAggregator(self.W, self.L, self.max_flows, self.stats)
        self._last_end: int | None = None       # end of the newest emitted window
        self._idle_from: dict[int, int | None] = {}  # tracked interface -> start of its idle run
        #: live capture: windows also close on the wall clock (tick), every interface is observed
        #: from the start, and each idle window is its own NODATA record
        self.live = live
        self.last_trigger: int | None = None
        #: interface index -> its own addresses (kept up to date by the sources): flow-direction
        self.addresses = addresses if addresses is not None else {}

    def start(self, now: float) -> None:
        """Live capture starts at wall-clock time ``now``: every known interface is observed from its window."""
        ws = int(now) - int(now) % self.W
        self._last_end = ws
        # a frame stamped before the start (a clock step, a bogus timestamp) is late, not a window
        # of its own that would stretch the run back to its time
        self.agg.horizon = ws
        for iface in range(len(self.interfaces)):
            self._idle_from.setdefault(iface, None)

    def tick(self, now: float) -> list[RecordBatch]:
        """Live capture: close the windows whose end plus the lateness the wall clock has passed."""
        if not self.live:
            return []
        threshold = int(now) - self.W - self.L
        if self._last_end is not None and threshold < self._last_end:
            return []
        batch = self._emit_until(threshold)
        return [batch] if len(batch) else []

    # -- input ---------------------------------------------------------------------------
    def add(self, batch: FrameBatch, cols: Columns) -> list[RecordBatch]:
        """Account a decoded batch; return the records of the windows it closed."""
        out: list[RecordBatch] = []
        n = len(batch)
        self.stats.frames += n
        #: frames of this batch counted before its last emission (None: it emitted nothing)
        self.last_trigger = None
        if n:
            ifaces = self._link_iface()[batch.link]
            i = 0
            while True:
                code, i = self.agg.add(i, ifaces, batch, cols)
                if code == DONE:
                    break
                out.append(self._emit_until(self.agg.max_sec - self.W - self.L))
                self.last_trigger = i
        for loss in batch.losses:
            self.lost(loss)
        return [b for b in out if len(b)]

    def lost(self, loss: Loss) -> None:
        """Account traffic a source could not deliver (SKIPDATA for its window)."""
        self.stats.lost_packets += loss.packets
        max_sec = self.agg.max_sec
        sec = loss.sec if loss.sec >= 0 else (max_sec or 0)
        iface = int(self._link_iface()[loss.link])
        self.agg.skip(sec - sec % self.W, iface, loss.packets, loss.bytes)

    # -- output --------------------------------------------------------------------------
    def _emit_until(self, threshold: int) -> RecordBatch:
        """Emit every open window starting at or before ``threshold`` (and pending late flows)."""
        W = self.W
        closing = [w for w in self.agg.open_windows() if w <= threshold]
        batch = self._emit(closing, upto=threshold if self.live else None)
        new_horizon = threshold - threshold % W + W
        if self.agg.horizon is None or new_horizon > self.agg.horizon:
            self.agg.horizon = new_horizon
        return batch

    def flush(self, now: float | None = None) -> list[RecordBatch]:
        """Emit everything still open (end of input, or a signal): the run's last records.

        Live capture passes the wall-clock time: the windows up to the current one are written.
        """
        upto = None
        if self.live and now is not None:
            upto = int(now) - int(now) % self.W
        batch = self._emit(self.agg.open_windows(), upto=upto)
        trailing = []
        if self._last_end is not None:
            for iface in sorted(self._idle_from):
                idle = self._idle_from[iface]
                if idle is not None:
                    trailing.append((KIND_NODATA, iface, idle, self._last_end))
                    self._idle_from[iface] = None
            self.agg.horizon = self._last_end
        out = [batch, self._special_rows(trailing)]
        return [b for b in out if len(b)]

    def _emit(self, closing: list[int], upto: int | None = None) -> RecordBatch:
        """Records of the late windows, then of the closing ones, as one batch.

        ``upto`` (live capture): windows no frame fell in, up to the one starting at or before
        it, are emitted too (NODATA for every interface).
        """
        late = self.agg.late_windows()
        taken = self.agg.take(late + closing)
        flows = taken.flows
        ws_col = flows["ws"]
        iface_col = flows["iface"]
        skips: dict[tuple[int, int], tuple] = {(s[0], s[1]): s for s in taken.skips}
        # rows come sorted by window (late windows all precede the closing ones), then interface
        pieces: list = []      # (lo, hi) flow row ranges and special rows (NODATA, SKIPDATA), in order

        def window_rows(ws: int) -> tuple[int, int]:
            return int(np.searchsorted(ws_col, ws, "left")), int(np.searchsorted(ws_col, ws, "right"))

        def add_interface(ws: int, iface: int, lo: int, hi: int) -> None:
            a = lo + int(np.searchsorted(iface_col[lo:hi], iface, "left"))
            b = lo + int(np.searchsorted(iface_col[lo:hi], iface, "right"))
            if b > a:
                pieces.append((a, b))
            s = skips.get((ws, iface))
            if s is not None:
                pieces.append((KIND_SKIPDATA, iface, ws, ws + self.W, s[2], s[3] if s[4] else -1))

        def ifaces_in(ws: int, lo: int, hi: int) -> set[int]:
            found = {iface for (w, iface) in skips if w == ws}
            found.update(np.unique(iface_col[lo:hi]).tolist())
            return found

        for ws in late:
            lo, hi = window_rows(ws)
            for iface in sorted(ifaces_in(ws, lo, hi)):
                add_interface(ws, iface, lo, hi)
        W = self.W
        idle = self._idle_from
        live = self.live

        def empty_windows(until: int) -> int:
            """Live: NODATA for every interface in each window from the last emitted one to ``until``."""
            count = 0
            gw = self._last_end
            while gw < until:
                for iface in sorted(idle):
                    pieces.append((KIND_NODATA, iface, gw, gw + W, 0, -1))
                gw += W
                count += 1
            return count

        for ws in closing:
            last_end = self._last_end
            if last_end is not None and ws > last_end:        # windows no frame fell in: idle everywhere
                if live:
                    empty_windows(ws)
                else:
                    for iface in idle:
                        if idle[iface] is None:
                            idle[iface] = last_end
            first_window = self.agg.first_window
            if len(idle) < len(first_window):                 # interfaces observed from this window on
                for iface, first in first_window.items():
                    if iface not in idle and first <= ws:
                        idle[iface] = None
            lo, hi = window_rows(ws)
            active = ifaces_in(ws, lo, hi)
            for iface in sorted(set(idle) | active):
                if iface in active:
                    if idle.get(iface) is not None:
                        pieces.append((KIND_NODATA, iface, idle[iface], ws, 0, -1))
                    idle[iface] = None
                    add_interface(ws, iface, lo, hi)
                elif live:
                    pieces.append((KIND_NODATA, iface, ws, ws + W, 0, -1))
                elif idle[iface] is None:
                    idle[iface] = ws
            self._last_end = ws + W if last_end is None else max(last_end, ws + W)
            self.stats.windows += 1 + (0 if last_end is None or ws <= last_end else (ws - last_end) // W)
        if upto is not None and self._last_end is not None:
            end = upto - upto % W + W
            self.stats.windows += empty_windows(end)
            self._last_end = max(self._last_end, end)
        return self._assemble(flows, pieces)

    def _special_rows(self, rows) -> RecordBatch:
        return self._assemble({c: np.zeros(0, _FLOW_DTYPES.get(c, np.int64)) for c in FLOW_COLUMNS},
                              [(kind, iface, start, end, 0, -1) for kind, iface, start, end in rows])

    def _assemble(self, flows: dict[str, np.ndarray], pieces: list) -> RecordBatch:
        """Build the emission's columns: taken flow rows and special rows, in ``pieces`` order."""
        W = self.W
        st = self.stats
        nflows = len(flows["ws"])
        specials = [p for p in pieces if len(p) != 2]
        # index into an extended table: flow rows first, then one row per special piece
        order = []
        k = nflows
        for p in pieces:
            if len(p) == 2:
                order.append(np.arange(p[0], p[1], dtype=np.int64))
            else:
                order.append(np.array([k], np.int64))
                k += 1
        idx = np.concatenate(order) if order else np.zeros(0, np.int64)
        ns = len(specials)
        kind = np.concatenate([np.full(nflows, KIND_OK, np.int8),
                               np.array([p[0] for p in specials], np.int8)])
        iface = np.concatenate([flows["iface"], np.array([p[1] for p in specials], np.int64)])
        sp_start = np.array([p[2] for p in specials], np.int64)
        sp_end = np.array([p[3] for p in specials], np.int64)
        if self.first_last:
            start = np.concatenate([flows["fs"], sp_start])
            end = np.concatenate([flows["ls"], sp_end])
        else:
            start = np.concatenate([flows["ws"], sp_start])
            end = np.concatenate([flows["ws"] + W, sp_end])
        packets = np.concatenate([flows["pk"], np.array([p[4] for p in specials], np.int64)])
        nbytes = np.concatenate([flows["by"], np.array([p[5] for p in specials], np.int64)])
        zeros = np.zeros(ns, np.int64)
        uz = np.zeros(ns, np.uint64)

        def col(name, pad):
            return np.concatenate([flows[name], pad])

        batch = RecordBatch(
            interfaces=self.interfaces, account_id=self.account_id, compiled=self.compiled,
            addresses=self.addresses,
            kind=kind[idx], iface=iface[idx], fam=col("fam", zeros)[idx],
            shi=col("shi", uz)[idx], slo=col("slo", uz)[idx], dhi=col("dhi", uz)[idx], dlo=col("dlo", uz)[idx],
            sport=col("sport", zeros)[idx], dport=col("dport", zeros)[idx], proto=col("proto", zeros)[idx],
            packets=packets[idx], bytes=nbytes[idx], start=start[idx], end=end[idx],
            flags=col("fl", zeros)[idx], fs=col("fs", zeros)[idx], fns=col("fns", zeros)[idx],
            ls=col("ls", zeros)[idx], lns=col("lns", zeros)[idx])
        st.flows += nflows
        n_nodata = sum(1 for p in specials if p[0] == KIND_NODATA)
        st.nodata_records += n_nodata
        st.skipdata_records += ns - n_nodata
        st.records += nflows + ns
        return batch
