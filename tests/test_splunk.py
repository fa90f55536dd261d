"""The splunk+https / splunk+http sinks against an HEC stand-in (tests/receivers/hec_receiver.py).

FLOWLOG_TEST_HEC_URL=https://HOST:8088 (token in FLOWLOG_SPLUNK_TOKEN; ``?verify=false`` or
``?ca=PATH``, ``?index=NAME``, ``?ack=1`` may follow the URL) points the tests that need
neither fault injection nor reading events back at a real Splunk; the others skip, saying
why (HEC only takes events: reading them back needs Splunk's search API).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from flowlog.core.api import BatchMeta, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.http import HttpClient
from flowlog.core.records import Record
from flowlog.core.uri import URI
from flowlog.plugins.splunk import DEFAULT_SOURCETYPE, SplunkHttpSink, SplunkHttpsSink

HERE = Path(__file__).resolve().parent


def _load_harness():
    name = "flowlog_tests_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "receivers" / "harness.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


harness = _load_harness()
hec_receiver = harness.load("hec_receiver")

REAL_URL = os.environ.get("FLOWLOG_TEST_HEC_URL")
CAPTURES = HERE / "data" / "captures"
TOKEN = "9c5e3f6a-4b1d-4e8f-a2c7-0d1e2f3a4b5c"
META = BatchMeta("b-1", 1418530000, 1418530060, "eni-1", "123", 0)

SSH = Record("1251762227", "eni-lq6mkcis", "172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249,
             1418530010, 1418530070, "ACCEPT", "OK")
IDLE = Record("1251762227", "eni-lq6mkcis", start=1431280876, end=1431280934, log_status="NODATA")
SSH_LINE = "2 1251762227 eni-lq6mkcis 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK"


def records(n: int) -> list[Record]:
    return [Record("1", "eni-1", f"10.0.{i // 250}.{i % 250 + 1}", "10.9.9.9", 1000 + i, 53, 17, 1, 60,
                   1418530000, 1418530060, "ACCEPT", "OK") for i in range(n)]


@pytest.fixture
def hec(monkeypatch):
    """The HEC stand-in: for fault injection and for reading events back."""
    if REAL_URL:
        pytest.skip("fault injection and reading events back need the test receiver; FLOWLOG_TEST_HEC_URL points "
                    "at a real Splunk (unset it to run this test against the receiver)")
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    receiver = hec_receiver.serve(token=TOKEN)
    try:
        yield receiver
    finally:
        receiver.close()


def sink_for(receiver, **options) -> SplunkHttpSink:
    q = f"?{urlencode(options)}" if options else ""
    scheme = "splunk+https" if receiver.url.startswith("https") else "splunk+http"
    cls = SplunkHttpsSink if scheme == "splunk+https" else SplunkHttpSink
    return cls(URI.parse(f"{scheme}://{receiver.url.split('://')[1]}{q}"), SinkOptions())


def events(receiver) -> list[dict]:
    with receiver.store.lock:
        return list(receiver.store.events)


# -- events ------------------------------------------------------------------------------------------

def test_a_record_becomes_one_hec_event_with_the_raw_version_2_line(monkeypatch):
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    sink = SplunkHttpsSink(URI.parse("splunk+https://splunk.example:8088"), SinkOptions())
    item = sink.encode(SSH)
    assert item.endswith(b"}\n")
    e = json.loads(item)
    assert e == {"time": 1418530010, "host": socket.gethostname(), "sourcetype": "aws:cloudwatchlogs:vpcflow",
                 "event": SSH_LINE}
    sink = SplunkHttpsSink(URI.parse("splunk+https://splunk.example:8088?index=netflow&source=flowlog%3Aeth0"
                                     "&sourcetype=custom%3Avpc&host=edge-1"), SinkOptions())
    e = json.loads(sink.encode(IDLE))
    assert e == {"time": 1431280876, "host": "edge-1", "source": "flowlog:eth0", "sourcetype": "custom:vpc",
                 "index": "netflow",
                 "event": "2 1251762227 eni-lq6mkcis - - - - - - - 1431280876 1431280934 - NODATA"}


def test_the_event_line_is_what_flowlog_prints(monkeypatch):
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    from flowlog.core.api import ListSink
    from flowlog.core.run import Run, RunOptions
    from flowlog.plugins.pcap import PcapSource

    capture = CAPTURES / "dns_fragmented.pcap"
    listed = ListSink()
    Run([PcapSource(URI.parse(f"pcap:{capture}"))], [listed], RunOptions()).run()
    sink = SplunkHttpsSink(URI.parse("splunk+https://splunk.example:8088"), SinkOptions())
    assert [json.loads(sink.encode(r))["event"] for r in listed.records] == harness.records(capture)


# -- configuration -----------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    f"splunk+https://splunk.example:8088/services/collector?token={TOKEN}",
    f"splunk+https://x:{TOKEN}@splunk.example:8088",
    f"splunk+https://splunk.example:8088?authorization=Splunk%20{TOKEN}",
])
def test_a_token_in_the_uri_is_refused_naming_the_variable(uri, monkeypatch):
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    with pytest.raises(ConfigError) as e:
        SplunkHttpsSink(URI.parse(uri), SinkOptions())
    assert "FLOWLOG_SPLUNK_TOKEN" in str(e.value) and TOKEN not in str(e.value)


@pytest.mark.parametrize("uri, words", [
    ("splunk+https://splunk.example:8088", "set FLOWLOG_SPLUNK_TOKEN"),
    ("splunk+https://splunk.example:8088?ack=maybe", "ack='maybe'"),
    ("splunk+https://splunk.example:8088?ack_timeout=-1", "ack_timeout="),
    ("splunk+https://splunk.example:8088?channel=not-a-guid", "GUID"),
    ("splunk+https://splunk.example:8088?sorcetype=x", "unknown option sorcetype="),
    ("splunk+https://splunk.example:8088?index=", "index= is empty"),
    ("splunk+https://splunk.example:8088?verify=nope", "verify="),
    ("splunk+http://splunk.example:8088?ca=/x.pem", "plain http"),
    ("splunk+https://", "HOST"),
])
def test_bad_uris_are_one_clear_error(uri, words, monkeypatch):
    if words != "set FLOWLOG_SPLUNK_TOKEN":
        monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    else:
        monkeypatch.delenv("FLOWLOG_SPLUNK_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        (SplunkHttpsSink if uri.startswith("splunk+https") else SplunkHttpSink)(URI.parse(uri), SinkOptions())
    assert words in str(e.value)


@pytest.mark.parametrize("path, expected", [("", "/services/collector/event"),
                                            ("/services/collector/event", "/services/collector/event"),
                                            ("/services/collector", "/services/collector/event"),
                                            ("/splunk", "/splunk/services/collector/event")])
def test_the_endpoint_from_the_uri_path(path, expected, monkeypatch):
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    sink = SplunkHttpsSink(URI.parse(f"splunk+https://splunk.example:8088{path}"), SinkOptions())
    assert sink.event_path == expected and sink.ack_path == expected.replace("/event", "/ack")


# -- sending -----------------------------------------------------------------------------------------

def test_a_batch_is_gzipped_with_token_and_channel_and_indexed(hec):
    sink = sink_for(hec)
    items = [sink.encode(r) for r in records(5)]
    assert sink.send(items, META).verdict is Verdict.OK
    assert [e["event"] for e in events(hec)] == [json.loads(i)["event"] for i in items]
    request = hec.store.requests[-1]
    assert request["headers"]["Content-Encoding"] == "gzip"
    assert request["headers"]["Authorization"] == "Splunk ..."
    assert re.fullmatch(r"[0-9a-f-]{36}", request["headers"]["X-Splunk-Request-Channel"])
    assert all(e["sourcetype"] == DEFAULT_SOURCETYPE for e in events(hec))


def test_indexer_acknowledgement(hec):
    hec.store.configure(ack=True, ack_delay=0.2)
    sink = sink_for(hec, ack=1)
    started = time.monotonic()
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    assert time.monotonic() - started >= 0.2                     # not before the indexer said so
    acks = [r for r in hec.store.requests if r["path"].startswith("/services/collector/ack")]
    assert acks and all(r["headers"]["X-Splunk-Request-Channel"] == sink.channel for r in acks)
    assert events(hec)[0]["ackId"] == 0


def test_no_acknowledgement_in_time_sends_the_batch_again(hec):
    hec.store.configure(ack=True)
    sink = sink_for(hec, ack=1, ack_timeout=0.3)
    hec.store.faults.append({"lose": True})
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.RETRY and "no indexer acknowledgement" in answer.reason
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    assert [e["event"] for e in events(hec)] == [SSH_LINE]


def test_ack_asked_of_a_token_without_acknowledgement_stops_the_sink(hec):
    answer = sink_for(hec, ack=1).send([sink_for(hec).encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "indexer acknowledgement" in answer.reason


# HEC's code table: what each answer means for a batch.
CODE_VERDICTS = [(1, Verdict.FAIL), (2, Verdict.FAIL), (3, Verdict.FAIL), (4, Verdict.FAIL), (7, Verdict.FAIL),
                 (8, Verdict.RETRY), (9, Verdict.RETRY), (10, Verdict.FAIL), (11, Verdict.FAIL), (14, Verdict.FAIL),
                 (16, Verdict.FAIL), (18, Verdict.RETRY)]


@pytest.mark.parametrize("code, verdict", CODE_VERDICTS)
def test_every_hec_code_is_classified(hec, code, verdict):
    sink = sink_for(hec)
    hec.store.faults.append({"code": code, "retry_after": 3})
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is verdict
    assert f"code {code}" in answer.reason and hec_receiver.CODES[code][1] in answer.reason
    if code in (1, 2, 3, 4):
        assert "FLOWLOG_SPLUNK_TOKEN" in answer.reason
    if verdict is Verdict.RETRY:
        assert answer.retry_after == 3.0
    assert TOKEN not in answer.reason


def test_token_states_as_hec_answers_them(hec, monkeypatch):
    hec.store.configure(token_disabled=True)
    answer = sink_for(hec).send([sink_for(hec).encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "Token disabled" in answer.reason
    hec.store.configure(token_disabled=False, token="0f0f0f0f-0000-4000-8000-000000000000")
    answer = sink_for(hec).send([sink_for(hec).encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "Invalid token" in answer.reason and "FLOWLOG_SPLUNK_TOKEN" in answer.reason


def test_an_index_the_token_may_not_write_stops_the_sink(hec):
    hec.store.configure(indexes=["main"])
    answer = sink_for(hec, index="secret_index").send([sink_for(hec, index="secret_index").encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "Incorrect index" in answer.reason and "secret_index" in answer.reason
    sink = sink_for(hec, index="main")
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK


@pytest.mark.parametrize("bad, code", [(b'{"event":""}\n', 13), (b'{"time":1}\n', 12), (b'{"event":"x"\n', 6),
                                       (b'{"event":"x","fields":{"a":{"b":1}}}\n', 15)])
def test_an_invalid_event_is_rejected_the_ones_before_delivered_the_ones_after_sent_again(hec, bad, code):
    sink = sink_for(hec)
    good = [sink.encode(r) for r in records(4)]
    answer = sink.send(good[:2] + [bad] + good[2:], META)
    assert answer.verdict is Verdict.OK
    assert list(answer.rejected) == [2] and hec_receiver.CODES[code][1] in answer.rejected[2]
    assert list(answer.pending) == [3, 4]
    assert len(events(hec)) == 2                                  # HEC indexed the events before the bad one
    assert sink.send(good[2:], META).verdict is Verdict.OK
    assert [e["event"] for e in events(hec)] == [json.loads(g)["event"] for g in good]


def test_a_request_too_large_is_split(hec):
    sink = sink_for(hec)
    hec.store.configure(max_content_length=100)
    items = [sink.encode(r) for r in records(3)]
    assert sink.send(items, META).verdict is Verdict.SPLIT
    answer = sink.send(items[:1], META)
    assert answer.verdict is Verdict.OK and "max_content_length" in answer.rejected[0]


def test_a_cut_connection_and_a_server_that_is_down_are_retried(hec):
    sink = sink_for(hec)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    hec.store.faults.append({"cut": True, "count": 2})
    answers = []
    while not answers or answers[-1].verdict is not Verdict.OK:
        answers.append(sink.send([sink.encode(IDLE)], META))
        assert len(answers) < 5
    assert answers[0].verdict is Verdict.RETRY and "connection" in answers[0].reason
    down = SplunkHttpSink(URI.parse(f"splunk+http://127.0.0.1:{harness.free_port()}"), SinkOptions())
    answer = down.send([down.encode(SSH)], META)
    assert answer.verdict is Verdict.RETRY and "connection refused" in answer.reason


def test_tls_verified_by_default_ca_file_and_verify_false(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWLOG_SPLUNK_TOKEN", TOKEN)
    cert, key = harness.tls_files(tmp_path)
    receiver = hec_receiver.serve(token=TOKEN, tls=(cert, key))
    try:
        answer = sink_for(receiver).send([b"{}"], META)
        assert answer.verdict is Verdict.RETRY and "certificate" in answer.reason
        sink = sink_for(receiver, ca_file=cert)
        assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
        sink = sink_for(receiver, verify="false")
        sink.open()
        assert "verification is off" in capsys.readouterr().err
        assert sink.send([sink.encode(IDLE)], META).verdict is Verdict.OK
        assert len(events(receiver)) == 2
    finally:
        receiver.close()


# -- the stand-in keeps to the protocol --------------------------------------------------------------

def test_stand_in_answers_as_hec_does(hec):
    client = HttpClient(hec.url)
    auth = {"Authorization": f"Splunk {TOKEN}"}
    body = b'{"event":"a"}{"event":"b"} {"event":"c"}'
    assert json.loads(client.request("POST", "/services/collector/event", body, auth).body) == \
        {"text": "Success", "code": 0}
    assert len(events(hec)) == 3
    assert json.loads(client.request("POST", "/services/collector/event", body).body)["code"] == 2
    assert json.loads(client.request("POST", "/services/collector/event", body,
                                     {"Authorization": TOKEN}).body)["code"] == 3
    assert client.request("POST", f"/services/collector/event?token={TOKEN}", body).status == 400
    assert json.loads(client.request("POST", "/services/collector/event", b"", auth).body)["code"] == 5
    gz = {**auth, "Content-Encoding": "gzip"}
    assert client.request("POST", "/services/collector/event", gzip.compress(body), gz).status == 200
    assert client.request("POST", "/services/collector/ack", b'{"acks":[0]}', auth).status == 400    # ack off
    hec.store.configure(ack=True, ack_delay=0)
    r = client.request("POST", "/services/collector/event", body, auth)
    assert json.loads(r.body)["code"] == 10                                                           # no channel
    channel = {**auth, "X-Splunk-Request-Channel": str(uuid.uuid4())}
    r = client.request("POST", "/services/collector/event", body, channel)
    assert json.loads(r.body) == {"text": "Success", "code": 0, "ackId": 0}
    r = client.request("POST", "/services/collector/ack", b'{"acks":[0,7]}', channel)
    assert json.loads(r.body) == {"acks": {"0": True, "7": False}}
    r = client.request("POST", "/services/collector/ack", b'{"acks":[0]}', channel)
    assert json.loads(r.body) == {"acks": {"0": False}}                      # reported once, then forgotten
    assert json.loads(client.request("GET", "/services/collector/health").body)["code"] == 17


# -- through the command line --------------------------------------------------------------------------

def _lines(receiver) -> Counter:
    return Counter(e["event"] for e in events(receiver))


def test_capture_to_splunk_delivers_every_record(hec, tmp_path):
    capture = CAPTURES / "dns_fragmented.pcap"
    p = harness.flowlog("capture", "-r", capture, "--to", f"splunk+http://127.0.0.1:{hec.port}?index=main",
                        "--spool", tmp_path / "spool", environ=harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN))
    assert p.returncode == 0, p.stderr
    assert _lines(hec) == Counter(harness.records(capture))
    assert {e["index"] for e in events(hec)} == {"main"}


@pytest.mark.skipif(not REAL_URL, reason="FLOWLOG_TEST_HEC_URL is not set (a real Splunk HEC to send to)")
def test_capture_to_a_real_splunk(tmp_path):
    """Against a real HEC the test can only see that every batch was taken (and acknowledged, with
    ?ack=1 in the URL): reading events back needs Splunk's search API."""
    parts = urlsplit(REAL_URL)
    query = dict(parse_qsl(parts.query))
    uri = f"splunk+{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{urlencode(query)}" if query else "")
    p = harness.flowlog("capture", "-r", CAPTURES / "dns_fragmented.pcap", "--to", uri, "--spool",
                        tmp_path / "spool", "--stats",
                        environ=harness.env(FLOWLOG_SPLUNK_TOKEN=os.environ.get("FLOWLOG_SPLUNK_TOKEN")))
    assert p.returncode == 0, p.stderr


