"""Following a ring of capture files as it is written; a checkpoint makes a restart exact."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowlog.core import synth

HOSTS = [("10.1.0.%d" % i, "10.2.0.%d" % (i % 5 + 1)) for i in range(1, 9)]


class RingWriter(threading.Thread):
    """Writes packets stamped with the wall clock into rotating files, as tcpdump -C/-W does."""

    def __init__(self, folder: Path, seconds: float, rate: int, per_file: int, max_files: int | None = None):
        super().__init__(daemon=True)
        self.folder, self.seconds, self.rate, self.per_file, self.max_files = folder, seconds, rate, per_file, max_files
        self.sent = collections.Counter()

    def run(self):
        n = 0
        index = 0
        f = None
        end = time.time() + self.seconds
        while time.time() < end:
            if f is None or n % self.per_file == 0:
                if f:
                    f.close()
                name = index if self.max_files is None else index % self.max_files
                f = open(self.folder / f"ring{name:03d}.pcap", "wb")
                f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
                f.flush()
                index += 1
            src, dst = HOSTS[n % len(HOSTS)]
            frame = synth.packet(src, dst, 17, 1000 + n % 3, 53, 40)
            t = time.time()
            sec, usec = int(t), int((t % 1) * 1e6)
            rec = struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
            # write a record in two pieces sometimes: the reader must wait for the rest
            if n % 7 == 0:
                f.write(rec[:10])
                f.flush()
                time.sleep(0.002)
                f.write(rec[10:])
            else:
                f.write(rec)
            f.flush()
            self.sent[(src, dst, str(1000 + n % 3), "53", "17")] += 1
            n += 1
            time.sleep(1 / self.rate)
        f.close()


def start(folder, *extra, checkpoint=None):
    args = [sys.executable, "-m", "flowlog.cli", "capture", "--follow", str(folder), "--window", "1",
            "--lateness", "1", *extra]
    if checkpoint:
        args += ["--checkpoint", str(checkpoint)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def totals(text: str) -> collections.Counter:
    c = collections.Counter()
    for line in text.splitlines():
        f = line.split()
        if f and f[-1] == "OK":
            c[tuple(f[3:8])] += int(f[8])
    return c


def stop(proc) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.decode(), err.decode()


def test_follow_reads_a_growing_ring(tmp_path):
    ring = tmp_path / "ring"
    ring.mkdir()
    writer = RingWriter(ring, seconds=3, rate=150, per_file=120)
    proc = start(ring)
    writer.start()
    writer.join()
    time.sleep(2.5)                      # the last windows close on the wall clock
    out, err = stop(proc)
    assert totals(out) == writer.sent
    assert len(list(ring.iterdir())) >= 3
    assert all(l.split()[2] == "ring" for l in out.splitlines())     # one interface: the ring


def test_kill_9_and_restart_from_checkpoint_is_exact(tmp_path):
    ring = tmp_path / "ring"
    ring.mkdir()
    cp = tmp_path / "flowlog.checkpoint"
    writer = RingWriter(ring, seconds=6, rate=200, per_file=150)
    first = start(ring, checkpoint=cp)
    writer.start()
    time.sleep(3.0)
    first.kill()                          # SIGKILL: no flush, no goodbye
    out1, _ = first.communicate(timeout=30)
    assert cp.exists()
    time.sleep(0.5)
    second = start(ring, checkpoint=cp)
    writer.join()
    time.sleep(2.5)
    out2, err2 = stop(second)
    got = totals(out1.decode()) + totals(out2)
    assert totals(out1.decode()) and totals(out2), "both runs should have written records"
    assert sum(got.values()) == sum(writer.sent.values()), (sum(got.values()), sum(writer.sent.values()))
    assert got == writer.sent
    # and a third start resumes at the end: nothing is counted again
    third = start(ring, checkpoint=cp)
    time.sleep(1.5)
    out3, _ = stop(third)
    assert totals(out3) == collections.Counter()


def test_rotation_overwriting_files_is_followed(tmp_path):
    ring = tmp_path / "ring"
    ring.mkdir()
    writer = RingWriter(ring, seconds=4, rate=150, per_file=100, max_files=3)
    proc = start(ring)
    writer.start()
    writer.join()
    time.sleep(2.5)
    out, err = stop(proc)
    assert len(list(ring.iterdir())) == 3           # the files were reused
    assert totals(out) == writer.sent, err


def test_checkpoint_needs_the_same_window(tmp_path):
    ring = tmp_path / "ring"
    ring.mkdir()
    cp = tmp_path / "cp"
    cp.write_text('{"version": 1, "window": 60, "horizon": null, "resume": null, "delivered": null}')
    proc = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "--follow", str(ring), "--window", "1",
                           "--checkpoint", str(cp), "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--window 60" in proc.stderr


def test_checkpoint_without_follow_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", "x.pcap", "--checkpoint",
                           str(tmp_path / "cp")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tcpdump"), reason="needs root and tcpdump")
def test_real_tcpdump_ring_killed_and_resumed(tmp_path):
    """tcpdump -C/-W writes the ring from loopback traffic; flowlog follows it, is killed, resumes."""
    import socket

    ring = tmp_path / "ring"
    ring.mkdir()
    os.chmod(ring, 0o777)
    cp = tmp_path / "cp"
    port = 40000 + os.getpid() % 20000
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-U", "-w", str(ring / "cap"), "-C", "1", "-W", "50",
                             "-Z", "root", f"udp and port {port}"], stderr=subprocess.PIPE)
    time.sleep(1.0)
    first = start(ring, checkpoint=cp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    t_end = time.time() + 5
    killed = second = None
    while time.time() < t_end:
        for _ in range(20):
            sock.sendto(b"x" * 900, ("127.0.0.1", port))
            sent += 1
        time.sleep(0.01)
        if killed is None and time.time() > t_end - 2.5:
            first.kill()
            killed, _ = first.communicate(timeout=30)
            second = start(ring, checkpoint=cp)
    time.sleep(1.0)
    dump.send_signal(signal.SIGINT)
    _, dump_err = dump.communicate(timeout=30)
    time.sleep(2.5)
    out2, _ = stop(second)
    captured = int(dump_err.decode().split(" packets captured")[0].split()[-1])
    got = totals(killed.decode()) + totals(out2)
    assert totals(killed.decode()) and totals(out2), "both runs should have written records"
    # the ring's own truth: flowlog reading the finished files
    truth = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ring), "--window", "1",
                            "-q"], capture_output=True, text=True, timeout=120)
    assert sum(totals(truth.stdout).values()) == captured
    assert got == totals(truth.stdout)
    assert len(list(ring.iterdir())) >= 3


def test_count_and_filter_with_checkpoint_resume_exactly(tmp_path):
    """-c stops inside a batch and a filter drops frames: the checkpoint still counts each packet once."""
    ring = tmp_path / "ring"
    ring.mkdir()
    cp = tmp_path / "cp"
    writer = RingWriter(ring, seconds=2, rate=300, per_file=200)
    writer.start()
    writer.join()
    wanted = {k: v for k, v in writer.sent.items() if k[0] != "10.1.0.1"}
    outs = []
    for _ in range(40):
        proc = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "--follow", str(ring), "--window", "1",
                               "--lateness", "1", "--checkpoint", str(cp), "-c", "97", "--duration", "4",
                               "not src host 10.1.0.1"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(totals(proc.stdout))
        if sum(sum(o.values()) for o in outs) >= sum(wanted.values()):
            break
    got = sum(outs, collections.Counter())
    assert got == collections.Counter(wanted)
    assert len(outs) > 2
