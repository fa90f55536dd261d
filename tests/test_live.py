"""The ``live:`` source (``-i IFACE``): real captures through libpcap on ``lo`` and on a veth pair.

These tests capture for real: they need root (or CAP_NET_RAW and CAP_NET_ADMIN) and, for the
veth tests, ``ip netns``/``ip link`` and tcpreplay. Without them they are skipped with the reason.
Each flowlog process runs with a timeout; the whole file takes well under a minute once numba's
on-disk cache is warm (the first live run may fill it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from flowlog.core import synth
from flowlog.core.errors import SourceError
from flowlog.core.uri import URI

FLOWLOG = [sys.executable, "-m", "flowlog.cli"]
KEY = ("srcaddr", "dstaddr", "srcport", "dstport", "protocol")
FIELDS = "srcaddr,dstaddr,srcport,dstport,protocol,packets,bytes,start,end,flow-direction,log-status"

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="live capture needs root (or CAP_NET_RAW and CAP_NET_ADMIN)")


# -- helpers --------------------------------------------------------------------------------------

def start(*args) -> subprocess.Popen:
    return subprocess.Popen([*FLOWLOG, "capture", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"flowlog did not end within {timeout} s; stderr: {err}")
    return proc.returncode, out, err


def wait_capturing(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process holds a packet socket (the capture is open), plus a moment for the filter."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"flowlog ended before capturing (status {proc.returncode}): {err}")
        with open("/proc/net/packet") as f:
            inodes = {line.split()[-1] for line in f.readlines()[1:] if line.strip()}
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except FileNotFoundError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                time.sleep(0.5)
                return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("flowlog did not open its capture in time")


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def totals(recs: list[dict]) -> dict[tuple, list[int]]:
    """Packets and bytes per 5-tuple over every window (OK records)."""
    t: dict[tuple, list[int]] = {}
    for r in recs:
        if r["log-status"] == "OK":
            k = tuple(r[f] for f in KEY)
            p = t.setdefault(k, [0, 0])
            p[0] += r["packets"]
            p[1] += r["bytes"]
    return t


def udp_pair():
    """A bound receiver on 127.0.0.1 (no port unreachables) and a sender with a fixed port."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    return rx, tx


def send(tx, rx, n: int, payload: bytes = b"x" * 20) -> None:
    for _ in range(n):
        tx.sendto(payload, rx.getsockname())


