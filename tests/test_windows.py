"""Window semantics (SPEC.md, "Capture windows", NODATA, SKIPDATA, conservation) on built frames."""

from __future__ import annotations

import functools
import sys
import time

import pytest

from flowlog.core import jit, synth
from flowlog.core.frames import FrameBatch, Loss
from flowlog.core.meter import Meter
from flowlog.core.run import run_batches as _run_batches

run_batches = _run_batches


@pytest.fixture(autouse=True, params=["python", "compiled"])
def aggregator(request, monkeypatch):
    """Every test runs with the plain-Python and the compiled aggregator: the records must not differ."""
    compiled = request.param == "compiled"
    if compiled and not jit.available():
        pytest.skip("numba is not available (or FLOWLOG_NO_JIT is set): compiled aggregator not tested")
    monkeypatch.setattr(sys.modules[__name__], "run_batches", functools.partial(_run_batches, compiled=compiled))
    return request.param

A, B = "192.0.2.1", "198.51.100.7"


def frames(items, link=0):
    """``(time, src, dst, sport, dport[, size])`` items to a batch of UDP frames."""
    out = []
    for it in items:
        t, src, dst, sp, dp = it[:5]
        size = it[5] if len(it) > 5 else 0
        sec = int(t)
        out.append((sec, int(round((t - sec) * 1e9)), synth.packet(src, dst, 17, sp, dp, size)))
    return FrameBatch.from_frames(out, link=link)


