"""The flowlog command: through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowlog.cli.main import main
from flowlog.core import synth

HERE = Path(__file__).resolve().parent
CAPTURES = HERE / "data" / "captures"
GOLDEN = HERE / "data" / "golden"
ICMP = str(CAPTURES / "icmp.pcap")


def invoke(*args, **kw):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kw)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def assert_one_line_error(result, *needles):
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.returncode != 0 if hasattr(result, "returncode") else result.exit_code != 0
    lines = [l for l in err.strip().splitlines() if l]
    assert "Traceback" not in err
    assert len(lines) <= 3, err         # click usage errors add a usage and a hint line
    for n in needles:
        assert n in err, err


# -- golden records -------------------------------------------------------------------------------

def _golden_cases():
    return json.loads((GOLDEN / "cases.json").read_text())


@pytest.mark.parametrize("capture,args", sorted(_golden_cases().items()))
def test_golden_records(capture, args):
    """The records of small captures, byte for byte (tests/regen_golden.py rewrites them on purpose)."""
    expected = (GOLDEN / f"{capture}.out").read_text()
    result = invoke("capture", "-q", "-r", str(CAPTURES / capture), *args)
    assert result.output == expected


# -- formats --------------------------------------------------------------------------------------

def test_text_default_is_version_2():
    result = invoke("capture", "-r", ICMP)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines == ["2 - icmp 192.168.0.89 192.168.0.1 512 2048 1 8 480 1309144860 1309144920 ACCEPT OK",
                     "2 - icmp 192.168.0.1 192.168.0.89 512 0 1 4 240 1309144860 1309144920 ACCEPT OK"]


def test_json_numbers_and_nulls():
    out = invoke("capture", "-r", str(CAPTURES / "ip4-trunc.pcap"), "--format", "json", "-q").output
    obj = json.loads(out)
    assert obj["log-status"] == "SKIPDATA" and obj["packets"] == 1 and obj["bytes"] is None
    out = invoke("capture", "-r", ICMP, "--format", "json", "--fields", "srcaddr,packets,first-seen").output
    rows = [json.loads(l) for l in out.splitlines()]
    assert rows[0] == {"srcaddr": "192.168.0.89", "packets": 8, "first-seen": pytest.approx(1309144887.0, abs=1)}
    assert '"first-seen": 1309144887.' in out   # written with all its digits


def test_csv_has_header_and_parses():
    out = invoke("capture", "-r", ICMP, "--format", "csv").output
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and rows[0]["srcaddr"] == "192.168.0.89" and rows[0]["log-status"] == "OK"


def test_table_format_aligns():
    out = invoke("capture", "-r", ICMP, "--format", "table").output.splitlines()
    assert out[0].split()[:3] == ["version", "account-id", "interface-id"]
    assert set(out[1]) <= {"-", " "}
    assert len(out) == 4


def test_fields_and_header():
    out = invoke("capture", "-r", ICMP, "--fields", "srcaddr,dstaddr,packets", "--header").output
    assert out.splitlines() == ["srcaddr dstaddr packets", "192.168.0.89 192.168.0.1 8", "192.168.0.1 192.168.0.89 4"]


def test_unknown_field_is_one_line():
    result = cli("capture", "-r", ICMP, "--fields", "srcaddr,nonsense")
    assert_one_line_error(result, "nonsense", "fields are:")
    assert result.returncode == 2


def test_interface_and_account_ids():
    out = invoke("capture", "-r", ICMP, "--interface-id", "eni-lq6mkcis", "--account-id", "1251762227").output
    assert out.splitlines()[0].startswith("2 1251762227 eni-lq6mkcis 192.168.0.89")
    out = invoke("capture", "-r", ICMP, "--interface-id", "icmp=eni-1", "--interface-id", "other=eni-2").output
    assert out.split()[2] == "eni-1"


# -- tcpdump habits --------------------------------------------------------------------------------

def test_filter_expression_after_files():
    out = invoke("capture", "-r", ICMP, "icmp[icmptype]", "==", "8").output
    assert len(out.splitlines()) == 1 and " 2048 " in out


def test_several_files_after_r_then_filter():
    out = invoke("capture", "-r", ICMP, str(CAPTURES / "tcp-handshake-nano.pcap"), "tcp").output
    lines = out.splitlines()
    assert len(lines) == 2 and all(l.split()[2] == "tcp-handshake-nano" for l in lines)


def test_filter_from_file(tmp_path):
    f = tmp_path / "filter"
    f.write_text("src host 192.168.0.1\n")
    out = invoke("capture", "-r", ICMP, "-F", str(f)).output
    assert out.splitlines() == ["2 - icmp 192.168.0.1 192.168.0.89 512 0 1 4 240 1309144860 1309144920 ACCEPT OK"]


def test_bad_filter_is_one_line():
    result = cli("capture", "-r", ICMP, "tcp", "port", "banana")
    assert_one_line_error(result, "bad filter expression")
    assert result.returncode == 2 and result.stdout == ""


def test_missing_second_file_hint():
    result = cli("capture", "-r", ICMP, "missing.pcap")
    assert_one_line_error(result, "missing.pcap")


def test_count_stops_early():
    result = invoke("capture", "-r", ICMP, "-c", "3", "--stats")
    recs = [l for l in result.output.splitlines() if l.startswith("2 ")]
    assert sum(int(l.split()[8]) for l in recs) == 3


def test_directory_and_glob_read_as_one_stream(tmp_path):
    for name in ("icmp.pcap", "tcp-handshake-nano.pcap"):
        (tmp_path / name).write_bytes((CAPTURES / name).read_bytes())
    (tmp_path / "notes.txt").write_text("not a capture")
    by_dir = invoke("capture", "-r", str(tmp_path), "-q").output
    by_glob = invoke("capture", "-r", str(tmp_path / "*.pcap")).output
    assert by_dir == by_glob
    # icmp.pcap (2011) comes before tcp-handshake-nano.pcap (2014) whatever the names' order
    assert [l.split()[2] for l in by_dir.splitlines() if l.split()[-1] == "OK"] == ["icmp", "icmp",
                                                                                   "tcp-handshake-nano",
                                                                                   "tcp-handshake-nano"]
    warned = cli("capture", "-r", str(tmp_path))
    assert "notes.txt" in warned.stderr and warned.returncode == 0


def test_files_are_merged_in_time_order(tmp_path):
    a, b = "192.0.2.1", "192.0.2.2"
    synth.write_pcap(tmp_path / "one.pcap", [(t, synth.packet(a, b, 17, 1, 1)) for t in (10, 70, 130)])
    synth.write_pcap(tmp_path / "two.pcap", [(t, synth.packet(b, a, 17, 2, 2)) for t in (20, 80, 140)])
    out = invoke("capture", "-r", str(tmp_path / "two.pcap"), str(tmp_path / "one.pcap"),
                 "--interface-id", "eth0", "--lateness", "0").output
    starts = [(l.split()[10], l.split()[3]) for l in out.splitlines()]
    assert starts == [("0", a), ("0", b), ("60", a), ("60", b), ("120", a), ("120", b)]


def test_from_and_to_uris():
    out = invoke("capture", "--from", f"pcap:{ICMP}", "--to", "stdout:").output
    assert len(out.splitlines()) == 2


def test_unknown_scheme_is_one_line():
    result = cli("capture", "-r", ICMP, "--to", "nosuch:thing")
    assert_one_line_error(result, "no sink plugin handles 'nosuch:'", "stdout:")


def test_compressed_capture(tmp_path):
    import gzip
    gz = tmp_path / "icmp.pcap.gz"
    gz.write_bytes(gzip.compress((CAPTURES / "icmp.pcap").read_bytes()))
    out = invoke("capture", "-r", str(gz)).output
    assert out == invoke("capture", "-r", ICMP).output


# -- bad input: one clear line, non-zero status, no traceback -------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["capture", "-r", "/nonexistent/x.pcap"], "no such file"),
    (["capture", "-r", "__TEXT__"], "not a pcap or pcapng capture"),
    (["capture", "-r", "__EMPTY__"], "not a capture file (empty)"),
    (["capture", "-r", "__DIR_EMPTY__"], "no capture files"),
    (["capture"], "nothing to read"),
    (["capture", "-r", ICMP, "--window", "0"], "--window"),
    (["capture", "-r", ICMP, "--window", "abc"], "--window"),
    (["capture", "-r", ICMP, "--lateness", "-1"], "--lateness"),
    (["capture", "-r", ICMP, "--max-flows", "0"], "--max-flows"),
    (["capture", "-r", ICMP, "-c", "0"], "--count"),
    (["capture", "-r", ICMP, "--format", "xml"], "--format"),
    (["capture", "-r", ICMP, "--timestamps", "sometimes"], "--timestamps"),
    (["capture", "-r", ICMP, "--account-id", "a b"], "--account-id"),
    (["capture", "-r", ICMP, "--interface-id", "=x"], "--interface-id"),
    (["capture", "--from", "no-colon"], "is not a URI"),
    (["capture", "-r", ICMP, "--bogus"], "No such option"),
])
def test_bad_input(args, needle, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a capture\n")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    d = tmp_path / "emptydir"
    d.mkdir()
    args = [{"__TEXT__": str(text), "__EMPTY__": str(empty), "__DIR_EMPTY__": str(d)}.get(a, a) for a in args]
    result = cli(*args)
    assert_one_line_error(result, needle)
    assert result.stdout == ""


def test_unreadable_file(tmp_path, monkeypatch):
    """Permission denied (simulated: the tests run as root, who can read anything)."""
    import builtins

    path = tmp_path / "secret.pcap"
    path.write_bytes((CAPTURES / "icmp.pcap").read_bytes())
    real_open = builtins.open

    def fake_open(file, *a, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    result = CliRunner().invoke(main, ["capture", "-r", str(path)])
    assert result.exit_code == 2
    assert "permission denied" in result.output and "Traceback" not in result.output


def test_truncated_capture_exits_1_with_records(tmp_path):
    blob = (CAPTURES / "dns_fragmented.pcap").read_bytes()
    part = tmp_path / "part.pcap"
    part.write_bytes(blob[: len(blob) // 2])
    result = cli("capture", "-r", str(part))
    assert result.returncode == 1
    assert result.stdout.count("\n") > 5
    msgs = result.stderr.strip().splitlines()
    assert len(msgs) == 1 and "cut short" in msgs[0]


# -- Unix manners ----------------------------------------------------------------------------------

def test_stats_go_to_stderr_only():
    result = cli("capture", "-r", str(CAPTURES / "linux_dlt_sll2.pcap"), "--stats")
    assert result.returncode == 0
    assert all(len(l.split()) == 14 for l in result.stdout.splitlines())
    stats = dict(l.rsplit(None, 1) for l in result.stderr.splitlines())
    assert stats["frames"] == "6" and stats["IP packets"] == "4" and stats["non-IP frames"] == "2"
    assert stats["malformed frames"] == "0" and stats["flows"] == "4" and stats["records"] == "5"
    assert stats["windows"] == "27"


def test_quiet_hushes_warnings():
    loud = cli("capture", "-r", str(CAPTURES / "ip4-trunc.pcap"))
    quiet = cli("capture", "-r", str(CAPTURES / "ip4-trunc.pcap"), "-q")
    assert "malformed" in loud.stderr and quiet.stderr == ""
    assert loud.stdout == quiet.stdout


def test_closed_pipe_ends_quietly(tmp_path):
    big = tmp_path / "big.pcap"
    frames = [(1_700_000_000 + i * 0.01, synth.packet("10.0.0.1", "10.0.0.2", 17, i % 60000 + 1, 53))
              for i in range(30000)]
    synth.write_pcap(big, frames)
    proc = subprocess.run(f"{sys.executable} -m flowlog.cli capture -r {big} | head -n 2",
                          shell=True, capture_output=True, text=True, timeout=300,
                          executable="/bin/bash", env={**os.environ, "SHELLOPTS": ""})
    assert proc.stdout.count("\n") == 2
    assert proc.stderr == ""
    status = subprocess.run(f"set -o pipefail; {sys.executable} -m flowlog.cli capture -r {big} | head -n 1 "
                            f">/dev/null", shell=True, executable="/bin/bash", timeout=300)
    assert status.returncode == 0


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    result = cli("capture", "-r", ICMP)
    assert result.stderr == ""


def test_version_and_help():
    assert invoke("--version").output.startswith("flowlog, version ")
    out = invoke("capture", "--help").output
    for opt in ("--read", "--from", "--to", "--count", "--window", "--lateness", "--max-flows",
                "--timestamps", "--account-id", "--interface-id", "--format", "--fields", "--header",
                "--stats", "--quiet"):
        assert opt in out


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_flushes_open_windows_and_exits_0(sig, tmp_path):
    import signal

    big = tmp_path / "long.pcap"
    frames = ((1_700_000_000 + i * 0.02, synth.packet("10.0.0.1", "10.0.0.2", 17, 1 + i % 7, 53))
              for i in range(400_000))
    synth.write_pcap(big, frames)
    # unbuffered, so that nothing read ahead by readline() is lost to communicate()
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(big), "--stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    first = proc.stdout.readline().decode()  # the first window has been written: reading is under way
    assert first.startswith("2 ")
    proc.send_signal(getattr(signal, sig))
    rest, err = (x.decode() for x in proc.communicate(timeout=120))
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err
    lines = [first] + rest.splitlines()
    stats = dict(l.rsplit(None, 1) for l in err.splitlines() if not l.startswith("flowlog:"))
    frames_read = int(stats["frames"])
    assert 0 < frames_read < 400_000, "the run should have been stopped part way"
    assert sum(int(l.split()[8]) for l in lines) == frames_read


def test_progress_bar_only_on_a_terminal(tmp_path):
    """tqdm draws on stderr when it is a terminal and the input is large; records stay clean on stdout."""
    import pty

    cap = tmp_path / "some.pcap"
    synth.write_pcap(cap, [(1_700_000_000 + i, synth.packet("10.0.0.1", "10.0.0.2", 17, 1, 2, 1000))
                           for i in range(300)])
    env = {**os.environ, "FLOWLOG_PROGRESS_MIN_BYTES": "1000"}
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(cap)],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"flowlog:" in err and b"B/s" in err, err
    assert all(len(l.split()) == 14 for l in out.decode().splitlines())
    # not a terminal: no bar, whatever the size
    quiet = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(cap)], capture_output=True,
                           env=env, timeout=120)
    assert quiet.stderr == b""


def test_duration_stops_reading_a_file_too(tmp_path):
    big = tmp_path / "long.pcap"
    synth.write_pcap(big, ((1_700_000_000 + i * 0.02, synth.packet("10.0.0.1", "10.0.0.2", 17, 1 + i % 7, 53))
                           for i in range(300_000)))
    env = {**os.environ, "FLOWLOG_NO_JIT": "1"}          # the slow path: the deadline comes first
    proc = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(big), "--duration", "0.5",
                           "--stats"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    stats = dict(l.rsplit(None, 1) for l in proc.stderr.splitlines() if not l.startswith("flowlog:"))
    assert 0 < int(stats["frames"]) < 300_000
    assert sum(int(l.split()[8]) for l in proc.stdout.splitlines()) == int(stats["frames"])
