#!/usr/bin/env python3
"""Live capture: the highest packet rate each capturer records without loss.

    sudo python bench/live.py                                     # live, ring (if installed), softflowd
    sudo python bench/live.py --tools live --rates 100000,200000,400000 --seconds 5
    sudo python bench/live.py --tools ring,ring-w2                # ring with one and two workers

Creates a network namespace with a veth pair (IPv6 off on both ends, so that the link carries
nothing but the replay), generates a capture with bench/gen.py (200,000 packets, 2,000 flows,
seed 1: IPv4/IPv6 TCP, UDP, ICMP, some 802.1Q, about 650 bytes a frame), and for each tool and
each rate, in increasing order: starts the tool on the host end, replays the capture from inside
the namespace with ``tcpreplay -K --pps=RATE --loop=N`` (about --seconds of traffic), waits a
second, stops the tool and reads its counters. A rate is lossless when the tool saw every packet
tcpreplay sent and nothing was dropped:

- flowlog (``live:`` and ``ring:``): ``--stats`` on SIGINT: ``IP packets`` == sent, ``dropped by
  the kernel`` == 0 (and ``dropped by the interface`` == 0 for live).
- softflowd (``-i VETH -n 127.0.0.1:PORT -v 9 -6 -B BUFFER``): ``softflowctl statistics``:
  ``Packets received by libpcap`` == sent, ``dropped by libpcap`` and ``by interface`` == 0.

A tool's search stops at its first lossy rate. The table gives each tool's highest lossless
--pps, the rate tcpreplay actually achieved there, and that rate's ratio to flowlog live's. What
tcpreplay can send caps everything: where it fell short of --pps the row says sender-limited. The namespace and veth are removed
at the end. Not a test: nothing under tests/ runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NS, HOST, PEER = "flowlog-bench", "flbench0", "flbench1"
DEFAULT_RATES = "100000,150000,200000,300000,400000,500000,600000,800000,1000000"
BUFFER = 64 << 20       # flowlog live's default kernel buffer; softflowd gets the same


def sh(*cmd, check=True, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST, "type", "veth", "peer", "name", PEER)
    sh("ip", "link", "set", PEER, "netns", NS)
    sh("sysctl", "-qw", f"net.ipv6.conf.{HOST}.disable_ipv6=1")
    sh("ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{PEER}.disable_ipv6=1")
    sh("ip", "link", "set", HOST, "up")
    sh("ip", "-n", NS, "link", "set", PEER, "up")


def teardown() -> None:
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST, check=False)


def flowlog_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "flowlog")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "flowlog.cli"]


def has_source(scheme: str) -> bool:
    r = sh(*flowlog_cmd(), "plugins", "--json", check=False)
    return any(json.loads(l).get("scheme") == f"{scheme}:" for l in r.stdout.splitlines() if l.strip())


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def wait_socket(pid: int, timeout: float = 120, sockets: int = 1) -> None:
    """Until the process (or its worker processes) holds ``sockets`` packet sockets, then a moment more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/packet") as f:
            inodes = {line.split()[-1] for line in f.readlines()[1:] if line.strip()}
        if not os.path.exists(f"/proc/{pid}"):
            raise RuntimeError("the capturer ended before capturing")
        held = 0
        for p in [pid, *_children(pid)]:
            try:
                fds = os.listdir(f"/proc/{p}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    t = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("socket:[") and t[8:-1] in inodes:
                    held += 1
        if held >= sockets:
            time.sleep(1.0)
            return
        time.sleep(0.05)
    raise RuntimeError("the capturer did not open a packet socket in time")


def replay(pcap: str, rate: int, loops: int) -> tuple[int, float]:
    r = sh("ip", "netns", "exec", NS, "tcpreplay", "-K", "-i", PEER, f"--pps={rate}", f"--loop={loops}", pcap,
           timeout=600)
    sent = int(re.search(r"Successful packets:\s+(\d+)", r.stdout).group(1))
    m = re.search(r"([\d.]+) pps", r.stdout)
    return sent, float(m.group(1)) if m else float("nan")


def trial_flowlog(tool: str, pcap: str, rate: int, loops: int) -> dict:
    """``tool``: live, ring, or ring-wN (ring with --workers N)."""
    scheme, _, w = tool.partition("-w")
    workers = int(w or 1)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*flowlog_cmd(), "capture", "--from", f"{scheme}:{HOST}", "--stats", "-q",
                                 "--lateness", "0", *(["--workers", str(workers)] if workers > 1 else [])],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            wait_socket(proc.pid, sockets=workers)
            sent, achieved = replay(pcap, rate, loops)
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        text = err.read()
    stats = {}
    for line in text.splitlines():
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].isdigit():
            stats[parts[0].strip()] = int(parts[1])
    got = stats.get("IP packets", -1)
    drops = stats.get("dropped by the kernel", 0) + stats.get("dropped by the interface", 0)
    return {"sent": sent, "achieved": achieved, "got": got, "drops": drops, "ok": got == sent and drops == 0}


