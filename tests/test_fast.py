"""The compiled kernels (flowlog.core.fast) against the pure-Python code they mirror.

* decode: :func:`flowlog.core.decode.decode_batch` with ``compiled=True`` and ``False`` on
  every bundled and corpus capture, and the kernel against :func:`walk.decode_frame` on a
  few hundred thousand random and mutated frames;
* the classic pcap walk: :class:`CaptureFile` with ``compiled=True`` and ``False`` yields the
  same batches, damage and normalised-timestamp counts, also for cut files, corrupt records,
  tiny buffers and compressed files (pcapng: tests/test_fast_pcapng.py);
* the compiled code is cached on disk: a second process does not compile.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flowlog.core import jit, synth
from flowlog.core.api import SourceContext
from flowlog.core.capfile import CaptureFile, sniff
from flowlog.core.decode import _DTYPES, _FIELDS, decode_batch, walk
from flowlog.core.frames import FrameBatch
from flowlog.plugins.pcap import expand

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba is not available (or FLOWLOG_NO_JIT is set)")

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "data" / "captures"


def _captures(folder: Path) -> list[Path]:
    """The capture files in ``folder`` (by magic number), as the pcap source picks them."""
    return [Path(p) for p in expand(str(folder))]


def _linktypes(ctx: SourceContext) -> np.ndarray:
    return np.array([link.linktype for link in ctx.links], np.int64)


def _assert_same_columns(a, b, what: str) -> None:
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, f"{what}: {name} dtype {x.dtype} != {y.dtype}"
        if not np.array_equal(x, y):
            bad = np.flatnonzero(x != y)[:5]
            pytest.fail(f"{what}: column {name} differs at frames {bad.tolist()}: "
                        f"compiled {x[bad].tolist()} pure {y[bad].tolist()}")


# -- decode: captures ----------------------------------------------------------------------


def _decode_both(path: Path) -> int:
    ctx = SourceContext()
    frames = 0
    for batch in CaptureFile(str(path), ctx, compiled=False).batches():
        lts = _linktypes(ctx)
        fast = decode_batch(batch, lts, compiled=True)
        pure = decode_batch(batch, lts, compiled=False)
        _assert_same_columns(fast, pure, f"{path.name}, frames {frames}..")
        frames += len(batch)
    return frames


@pytest.mark.parametrize("path", _captures(BUNDLED), ids=lambda p: p.name)
def test_decode_same_on_bundled_capture(path):
    frames = _decode_both(path)
    assert frames > 0 or path.stem.startswith("empty")


def test_decode_same_on_corpus(corpus):
    paths = _captures(corpus)
    assert paths
    assert sum(_decode_both(p) for p in paths) > 0


def test_decode_fast_path_runs_the_kernel(monkeypatch):
    """compiled=True must not quietly run the Python walk (which is made to fail here)."""
    import flowlog.core.decode as decode_pkg

    frame = synth.packet("192.0.2.1", "192.0.2.2", 6, 1234, 80)
    batch = FrameBatch.from_frames([(1, 0, frame)] * 3)

    def boom(*args):
        raise AssertionError("the Python walk ran")

    monkeypatch.setattr(decode_pkg, "decode_frame", boom)
    cols = decode_batch(batch, np.array([1]), compiled=True)
    assert cols.sport.tolist() == [1234] * 3 and cols.proto.tolist() == [6] * 3
    with pytest.raises(AssertionError, match="Python walk ran"):
        decode_batch(batch, np.array([1]), compiled=False)


def test_decode_fast_falls_back_to_the_reference():
    """Link types the walk has no code for go to the dpkt reference, as on the pure path."""
    udp = struct.pack("!HHHH", 5353, 53, 13, 0) + b"query"
    ip4 = synth.ipv4("192.0.2.1", "192.0.2.2", 17, udp)
    dot11 = (b"\x08\x01\x00\x00" + b"\x11" * 6 + b"\x22" * 6 + b"\x33" * 6 + b"\x10\x00"
             + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip4)
    wifi = FrameBatch.from_frames([(1, 0, dot11), (2, 0, dot11[:20]), (-1, 0, dot11)], link=0)
    odd = FrameBatch.from_frames([(4, 0, ip4)], link=1)
    ether = FrameBatch.from_frames([(5, 0, synth.ether(ip4))], link=2)
    batch = FrameBatch.concat([wifi, odd, ether])
    lts = np.array([105, 147, 1], np.int64)
    fast = decode_batch(batch, lts, compiled=True)
    _assert_same_columns(fast, decode_batch(batch, lts, compiled=False), "fallback")
    assert fast.status.tolist() == [walk.OK, walk.MALFORMED, walk.MALFORMED, walk.MALFORMED, walk.OK]
    assert fast.reason.tolist() == [0, walk.R_LINK_SHORT, walk.R_TIMESTAMP, walk.R_LINKTYPE, 0]
    assert fast.sport.tolist() == [5353, 0, 0, 0, 5353]


def test_decode_fast_empty_batch_and_bad_frames():
    empty = decode_batch(FrameBatch.empty(), np.array([1]), compiled=True)
    assert all(len(getattr(empty, f)) == 0 and getattr(empty, f).dtype == d for f, d in zip(_FIELDS, _DTYPES))
    batch = FrameBatch.from_frames([(1, 0, b"\x00" * 20)])
    batch.caplen[0] = 21                              # beyond the buffer: refused, never read
    with pytest.raises(ValueError, match="outside"):
        decode_batch(batch, np.array([1]), compiled=True)
    batch.caplen[0] = 20
    batch.link[0] = 1                                 # no such link
    with pytest.raises(ValueError, match="outside"):
        decode_batch(batch, np.array([1]), compiled=True)


def test_pure_paths_do_not_import_numba(tmp_path):
    path = tmp_path / "t.pcap"
    synth.write_pcap(path, [(1.5, synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2))])
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from flowlog.core.api import SourceContext
        from flowlog.core.capfile import CaptureFile
        from flowlog.core.decode import decode_batch
        ctx = SourceContext()
        for b in CaptureFile({str(path)!r}, ctx, compiled=False).batches():
            c = decode_batch(b, np.array([1]), compiled=False)
            assert c.sport.tolist() == [1]
        print("numba" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- decode: random and mutated frames ----------------------------------------------------

WALK_LINKTYPES = (0, 1, 9, 12, 14, 50, 51, 101, 104, 108, 113, 228, 229, 239, 276)
OTHER_LINKTYPES = (105, 127, 147, 160)


def _ip_packets(rng: random.Random) -> list[bytes]:
    """IPv4 and IPv6 packets of many shapes (the mutation later breaks them)."""
    out = []
    v4 = ["192.0.2.1", "10.1.2.3", "255.255.255.255", "0.0.0.0"]
    v6 = ["2001:db8::1", "fe80::1:2:3:4", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"]

    def body(proto):
        if proto in (6, 17, 132):
            return synth.transport(proto, rng.randrange(65536), rng.randrange(65536), bytes(rng.randrange(0, 40)),
                                   flags=rng.randrange(256))
        if proto in (1, 58):
            return synth.transport(proto, icmp_type=rng.choice([0, 3, 8, 11, 13, 17, 42, 43, 44, 128, 129, 135, 160,
                                                                161, rng.randrange(256)]),
                                   icmp_code=rng.randrange(4), ident=rng.randrange(65536))
        return bytes(rng.randrange(0, 24))

    for _ in range(300):
        proto = rng.choice([6, 17, 132, 1, 58, 47, 4, 41, 50, 51, 89, 0])
        b = body(proto)
        kind = rng.randrange(6)
        total = None
        if kind == 1:
            total = 0                                 # TSO / BIG TCP
        elif kind == 2:
            total = 20 + len(b) + rng.randrange(1, 3000)   # longer than the frame
        elif kind == 3:
            total = rng.randrange(0, 20)              # below the header length
        pkt = bytearray(synth.ipv4(rng.choice(v4), rng.choice(v4), proto, b, total_length=total,
                                   frag_offset=rng.choice([0, 0, 0, 8, 1480]),
                                   more_fragments=rng.random() < 0.2))
        if rng.random() < 0.2:                        # header options
            words = rng.randrange(1, 11)
            pkt[0] = 0x40 | (5 + words)
            pkt[20:20] = bytes(4 * words)
        out.append(bytes(pkt))
    for _ in range(300):
        proto = rng.choice([6, 17, 132, 58, 1, 51, 50, 59])
        payload = body(proto)
        chain, jumbo = [], False
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            chain.append(rng.choice([0, 43, 44, 60]))
        # build extension headers back to front
        nxt = proto
        for h in reversed(chain):
            if h == 44:
                off = rng.choice([0, 0, 8, 1232])
                hdr = struct.pack("!BBHI", nxt, 0, (off & 0xFFF8) | rng.randrange(2), rng.randrange(1 << 32))
            else:
                opts = b""
                if h == 0 and rng.random() < 0.5:
                    jumbo = True
                    opts += b"\x00" * rng.randrange(3) + b"\xc2\x04" + struct.pack("!I", rng.randrange(65536, 1 << 32))
                opts += rng.choice([b"", b"\x01\x00", b"\x01\x02\x00\x00"])
                size = -(-(2 + len(opts)) // 8) * 8
                opts += bytes(size - 2 - len(opts))
                hdr = bytes([nxt, size // 8 - 1]) + opts
            payload = hdr + payload
            nxt = h
        plen = 0 if jumbo and rng.random() < 0.8 else None
        if rng.random() < 0.1:
            plen = rng.randrange(0, 3000)
        out.append(synth.ipv6(rng.choice(v6), rng.choice(v6), nxt, payload, payload_length=plen))
    return out


def _ethertype_wrap(rng: random.Random, ip: bytes) -> tuple[int, bytes]:
    """(EtherType, bytes after the link header) for an IP packet, through tags, MPLS, PPPoE, LLC/SNAP."""
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    inner = ip
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        r = rng.randrange(4)
        if r == 0:                                    # VLAN tag
            tag = rng.choice([0x8100, 0x88A8, 0x9100, 0x9200])
            inner = struct.pack("!HH", rng.randrange(4096), etype) + inner
            etype = tag
        elif r == 1:                                  # MPLS stack
            depth = rng.randrange(1, 4)              # bottom-of-stack bit on the last label
            inner = b"".join(struct.pack("!I", (rng.randrange(1 << 20) << 12) | (0x100 if i == depth - 1 else 0) | 64)
                             for i in range(depth)) + inner
            etype = rng.choice([0x8847, 0x8848])
        elif r == 2:                                  # PPPoE session
            ppp = struct.pack("!H", 0x57 if etype == 0x86DD else 0x21) if etype in (0x0800, 0x86DD) else \
                struct.pack("!H", 0x281)
            inner = struct.pack("!BBHH", 0x11, 0, rng.randrange(65536), len(inner) + 2) + ppp + inner
            etype = 0x8864
        else:                                         # 802.3 + LLC/SNAP
            inner = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", etype) + inner
            etype = min(len(inner), 1500)
    if rng.random() < 0.05:
        etype = rng.choice([0x0806, 0x88CC, 0x8035, 0x05DC, 0x0000, 0xFFFF])
    return etype, inner


def _framed(rng: random.Random, ip: bytes) -> tuple[int, bytes]:
    """Put an IP packet in a random link layer: (link type, frame)."""
    lt = rng.choice(WALK_LINKTYPES)
    if lt == 1:
        etype, inner = _ethertype_wrap(rng, ip)
        return lt, b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + inner
    if lt == 113:
        etype, inner = _ethertype_wrap(rng, ip)
        return lt, struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, etype) + inner
    if lt == 276:
        etype, inner = _ethertype_wrap(rng, ip)
        return lt, struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6, b"\x02" * 8) + inner
    if lt == 104:
        etype, inner = _ethertype_wrap(rng, ip)
        return lt, struct.pack("!BBH", 0x0F, 0, etype) + inner
    if lt in (0, 108):
        af = rng.choice([2, 2, 24, 28, 30, 10, 7]) if ip[0] >> 4 == 6 or rng.random() < 0.2 else 2
        if ip[0] >> 4 == 6 and af == 2 and rng.random() < 0.8:
            af = rng.choice([24, 28, 30])
        order = ">" if lt == 108 or rng.random() < 0.3 else "<"
        return lt, struct.pack(order + "I", af) + ip
    if lt in (9, 50, 51):
        proto = 0x57 if ip[0] >> 4 == 6 else 0x21
        r = rng.randrange(5)
        if r == 0:
            ppp = bytes([proto])                      # compressed protocol field
        elif r == 1:
            ppp = struct.pack("!H", rng.choice([0x281, 0x283])) + struct.pack("!I", 0x140)
        elif r == 2:
            ppp = struct.pack("!H", rng.choice([0xC021, 0x8021, 0x0023]))
        else:
            ppp = struct.pack("!H", proto)
        if rng.random() < 0.5:
            ppp = b"\xff\x03" + ppp
        if lt == 51:
            ppp = struct.pack("!BBHH", 0x11, 0, 1, len(ppp) + len(ip)) + ppp
        return lt, ppp + ip
    if lt == 239:
        family = rng.choice([2, 10, 10, 2, 0, 7]) if rng.random() < 0.2 else (10 if ip[0] >> 4 == 6 else 2)
        tlvs = b""
        for _ in range(rng.randrange(3)):
            value = bytes(rng.randrange(0, 9))
            tlvs += struct.pack("<HH", 4 + len(value), rng.randrange(1, 9)) + value + bytes(-len(value) % 4)
        tlv_type = 9 | (0x8000 if rng.random() < 0.3 else 0)
        length = 4 + len(ip) if rng.random() < 0.9 else rng.randrange(0, 4 + len(ip))
        tlvs += struct.pack("<HH", length, tlv_type) + ip
        return lt, struct.pack("<BBH", family, 0, 0) + tlvs
    if lt == 228 and ip[0] >> 4 == 6 and rng.random() < 0.8:
        lt = 229
    if lt == 229 and ip[0] >> 4 == 4 and rng.random() < 0.8:
        lt = 228
    return lt, ip


def _random_frames(seed: int, count: int):
    """(frames as one batch, link types per link): valid frames mutated, cut, re-typed; some pure noise."""
    rng = random.Random(seed)
    bases = [_framed(rng, ip) for ip in _ip_packets(rng) for _ in range(3)]
    lts = list(WALK_LINKTYPES + OTHER_LINKTYPES)
    link_of = {lt: i for i, lt in enumerate(lts)}
    items, links = [], []
    for _ in range(count):
        r = rng.random()
        if r < 0.04:
            lt = rng.choice(lts)
            frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        else:
            lt, base = rng.choice(bases)
            frame = bytearray(base)
            if r < 0.7 and frame:
                for _ in range(rng.choice([1, 1, 2, 3, 6])):
                    pos = min(int(rng.expovariate(1 / 30)), len(frame) - 1)
                    frame[pos] = rng.getrandbits(8) if rng.random() < 0.7 else frame[pos] ^ (1 << rng.randrange(8))
            if rng.random() < 0.3:
                del frame[rng.randrange(len(frame) + 1):]
            if rng.random() < 0.05:
                lt = rng.choice(lts)
            frame = bytes(frame)
        w = rng.random()
        wire = len(frame) if w < 0.6 else len(frame) + rng.randrange(1, 70000) if w < 0.8 else rng.randrange(0, 200)
        sec = -1 if rng.random() < 0.01 else 1_000_000 + rng.randrange(1000)
        items.append((sec, 0, frame, wire))
        links.append(link_of[lt])
    batch = FrameBatch.from_frames(items)
    batch.link[:] = links
    return batch, np.array(lts, np.int64)


def test_decode_kernel_equals_walk_on_random_frames():
    from flowlog.core.fast.decode import decode_into

    batch, lts = _random_frames(seed=20240611, count=300_000)
    n = len(batch)
    got = [np.full(n, 0xEE, d) for d in _DTYPES]
    assert decode_into(batch.buf, batch.off, batch.caplen, batch.wirelen, batch.sec, batch.link, lts, *got) == n

    # the walk, frame by frame, over the same buffer (a read past a frame's end would see the next frame)
    b = batch.buf.tobytes()
    off, cap, wire = batch.off.tolist(), batch.caplen.tolist(), batch.wirelen.tolist()
    lt_of = lts[batch.link].tolist()
    bad_ts = (batch.sec < 0).tolist()
    timestamp = (walk.MALFORMED, walk.R_TIMESTAMP) + (0,) * 10
    rows = [timestamp if bad_ts[i] else walk.decode_frame(b, off[i], off[i] + cap[i], lt_of[i], wire[i])
            for i in range(n)]
    want = [np.array(c, dtype=d) for c, d in zip(zip(*rows), _DTYPES)]

    differ = np.zeros(n, bool)
    for g, w in zip(got, want):
        differ |= g != w
    if differ.any():
        lines = []
        for i in np.flatnonzero(differ)[:8].tolist():
            frame = b[off[i]:off[i] + cap[i]]
            lines.append(f"frame {i} link type {lt_of[i]} wirelen {wire[i]} {frame.hex()}\n"
                         f"   walk   {rows[i]}\n   kernel {tuple(int(c[i]) for c in got)}")
        pytest.fail(f"{int(differ.sum())} of {n} frames differ:\n" + "\n".join(lines))

    # the frames reach every outcome the walk has: each status, reason, family and link type
    status, reason = want[0], want[1]
    assert set(status.tolist()) == {walk.OK, walk.NON_IP, walk.MALFORMED}
    assert set(reason.tolist()) == set(range(len(walk.REASONS)))
    assert set(want[2].tolist()) == {0, 4, 6}
    ok = status == walk.OK
    assert set(np.array(lt_of)[ok].tolist()) == set(WALK_LINKTYPES)
    assert (want[10][ok] > 65575).any(), "no jumbogram"
    assert (want[11][ok] != 0).any() and (want[7][ok] != 0).any()
    assert (want[3] >= 1 << 63).any(), "no IPv6 address with the top bit set"


# -- the pcap walk ----------------------------------------------------------------------


def _read(path, compiled: bool, **kw):
    """Everything CaptureFile hands on: batches as columns and frame bytes, damage, normalised count."""
    ctx = SourceContext()
    cf = CaptureFile(str(path), ctx, compiled=compiled, **kw)
    assert cf.compiled == compiled
    batches = []
    for b in cf.batches():
        frames = b"".join(b.buf[o:o + c].tobytes() for o, c in zip(b.off.tolist(), b.caplen.tolist()))
        batches.append((len(b), b.off.tolist(), b.caplen.tolist(), b.wirelen.tolist(), b.sec.tolist(),
                        b.nsec.tolist(), b.link.tolist(), [str(x.dtype) for x in (b.off, b.caplen, b.wirelen,
                                                                               b.sec, b.nsec, b.link)], frames))
    return batches, ctx.damage, ctx.warnings, cf.normalised_timestamps, list(ctx.links), cf.frames


def _flat(batches):
    """The batches' frames in one stream (columns without offsets, frame bytes)."""
    cols = [[] for _ in range(5)]
    data = b""
    for b in batches:
        for i, c in enumerate((b[2], b[3], b[4], b[5], b[6])):
            cols[i] += c
        data += b[8]
    return cols, data


