"""The ``live`` source: live capture from a network interface through libpcap (pcapy-ng).

``live:eth0``, ``live:any`` (every interface, as Linux cooked capture), or ``-i eth0`` on
the command line. The filter expression is compiled by libpcap and runs in the kernel; the
interface is put in promiscuous mode unless told otherwise; frames are kept up to a short snap
length (just the headers flowlog reads). Frames are drained from libpcap with one call per
chunk and handed to the run as a batch every :data:`BATCH_FRAMES` frames or every
:data:`BATCH_SECONDS` seconds, an empty one when the interface is idle. What the kernel or the
interface drops is read from libpcap's statistics after every batch and written as SKIPDATA.

Options (from the command line): ``snaplen``, ``buffer_size``, ``promisc`` (default on).
Needs root (or CAP_NET_RAW and CAP_NET_ADMIN).
"""

from __future__ import annotations

import itertools
import os
import select
import time

import numpy as np

from flowlog.core import netif
from flowlog.core.api import Source, SourceContext
from flowlog.core.errors import ConfigError, SourceError
from flowlog.core.frames import FrameBatch, Loss
from flowlog.core.hookspecs import hookimpl


@hookimpl
def register_sources(register):
    register(LiveSource)


#: bytes kept of each frame unless --snaplen says otherwise: the link layer (with tags, labels,
#: PPPoE), the IP header with IPv6 extension headers, and the transport ports all fit
DEFAULT_SNAPLEN = 256
#: the kernel's capture buffer unless --buffer-size says otherwise: about half a second of
#: 200,000 short frames per second, so that a pause of the reader (output, a first compile)
#: loses nothing
DEFAULT_BUFFER_SIZE = 64 << 20
#: libpcap's read timeout (ms): how long the kernel holds a block of frames that is not full
TIMEOUT_MS = 20
#: a batch goes to the run after this many frames ...
BATCH_FRAMES = 32768
#: ... or after this many seconds, whichever comes first (an empty batch when idle)
BATCH_SECONDS = 0.1
#: frames taken from libpcap per call
CHUNK = 4096
#: at a stop, how long flowlog keeps taking what libpcap already holds
DRAIN_SECONDS = 0.5

# pcap_activate()'s results (pcap/pcap.h)
_ACTIVATE_ERRORS = {
    -1: "libpcap could not open it",
    -3: "not activated",
    -4: "already activated",
    -5: "no such network interface",
    -6: "monitor mode is not supported",
    -8: "capturing needs root (or the CAP_NET_RAW and CAP_NET_ADMIN capabilities)",
    -9: "the interface is not up",
    -11: "promiscuous mode needs root (or CAP_NET_ADMIN); or use --no-promisc",
}