def trial_softflowd(pcap: str, rate: int, loops: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="flbench-sf")
    ctl = os.path.join(tmp, "ctl")
    proc = subprocess.Popen(["softflowd", "-d", "-i", HOST, "-n", "127.0.0.1:9995", "-v", "9", "-6",
                             "-c", ctl, "-p", os.path.join(tmp, "pid"), "-B", str(BUFFER)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_socket(proc.pid)
        sent, achieved = replay(pcap, rate, loops)
        time.sleep(1.0)
        out = sh("softflowctl", "-c", ctl, "statistics").stdout
        sh("softflowctl", "-c", ctl, "shutdown", check=False)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def num(label):
        m = re.search(label + r":\s+(\d+)", out)
        return int(m.group(1)) if m else -1

    got = num("Packets received by libpcap")
    drops = num("Packets dropped by libpcap") + num("Packets dropped by interface")
    return {"sent": sent, "achieved": achieved, "got": got, "drops": drops, "processed": num("Packets processed"),
            "ok": got == sent and drops == 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", default="live,ring,softflowd", help="comma-separated (default %(default)s)")
    ap.add_argument("--rates", default=DEFAULT_RATES, help="--pps rates to try, increasing")
    ap.add_argument("--seconds", type=float, default=4.0, help="traffic per trial (default %(default)s)")
    ap.add_argument("--dir", default="/tmp/flowlog-bench", help="where the capture is generated")
    ap.add_argument("--json", help="write every trial here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/live.py needs root (network namespaces, capture)", file=sys.stderr)
        return 2
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    tools = []
    for t in a.tools.split(","):
        t = t.strip()
        if t.partition("-w")[0] in ("live", "ring") and not has_source(t.partition("-w")[0]):
            print(f"skipping {t}: no '{t}:' source plugin installed", file=sys.stderr)
        elif t == "softflowd" and not (shutil.which("softflowd") and shutil.which("softflowctl")):
            print("skipping softflowd: not installed", file=sys.stderr)
        elif t:
            tools.append(t)
    rates = [int(r) for r in a.rates.split(",")]

    os.makedirs(a.dir, exist_ok=True)
    packets = 200_000
    pcap = os.path.join(a.dir, f"live-{packets}p-2000f-s1.pcap")
    if not os.path.exists(pcap):
        subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), "--packets", str(packets), "--flows", "2000",
                        "--seed", "1", "-o", pcap], check=True)

    # warm numba's on-disk cache once, outside the timed trials
    subprocess.run([*flowlog_cmd(), "capture", "-q", "-i", "lo", "--duration", "0.5"], capture_output=True,
                   timeout=600)
    results: dict[str, list] = {t: [] for t in tools}
    setup()
    try:
        for tool in tools:
            for rate in rates:
                loops = max(1, math.ceil(rate * a.seconds / packets))
                if tool == "softflowd":
                    r = trial_softflowd(pcap, rate, loops)
                else:
                    r = trial_flowlog(tool, pcap, rate, loops)
                r["rate"] = rate
                results[tool].append(r)
                print(f"{tool:10} --pps={rate:>8}: sent {r['sent']:>9}, achieved {r['achieved']:>11.0f} pps, "
                      f"recorded {r['got']:>9}, dropped {r['drops']:>7} -> {'lossless' if r['ok'] else 'LOSS'}",
                      flush=True)
                if not r["ok"]:
                    break
    finally:
        teardown()

    best = {}
    for tool, rs in results.items():
        ok = [r for r in rs if r["ok"]]
        best[tool] = max(ok, key=lambda r: r["rate"]) if ok else None
    ref = best.get("live")
    print()
    print(f"{'tool':10} {'highest lossless --pps':>23} {'achieved pps there':>19} {'first lossy --pps':>18} "
          f"{'vs live':>8}")
    for tool, rs in results.items():
        b = best[tool]
        lossy = next((r["rate"] for r in rs if not r["ok"]), None)
        ratio = f"{b['achieved'] / ref['achieved']:.2f}" if b and ref else "-"
        capped = " (sender-limited)" if b and b["achieved"] < 0.95 * b["rate"] else ""
        print(f"{tool:10} {b['rate'] if b else '-':>23} {(round(b['achieved']) if b else '-'):>19} "
              f"{lossy if lossy else 'none tried':>18} {ratio:>8}{capped}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
