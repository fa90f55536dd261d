"""The file: sink: one file appended, or a file per window and interface in a directory."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowlog.core import synth
from flowlog.core.api import DeliverySink, SinkOptions
from flowlog.core.errors import ConfigError
from flowlog.core.records import Record
from flowlog.core.uri import URI
from flowlog.plugins.file import FileSink, file_name

DATA = Path(__file__).resolve().parent / "data" / "captures"
ICMP = DATA / "icmp.pcap"
HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"


def flowlog(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """Two interfaces, three windows of 10 s."""
    path = tmp_path_factory.mktemp("cap") / "two.pcapng"
    t0 = 1_700_000_000
    packets = [(i % 2, int((t0 + i * 0.25) * 1_000_000),
                synth.packet("10.0.0.1", f"10.0.{i % 2}.{2 + i % 3}", 17, 1000 + i % 3, 53, size=40))
               for i in range(120)]
    synth.write_pcapng(path, [("eth0", 1, None), ("eth1", 1, None)], packets)
    return path


def stdout_records(*args) -> list[str]:
    p = flowlog("capture", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def visible(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if not n.startswith("."))


def test_file_name():
    assert file_name("123", "eni-1", 1_700_000_000, 1_700_000_060) == \
        "123_eni-1_20231114T221320Z_1700000000-1700000060.log"
    assert file_name(None, "eth0/1 x", 0, 600, "json", True, 2) == \
        "noaccount_eth0-1-x_19700101T000000Z_0-600-2.jsonl.gz"


def test_append_to_one_file(tmp_path):
    out = tmp_path / "records.log"
    expected = stdout_records("-r", ICMP)
    for _ in range(2):
        p = flowlog("capture", "-r", ICMP, "--to", f"file:{out}")
        assert p.returncode == 0 and p.stdout == "", p.stderr
    assert out.read_text().splitlines() == expected * 2


def test_csv_header_only_in_a_new_file(tmp_path):
    out = tmp_path / "records.csv"
    for _ in range(2):
        assert flowlog("capture", "-r", ICMP, "--format", "csv", "--to", f"file:{out}").returncode == 0
    text = out.read_text().splitlines()
    assert text[0].startswith("version,account-id") and sum(l.startswith("version,") for l in text) == 1
    assert len(text) == 1 + 2 * 2


def test_gzip_appends_members(tmp_path):
    out = tmp_path / "records.log.gz"
    for _ in range(2):
        assert flowlog("capture", "-r", ICMP, "--to", f"file:{out}?gzip=1").returncode == 0
    assert gzip.decompress(out.read_bytes()).decode().splitlines() == stdout_records("-r", ICMP) * 2


def test_directory_gets_a_file_per_window_and_interface(tmp_path, capture):
    d = tmp_path / "logs"
    spool = tmp_path / "spool"
    env = {**os.environ, "FLOWLOG_SPOOL": str(spool)}
    p = flowlog("capture", "-r", capture, "--window", "10", "--account-id", "42", "--to", f"file:{d}/", env=env)
    assert p.returncode == 0, p.stderr
    expected = stdout_records("-r", capture, "--window", "10", "--account-id", "42")
    names = visible(d)
    assert names == sorted(os.listdir(d))                     # no temporary file left behind
    windows = sorted({int(l.split()[10]) for l in expected})
    assert len(windows) == 3
    assert names == sorted(file_name("42", iface, w, w + 10) for w in windows for iface in ("eth0", "eth1"))
    got = []
    for name in names:
        account, iface, stamp, span = name.removesuffix(".log").split("_")
        lines = (d / name).read_text().splitlines()
        assert lines[0] == HEADER
        start, end = map(int, span.split("-"))
        for line in lines[1:]:
            f = line.split()
            assert (f[1], f[2], int(f[10]), int(f[11])) == (account, iface, start, end)
        got += lines[1:]
    assert sorted(got) == sorted(expected)
    assert not spool.exists()                                 # a plain sink: no spool


def test_existing_directory_without_slash_json_and_gzip(tmp_path, capture):
    d = tmp_path / "logs"
    d.mkdir()
    p = flowlog("capture", "-r", capture, "--window", "10", "--format", "json", "--fields", "srcaddr,dstaddr,start",
                "--to", f"file:{d}?gzip=1")
    assert p.returncode == 0, p.stderr
    names = visible(d)
    assert len(names) == 6 and all(n.endswith(".jsonl.gz") for n in names)
    lines = [l for n in names for l in gzip.decompress((d / n).read_bytes()).decode().splitlines()]
    expected = stdout_records("-r", capture, "--window", "10", "--format", "json",
                              "--fields", "srcaddr,dstaddr,start")
    assert sorted(lines) == sorted(expected)


def test_a_window_written_again_gets_a_new_file(tmp_path):
    """Late packets: window 0 is written, then written again; the first file stays as it was."""
    cap = tmp_path / "late.pcap"
    pkt = synth.packet("10.0.0.1", "10.0.0.2", 17, 1, 2)
    synth.write_pcap(cap, [(1_700_000_000, pkt), (1_700_000_100, pkt), (1_700_000_001, pkt)])
    d = tmp_path / "logs"
    p = flowlog("capture", "-r", cap, "--window", "10", "--lateness", "0", "--to", f"file:{d}/")
    assert p.returncode == 0, p.stderr
    w = 1_700_000_000
    assert visible(d) == sorted([file_name(None, "late", w, w + 10), file_name(None, "late", w, w + 10, n=1),
                                 file_name(None, "late", w + 100, w + 110),
                                 file_name(None, "late", w + 10, w + 100)])     # NODATA, idle windows
    first = (d / file_name(None, "late", w, w + 10)).read_text().splitlines()
    again = (d / file_name(None, "late", w, w + 10, n=1)).read_text().splitlines()
    assert first[1].split()[8] == again[1].split()[8] == "1"


def test_never_overwrites_an_existing_file(tmp_path):
    d = tmp_path / "logs"
    sink = FileSink(URI.parse(f"file:{d}/"), SinkOptions(window=60))
    sink.open()
    r = Record("7", "eth0", "10.0.0.1", "10.0.0.2", 1, 2, 17, 3, 90, 120, 180, "ACCEPT", "OK")
    (d / file_name("7", "eth0", 120, 180)).write_text("keep me\n")
    (d / file_name("7", "eth0", 120, 180, n=1)).write_text("me too\n")
    sink.write([r])
    sink.close()
    assert (d / file_name("7", "eth0", 120, 180)).read_text() == "keep me\n"
    assert (d / file_name("7", "eth0", 120, 180, n=1)).read_text() == "me too\n"
    assert (d / file_name("7", "eth0", 120, 180, n=2)).read_text().splitlines() == [
        HEADER, "2 7 eth0 10.0.0.1 10.0.0.2 1 2 17 3 90 120 180 ACCEPT OK"]
    assert sink.written == [d / file_name("7", "eth0", 120, 180, n=2)]
    assert visible(d) == sorted(os.listdir(d))


def test_is_a_plain_sink():
    assert not issubclass(FileSink, DeliverySink)


@pytest.mark.parametrize("uri, needle", [
    ("file:", "give a path"),
    ("file://otherhost/x.log", "not a host"),
    ("file:/tmp/x.log?compress=1", "unknown setting compress"),
    ("file:/tmp/x.log?gzip=maybe", "gzip='maybe'"),
])
def test_bad_uris(uri, needle):
    with pytest.raises(ConfigError, match=needle):
        FileSink(URI.parse(uri), SinkOptions())
    p = flowlog("capture", "-r", ICMP, "--to", uri)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and needle in p.stderr


def test_unwritable_places_are_one_line(tmp_path):
    p = flowlog("capture", "-r", ICMP, "--to", f"file:{tmp_path}/no/such/dir/x.log")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == [f"flowlog: error: file:{tmp_path}/no/such/dir/x.log: No such file or directory"]
    d = tmp_path / "d"
    d.mkdir()
    p = flowlog("capture", "-r", ICMP, "--to", f"file:{tmp_path}/d")    # a directory, no slash: per window
    assert p.returncode == 0 and len(visible(d)) == 1
    blocker = tmp_path / "plain"
    blocker.write_text("")
    p = flowlog("capture", "-r", ICMP, "--to", f"file:{blocker}/")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "flowlog: error: file:" in p.stderr
