"""The es+https / es+http sinks against an Elasticsearch stand-in (tests/receivers/es_receiver.py).

FLOWLOG_TEST_ES_URL=https://HOST:9200 (credentials in FLOWLOG_ES_API_KEY or
FLOWLOG_ES_USER/FLOWLOG_ES_PASSWORD; ``?ca=PATH`` or ``?verify=false`` may follow the URL)
points the tests that need no fault injection at a real Elasticsearch or OpenSearch; the
others skip, saying why.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from flowlog.core.api import BatchMeta, ListSink, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.http import HttpClient, client_options
from flowlog.core.records import Record
from flowlog.core.run import Run, RunOptions
from flowlog.core.uri import URI
from flowlog.plugins.es import EsHttpsSink, EsHttpSink, document_id, ecs_document
from flowlog.plugins.pcap import PcapSource

HERE = Path(__file__).resolve().parent


def _load_harness():
    name = "flowlog_tests_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "receivers" / "harness.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


harness = _load_harness()
es_receiver = harness.load("es_receiver")

REAL_URL = os.environ.get("FLOWLOG_TEST_ES_URL")
CAPTURES = HERE / "data" / "captures"
CREDENTIAL_ENV = ("FLOWLOG_ES_API_KEY", "FLOWLOG_ES_USER", "FLOWLOG_ES_PASSWORD")
META = BatchMeta("b-1", 1418530000, 1418530060, "eni-1", "123", 0)

SSH = Record("1251762227", "eni-lq6mkcis", "172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249,
             1418530010, 1418530070, "ACCEPT", "OK", tcp_flags=0x1B, flow_direction="egress", type="IPv4",
             first_seen=(1418530011, 250_000_000), last_seen=(1418530069, 999_999_999))
PING = Record("1251762227", "eni-lq6mkcis", "2001:db8::1", "2001:db8::2", 7, 32768, 58, 4, 416,
              1418530010, 1418530070, "REJECT", "OK", type="IPv6", first_seen=(1418530012, 0),
              last_seen=(1418530013, 1))
IDLE = Record("1251762227", "eni-lq6mkcis", start=1431280876, end=1431280934, log_status="NODATA")
SKIP = Record(None, "eni-lq6mkcis", packets=12, bytes=None, start=1431280876, end=1431280934, log_status="SKIPDATA")


class Target:
    """Where the tests write: the stand-in (``receiver`` set), or a real cluster (FLOWLOG_TEST_ES_URL)."""

    def __init__(self, url: str, receiver=None):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.netloc = parts.netloc
        self.query = dict(parse_qsl(parts.query))
        self.receiver = receiver
        self.client = HttpClient(f"{parts.scheme}://{parts.netloc}",
                                 **client_options(self.query, "FLOWLOG_TEST_ES_URL", https=self.https))
        self.created: list[str] = []

    @property
    def real(self) -> bool:
        return self.receiver is None

    def need_receiver(self, why: str = "fault injection") -> None:
        if self.real:
            pytest.skip(f"{why} needs the test receiver; FLOWLOG_TEST_ES_URL points at a real service")

    def index(self, prefix: str = "flowlog-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.created.append(name)
        return name

    def uri(self, index: str, **options) -> str:
        q = {**self.query, **options}
        return f"es+{'https' if self.https else 'http'}://{self.netloc}/{index}" + (f"?{urlencode(q)}" if q else "")

    def sink(self, index: str, **options):
        uri = URI.parse(self.uri(index, **options))
        return (EsHttpsSink if self.https else EsHttpSink)(uri, SinkOptions())

    def call(self, method: str, path: str, body=None):
        headers = {"Accept": "application/json"}
        key, user = os.environ.get("FLOWLOG_ES_API_KEY"), os.environ.get("FLOWLOG_ES_USER")
        if self.real and key:
            headers["Authorization"] = "ApiKey " + (base64.b64encode(key.encode()).decode() if ":" in key else key)
        elif self.real and user:
            basic = base64.b64encode(f"{user}:{os.environ.get('FLOWLOG_ES_PASSWORD', '')}".encode()).decode()
            headers["Authorization"] = "Basic " + basic
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/x-ndjson" if isinstance(body, bytes) else "application/json"
        r = self.client.request(method, path, data, headers)
        return r.status, (json.loads(r.body) if r.body.strip() else None)

    def docs(self, index: str) -> list[dict]:
        """Every document of an index or data stream, read back with _refresh and _search."""
        self.call("POST", f"/{index}/_refresh")
        status, answer = self.call("GET", f"/{index}/_search?size=10000")
        if status == 404:
            return []
        assert status == 200, answer
        return [h["_source"] for h in answer["hits"]["hits"]]

    def ids(self, index: str) -> list[str]:
        self.call("POST", f"/{index}/_refresh")
        status, answer = self.call("GET", f"/{index}/_search?size=10000")
        return [h["_id"] for h in answer["hits"]["hits"]] if status == 200 else []

    def fault(self, *specs) -> None:
        self.need_receiver()
        self.receiver.store.faults.extend(dict(s) for s in specs)

    def cleanup(self) -> None:
        for name in self.created:
            self.call("DELETE", f"/_data_stream/{name}")
            self.call("DELETE", f"/{name}")
        self.call("DELETE", "/_index_template/flowlog-test-ds")


@pytest.fixture
def es(monkeypatch):
    if REAL_URL:
        target = Target(REAL_URL)
        yield target
        target.cleanup()
        return
    for k in CREDENTIAL_ENV:
        monkeypatch.delenv(k, raising=False)
    receiver = es_receiver.serve()
    try:
        yield Target(receiver.url, receiver)
    finally:
        receiver.close()


def need_stand_in(why: str = "fault injection") -> None:
    if REAL_URL:
        pytest.skip(f"{why} needs the test receiver; FLOWLOG_TEST_ES_URL points at a real service "
                    f"(unset it to run this test against the receiver)")


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in alone, for what only it can do (server kinds, faults, credentials it demands)."""
    need_stand_in("a configured or faulty server")
    for k in CREDENTIAL_ENV:
        monkeypatch.delenv(k, raising=False)
    receiver = es_receiver.serve()
    try:
        yield receiver
    finally:
        receiver.close()


