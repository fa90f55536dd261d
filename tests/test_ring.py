"""The ``ring:`` source (AF_PACKET TPACKET_V3): the block walk on a synthetic ring, and real
captures on a veth pair whose far end sits in a network namespace the tests create, fed by
tcpreplay at a known rate. The real parts need Linux, root, iproute2 and tcpreplay."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from flowlog.core import synth
from flowlog.core.fast import tpacket

LINUX = sys.platform.startswith("linux")


# --- the block walk, on a ring built by hand ---------------------------------------------------

def _fake_ring(block_size, blocks):
    """A ring whose blocks hold ``blocks[i]`` = (status, [(sec, nsec, frame, wirelen), ...])."""
    ring = np.zeros(block_size * len(blocks), np.uint8)
    expected = []
    for b, (status, pkts) in enumerate(blocks):
        base = b * block_size
        first = 48
        struct.pack_into("=IIIII", ring, base, 3, 0, status, len(pkts), first)
        p = base + first
        for i, (sec, nsec, frame, wire) in enumerate(pkts):
            mac = 82
            size = (mac + len(frame) + 15) // 16 * 16
            nxt = size if i < len(pkts) - 1 else 0
            struct.pack_into("=IIIIIIHH", ring, p, nxt, sec, nsec, len(frame), wire, 1, mac, mac + 14)
            ring[p + mac:p + mac + len(frame)] = np.frombuffer(frame, np.uint8)
            if status & tpacket.TP_STATUS_USER:
                expected.append((p + mac, len(frame), wire, sec, nsec, frame))
            p += size
    return ring, expected


def _walk(fn, ring, block_size, nblocks, first, max_blocks, cap=64):
    cols = [np.zeros(cap, np.int64) for _ in range(5)] + [np.zeros(cap, np.int32)]
    n, taken = fn(ring.view(np.uint16), ring.view(np.uint32), block_size, nblocks, first, max_blocks, 3, *cols)
    off, caplen, wirelen, sec, nsec, links = (c[:int(n)] for c in cols)
    assert (links == 3).all()
    rows = [(int(off[i]), int(caplen[i]), int(wirelen[i]), int(sec[i]), int(nsec[i]),
             ring[off[i]:off[i] + caplen[i]].tobytes()) for i in range(int(n))]
    return rows, int(taken)


@pytest.mark.parametrize("compiled", [False, True])
def test_walk_reads_user_blocks_in_ring_order(compiled):
    if compiled:
        pytest.importorskip("numba")
    fn = tpacket.compiled_walk() if compiled else tpacket.walk_blocks
    f1, f2, f3 = (synth.packet("10.0.0.1", "10.0.0.2", 17, 1, n, size=10 * n) for n in (1, 2, 3))
    blocks = [(1, [(5, 999_999_999, f1, 1500), (6, 0, f2, len(f2))]),
              (1 | 32, [(7, 123, f3, len(f3))]),       # retired by the timer: still the user's
              (0, [(8, 0, f1, len(f1))]),               # the kernel's: the walk stops here
              (1, [(9, 0, f2, len(f2))])]
    ring, expected = _fake_ring(4096, blocks)
    rows, taken = _walk(fn, ring, 4096, 4, 0, 4)
    assert taken == 2
    assert rows == expected[:3]
    # from block 3 on, the walk wraps around to block 0
    rows, taken = _walk(fn, ring, 4096, 4, 3, 4)
    assert taken == 3 and [r[3] for r in rows] == [9, 5, 6, 7]
    # at most max_blocks blocks, and only blocks whose packets all fit in the columns
    assert _walk(fn, ring, 4096, 4, 0, 1)[1] == 1
    assert _walk(fn, ring, 4096, 4, 0, 4, cap=2)[1] == 1
    assert _walk(fn, ring, 4096, 4, 0, 4, cap=1)[1] == 0
    tpacket.release_blocks(ring.view(np.uint32), 4096, 4, 3, 2)
    assert _walk(fn, ring, 4096, 4, 0, 4)[1] == 0 and _walk(fn, ring, 4096, 4, 1, 4)[1] == 1


# --- the command line, without capturing ---------------------------------------------------------

def flowlog(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not LINUX, reason="the ring source is Linux only")
def test_missing_interface_is_one_clear_line():
    r = flowlog("capture", "--from", "ring:nosuchif")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["flowlog: error: ring:nosuchif: no such network interface"]


@pytest.mark.parametrize("args, says", [
    (("-r", "FILE"), "--workers applies to sources that can share an interface"),
    (("--from", "ring:lo", "-c", "10"), "-c/--count counts frames in one process"),
    (("--from", "ring:lo", "--from", "ring:lo"), "--workers needs a single source"),
])
def test_workers_need_one_ring_source_and_no_count(args, says, data):
    args = tuple(str(data / "captures" / "6in4tunnel.pcap") if a == "FILE" else a for a in args)
    r = flowlog("capture", *args, "--workers", "2")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr


def test_block_size_must_be_whole_pages():
    r = flowlog("capture", "--from", "ring:lo", "--block-size", "5000")
    assert r.returncode == 2
    assert "multiple of the page size" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- real captures on a veth pair --------------------------------------------------------------

def _sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture(scope="module")
def veth():
    """(interface flowlog captures on, namespace, interface in the namespace that tcpreplay sends from)."""
    if not LINUX:
        pytest.skip("the ring source is Linux only")
    if os.geteuid() != 0:
        pytest.skip("capturing on a veth pair needs root (network namespaces, AF_PACKET)")
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    tag = f"{os.getpid() % 100000}"
    ns, host, far = f"flowlog-ring-{tag}", f"flr{tag}a", f"flr{tag}b"
    made = []
    try:
        _sh("ip", "netns", "add", ns)
        made.append(("ip", "netns", "del", ns))
        _sh("ip", "link", "add", host, "type", "veth", "peer", "name", far)
        made.append(("ip", "link", "del", host))
        # no IPv6 on either end: no router solicitations or MLD reports among the test's frames
        _sh("sysctl", "-qw", f"net.ipv6.conf.{host}.disable_ipv6=1", check=False)
        _sh("ip", "link", "set", far, "netns", ns)
        _sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{far}.disable_ipv6=1", check=False)
        _sh("ip", "link", "set", host, "up")
        _sh("ip", "-n", ns, "link", "set", far, "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        for cmd in reversed(made):
            _sh(*cmd, check=False)
        detail = getattr(e, "stderr", "") or str(e)
        pytest.skip(f"cannot create a network namespace with a veth pair: {detail.strip()}")
    try:
        yield host, ns, far
    finally:
        for cmd in reversed(made):
            _sh(*cmd, check=False)


def _flows(n_frames: int, size_of=lambda i: 40 + i % 200):
    """A few thousand frames of known flows: TCP, UDP and ICMP over IPv4, UDP over IPv6."""
    frames = []
    t = 1_700_000_000.0
    for i in range(n_frames):
        k = i % 11
        if k < 4:
            f = synth.packet(f"10.9.0.{k + 1}", "10.9.1.1", 6, 40000 + k, 443, size=size_of(i))
        elif k < 8:
            f = synth.packet("10.9.1.1", f"10.9.0.{k - 3}", 17, 53, 30000 + k, size=size_of(i))
        elif k < 10:
            f = synth.packet("10.9.0.7", "10.9.1.1", 1, ident=7, size=size_of(i))
        else:
            f = synth.packet("2001:db8::1", "2001:db8::2", 17, 5000, 6000, size=size_of(i))
        frames.append((t + i * 1e-4, f))
    return frames


def _totals(text: str, status="OK"):
    """Per 5-tuple: [packets, bytes] over the records of that log-status."""
    out = collections.defaultdict(lambda: [0, 0])
    for line in text.splitlines():
        f = line.split()
        if len(f) == 14 and f[13] == status:
            key = tuple(f[3:8])
            out[key][0] += int(f[8])
            out[key][1] += int(f[9])
    return dict(out)


def _bound(ifname: str, timeout: float = 15, sockets: int = 1) -> None:
    """Wait until ``sockets`` packet sockets are bound to ``ifname`` (flowlog's rings are in place)."""
    with open(f"/sys/class/net/{ifname}/ifindex") as f:
        index = int(f.read())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/packet") as f:
            bound = sum(1 for parts in (line.split() for line in f.readlines()[1:])
                        if len(parts) >= 5 and int(parts[4]) == index and parts[3] == "0003")
        if bound >= sockets:
            return
        time.sleep(0.05)
    raise AssertionError(f"flowlog did not bind a packet socket to {ifname} within {timeout} s")


def _capture(veth, pcap, *flowlog_args, replay=("--pps", "20000"), settle=2.5):
    """Run flowlog on the veth, replay ``pcap`` into it, stop it with SIGINT; (stdout, stderr, sent)."""
    host, ns, far = veth
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "--from", f"ring:{host}",
                             "--window", "3600", "--stats", *flowlog_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = int(flowlog_args[flowlog_args.index("--workers") + 1]) if "--workers" in flowlog_args else 1
        _bound(host, sockets=workers, timeout=30)
        rep = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", far, *replay, str(pcap)],
                             capture_output=True, text=True, timeout=30)
        assert rep.returncode == 0, rep.stderr
        sent = int(re.search(r"Actual: (\d+) packets", rep.stdout + rep.stderr).group(1))
        time.sleep(settle)          # the last block is handed over within 50 ms; let flowlog read it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out, err, sent