def test_an_event_code_without_a_position_splits_the_batch(hec):
    sink = sink_for(hec)
    hec.store.faults.append({"code": 6})
    assert sink.send([sink.encode(r) for r in records(2)], META).verdict is Verdict.SPLIT


@pytest.mark.skipif(not REAL_URL, reason="FLOWLOG_TEST_HEC_URL is not set (a real Splunk HEC to send to)")
def test_a_wrong_token_against_a_real_splunk(tmp_path):
    parts = urlsplit(REAL_URL)
    uri = f"splunk+{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    wrong = "5d1e0a77-6f0e-4a39-9a1b-1c2d3e4f5a6b"
    p = harness.flowlog("capture", "-r", CAPTURES / "mongodb.pcap", "--to", uri, "--spool", tmp_path / "spool",
                        "--drain-timeout", "10", environ=harness.env(FLOWLOG_SPLUNK_TOKEN=wrong))
    assert p.returncode == 3 and "FLOWLOG_SPLUNK_TOKEN" in p.stderr and wrong not in p.stderr


def test_secrets_appear_nowhere_in_the_output(hec, tmp_path):
    capture = CAPTURES / "mongodb.pcap"
    uri = f"splunk+http://127.0.0.1:{hec.port}"
    p = harness.flowlog("capture", "-r", capture, "--to", uri, "--spool", tmp_path / "s1", "--stats",
                        environ=harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN))
    assert p.returncode == 0, p.stderr
    wrong = "5d1e0a77-6f0e-4a39-9a1b-1c2d3e4f5a6b"
    p2 = harness.flowlog("capture", "-r", capture, "--to", uri, "--spool", tmp_path / "s2", "--stats",
                         "--drain-timeout", "5", environ=harness.env(FLOWLOG_SPLUNK_TOKEN=wrong))
    assert p2.returncode == 3 and "FLOWLOG_SPLUNK_TOKEN" in p2.stderr and "Invalid token" in p2.stderr
    p3 = harness.flowlog("capture", "-r", capture, "--to", f"{uri}?token={TOKEN}", "--spool", tmp_path / "s3",
                         environ=harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN))
    assert p3.returncode == 2 and "FLOWLOG_SPLUNK_TOKEN" in p3.stderr and len(p3.stderr.splitlines()) == 1
    for proc in (p, p2, p3):
        for s in (TOKEN, wrong):
            assert s not in proc.stdout and s not in proc.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes() and wrong.encode() not in f.read_bytes()