def _assert_same_walk(path, **kw):
    fast = _read(path, True, **kw)
    pure = _read(path, False, **kw)
    if "batch_frames" in kw:
        assert fast[0] == pure[0]                     # batch by batch
    else:                                             # the compiled path makes bigger batches by default
        assert _flat(fast[0]) == _flat(pure[0])
    assert fast[1:] == pure[1:]
    return pure


PCAPS = [p for p in _captures(BUNDLED) if sniff(str(p)) == "pcap"]


@pytest.mark.parametrize("path", PCAPS, ids=lambda p: p.name)
def test_walk_same_on_bundled_capture(path):
    for kw in ({}, {"batch_frames": 32768}, {"batch_frames": 7}, {"batch_frames": 1},
               {"buffer_size": 1, "batch_frames": 100}, {"buffer_size": 100}, {"buffer_size": 1500}):
        _assert_same_walk(path, **kw)


def test_walk_same_on_corpus(corpus):
    paths = [p for p in _captures(corpus) if sniff(str(p)) == "pcap"]
    assert paths
    for p in paths:
        _assert_same_walk(p)
        _assert_same_walk(p, batch_frames=1000, buffer_size=5000)


def test_walk_same_on_cut_files(tmp_path):
    rng = random.Random(7)
    done = 0
    for path in PCAPS:
        blob = path.read_bytes()
        if len(blob) <= 24:
            continue
        for k in range(4):
            cut = rng.randrange(24, len(blob))
            p = tmp_path / f"{path.stem}-{k}.pcap"
            p.write_bytes(blob[:cut])
            for kw in ({}, {"batch_frames": 5}, {"buffer_size": 64, "batch_frames": 50}):
                _assert_same_walk(p, **kw)
            done += 1
    assert done > 40


