"""The compiled aggregator: the meter's per-packet work in numba kernels.

It does exactly what :class:`flowlog.core.meter.PyAggregator` does — window of each
frame, late frames, first window of each interface, flow lookup and capacity, skipped
traffic — over an open-addressing hash table held in one int64 array, and stops at the
packet whose time closes windows so that the meter can emit them first. Tests hold the
two aggregators to identical records.
"""

from __future__ import annotations

import numpy as np

from ..decode import NON_IP, OK, REASONS, Columns
from ..frames import FrameBatch
from ..jit import kernel
from ..meter import DONE, EMIT, MeterStats, Taken

# flow table columns: KEY packs interface, family and protocol (never 0 in a used row: family is 4 or 6),
# PORTS the two ports, FIRST and LAST the first and last packet times as nanoseconds since the window start
KEY, WS, SHI, SLO, DHI, DLO, PORTS, PK, BY, FL, FIRST, LAST, SEQ = range(13)
NCOL = 13
NS = 1_000_000_000
# skip table columns
K_USED, K_WS, K_IFACE, K_PK, K_BY, K_UNKNOWN = range(6)
KCOL = 6
# scalar state
(S_HAS_MAX, S_MAX, S_HAS_HOR, S_HOR, S_SEQ, S_NFLOWS, S_NOPEN, S_NLATE, S_NSKIP, S_IP, S_IPBYTES, S_NONIP,
 S_MAL, S_LATE, S_OVER, S_NEARLY, S_LASTWS, S_LASTLATE, S_HAS_LASTWS, NSCALAR) = range(20)

GROW = 2
UNSEEN = np.iinfo(np.int64).min
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)


@kernel
def _mix(h, v):
    h = (h ^ np.uint64(v)) * _K2
    return h ^ (h >> np.uint64(29))


@kernel
def _hash(ws, key, shi, slo, dhi, dlo, ports):
    h = np.uint64(ws) * _K1
    h = _mix(h, key)
    h = _mix(h, shi)
    h = _mix(h, slo)
    h = _mix(h, dhi)
    h = _mix(h, dlo)
    h = _mix(h, ports)
    h = (h ^ (h >> np.uint64(31))) * _K3
    return h ^ (h >> np.uint64(32))


@kernel
def _find(table, ws, key, shi, slo, dhi, dlo, ports):
    """Row of the flow, or -(row + 1) of the empty slot where it would go."""
    mask = table.shape[0] - 1
    i = np.int64(_hash(ws, key, shi, slo, dhi, dlo, ports) & np.uint64(mask))
    while table[i, KEY]:
        if (table[i, SLO] == slo and table[i, DLO] == dlo and table[i, PORTS] == ports and table[i, KEY] == key
                and table[i, WS] == ws and table[i, SHI] == shi and table[i, DHI] == dhi):
            return i
        i = (i + 1) & mask
    return -(i + 1)


@kernel
def _find_skip(skip, ws, iface):
    mask = skip.shape[0] - 1
    i = np.int64((np.uint64(ws) * _K1 ^ np.uint64(iface) * _K2) >> np.uint64(17)) & mask
    while skip[i, K_USED]:
        if skip[i, K_WS] == ws and skip[i, K_IFACE] == iface:
            return i
        i = (i + 1) & mask
    return -(i + 1)


@kernel
def _skip_add(skip, sc, ws, iface, packets, nbytes):
    """SKIPDATA for (window, interface); nbytes < 0: unknown."""
    k = _find_skip(skip, ws, iface)
    if k < 0:
        k = -k - 1
        skip[k, K_USED] = 1
        skip[k, K_WS] = ws
        skip[k, K_IFACE] = iface
        skip[k, K_PK] = 0
        skip[k, K_BY] = 0
        skip[k, K_UNKNOWN] = 0
        sc[S_NSKIP] += 1
    skip[k, K_PK] += packets
    if nbytes < 0:
        skip[k, K_UNKNOWN] = 1
    else:
        skip[k, K_BY] += nbytes