def test_receiver_down_at_start_and_up_later(tmp_path):
    if REAL_URL:
        pytest.skip("a server down at start needs the test receiver; FLOWLOG_TEST_HEC_URL points at a real Splunk")
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=5, flows=20)
    expected = Counter(harness.records(capture))
    port = harness.free_port()
    environ = harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN)
    run = harness.start_flowlog("capture", "-r", capture, "--to", f"splunk+http://127.0.0.1:{port}?ack=1",
                                "--spool", tmp_path / "spool", "--drain-timeout", "60", environ=environ)
    time.sleep(1.5)
    assert run.poll() is None
    receiver = harness.start_receiver("hec_receiver", port, "--ack", environ=environ)
    try:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "cannot deliver yet" in err
        got = json.loads(HttpClient(f"http://127.0.0.1:{port}").request("GET", "/_receiver/events").body)["events"]
        assert Counter(e["event"] for e in got) == expected
    finally:
        harness.stop(receiver)


def test_bursts_of_busy_and_server_errors_and_cut_connections(hec, tmp_path):
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=4, flows=30)
    expected = Counter(harness.records(capture))
    hec.store.configure(ack=True)
    hec.store.faults.extend([{"code": 9, "count": 3, "retry_after": 0.05}, {"code": 8, "count": 3},
                             {"code": 18, "count": 2}, {"status": 429, "code": 9, "count": 2},
                             {"cut": True, "count": 3}, {"lose": True, "count": 1}])
    p = harness.flowlog("capture", "-r", capture, "--to", f"splunk+http://127.0.0.1:{hec.port}?ack=1&ack_timeout=0.5",
                        "--spool", tmp_path / "spool", environ=harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN))
    assert p.returncode == 0, p.stderr
    assert not hec.store.faults
    assert _lines(hec) == expected          # the lost batch was sent again, and nothing else twice


def test_sigkill_in_the_middle_of_delivery_then_restart(hec, tmp_path):
    """HEC has no document ids: after a kill, a batch sent but not yet confirmed is sent again.
    Every record is there afterwards; duplicates are limited to batches in flight at the kill and
    the records the restart reads again."""
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=30, flows=20)
    expected = Counter(harness.records(capture))
    hec.store.configure(ack=True, ack_delay=0.1)
    spool = tmp_path / "spool"
    environ = harness.env(FLOWLOG_SPLUNK_TOKEN=TOKEN)
    uri = f"splunk+http://127.0.0.1:{hec.port}?ack=1"
    run = harness.start_flowlog("capture", "-r", capture, "--to", uri, "--spool", spool, environ=environ)
    assert harness.wait_for(lambda: len(events(hec)) >= 60, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait()
    before = _lines(hec)
    assert sum(before.values()) < 600, "killed too late to test anything"
    p = harness.flowlog("spool", "--spool", spool, "retry", environ=environ)
    assert p.returncode == 0, p.stderr
    after = _lines(hec)
    assert set(after) == set(expected)                             # every record
    assert sum(after.values()) <= 600 + 20                          # at most the batch in flight again
