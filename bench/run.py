#!/usr/bin/env python3
"""flowlog against its peers on generated captures: packets/s, wall, CPU, peak memory, totals.

    python bench/run.py                                   # medium (1M packets), 3 runs, every installed tool
    python bench/run.py --sizes medium,large --runs 3 --json results.json
    python bench/run.py --sizes small --tools flowlog,tcpdump --runs 5

Inputs are made by bench/gen.py (deterministic, from a seed) under --dir and reused when
already there. For each input: the page cache is warmed (the capture read once to
/dev/null), every tool runs once untimed on a small warm-up capture (numba's on-disk cache,
shared libraries), then the tools run interleaved, round after round, the order rotating
each round. Every process is timed alone: wall = time.perf_counter() around fork..wait4, CPU
= user + system time and peak memory = ru_maxrss from os.wait4 (children the tool waited for
included). Medians over the runs. The totals (packets, bytes, flows) each tool reports are
compared with the generator's truth. See bench/README.md.

This is not a test: nothing under tests/ runs it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen  # noqa: E402  (bench/gen.py, beside this file)

SIZES = {  # name: (packets, flows, seed)
    "small": (100_000, 2_000, 1),
    "medium": (1_000_000, 10_000, 2),
    "large": (10_000_000, 200_000, 3),
}
WARMUP = (20_000, 200, 1)  # > flowlog's 8 MiB threshold for its compiled path
ALL_TOOLS = ["flowlog", "softflowd", "nfpcapd", "argus", "nfstream", "tcpdump", "cat"]

# ----------------------------------------------------------------------------------------------
# The launcher: a minimal Python process (no site, no imports beyond os/time/signal) that forks
# and execs each timed command and reports os.wait4's rusage. A child's ru_maxrss can never be
# below the RSS of the process it was forked from, so that process is kept as small as possible
# (about 9 MiB); the floor is measured (`true`) and reported with the machine.
# ----------------------------------------------------------------------------------------------

LAUNCHER = r"""
import os, sys, time, signal
pid = 0
def alarm(sig, frm):
    if pid:
        os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, alarm)
inp = sys.stdin
while True:
    line = inp.readline()
    if not line:
        break
    argv, cwd, out, err, env, timeout = eval(line)
    ofd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    efd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    ifd = os.open("/dev/null", os.O_RDONLY)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            os.dup2(ifd, 0); os.dup2(ofd, 1); os.dup2(efd, 2)
            os.execve(argv[0], argv, env)
        except BaseException as e:
            os.write(2, ("launcher: cannot run %r: %s\n" % (argv, e)).encode())
        os._exit(127)
    signal.alarm(timeout)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    signal.alarm(0)
    pid = 0
    os.close(ofd); os.close(efd); os.close(ifd)
    rc = os.waitstatus_to_exitcode(status)
    sys.stdout.write("%d %.6f %.6f %.6f %d\n" % (rc, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss))
    sys.stdout.flush()