@kernel
def _remember(ws, windows, count, sc, late):
    """Add ``ws`` to a small list of window starts unless it is there (the last one seen is cached)."""
    if sc[S_HAS_LASTWS] and sc[S_LASTWS] == ws and sc[S_LASTLATE] == late:
        return
    for j in range(sc[count]):
        if windows[j] == ws:
            break
    else:
        windows[sc[count]] = ws
        sc[count] += 1
    sc[S_LASTWS] = ws
    sc[S_LASTLATE] = late
    sc[S_HAS_LASTWS] = 1


@kernel
def _note_window(ws, sc, open_ws, late_ws):
    """Register the frame's window as open or late (as PyAggregator._table does); True if late."""
    if sc[S_HAS_HOR] and ws < sc[S_HOR]:
        sc[S_LATE] += 1
        _remember(ws, late_ws, S_NLATE, sc, 1)
        return True
    _remember(ws, open_ws, S_NOPEN, sc, 0)
    return False


@kernel
def _add(i0, n, sec, nsec, iface, status, reason, fam, shi, slo, dhi, dlo, sport, dport, proto, nbytes, flags,
         W, L, max_flows, table, skip, open_ws, late_ws, first_win, early_bad, sc, mal_reasons, anomalies):
    cap = table.shape[0]
    for i in range(i0, n):
        if (sc[S_NFLOWS] + 1) * 2 > cap or (sc[S_NSKIP] + len(early_bad) + 1) * 2 > skip.shape[0] \
                or sc[S_NOPEN] + 2 > len(open_ws) or sc[S_NLATE] + 2 > len(late_ws):
            return GROW, i
        t = sec[i]
        f = iface[i]
        st = status[i]
        if t < 0:                                  # unusable timestamp: counted where we are
            if not sc[S_HAS_MAX]:
                early_bad[f] += 1
                sc[S_NEARLY] += 1
                sc[S_MAL] += 1
                mal_reasons[reason[i]] += 1
                continue
            t = sc[S_MAX]
        elif not sc[S_HAS_MAX] or t > sc[S_MAX]:
            sc[S_MAX] = t
            sc[S_HAS_MAX] = 1
            if sc[S_NEARLY]:
                ws0 = t - t % W
                for g in range(len(early_bad)):
                    if early_bad[g]:
                        _note_window(ws0, sc, open_ws, late_ws)
                        _skip_add(skip, sc, ws0, g, early_bad[g], -1)
                        early_bad[g] = 0
                sc[S_NEARLY] = 0
            if not sc[S_HAS_HOR] or t - W - L >= sc[S_HOR]:
                if sc[S_NOPEN]:
                    lo = open_ws[0]
                    for j in range(1, sc[S_NOPEN]):
                        if open_ws[j] < lo:
                            lo = open_ws[j]
                    if lo + W + L <= t:
                        return EMIT, i
        ws = t - t % W
        if first_win[f] == UNSEEN:
            first_win[f] = ws
        _note_window(ws, sc, open_ws, late_ws)
        if st == OK:
            sc[S_IP] += 1
            if reason[i]:
                anomalies[reason[i]] += 1
            b = nbytes[i]
            sc[S_IPBYTES] += b
            key = (f << 16) | (fam[i] << 8) | proto[i]
            ports = (sport[i] << 16) | dport[i]
            k = _find(table, ws, key, shi[i], slo[i], dhi[i], dlo[i], ports)
            at = (t - ws) * NS + nsec[i]
            if k < 0:
                if sc[S_NFLOWS] >= max_flows:
                    sc[S_OVER] += 1
                    _skip_add(skip, sc, ws, f, 1, b)
                    continue
                k = -k - 1
                table[k, KEY] = key
                table[k, WS] = ws
                table[k, SHI] = shi[i]
                table[k, SLO] = slo[i]
                table[k, DHI] = dhi[i]
                table[k, DLO] = dlo[i]
                table[k, PORTS] = ports
                table[k, PK] = 1
                table[k, BY] = b
                table[k, FL] = flags[i]
                table[k, FIRST] = at
                table[k, LAST] = at
                table[k, SEQ] = sc[S_SEQ]
                sc[S_SEQ] += 1
                sc[S_NFLOWS] += 1
            else:
                table[k, PK] += 1
                table[k, BY] += b
                table[k, FL] |= flags[i]
                if at < table[k, FIRST]:
                    table[k, FIRST] = at
                if at > table[k, LAST]:
                    table[k, LAST] = at
        elif st == NON_IP:
            sc[S_NONIP] += 1
        else:
            sc[S_MAL] += 1
            mal_reasons[reason[i]] += 1
            _skip_add(skip, sc, ws, f, 1, -1)
    return DONE, n


