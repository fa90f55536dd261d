"""BPF filter expressions, compiled by libpcap (through pcapy-ng) and applied to frame batches."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .frames import FrameBatch, linktype_name


class BpfFilter:
    """A filter expression in tcpdump's language, compiled once per link type."""

    def __init__(self, expression: str, snaplen: int = 262144):
        self.expression = expression
        self.snaplen = snaplen
        self._programs: dict[int, object] = {}

    def program(self, linktype: int):
        prog = self._programs.get(linktype)
        if prog is None:
            import pcapy

            try:
                prog = pcapy.compile(linktype, self.snaplen, self.expression, 1, 0xFFFFFFFF)
            except pcapy.PcapError as e:
                raise ConfigError(f"bad filter expression {self.expression!r} for "
                                  f"{linktype_name(linktype)} frames: {e}") from None
            self._programs[linktype] = prog
        return prog

    def mask(self, batch: FrameBatch, linktypes: np.ndarray) -> np.ndarray:
        """True for the frames of ``batch`` the expression accepts."""
        n = len(batch)
        keep = np.zeros(n, np.bool_)
        if not n:
            return keep
        lts = linktypes[batch.link].tolist()
        buf = batch.buf
        for i, (o, c) in enumerate(zip(batch.off.tolist(), batch.caplen.tolist())):
            keep[i] = self.program(lts[i]).filter(buf[o:o + c].tobytes()) != 0
        return keep

    def apply(self, batch: FrameBatch, linktypes: np.ndarray) -> FrameBatch:
        """The frames of ``batch`` the expression accepts."""
        keep = self.mask(batch, linktypes)
        if keep.all():
            return batch
        return batch.take(keep)


# -- a flow hash in classic BPF, for the kernel's PACKET_FANOUT_CBPF -----------------------------
#
# The kernel's own fanout hash (PACKET_FANOUT_HASH) is the packet's skb hash, which a sender may
# have set per socket rather than per flow: everything one tcpreplay or one tunnel endpoint sends
# then lands on a single worker. This program hashes the flow itself, and symmetrically (the
# sum of both addresses and both ports), so both directions of a connection meet in one worker.

_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND = 0x48
_LDX_MSH = 0xB1
_LD_MEM, _LDX_MEM, _ST = 0x60, 0x61, 0x02
_ADD_X, _MUL_K, _RSH_K = 0x0C, 0x24, 0x74
_JEQ_K, _JSET_K, _JA = 0x15, 0x45, 0x05
_RET_A, _RET_K = 0x16, 0x06
#: SKF_AD_OFF + SKF_AD_PROTOCOL: loads the packet's protocol (ETH_P_*) from its metadata
_SKF_AD_PROTOCOL = 0xFFFFF000


def flow_hash_program() -> list[tuple[int, int, int, int]]:
    """A classic BPF fanout program returning a symmetric hash of a packet's IP addresses and ports.

    It reads the packet from its IP header on, as the kernel runs fanout programs (whatever the
    link type; VLAN tags are already taken off by then). Packets that are not IP hash to 0. The
    kernel takes the result modulo the number of workers.
    """
    prog: list = []          # (code, jt, jf, k) with jt/jf/k possibly labels (str)
    labels: dict[str, int] = {}

    def op(code, k=0, jt=0, jf=0):
        prog.append([code, jt, jf, k])

    def label(name):
        labels[name] = len(prog)

    def accumulate():
        """M[0] += A."""
        op(_LDX_MEM, 0)
        op(_ADD_X)
        op(_ST, 0)

    def ip4(o, tag):
        label(f"v4{tag}")
        op(_LD_W_ABS, o + 12)
        op(_ST, 0)
        op(_LD_W_ABS, o + 16)
        accumulate()
        op(_LD_B_ABS, o + 9)
        for proto in (6, 17, 132):
            op(_JEQ_K, proto, jt=f"ports4{tag}")
        op(_JA, "end")
        label(f"ports4{tag}")
        op(_LD_H_ABS, o + 6)
        op(_JSET_K, 0x1FFF, jt="end")           # a later fragment: no ports
        op(_LDX_MSH, o)                         # X = the IPv4 header's length
        op(_LD_H_IND, o)
        accumulate()
        op(_LDX_MSH, o)
        op(_LD_H_IND, o + 2)
        accumulate()
        op(_JA, "end")

    def ip6(o, tag):
        label(f"v6{tag}")
        op(_LD_W_ABS, o + 8)
        op(_ST, 0)
        for off in range(12, 40, 4):
            op(_LD_W_ABS, o + off)
            accumulate()
        op(_LD_B_ABS, o + 6)
        for proto in (6, 17, 132):
            op(_JEQ_K, proto, jt=f"ports6{tag}")
        op(_JA, "end")
        label(f"ports6{tag}")
        op(_LD_H_ABS, o + 40)
        accumulate()
        op(_LD_H_ABS, o + 42)
        accumulate()
        op(_JA, "end")

    # the kernel runs a fanout program on the packet from its network header on (unlike a socket
    # filter, which sees the link header): the protocol comes from the packet's metadata
    op(_LD_H_ABS, _SKF_AD_PROTOCOL)
    op(_JEQ_K, 0x0800, jt="v4")
    op(_JEQ_K, 0x86DD, jt="v6")
    op(_RET_K, 0)
    ip4(0, "")
    ip6(0, "")
    label("end")
    op(_LD_MEM, 0)
    op(_MUL_K, 0x9E3779B1)                      # spread the sum over the high bits ...
    op(_RSH_K, 16)                              # ... and keep them
    op(_RET_A)
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == _JA:
            k = labels[k] - i - 1
        if isinstance(jt, str):
            jt = labels[jt] - i - 1
        if isinstance(jf, str):
            jf = labels[jf] - i - 1
        assert 0 <= jt < 256 and 0 <= jf < 256 and k >= 0
        out.append((code, jt, jf, k))
    return out
