"""The delivery layer: spool, batches, retries, splits, failures, draining, restarts.

Two kinds of tests. In-process ones wrap a scripted :class:`DeliverySink` (its answers are a
function of the batch) in a :class:`Courier` and look at what it sent and what its spool
holds. Subprocess ones run real ``flowlog capture`` processes against a small HTTP receiver
in the test, through the example plugin's ``post+http:`` sink (tests/plugin_example, loaded
with FLOWLOG_PLUGINS): a third-party sink with no spool or retry code of its own, under
faults (receiver down at the start, 429/503/500 bursts, connections cut mid-request,
SIGINT, SIGKILL and a restart). The receiver keeps what it accepted by batch id, so that
the test compares it with the records the same run wrote to stdout.

Backoff is kept short through FLOWLOG_RETRY_BASE / FLOWLOG_RETRY_MAX (and the options).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flowlog.core import synth
from flowlog.core.api import Answer, DeliverySink, SinkOptions, Verdict
from flowlog.core.delivery import Courier, DeliveryOptions, finish, group_records
from flowlog.core.records import V2_FIELDS, Record
from flowlog.core.spool import MAGIC, SinkSpool, dir_name, parse_size, read_batch, scan
from flowlog.core.uri import URI
from flowlog.core.errors import ConfigError

TESTS = Path(__file__).resolve().parent
EXAMPLE = TESTS / "plugin_example"
FAST = dict(retry_base=0.01, retry_max=0.05)
SECRET = "s3cr3t-T0KEN-value"


# --- a scripted sink and records ------------------------------------------------------------------

class ScriptSink(DeliverySink):
    """Answers with ``script(items, meta)``; keeps every call and what was delivered."""

    scheme = "script"
    description = "a scripted sink for tests"
    max_items = 4
    max_bytes = 1 << 20

    def __init__(self, uri, options=None, script=None):
        super().__init__(URI.parse(uri) if isinstance(uri, str) else uri, options or SinkOptions())
        self.script = script or (lambda items, meta: Answer(Verdict.OK))
        self.calls: list[tuple[list[bytes], object, float]] = []
        self.delivered: list[bytes] = []
        self.closed = False

    def encode(self, record) -> bytes:
        return " ".join("-" if v is None else str(v) for v in record.values()).encode()

    def send(self, items, meta):
        self.calls.append((list(items), meta, time.monotonic()))
        answer = self.script(items, meta)
        if answer.verdict is Verdict.OK:
            skip = set(answer.pending) | set(answer.rejected)
            self.delivered += [it for i, it in enumerate(items) if i not in skip]
        return answer

    def close(self):
        self.closed = True


def make_records(windows=3, ifaces=("eth0", "eth1"), flows=5, window=60, t0=1_700_000_000, account="123"):
    out = []
    for w in range(windows):
        start = t0 - t0 % window + w * window
        for iface in ifaces:
            for f in range(flows):
                out.append(Record(account, iface, "10.0.0.1", f"10.0.{w}.{f + 2}", 1000 + f, 443, 6, f + 1,
                                  100 * (f + 1), start, start + window, "ACCEPT", "OK"))
    return out


def lines(records) -> list[bytes]:
    return [ScriptSink("script:x").encode(r) for r in records]


@pytest.fixture
def spool_root(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def courier(spool_root):
    made = []

    def make(sink, **opts) -> Courier:
        stopping = opts.pop("stopping", None)
        window = opts.pop("window", 60)
        messages = []
        c = Courier(sink, DeliveryOptions(spool=spool_root, **{**FAST, **opts}), window=window,
                    warn=messages.append, stopping=stopping)
        c.messages = messages
        c.open()
        made.append(c)
        return c

    yield make
    for c in made:
        if not c._closing:
            c.shut(grace=0.1)


def drained(c: Courier, timeout: float = 10.0):
    [r] = finish([c], timeout, c._warn)
    return r


# --- the spool on its own -------------------------------------------------------------------------

def test_parse_size():
    assert parse_size("500M") == 500 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("64k") == 64 << 10
    assert parse_size("1048576") == 1 << 20
    assert parse_size("1.5K") == 1536
    for bad in ("", "-1", "12Q", "0", "M"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_dir_name_is_readable_and_distinct():
    a = dir_name("es+https://host:9200/flowlogs")
    b = dir_name("es+https://host:9200/flowlogs2")
    assert a.startswith("es-https-host-9200-flowlogs-") and a != b
    assert "/" not in dir_name("file:/../../etc") and dir_name("file:/../../etc")[0] not in "./"
    # a key that holds a credential (a sink that does not refuse one) never shows it
    c = dir_name(f"x+https://user:{SECRET}@host/?token={SECRET}")
    assert SECRET not in c and c != dir_name("x+https://user:other@host/?token=other")


@pytest.mark.parametrize("args, needle", [
    (["--spool-max", "12Q"], "'12Q' is not a size"),
    (["--spool-max", "0"], "must be more than 0 bytes"),
    (["--spool-full", "never"], "'never' is not one of 'wait', 'drop-oldest'"),
    (["--drain-timeout", "-1"], "-1"),
])
def test_bad_delivery_options(args, needle):
    from click.testing import CliRunner

    from flowlog.cli.main import main

    r = CliRunner().invoke(main, ["capture", "-r", str(TESTS / "data" / "captures" / "icmp.pcap"), *args])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output


def test_spool_put_is_atomic_and_reads_back(spool_root):
    sp = SinkSpool(spool_root, "script:a")
    sp.create({"uri": "script:a"})
    header = {"start": 60, "end": 120, "interface_id": "eth0", "account_id": None}
    [e1, e2] = sp.put([(header, [b"one", b"two"]), (dict(header, interface_id="eth1"), [b"\n3\x00"])])
    names = sorted(os.listdir(sp.path))
    assert names == sorted([e1.name, e2.name, "rejected", "sink.json"])    # no temporary file left
    assert e1.order < e2.order and e1.batch_id != e2.batch_id
    assert e1.batch_id.startswith("60-") and e1.batch_id.endswith(str(e1.seq))
    head, items = read_batch(sp.path / e1.name)
    assert items == [b"one", b"two"] and head["batch_id"] == e1.batch_id and head["records"] == 2
    assert read_batch(sp.path / e2.name)[1] == [b"\n3\x00"]
    assert (sp.path / e1.name).read_bytes().startswith(MAGIC)
    assert oct(os.stat(sp.path).st_mode & 0o777) == "0o700"
    # a crash leaves a temporary file (never acknowledged) and a damaged batch: neither is sent
    (sp.path / ".tmp-00000000000000001.batch").write_bytes(b"half")
    damaged = sp.path / e2.name
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"X")
    other = sp.path / "00000000000000007.batch"
    other.write_bytes(b"garbage")
    again = SinkSpool(spool_root, "script:a")
    again.load()
    assert [e.name for e in again.entries] == [e1.name, e2.name]   # the damaged one is caught when read
    assert not (sp.path / ".tmp-00000000000000001.batch").exists()
    assert (sp.path / "rejected" / "00000000000000007.batch.corrupt").exists()
    # sequence numbers keep going up across restarts
    [e3] = again.put([(header, [b"x"])])
    assert e3.seq > e2.seq


# --- batching ------------------------------------------------------------------------------------

def test_batches_are_one_window_and_interface_capped_by_the_sink(courier):
    sink = ScriptSink("script:batches")
    c = courier(sink)
    records = make_records(windows=2, flows=5)
    c.write(records)
    r = drained(c)
    assert r.delivered_records == len(records) == 20 and not r.undelivered
    assert sink.delivered == lines(records)                     # all of them, in order
    metas = [m for _, m, _ in sink.calls]
    assert [m.records for m in metas] == [4, 1] * 4              # max_items = 4
    for items, m, _ in sink.calls:
        got = [bytes(i).split() for i in items]
        assert {(g[2].decode(), int(g[10]), int(g[11])) for g in got} == {(m.interface_id, m.start, m.end)}
        assert m.account_id == "123" and m.attempt == 1
    assert len({m.batch_id for m in metas}) == len(metas)
    assert sink.closed


def test_max_bytes_caps_a_batch(courier):
    sink = ScriptSink("script:bytes")
    sink.max_items = 1000
    sink.max_bytes = 200
    c = courier(sink)
    records = make_records(windows=1, ifaces=("eth0",), flows=10)
    c.write(records)
    drained(c)
    assert all(sum(len(i) for i in items) <= 200 for items, _, _ in sink.calls)
    assert len(sink.calls) > 1 and sink.delivered == lines(records)


def test_group_records_nodata_spans_and_first_last():
    nodata = Record("1", "eth0", start=60, end=300, log_status="NODATA")
    flow = Record("1", "eth0", "10.0.0.1", "10.0.0.2", 1, 2, 17, 1, 40, 125, 130, "ACCEPT", "OK")
    groups = group_records([nodata, flow], 60)
    assert [k for k, _ in groups] == [(60, 300, "eth0"), (120, 180, "eth0")]


# --- answers ---------------------------------------------------------------------------------------

def test_partial_answer_pending_and_rejected(courier, spool_root):
    first = {}

    def script(items, meta):
        if not first:
            first["id"] = meta.batch_id
            return Answer(Verdict.OK, reason="some throttled", pending=[1, 3], rejected={2: "mapping error: bad ip"})
        return Answer(Verdict.OK)

    sink = ScriptSink("script:partial", script=script)
    c = courier(sink)
    records = make_records(windows=1, ifaces=("eth0",), flows=4)
    c.write(records)
    r = drained(c)
    items = lines(records)
    assert sorted(sink.delivered) == sorted(items[:2] + items[3:])
    retried = sink.calls[1]
    assert retried[0] == [items[1], items[3]]
    assert retried[1].batch_id != first["id"] and retried[1].batch_id.startswith(first["id"])
    assert (r.delivered_records, r.rejected_records, r.retries, r.pending_batches) == (3, 1, 1, 0)
    assert r.undelivered            # a refused record: exit status 3
    rej = list((c.spool.path / "rejected").iterdir())
    assert len(rej) == 1
    head, got = read_batch(rej[0])
    assert got == [items[2]] and head["reasons"] == ["mapping error: bad ip"]
    assert any("refused 1 record" in m and "mapping error" in m for m in c.messages)
    [d] = scan(spool_root)
    assert d.spool.rejected().records == 1


def test_split_halves_a_batch_and_rejects_a_lone_bad_item(courier):
    records = make_records(windows=1, ifaces=("eth0",), flows=4)
    poison = lines(records)[2]

    def script(items, meta):
        if poison in items:
            return Answer(Verdict.SPLIT, reason="one bad document")
        return Answer(Verdict.OK)

    sink = ScriptSink("script:split", script=script)
    c = courier(sink)
    c.write(records)
    r = drained(c)
    ids = [m.batch_id for _, m, _ in sink.calls]
    base = ids[0]
    assert ids[1:] == [base + ".0", base + ".1", base + ".1.0", base + ".1.1"]
    assert sorted(sink.delivered) == sorted(i for i in lines(records) if i != poison)
    assert (r.delivered_records, r.rejected_records, r.pending_batches) == (3, 1, 0)
    [rej] = list((c.spool.path / "rejected").iterdir())
    assert read_batch(rej) [1] == [poison] and read_batch(rej)[0]["reasons"] == ["one bad document"]


def test_fail_stops_the_sink_and_keeps_its_batches(courier, spool_root):
    sink = ScriptSink("script:fail", script=lambda items, meta: Answer(Verdict.FAIL, "HTTP 401: bad credentials"))
    c = courier(sink)
    records = make_records(windows=2)
    c.write(records)
    r = drained(c, timeout=5)
    assert r.failed == "HTTP 401: bad credentials"
    assert len(sink.calls) == 1                                  # stopped at once, no retry
    assert (r.pending_batches, r.pending_records) == (8, len(records))
    assert [m for m in c.messages if "stopped" in m] == [
        f"sink script:fail: stopped: HTTP 401: bad credentials; its batches stay in the spool ({c.spool.path}) "
        f"for 'flowlog spool retry'"]
    [d] = scan(spool_root)
    assert sum(e.records for e in d.spool.entries) == len(records)
    # a later run with a sink that works sends them, oldest first
    sink2 = ScriptSink("script:fail")
    c2 = Courier(sink2, DeliveryOptions(spool=spool_root, **FAST))
    c2.open()
    assert c2.report.resumed_batches == 8
    r2 = drained(c2)
    assert sink2.delivered == lines(records) and not r2.undelivered


def test_a_damaged_batch_is_set_aside_and_the_others_go(courier, spool_root):
    down = ScriptSink("script:damaged", script=lambda items, meta: Answer(Verdict.RETRY, "down"))
    c = courier(down)
    records = make_records(windows=3, ifaces=("eth0",), flows=2)
    c.write(records)
    finish([c], 0)
    entries = list(c.spool.entries)
    assert len(entries) == 3
    bad = c.spool.path / entries[1].name
    bad.write_bytes(bad.read_bytes().replace(b"10.0.1.", b"10.9.1."))      # a flipped byte on disk
    sink = ScriptSink("script:damaged")
    c2 = courier(sink)
    r = drained(c2)
    items = lines(records)
    assert sink.delivered == items[:2] + items[4:]
    assert (c2.spool.path / "rejected" / (entries[1].name + ".corrupt")).exists()
    assert any("could not be read (its items do not match their checksum)" in m for m in c2.messages)
    assert r.pending_batches == 0 and r.rejected_records == 2 and r.undelivered     # said, and exit status 3


def test_exception_in_send_is_retried_and_reported_once_without_its_text(courier):
    calls = []

    def script(items, meta):
        calls.append(meta.attempt)
        if len(calls) <= 3:
            raise RuntimeError(f"token={SECRET}")
        return Answer(Verdict.OK)

    sink = ScriptSink("script:bug", script=script)
    c = courier(sink)
    c.write(make_records(windows=1, ifaces=("eth0",), flows=2))
    r = drained(c)
    assert calls == [1, 2, 3, 4] and r.delivered_records == 2 and r.retries == 3
    bugs = [m for m in c.messages if "raised by" in m]
    assert len(bugs) == 1 and "raised by the plugin's send()" in bugs[0] and "test_delivery.py" in bugs[0]
    assert not any(SECRET in m for m in c.messages)


def test_backoff_grows_and_honours_retry_after(courier):
    answers = iter([Answer(Verdict.RETRY, "busy")] * 4 + [Answer(Verdict.RETRY, "429", retry_after=0.4)]
                   + [Answer(Verdict.OK)])
    sink = ScriptSink("script:backoff", script=lambda items, meta: next(answers))
    c = courier(sink, retry_base=0.02, retry_max=0.1)
    c.write(make_records(windows=1, ifaces=("eth0",), flows=1))
    r = drained(c)
    times = [t for _, _, t in sink.calls]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 5 and r.retries == 5 and r.delivered_records == 1
    assert all(g < 0.1 + 0.4 for g in gaps[:4])         # full jitter under the cap (with slack for a busy machine)
    assert gaps[4] >= 0.4                               # Retry-After wins over a shorter backoff
    assert [m.attempt for _, m, _ in sink.calls] == [1, 2, 3, 4, 5, 6]
    msgs = [m for m in c.messages if "cannot deliver" in m or "delivering again" in m]
    assert msgs == ["warning: sink script:backoff: cannot deliver yet (busy); retrying, the batches wait in the spool",
                    "warning: sink script:backoff: delivering again"]


def test_a_dead_sink_does_not_delay_a_live_one(courier):
    release = threading.Event()

    def hang(items, meta):
        release.wait(10)
        return Answer(Verdict.RETRY, "timed out")

    dead = ScriptSink("script:dead", script=hang)
    live = ScriptSink("script:live")
    cd, cl = courier(dead), courier(live)
    records = make_records(windows=3)
    started = time.monotonic()
    for k in range(3):                      # three emissions, to both
        part = records[k * 10:(k + 1) * 10]
        cd.write(part)
        cl.write(part)
    assert time.monotonic() - started < 2    # writing only spools
    rl = drained(cl, timeout=5)
    assert time.monotonic() - started < 3
    assert live.delivered == lines(records) and rl.delivered_records == len(records) == 30
    [rd] = finish([cd], 0.2)
    release.set()
    assert rd.pending_records == len(records) and rd.delivered_records == 0


# --- a full spool --------------------------------------------------------------------------------

def _one_batch_size(spool_root, key="script:size") -> int:
    sink = ScriptSink(key, script=lambda items, meta: Answer(Verdict.RETRY, "down"))
    c = Courier(sink, DeliveryOptions(spool=spool_root / "probe", **FAST))
    c.open()
    c.write(make_records(windows=1, ifaces=("eth0",), flows=4))
    size = c.spool.bytes
    c.shut(0.1)
    return size


def test_drop_oldest_keeps_the_newest_and_counts_what_went(courier, spool_root):
    size = _one_batch_size(spool_root)
    sink = ScriptSink("script:drop", script=lambda items, meta: Answer(Verdict.RETRY, "down"))
    c = courier(sink, spool_max=int(size * 3.5), spool_full="drop-oldest")
    emissions = [make_records(windows=1, ifaces=("eth0",), flows=4, t0=1_700_000_000 + 60 * k) for k in range(8)]
    for e in emissions:
        c.write(e)
        assert c.spool.bytes <= size * 3.5
    r = finish([c], 0)[0]
    kept = {e.start for e in c.spool.entries}
    newest = {emissions[k][0].start for k in range(5, 8)}
    assert newest <= kept and len(c.spool.entries) == 3
    assert r.dropped_records == 4 * 8 - r.pending_records > 0 and r.undelivered
    assert sum("the oldest batches are dropped" in m for m in c.messages) == 1


def test_wait_policy_blocks_until_delivery_makes_room(courier, spool_root):
    size = _one_batch_size(spool_root)

    def slow(items, meta):
        time.sleep(0.03)
        return Answer(Verdict.OK)

    sink = ScriptSink("script:wait", script=slow)
    c = courier(sink, spool_max=int(size * 2.5))
    emissions = [make_records(windows=1, ifaces=("eth0",), flows=4, t0=1_700_000_000 + 60 * k) for k in range(10)]
    peak = 0
    for e in emissions:
        c.write(e)
        peak = max(peak, c.spool.bytes)
    r = drained(c)
    assert peak <= size * 2.5
    assert r.dropped_records == 0 and r.delivered_records == 40 and not r.undelivered
    assert sink.delivered == [i for e in emissions for i in lines(e)]


def test_wait_policy_does_not_wait_for_a_stopped_sink(courier, spool_root):
    size = _one_batch_size(spool_root)
    sink = ScriptSink("script:stopped", script=lambda items, meta: Answer(Verdict.FAIL, "no such index"))
    c = courier(sink, spool_max=int(size * 2.5))
    started = time.monotonic()
    for k in range(6):
        c.write(make_records(windows=1, ifaces=("eth0",), flows=4, t0=1_700_000_000 + 60 * k))
        time.sleep(0.02)
    assert time.monotonic() - started < 3
    r = finish([c], 0)[0]
    assert r.failed == "no such index" and r.pending_batches == 2 and r.dropped_records == 16
    assert any("records dropped: the spool is full and the sink has stopped" in m for m in c.messages)


def test_same_spool_twice_is_refused(spool_root):
    a = Courier(ScriptSink("script:twice"), DeliveryOptions(spool=spool_root))
    a.open()
    try:
        b = Courier(ScriptSink("script:twice"), DeliveryOptions(spool=spool_root))
        with pytest.raises(Exception, match="in use by another flowlog process"):
            b.open()
    finally:
        a.shut(0.1)


def test_default_spool_root(monkeypatch, tmp_path):
    from flowlog.core.spool import default_root

    monkeypatch.setenv("FLOWLOG_SPOOL", str(tmp_path / "a"))
    assert default_root() == tmp_path / "a"
    monkeypatch.delenv("FLOWLOG_SPOOL")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_root() == tmp_path / "state" / "flowlog" / "spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "state" / "flowlog" / "spool"


def test_bad_backoff_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv("FLOWLOG_RETRY_BASE", "soon")
    with pytest.raises(ConfigError, match="FLOWLOG_RETRY_BASE"):
        DeliveryOptions().backoff()


# --- a tiny HTTP receiver ----------------------------------------------------------------------------

class Receiver:
    """Takes POSTed JSON Lines batches; ``plan(n)`` says what the n-th request (from 0) gets:
    ``"ok"``, an HTTP status (int), ``(status, retry_after)``, ``"cut"`` (connection reset after
    reading half the body), or ``("slow", seconds)`` (then ok)."""

    def __init__(self, port: int = 0, plan=None):
        self.plan = plan or (lambda n: "ok")
        self.accepted: dict[str, list[str]] = {}
        self.log: list[tuple[str, int, object]] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                with receiver.lock:
                    n = len(receiver.log)
                    action = receiver.plan(n)
                    receiver.log.append((self.headers.get("X-Batch-Id"), int(self.headers.get("X-Attempt", 0)),
                                         action))
                    receiver.headers.append(dict(self.headers))
                if action == "cut":
                    self.rfile.read(length // 2)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                body = self.rfile.read(length)
                if isinstance(action, tuple) and action[0] == "slow":
                    time.sleep(action[1])
                    action = "ok"
                if action == "ok":
                    items = [json.loads(line) for line in body.split(b"\n")]
                    text = [" ".join("-" if it[f] is None else str(it[f]) for f in V2_FIELDS) for it in items]
                    with receiver.lock:
                        bid = self.headers["X-Batch-Id"]
                        if bid in receiver.accepted:
                            assert receiver.accepted[bid] == text, "one batch id, two contents"
                        receiver.accepted[bid] = text
                    self._answer(200, b"{}")
                    return
                status, retry_after = action if isinstance(action, tuple) else (action, None)
                self._answer(status, b'{"error": "planned"}', retry_after)

            def _answer(self, status, body, retry_after=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def records(self) -> list[str]:
        with self.lock:
            return [line for batch in self.accepted.values() for line in batch]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def receivers():
    made = []

    def make(port=0, plan=None) -> Receiver:
        r = Receiver(port, plan)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def flowlog_env(spool: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWLOG_LOAD_PLUGINS",)}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])),
               FLOWLOG_PLUGINS="flowlog_example_plugin", FLOWLOG_LOAD_PLUGINS="", FLOWLOG_SPOOL=str(spool),
               FLOWLOG_RETRY_BASE="0.02", FLOWLOG_RETRY_MAX="0.2", POST_SINK_TOKEN=SECRET, POST_SINK_MAX_ITEMS="3")
    env.update(extra)
    return env


def flowlog(*args, env, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """Two named interfaces, 12 windows of 10 s, a few flows each: about 60 records."""
    path = tmp_path_factory.mktemp("cap") / "two.pcapng"
    t0 = 1_700_000_000
    packets = []
    for i in range(240):
        iface = i % 2
        t = t0 + i * 0.5
        frame = synth.packet("10.0.0.1", f"10.0.{iface}.{2 + i % 3}", 17, 1000 + i % 3, 53, size=40 + i)
        packets.append((iface, int(t * 1_000_000), frame))
    synth.write_pcapng(path, [("eth0", 1, None), ("eth1", 1, None)], packets)
    return path


def expected_records(capture: Path, env) -> list[str]:
    p = flowlog("capture", "-r", capture, "--window", "10", env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def assert_no_secret(*texts):
    for t in texts:
        assert SECRET not in t


def assert_spool_clean_of_secrets(spool: Path):
    for f in spool.rglob("*"):
        if f.is_file() and f.name != "lock":
            assert SECRET.encode() not in f.read_bytes(), f


# --- real runs -------------------------------------------------------------------------------------

def test_plugin_module_from_flowlog_plugins_env(tmp_path):
    p = flowlog("plugins", "--json", env=flowlog_env(tmp_path / "spool"))
    assert p.returncode == 0, p.stderr
    rows = {r["scheme"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert rows["post+http:"]["origin"] == "FLOWLOG_PLUGINS"
    assert rows["post+http:"]["name"] == "flowlog_example_plugin"
    p = flowlog("plugins", env=flowlog_env(tmp_path / "spool", FLOWLOG_PLUGINS="no_such_module_here"))
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "flowlog: error: plugin module 'no_such_module_here' named in FLOWLOG_PLUGINS failed to load "
        "(ModuleNotFoundError: No module named 'no_such_module_here'); fix it or leave it out of FLOWLOG_PLUGINS"]


def test_a_secret_in_the_uri_is_refused(tmp_path, receivers):
    p = flowlog("capture", "-r", TESTS / "data" / "captures" / "icmp.pcap",
                "--to", f"post+http://127.0.0.1:9/x?token={SECRET}", env=flowlog_env(tmp_path / "spool"))
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and "POST_SINK_TOKEN" in p.stderr
    assert_no_secret(p.stderr)


def test_faults_down_at_start_bursts_and_cuts_then_everything_arrives(tmp_path, receivers, capture):
    spool = tmp_path / "spool"
    env = flowlog_env(spool)
    expected = expected_records(capture, env)
    port = free_port()
    script = ([(429, 0.05)] * 3 + [503] * 2 + ["ok", "cut", 500, 500, "ok", "cut", (503, 0.1), "ok", 502]
              + ["ok", 500] * 5)
    plan = lambda n: script[n] if n < len(script) else "ok"
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(capture), "--window", "10",
                             "--to", f"post+http://127.0.0.1:{port}/ingest", "--to", "stdout:", "--stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.8)                           # the receiver is down: connections refused meanwhile
    rec = receivers(port, plan)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == expected
    assert collections.Counter(rec.records()) == collections.Counter(expected)
    assert len(rec.log) >= len(script)          # every planned fault was met
    assert "connection refused" in err          # said once, while it was down
    assert err.count("cannot deliver yet") <= err.count("delivering again") + 1
    stats = {}
    for line in err.splitlines():
        if not line.startswith("flowlog:") and line.strip():
            k, _, v = line.strip().rpartition("  ")
            stats[k.strip()] = v.strip()
    assert stats["delivered records"] == str(len(expected))
    assert stats["waiting in the spool: records"] == "0" and int(stats["retries"]) >= 10
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h in rec.headers)
    assert_no_secret(out, err)
    assert_spool_clean_of_secrets(spool)


@pytest.mark.parametrize("restart", ["capture", "spool retry"])
def test_sigkill_mid_delivery_then_restart_delivers_every_record(tmp_path, receivers, capture, restart):
    spool = tmp_path / "spool"
    env = flowlog_env(spool)
    expected = expected_records(capture, env)
    rec = receivers(plan=lambda n: ("slow", 0.05))
    uri = f"post+http://127.0.0.1:{rec.port}/ingest"
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(capture), "--window", "10",
                             "--to", uri, "--to", "stdout:"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
    got = []
    while len(got) < len(expected):              # stdout comes after the spool: all records are spooled
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        got.append(line.decode().rstrip("\n"))
    assert got == expected
    deadline = time.monotonic() + 20
    while not rec.records() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    sent = len(rec.records())
    assert 0 < sent < len(expected), "the kill should land in the middle of the delivery"
    listed = flowlog("spool", "list", "--json", env=env)
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["sink"] == uri and row["records"] >= len(expected) - sent
    rec.plan = lambda n: "ok"
    if restart == "capture":
        empty = tmp_path / "empty.pcap"
        synth.write_pcap(empty, [])
        p = flowlog("capture", "-r", empty, "--to", uri, "--stats", env=env)
        assert "batches from an earlier run" in p.stderr
    else:
        p = flowlog("spool", "retry", env=env)
        assert f"sink {uri}: delivered " in p.stderr
    assert p.returncode == 0, p.stderr
    counted = collections.Counter(rec.records())
    assert counted == collections.Counter(expected)
    assert flowlog("spool", "list", "--json", env=env).stdout.splitlines() == [json.dumps(dict(
        row, batches=0, records=0, bytes=0, oldest_window=None))]


def test_sigint_drains_for_the_timeout_then_leaves_the_rest(tmp_path, receivers):
    """--follow runs until a signal; the receiver answers 503 throughout: after SIGINT the windows are
    flushed into the spool, the drain waits --drain-timeout, says what stays, and the exit status is 3."""
    spool = tmp_path / "spool"
    env = flowlog_env(spool, FLOWLOG_NO_JIT="1")     # no compiled kernels to load before a live run
    ring = tmp_path / "ring"
    ring.mkdir()
    now = time.time()
    synth.write_pcap(ring / "eth0.pcap", [(now - 30 + i * 0.25, synth.packet("10.0.0.1", "10.0.0.2", 17, 1 + i % 4, 53))
                                          for i in range(100)])
    rec = receivers(plan=lambda n: (503, 0.05))
    uri = f"post+http://127.0.0.1:{rec.port}/ingest"
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "--follow", str(ring), "--window", "1",
                             "--lateness", "0",
                             "--to", uri, "--to", "stdout:", "--drain-timeout", "1", "--stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
    first = proc.stdout.readline().decode()
    assert first.startswith("2 "), proc.stderr.read()
    deadline = time.monotonic() + 10
    while len(rec.log) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(rec.log) >= 2
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = (x.decode() for x in proc.communicate(timeout=30))
    took = time.monotonic() - started
    assert proc.returncode == 3, err
    assert 0.9 <= took < 6
    records = [first.rstrip("\n")] + out.splitlines()
    stays = [l for l in err.splitlines() if "stay in the spool" in l]
    assert len(stays) == 1 and f"sink {uri}:" in stays[0]
    n = int(re.search(r"\((\d+) record", stays[0]).group(1))
    assert n == len(records)                      # nothing was taken: every record waits
    assert "Traceback" not in err
    assert_no_secret(out, err)
    listed = flowlog("spool", env=env)
    assert listed.returncode == 0 and uri in listed.stdout
    rec.plan = lambda n: "ok"
    p = flowlog("spool", "retry", uri, env=env)
    assert p.returncode == 0, p.stderr
    assert collections.Counter(rec.records()) == collections.Counter(records)


def test_a_failed_sink_does_not_stop_the_run_exit_3(tmp_path, receivers, capture):
    spool = tmp_path / "spool"
    env = flowlog_env(spool)
    rec = receivers(plan=lambda n: 401)
    uri = f"post+http://127.0.0.1:{rec.port}/x"
    out = tmp_path / "out.log"
    p = flowlog("capture", "-r", capture, "--window", "10", "--to", uri, "--to", f"file:{out}", env=env)
    assert p.returncode == 3
    expected = expected_records(capture, env)
    assert out.read_text().splitlines() == expected          # the other sink got everything
    assert sum("stopped: HTTP 401" in l for l in p.stderr.splitlines()) == 1
    assert any("stay in the spool" in l for l in p.stderr.splitlines())
    assert len(rec.log) == 1
    assert_no_secret(p.stderr)


def test_spool_commands(tmp_path, receivers, capture):
    spool = tmp_path / "spool"
    env = flowlog_env(spool)
    rec = receivers(plan=lambda n: 503)
    uri = f"post+http://127.0.0.1:{rec.port}/ingest"
    p = flowlog("capture", "-r", capture, "--window", "10", "--to", uri, "--drain-timeout", "0", env=env)
    assert p.returncode == 3
    n = len(expected_records(capture, env))
    p = flowlog("spool", "--spool", spool, env={**env, "FLOWLOG_SPOOL": "/nonexistent"})
    assert p.returncode == 0, p.stderr
    header, rule, row = p.stdout.splitlines()
    assert header.split()[:5] == ["sink", "directory", "batches", "records", "bytes"]
    assert row.split()[0] == uri and row.split()[3] == str(n)
    assert row.split()[5] == "2023-11-14T22:13:20Z"       # the oldest window
    # drop asks first
    p = flowlog("spool", "drop", uri, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "add --yes" in p.stderr and f"({n} record(s)) waiting" in p.stderr
    p = flowlog("spool", "drop", "nope", env=env)
    assert p.returncode == 2 and p.stderr.startswith("flowlog: error: no sink 'nope' in the spool")
    dirname = json.loads(flowlog("spool", "list", "--json", env=env).stdout)["directory"]
    p = flowlog("spool", "drop", dirname, "--yes", env=env)
    assert p.returncode == 0 and "deleted" in p.stderr
    assert json.loads(flowlog("spool", "list", "--json", env=env).stdout)["records"] == 0
    p = flowlog("spool", "retry", env=env)
    assert p.returncode == 0 and "nothing waits" in p.stderr


def test_run_in_process_with_delivery_and_stdout(tmp_path, capture, capsys):
    """The Run wraps DeliverySinks itself; its result has the delivery summary and status 3 on leftovers."""
    from flowlog.core.api import ListSink
    from flowlog.core.run import Run, RunOptions
    from flowlog.plugins.pcap import PcapSource

    sink = ScriptSink("script:run", script=lambda items, meta: Answer(Verdict.OK))
    listed = ListSink()
    run = Run([PcapSource(URI.parse(f"pcap:{capture}"))], [sink, listed],
              RunOptions(window=10, delivery=DeliveryOptions(spool=tmp_path / "spool", **FAST)))
    result = run.run()
    assert [sink.encode(r) for r in listed.records] == sink.delivered
    [d] = result.delivery
    assert d.sink == "script:run" and d.delivered_records == len(listed.records) and result.status == 0

    down = ScriptSink("script:run2", script=lambda items, meta: Answer(Verdict.RETRY, "down"))
    run = Run([PcapSource(URI.parse(f"pcap:{capture}"))], [down],
              RunOptions(window=10, delivery=DeliveryOptions(spool=tmp_path / "spool", drain_timeout=0.2, **FAST)))
    result = run.run()
    assert result.status == 3 and result.delivery[0].pending_records == len(listed.records)