@kernel
def _in_sorted(values, x):
    i = np.searchsorted(values, x)
    return i < len(values) and values[i] == x


@kernel
def _reinsert(table, src):
    mask = table.shape[0] - 1
    i = np.int64(_hash(src[WS], src[KEY], src[SHI], src[SLO], src[DHI], src[DLO], src[PORTS]) & np.uint64(mask))
    while table[i, KEY]:
        i = (i + 1) & mask
    table[i, :] = src


@kernel
def _take(table, windows, out):
    """Move the flows of ``windows`` (sorted) to ``out`` and delete them from the table in place.

    Deletion shifts later members of a probe run back (linear probing without tombstones);
    the scan starts just after an empty slot so that no run is cut by the table's end.
    """
    cap = table.shape[0]
    mask = cap - 1
    start = 0
    while table[start, KEY]:
        start += 1
    m = 0
    k = 0
    while k < cap:
        r = (start + 1 + k) & mask
        if table[r, KEY] and _in_sorted(windows, table[r, WS]):
            out[m, :] = table[r, :]
            m += 1
            # backward-shift deletion: pull later members of the run into the hole
            hole = r
            j = (r + 1) & mask
            while table[j, KEY]:
                home = np.int64(_hash(table[j, WS], table[j, KEY], table[j, SHI], table[j, SLO], table[j, DHI],
                                      table[j, DLO], table[j, PORTS]) & np.uint64(mask))
                # move j into the hole unless its home lies cyclically in (hole, j]
                if (j > hole and (home <= hole or home > j)) or (j < hole and home <= hole and home > j):
                    table[hole, :] = table[j, :]
                    hole = j
                j = (j + 1) & mask
            table[hole, :] = 0
            continue                 # slot r now holds a row not yet looked at
        k += 1
    return m


@kernel
def _rehash(old, new):
    for r in range(old.shape[0]):
        if old[r, KEY]:
            _reinsert(new, old[r])


@kernel
def _split_skip(old, new, windows, out):
    m = 0
    mask = new.shape[0] - 1
    for r in range(old.shape[0]):
        if old[r, K_USED]:
            if _in_sorted(windows, old[r, K_WS]):
                out[m, :] = old[r, :]
                m += 1
            else:
                i = np.int64((np.uint64(old[r, K_WS]) * _K1 ^ np.uint64(old[r, K_IFACE]) * _K2)
                             >> np.uint64(17)) & mask
                while new[i, K_USED]:
                    i = (i + 1) & mask
                new[i, :] = old[r, :]
    return m