def run(items, batches=1, interfaces=("eth0",), **opts):
    """Records for the items, cut into ``batches`` batches (results must not depend on the cut)."""
    per = max(1, -(-len(items) // batches))
    bs = [frames(items[i:i + per]) for i in range(0, len(items), per)]
    records, stats = run_batches(bs, [1] * len(interfaces), list(interfaces), **opts)
    return records, stats


def summary(records):
    return [(r.log_status, r.srcaddr, r.srcport, r.packets, r.bytes, r.start, r.end) for r in records]


def test_packet_exactly_on_boundary_opens_the_next_window():
    recs, _ = run([(119.999999, A, B, 1, 2), (120.0, A, B, 1, 2)])
    assert [(r.start, r.end, r.packets) for r in recs] == [(60, 120, 1), (120, 180, 1)]


@pytest.mark.parametrize("batches", [1, 2, 4])
def test_out_of_order_within_lateness_joins_its_window(batches):
    items = [(50, A, B, 1, 2), (61, A, B, 1, 2), (59.5, A, B, 1, 2), (64.9, A, B, 1, 2)]
    recs, st = run(items, batches=batches, lateness=5)
    assert [(r.start, r.packets) for r in recs] == [(0, 2), (60, 2)]
    assert st.late_packets == 0


@pytest.mark.parametrize("batches", [1, 3])
def test_late_beyond_lateness_is_emitted_again_for_its_window(batches):
    items = [(10, A, B, 1, 2), (70, A, B, 1, 2), (66, A, B, 3, 4), (12, A, B, 1, 2), (130, A, B, 1, 2)]
    recs, st = run(items, batches=batches, lateness=5)
    # window 0 closes when t=70 >= 60+5 arrives; the frame at t=12 is late: emitted again for window 0
    assert summary(recs) == [
        ("OK", A, 1, 1, 28, 0, 60),
        ("OK", A, 1, 1, 28, 0, 60),
        ("OK", A, 1, 1, 28, 60, 120),
        ("OK", A, 3, 1, 28, 60, 120),
        ("OK", A, 1, 1, 28, 120, 180),
    ]
    assert st.late_packets == 1
    assert sum(r.packets for r in recs) == len(items)


def test_lateness_zero_closes_on_the_boundary():
    recs, st = run([(59, A, B, 1, 2), (60, A, B, 1, 2), (59.5, A, B, 1, 2)], lateness=0)
    assert [(r.start, r.packets) for r in recs] == [(0, 1), (0, 1), (60, 1)]
    assert st.late_packets == 1


def test_gap_gives_one_nodata_record_even_over_years():
    year = 365 * 86400
    t0 = 1_600_000_000
    start = time.monotonic()
    recs, st = run([(t0, A, B, 1, 2), (t0 + 10 * year, A, B, 1, 2)])
    assert time.monotonic() - start < 5   # work does not grow with the number of idle windows
    w0 = t0 - t0 % 60
    w1 = (t0 + 10 * year) - (t0 + 10 * year) % 60
    assert summary(recs) == [
        ("OK", A, 1, 1, 28, w0, w0 + 60),
        ("NODATA", None, None, None, None, w0 + 60, w1),
        ("OK", A, 1, 1, 28, w1, w1 + 60),
    ]
    assert st.windows == (w1 - w0) // 60 + 1


def test_nodata_per_interface_and_order_by_interface():
    b0 = FrameBatch.concat([
        frames([(5, A, B, 1, 1)], link=0),
        frames([(6, B, A, 2, 2)], link=1),
        frames([(65, A, B, 1, 1)], link=0),
        frames([(185, A, B, 1, 1)], link=0),
        frames([(190, B, A, 2, 2)], link=1),
    ])
    recs, _ = run_batches([b0], [1, 1], ["eth0", "eth1"])
    got = [(r.interface_id, r.log_status, r.start, r.end) for r in recs]
    assert got == [
        ("eth0", "OK", 0, 60),
        ("eth1", "OK", 0, 60),
        ("eth0", "OK", 60, 120),
        ("eth0", "NODATA", 120, 180),
        ("eth0", "OK", 180, 240),
        ("eth1", "NODATA", 60, 180),
        ("eth1", "OK", 180, 240),
    ]
    assert all(len(r.values()) == 14 for r in recs)


def test_trailing_idle_interface_gets_nodata_at_flush():
    b = FrameBatch.concat([frames([(5, A, B, 1, 1)], link=0), frames([(6, B, A, 2, 2)], link=1),
                           frames([(125, A, B, 1, 1)], link=0)])
    recs, _ = run_batches([b], [1, 1], ["eth0", "eth1"])
    assert [(r.interface_id, r.log_status, r.start, r.end) for r in recs] == [
        ("eth0", "OK", 0, 60), ("eth1", "OK", 0, 60),
        ("eth0", "NODATA", 60, 120), ("eth0", "OK", 120, 180),
        ("eth1", "NODATA", 60, 180),
    ]


def test_records_in_first_seen_order_within_a_window():
    items = [(1, A, B, 9, 9), (2, A, B, 1, 1), (3, A, B, 5, 5), (4, A, B, 1, 1)]
    recs, _ = run(items, batches=2)
    assert [r.srcport for r in recs] == [9, 1, 5]


@pytest.mark.parametrize("batches", [1, 3])
def test_capacity_overflow_becomes_skipdata_and_conserves(batches):
    # IP lengths: 20 + max(8, size)
    items = [(1, A, B, 1, 1, 100), (2, A, B, 2, 2, 50), (3, A, B, 1, 1, 10), (4, A, B, 3, 3, 70),
             (5, A, B, 2, 2, 5)]
    recs, st = run(items, batches=batches, max_flows=1)
    assert summary(recs) == [
        ("OK", A, 1, 2, 120 + 30, 0, 60),
        ("SKIPDATA", None, None, 3, 70 + 90 + 28, 0, 60),
    ]
    assert st.overflow_packets == 3


def test_capacity_frees_when_a_window_closes():
    recs, st = run([(1, A, B, 1, 1), (70, A, B, 2, 2), (71, A, B, 3, 3)], max_flows=1)
    assert [(r.log_status, r.start, r.packets) for r in recs] == [("OK", 0, 1), ("OK", 60, 1),
                                                                    ("SKIPDATA", 60, 1)]


def test_malformed_frame_is_skipdata_with_unknown_bytes():
    good = frames([(1, A, B, 1, 1)])
    bad = FrameBatch.from_frames([(2, 0, synth.ETH_IPV4 + b"\x45\x00")])
    recs, st = run_batches([FrameBatch.concat([good, bad])], [1], ["eth0"])
    assert [(r.log_status, r.packets, r.bytes) for r in recs] == [("OK", 1, 28), ("SKIPDATA", 1, None)]
    assert st.malformed == 1 and st.malformed_reasons == {"IPv4 header cut short": 1}


def test_non_ip_frames_are_counted_not_flows():
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    b = FrameBatch.from_frames([(1, 0, arp), (2, 0, arp)])
    recs, st = run_batches([FrameBatch.concat([b, frames([(3, A, B, 1, 1)])])], [1], ["eth0"])
    assert st.non_ip == 2 and st.ip_packets == 1
    assert [r.log_status for r in recs] == ["OK"]


def test_only_non_ip_traffic_is_nodata():
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    b = FrameBatch.from_frames([(1, 0, arp), (200, 0, arp)])
    recs, _ = run_batches([b], [1], ["eth0"])
    assert [(r.log_status, r.start, r.end) for r in recs] == [("NODATA", 0, 240)]


def test_source_losses_become_skipdata():
    b = frames([(1, A, B, 1, 1)])
    b.losses.append(Loss(sec=30, link=0, packets=7, bytes=None))
    recs, st = run_batches([b], [1], ["eth0"])
    assert [(r.log_status, r.packets) for r in recs] == [("OK", 1), ("SKIPDATA", 7)]
    assert st.lost_packets == 7


def test_first_last_timestamps():
    recs, _ = run([(61.25, A, B, 1, 1), (62.75, A, B, 1, 1), (61.5, A, B, 1, 1)], timestamps="first-last")
    r = recs[0]
    assert (r.start, r.end) == (61, 62)
    assert r.first_seen == (61, 250_000_000) and r.last_seen == (62, 750_000_000)


@pytest.mark.parametrize("t", [2**31 + 5, 4291747200, 2**40, 4734231571822])
def test_timestamps_past_2038_and_far_future(t):
    recs, _ = run([(t, A, B, 1, 1)], window=600)
    assert (recs[0].start, recs[0].end) == (t - t % 600, t - t % 600 + 600)


def test_unusable_timestamps_are_malformed_and_counted():
    b = frames([(100, A, B, 1, 1), (101, A, B, 1, 1)])
    b.sec[1] = -1
    recs, st = run_batches([b], [1], ["eth0"])
    assert [(r.log_status, r.packets, r.start) for r in recs] == [("OK", 1, 60), ("SKIPDATA", 1, 60)]
    assert st.malformed_reasons == {"unusable timestamp": 1}


def test_unusable_timestamp_before_any_time_is_counted_in_first_window():
    b = frames([(100, A, B, 1, 1), (101, A, B, 1, 1)])
    b.sec[0] = -1
    recs, st = run_batches([b], [1], ["eth0"])
    assert [(r.log_status, r.packets, r.start) for r in recs] == [("OK", 1, 60), ("SKIPDATA", 1, 60)]


def test_window_option_and_account_id():
    recs, _ = run([(601, A, B, 1, 1)], window=600, account_id="1251762227")
    r = recs[0]
    assert r.values() == [2, "1251762227", "eth0", A, B, 1, 1, 17, 1, 28, 600, 1200, "ACCEPT", "OK"]


def test_ipv6_and_icmp_keys():
    b = FrameBatch.from_frames([
        (1, 0, synth.packet("2001:db8::1", "2001:db8::2", 58, icmp_type=128, ident=77)),
        (1, 0, synth.packet(A, B, 1, icmp_type=3, icmp_code=3, ident=99)),
        (1, 0, synth.packet(A, B, 6, 1000, 22, flags=0x02)),
        (1, 5, synth.packet(A, B, 6, 1000, 22, flags=0x10)),
    ])
    recs, _ = run_batches([b], [1], ["eth0"])
    got = [(r.srcaddr, r.srcport, r.dstport, r.protocol, r.tcp_flags, r.type) for r in recs]
    assert got == [("2001:db8::1", 77, 32768, 58, 0, "IPv6"), (A, 0, 771, 1, 0, "IPv4"),
                   (A, 1000, 22, 6, 0x12, "IPv4")]


def test_meter_rejects_bad_window():
    with pytest.raises(ValueError):
        Meter([], lambda: None, window=0)


# -- live capture: windows on the wall clock ---------------------------------------------------------

def live_meter(compiled, interfaces=("eth0", "eth1"), **opts):
    import numpy as np
    return Meter(list(interfaces), lambda: np.arange(len(interfaces)), live=True, compiled=compiled, **opts)


def feed(meter, items, link=0):
    import numpy as np
    from flowlog.core.decode import decode_batch
    b = frames(items, link=link)
    out = meter.add(b, decode_batch(b, np.array([1] * len(meter.interfaces)), compiled=meter.compiled))
    return [r for rb in out for r in rb.records()]


def recs(batches):
    return [(r.interface_id, r.log_status, r.start, r.end, r.packets) for rb in batches for r in rb.records()]


def test_live_windows_close_on_the_wall_clock(aggregator):
    m = live_meter(aggregator == "compiled", lateness=5)
    m.start(1000)                            # window 960
    assert feed(m, [(1001, A, B, 1, 2)]) == []
    assert m.tick(1024) == []                # 960 + 60 + 5 = 1025 not reached
    assert recs(m.tick(1025)) == [("eth0", "OK", 960, 1020, 1), ("eth1", "NODATA", 960, 1020, None)]
    assert m.tick(1030) == []
    # an idle minute: one NODATA per interface per window, as it ends
    assert recs(m.tick(1090)) == [("eth0", "NODATA", 1020, 1080, None), ("eth1", "NODATA", 1020, 1080, None)]
    assert recs(m.tick(1210)) == [("eth0", "NODATA", 1080, 1140, None), ("eth1", "NODATA", 1080, 1140, None),
                                  ("eth0", "NODATA", 1140, 1200, None), ("eth1", "NODATA", 1140, 1200, None)]


def test_live_flush_writes_the_current_window(aggregator):
    m = live_meter(aggregator == "compiled")
    m.start(1000)
    feed(m, [(1001, A, B, 1, 2)])
    assert recs(m.tick(1030)) == [("eth0", "OK", 960, 1020, 1), ("eth1", "NODATA", 960, 1020, None)]
    feed(m, [(1031, A, B, 1, 2)], link=1)
    assert recs(m.flush(1031)) == [("eth0", "NODATA", 1020, 1080, None), ("eth1", "OK", 1020, 1080, 1)]


def test_live_frame_after_its_window_closed_on_the_clock_is_late(aggregator):
    m = live_meter(aggregator == "compiled", interfaces=("eth0",), lateness=0)
    m.start(1000)
    assert recs(m.tick(1020)) == [("eth0", "NODATA", 960, 1020, None)]
    feed(m, [(1019, A, B, 1, 2)])            # its window was written already: counted, written again
    out = recs(m.flush(1021))
    assert ("eth0", "OK", 960, 1020, 1) in out
    assert m.stats.late_packets == 1


def test_live_frame_from_long_before_the_start_does_not_stretch_the_run(aggregator):
    m = live_meter(aggregator == "compiled", interfaces=("eth0",))
    m.start(1_700_000_000)
    feed(m, [(1, A, B, 1, 2), (1_700_000_001, A, B, 1, 2)])
    started = time.monotonic()
    out = recs(m.flush(1_700_000_100))
    assert time.monotonic() - started < 2
    assert ("eth0", "OK", 0, 60, 1) in out                    # counted, as a late frame
    assert len(out) <= 5
    assert m.stats.late_packets == 1