"""


class Launcher:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, argv, cwd, out, err, env=None, timeout=3600):
        env = dict(os.environ if env is None else env)
        exe = shutil.which(argv[0])  # resolved here: a PATH search in the child would grow it
        if exe is None:
            raise FileNotFoundError(argv[0])
        argv = [os.path.abspath(exe)] + list(argv[1:])
        self.p.stdin.write(repr((list(argv), cwd, out, err, env, int(timeout))) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("the launcher died")
        rc, wall, ut, st, maxrss = line.split()
        return {"rc": int(rc), "wall": float(wall), "cpu": float(ut) + float(st),
                "user": float(ut), "sys": float(st), "maxrss_kib": int(maxrss)}

    def close(self):
        self.p.stdin.close()
        self.p.wait()


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def _out(argv, **kw) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return (r.stdout + r.stderr).strip()


def _first_line_with(text: str, word: str) -> str:
    for line in text.splitlines():
        if word.lower() in line.lower():
            return line.strip()
    return text.splitlines()[0].strip() if text else "?"


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def _rmtree_contents(d: str) -> None:
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


# ----------------------------------------------------------------------------------------------
# NetFlow v9 collector for softflowd
# ----------------------------------------------------------------------------------------------

class V9Collector:
    """Receives datagrams on 127.0.0.1 (a free port) while the exporter runs; decodes afterwards."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._t = None

    def start(self):
        self.datagrams = []
        self._stop.clear()
        self._t = threading.Thread(target=self._recv, daemon=True)
        self._t.start()

    def _recv(self):
        while True:
            try:
                self.datagrams.append(self.sock.recv(65535))
            except socket.timeout:
                if self._stop.is_set():
                    return

    def stop(self):
        """Call after the exporter exited: drains what is queued, then stops."""
        self._stop.set()
        self._t.join()

    def close(self):
        self.sock.close()

    def decode(self) -> dict:
        templates = {}
        options = set()
        seqs = []
        for d in self.datagrams:  # templates first: a data set may precede its template
            if len(d) < 20 or struct.unpack_from(">H", d)[0] != 9:
                continue
            seqs.append(struct.unpack_from(">I", d, 12)[0])
            p = 20
            while p + 4 <= len(d):
                sid, ln = struct.unpack_from(">HH", d, p)
                if ln < 4:
                    break
                if sid == 0:
                    q, end = p + 4, p + ln
                    while q + 4 <= end:
                        tid, fc = struct.unpack_from(">HH", d, q)
                        q += 4
                        fields = [struct.unpack_from(">HH", d, q + 4 * i) for i in range(fc)]
                        q += 4 * fc
                        templates[tid] = fields
                elif sid == 1:  # options templates: their data (exporter statistics) is skipped
                    q, end = p + 4, p + ln
                    while q + 6 <= end:
                        tid, slen, olen = struct.unpack_from(">HHH", d, q)
                        if not slen + olen:
                            break
                        q += 6
                        options.add(tid)
                        q += slen + olen
                p += ln
        packets = bytes_ = records = undecoded = 0
        keys = set()
        for d in self.datagrams:
            if len(d) < 20 or struct.unpack_from(">H", d)[0] != 9:
                continue
            p = 20
            while p + 4 <= len(d):
                sid, ln = struct.unpack_from(">HH", d, p)
                if ln < 4:
                    break
                if sid >= 256:
                    fields = templates.get(sid)
                    if sid in options:
                        pass
                    elif fields is None:
                        undecoded += 1
                    else:
                        rl = sum(f[1] for f in fields)
                        q, end = p + 4, p + ln
                        while rl and q + rl <= end:
                            rec = {}
                            for t, l in fields:
                                rec[t] = d[q:q + l]
                                q += l
                            i = lambda t: int.from_bytes(rec.get(t, b""), "big")  # noqa: E731
                            packets += i(2)
                            bytes_ += i(1)
                            records += 1
                            proto = i(4)
                            if proto in (1, 58):  # ICMP: type/code in ICMP_TYPE (32) or 139
                                sp, dp = 0, i(32) if 32 in rec else i(139)
                            else:
                                sp, dp = i(7), i(11)
                            src = rec.get(8) or rec.get(27)
                            dst = rec.get(12) or rec.get(28)
                            keys.add((src, dst, sp, dp, proto))
                p += ln
        lost = 0
        if seqs:
            s = sorted(seqs)
            lost = (s[-1] - s[0] + 1) - len(set(s))
        return {"packets": packets, "bytes": bytes_, "flows": len(keys), "records": records,
                "datagrams": len(self.datagrams), "datagrams_lost": lost,
                "undecoded_sets": undecoded}


# ----------------------------------------------------------------------------------------------
# Tools
# ----------------------------------------------------------------------------------------------

class Tool:
    name = "?"
    #: What its flow count is compared with: "flows" (SPEC keys), "flows_icmp_without_identifier", or None.
    flows_truth: str | None = None
    #: What its byte count is compared with: "ip_bytes", "frame_bytes", or None.
    bytes_truth: str | None = "ip_bytes"
    note = ""

    def __init__(self, args):
        self.args = args

    def available(self) -> tuple[bool, str]:
        return True, ""

    def version(self) -> str:
        return "?"

    def setup(self, work: str, pcap: str, truth: dict) -> None:
        """Before each timed run (untimed)."""

    def command(self, work: str, pcap: str, truth: dict) -> tuple[list[str], str]:
        """(argv, stdout path) of a timed run."""
        raise NotImplementedError

    def after(self, work: str) -> None:
        """After each timed run (untimed)."""

    def totals(self, work: str, pcap: str, truth: dict) -> dict | None:
        """Totals of the last run: packets, bytes, flows, records (any may be missing)."""
        return None

    def close(self) -> None:
        pass


