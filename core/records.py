"""Flow log records (version 2, SPEC.md) and their fields."""

from __future__ import annotations

from functools import lru_cache
import ipaddress

import numpy as np

#: The 14 fields of a version-2 record, in order.
V2_FIELDS: tuple[str, ...] = (
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status",
)
#: Fields beyond version 2, available through ``--fields``.
EXTRA_FIELDS: tuple[str, ...] = ("tcp-flags", "flow-direction", "type", "first-seen", "last-seen",
                                  "reject-reason")
ALL_FIELDS: tuple[str, ...] = V2_FIELDS + EXTRA_FIELDS

#: Fields whose values are numbers (JSON writes them as numbers, tables align them right).
NUMERIC_FIELDS = frozenset(("version", "srcport", "dstport", "protocol", "packets", "bytes",
                            "start", "end", "tcp-flags"))
#: Fields holding times with a fraction (seconds with 9 decimals).
TIME_FIELDS = frozenset(("first-seen", "last-seen"))


class Record:
    """One flow log record. ``None`` stands for ``-`` (NODATA, SKIPDATA, unknown)."""

    __slots__ = ("account_id", "interface_id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
                 "packets", "bytes", "start", "end", "action", "log_status", "tcp_flags",
                 "flow_direction", "type", "first_seen", "last_seen", "reject_reason")

    def __init__(self, account_id, interface_id, srcaddr=None, dstaddr=None, srcport=None, dstport=None,
                 protocol=None, packets=None, bytes=None, start=None, end=None, action=None,
                 log_status="OK", tcp_flags=None, flow_direction=None, type=None,
                 first_seen=None, last_seen=None, reject_reason=None):
        self.account_id = account_id
        self.interface_id = interface_id
        self.srcaddr = srcaddr
        self.dstaddr = dstaddr
        self.srcport = srcport
        self.dstport = dstport
        self.protocol = protocol
        self.packets = packets
        self.bytes = bytes
        self.start = start
        self.end = end
        self.action = action
        self.log_status = log_status
        self.tcp_flags = tcp_flags
        self.flow_direction = flow_direction
        self.type = type
        self.first_seen = first_seen     # (sec, nsec) or None
        self.last_seen = last_seen
        #: which policy stage and rule rejected the flow (``acl:ingress:2``); None when accepted
        self.reject_reason = reject_reason

    def get(self, field: str):
        """The value of a field by its record name (``srcaddr``, ``log-status``, ...)."""
        if field == "version":
            return 2
        return getattr(self, _ATTR[field])

    def values(self, fields=V2_FIELDS) -> list:
        return [self.get(f) for f in fields]

    def __repr__(self) -> str:
        return "Record(" + " ".join("-" if v is None else str(v) for v in self.values()) + ")"

    def __eq__(self, other) -> bool:
        return isinstance(other, Record) and self.values(ALL_FIELDS) == other.values(ALL_FIELDS)


_ATTR = {f: f.replace("-", "_") for f in ALL_FIELDS}
_ATTR["log-status"] = "log_status"


def parse_fields(spec: str | None) -> tuple[str, ...]:
    """``a,b,c`` to a tuple of field names, checked; ``None`` or empty gives the 14 version-2 fields."""
    from .errors import ConfigError

    if not spec:
        return V2_FIELDS
    fields = tuple(f.strip() for f in spec.split(",") if f.strip())
    unknown = [f for f in fields if f not in _ATTR]
    if unknown or not fields:
        raise ConfigError(f"unknown field {', '.join(map(repr, unknown)) or '(none given)'} in --fields; "
                          f"fields are: {', '.join(ALL_FIELDS)}")
    return fields


@lru_cache(maxsize=65536)
def format_addr(family: int, hi: int, lo: int) -> str:
    """An address as records write it: dotted quad, or RFC 5952 text for IPv6."""
    if family == 4:
        return f"{lo >> 24}.{(lo >> 16) & 255}.{(lo >> 8) & 255}.{lo & 255}"
    value = (hi << 64) | lo
    if value >> 32 == 0xFFFF:        # IPv4-mapped: RFC 5952 section 5 writes the dotted quad
        return "::ffff:" + format_addr(4, 0, lo & 0xFFFFFFFF)
    return str(ipaddress.IPv6Address(value))