def sink_for(receiver, index="flowlogs", **options):
    q = f"?{urlencode(options)}" if options else ""
    scheme = "es+https" if receiver.url.startswith("https") else "es+http"
    cls = EsHttpsSink if scheme == "es+https" else EsHttpSink
    return cls(URI.parse(f"{scheme}://{receiver.url.split('://')[1]}/{index}{q}"), SinkOptions())


def capture_records(*names) -> list[Record]:
    sink = ListSink()
    Run([PcapSource(URI.parse(f"pcap:{CAPTURES / n}")) for n in names], [sink], RunOptions()).run()
    return sink.records


# -- documents ---------------------------------------------------------------------------------------

def test_a_record_becomes_a_create_action_and_an_ecs_document():
    sink = EsHttpSink(URI.parse("es+http://127.0.0.1:9/flowlogs"), SinkOptions())
    action, doc, tail = sink.encode(SSH).split(b"\n")
    assert tail == b""
    assert json.loads(action) == {"create": {"_id": document_id(SSH)}}
    d = json.loads(doc)
    assert d["@timestamp"] == "2014-12-14T04:06:50Z"           # the window start
    assert d["message"] == ("2 1251762227 eni-lq6mkcis 172.31.16.139 172.31.16.21 20641 22 6 20 4249 "
                            "1418530010 1418530070 ACCEPT OK")
    assert d["source"] == {"address": "172.31.16.139", "ip": "172.31.16.139", "port": 20641, "packets": 20,
                           "bytes": 4249}
    assert d["destination"] == {"address": "172.31.16.21", "ip": "172.31.16.21", "port": 22}
    assert d["network"] == {"iana_number": "6", "transport": "tcp", "type": "ipv4", "packets": 20, "bytes": 4249,
                            "direction": "egress"}
    assert d["event"]["action"] == "accept" and d["event"]["outcome"] == "success"
    assert d["event"]["start"] == "2014-12-14T04:06:50Z" and d["event"]["end"] == "2014-12-14T04:07:50Z"
    assert d["event"]["category"] == ["network"] and d["event"]["type"] == ["connection", "allowed"]
    assert d["cloud"] == {"account": {"id": "1251762227"}}
    assert d["related"] == {"ip": ["172.31.16.139", "172.31.16.21"]}
    f = d["flowlog"]
    assert (f["version"], f["account-id"], f["interface-id"], f["srcport"], f["dstport"], f["protocol"],
            f["packets"], f["bytes"], f["start"], f["end"], f["action"], f["log-status"], f["tcp-flags"]) == \
        (2, "1251762227", "eni-lq6mkcis", 20641, 22, 6, 20, 4249, 1418530010, 1418530070, "ACCEPT", "OK", 0x1B)
    assert f["first-seen"] == "2014-12-14T04:06:51.250000000Z"
    assert f["last-seen"] == "2014-12-14T04:07:49.999999999Z"