def _which(name):
    return shutil.which(name) or (os.path.exists(f"/usr/sbin/{name}") and f"/usr/sbin/{name}") or None


class Flowlog(Tool):
    name = "flowlog"
    flows_truth = "flows"
    note = "one record per 5-tuple per 60 s window, stdout to a file; totals from the records"

    def exe(self) -> list[str]:
        if self.args.flowlog:
            return self.args.flowlog.split()
        # The console script beside this interpreter (not a pyenv/asdf shim: a shell script
        # in front of it would be timed too), else whatever is on PATH.
        beside = os.path.join(os.path.dirname(sys.executable), "flowlog")
        if os.path.exists(beside):
            return [beside]
        w = shutil.which("flowlog")
        return [w] if w else []

    def available(self):
        return (True, "") if self.exe() else (False, "flowlog not found (pip install .)")

    def version(self):
        v = _out(self.exe() + ["--version"])
        jit = "pure Python (FLOWLOG_NO_JIT)" if os.environ.get("FLOWLOG_NO_JIT") else \
            "numba " + _out([sys.executable, "-c", "import numba; print(numba.__version__)"])
        repo = os.path.dirname(HERE)
        head = _out(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
        if self.args.flowlog:
            v += f" ({self.args.flowlog})"
        elif head and " " not in head:
            dirty = _out(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
            v += f" (git {head}{', working tree modified' if dirty else ''})"
        return f"{v}; {jit}"

    def command(self, work, pcap, truth):
        return self.exe() + ["capture", "-r", pcap], os.path.join(work, "records.txt")

    def totals(self, work, pcap, truth):
        packets = bytes_ = records = 0
        other = {}
        keys = set()
        per_window = {}
        with open(os.path.join(work, "records.txt")) as fh:
            for line in fh:
                f = line.split()
                if len(f) != 14:
                    other["malformed"] = other.get("malformed", 0) + 1
                    continue
                if f[13] != "OK":
                    other[f[13]] = other.get(f[13], 0) + 1
                    continue
                packets += int(f[8])
                bytes_ += int(f[9])
                records += 1
                k = (f[3], f[4], f[5], f[6], f[7])
                keys.add(k)
                per_window.setdefault(int(f[10]), set()).add(k)
        t = {"packets": packets, "bytes": bytes_, "flows": len(keys), "records": records}
        want = {w["start"]: w["flows"] for w in truth["windows"]}
        got = {w: len(s) for w, s in per_window.items()}
        t["windows_agree"] = got == want
        if other:
            t["other_records"] = other
        return t


class Softflowd(Tool):
    name = "softflowd"
    flows_truth = "flows_icmp_without_identifier"
    note = "NetFlow v9 to a collector in run.py; ICMP keyed on type/code only"

    def available(self):
        return (True, "") if _which("softflowd") else (False, "not installed (apt-get install softflowd)")

    def version(self):
        line = _first_line_with(_out([_which("softflowd"), "-h"]), "version")
        return "softflowd " + line.split("version", 1)[1].split()[0].rstrip(".") if "version" in line else line

    def setup(self, work, pcap, truth):
        for f in ("sf.pid", "sf.ctl"):
            if os.path.exists(os.path.join(work, f)):
                os.unlink(os.path.join(work, f))
        if not hasattr(self, "col"):
            self.col = V9Collector()
        self.col.start()

    def command(self, work, pcap, truth):
        # Relative -p/-c paths (absolute ones make it hang), -m above the flow count.
        m = max(1_000_000, 2 * truth["flows"])
        return ([_which("softflowd"), "-r", pcap, "-n", f"127.0.0.1:{self.col.port}", "-v", "9", "-6",
                 "-m", str(m), "-d", "-p", "sf.pid", "-c", "sf.ctl", "-t", "maxlife=60"],
                "/dev/null")

    def after(self, work):
        self.col.stop()

    def totals(self, work, pcap, truth):
        return self.col.decode()

    def close(self):
        if hasattr(self, "col"):
            self.col.close()


class Nfpcapd(Tool):
    name = "nfpcapd"
    flows_truth = "flows_icmp_without_identifier"
    note = "nfdump files, 60 s active/idle timeouts; totals by nfdump -o csv"

    def available(self):
        if not _which("nfpcapd"):
            return False, "not installed (apt-get install nfdump)"
        if not _which("nfdump"):
            return False, "nfdump missing"
        return True, ""

    def version(self):
        v = _out([_which("nfpcapd"), "-V"]).splitlines()[0]
        return "nfpcapd (nfdump) " + v.split("Version:", 1)[1].strip() if "Version:" in v else v

    def setup(self, work, pcap, truth):
        _rmtree_contents(os.path.join(work, "nf"))

    def command(self, work, pcap, truth):
        return [_which("nfpcapd"), "-r", pcap, "-w", os.path.join(work, "nf"), "-e", "60,60"], "/dev/null"

    def totals(self, work, pcap, truth):
        r = subprocess.run([_which("nfdump"), "-R", os.path.join(work, "nf"), "-q", "-o", "csv"],
                           capture_output=True, text=True, check=True)
        packets = bytes_ = records = 0
        keys = set()
        for row in csv.reader(io.StringIO(r.stdout)):
            if len(row) < 13 or row[0] == "ts":
                continue
            packets += int(row[11])
            bytes_ += int(row[12])
            records += 1
            keys.add((row[3], row[4], row[5], row[6], row[7]))
        return {"packets": packets, "bytes": bytes_, "flows": len(keys), "records": records}


class Argus(Tool):
    name = "argus"
    bytes_truth = "frame_bytes"
    note = "bidirectional flows, link-layer bytes; totals by ra"

    def available(self):
        if not _which("argus"):
            return False, "not installed (apt-get install argus-server)"
        if not _which("ra"):
            return False, "ra missing (apt-get install argus-client)"
        return True, ""

    def version(self):
        return _first_line_with(_out([_which("argus"), "-h"]), "version")

    def setup(self, work, pcap, truth):
        out = os.path.join(work, "out.argus")
        if os.path.exists(out):
            os.unlink(out)

    def command(self, work, pcap, truth):
        return ([_which("argus"), "-F", os.path.join(HERE, "argus.conf"), "-r", pcap, "-w",
                 os.path.join(work, "out.argus")], "/dev/null")

    def totals(self, work, pcap, truth):
        r = subprocess.run([_which("ra"), "-r", os.path.join(work, "out.argus"), "-n", "-c", ",", "-s",
                            "proto", "saddr", "sport", "daddr", "dport", "pkts", "bytes"],
                           capture_output=True, text=True, check=True)
        packets = bytes_ = records = 0
        keys = set()
        for row in csv.reader(io.StringIO(r.stdout)):
            if len(row) < 7 or row[0] in ("Proto", "man"):
                continue  # header, management (MAR) records
            packets += int(row[5])
            bytes_ += int(row[6])
            records += 1
            keys.add(tuple(row[:5]))
        return {"packets": packets, "bytes": bytes_, "flows": len(keys), "records": records}


NFSTREAM_SCRIPT = r"""
import json, sys
from nfstream import NFStreamer
s = NFStreamer(source=sys.argv[1], n_dissections=0, statistical_analysis=False,
               idle_timeout=60, active_timeout=60, accounting_mode=1)
p = b = n = 0
keys = set()
for f in s:
    p += f.bidirectional_packets
    b += f.bidirectional_bytes
    n += 1
    keys.add((f.src_ip, f.dst_ip, f.src_port, f.dst_port, f.protocol))
print(json.dumps({"packets": p, "bytes": b, "records": n, "flows": len(keys)}))
"""


class Nfstream(Tool):
    name = "nfstream"
    note = "bidirectional flows; accounting_mode=1 (IP bytes)"

    def available(self):
        r = subprocess.run([sys.executable, "-c", "import nfstream"], capture_output=True, text=True)
        if r.returncode:
            return False, "not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
        return True, ""

    def version(self):
        return "nfstream " + _out([sys.executable, "-c", "import nfstream; print(nfstream.__version__)"])

    def command(self, work, pcap, truth):
        return [sys.executable, "-c", NFSTREAM_SCRIPT, pcap], os.path.join(work, "totals.json")

    def totals(self, work, pcap, truth):
        with open(os.path.join(work, "totals.json")) as fh:
            return json.load(fh)


class Tcpdump(Tool):
    name = "tcpdump"
    bytes_truth = None
    note = "tcpdump -r FILE -w /dev/null: libpcap's read, the floor; packets by --count"

    def available(self):
        return (True, "") if _which("tcpdump") else (False, "not installed (apt-get install tcpdump)")

    def version(self):
        return "; ".join(_out([_which("tcpdump"), "--version"]).splitlines()[:2])

    def command(self, work, pcap, truth):
        return [_which("tcpdump"), "-r", pcap, "-w", "/dev/null"], "/dev/null"

    def totals(self, work, pcap, truth):
        out = _out([_which("tcpdump"), "-r", pcap, "--count"])
        for line in out.splitlines():
            if line.endswith(" packets"):
                return {"packets": int(line.split()[0])}
        return None


class Cat(Tool):
    name = "cat"
    bytes_truth = None
    note = "cat FILE > /dev/null: reading the file, nothing else"

    def version(self):
        return _out(["cat", "--version"]).splitlines()[0]

    def command(self, work, pcap, truth):
        return ["cat", pcap], "/dev/null"


TOOL_CLASSES = {c.name: c for c in (Flowlog, Softflowd, Nfpcapd, Argus, Nfstream, Tcpdump, Cat)}


def verdict(tool: Tool, t: dict | None, truth: dict) -> tuple[str, str]:
    """('ok' | 'differs' | 'not checked', one line of details)"""
    if tool.name == "cat":
        return "not checked", "reads bytes only"
    if t is None:
        return "not checked", "no totals"
    diffs, oks, notes = [], [], []

    def cmp(label, got, want):
        if got == want:
            oks.append(label)
        else:
            diffs.append(f"{label} {_n(got)}, truth {_n(want)}")

    cmp("packets", t.get("packets"), truth["packets"])
    if tool.bytes_truth == "ip_bytes":
        cmp("IP bytes", t.get("bytes"), truth["ip_bytes"])
    elif tool.bytes_truth == "frame_bytes":
        cmp("link-layer bytes", t.get("bytes"), truth["frame_bytes"])
        notes.append("no IP bytes")
    else:
        notes.append("no bytes")
    if tool.flows_truth == "flows":
        cmp("flows", t.get("flows"), truth["flows"])
    elif tool.flows_truth:
        if t.get("flows") == truth[tool.flows_truth] != truth["flows"]:
            notes.append(f"flows {_n(t['flows'])}: ICMP keyed on type/code, not identifier "
                         f"(SPEC: {_n(truth['flows'])})")
        else:
            cmp("flows", t.get("flows"), truth[tool.flows_truth])
    elif "flows" in t:
        notes.append("flows bidirectional: not compared")
    if tool.name == "flowlog":
        cmp("records", t.get("records"), truth["records"])
        if t.get("windows_agree"):
            oks.append("per-window flows")
        else:
            diffs.append("per-window flows")
        if t.get("other_records"):
            diffs.append(f"other records {t['other_records']}")
    if t.get("datagrams_lost"):
        diffs.append(f"{t['datagrams_lost']} NetFlow datagrams lost")
    if t.get("undecoded_sets"):
        diffs.append(f"{t['undecoded_sets']} data sets without template")
    if diffs:
        return "differs", "; ".join(diffs + notes)
    return "ok", "; ".join([", ".join(oks)] + notes)


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------

def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def ensure_input(directory: str, packets: int, flows: int, seed: int) -> tuple[str, dict]:
    path = gen.default_path(packets, flows, seed, directory)
    tp = gen.truth_path(path)
    if os.path.exists(path) and os.path.exists(tp):
        with open(tp) as fh:
            truth = json.load(fh)
        if (truth.get("args") == {"packets": packets, "flows": flows, "seed": seed}
                and truth.get("generator_version") == gen.GENERATOR_VERSION
                and os.path.getsize(path) == truth.get("pcap_bytes")):
            return path, truth
    print(f"generating {path} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), "--packets", str(packets),
                    "--flows", str(flows), "--seed", str(seed), "-o", path, "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    with open(tp) as fh:
        return path, json.load(fh)


def warm_cache(path: str) -> None:
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(1 << 20)
        while fh.readinto(buf):
            pass


def bench_input(size: str, pcap: str, truth: dict, tools: list[Tool], launcher: Launcher,
                args, work_root: str) -> dict:
    runs = {t.name: [] for t in tools}
    works = {t.name: os.path.join(work_root, size, t.name) for t in tools}
    for w in works.values():
        os.makedirs(w, exist_ok=True)
    warm_cache(pcap)
    totals = {}
    order = list(tools)
    for r in range(args.runs):
        k = r % len(order)
        for tool in order[k:] + order[:k]:
            w = works[tool.name]
            tool.setup(w, pcap, truth)
            argv, out = tool.command(w, pcap, truth)
            res = launcher.run(argv, w, out, os.path.join(w, "stderr.txt"), timeout=args.timeout)
            tool.after(w)
            runs[tool.name].append(res)
            print(f"  {size} run {r + 1}/{args.runs} {tool.name:<10} {res['wall']:8.2f} s wall "
                  f"{res['cpu']:8.2f} s cpu {res['maxrss_kib'] / 1024:7.0f} MiB"
                  + (f"  exit {res['rc']}" if res["rc"] else ""), file=sys.stderr, flush=True)
            if r == 0:
                if res["rc"]:
                    with open(os.path.join(w, "stderr.txt"), errors="replace") as fh:
                        tail = fh.read().strip().splitlines()[-3:]
                    totals[tool.name] = {"error": f"exit {res['rc']}: " + " | ".join(tail)}
                else:
                    try:
                        totals[tool.name] = tool.totals(w, pcap, truth)
                    except Exception as e:  # a peer's output we could not read is reported, not fatal
                        totals[tool.name] = {"error": f"totals unreadable: {e}"}
    result = {"size": size, "pcap": pcap, "packets": truth["packets"], "flows": truth["flows"],
              "pcap_bytes": truth["pcap_bytes"], "truth": {k: truth[k] for k in (
                  "packets", "ip_bytes", "frame_bytes", "flows", "flows_icmp_without_identifier",
                  "records")}, "runs": args.runs, "tools": {}}
    for tool in tools:
        ok_runs = [x for x in runs[tool.name] if x["rc"] == 0]
        t = totals.get(tool.name)
        if t and "error" in t:
            v, det = "failed", t["error"]
        else:
            v, det = verdict(tool, t, truth)
        entry = {"runs": runs[tool.name], "totals": t, "verdict": v, "details": det, "note": tool.note}
        if ok_runs:
            entry["wall"] = statistics.median(x["wall"] for x in ok_runs)
            entry["cpu"] = statistics.median(x["cpu"] for x in ok_runs)
            entry["peak_mib"] = statistics.median(x["maxrss_kib"] for x in ok_runs) / 1024
            entry["packets_per_s"] = truth["packets"] / entry["wall"]
        result["tools"][tool.name] = entry
    fl = result["tools"].get("flowlog", {}).get("wall")
    for e in result["tools"].values():
        if fl and e.get("wall"):
            e["flowlog_ratio"] = fl / e["wall"]
    return result


def print_result(res: dict) -> None:
    from tabulate import tabulate

    print(f"\n### {res['size']}: {res['packets']:,} packets, {res['flows']:,} flows, "
          f"{res['pcap_bytes'] / 1e6:,.0f} MB capture; median of {res['runs']} run"
          f"{'s' if res['runs'] != 1 else ''}\n")
    rows = []
    for name, e in res["tools"].items():
        if "wall" not in e:
            rows.append([name, "-", "-", "-", "-", "-", f"failed: {e['details']}"])
            continue
        tot = f"{e['verdict']}: {e['details']}"
        floor = res.get("maxrss_floor_mib", 0)
        peak = f"≤{floor:.0f}" if e["peak_mib"] <= floor + 0.5 else f"{e['peak_mib']:.0f}"
        rows.append([name, f"{e['wall']:.2f}", f"{e['cpu']:.2f}", peak,
                     _fmt_rate(e["packets_per_s"]),
                     f"{e['flowlog_ratio']:.2f}" if "flowlog_ratio" in e else "-", tot])
    print(tabulate(rows, headers=["tool", "wall s", "cpu s", "peak MiB", "packets/s",
                                  "flowlog ratio", "totals"], tablefmt="github",
                   disable_numparse=True))
    tr = res["truth"]
    print(f"\ntruth: {tr['packets']:,} packets, {tr['ip_bytes']:,} IP bytes, {tr['frame_bytes']:,} "
          f"link-layer bytes, {tr['flows']:,} flows ({tr['flows_icmp_without_identifier']:,} with ICMP "
          f"keyed on type/code only), {tr['records']:,} flow-window records\n")
    rows = []
    for name, e in res["tools"].items():
        t = e["totals"] or {}
        if "error" in t:
            t = {}
        rows.append([name, _n(t.get("packets", "-")), _n(t.get("bytes", "-")),
                     _n(t.get("flows", "-")), _n(t.get("records", "-")), e["note"]])
    print(tabulate(rows, headers=["tool", "packets", "bytes", "distinct 5-tuples", "records", "counts"],
                   tablefmt="github", disable_numparse=True))


def main(argv=None) -> int:
    if "pytest" in sys.modules:
        raise SystemExit("bench/run.py is a benchmark, not a test")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="medium",
                    help="comma-separated: " + ", ".join(f"{k} ({v[0]:,} packets, {v[1]:,} flows, seed "
                                                         f"{v[2]})" for k, v in SIZES.items())
                    + " (default medium)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool and input (default 3)")
    ap.add_argument("--dir", default=gen.DEFAULT_DIR, help="inputs and scratch (default %(default)s)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS),
                    help="comma-separated subset of " + ",".join(ALL_TOOLS) + " (default: all installed)")
    ap.add_argument("--flowlog", help="the flowlog command (default: the flowlog script beside this "
                                      "Python, else on PATH)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds before a run is killed")
    ap.add_argument("--json", metavar="FILE", help="write all results (every run) as JSON")
    args = ap.parse_args(argv)

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r} (one of {', '.join(SIZES)})")
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    for n in names:
        if n not in TOOL_CLASSES:
            ap.error(f"unknown tool {n!r} (one of {', '.join(ALL_TOOLS)})")

    launcher = Launcher()
    tools, missing = [], {}
    for n in names:
        t = TOOL_CLASSES[n](args)
        ok, why = t.available()
        (tools.append(t) if ok else missing.__setitem__(n, why))
    if not tools:
        print("no tool to run: " + "; ".join(f"{k}: {v}" for k, v in missing.items()), file=sys.stderr)
        return 2
    mach = machine()
    mach["versions"] = {t.name: t.version() for t in tools}
    mach["not_installed"] = missing
    os.makedirs(args.dir, exist_ok=True)
    work_root = tempfile.mkdtemp(prefix="work-", dir=args.dir)
    floor = launcher.run(["true"], work_root, "/dev/null", "/dev/null")  # the smallest process there is
    mach["maxrss_floor_mib"] = round(floor["maxrss_kib"] / 1024, 1)

    print(f"{mach['date']}; machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']}, "
          f"Linux {mach['kernel']}, Python {mach['python']}, load average {mach['loadavg_at_start']}")
    for k, v in mach["versions"].items():
        print(f"  {k}: {v}")
    for k, v in missing.items():
        print(f"  {k}: {v}")
    print(f"  peak memory floor (the launcher's size, `true`): {mach['maxrss_floor_mib']} MiB",
          flush=True)

    results = {"machine": mach, "inputs": []}
    try:
        wp, wt = ensure_input(args.dir, *WARMUP)
        wwork = os.path.join(work_root, "warmup")
        for t in tools:  # untimed: numba's cache, libraries into the page cache; and does it run?
            w = os.path.join(wwork, t.name)
            os.makedirs(w, exist_ok=True)
            t.setup(w, wp, wt)
            argv_, out = t.command(w, wp, wt)
            r = launcher.run(argv_, w, out, os.path.join(w, "stderr.txt"), timeout=args.timeout)
            t.after(w)
            if r["rc"]:
                print(f"  warm-up: {t.name} exited {r['rc']}", file=sys.stderr)
        for s in sizes:
            try:
                pcap, truth = ensure_input(args.dir, *SIZES[s])
            except subprocess.CalledProcessError:
                print(f"{s}: skipped, its capture could not be generated (see above)", file=sys.stderr)
                continue
            res = bench_input(s, pcap, truth, tools, launcher, args, work_root)
            res["maxrss_floor_mib"] = mach["maxrss_floor_mib"]
            results["inputs"].append(res)
            print_result(res)
            sys.stdout.flush()
    finally:
        launcher.close()
        for t in tools:
            t.close()
        shutil.rmtree(work_root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
