"""Records against tshark-computed truth: every bundled capture, and the developer corpus when present."""

from __future__ import annotations

import csv
import ipaddress
import random
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from flowlog.core.api import ListSink, SourceContext
from flowlog.core.capfile import CaptureFile
from flowlog.core.run import Run, RunOptions
from flowlog.core.uri import URI
from flowlog.plugins.pcap import PcapSource

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "data" / "captures"
BUNDLED_TRUTH = HERE / "data" / "truth"


def run_files(paths, **options):
    sink = ListSink()
    sources = [PcapSource(URI.parse(f"pcap:{p}")) for p in paths]
    result = Run(sources, [sink], RunOptions(**options)).run()
    return sink.records, result


def load_truth(path: Path) -> dict:
    truth = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            key = (ipaddress.ip_address(r["srcaddr"]), ipaddress.ip_address(r["dstaddr"]),
                   int(r["srcport"]), int(r["dstport"]), int(r["protocol"]))
            truth[key] = (int(r["packets"]), int(r["bytes"]))
    return truth


def per_tuple(records) -> dict:
    sums = defaultdict(lambda: [0, 0])
    for r in records:
        if r.log_status == "OK":
            key = (ipaddress.ip_address(r.srcaddr), ipaddress.ip_address(r.dstaddr), r.srcport, r.dstport, r.protocol)
            sums[key][0] += r.packets
            sums[key][1] += r.bytes
    return {k: tuple(v) for k, v in sums.items()}


def assert_conserved(records, result):
    st = result.stats
    counted = sum(r.packets for r in records if r.log_status in ("OK", "SKIPDATA"))
    assert counted == st.ip_packets + st.malformed + st.lost_packets
    known = sum(r.bytes for r in records if r.log_status in ("OK", "SKIPDATA") and r.bytes is not None)
    if all(r.bytes is not None for r in records if r.log_status == "SKIPDATA"):
        assert known == st.ip_bytes
    else:
        assert known <= st.ip_bytes
    for r in records:
        assert len(r.values()) == 14


def _diff(mine: dict, truth: dict) -> str:
    lines = []
    for k in sorted(set(mine) | set(truth), key=str):
        if mine.get(k) != truth.get(k):
            lines.append(f"{k}: flowlog {mine.get(k)} truth {truth.get(k)}")
    return "\n".join(lines[:20])


def check_against_truth(capture: Path, truth_file: Path):
    records, result = run_files([capture])
    mine = per_tuple(records)
    truth = load_truth(truth_file)
    assert mine == truth, f"{capture.name}:\n{_diff(mine, truth)}"
    assert_conserved(records, result)
    assert result.status == 0, result.damage


BUNDLED_WITH_TRUTH = sorted(p for p in BUNDLED.iterdir() if (BUNDLED_TRUTH / f"{p.name}.flows.csv").exists())
BUNDLED_MALFORMED = sorted(p for p in BUNDLED.iterdir() if not (BUNDLED_TRUTH / f"{p.name}.flows.csv").exists())


@pytest.mark.parametrize("capture", BUNDLED_WITH_TRUTH, ids=lambda p: p.name)
def test_bundled_capture_matches_truth(capture):
    check_against_truth(capture, BUNDLED_TRUTH / f"{capture.name}.flows.csv")


def test_bundled_set_is_complete():
    # the fixtures cover every link type and malformed case the corpus has
    assert len(BUNDLED_WITH_TRUTH) >= 40
    assert len(BUNDLED_MALFORMED) == 7


def test_corpus_matches_truth(corpus):
    """Every corpus capture that has a truth file: per-5-tuple sums equal tshark's, exactly."""
    truths = sorted((corpus / "truth").glob("*.flows.csv"))
    assert len(truths) == 51
    failures = []
    for t in truths:
        capture = corpus / t.name[: -len(".flows.csv")]
        records, result = run_files([capture])
        mine, truth = per_tuple(records), load_truth(t)
        if mine != truth:
            failures.append(f"{capture.name}:\n{_diff(mine, truth)}")
        assert_conserved(records, result)
    assert not failures, "\n".join(failures)


def _malformed(corpus_or_bundled: Path) -> list[Path]:
    truth = corpus_or_bundled / "truth" if (corpus_or_bundled / "truth").is_dir() else BUNDLED_TRUTH
    return sorted(p for p in corpus_or_bundled.iterdir()
                  if p.is_file() and p.suffix in (".pcap", ".pcapng") and not (truth / f"{p.name}.flows.csv").exists())


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("capture", BUNDLED_MALFORMED, ids=lambda p: p.name)
def test_malformed_capture_is_reported_not_raised(capture):
    proc = _cli("capture", "-r", str(capture), "--stats")
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    messages = [l for l in proc.stderr.splitlines() if l.startswith("flowlog:")]
    assert messages, f"no diagnostic for {capture.name}: {proc.stderr!r}"
    assert all(len(m) < 300 for m in messages)
    # every record line is a complete version-2 record
    for line in proc.stdout.splitlines():
        assert len(line.split()) == 14