def test_icmp_reject_ipv6_nodata_and_skipdata_documents():
    ping = ecs_document(PING, "m")
    assert ping["network"]["transport"] == "ipv6-icmp" and ping["network"]["type"] == "ipv6"
    assert "port" not in ping["source"] and "port" not in ping["destination"]    # identifier and type/code
    assert ping["flowlog"]["srcport"] == 7 and ping["flowlog"]["dstport"] == 32768
    assert ping["event"]["action"] == "reject" and ping["event"]["outcome"] == "failure"
    assert ping["event"]["type"] == ["connection", "denied"]
    idle = ecs_document(IDLE, "m")
    assert idle["@timestamp"] == "2015-05-10T18:01:16Z" and idle["event"]["type"] == ["info"]
    assert "source" not in idle and "network" not in idle and "action" not in idle["event"]
    assert idle["flowlog"]["log-status"] == "NODATA" and "srcaddr" not in idle["flowlog"]
    skip = ecs_document(SKIP, "m")
    assert skip["network"] == {"packets": 12} and "cloud" not in skip


def test_document_ids_are_stable_and_tell_every_field_apart():
    assert document_id(SSH) == document_id(Record(*SSH.values()[1:], tcp_flags=SSH.tcp_flags,
                                                  flow_direction=None, type="IPv4", first_seen=SSH.first_seen,
                                                  last_seen=SSH.last_seen))
    assert len(document_id(SSH)) == 24 and set(document_id(SSH)) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    changes = dict(account_id="1", interface_id="eni-2", srcaddr="172.31.16.140", dstaddr="172.31.16.22",
                   srcport=20642, dstport=23, protocol=17, action="REJECT", log_status="SKIPDATA", start=1418530011,
                   end=1418530071, packets=21, bytes=4250, tcp_flags=0x02, first_seen=(1418530011, 250_000_001),
                   last_seen=(1418530069, 999_999_998))
    seen = {document_id(SSH)}
    for field, value in changes.items():
        r = Record(*SSH.values()[1:], tcp_flags=SSH.tcp_flags, type="IPv4", first_seen=SSH.first_seen,
                   last_seen=SSH.last_seen)
        setattr(r, field, value)
        seen.add(document_id(r))
    assert len(seen) == 1 + len(changes)


def test_document_ids_of_real_captures_are_unique_and_the_same_on_a_second_read():
    names = ("dns_fragmented.pcap", "mongodb.pcap", "vrrp.pcap", "rotation.pcap", "pcapng-multi-interface.pcapng")
    first = [document_id(r) for r in capture_records(*names)]
    assert len(first) > 50 and len(set(first)) == len(first)
    assert [document_id(r) for r in capture_records(*names)] == first


# -- configuration -----------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, words", [
    ("es+https://elastic:s3cr3t-pw@es.example:9200/flowlogs", ["password", "FLOWLOG_ES_API_KEY"]),
    ("es+https://es.example:9200/flowlogs?api_key=s3cr3t-pw", ["api_key", "FLOWLOG_ES_USER"]),
    ("es+https://es.example:9200/flowlogs?password=s3cr3t-pw", ["password=", "FLOWLOG_ES_PASSWORD"]),
])
def test_secrets_in_the_uri_are_refused_naming_the_variable(uri, words):
    with pytest.raises(ConfigError) as e:
        EsHttpsSink(URI.parse(uri), SinkOptions())
    assert all(w in str(e.value) for w in words)
    assert "s3cr3t-pw" not in str(e.value)