class JitAggregator:
    """Per-packet accounting in compiled kernels (same contract as PyAggregator)."""

    def __init__(self, window: int, lateness: int, max_flows: int, stats: MeterStats,
                 capacity: int = 1 << 14):
        self.W, self.L, self.max_flows, self.stats = window, lateness, max_flows, stats
        self.table = np.zeros((capacity, NCOL), np.int64)
        self._min_capacity = capacity
        self.skiptab = np.zeros((256, KCOL), np.int64)
        self.open_ws = np.zeros(64, np.int64)
        self.late_ws = np.zeros(64, np.int64)
        self.first_win = np.full(8, UNSEEN, np.int64)
        self.early_bad = np.zeros(8, np.int64)
        self.sc = np.zeros(NSCALAR, np.int64)
        self.mal_reasons = np.zeros(len(REASONS) + 1, np.int64)
        self.anomalies = np.zeros(len(REASONS) + 1, np.int64)

    # state the meter reads and sets
    @property
    def max_sec(self):
        return int(self.sc[S_MAX]) if self.sc[S_HAS_MAX] else None

    @property
    def horizon(self):
        return int(self.sc[S_HOR]) if self.sc[S_HAS_HOR] else None

    @horizon.setter
    def horizon(self, value):
        self.sc[S_HOR] = value
        self.sc[S_HAS_HOR] = 1
        self.sc[S_HAS_LASTWS] = 0

    @property
    def first_window(self) -> dict[int, int]:
        seen = np.flatnonzero(self.first_win != UNSEEN)
        return dict(zip(seen.tolist(), self.first_win[seen].tolist()))

    def open_windows(self) -> list[int]:
        return sorted(self.open_ws[: self.sc[S_NOPEN]].tolist())

    def late_windows(self) -> list[int]:
        return sorted(self.late_ws[: self.sc[S_NLATE]].tolist())

    def _ensure_interfaces(self, n: int) -> None:
        if n > len(self.first_win):
            size = max(n, 2 * len(self.first_win))
            self.first_win = np.concatenate([self.first_win, np.full(size - len(self.first_win), UNSEEN, np.int64)])
            self.early_bad = np.concatenate([self.early_bad, np.zeros(size - len(self.early_bad), np.int64)])

    def add(self, i0: int, ifaces: np.ndarray, batch: FrameBatch, cols: Columns) -> tuple[int, int]:
        n = len(batch)
        if n and int(ifaces.max()) >= len(self.first_win):
            self._ensure_interfaces(int(ifaces.max()) + 1)
        ifaces = ifaces.astype(np.int64, copy=False)
        sec = batch.sec.astype(np.int64, copy=False)
        nsec = batch.nsec.astype(np.int64, copy=False)
        args = (cols.status, cols.reason, cols.family.astype(np.int64), cols.src_hi.view(np.int64),
                cols.src_lo.view(np.int64), cols.dst_hi.view(np.int64), cols.dst_lo.view(np.int64),
                cols.sport.astype(np.int64), cols.dport.astype(np.int64), cols.proto.astype(np.int64),
                cols.nbytes, cols.flags.astype(np.int64))
        i = i0
        while True:
            code, i = _add(i, n, sec, nsec, ifaces, *args, self.W, self.L, self.max_flows, self.table,
                           self.skiptab, self.open_ws, self.late_ws, self.first_win, self.early_bad, self.sc,
                           self.mal_reasons, self.anomalies)
            if code != GROW:
                break
            self._grow()
        self._sync()
        return int(code), int(i)

    def _grow(self) -> None:
        sc = self.sc
        if (sc[S_NFLOWS] + 1) * 2 > len(self.table):
            bigger = np.zeros((2 * len(self.table), NCOL), np.int64)
            _rehash(self.table, bigger)
            self.table = bigger
        if (sc[S_NSKIP] + len(self.early_bad) + 1) * 2 > len(self.skiptab):
            size = len(self.skiptab)
            while (sc[S_NSKIP] + len(self.early_bad) + 1) * 2 > size:
                size *= 2
            bigger = np.zeros((size, KCOL), np.int64)
            _split_skip(self.skiptab, bigger, np.zeros(0, np.int64), np.zeros((0, KCOL), np.int64))
            self.skiptab = bigger
        if sc[S_NOPEN] + 2 > len(self.open_ws):
            self.open_ws = np.concatenate([self.open_ws, np.zeros(len(self.open_ws), np.int64)])
        if sc[S_NLATE] + 2 > len(self.late_ws):
            self.late_ws = np.concatenate([self.late_ws, np.zeros(len(self.late_ws), np.int64)])

    def _sync(self) -> None:
        st, sc = self.stats, self.sc
        st.ip_packets = int(sc[S_IP])
        st.ip_bytes = int(sc[S_IPBYTES])
        st.non_ip = int(sc[S_NONIP])
        st.malformed = int(sc[S_MAL])
        st.late_packets = int(sc[S_LATE])
        st.overflow_packets = int(sc[S_OVER])
        st.malformed_reasons = {REASONS[r] or "undecodable": int(c) for r, c in enumerate(self.mal_reasons) if c}
        st.anomalies = {REASONS[r]: int(c) for r, c in enumerate(self.anomalies) if c}

    def skip(self, ws: int, iface: int, packets: int, nbytes: int | None) -> None:
        self._ensure_interfaces(iface + 1)
        if (self.sc[S_NSKIP] + len(self.early_bad) + 2) * 2 > len(self.skiptab) \
                or self.sc[S_NOPEN] + 2 > len(self.open_ws) or self.sc[S_NLATE] + 2 > len(self.late_ws):
            self._grow()
        _note_window(ws, self.sc, self.open_ws, self.late_ws)
        _skip_add(self.skiptab, self.sc, ws, iface, packets, -1 if nbytes is None else nbytes)
        self._sync()

    def take(self, windows: list[int]) -> Taken:
        wanted = np.array(sorted(windows), np.int64)
        sc = self.sc
        out = np.empty((int(sc[S_NFLOWS]), NCOL), np.int64)
        m = _take(self.table, wanted, out)
        sc[S_NFLOWS] -= m
        # the table grows as needed; once windows have gone, it gives memory back too
        size = len(self.table)
        while size > self._min_capacity and (sc[S_NFLOWS] + 1) * 8 < size:
            size //= 2
        if size < len(self.table):
            smaller = np.zeros((size, NCOL), np.int64)
            _rehash(self.table, smaller)
            self.table = smaller
        out = out[:m]
        key = out[:, KEY]
        iface = key >> 16
        order = np.lexsort((out[:, SEQ], iface, out[:, WS]))
        out = out[order]
        key, iface = key[order], iface[order]
        ws = np.ascontiguousarray(out[:, WS])
        ports, first, last = out[:, PORTS], out[:, FIRST], out[:, LAST]
        flows = {
            "ws": ws, "iface": iface, "fam": (key >> 8) & 255,
            "shi": np.ascontiguousarray(out[:, SHI]).view(np.uint64),
            "slo": np.ascontiguousarray(out[:, SLO]).view(np.uint64),
            "dhi": np.ascontiguousarray(out[:, DHI]).view(np.uint64),
            "dlo": np.ascontiguousarray(out[:, DLO]).view(np.uint64),
            "sport": ports >> 16, "dport": ports & 0xFFFF, "proto": key & 255,
            "pk": np.ascontiguousarray(out[:, PK]), "by": np.ascontiguousarray(out[:, BY]),
            "fl": np.ascontiguousarray(out[:, FL]),
            "fs": ws + first // NS, "fns": first % NS, "ls": ws + last // NS, "lns": last % NS,
        }
        newskip = np.zeros_like(self.skiptab)
        sout = np.empty((int(sc[S_NSKIP]), KCOL), np.int64)
        k = _split_skip(self.skiptab, newskip, wanted, sout)
        self.skiptab = newskip
        sc[S_NSKIP] -= k
        skips = [(int(r[K_WS]), int(r[K_IFACE]), int(r[K_PK]), int(r[K_BY]), not r[K_UNKNOWN]) for r in sout[:k]]
        # the taken windows are no longer open or late
        for arr, count in ((self.open_ws, S_NOPEN), (self.late_ws, S_NLATE)):
            keep = [w for w in arr[: sc[count]].tolist() if w not in set(windows)]
            arr[: len(keep)] = keep
            sc[count] = len(keep)
        sc[S_HAS_LASTWS] = 0
        return Taken(flows, skips)