def test_corpus_malformed_files(corpus):
    files = _malformed(corpus)
    assert len(files) == 7
    for capture in files:
        proc = _cli("capture", "-r", str(capture))
        assert proc.returncode in (0, 1), (capture.name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip(), f"no diagnostic for {capture.name}"
        for line in proc.stdout.splitlines():
            assert len(line.split()) == 14


def test_packets_around_damage_still_count(tmp_path, data):
    """A malformed frame in the middle of good ones: the good ones count, the bad one is SKIPDATA."""
    good = (BUNDLED / "icmp.pcap").read_bytes()
    bad = (BUNDLED / "ip4-trunc.pcap").read_bytes()
    # splice ip4-trunc's one (cut-short) record between icmp.pcap's records
    recs = _pcap_records(good)
    bad_rec = _pcap_records(bad)[0]
    # give the bad record a time inside icmp.pcap's window
    bad_rec = recs[5][:8] + bad_rec[8:]
    spliced = good[:24] + b"".join(recs[:6]) + bad_rec + b"".join(recs[6:])
    path = tmp_path / "spliced.pcap"
    path.write_bytes(spliced)
    records, result = run_files([path])
    truth = load_truth(BUNDLED_TRUTH / "icmp.pcap.flows.csv")
    assert per_tuple(records) == truth
    skips = [r for r in records if r.log_status == "SKIPDATA"]
    assert [(s.packets, s.bytes) for s in skips] == [(1, None)]
    assert result.stats.malformed == 1
    assert_conserved(records, result)


def _pcap_records(blob: bytes) -> list[bytes]:
    out, pos = [], 24
    while pos + 16 <= len(blob):
        caplen = struct.unpack_from("<I", blob, pos + 8)[0]
        out.append(blob[pos:pos + 16 + caplen])
        pos += 16 + caplen
    return out


def _frame_ends(path: Path) -> list[int]:
    """File offset where each frame's record or block ends (independent of flowlog's reader)."""
    blob = path.read_bytes()
    magic = blob[:4]
    ends = []
    if magic == b"\x0a\x0d\x0d\x0a":
        pos = 0
        e = "<"
        while pos + 12 <= len(blob):
            btype = struct.unpack_from("<I", blob, pos)[0]
            if btype == 0x0A0D0D0A:
                e = "<" if blob[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, total = struct.unpack_from(e + "II", blob, pos)
            if btype in (2, 3, 6):
                ends.append(pos + total)
            pos += total
        return ends
    e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos = 24
    while pos + 16 <= len(blob):
        caplen = struct.unpack_from(e + "I", blob, pos + 8)[0]
        pos += 16 + caplen
        ends.append(pos)
    return ends


def _frames_keys(path: Path):
    """Per-frame (key, bytes, status) in file order, from a full read."""
    from flowlog.core.decode import decode_batch
    import numpy as np

    ctx = SourceContext()
    cf = CaptureFile(str(path), ctx)
    out = []
    for b in cf.batches():
        lts = np.array([l.linktype for l in ctx.links])
        c = decode_batch(b, lts)
        for i in range(len(b)):
            out.append((int(c.status[i]), int(c.nbytes[i])))
    return out


def _cut_check(capture: Path, tmp_path: Path, seed: int, cuts: int = 6):
    blob = capture.read_bytes()
    ends = _frame_ends(capture)
    full = _frames_keys(capture)
    assert len(full) == len(ends)
    rng = random.Random(seed)
    header_end = 24 if blob[:4] != b"\x0a\x0d\x0d\x0a" else (ends[0] - 1 if ends else len(blob))
    for _ in range(cuts):
        if len(blob) <= header_end + 1:
            return
        cut = rng.randrange(header_end, len(blob))
        part = tmp_path / f"cut-{cut}-{capture.name}"
        part.write_bytes(blob[:cut])
        complete = sum(1 for e in ends if e <= cut)
        records, result = run_files([part])
        st = result.stats
        assert st.frames == complete, (capture.name, cut)
        expected_ip = sum(1 for s, _ in full[:complete] if s == 0)
        assert st.ip_packets == expected_ip
        assert sum(r.packets for r in records if r.log_status == "OK") == expected_ip
        assert sum(r.bytes for r in records if r.log_status == "OK") == sum(b for s, b in full[:complete] if s == 0)
        cut_inside = cut not in ends
        assert (result.status == 1) == cut_inside, (capture.name, cut, result.damage)
        part.unlink()


CUT_FILES = ["dns_fragmented.pcap", "pppoe-over-qinq.pcap", "doq.pcapng", "pcapng-multi-interface.pcapng",
             "6in4tunnel.pcap", "quic-interop-retry.pcap"]


@pytest.mark.parametrize("name", CUT_FILES)
def test_cut_bundled_capture_counts_complete_records(name, tmp_path):
    _cut_check(BUNDLED / name, tmp_path, seed=hash(name) & 0xFFFF)


def test_cut_corpus_captures(corpus, tmp_path):
    for name in ("skype.pcap", "alexa-app.pcapng", "1kxun.pcap", "afs.pcap", "synscan.pcap"):
        _cut_check(corpus / name, tmp_path, seed=7, cuts=4)


def test_cut_capture_exact_truth_on_whole_prefix(tmp_path):
    """Cutting exactly at a record boundary is a complete, smaller capture: status 0."""
    capture = BUNDLED / "dns_fragmented.pcap"
    ends = _frame_ends(capture)
    part = tmp_path / "prefix.pcap"
    part.write_bytes(capture.read_bytes()[: ends[9]])
    records, result = run_files([part])
    assert result.status == 0 and result.stats.frames == 10