def test_walk_same_on_written_variants(tmp_path):
    """Both byte orders, micro/nanoseconds, the modified format, fractions past one second,
    corrupt records, gzip; messages included."""
    rng = random.Random(11)
    frames = [synth.packet("192.0.2.%d" % (i % 250), "198.51.100.1", 17, i, 53, size=rng.randrange(0, 300))
              for i in range(500)]
    paths = []
    for big in (False, True):
        for nano in (False, True):
            unit = 10 ** 9 if nano else 10 ** 6
            items = []
            for i, f in enumerate(frames):
                frac = rng.randrange(unit) if i % 7 else rng.randrange(unit, 1 << 32)   # some past one second
                items.append(((1_600_000_000 + i, frac), f, len(f) + rng.randrange(3)))
            p = tmp_path / f"v-{big}-{nano}.pcap"
            synth.write_pcap(p, items, nanoseconds=nano, big_endian=big, snaplen=200)
            paths.append(p)
    # modified pcap (Kuznetzov): 24-byte record headers
    for big in (False, True):
        e = ">" if big else "<"
        out = [struct.pack(e + "IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)]
        for i, f in enumerate(frames[:200]):
            out.append(struct.pack(e + "IIII", 1_600_000_000 + i, 999_999 + i % 3, len(f), len(f))
                       + struct.pack(e + "IHBB", i, 1, 0, 0) + f)
        p = tmp_path / f"modified-{big}.pcap"
        p.write_bytes(b"".join(out))
        paths.append(p)
    # corrupt: a record claiming more than the limit, after some good ones
    blob = paths[0].read_bytes()
    pos = 24
    for _ in range(300):
        pos += 16 + struct.unpack_from("<I", blob, pos + 8)[0]
    bad = bytearray(blob)
    struct.pack_into("<I", bad, pos + 8, (1 << 24) + 1)
    p = tmp_path / "corrupt.pcap"
    p.write_bytes(bytes(bad))
    paths.append(p)
    # compressed (reads return what the decompressor has)
    gz = tmp_path / "v.pcap.gz"
    gz.write_bytes(gzip.compress(paths[1].read_bytes()))
    paths.append(gz)

    normalised = damage = 0
    for p in paths:
        for kw in ({}, {"batch_frames": 64}, {"buffer_size": 33, "batch_frames": 10}, {"batch_frames": 1}):
            pure = _assert_same_walk(p, **kw)
        normalised += pure[3]
        damage += len(pure[1])
    assert normalised > 100
    assert damage == 1


def test_walk_first_time_and_choice(tmp_path, monkeypatch, data):
    p = tmp_path / "t.pcap"
    synth.write_pcap(p, [((5, 2_000_000), synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2))])
    for compiled in (True, False):
        cf = CaptureFile(str(p), SourceContext(), compiled=compiled)
        assert cf.first_time() == (7, 0)
    # None: by size (flowlog.core.jit.wanted), pcapng as pcap (tests/test_fast_pcapng.py)
    monkeypatch.setattr(jit, "JIT_MIN_BYTES", 1 << 40)
    assert not CaptureFile(str(p), SourceContext()).compiled
    assert not CaptureFile(str(data / "captures" / "doq.pcapng"), SourceContext()).compiled
    monkeypatch.setattr(jit, "JIT_MIN_BYTES", 0)
    assert CaptureFile(str(p), SourceContext()).compiled
    assert CaptureFile(str(data / "captures" / "doq.pcapng"), SourceContext()).compiled


def test_walk_compiled_path_runs_the_kernel(tmp_path, monkeypatch):
    p = tmp_path / "t.pcap"
    synth.write_pcap(p, [(1.0, synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2))] * 10)

    def boom(self, cols):
        raise AssertionError("the Python walk ran")

    monkeypatch.setattr(CaptureFile, "_walk_pcap", boom)
    assert sum(len(b) for b in CaptureFile(str(p), SourceContext(), compiled=True).batches()) == 10
    with pytest.raises(AssertionError, match="Python walk ran"):
        list(CaptureFile(str(p), SourceContext(), compiled=False).batches())