class LiveSource(Source):
    """Live capture from a network interface through libpcap."""

    scheme = "live"
    description = "live capture from a network interface through libpcap (-i IFACE)"
    live = True
    applies_filter = True

    def __init__(self, uri, options=None):
        super().__init__(uri, options)
        self.iface = uri.rest[2:] if uri.rest.startswith("//") else uri.rest
        if not self.iface:
            raise SourceError(f"{uri}: give an interface, e.g. live:eth0 (or -i eth0)")
        o = self.options
        self.snaplen = int(o.get("snaplen") or DEFAULT_SNAPLEN)
        self.buffer_size = int(o.get("buffer_size") or DEFAULT_BUFFER_SIZE)
        self.promisc = bool(o.get("promisc", True))
        self.pcap = None
        self.link = 0
        self._recv = self._drop = self._ifdrop = 0      # libpcap's counters at the last look
        self._reported = 0                              # drops already written as SKIPDATA

    # -- opening --------------------------------------------------------------------------
    def open(self, ctx: SourceContext) -> None:
        super().open(ctx)
        import pcapy

        name = f"live:{self.iface}"
        if self.iface != "any" and os.path.isdir("/sys/class/net") and \
                not os.path.exists(f"/sys/class/net/{self.iface}"):
            raise SourceError(f"{name}: no such network interface")
        try:
            p = pcapy.create(self.iface)
            p.set_snaplen(self.snaplen)
            p.set_promisc(1 if self.promisc else 0)
            p.set_timeout(TIMEOUT_MS)
            p.set_buffer_size(self.buffer_size)
            if hasattr(p, "set_immediate_mode"):    # not in pcapy-ng 2.1: TIMEOUT_MS bounds the delay
                p.set_immediate_mode(1)
            status = p.activate()
        except pcapy.PcapError as e:
            raise SourceError(f"{name}: {_reason(str(e))}") from None
        if isinstance(status, int) and status < 0:
            p.close()
            raise SourceError(f"{name}: {_ACTIVATE_ERRORS.get(status, f'libpcap error {status}')}")
        self.pcap = p
        try:
            if ctx.bpf_filter:
                try:
                    p.setfilter(ctx.bpf_filter)
                except pcapy.PcapError as e:
                    raise ConfigError(f"bad filter expression {ctx.bpf_filter!r}: {e}") from None
            p.setnonblock(1)
            self._fd = p.getfd()
            linktype = p.datalink()
            self._recv, self._drop, self._ifdrop = self._stats()
        except BaseException:
            self.close()
            raise
        self.link = ctx.add_link(self.iface, linktype)
        addresses = netif.addresses(None if self.iface == "any" else self.iface)
        if addresses:
            ctx.add_addresses(self.iface, addresses)

    def _stats(self) -> tuple[int, int, int]:
        recv, drop, ifdrop = self.pcap.stats()
        return int(recv), int(drop), int(ifdrop)

    # -- reading --------------------------------------------------------------------------
    def batches(self):
        import pcapy

        p, fd, link = self.pcap, self._fd, self.link
        hdrs: list = []
        datas: list = []
        add_hdr, add_data = hdrs.append, datas.append

        def take(hdr, data):        # the only per-packet Python work
            add_hdr(hdr)
            add_data(data)

        dispatch = p.dispatch
        wait = select.select
        monotonic = time.monotonic
        due = monotonic() + BATCH_SECONDS
        while True:
            try:
                n = dispatch(CHUNK, take)
            except pcapy.PcapError as e:
                self.ctx.damaged(f"live:{self.iface}: capture stopped: {_reason(str(e))}")
                if hdrs:
                    yield self._batch(hdrs, datas, link)
                return
            now = monotonic()
            if len(hdrs) >= BATCH_FRAMES or now >= due:
                batch = self._batch(hdrs, datas, link)
                hdrs.clear()
                datas.clear()
                yield batch
                now = monotonic()
                due = now + BATCH_SECONDS
            elif n <= 0:
                wait([fd], [], [], max(0.0, due - now))

    def drain(self):
        """What libpcap's buffer holds now (without waiting), as one last batch."""
        if self.pcap is None:
            return
        import pcapy

        hdrs: list = []
        datas: list = []

        def take(hdr, data):
            hdrs.append(hdr)
            datas.append(data)

        deadline = time.monotonic() + DRAIN_SECONDS
        while len(hdrs) < BATCH_FRAMES and time.monotonic() < deadline:
            try:
                if self.pcap.dispatch(CHUNK, take) <= 0:
                    break
            except pcapy.PcapError:
                break
        if hdrs:
            yield self._batch(hdrs, datas, self.link)

    def _batch(self, hdrs: list, datas: list, link: int) -> FrameBatch:
        n = len(hdrs)
        if n:
            buf = np.frombuffer(bytearray().join(datas), np.uint8)
            caplen = np.fromiter(map(len, datas), np.int64, n)
            off = np.zeros(n, np.int64)
            np.cumsum(caplen[:-1], out=off[1:])
            kind = type(hdrs[0])
            wirelen = np.fromiter(map(kind.getlen, hdrs), np.int64, n)
            ts = np.fromiter(itertools.chain.from_iterable(map(kind.getts, hdrs)), np.int64, 2 * n)
            ts = ts.reshape(n, 2)
            sec = np.ascontiguousarray(ts[:, 0])
            nsec = ts[:, 1] * 1000
            batch = FrameBatch(buf, off, caplen, wirelen, sec, nsec, np.full(n, link, np.int32))
        else:
            batch = FrameBatch.empty()
        try:
            self._recv, self._drop, self._ifdrop = self._stats()
        except Exception:   # noqa: BLE001 - the handle broke (interface gone): the last counters stand
            pass
        drop, ifdrop = self._drop, self._ifdrop
        lost = drop + ifdrop - self._reported
        if lost > 0:
            self._reported += lost
            batch.losses.append(Loss(int(time.time()), link, lost, None))
        return batch

    def capture_stats(self) -> dict[str, int] | None:
        if self.pcap is not None:
            try:
                self._recv, self._drop, self._ifdrop = self._stats()
            except Exception:   # noqa: BLE001 - the counters of the last look stand
                pass
            late = self._drop + self._ifdrop - self._reported
            if late > 0:
                self.ctx.warn(f"live:{self.iface}: {late} packet(s) dropped after the last batch read, as "
                              f"flowlog stopped, are not in the records")
        return {"received": self._recv, "dropped by the kernel": self._drop,
                "dropped by the interface": self._ifdrop}

    def close(self) -> None:
        if self.pcap is not None:
            try:
                self.pcap.close()
            except Exception:   # noqa: BLE001 - closing twice, or after the interface went away
                pass
            self.pcap = None


def _reason(message: str) -> str:
    """libpcap's message, without the device name it repeats and with a hint where one helps."""
    text = message.strip()
    low = text.lower()
    if "permission" in low or "operation not permitted" in low:
        return "capturing needs root (or the CAP_NET_RAW and CAP_NET_ADMIN capabilities)"
    if "no such device" in low:
        return "no such network interface"
    return text