@pytest.fixture(scope="module")
def warm():
    """One short live run first: numba's on-disk cache is filled (may take a while the first time)."""
    if os.geteuid() != 0:
        pytest.skip("live capture needs root (or CAP_NET_RAW and CAP_NET_ADMIN)")
    subprocess.run([*FLOWLOG, "capture", "-q", "-i", "lo", "--duration", "0.5", "udp port 9"],
                   capture_output=True, timeout=300)


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture
def veth(request):
    """A veth pair: (host end, namespace, namespace end); IPv6 off on both so that they stay quiet."""
    if os.geteuid() != 0:
        pytest.skip("live capture needs root (or CAP_NET_RAW and CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = f"{os.getpid() % 100000}{request.node.name[-3:].strip('[]_')}"[-8:]
    ns, host, peer = f"flowlog-t{tag}", f"flt{tag}a", f"flt{tag}b"

    def cleanup():
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", host, check=False)

    cleanup()
    try:
        _ip("netns", "add", ns)
        request.addfinalizer(cleanup)
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        for cmd in (["sysctl", "-qw", f"net.ipv6.conf.{host}.disable_ipv6=1"],
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{peer}.disable_ipv6=1"]):
            subprocess.run(cmd, capture_output=True, timeout=20)
        _ip("link", "set", host, "up")
        _ip("-n", ns, "link", "set", peer, "up")
    except (subprocess.CalledProcessError, OSError) as e:
        cleanup()
        pytest.skip(f"cannot create a network namespace and veth pair: "
                    f"{getattr(e, 'stderr', '') or e}".strip())
    return host, ns, peer


# -- capture on lo --------------------------------------------------------------------------------

@needs_root
def test_lo_udp_counts_with_filter_and_duration(warm):
    rx, tx = udp_pair()
    other_rx, other_tx = udp_pair()
    port = rx.getsockname()[1]
    proc = start("-i", "lo", "--format", "json", "--fields", FIELDS, "--duration", "4", "--window", "60",
                 f"udp port {port}")
    wait_capturing(proc)
    t0 = time.monotonic()
    send(tx, rx, 300)
    send(other_tx, other_rx, 50)          # another port: the kernel's filter keeps it out
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert time.monotonic() - t0 < 30
    recs = records(out)
    t = totals(recs)
    key = ("127.0.0.1", "127.0.0.1", tx.getsockname()[1], port, 17)
    assert t == {key: [300, 300 * 48]}, (t, err)
    # the interface's own addresses are known: flow-direction is filled in
    assert all(r["flow-direction"] in ("ingress", "egress") for r in recs if r["log-status"] == "OK")
    for s in (rx, tx, other_rx, other_tx):
        s.close()


@needs_root
def test_lo_count_stops_the_run(warm):
    rx, tx = udp_pair()
    port = rx.getsockname()[1]
    proc = start("-i", "lo", "--format", "json", "--fields", FIELDS, "-c", "120", "--duration", "30",
                 "--stats", f"udp port {port}")
    wait_capturing(proc)
    t0 = time.monotonic()
    send(tx, rx, 200)
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert time.monotonic() - t0 < 20          # -c ended it, not --duration
    t = totals(records(out))
    assert list(t.values()) == [[120, 120 * 48]], t
    assert "received" in err and "dropped by the kernel" in err and "dropped by the interface" in err


@needs_root
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_flush_and_exit_0(warm, signum):
    rx, tx = udp_pair()
    port = rx.getsockname()[1]
    proc = start("-i", "lo", "--format", "json", "--fields", FIELDS, "--duration", "60", f"udp port {port}")
    wait_capturing(proc)
    send(tx, rx, 40)
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)             # a live capture ignores SIGHUP
    time.sleep(0.5)
    assert proc.poll() is None, "SIGHUP ended the capture"
    t0 = time.monotonic()
    proc.send_signal(signum)
    rc, out, err = finish(proc, timeout=20)
    assert rc == 0, err
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in err
    t = totals(records(out))
    assert list(t.values()) == [[40, 40 * 48]], t


@needs_root
def test_bad_filter_is_one_line():
    r = subprocess.run([*FLOWLOG, "capture", "-i", "lo", "udp and"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad filter expression" in lines[0], r.stderr


def test_no_such_interface_is_one_line():
    r = subprocess.run([*FLOWLOG, "capture", "-i", "nosuchif"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines == ["flowlog: error: live:nosuchif: no such network interface"], r.stderr


def test_no_permission_is_a_clear_error(monkeypatch):
    """pcap_activate's PCAP_ERROR_PERM_DENIED (-8) becomes a SourceError that says what is needed."""
    from flowlog.core.api import SourceContext
    from flowlog.plugins.live import LiveSource

    class Handle:
        def __getattr__(self, name):
            return lambda *a: None

        def activate(self):
            return -8

    fake = types.SimpleNamespace(create=lambda iface: Handle(), PcapError=RuntimeError)
    monkeypatch.setitem(sys.modules, "pcapy", fake)
    src = LiveSource(URI.parse("live:lo"), {})
    with pytest.raises(SourceError, match=r"live:lo: capturing needs root"):
        src.open(SourceContext())


# -- a veth pair ----------------------------------------------------------------------------------

@needs_root
def test_idle_interface_gives_one_nodata_per_window(warm, veth):
    host, _, _ = veth
    proc = start("-i", host, "--window", "1", "--lateness", "0", "--duration", "3.5", "--format", "json",
                 "--fields", FIELDS)
    rc, out, err = finish(proc)
    assert rc == 0, err
    recs = records(out)
    assert recs, err
    assert all(r["log-status"] == "NODATA" for r in recs), recs
    windows = [(r["start"], r["end"]) for r in recs]
    assert all(e - s == 1 for s, e in windows), windows
    assert all(b[0] == a[1] for a, b in zip(windows, windows[1:])), windows   # consecutive, one each
    assert 3 <= len(windows) <= 6, windows


def _capture_file(path) -> int:
    """A few thousand frames of known flows: IPv4 TCP and UDP, ICMP echo, IPv6 UDP."""
    frames = []
    t = 1_700_000_000
    for i in range(3000):
        f = i % 12
        if f < 6:
            pkt = synth.packet(f"10.0.{f}.1", "10.9.0.2", 6, 40000 + f, 443, size=60 + f * 100)
        elif f < 9:
            pkt = synth.packet(f"10.1.{f}.1", "10.9.0.3", 17, 5000 + f, 53, size=90)
        elif f < 11:
            pkt = synth.packet("10.2.0.1", f"10.9.0.{f}", 1, size=64, icmp_type=8, ident=f)
        else:
            pkt = synth.packet("2001:db8::1", "2001:db8::2", 17, 7000, 8000, size=120)
        frames.append(((t + i // 1000, (i % 1000) * 1000), pkt))
    synth.write_pcap(path, frames)
    return len(frames)


@needs_root
def test_veth_tcpreplay_matches_the_file(warm, veth, tmp_path):
    if shutil.which("tcpreplay") is None:
        pytest.skip("tcpreplay is not installed")
    host, ns, peer = veth
    pcap = tmp_path / "flows.pcap"
    n = _capture_file(pcap)
    truth_run = subprocess.run([*FLOWLOG, "capture", "-q", "-r", str(pcap), "--format", "json", "--fields", FIELDS],
                               capture_output=True, text=True, timeout=120)
    assert truth_run.returncode == 0, truth_run.stderr
    truth = totals(records(truth_run.stdout))
    assert sum(p for p, _ in truth.values()) == n

    proc = start("-i", host, "--format", "json", "--fields", FIELDS, "--duration", "60", "--stats")
    wait_capturing(proc)
    replay = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", peer, "--pps=3000", str(pcap)],
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr + replay.stdout
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc)
    assert rc == 0, err
    got = totals(records(out))
    assert got == truth, ({k: (got.get(k), truth.get(k)) for k in set(got) | set(truth)
                           if got.get(k) != truth.get(k)}, err)
    assert "SKIPDATA" not in out
    stats = dict(line.rsplit(None, 1) for line in err.splitlines() if line.strip() and line.split()[-1].isdigit())
    assert stats.get("dropped by the kernel") == "0", err
