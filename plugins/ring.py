"""The ``ring`` source: live capture from the Linux kernel's memory-mapped packet ring (AF_PACKET, TPACKET_V3).

``ring:eth0``. The kernel writes frames into a ring of blocks shared with flowlog (no copy
and no system call per packet); a block is handed over when it is full or after
:data:`RETIRE_MS` milliseconds, and flowlog walks it with a compiled kernel
(:mod:`flowlog.core.fast.tpacket`) straight into the columns of a batch. A block goes back to
the kernel when the next batch is asked for. The filter expression is compiled by libpcap and
run in the kernel (SO_ATTACH_FILTER); what the kernel drops because the ring is full is read
from PACKET_STATISTICS after every batch and written as SKIPDATA.

Options (from the command line): ``snaplen``, ``promisc`` (default on), ``blocks``
(--ring-blocks, default 64), ``block_size`` (--block-size, default 1 MiB), ``workers``.
Linux only; needs root or CAP_NET_RAW.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import select
import socket
import struct
import sys
import time

import numpy as np

from flowlog.core import netif
from flowlog.core.api import Source, SourceContext
from flowlog.core.errors import ConfigError, SourceError
from flowlog.core.frames import FrameBatch, Loss
from flowlog.core.hookspecs import hookimpl


@hookimpl
def register_sources(register):
    register(RingSource)


# <linux/if_packet.h>, <linux/if_ether.h>, <asm-generic/socket.h>
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_MR_PROMISC = 1
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
#: a worker whose ring is full passes packets on to the next instead of dropping them. (Not
#: PACKET_FANOUT_FLAG_DEFRAG: the kernel would deliver reassembled datagrams, while a record counts
#: every fragment as the packet it was on the wire.)
FANOUT_FLAGS = PACKET_FANOUT_FLAG_ROLLOVER
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06

DEFAULT_BLOCKS = 64
DEFAULT_BLOCK_SIZE = 1 << 20
#: bytes kept of each frame unless --snaplen says otherwise: every header flowlog reads
#: (link layer, tags and labels, IPv6 extension headers, ports) fits
DEFAULT_SNAPLEN = 512
#: the kernel hands over a block that is not full after this many milliseconds
RETIRE_MS = 50
#: how long one wait for a block lasts: the run gets a batch (maybe empty) at least this often
POLL_MS = 100
FRAME_SIZE = 2048
#: ARPHRD_* (/sys/class/net/IFACE/type) -> the link type of the frames the ring gives
ARPHRD_LINKTYPES = {
    1: 1,          # ARPHRD_ETHER
    772: 1,        # ARPHRD_LOOPBACK: Ethernet framing with zero addresses
    768: 101,      # ARPHRD_TUNNEL (ipip): no link header
    769: 101,      # ARPHRD_TUNNEL6
    776: 101,      # ARPHRD_SIT
    778: 101,      # ARPHRD_IPGRE
    823: 101,      # ARPHRD_IP6GRE
    65534: 101,    # ARPHRD_NONE (tun, WireGuard)
}


class RingSource(Source):
    """Live capture through the kernel's memory-mapped packet ring (Linux AF_PACKET, TPACKET_V3)."""

    scheme = "ring"
    description = "live capture from an interface via the Linux memory-mapped ring (AF_PACKET TPACKET_V3)"
    live = True
    applies_filter = True
    #: several processes can share the interface (--workers: a PACKET_FANOUT group)
    fanout = True

    def __init__(self, uri, options=None):
        super().__init__(uri, options)
        self.iface = uri.rest.removeprefix("//")
        if not self.iface:
            raise SourceError(f"{uri}: give an interface, e.g. ring:eth0")
        o = self.options
        self.blocks = int(o.get("blocks") or DEFAULT_BLOCKS)
        self.block_size = int(o.get("block_size") or DEFAULT_BLOCK_SIZE)
        self.snaplen = int(o.get("snaplen") or DEFAULT_SNAPLEN)
        self.promisc = bool(o.get("promisc", True))
        self.workers = int(o.get("workers") or 1)
        page = mmap.PAGESIZE
        if self.block_size < page or self.block_size % page:
            raise ConfigError(f"--block-size {self.block_size}: must be a multiple of the page size ({page} bytes)")
        if self.blocks < 2:
            raise ConfigError("--ring-blocks must be at least 2")
        #: set in a worker process: the fanout group to join (0: create one, the kernel picks its id)
        self.fanout_group: int | None = o.get("fanout_group")
        self.sock: socket.socket | None = None
        self.mm: mmap.mmap | None = None
        self._held = 0          # blocks of the batch in hand, from self._next on
        self._next = 0          # the next block to look at
        self._stats = {"received": 0, "dropped by the kernel": 0, "ring freezes": 0}
        self._filter_buf = None
        self._walk = None

    # -- opening --------------------------------------------------------------------------
    def open(self, ctx: SourceContext) -> None:
        super().open(ctx)
        name = f"ring:{self.iface}"
        if not sys.platform.startswith("linux") or not hasattr(socket, "AF_PACKET"):
            raise SourceError(f"{name}: the ring source needs Linux (AF_PACKET); use live:{self.iface}")
        try:
            ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            raise SourceError(f"{name}: no such network interface") from None
        linktype = self._linktype(name)
        try:
            # protocol 0: nothing is queued before the ring and filter are in place and the socket is bound
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise SourceError(f"{name}: capturing needs root or the CAP_NET_RAW capability") from None
        except OSError as e:
            raise SourceError(f"{name}: cannot open a packet socket: {e.strerror}") from None
        self.sock = sock
        try:
            self._attach_filter(name, linktype)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = min(FRAME_SIZE, self.block_size)
            req = struct.pack("7I", self.block_size, self.blocks, frame_size,
                              self.block_size // frame_size * self.blocks, RETIRE_MS, 0, 0)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            except OSError as e:
                raise SourceError(f"{name}: the kernel refused a ring of {self.blocks} blocks of "
                                  f"{self.block_size} bytes: {e.strerror}") from None
            size = self.block_size * self.blocks
            self.mm = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.ring = np.frombuffer(self.mm, np.uint8)
            self.ring16 = self.ring.view(np.uint16)
            self.ring32 = self.ring.view(np.uint32)
            if self.promisc:
                mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            try:
                sock.bind((self.iface, ETH_P_ALL))
            except OSError as e:
                if e.errno == errno.ENODEV:
                    raise SourceError(f"{name}: no such network interface") from None
                raise SourceError(f"{name}: cannot bind to the interface: {e.strerror}") from None
            if self.fanout_group is not None:
                self._join_fanout(name)
            self._read_stats()      # start the counters from here
            for k in self._stats:
                self._stats[k] = 0
        except BaseException:
            self.close()
            raise
        self.link = ctx.add_link(self.iface, linktype)
        addresses = netif.addresses(self.iface)
        if addresses:
            ctx.add_addresses(self.iface, addresses)
        cap = max(65536, self.block_size // 16 * min(self.blocks, self._max_blocks()))
        self._cols = [np.empty(cap, np.int64) for _ in range(5)] + [np.empty(cap, np.int32)]

    def _join_fanout(self, name: str) -> None:
        """Join (or with group 0, create) the PACKET_FANOUT group the run's workers share.

        Packets are spread by flow: by flowlog's own symmetric hash of addresses and ports (a
        classic BPF program, PACKET_FANOUT_CBPF), which does not depend on how the sender set
        the kernel's packet hash.
        """
        from flowlog.core.bpf import flow_hash_program

        first = not self.fanout_group
        mode = PACKET_FANOUT_CBPF | FANOUT_FLAGS | (PACKET_FANOUT_FLAG_UNIQUEID if first else 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                                 struct.pack("I", (self.fanout_group & 0xFFFF) | (mode << 16)))
            if first:
                self.fanout_group = struct.unpack("I", self.sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
                prog = flow_hash_program()
                insns = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)
                self._fanout_buf = ctypes.create_string_buffer(insns, len(insns))
                fprog = struct.pack("HP", len(prog), ctypes.addressof(self._fanout_buf))
                self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
        except OSError as e:
            raise SourceError(f"{name}: the kernel refused to share the interface among workers "
                              f"(PACKET_FANOUT): {e.strerror}") from None

    def _linktype(self, name: str) -> int:
        try:
            with open(f"/sys/class/net/{self.iface}/type") as f:
                arphrd = int(f.read().strip())
        except (OSError, ValueError):
            return 1
        lt = ARPHRD_LINKTYPES.get(arphrd)
        if lt is None:
            raise SourceError(f"{name}: interfaces of hardware type {arphrd} are not supported by the ring "
                              f"source; use live:{self.iface}")
        return lt

    def _attach_filter(self, name: str, linktype: int) -> None:
        """The filter expression (or only the snap length) as a classic BPF program in the kernel."""
        if self.ctx.bpf_filter:
            import pcapy

            dlt = 12 if linktype == 101 else linktype       # LINKTYPE_RAW is DLT_RAW (12) for libpcap
            try:
                prog = pcapy.compile(dlt, self.snaplen, self.ctx.bpf_filter, 1, 0xFFFFFFFF).get_bpf()
            except pcapy.PcapError as e:
                raise ConfigError(f"bad filter expression {self.ctx.bpf_filter!r}: {e}") from None
        else:
            prog = [(BPF_RET_K, 0, 0, self.snaplen)]     # accept every frame, cut to the snap length
        insns = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)
        self._filter_buf = ctypes.create_string_buffer(insns, len(insns))
        fprog = struct.pack("HP", len(prog), ctypes.addressof(self._filter_buf))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as e:
            raise SourceError(f"{name}: the kernel refused the filter program: {e.strerror}") from None

    def _max_blocks(self) -> int:
        """Blocks one batch takes at most: the kernel keeps the rest to fill while the batch is decoded."""
        return max(1, self.blocks // 4)

    # -- reading --------------------------------------------------------------------------
    def _read_stats(self) -> tuple[int, int, int]:
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freezes = struct.unpack("3I", raw)
        self._stats["received"] += packets
        self._stats["dropped by the kernel"] += drops
        self._stats["ring freezes"] += freezes
        return packets, drops, freezes

    def _release(self) -> None:
        if self._held:
            from flowlog.core.fast.tpacket import release_blocks

            release_blocks(self.ring32, self.block_size, self.blocks, self._next, self._held)
            self._next = (self._next + self._held) % self.blocks
            self._held = 0

    def _take(self) -> FrameBatch | None:
        off, caplen, wirelen, sec, nsec, links = self._cols
        if self._walk is not None:
            n, taken = self._walk(self.ring16, self.ring32, self.block_size, self.blocks, self._next,
                                  self._max_blocks(), self.link, off, caplen, wirelen, sec, nsec, links)
        else:
            from flowlog.core.fast.tpacket import walk_blocks

            n, taken = walk_blocks(self.ring16, self.ring32, self.block_size, self.blocks, self._next,
                                   self._max_blocks(), self.link, off, caplen, wirelen, sec, nsec, links)
        n, taken = int(n), int(taken)
        if not taken:
            return None
        self._held = taken
        batch = FrameBatch(self.ring, off[:n], caplen[:n], wirelen[:n], sec[:n], nsec[:n], links[:n])
        if not self.ctx.compiled and n:
            # the pure-Python decoder copies the batch's buffer: give it the frames, not the whole ring
            batch = batch.take(np.arange(n))
        return batch

    def batches(self):
        # (the run decides on the compiled path after opening its sources)
        if self.ctx.compiled:
            from flowlog.core.fast.tpacket import compiled_walk

            self._walk = compiled_walk()
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        while True:
            self._release()
            batch = self._take()
            if batch is None:
                poller.poll(POLL_MS)
                batch = self._take()
                if batch is None:
                    batch = FrameBatch.empty()
            _, drops, _ = self._read_stats()
            if drops:
                batch.losses.append(Loss(int(time.time()), self.link, drops, None))
            yield batch

    def drain(self):
        """The blocks the kernel has handed over but no batch has read yet (at most one ring's worth)."""
        if self.sock is None:
            return
        for _ in range(self.blocks):
            self._release()
            batch = self._take()
            if batch is None:
                break
            _, drops, _ = self._read_stats()
            if drops:
                batch.losses.append(Loss(int(time.time()), self.link, drops, None))
            yield batch
        self._release()

    def capture_stats(self) -> dict[str, int] | None:
        if self.sock is not None:
            _, drops, _ = self._read_stats()
            unread = self._unread()
            if drops or unread:
                self.ctx.warn(f"ring:{self.iface}: {unread + drops} packet(s) captured or dropped after the last "
                              f"batch read, as flowlog stopped, are not in the records")
        return dict(self._stats)

    def _unread(self) -> int:
        """Packets in the blocks the kernel has handed over but no batch has read yet."""
        from flowlog.core.fast.tpacket import BLOCK_NUM_PKTS, BLOCK_STATUS, TP_STATUS_USER

        n = 0
        for i in range(self._held, self.blocks):
            base = ((self._next + i) % self.blocks) * self.block_size
            if not int(self.ring32[(base + BLOCK_STATUS) >> 2]) & TP_STATUS_USER:
                break
            n += int(self.ring32[(base + BLOCK_NUM_PKTS) >> 2])
        return n

    def close(self) -> None:
        self._held = 0
        self.ring = self.ring16 = self.ring32 = None
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:     # a batch still views the ring; the mapping goes with the socket
                pass
            self.mm = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