def _stat(err: str, name: str) -> int:
    return int(re.search(rf"^{name}\s+(\d+)$", err, re.M).group(1))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    path = tmp_path_factory.mktemp("ring") / "flows.pcap"
    synth.write_pcap(path, _flows(3000))
    truth = flowlog("capture", "-r", str(path))
    assert truth.returncode == 0
    return path, _totals(truth.stdout)


def test_ring_capture_matches_the_file(veth, replayed):
    pcap, truth = replayed
    out, err, sent = _capture(veth, pcap)
    assert sent == 3000
    assert _totals(out) == truth
    assert _stat(err, "received") == 3000 and _stat(err, "dropped by the kernel") == 0
    lines = out.splitlines()
    assert lines and all(line.split()[2] == veth[0] for line in lines)     # the NIC name is the interface-id
    assert "not in the records" not in err


def test_ring_filter_runs_in_the_kernel(veth, replayed):
    pcap, truth = replayed
    out, err, _ = _capture(veth, pcap, "udp", "and", "port", "53")
    want = {k: v for k, v in truth.items() if k[4] == "17" and "53" in (k[2], k[3])}
    assert want and _totals(out) == want
    assert _stat(err, "received") == sum(v[0] for v in want.values())   # the kernel let only these through
    assert _stat(err, "filtered out") == 0