@pytest.mark.parametrize("uri, words", [
    ("es+https://es.example:9200", "one index"),
    ("es+https://es.example:9200/a/b", "one index"),
    ("es+https://es.example:9200/Flowlogs", "not a valid index name"),
    ("es+https://es.example:9200/_flow", "not a valid index name"),
    ("es+https://es.example:9200/flowlogs?verfy=false", "unknown option verfy="),
    ("es+https://es.example:9200/flowlogs?verify=maybe", "verify='maybe'"),
    ("es+https://es.example:9200/flowlogs?timeout=0", "timeout="),
    ("es+https://es.example:9200/flowlogs?ca=/nonexistent/ca.pem", "CA file"),
    ("es+http://es.example:9200/flowlogs?verify=false", "plain http"),
    ("es+https:///flowlogs", "HOST"),
])
def test_bad_uris_are_one_clear_error(uri, words):
    with pytest.raises(ConfigError) as e:
        (EsHttpsSink if uri.startswith("es+https") else EsHttpSink)(URI.parse(uri), SinkOptions())
    assert words in str(e.value)


def test_credentials_come_from_the_environment_one_kind_at_a_time(monkeypatch):
    uri = URI.parse("es+https://es.example:9200/flowlogs")
    for k in CREDENTIAL_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FLOWLOG_ES_API_KEY", "abc")
    monkeypatch.setenv("FLOWLOG_ES_USER", "elastic")
    with pytest.raises(ConfigError, match="not both"):
        EsHttpsSink(uri, SinkOptions())
    monkeypatch.delenv("FLOWLOG_ES_API_KEY")
    with pytest.raises(ConfigError, match="FLOWLOG_ES_PASSWORD"):
        EsHttpsSink(uri, SinkOptions())


def test_the_schemes_are_registered_by_one_plugin():
    from flowlog.core.plugins import get_registry

    reg = get_registry(load_entrypoints=False)
    assert reg.sink("es+https").cls is EsHttpsSink and reg.sink("es+http").cls is EsHttpSink
    assert reg.sink("es+https").plugin == reg.sink("es+http").plugin == "flowlog.plugins.es"


# -- sending -----------------------------------------------------------------------------------------

def test_a_batch_is_stored_and_sending_it_again_makes_no_duplicate(es):
    index = es.index()
    sink = es.sink(index)
    items = [sink.encode(r) for r in (SSH, PING, IDLE, SKIP)]
    assert sink.send(items, META).verdict is Verdict.OK
    assert sink.server.startswith(("Elasticsearch", "OpenSearch", "unknown"))
    again = sink.send(items, META)                  # a retry, or a restart: 409 for every document
    assert again.verdict is Verdict.OK and not again.pending and not again.rejected
    docs = es.docs(index)
    assert sorted(d["message"] for d in docs) == sorted(
        json.loads(i.split(b"\n")[1])["message"] for i in items)
    assert sorted(es.ids(index)) == sorted(document_id(r) for r in (SSH, PING, IDLE, SKIP))


def test_a_data_stream_takes_the_documents(es):
    name = es.index("flowlog-test-ds")
    status, answer = es.call("PUT", "/_index_template/flowlog-test-ds", {
        "index_patterns": ["flowlog-test-ds-*"], "data_stream": {}, "priority": 500})
    assert status == 200, answer
    sink = es.sink(name)
    items = [sink.encode(r) for r in (SSH, PING)]
    assert sink.send(items, META).verdict is Verdict.OK
    assert sink.send(items, META).verdict is Verdict.OK
    assert sorted(d["message"] for d in es.docs(name)) == sorted(json.loads(i.split(b"\n")[1])["message"]
                                                                 for i in items)
    # what makes create and @timestamp necessary: the stand-in refuses as a cluster does
    status, answer = es.call("POST", f"/{name}/_bulk", b'{"index":{}}\n{"@timestamp":"2024-01-01T00:00:00Z"}\n'
                                                       b'{"create":{}}\n{"a":1}\n')
    assert status == 200 and answer["errors"] is True
    first, second = (next(iter(i.values())) for i in answer["items"])
    assert first["status"] == 400 and "op_type of create" in first["error"]["reason"]
    assert second["status"] == 400 and "@timestamp" in second["error"]["reason"]


@pytest.mark.parametrize("flavor, server", [("es7", "Elasticsearch 7.17.24"), ("es8", "Elasticsearch 8.15.3"),
                                            ("es9", "Elasticsearch 9.1.2"), ("opensearch", "OpenSearch 2.17.1")])
def test_elasticsearch_7_8_9_and_opensearch(stand_in, flavor, server):
    stand_in.store.configure(flavor=flavor)
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    assert sink.server == server
    assert len(stand_in.store.docs("flowlogs")) == 1
    bulk = [r for r in stand_in.store.requests if "_bulk" in r["path"]]
    assert bulk and all(r["headers"]["Content-Type"] == "application/x-ndjson" for r in bulk)
    assert not any("vnd.elasticsearch" in v for r in stand_in.store.requests for v in r["headers"].values())


