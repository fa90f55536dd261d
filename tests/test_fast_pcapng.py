"""The compiled pcapng walk (flowlog.core.fast.pcapng) against the pure-Python walk it mirrors.

:class:`CaptureFile` with ``compiled=True`` (with and without the reading thread) and
``False`` yields the same frames, links, damage and warnings for: every bundled and corpus
pcapng, written files with several sections in both byte orders, interfaces with different
``if_tsresol`` and ``if_tsoffset``, Simple and Obsolete Packet Blocks, statistics, name
resolution, custom and unknown blocks between packets, damaged packet blocks, corrupt block
lengths, bad section headers, files cut at every offset of a range and compressed files.
The timestamp arithmetic is checked against CaptureFile._timestamp for every resolution.
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from flowlog.core import jit, synth
from flowlog.core.api import SourceContext
from flowlog.core.capfile import MAX_RECORD, CaptureFile, sniff
from flowlog.core.synth import pcapng_block, pcapng_option
from flowlog.plugins.pcap import expand

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba is not available (or FLOWLOG_NO_JIT is set)")

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "data" / "captures"
SHB = 0x0A0D0D0A


def _pcapngs(folder: Path) -> list[Path]:
    return [Path(p) for p in expand(str(folder)) if sniff(p) == "pcapng"]


def _read(path, compiled: bool, **kw):
    """Everything CaptureFile hands on: batches as columns and frame bytes, damage, warnings, links."""
    ctx = SourceContext()
    cf = CaptureFile(str(path), ctx, compiled=compiled, **kw)
    assert cf.compiled == compiled
    batches = []
    for b in cf.batches():
        frames = [b.buf[o:o + c].tobytes() for o, c in zip(b.off.tolist(), b.caplen.tolist())]
        batches.append((b.off.tolist(), b.caplen.tolist(), b.wirelen.tolist(), b.sec.tolist(), b.nsec.tolist(),
                        b.link.tolist(), [str(x.dtype) for x in (b.off, b.caplen, b.wirelen, b.sec, b.nsec, b.link)],
                        frames))
    return batches, ctx.damage, ctx.warnings, [tuple(x) for x in ctx.links], ctx.interfaces, cf.frames


def _flat(batches):
    """The frames in one stream, without offsets: (caplen, wirelen, sec, nsec, link, bytes) each."""
    return [f for b in batches for f in zip(b[1], b[2], b[3], b[4], b[5], b[7])]


def _assert_same_walk(path, **kw):
    pure = _read(path, False, **kw)
    for prefetch in (False, True):
        if prefetch and "batch_frames" in kw:
            continue                                  # the reading thread runs with the default batch size
        fast = _read(path, True, **kw)
        if "batch_frames" in kw:
            assert fast[0] == pure[0]                 # batch by batch, offsets included
        else:
            assert _flat(fast[0]) == _flat(pure[0])
            assert all(b[6] == ["int64"] * 5 + ["int32"] for b in fast[0])
        assert fast[1:] == pure[1:]
    return pure


# -- writing pcapng files -------------------------------------------------------------------


class Writer:
    """pcapng blocks of every kind flowlog reads or skips, in either byte order."""

    def __init__(self):
        self.e = "<"
        self.out: list[bytes] = []

    def section(self, big: bool):
        self.e = ">" if big else "<"
        self.out.append(pcapng_block(SHB, struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
                                     + pcapng_option(0, b"", self.e), self.e))

    def interface(self, linktype=1, name=None, tsresol=None, tsoffset=None, snaplen=262144):
        e = self.e
        opts = b""
        if name is not None:
            opts += pcapng_option(2, name.encode(), e)
        if tsresol is not None:
            opts += pcapng_option(9, bytes([tsresol]), e)
        if tsoffset is not None:
            opts += pcapng_option(14, struct.pack(e + "q", tsoffset), e)
        if opts:
            opts += pcapng_option(0, b"", e)
        self.out.append(pcapng_block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts, e))

    def epb(self, iface, units, data, wire=None, caplen=None, options=b""):
        e = self.e
        body = struct.pack(e + "IIIII", iface, (units >> 32) & 0xFFFFFFFF, units & 0xFFFFFFFF,
                           len(data) if caplen is None else caplen, len(data) if wire is None else wire)
        data += bytes(-len(data) % 4)
        self.out.append(pcapng_block(6, body + data + options, e))

    def opb(self, iface, units, data):
        e = self.e
        body = struct.pack(e + "HHIIII", iface, 0, (units >> 32) & 0xFFFFFFFF, units & 0xFFFFFFFF, len(data),
                           len(data) + 4)
        self.out.append(pcapng_block(2, body + data, e))

    def spb(self, data, wire=None):
        self.out.append(pcapng_block(3, struct.pack(self.e + "I", len(data) if wire is None else wire) + data, self.e))

    def block(self, btype, body=b""):
        self.out.append(pcapng_block(btype, body, self.e))

    def raw(self, data: bytes):
        self.out.append(data)

    def bytes(self) -> bytes:
        return b"".join(self.out)


RESOLUTIONS = [None, 6, 9, 0x94, 0x8A, 0, 3, 0x80, 0x9E, 19, 25, 0xC0]   # None: the default, 10^-6


def _units(rng: random.Random, tsresol, sec: int) -> int:
    if tsresol is None:
        tsresol = 6
    if tsresol & 0x80:
        exp = tsresol & 0x7F
        return min((sec << exp) + rng.randrange(1 << exp), (1 << 64) - 1)
    exp = tsresol
    return min(sec * 10 ** exp + rng.randrange(10 ** exp), (1 << 64) - 1)


def _frame(rng: random.Random, i: int) -> bytes:
    return synth.packet(f"10.0.{i % 7}.{i % 200 + 1}", "192.0.2.9", rng.choice((6, 17)), 1000 + i % 13, 53,
                        size=rng.randrange(0, 200))


def mixed_file(seed: int = 1, sections: int = 3, packets: int = 60) -> bytes:
    """Sections in alternating byte orders, several interfaces each, every kind of block between packets."""
    rng = random.Random(seed)
    w = Writer()
    i = 0
    for s in range(sections):
        w.section(big=bool(s % 2))
        if s == 1:
            w.spb(_frame(rng, i))                      # before any interface: skipped with a message
        ifaces = []
        for k in range(rng.randrange(2, 5)):
            res = RESOLUTIONS[(s * 5 + k) % len(RESOLUTIONS)]
            off = rng.choice([None, 0, 3600, -1_000_000, 1 << 40])
            snap = rng.choice([262144, 0, 64])
            w.interface(rng.choice((1, 1, 101, 113)), name=rng.choice([None, f"if{s}{k}"]), tsresol=res,
                        tsoffset=off, snaplen=snap)
            ifaces.append(res)
        w.interface(1, tsresol=0)                       # whole seconds: room for unusable timestamps
        seconds = len(ifaces)
        ifaces.append(0)
        w.block(4, struct.pack(w.e + "HH", 0, 0))       # name resolution block
        for _ in range(packets):
            i += 1
            kind = rng.random()
            iface = rng.randrange(len(ifaces))
            units = _units(rng, ifaces[iface], 1_600_000_000 + i)
            f = _frame(rng, i)
            if kind < 0.55:
                w.epb(iface, units, f, wire=len(f) + rng.randrange(3),
                      options=rng.choice([b"", pcapng_option(1, b"hello", w.e) + pcapng_option(0, b"", w.e)]))
            elif kind < 0.7:
                w.spb(f, wire=len(f) + rng.choice((0, 0, 30)))
            elif kind < 0.75:
                w.opb(iface, units, f)
            elif kind < 0.8:
                w.block(5, struct.pack(w.e + "III", iface, 0, 0))              # interface statistics
            elif kind < 0.84:
                w.block(rng.choice((0xBAD, 0x40000BAD)), struct.pack(w.e + "I", 32473) + b"custom")
            elif kind < 0.87:
                w.block(rng.choice((0x12345, 9, 10, 0x80000001)), bytes(rng.randrange(0, 40)))
            elif kind < 0.89:
                w.epb(len(ifaces) + 3, units, f)                               # unknown interface
            elif kind < 0.91:
                w.epb(iface, units, f, caplen=len(f) + 64)                     # claims more than the block
            elif kind < 0.93:
                w.block(6, struct.pack(w.e + "IIII", iface, 0, 0, 0))           # too short for its type
            elif kind < 0.94:
                w.block(3)                                                      # too short SPB
            elif kind < 0.95:
                w.block(1, b"\x01\x00")                                         # interface block too short
            elif kind < 0.97:
                w.epb(seconds, (1 << 64) - 1 - rng.randrange(1 << 40), f)       # unusable timestamp
            else:
                res = rng.choice(RESOLUTIONS)
                w.interface(1, tsresol=res, tsoffset=rng.choice([None, 7]))
                ifaces.append(res)
    return w.bytes()


def _write(tmp_path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


KWS = ({}, {"batch_frames": 32768}, {"batch_frames": 7}, {"batch_frames": 1},
       {"buffer_size": 64, "batch_frames": 50}, {"buffer_size": 100}, {"buffer_size": 700})


# -- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _pcapngs(BUNDLED), ids=lambda p: p.name)
def test_walk_same_on_bundled_pcapng(path):
    for kw in KWS:
        _assert_same_walk(path, **kw)


def test_walk_same_on_corpus_pcapng(corpus):
    paths = _pcapngs(corpus)
    assert paths
    for p in paths:
        _assert_same_walk(p)
        _assert_same_walk(p, batch_frames=1000, buffer_size=5000)


def test_walk_same_on_written_files(tmp_path):
    frames = damage = interfaces = 0
    for seed in range(4):
        p = _write(tmp_path, f"mixed-{seed}.pcapng", mixed_file(seed))
        for kw in KWS:
            pure = _assert_same_walk(p, **kw)
        frames += pure[5]
        damage += len(pure[1])
        interfaces += len(pure[4])
        sec = [s for b in pure[0] for s in b[3]]
        assert -1 in sec and len(set(sec)) > 50
    assert frames > 400 and damage > 20 and interfaces > 20
    gz = tmp_path / "mixed.pcapng.gz"
    gz.write_bytes(gzip.compress(mixed_file(9)))
    for kw in ({}, {"batch_frames": 10}, {"buffer_size": 200}):
        _assert_same_walk(gz, **kw)


def test_every_resolution_and_offset(tmp_path):
    """One interface per if_tsresol (powers of ten and two, up to 127), offsets of both signs."""
    rng = random.Random(3)
    for big in (False, True):
        w = Writer()
        w.section(big)
        res = [None] + list(range(20)) + [25, 60, 127] + [0x80 | k for k in (0, 1, 10, 20, 31, 32, 33, 40,
                                                                                   63, 64, 65, 90, 94, 127)]
        offsets = [None, 0, 1, -1, 1 << 61, -(1 << 61), (1 << 62) - 1, -(1 << 63), (1 << 63) - 1]
        for k, r in enumerate(res):
            w.interface(1, tsresol=r, tsoffset=offsets[k % len(offsets)])
        for k in range(len(res) * 12):
            iface = k % len(res)
            units = rng.choice([0, 1, (1 << 64) - 1, 1 << 63, (1 << 63) - 1, rng.getrandbits(64),
                                rng.getrandbits(rng.randrange(1, 64)), _units(rng, res[iface], 1_700_000_000)])
            w.epb(iface, units, _frame(rng, k))
        p = _write(tmp_path, f"res-{big}.pcapng", w.bytes())
        for kw in ({}, {"batch_frames": 5}):
            pure = _assert_same_walk(p, **kw)
        sec = [s for b in pure[0] for s in b[3]]
        times = {(c[2], c[3]) for c in _flat(pure[0])}
        assert sec.count(-1) > 10 and len(times) > 100


def test_timestamp_arithmetic_matches_python():
    from flowlog.core.fast.pcapng import timestamp

    cf = CaptureFile.__new__(CaptureFile)
    rng = random.Random(5)
    specials = [0, 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 10 ** 19, 10 ** 19 - 1]
    checked = 0
    for base in (10, 2):
        for exp in range(128):
            for _ in range(30):
                u = rng.choice(specials) if rng.random() < 0.3 else rng.getrandbits(rng.randrange(1, 65))
                whole = u >> exp if base == 2 else u // 10 ** exp
                off = rng.choice([0, -1, 1 << 62, -(1 << 63), (1 << 63) - 1, -whole, -whole - 1,
                                  (1 << 62) - whole - 1, (1 << 62) - whole, rng.randrange(-1 << 63, 1 << 63)])
                off = max(-(1 << 63), min((1 << 63) - 1, off))
                cf._tsres, cf._tsoff = [(base, exp)], [off]
                assert tuple(timestamp(u >> 32, u & 0xFFFFFFFF, base, exp, off)) == cf._timestamp(0, u), \
                    (base, exp, u, off)
                checked += 1
    # every special value against every edge offset: seconds at and around 0, 2**62, 2**63
    edges = [0, 1, -1, (1 << 62) - 1, 1 << 62, -(1 << 62), -(1 << 63), -(1 << 63) + 5, (1 << 63) - 1]
    for base in (10, 2):
        for exp in range(128):
            for u in specials + [(1 << 63) + 5, (1 << 63) + (1 << 62) - 1, (1 << 63) + (1 << 62)]:
                whole = u >> exp if base == 2 else u // 10 ** exp
                for off in edges + [-whole, -whole - 1, (1 << 62) - whole - 1, (1 << 62) - whole]:
                    off = max(-(1 << 63), min((1 << 63) - 1, off))
                    cf._tsres, cf._tsoff = [(base, exp)], [off]
                    assert tuple(timestamp(u >> 32, u & 0xFFFFFFFF, base, exp, off)) == cf._timestamp(0, u), \
                        (base, exp, u, off)
                    checked += 1
    assert checked == 2 * 128 * 30 + 2 * 128 * 12 * 13


def test_simple_packet_blocks_take_the_time_before_them(tmp_path):
    """Across batch boundaries too; cut to interface 0's snaplen, never to the block's padding."""
    w = Writer()
    w.section(False)
    w.interface(1, snaplen=62)
    w.interface(1, tsresol=9)
    frame = synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2, size=100)
    w.epb(1, 1_700_000_000_123_456_789, frame)
    w.spb(frame[:62], wire=len(frame))                 # 62 bytes of data, 2 of padding
    w.spb(frame[:62], wire=len(frame))
    w.epb(0, 1_700_000_001_000_001, frame)
    w.spb(frame[:30], wire=30)
    p = _write(tmp_path, "spb.pcapng", w.bytes())
    for kw in ({}, {"batch_frames": 1}, {"batch_frames": 2}):
        pure = _assert_same_walk(p, **kw)
        cols = _flat(pure[0])
        assert [(c[0], c[1], c[2], c[3]) for c in cols] == [
            (len(frame), len(frame), 1_700_000_000, 123_456_789), (62, len(frame), 1_700_000_000, 123_456_789),
            (62, len(frame), 1_700_000_000, 123_456_789), (len(frame), len(frame), 1_700_000_001, 1000),
            (30, 30, 1_700_000_001, 1000)]
        assert not pure[1]


def test_corrupt_and_bad_section_headers(tmp_path):
    rng = random.Random(8)
    good = mixed_file(2, sections=1, packets=40)
    cases = {
        "length-not-multiple-of-4": struct.pack("<II", 6, 34) + bytes(30),
        "length-below-12": struct.pack("<II", 6, 8) + bytes(8),
        "length-past-limit": struct.pack("<II", 6, MAX_RECORD + 4) + bytes(8),
        "bad-byte-order-magic": pcapng_block(SHB, struct.pack("<IHHq", 0x1A2B3C4E, 1, 0, -1)),
        "bad-section-length": struct.pack("<II", SHB, 20) + struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1),
        "section-length-past-limit": struct.pack("<II", SHB, MAX_RECORD + 4)
                                     + struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1),
    }
    for name, bad in cases.items():
        rest = mixed_file(3, sections=1, packets=10)
        p = _write(tmp_path, f"{name}.pcapng", good + bad + rest)
        for kw in ({}, {"batch_frames": 4}, {"buffer_size": 100, "batch_frames": 9}, {"buffer_size": 90}):
            pure = _assert_same_walk(p, **kw)
        assert len(pure[1]) >= 1 and ("impossible length" in pure[1][-1] or "bad pcapng section" in pure[1][-1])
        assert str(len(good)) in pure[1][-1]
    # a block as long as the limit is read; the section header after it too
    w = Writer()
    w.section(False)
    w.interface(1)
    frame = _frame(rng, 1)
    w.epb(0, 5, frame + bytes(MAX_RECORD - 32 - len(frame)))
    w.section(True)
    w.interface(1)
    w.epb(0, 7, frame)
    p = _write(tmp_path, "limit.pcapng", w.bytes())
    for kw in ({}, {"batch_frames": 1}):
        pure = _assert_same_walk(p, **kw)
        assert [c[0] for c in _flat(pure[0])] == [MAX_RECORD - 32, len(frame)] and not pure[1]


def test_walk_same_on_cut_files(tmp_path):
    """Cut at every offset around a section change, interfaces, and packets of every kind."""
    blob = mixed_file(4, sections=2, packets=25)
    second = blob.index(struct.pack(">I", SHB), 8)      # the second section starts here (big-endian)
    offsets = list(range(second - 300, min(len(blob), second + 500)))
    assert len(offsets) == 800
    p = tmp_path / "cut.pcapng"
    messages = set()
    for cut in offsets:
        p.write_bytes(blob[:cut])
        for kw in ({"buffer_size": 4096}, {"batch_frames": 5, "buffer_size": 256}):
            pure = _assert_same_walk(p, **kw)
        messages.update(m.split(" inside ")[-1].split(" (")[0] for m in pure[1] if "cut short" in m)
    assert messages == {"a block header", "a block", "a section header"}


def test_walk_same_on_mutated_files(tmp_path):
    """Bytes overwritten, block types and lengths replaced, bytes deleted: whatever the walks make of it, the same."""
    rng = random.Random(21)
    p = tmp_path / "mutated.pcapng"
    damaged = 0
    for _ in range(150):
        blob = bytearray(mixed_file(rng.randrange(1000), sections=rng.randrange(1, 4), packets=rng.randrange(5, 30)))
        for _ in range(rng.randrange(1, 5)):
            pos = rng.randrange(32, len(blob))          # the first section header stays whole
            r = rng.random()
            if r < 0.4:
                blob[pos] = rng.randrange(256)
            elif r < 0.7:
                blob[pos:pos + 4] = struct.pack("<I", rng.choice([0, 12, 16, 28, 32, SHB, 6, 3, 1, 2,
                                                                  rng.getrandbits(32)]))
            else:
                del blob[pos:pos + rng.randrange(1, 9)]
        p.write_bytes(bytes(blob[:rng.randrange(32, len(blob) + 1)]) if rng.random() < 0.5 else bytes(blob))
        for kw in ({"buffer_size": rng.randrange(1, 300)}, {"batch_frames": rng.randrange(1, 20)}):
            pure = _assert_same_walk(p, **kw)
        damaged += bool(pure[1])
    assert damaged > 100


def test_compiled_path_runs_the_kernel(tmp_path, monkeypatch):
    p = _write(tmp_path, "t.pcapng", mixed_file(5, sections=2, packets=30))

    def boom(self, cols):
        raise AssertionError("the Python walk ran")

    want = _read(p, False)
    monkeypatch.setattr(CaptureFile, "_walk_pcapng", boom)
    for kw in ({}, {"batch_frames": 3}):
        assert _flat(_read(p, True, **kw)[0]) == _flat(want[0])
    with pytest.raises(AssertionError, match="Python walk ran"):
        _read(p, False)


def test_first_time_and_choice(tmp_path, monkeypatch):
    w = Writer()
    w.section(False)
    w.block(0xBAD, b"....")
    w.interface(1, tsresol=9, tsoffset=10)
    w.epb(0, 5_000_000_007, synth.packet("192.0.2.1", "192.0.2.2", 17, 1, 2))
    p = _write(tmp_path, "t.pcapng", w.bytes())
    for compiled in (True, False):
        assert CaptureFile(str(p), SourceContext(), compiled=compiled).first_time() == (15, 7)
    monkeypatch.setattr(jit, "JIT_MIN_BYTES", 1 << 40)
    assert not CaptureFile(str(p), SourceContext()).compiled
    monkeypatch.setattr(jit, "JIT_MIN_BYTES", 0)
    assert CaptureFile(str(p), SourceContext()).compiled


def test_records_same_with_and_without_jit(tmp_path):
    """`flowlog capture -r` on a pcapng: the same records and exit status with FLOWLOG_NO_JIT=1 and compiled."""
    rng = random.Random(12)
    w = Writer()
    for s, big in enumerate((False, True)):
        w.section(big)
        w.interface(1, name=f"eth{s}", tsresol=9 if s else None)
        w.interface(1, name=f"wlan{s}", tsresol=0x94, tsoffset=1_699_000_000)
        for i in range(2000):
            src, dst = f"10.{s}.{i % 5}.{i % 4 + 1}", f"172.16.0.{i % 3 + 1}"
            frame = synth.packet(src, dst, rng.choice((6, 17)), 1000 + i % 17, 443, size=rng.randrange(0, 1200))
            t = 1_700_000_000 + i * 0.01 + s * 30
            if i % 3:
                w.epb(0, int(t * (1e9 if s else 1e6)), frame)
            else:
                w.epb(1, int((t - 1_699_000_000) * (1 << 20)), frame)
            if i % 300 == 0:
                w.spb(frame)
                w.block(5, struct.pack(w.e + "III", 0, 0, 0))
    w.raw(struct.pack(">II", 6, 64) + bytes(20))      # cut short: status 1, on both paths
    path = _write(tmp_path, "big.pcapng", w.bytes())
    code = ("import sys, runpy; sys.argv = ['flowlog', 'capture', '-r', sys.argv[1]]\n"
            "try:\n    runpy.run_module('flowlog.cli', run_name='__main__')\n"
            "finally:\n    print('numba' in sys.modules, file=sys.stderr)\n")
    env = {**os.environ, "FLOWLOG_JIT_MIN_BYTES": "0"}
    fast = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    slow = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**env, "FLOWLOG_NO_JIT": "1"})
    assert fast.stdout == slow.stdout and len(fast.stdout.splitlines()) > 50
    assert fast.returncode == slow.returncode == 1
    assert fast.stderr.split()[-1] == "True" and slow.stderr.split()[-1] == "False"
    cut = [line for line in fast.stderr.splitlines() if "cut short" in line]
    assert cut and cut == [line for line in slow.stderr.splitlines() if "cut short" in line]
    assert "eth1" in fast.stdout and "wlan0" in fast.stdout