# -- on-disk cache --------------------------------------------------------------------------

_CACHE_PROBE = textwrap.dedent("""
    import json
    import numpy as np
    from flowlog.core import synth
    from flowlog.core.frames import FrameBatch
    from flowlog.core.fast import decode as fd, pcap as fp, pcapng as fng
    from flowlog.core.fast.decode import decode_batch_fast
    from flowlog.core.fast.pcap import walk_pcap
    from flowlog.core.fast.pcapng import walk_pcapng

    batch = FrameBatch.from_frames([(1, 0, synth.packet("192.0.2.1", "192.0.2.2", 6, 1, 2))])
    assert decode_batch_fast(batch, np.array([1])).sport.tolist() == [1]
    rec = np.frombuffer(b"\\x01\\0\\0\\0\\x02\\0\\0\\0\\x04\\0\\0\\0\\x04\\0\\0\\0abcd", np.uint8).copy()
    cols = [np.empty(4, np.int64) for _ in range(5)] + [np.empty(4, np.int32)]
    assert walk_pcap(rec, 0, len(rec), False, 1000, 16, 1 << 24, 0, 4, *cols)[:3] == (1, 20, 0)
    spb = np.frombuffer(b"\\x03\\0\\0\\0\\x14\\0\\0\\0\\x04\\0\\0\\0abcd\\x14\\0\\0\\0", np.uint8).copy()
    tables = [np.zeros(1, np.int32)] + [np.array([k], np.int64) for k in (10, 6, 0, 0)]
    assert walk_pcapng(spb, 0, len(spb), False, *tables, 1 << 24, 0, 4, 0, 0, *cols)[:3] == (1, 20, 0)
    stats = {}
    for mod in (fd, fp, fng):
        for name, obj in vars(mod).items():
            if hasattr(obj, "stats") and hasattr(obj, "signatures"):
                stats[mod.__name__ + "." + name] = [sum(obj.stats.cache_hits.values()),
                                                    sum(obj.stats.cache_misses.values())]
    print(json.dumps(stats))
""")