def test_what_is_not_elasticsearch_or_too_old_is_refused(stand_in):
    stand_in.store.configure(flavor="es6")
    answer = sink_for(stand_in).send([b"x"], META)
    assert answer.verdict is Verdict.FAIL and "6.8.23" in answer.reason and "7 or later" in answer.reason
    hec = harness.load("hec_receiver").serve()
    try:
        answer = sink_for(hec).send([b"x"], META)
        assert answer.verdict is Verdict.FAIL and "does not answer like Elasticsearch" in answer.reason
    finally:
        hec.close()


def test_a_key_that_may_not_see_the_cluster_still_writes(stand_in):
    stand_in.store.configure(root_forbidden=True)
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    assert len(stand_in.store.docs()) == 1


def test_per_item_results_are_each_classified(stand_in):
    sink = sink_for(stand_in)
    recs = [Record("1", "eni-1", f"10.0.0.{i}", "10.0.0.99", 1000 + i, 80, 6, 1, 60, 1418530000, 1418530060,
                   "ACCEPT", "OK") for i in range(1, 7)]
    items = [sink.encode(r) for r in recs]
    stand_in.store.faults.append({"items": {"1": 429, "2": 503, "4": 400}})
    answer = sink.send(items, META)
    assert answer.verdict is Verdict.OK
    assert sorted(answer.pending) == [1, 2]
    assert list(answer.rejected) == [4] and answer.rejected[4].startswith("document_parsing_exception: ")
    assert len(stand_in.store.docs()) == 3
    # the pending ones, sent again: delivered; the whole batch again: nothing new
    assert sink.send([items[1], items[2]], META).verdict is Verdict.OK
    assert sink.send(items, META).verdict is Verdict.OK
    assert len(stand_in.store.docs()) == 6


def test_a_mapping_conflict_is_a_rejected_item_with_the_servers_reason(stand_in):
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    odd = b'{"create":{"_id":"odd"}}\n{"@timestamp":"2024-01-01T00:00:00Z","source":{"port":"http"}}\n'
    answer = sink.send([odd], META)
    assert answer.verdict is Verdict.OK and "failed to parse field [source.port] of type [long]" in answer.rejected[0]


def test_every_item_throttled_is_a_retry(stand_in):
    sink = sink_for(stand_in)
    stand_in.store.faults.append({"items": {"0": 429, "1": 429}})
    answer = sink.send([sink.encode(SSH), sink.encode(PING)], META)
    assert answer.verdict is Verdict.RETRY and "es_rejected_execution_exception" in answer.reason


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_throttling_and_server_errors_are_retried_with_the_servers_advice(stand_in, status):
    sink = sink_for(stand_in)
    stand_in.store.faults.append({"status": status, "retry_after": 7})
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.RETRY and answer.retry_after == 7.0 and str(status) in answer.reason
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK


def _send_until_ok(sink, items, tries=8):
    answers = []
    while len(answers) < tries:
        answers.append(sink.send(items, META))
        if answers[-1].verdict is Verdict.OK:
            break
    return answers


def test_a_cut_connection_is_a_retry_and_a_lost_answer_makes_no_duplicate(stand_in):
    sink = sink_for(stand_in)
    items = [sink.encode(SSH), sink.encode(PING)]
    assert sink.send(items[:1], META).verdict is Verdict.OK         # server checked, connection kept alive
    # two cuts in a row: more than the client's one quiet retry of a kept-alive connection
    stand_in.store.faults.append({"cut": True, "count": 2})
    answers = _send_until_ok(sink, items)
    assert answers[0].verdict is Verdict.RETRY and "connection" in answers[0].reason
    assert answers[-1].verdict is Verdict.OK and not stand_in.store.faults
    # stored, but the answer never came: sent again, answered 409, still one document each
    stand_in.store.faults.append({"cut_after_store": True, "count": 2})
    answers = _send_until_ok(sink, items)
    assert answers[0].verdict is Verdict.RETRY and answers[-1].verdict is Verdict.OK
    assert len(stand_in.store.docs()) == 2