def test_ring_kernel_drops_are_skipdata(veth, tmp_path):
    pcap = tmp_path / "fast.pcap"
    n = synth.write_pcap(pcap, _flows(20000, size_of=lambda i: 1200))
    out, err, sent = _capture(veth, pcap, "--ring-blocks", "2", "--block-size", "4096",
                              replay=("--topspeed",), settle=2.0)
    assert sent == n
    ok = sum(v[0] for v in _totals(out).values())
    skip_lines = [line.split() for line in out.splitlines() if line.endswith(" SKIPDATA")]
    assert skip_lines and all(f[3:8] == ["-"] * 5 and f[9] == "-" for f in skip_lines)
    skipped = sum(int(f[8]) for f in skip_lines)
    assert skipped == _stat(err, "dropped by the kernel") > 0
    assert ok + skipped == sent


# --- several workers sharing the interface (PACKET_FANOUT) --------------------------------------

def _many_flows(n_frames: int, size_of=lambda i: 60 + i % 300):
    """Frames of 64 UDP flows and 16 TCP flows: enough keys that the kernel's flow hash uses every worker."""
    frames = []
    t = 1_700_000_000.0
    for i in range(n_frames):
        k = i % 80
        if k < 64:
            f = synth.packet(f"10.8.{k // 16}.{k % 16 + 1}", "10.8.9.9", 17, 20000 + k, 53, size=size_of(i))
        else:
            f = synth.packet("10.8.9.9", f"10.8.5.{k - 63}", 6, 443, 41000 + k, size=size_of(i))
        frames.append((t + i * 1e-4, f))
    return frames


def test_workers_share_the_interface_and_merge_exactly(veth, tmp_path):
    pcap = tmp_path / "many.pcap"
    synth.write_pcap(pcap, _many_flows(4000))
    truth = flowlog("capture", "-r", str(pcap))
    assert truth.returncode == 0
    out, err, sent = _capture(veth, pcap, "--workers", "2", settle=3.0)
    assert sent == 4000
    assert _totals(out) == _totals(truth.stdout)
    # one record per flow and window: the workers' shares were merged, never written twice
    keys = [tuple(line.split()[3:8]) for line in out.splitlines() if line.endswith(" OK")]
    assert len(keys) == len(set(keys)) == 80
    assert _stat(err, "received") == 4000
    shares = [_stat(err, f"received by worker {i}") for i in (1, 2)]
    assert sum(shares) == 4000 and min(shares) > 0, shares


def test_workers_kernel_drops_are_skipdata(veth, tmp_path):
    pcap = tmp_path / "fast.pcap"
    n = synth.write_pcap(pcap, _many_flows(30000, size_of=lambda i: 1200))
    out, err, sent = _capture(veth, pcap, "--workers", "2", "--ring-blocks", "2", "--block-size", "4096",
                              replay=("--topspeed",), settle=3.0)
    assert sent == n
    ok = sum(v[0] for v in _totals(out).values())
    skip_lines = [line.split() for line in out.splitlines() if line.endswith(" SKIPDATA")]
    skipped = sum(int(f[8]) for f in skip_lines)
    # one SKIPDATA record per window and interface, whatever the number of workers
    assert len(skip_lines) == len({tuple(f[10:12]) for f in skip_lines})
    assert skipped == _stat(err, "dropped by the kernel") > 0
    assert ok + skipped == sent