def test_kernels_are_cached_on_disk():
    """A second process loads the kernels from the cache: no compilation."""
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    second = runs[1]
    for name in ("flowlog.core.fast.decode.decode_into", "flowlog.core.fast.pcap.walk_pcap",
                 "flowlog.core.fast.pcapng.walk_pcapng"):
        hits, misses = second[name]
        assert hits >= 1 and misses == 0, f"{name} compiled again in a second process: {second}"
    compiled = {name: s for name, s in second.items() if s[1]}
    assert not compiled, f"compiled in the second process: {compiled}"


def test_walk_same_at_the_record_size_limit(tmp_path):
    """A record of exactly the limit is read; one byte more is corruption (both walks)."""
    from flowlog.core.capfile import MAX_RECORD

    limit = MAX_RECORD + 100                          # the limit is the larger of snaplen and MAX_RECORD
    frame = synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2)
    big = frame + bytes(limit - len(frame))
    p = tmp_path / "limit.pcap"
    with open(p, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, limit, 1))
        f.write(struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame)
        f.write(struct.pack("<IIII", 2, 0, limit, limit) + big)
        f.write(struct.pack("<IIII", 3, 0, limit + 1, limit + 1) + frame)
    for kw in ({}, {"batch_frames": 1}):
        batches, damage, *_ = _assert_same_walk(p, **kw)
        assert _flat(batches)[0][0] == [len(frame), limit]
        assert len(damage) == 1 and f"claims {limit + 1} captured bytes" in damage[0]