def test_a_server_that_is_down_is_a_retry(monkeypatch):
    for k in CREDENTIAL_ENV:
        monkeypatch.delenv(k, raising=False)
    port = harness.free_port()
    sink = EsHttpSink(URI.parse(f"es+http://127.0.0.1:{port}/flowlogs"), SinkOptions())
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.RETRY and "connection refused" in answer.reason


def test_too_large_is_split_and_one_document_too_large_is_rejected(stand_in):
    sink = sink_for(stand_in)
    sink.send([sink.encode(SSH)], META)
    stand_in.store.configure(max_content_length=600)
    items = [sink.encode(SSH), sink.encode(PING)]
    assert sink.send(items, META).verdict is Verdict.SPLIT
    answer = sink.send([sink.encode(PING)], META)
    assert answer.verdict is Verdict.OK and "max_content_length" in answer.rejected[0]


def test_no_such_index_and_no_auto_create_stops_the_sink(stand_in):
    stand_in.store.configure(auto_create=False)
    sink = sink_for(stand_in, "missing")
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "no such index [missing]" in answer.reason
    assert "auto_create_index" in answer.reason


def test_a_missing_pipeline_stops_the_sink_and_a_known_one_is_used(stand_in):
    sink = sink_for(stand_in, pipeline="geoip")
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "pipeline with id [geoip] does not exist" in answer.reason
    stand_in.store.pipelines.add("geoip")
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    assert any("pipeline=geoip" in r["path"] for r in stand_in.store.requests if "_bulk" in r["path"])


def test_an_item_the_credentials_may_not_write_stops_the_sink(stand_in):
    sink = sink_for(stand_in)
    stand_in.store.faults.append({"items": {"0": 403}})
    answer = sink.send([sink.encode(SSH)], META)
    assert answer.verdict is Verdict.FAIL and "not allowed to write" in answer.reason


# -- authentication -----------------------------------------------------------------------------------

SECRET_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="


def test_api_key_as_kibana_shows_it_or_as_id_and_key(stand_in, monkeypatch):
    stand_in.store.configure(api_key=base64.b64encode(b"VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw").decode())
    monkeypatch.setenv("FLOWLOG_ES_API_KEY", SECRET_KEY)
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
    monkeypatch.setenv("FLOWLOG_ES_API_KEY", "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw")
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(PING)], META).verdict is Verdict.OK
    assert len(stand_in.store.docs()) == 2


def test_basic_authentication(stand_in, monkeypatch):
    stand_in.store.configure(user="flowlog", password="pa55-w0rd-x")
    monkeypatch.setenv("FLOWLOG_ES_USER", "flowlog")
    monkeypatch.setenv("FLOWLOG_ES_PASSWORD", "pa55-w0rd-x")
    sink = sink_for(stand_in)
    assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK


def test_refused_credentials_stop_the_sink_naming_the_variable_not_the_secret(stand_in, monkeypatch):
    stand_in.store.configure(api_key="c29tZXRoaW5nOmVsc2U=")
    monkeypatch.setenv("FLOWLOG_ES_API_KEY", SECRET_KEY)
    answer = sink_for(stand_in).send([b"x"], META)
    assert answer.verdict is Verdict.FAIL and "401" in answer.reason and "FLOWLOG_ES_API_KEY" in answer.reason
    assert SECRET_KEY not in answer.reason
    monkeypatch.delenv("FLOWLOG_ES_API_KEY")
    answer = sink_for(stand_in).send([b"x"], META)
    assert answer.verdict is Verdict.FAIL and "asks for credentials" in answer.reason


# -- TLS -------------------------------------------------------------------------------------------------

def test_tls_is_verified_by_default_with_a_ca_file_option_and_off_only_by_name(tmp_path, capsys, monkeypatch):
    for k in CREDENTIAL_ENV:
        monkeypatch.delenv(k, raising=False)
    cert, key = harness.tls_files(tmp_path)
    receiver = es_receiver.serve(tls=(cert, key))
    try:
        answer = sink_for(receiver).send([b"x"], META)
        assert answer.verdict is Verdict.RETRY and "certificate" in answer.reason
        sink = sink_for(receiver, ca=cert)
        assert sink.send([sink.encode(SSH)], META).verdict is Verdict.OK
        sink = sink_for(receiver, verify="false")
        assert capsys.readouterr().err == ""
        sink.open()
        assert "verification is off" in capsys.readouterr().err
        assert sink.send([sink.encode(PING)], META).verdict is Verdict.OK
        assert len(receiver.store.docs()) == 2
    finally:
        receiver.close()