def format_time(t) -> str:
    """A (sec, nsec) time as seconds with 9 decimals."""
    return f"{t[0]}.{t[1]:09d}"


KIND_OK, KIND_NODATA, KIND_SKIPDATA = 0, 1, 2
_STATUS = {KIND_OK: "OK", KIND_NODATA: "NODATA", KIND_SKIPDATA: "SKIPDATA"}


ACTION_ACCEPT, ACTION_REJECT = 0, 1


class RecordBatch:
    """The records of one emission as columns; :meth:`records` gives them as :class:`Record` objects.

    ``kind`` is KIND_OK, KIND_NODATA or KIND_SKIPDATA; addresses are 64-bit halves as in
    :mod:`flowlog.core.decode`; ``bytes`` is -1 where unknown; ``fs``/``fns`` and
    ``ls``/``lns`` are the first and last packet times (seconds, nanoseconds).
    ``action`` (int8) is ACTION_ACCEPT or ACTION_REJECT per row (all ACCEPT unless given;
    meaningless for NODATA and SKIPDATA rows); ``reasons`` is None, or per row the
    ``reject-reason`` of the flow (None for accepted flows).
    """

    COLUMNS = ("kind", "iface", "fam", "shi", "slo", "dhi", "dlo", "sport", "dport", "proto", "packets",
               "bytes", "start", "end", "flags", "fs", "fns", "ls", "lns")
    __slots__ = COLUMNS + ("interfaces", "account_id", "compiled", "addresses", "action", "reasons")

    def __init__(self, interfaces, account_id, compiled: bool = False, addresses=None, action=None,
                 reasons=None, **columns):
        self.interfaces = interfaces
        self.account_id = account_id
        #: interface index -> set of its own addresses as (family, hi, lo): gives flow-direction
        self.addresses = addresses or {}
        #: made by the compiled path: compiled kernels may render it (numba is already loaded)
        self.compiled = compiled
        for name in self.COLUMNS:
            setattr(self, name, columns[name])
        self.action = np.zeros(len(self.kind), np.int8) if action is None else action
        self.reasons = reasons

    def __len__(self) -> int:
        return len(self.kind)

    def select(self, index) -> "RecordBatch":
        """A batch of the rows ``index`` picks (an array of row numbers, or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        reasons = None if self.reasons is None else [self.reasons[i] for i in index.tolist()]
        return RecordBatch(self.interfaces, self.account_id, compiled=self.compiled, addresses=self.addresses,
                           action=self.action[index], reasons=reasons,
                           **{c: getattr(self, c)[index] for c in self.COLUMNS})

    def records(self) -> list[Record]:
        acct = self.account_id
        names = self.interfaces
        out = []
        cols = [getattr(self, c).tolist() for c in self.COLUMNS]
        actions = self.action.tolist()
        reasons = self.reasons if self.reasons is not None else [None] * len(actions)
        for (kind, iface, fam, shi, slo, dhi, dlo, sp, dp, pr, pk, by, start, end, fl, fs, fns, ls, lns), act, why \
                in zip(zip(*cols), actions, reasons):
            name = names[iface]
            if kind == KIND_OK:
                own = self.addresses.get(iface)
                direction = None
                if own:   # a flow both from and to the interface's own addresses is egress, as the policy judges it
                    direction = ("egress" if (fam, shi, slo) in own else
                                 "ingress" if (fam, dhi, dlo) in own else None)
                out.append(Record(acct, name, format_addr(fam, shi, slo), format_addr(fam, dhi, dlo), sp, dp, pr,
                                  pk, by, start, end, "REJECT" if act == ACTION_REJECT else "ACCEPT", "OK",
                                  tcp_flags=fl, flow_direction=direction, type="IPv4" if fam == 4 else "IPv6",
                                  first_seen=(fs, fns), last_seen=(ls, lns),
                                  reject_reason=why if act == ACTION_REJECT else None))
            elif kind == KIND_NODATA:
                out.append(Record(acct, name, start=start, end=end, log_status="NODATA"))
            else:
                out.append(Record(acct, name, packets=pk, bytes=None if by < 0 else by, start=start, end=end,
                                  log_status="SKIPDATA"))
        return out
