"""bench/gen.py, the benchmark's capture generator: deterministic, and its truth is right.

Only the generator is tested here (small, a few seconds); the benchmark itself (bench/run.py)
is run on demand, never by the tests.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")

GEN = Path(__file__).resolve().parent.parent / "bench" / "gen.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("flowlog_bench_gen", GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def small(gen, tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    path = str(d / "small.pcap")
    truth = gen.generate(2000, 60, 5, path)
    return path, truth


def test_same_arguments_same_bytes(gen, small, tmp_path):
    path, truth = small
    again = str(tmp_path / "again.pcap")
    truth2 = gen.generate(2000, 60, 5, again)
    assert Path(path).read_bytes() == Path(again).read_bytes()
    assert {k: v for k, v in truth.items() if k != "pcap"} == {k: v for k, v in truth2.items() if k != "pcap"}
    other = str(tmp_path / "other.pcap")
    gen.generate(2000, 60, 6, other)
    assert Path(path).read_bytes() != Path(other).read_bytes()


def test_truth_matches_the_file(gen, small):
    path, truth = small
    got = gen.read_totals(path)  # an independent struct reader
    assert truth["packets"] == got["packets"] == 2000
    for k in ("ip_bytes", "frame_bytes", "flows", "records"):
        assert got[k] == truth[k], k
    assert got["window_flows"] == {w["start"]: w["flows"] for w in truth["windows"]}
    assert Path(path).stat().st_size == truth["pcap_bytes"]
    assert truth["vlan_packets"] > 0
    assert set(truth["by_protocol"]) == {"1", "6", "17", "58"}


def test_flowlog_agrees_with_the_truth(small):
    path, truth = small
    r = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    packets = bytes_ = records = 0
    keys = set()
    for line in r.stdout.splitlines():
        f = line.split()
        assert f[13] == "OK", line
        packets += int(f[8])
        bytes_ += int(f[9])
        records += 1
        keys.add(tuple(f[3:8]))
    assert (packets, bytes_) == (truth["packets"], truth["ip_bytes"])
    assert (len(keys), records) == (truth["flows"], truth["records"])


def test_check_mode():
    r = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