# -- the stand-in keeps to the protocol --------------------------------------------------------------------

def test_stand_in_media_types_product_header_and_newline(stand_in):
    client = HttpClient(stand_in.url)
    r = client.request("GET", "/")
    assert r.header("x-elastic-product") == "Elasticsearch" and json.loads(r.body)["tagline"]
    body = b'{"create":{"_id":"1"}}\n{"a":1}\n'
    ndjson = {"Content-Type": "application/x-ndjson"}
    assert client.request("POST", "/i/_bulk", body.rstrip(b"\n"), ndjson).status == 400
    assert client.request("POST", "/i/_bulk", body, {"Content-Type": "text/plain"}).status == 406
    compat = "application/vnd.elasticsearch+x-ndjson; compatible-with=7"
    assert client.request("POST", "/i/_bulk", body, {"Content-Type": compat, "Accept": compat}).status == 200
    old = "application/vnd.elasticsearch+x-ndjson; compatible-with=6"
    assert client.request("POST", "/i/_bulk", body, {"Content-Type": old, "Accept": old}).status == 400
    stand_in.store.configure(flavor="opensearch")
    r = client.request("GET", "/")
    assert r.header("x-elastic-product") is None and json.loads(r.body)["version"]["distribution"] == "opensearch"
    assert client.request("POST", "/i/_bulk", body, {"Content-Type": compat}).status == 406
    r = client.request("POST", "/i/_bulk", body, ndjson)
    item = json.loads(r.body)["items"][0]["create"]
    assert r.status == 200 and item["status"] == 409 and item["error"]["type"] == "version_conflict_engine_exception"


# -- through the command line ------------------------------------------------------------------------------

def _messages(docs) -> Counter:
    return Counter(d["message"] for d in docs)


def test_capture_to_es_delivers_every_record_once(es, tmp_path):
    index = es.index()
    capture = CAPTURES / "dns_fragmented.pcap"
    expected = harness.records(capture)
    environ = harness.env(**{k: os.environ.get(k) for k in CREDENTIAL_ENV})
    p = harness.flowlog("capture", "-r", capture, "--to", es.uri(index), "--spool", tmp_path / "spool",
                        "--stats", environ=environ)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert _messages(es.docs(index)) == Counter(expected)
    # the same capture again: nothing new
    p = harness.flowlog("capture", "-r", capture, "--to", es.uri(index), "--spool", tmp_path / "spool",
                        environ=environ)
    assert p.returncode == 0, p.stderr
    assert _messages(es.docs(index)) == Counter(expected)


def test_secrets_appear_nowhere_in_the_output(stand_in, tmp_path):
    secret = "Zmxvd2xvZy10ZXN0OnNlY3JldC12YWx1ZS0xMjM0NQ=="
    stand_in.store.configure(api_key=secret)
    capture = CAPTURES / "mongodb.pcap"
    uri = f"es+http://127.0.0.1:{stand_in.port}/flowlogs"
    p = harness.flowlog("capture", "-r", capture, "--to", uri, "--spool", tmp_path / "s1", "--stats",
                        environ=harness.env(FLOWLOG_ES_API_KEY=secret))
    assert p.returncode == 0, p.stderr
    assert len(stand_in.store.docs()) == len(harness.records(capture))
    wrong = "d3JvbmctaWQ6d3Jvbmcta2V5LXZhbHVlLTk4NzY1"
    p2 = harness.flowlog("capture", "-r", capture, "--to", uri, "--spool", tmp_path / "s2", "--stats",
                         "--drain-timeout", "5", environ=harness.env(FLOWLOG_ES_API_KEY=wrong))
    assert p2.returncode == 3 and "FLOWLOG_ES_API_KEY" in p2.stderr
    p3 = harness.flowlog("capture", "-r", capture, "--to",
                         f"es+http://elastic:{secret}@127.0.0.1:{stand_in.port}/flowlogs", "--spool", tmp_path / "s3")
    assert p3.returncode == 2 and "FLOWLOG_ES_API_KEY" in p3.stderr and len(p3.stderr.splitlines()) == 1
    for proc in (p, p2, p3):
        for s in (secret, wrong, base64.b64decode(secret).decode().split(":")[1]):
            assert s not in proc.stdout and s not in proc.stderr
    for f in (tmp_path).rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes() and wrong.encode() not in f.read_bytes()


# -- faults, end to end ---------------------------------------------------------------------------------

