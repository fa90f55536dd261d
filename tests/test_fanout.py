"""--workers: the flow hash program the kernel runs to spread packets over workers, and the
parent's merge of the workers' windows. (Real captures with workers: tests/test_ring.py.)"""

from __future__ import annotations

import struct

import numpy as np

from flowlog.core import synth
from flowlog.core.bpf import flow_hash_program
from flowlog.core.fanout import Fanout, FanoutResult
from flowlog.core.records import KIND_NODATA, KIND_OK, KIND_SKIPDATA, RecordBatch
from flowlog.core.run import RunOptions


# --- the classic BPF flow hash, run by a small interpreter -----------------------------------------

def run_bpf(prog, packet: bytes, protocol: int) -> int:
    """Classic BPF as the kernel runs a fanout program: ``packet`` from its network header on."""
    A = X = 0
    M = [0] * 16
    pc = 0
    mask = 0xFFFFFFFF

    def load(off, size):
        if off == 0xFFFFF000:
            return protocol
        if off + size > len(packet):
            raise _Reject
        return int.from_bytes(packet[off:off + size], "big")

    try:
        while True:
            code, jt, jf, k = prog[pc]
            pc += 1
            cls = code & 0x07
            if cls == 0x00:                                 # LD
                size = {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
                mode = code & 0xE0
                A = (load(k, size) if mode == 0x20 else load(X + k, size) if mode == 0x40 else M[k]) & mask
            elif cls == 0x01:                               # LDX
                X = (load(k, 1) & 0x0F) * 4 if (code & 0xE0) == 0xA0 else M[k]
            elif cls == 0x02:
                M[k] = A
            elif cls == 0x04:                               # ALU, K or X
                v = X if code & 0x08 else k
                A = {0x00: A + v, 0x20: A * v, 0x70: A >> v}[code & 0xF0] & mask
            elif cls == 0x05:                               # JMP
                op = code & 0xF0
                if op == 0x00:
                    pc += k
                else:
                    hit = A == k if op == 0x10 else bool(A & k)
                    pc += jt if hit else jf
            elif cls == 0x06:
                return A if code & 0x10 else k
            else:
                raise AssertionError(f"instruction {code:#x} not expected")
    except _Reject:
        return 0


class _Reject(Exception):
    pass


def _ip(frame: bytes) -> bytes:
    return frame[14:]       # synth.packet builds Ethernet frames; the kernel hands fanout the IP packet


def test_the_flow_hash_is_symmetric_and_spreads_flows():
    prog = flow_hash_program()
    assert len(prog) < 4096
    for code, jt, jf, k in prog:     # every jump lands inside the program
        assert 0 <= jt < 256 and 0 <= jf < 256
    h = lambda frame, proto=0x0800: run_bpf(prog, _ip(frame), proto)
    forward = synth.packet("10.0.0.1", "10.0.0.2", 6, 40000, 443)
    reply = synth.packet("10.0.0.2", "10.0.0.1", 6, 443, 40000)
    assert h(forward) == h(reply)
    v6f = synth.packet("2001:db8::1", "2001:db8::2", 17, 5000, 53)
    v6r = synth.packet("2001:db8::2", "2001:db8::1", 17, 53, 5000)
    assert h(v6f, 0x86DD) == h(v6r, 0x86DD)
    # flows that differ only in a port, or only in an address, spread over 2 and 4 workers
    by_port = [h(synth.packet("10.0.0.1", "10.0.0.2", 17, 20000 + i, 53)) for i in range(64)]
    by_addr = [h(synth.packet(f"10.0.{i}.1", "10.9.9.9", 1, ident=7)) for i in range(64)]
    v6 = [h(synth.packet(f"2001:db8::{i + 1:x}", "2001:db8::ff", 6, 1000, 80), 0x86DD) for i in range(64)]
    for hashes in (by_port, by_addr, v6):
        for n in (2, 4):
            counts = np.bincount(np.array(hashes) % n, minlength=n)
            assert counts.min() >= 64 // n // 3, counts
    # a later fragment carries no ports: it hashes on its addresses alone, as its first fragment
    # would without ports; packets that are not IP go to the first worker
    frag = synth.packet("10.0.0.1", "10.0.0.2", 17, 1, 2)
    later = bytearray(_ip(frag))
    struct.pack_into("!H", later, 6, 100)
    no_ports = synth.packet("10.0.0.1", "10.0.0.2", 47)
    assert run_bpf(prog, bytes(later), 0x0800) == h(no_ports)
    assert run_bpf(prog, b"\x00" * 28, 0x0806) == 0


# --- merging the workers' windows ------------------------------------------------------------------

def _fanout(workers=2, timestamps="window"):
    f = Fanout.__new__(Fanout)
    f.n = workers
    f.options = RunOptions(window=60, timestamps=timestamps, compiled=False)
    f.interfaces = []
    f.addresses = {}
    f.account_id = "123"
    f.result = FanoutResult()
    f._pending, f._done, f._merged_upto = {}, set(), 0
    return f


def _batch(interfaces, rows):
    """rows: (kind, iface, src_lo, sport, packets, bytes, start, first_ns, last_ns, flags)."""
    cols = {c: [] for c in RecordBatch.COLUMNS}
    for kind, iface, src, sport, pk, by, start, fns, lns, flags in rows:
        values = dict(kind=kind, iface=iface, fam=4, shi=0, slo=src, dhi=0, dlo=0x0A000009, sport=sport, dport=53,
                      proto=17, packets=pk, bytes=by, start=start, end=start + 60, flags=flags,
                      fs=start + fns // 10**9, fns=fns % 10**9, ls=start + lns // 10**9, lns=lns % 10**9)
        for c in RecordBatch.COLUMNS:
            cols[c].append(values.get(c, 0))
    dtypes = {"kind": np.int8, "shi": np.uint64, "slo": np.uint64, "dhi": np.uint64, "dlo": np.uint64}
    arrays = {c: np.array(v, dtypes.get(c, np.int64)) for c, v in cols.items()}
    return RecordBatch(interfaces, "123", **arrays)


def test_merge_sums_split_flows_orders_by_first_seen_and_keeps_one_nodata():
    f = _fanout()
    W0 = 1_700_000_040
    # worker 1: flow A (first seen at +5 s) and flow B; an idle second interface
    f._take(0, _batch(["eth0", "eth1"], [
        (KIND_OK, 0, 1, 1000, 3, 300, W0, 5 * 10**9, 9 * 10**9, 0x02),
        (KIND_OK, 0, 2, 2000, 1, 100, W0, 7 * 10**9, 7 * 10**9, 0),
        (KIND_NODATA, 1, 0, 0, 0, -1, W0, 0, 0, 0)]))
    assert list(f._complete(final=False)) == []          # worker 2 has not closed the window yet
    # worker 2 (its interface list in another order): flow C first seen earliest, a share of flow
    # A (the kernel rolled it over), kernel drops, and NODATA for eth1 too
    f._take(1, _batch(["eth1", "eth0"], [
        (KIND_OK, 1, 3, 3000, 2, 200, W0, 1 * 10**9, 2 * 10**9, 0),
        (KIND_OK, 1, 1, 1000, 4, 400, W0, 3 * 10**9, 8 * 10**9, 0x10),
        (KIND_SKIPDATA, 1, 0, 0, 7, -1, W0, 0, 0, 0),
        (KIND_NODATA, 0, 0, 0, 0, -1, W0, 0, 0, 0)]))
    [batch] = list(f._complete(final=False))
    recs = batch.records()
    got = [(r.interface_id, r.srcport, r.packets, r.bytes, r.log_status) for r in recs]
    assert got == [("eth0", 3000, 2, 200, "OK"),       # first seen at +1 s
                   ("eth0", 1000, 7, 700, "OK"),       # both shares, first seen at +3 s
                   ("eth0", 2000, 1, 100, "OK"),
                   ("eth0", None, 7, None, "SKIPDATA"),
                   ("eth1", None, None, None, "NODATA")]
    a = recs[1]
    assert a.tcp_flags == 0x12 and a.first_seen == (W0 + 3, 0) and a.last_seen == (W0 + 9, 0)
    assert (a.start, a.end) == (W0, W0 + 60)
    st = f.result.stats
    assert (st.records, st.flows, st.nodata_records, st.skipdata_records, st.windows) == (5, 3, 1, 1, 1)


def test_merge_waits_for_every_worker_and_keeps_window_order():
    f = _fanout()
    W0, W1 = 1_700_000_040, 1_700_000_100
    f._take(0, _batch(["eth0"], [(KIND_OK, 0, 1, 1, 1, 10, W0, 0, 0, 0), (KIND_OK, 0, 1, 1, 1, 10, W1, 0, 0, 0)]))
    f._take(1, _batch(["eth0"], [(KIND_NODATA, 0, 0, 0, 0, -1, W1, 0, 0, 0)]))
    assert list(f._complete(final=False)) == []          # W0 waits for worker 2, and W1 waits for W0
    f._take(1, _batch(["eth0"], [(KIND_NODATA, 0, 0, 0, 0, -1, W0, 0, 0, 0)]))
    out = list(f._complete(final=False))
    assert [(b.records()[0].start, b.records()[0].log_status) for b in out] == [(W0, "OK"), (W1, "OK")]
    # a late flow for a window already written passes straight on, with no NODATA of its own
    f._take(1, _batch(["eth0"], [(KIND_OK, 0, 9, 9, 1, 10, W0, 0, 0, 0)]))
    [late] = list(f._complete(final=False))
    assert [(r.start, r.srcport) for r in late.records()] == [(W0, 9)]
    # at the end, what a worker never closed is written with what the others had
    f._take(0, _batch(["eth0"], [(KIND_OK, 0, 1, 1, 1, 10, W1 + 60, 0, 0, 0)]))
    assert list(f._complete(final=False)) == []
    assert len(list(f._complete(final=True))) == 1


def test_merge_writes_first_last_timestamps_after_merging():
    f = _fanout(timestamps="first-last")
    W0 = 1_700_000_040
    f._take(0, _batch(["eth0"], [(KIND_OK, 0, 1, 1, 1, 10, W0, 4 * 10**9, 6 * 10**9, 0)]))
    f._take(1, _batch(["eth0"], [(KIND_OK, 0, 1, 1, 1, 10, W0, 2 * 10**9, 3 * 10**9, 0)]))
    [batch] = list(f._complete(final=False))
    [r] = batch.records()
    assert (r.start, r.end, r.packets) == (W0 + 2, W0 + 6, 2)
