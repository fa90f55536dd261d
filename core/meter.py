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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .decode import MALFORMED, NON_IP, OK, REASONS, Columns
from .frames import FrameBatch, Loss
from .records import Record, format_addr

# flow entry list indices
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


class _Window:
    __slots__ = ("flows", "skip")

    def __init__(self):
        self.flows: dict[tuple, list] = {}
        self.skip: dict[int, list] = {}     # iface -> [packets, bytes, bytes_known]


class Meter:
    """Aggregates decoded frames into per-window flow records.

    ``interfaces`` is the run's interface list (it may grow while the run goes on);
    ``link_iface[link]`` maps a frame's link index to its interface index.
    """

    def __init__(self, interfaces: Sequence[str], link_iface: Callable[[], np.ndarray], *,
                 window: int = 60, lateness: int = 5, max_flows: int = 1_000_000,
                 account_id: str | None = None, timestamps: str = "window"):
        if window < 1:
            raise ValueError("window must be at least 1 second")
        self.interfaces = interfaces
        self._link_iface = link_iface
        self.W = int(window)
        self.L = int(lateness)
        self.max_flows = int(max_flows)
        self.account_id = account_id
        self.first_last = timestamps == "first-last"
        self.stats = MeterStats()
        self._open: dict[int, _Window] = {}
        self._late: dict[int, _Window] = {}
        self._nflows = 0
        self._max_sec: int | None = None
        self._horizon: int | None = None        # windows starting before this were emitted
        self._last_end: int | None = None       # end of the newest emitted window
        self._first_window: dict[int, int] = {}  # interface -> window of its first frame
        self._idle_from: dict[int, int | None] = {}  # tracked interface -> start of its idle run
        self._early_bad: list[int] = []         # ifaces of unusable-timestamp frames seen before any time

    # -- input ---------------------------------------------------------------------------
    def add(self, batch: FrameBatch, cols: Columns) -> list[Record]:
        """Account a decoded batch; return the records of the windows it closed."""
        out: list[Record] = []
        W, L = self.W, self.L
        st = self.stats
        iface_of = self._link_iface()
        first_window = self._first_window
        n = len(batch)
        st.frames += n
        if n:
            iface_l = iface_of[batch.link].tolist()
            sec_l = batch.sec.tolist()
            nsec_l = batch.nsec.tolist()
            status_l = cols.status.tolist()
            reason_l = cols.reason.tolist()
            fam_l = cols.family.tolist()
            shi_l = cols.src_hi.tolist()
            slo_l = cols.src_lo.tolist()
            dhi_l = cols.dst_hi.tolist()
            dlo_l = cols.dst_lo.tolist()
            sp_l = cols.sport.tolist()
            dp_l = cols.dport.tolist()
            pr_l = cols.proto.tolist()
            by_l = cols.nbytes.tolist()
            fl_l = cols.flags.tolist()
        for i in range(n):
            sec = sec_l[i]
            iface = iface_l[i]
            status = status_l[i]
            if sec < 0:                                   # unusable timestamp: counted where we are
                if self._max_sec is None:
                    self._early_bad.append(iface)
                    self._count_malformed(reason_l[i])
                    continue
                sec = self._max_sec
            elif self._max_sec is None or sec > self._max_sec:
                self._max_sec = sec
                if self._early_bad:
                    ws0 = sec - sec % W
                    for bad_iface in self._early_bad:
                        self._skip(self._table(ws0), bad_iface, 1, None)
                    self._early_bad.clear()
                if self._horizon is None or sec - W - L >= self._horizon:
                    if self._open and min(self._open) + W + L <= sec:
                        out += self._emit_until(sec - W - L)
            ws = sec - sec % W
            if iface not in first_window:
                first_window[iface] = ws
            table = self._table(ws)
            if status == OK:
                st.ip_packets += 1
                if reason_l[i]:
                    text = REASONS[reason_l[i]]
                    st.anomalies[text] = st.anomalies.get(text, 0) + 1
                nbytes = by_l[i]
                st.ip_bytes += nbytes
                key = (iface, fam_l[i], shi_l[i], slo_l[i], dhi_l[i], dlo_l[i], sp_l[i], dp_l[i], pr_l[i])
                entry = table.flows.get(key)
                nsec = nsec_l[i]
                if entry is None:
                    if self._nflows >= self.max_flows:
                        st.overflow_packets += 1
                        self._skip(table, iface, 1, nbytes)
                        continue
                    self._nflows += 1
                    table.flows[key] = [1, nbytes, fl_l[i], sec, nsec, sec, nsec]
                else:
                    entry[_PK] += 1
                    entry[_BY] += nbytes
                    entry[_FL] |= fl_l[i]
                    if sec < entry[_FS] or (sec == entry[_FS] and nsec < entry[_FNS]):
                        entry[_FS], entry[_FNS] = sec, nsec
                    if sec > entry[_LS] or (sec == entry[_LS] and nsec > entry[_LNS]):
                        entry[_LS], entry[_LNS] = sec, nsec
            elif status == NON_IP:
                st.non_ip += 1
            else:
                self._count_malformed(reason_l[i])
                self._skip(table, iface, 1, None)
        for loss in batch.losses:
            out += self.lost(loss)
        return out

    def lost(self, loss: Loss) -> list[Record]:
        """Account traffic a source could not deliver (SKIPDATA for its window)."""
        self.stats.lost_packets += loss.packets
        sec = loss.sec if loss.sec >= 0 else (self._max_sec or 0)
        iface = int(self._link_iface()[loss.link])
        self._skip(self._table(sec - sec % self.W), iface, loss.packets, loss.bytes)
        return []

    def _count_malformed(self, reason: int) -> None:
        st = self.stats
        st.malformed += 1
        text = REASONS[reason] or "undecodable"
        st.malformed_reasons[text] = st.malformed_reasons.get(text, 0) + 1

    def _table(self, ws: int) -> _Window:
        if self._horizon is not None and ws < self._horizon:
            self.stats.late_packets += 1
            tables = self._late
        else:
            tables = self._open
        table = tables.get(ws)
        if table is None:
            table = tables[ws] = _Window()
        return table

    @staticmethod
    def _skip(table: _Window, iface: int, packets: int, nbytes: int | None) -> None:
        s = table.skip.get(iface)
        if s is None:
            s = table.skip[iface] = [0, 0, True]
        s[0] += packets
        if nbytes is None:
            s[2] = False
        else:
            s[1] += nbytes

    # -- output --------------------------------------------------------------------------
    def _emit_until(self, threshold: int) -> list[Record]:
        """Emit every open window starting at or before ``threshold`` (and pending late flows)."""
        out = self._emit_late()
        W = self.W
        for ws in sorted(w for w in self._open if w <= threshold):
            out += self._emit_window(ws, self._open.pop(ws))
        new_horizon = threshold - threshold % W + W
        if self._horizon is None or new_horizon > self._horizon:
            self._horizon = new_horizon
        return out

    def flush(self) -> list[Record]:
        """Emit everything still open (end of input, or a signal): the run's last records."""
        out = self._emit_late()
        for ws in sorted(self._open):
            out += self._emit_window(ws, self._open.pop(ws))
        if self._last_end is not None:
            for iface in sorted(self._idle_from):
                idle = self._idle_from[iface]
                if idle is not None:
                    out.append(self._nodata(iface, idle, self._last_end))
                    self._idle_from[iface] = None
        if self._last_end is not None:
            self._horizon = self._last_end
        return out

    def _emit_late(self) -> list[Record]:
        out: list[Record] = []
        for ws in sorted(self._late):
            table = self._late.pop(ws)
            groups = _by_interface(table)
            for iface in sorted(set(groups) | set(table.skip)):
                out += self._records(ws, groups.get(iface, ()), table.skip.get(iface), iface)
        return out

    def _emit_window(self, ws: int, table: _Window) -> list[Record]:
        W = self.W
        out: list[Record] = []
        last_end = self._last_end
        idle = self._idle_from
        if last_end is not None and ws > last_end:        # windows no frame fell in: idle everywhere
            for iface in idle:
                if idle[iface] is None:
                    idle[iface] = last_end
        if len(idle) < len(self._first_window):          # interfaces observed from this window on
            for iface, first in self._first_window.items():
                if iface not in idle and first <= ws:
                    idle[iface] = None
        groups = _by_interface(table)
        for iface in sorted(set(idle) | set(groups) | set(table.skip)):
            if iface in groups or iface in table.skip:
                if idle.get(iface) is not None:
                    out.append(self._nodata(iface, idle[iface], ws))
                idle[iface] = None
                out += self._records(ws, groups.get(iface, ()), table.skip.get(iface), iface)
            elif idle[iface] is None:
                idle[iface] = ws
        self._last_end = ws + W
        self.stats.windows += 1 + (0 if last_end is None or ws <= last_end else (ws - last_end) // W)
        return out

    def _records(self, ws: int, flows, s: list | None, iface: int) -> list[Record]:
        """The OK records of one interface's flows in a window (first-seen order), then its SKIPDATA."""
        out = []
        W = self.W
        acct = self.account_id
        name = self.interfaces[iface]
        st = self.stats
        for key, e in flows:
            fam = key[1]
            if self.first_last:
                start, end = e[_FS], e[_LS]
            else:
                start, end = ws, ws + W
            out.append(Record(
                acct, name, format_addr(fam, key[2], key[3]), format_addr(fam, key[4], key[5]),
                key[6], key[7], key[8], e[_PK], e[_BY], start, end, "ACCEPT", "OK",
                tcp_flags=e[_FL], type="IPv4" if fam == 4 else "IPv6",
                first_seen=(e[_FS], e[_FNS]), last_seen=(e[_LS], e[_LNS])))
        self._nflows -= len(out)
        st.flows += len(out)
        if s is not None:
            out.append(Record(acct, name, packets=s[0], bytes=s[1] if s[2] else None,
                              start=ws, end=ws + W, log_status="SKIPDATA"))
            st.skipdata_records += 1
        st.records += len(out)
        return out

    def _nodata(self, iface: int, start: int, end: int) -> Record:
        self.stats.nodata_records += 1
        self.stats.records += 1
        return Record(self.account_id, self.interfaces[iface], start=start, end=end, log_status="NODATA")


def _by_interface(table: _Window) -> dict[int, list]:
    """A window's flows grouped by interface, each group in first-seen order."""
    groups: dict[int, list] = {}
    for key, e in table.flows.items():
        g = groups.get(key[0])
        if g is None:
            g = groups[key[0]] = []
        g.append((key, e))
    return groups