def _run_to(receiver_port: int, capture, spool, *extra, environ=None):
    return harness.flowlog("capture", "-r", capture, "--to", f"es+http://127.0.0.1:{receiver_port}/flowlogs",
                           "--spool", spool, *extra, environ=environ)


def test_receiver_down_at_start_and_up_later(tmp_path):
    need_stand_in("a server down at start")
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=5, flows=20)
    expected = Counter(harness.records(capture))
    port = harness.free_port()
    run = harness.start_flowlog("capture", "-r", capture, "--to", f"es+http://127.0.0.1:{port}/flowlogs",
                                "--spool", tmp_path / "spool", "--drain-timeout", "60")
    time.sleep(1.5)
    assert run.poll() is None                     # still trying
    receiver = harness.start_receiver("es_receiver", port)
    try:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "cannot deliver yet" in err
        client = HttpClient(f"http://127.0.0.1:{port}")
        docs = json.loads(client.request("GET", "/_receiver/docs").body)["docs"]
        assert _messages(d["_source"] for d in docs) == expected
    finally:
        harness.stop(receiver)


def test_bursts_of_429_503_500_and_item_failures(stand_in, tmp_path):
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=4, flows=30)
    expected = Counter(harness.records(capture))
    stand_in.store.faults.extend([{"status": 429, "count": 3, "retry_after": 0.05}, {"status": 503, "count": 3},
                                  {"status": 500, "count": 3}, {"items": {"0": 429, "3": 503, "7": 429}, "count": 2}])
    p = _run_to(stand_in.port, capture, tmp_path / "spool", "--stats")
    assert p.returncode == 0, p.stderr
    assert not stand_in.store.faults
    assert _messages(d["_source"] for d in stand_in.store.docs()) == expected


def test_connections_cut_mid_request(stand_in, tmp_path):
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=4, flows=30)
    expected = Counter(harness.records(capture))
    stand_in.store.faults.extend([{"cut": True, "count": 4}, {"cut_after_store": True, "count": 3}])
    p = _run_to(stand_in.port, capture, tmp_path / "spool")
    assert p.returncode == 0, p.stderr
    assert not stand_in.store.faults
    assert _messages(d["_source"] for d in stand_in.store.docs()) == expected


def test_sigkill_in_the_middle_of_delivery_then_restart(stand_in, tmp_path):
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=30, flows=20)
    expected = Counter(harness.records(capture))
    assert len(expected) == 600
    stand_in.store.faults.append({"delay": 0.1, "count": 10_000})     # every bulk request takes a while
    spool = tmp_path / "spool"
    run = harness.start_flowlog("capture", "-r", capture, "--to", f"es+http://127.0.0.1:{stand_in.port}/flowlogs",
                                "--spool", spool)
    assert harness.wait_for(lambda: len(stand_in.store.docs()) >= 60, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait()
    stored = len(stand_in.store.docs())
    assert 60 <= stored < 600, "killed too late to test anything"
    assert any(spool.rglob("*")), "the spool holds the batches not yet delivered"
    stand_in.store.faults.clear()
    p = _run_to(stand_in.port, capture, spool, "--stats")
    assert p.returncode == 0, p.stderr
    resumed = re.search(r"batches from an earlier run\s+(\d+)", p.stderr)
    assert resumed and int(resumed.group(1)) > 0, p.stderr
    docs = stand_in.store.docs()
    assert _messages(d["_source"] for d in docs) == expected           # every record, none twice
    assert len(docs) == 600


def test_sigkill_then_the_spool_alone_is_delivered(stand_in, tmp_path):
    capture = harness.synth_capture(tmp_path / "t.pcap", windows=30, flows=20)
    expected = Counter(harness.records(capture))
    stand_in.store.faults.append({"delay": 0.1, "count": 10_000})
    spool = tmp_path / "spool"
    run = harness.start_flowlog("capture", "-r", capture, "--to", f"es+http://127.0.0.1:{stand_in.port}/flowlogs",
                                "--spool", spool)
    assert harness.wait_for(lambda: len(stand_in.store.docs()) >= 60, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert len(stand_in.store.docs()) < 600
    stand_in.store.faults.clear()
    p = harness.flowlog("spool", "--spool", spool, "retry")
    assert p.returncode == 0, p.stderr
    assert _messages(d["_source"] for d in stand_in.store.docs()) == expected
