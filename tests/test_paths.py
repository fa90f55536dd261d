"""The compiled path and the pure-Python path (FLOWLOG_NO_JIT=1) give identical records."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flowlog.core import jit, synth
from flowlog.core.api import ListSink
from flowlog.core.records import ALL_FIELDS
from flowlog.core.run import Run, RunOptions
from flowlog.core.uri import URI
from flowlog.plugins.pcap import PcapSource

HERE = Path(__file__).resolve().parent
BUNDLED = sorted((HERE / "data" / "captures").iterdir())

pytestmark = pytest.mark.skipif(not jit.available(),
                                reason="numba is not available (or FLOWLOG_NO_JIT is set): nothing to compare")


def records(paths, compiled, **options):
    sink = ListSink()
    result = Run([PcapSource(URI.parse(f"pcap:{p}")) for p in paths], [sink],
                 RunOptions(compiled=compiled, **options)).run()
    assert result.stats.frames >= 0
    return [r.values(ALL_FIELDS) for r in sink.records], result


def assert_same(paths, **options):
    a, ra = records(paths, False, **options)
    b, rb = records(paths, True, **options)
    assert a == b
    assert ra.stats == rb.stats
    assert ra.damage == rb.damage
    return a


@pytest.mark.parametrize("capture", BUNDLED, ids=lambda p: p.name)
def test_bundled_capture_same_on_both_paths(capture):
    assert_same([capture])


def test_corpus_same_on_both_paths(corpus):
    for capture in sorted(corpus.iterdir()):
        if capture.is_file() and capture.suffix in (".pcap", ".pcapng"):
            assert_same([capture]), capture.name
    assert_same([corpus / "skype.pcap"], window=10, lateness=0, max_flows=50)
    assert_same([corpus / "echo-connections.pcap"], timestamps="first-last", window=1, max_flows=700)


def test_disorder_lateness_capacity_same_on_both_paths(tmp_path):
    rng = random.Random(11)
    hosts = [f"10.0.{i}.{j}" for i in range(4) for j in range(1, 30)] + ["2001:db8::1", "2001:db8::2"]
    items = []
    t = 1_700_000_000.0
    for i in range(60_000):
        t += rng.expovariate(200)
        jitter = -rng.random() * 90 if rng.random() < 0.02 else 0.0     # some frames far out of order
        src, dst = rng.choice(hosts), rng.choice(hosts)
        if (":" in src) != (":" in dst):
            dst = src
        proto = rng.choice((6, 17, 1, 58 if ":" in src else 1))
        frame = synth.packet(src, dst, proto, rng.randrange(1, 9), rng.randrange(1, 5), rng.randrange(0, 1400),
                             icmp_type=8 if proto == 1 else 128, ident=rng.randrange(3))
        if rng.random() < 0.01:
            frame = frame[:20]                                           # malformed
        items.append((t + jitter, frame))
    path = tmp_path / "mixed.pcap"
    synth.write_pcap(path, items)
    for opts in ({}, {"window": 10, "lateness": 0}, {"window": 30, "lateness": 2, "max_flows": 300},
                 {"timestamps": "first-last", "max_flows": 5}):
        out = assert_same([path], **opts)
        assert len(out) > 10


def test_no_jit_environment_variable(tmp_path):
    """FLOWLOG_NO_JIT=1 keeps numba out of the process and gives the same output."""
    path = tmp_path / "big.pcap"
    synth.write_pcap(path, [(1_700_000_000 + i * 0.001, synth.packet("10.0.0.1", "10.0.0.2", 17, i % 50, 53, 1200))
                            for i in range(8000)])
    code = ("import sys, runpy; sys.argv = ['flowlog', 'capture', '-r', sys.argv[1]]\n"
            "try:\n    runpy.run_module('flowlog.cli', run_name='__main__')\n"
            "finally:\n    print('numba' in sys.modules, file=sys.stderr)\n")
    env = {**os.environ, "FLOWLOG_JIT_MIN_BYTES": "0"}
    fast = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    slow = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**env, "FLOWLOG_NO_JIT": "1"})
    assert fast.stdout == slow.stdout and fast.stdout
    assert fast.stderr.split()[-1] == "True"
    assert slow.stderr.split()[-1] == "False"


def test_compiled_text_is_the_formatters_text(tmp_path):
    """The text kernel writes exactly what the Python formatter writes, for every kind of record and address."""
    from flowlog.core.fast.text import text_v2
    from flowlog.core.formats import Formatter
    from flowlog.core.meter import Meter
    from flowlog.core.decode import decode_batch
    from flowlog.core.frames import FrameBatch
    import numpy as np

    addrs = ["0.0.0.0", "255.255.255.255", "10.0.0.1", "::", "::1", "1::", "2001:db8::1", "2001:db8:0:1:0:0:0:1",
             "2001:0:0:1:0:0:0:1", "fe80::8c36:6ff:fe44:acaf", "::ffff:192.0.2.1", "::192.0.2.1",
             "1:2:3:4:5:6:7:8", "1:0:3:4:5:6:7:8", "0:0:1:0:0:0:0:1", "ff02::1:ff00:3", "8000::"]
    frames = []
    t = 1_000_000_000
    for k, a in enumerate(addrs):
        for b in addrs:
            if (":" in a) == (":" in b):
                t += 7
                frames.append((t, 0, synth.packet(a, b, 17 if k % 2 else 6, k, 65535 - k, k * 13)))
    frames.append((t + 1, 0, synth.ETH_IPV4 + b"\x45\x00"))                 # malformed: SKIPDATA, bytes -
    frames.append((t + 4000, 0, synth.packet("10.0.0.1", "10.0.0.2", 1)))    # after a gap: NODATA
    batch = FrameBatch.from_frames(frames)
    lt = np.array([1])
    for account in (None, "1251762227"):
        meter = Meter(["eth0 with-no-space", "eni-lq6mkcis"], lambda: np.array([1]), compiled=True,
                      account_id=account, max_flows=200)
        out = meter.add(batch, decode_batch(batch, lt)) + meter.flush()
        fmt = Formatter("text")
        assert sum(len(b) for b in out) > 150
        for rb in out:
            expected = "".join(line + "\n" for line in fmt.lines(rb.records()))
            assert text_v2(rb).decode() == expected


def test_flow_table_grows_deletes_in_place_and_shrinks():
    """Tiny initial table: growth, in-place deletion of emitted windows and shrinking keep records exact."""
    import numpy as np
    from flowlog.core.decode import decode_batch
    from flowlog.core.fast.meter import JitAggregator
    from flowlog.core.frames import FrameBatch
    from flowlog.core.meter import Meter

    rng = random.Random(5)
    frames = []
    t = 1_600_000_000.0
    for i in range(40_000):
        t += rng.expovariate(100)
        burst = 3000 if (t // 60) % 3 == 0 else 40            # windows with many flows, then few
        frames.append((int(t), int((t % 1) * 1e9), synth.packet(f"10.{i % 7}.0.1", "10.9.9.9", 17,
                                                               rng.randrange(burst) + 1, 53)))
    lt = np.array([1])
    outs = []
    sizes = []
    for compiled in (False, True):
        meter = Meter(["eth0"], lambda: np.array([0]), compiled=compiled, lateness=3)
        if compiled:
            meter.agg = JitAggregator(meter.W, meter.L, meter.max_flows, meter.stats, capacity=16)
        recs = []
        for k in range(0, len(frames), 5000):
            b = FrameBatch.from_frames(frames[k:k + 5000])
            for rb in meter.add(b, decode_batch(b, lt, compiled=compiled)):
                recs += [r.values(ALL_FIELDS) for r in rb.records()]
            if compiled:
                sizes.append(len(meter.agg.table))
        for rb in meter.flush():
            recs += [r.values(ALL_FIELDS) for r in rb.records()]
        outs.append(recs)
    assert outs[0] == outs[1]
    assert max(sizes) >= 4096 and min(sizes[sizes.index(max(sizes)):]) < max(sizes), sizes
