"""The cls: sink (Tencent Cloud Log Service).

Unit level: the request signature against the worked examples of CLS's documentation, the
protobuf encoding byte for byte against the protobuf package built from CLS's schema
(tests/data/cls/cls.proto), the LZ4 block, the URI and the answers. Then the sink against
tests/receivers/cls_receiver.py, which checks signatures as CLS does and decodes with its
own decoders; and the whole command (spool, retries, restart) against the same receiver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowlog.core.api import BatchMeta, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.http import Response
from flowlog.core.records import Record, V2_FIELDS
from flowlog.core.uri import URI
from flowlog.plugins.cls import ClsSink, classify, encode_log, encode_log_group, encode_log_group_list, signature

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
CAPTURES = DATA / "captures"
RECEIVER_PATH = TESTS / "receivers" / "cls_receiver.py"

SECRET_ID = "AKIDflowlogtestid0000000000000000000"
SECRET_KEY = "flowlog-test-secret-key-0123456789"
TOPIC = "0c2f6a4e-2d71-4a3b-9a0e-6d3f0c8b7a11"


def _load_receiver():
    spec = importlib.util.spec_from_file_location("cls_receiver", RECEIVER_PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cls_receiver"] = mod
    spec.loader.exec_module(mod)
    return mod


rx = _load_receiver()


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    monkeypatch.delenv("TENCENTCLOUD_SESSION_TOKEN", raising=False)


@pytest.fixture
def receiver(creds):
    with rx.ClsReceiver(topics=[TOPIC]) as r:
        yield r


def sink(uri: str, fields=None) -> ClsSink:
    s = ClsSink(URI.parse(uri), SinkOptions(fields=fields))
    s.open()
    return s


def meta(records=1, interface="eni-lq6mkcis", account="1251762227", start=1418530010, batch="b-1"):
    return BatchMeta(batch_id=batch, start=start, end=start + 60, interface_id=interface, account_id=account,
                     records=records)


def record(i=0, **kw):
    values = dict(account_id="1251762227", interface_id="eni-lq6mkcis", srcaddr="172.31.16.139",
                  dstaddr="172.31.16.21", srcport=20641 + i, dstport=22, protocol=6, packets=20, bytes=4249,
                  start=1418530010, end=1418530070, action="ACCEPT", log_status="OK")
    values.update(kw)
    return Record(**values)


# --- the signature: CLS's documented examples --------------------------------------------------------

# The worked examples of CLS's "request signature" page: their SecretId/SecretKey, times, requests,
# and every intermediate value the page prints (SignKey, the SHA1 of HttpRequestInfo, Signature).
DOC_ID = "AKIDc9YlmrBcFk4C8sbmXQ8i65XXXXXXXXXX"
DOC_KEY = "LUSE4nPK1d4tX5SHyXv6tZXXXXXXXXXX"


def test_signature_matches_the_documented_get_example():
    auth = signature(DOC_ID, DOC_KEY, "GET", "/logset", {"logset_id": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"},
                     {"Host": "ap-shanghai.cls.myqcloud.com"}, 1510109254, 1510109314)
    assert auth == ("q-sign-algorithm=sha1&q-ak=AKIDc9YlmrBcFk4C8sbmXQ8i65XXXXXXXXXX&q-sign-time=1510109254;"
                    "1510109314&q-key-time=1510109254;1510109314&q-header-list=host&q-url-param-list=logset_id"
                    "&q-signature=2c53900d3fe8d2e875db8a6af5fe7303ee1567a8")


def test_signature_matches_the_documented_put_example():
    headers = {"Content-MD5": "f9c7fc33c7eab68dfa8a52508d1f4659", "Content-Type": "application/json",
               "Host": "ap-shanghai.cls.myqcloud.com"}
    auth = signature(DOC_ID, DOC_KEY, "PUT", "/logset", {}, headers, 1510109254, 1510109314)
    assert auth.endswith("&q-header-list=content-md5;content-type;host&q-url-param-list="
                         "&q-signature=85a55e61de42483ba03bffd07a6c01b8d651af51")


def test_the_receiver_computes_the_documented_signatures_too():
    kt = "1510109254;1510109314"
    assert rx.expected_signature(DOC_KEY, kt, "GET", "/logset",
                                 [("logset_id", "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")],
                                 [("host", "ap-shanghai.cls.myqcloud.com")]) == "2c53900d3fe8d2e875db8a6af5fe7303ee1567a8"
    assert rx.expected_signature(DOC_KEY, kt, "PUT", "/logset", [],
                                 [("content-md5", "f9c7fc33c7eab68dfa8a52508d1f4659"),
                                  ("content-type", "application/json"),
                                  ("host", "ap-shanghai.cls.myqcloud.com")]) == "85a55e61de42483ba03bffd07a6c01b8d651af51"


def test_signature_changes_with_every_signed_part():
    base = dict(secret_id=DOC_ID, secret_key=DOC_KEY, method="POST", path="/structuredlog",
                params={"topic_id": TOPIC}, headers={"Host": "h", "Content-Type": "application/x-protobuf"},
                start=1, end=2)
    sig = signature(**base).rsplit("=", 1)[1]
    for change in (dict(secret_key="other"), dict(method="PUT"), dict(path="/structuredlog2"),
                   dict(params={"topic_id": "other"}), dict(headers={"Host": "h2", "Content-Type": "x"}),
                   dict(start=0), dict(end=3)):
        assert signature(**{**base, **change}).rsplit("=", 1)[1] != sig, change


# --- protobuf: byte-compatible with CLS's schema ---------------------------------------------------

def _parse_proto(text: str):
    """CLS's cls.proto (proto2: package, nested messages, labelled scalar and message fields) as a
    FileDescriptorProto, so that the protobuf package builds the classes without protoc."""
    from google.protobuf import descriptor_pb2

    text = re.sub(r"//[^\n]*", "", text)
    tokens = re.findall(r"[A-Za-z_][\w.]*|\d+|[{};=]", text)
    fdp = descriptor_pb2.FileDescriptorProto(name="cls_test.proto", syntax="proto2")
    FD = descriptor_pb2.FieldDescriptorProto
    scalar = {"string": FD.TYPE_STRING, "int64": FD.TYPE_INT64, "bytes": FD.TYPE_BYTES,
              "int32": FD.TYPE_INT32, "uint64": FD.TYPE_UINT64}
    label = {"required": FD.LABEL_REQUIRED, "optional": FD.LABEL_OPTIONAL, "repeated": FD.LABEL_REPEATED}
    stack, pending, i = [], [], 0
    while i < len(tokens):
        t = tokens[i]
        if t == "package":
            fdp.package = tokens[i + 1]
            i += 3
        elif t == "message":
            msg = (stack[-1][0].nested_type if stack else fdp.message_type).add(name=tokens[i + 1])
            path = (stack[-1][1] if stack else "." + fdp.package) + "." + tokens[i + 1]
            stack.append((msg, path))
            i += 3
        elif t == "}":
            stack.pop()
            i += 1
        else:
            lab, typ, name, _eq, number, _semi = tokens[i:i + 6]
            f = stack[-1][0].field.add(name=name, number=int(number), label=label[lab])
            if typ in scalar:
                f.type = scalar[typ]
            else:
                f.type = FD.TYPE_MESSAGE
                pending.append((f, typ, [p for _, p in stack]))
            i += 6
    for f, typ, scopes in pending:     # a type name resolves from the innermost scope outwards
        names = {p for m in fdp.message_type for p in _paths(m, "." + fdp.package)}
        for scope in reversed(scopes + ["." + fdp.package]):
            if f"{scope}.{typ}" in names:
                f.type_name = f"{scope}.{typ}"
                break
        else:
            raise AssertionError(f"unresolved type {typ}")
    return fdp


def _paths(msg, prefix):
    here = f"{prefix}.{msg.name}"
    yield here
    for n in msg.nested_type:
        yield from _paths(n, here)


@pytest.fixture(scope="module")
def pb():
    pytest.importorskip("google.protobuf", reason="the protobuf package (in flowlog[test]) checks the encoding")
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(_parse_proto((DATA / "cls" / "cls.proto").read_text()))
    fd = pool.FindFileByName("cls_test.proto")
    classes = {name: message_factory.GetMessageClass(fd.message_types_by_name[name])
               for name in ("Log", "LogTag", "LogGroup", "LogGroupList")}
    return classes


def _theirs(pb, groups):
    """The same LogGroupList built and serialized by the protobuf package."""
    lgl = pb["LogGroupList"]()
    for g in groups:
        group = lgl.logGroupList.add()
        for t, contents in g["logs"]:
            log = group.logs.add()
            log.time = t
            for k, v in contents:
                c = log.contents.add()
                c.key, c.value = k, v
        for attr in ("contextFlow", "filename", "source"):
            if g.get(attr) is not None:
                setattr(group, attr, g[attr])
        for k, v in g.get("tags", ()):
            tag = group.logTags.add()
            tag.key, tag.value = k, v
    return lgl


def _ours(groups):
    return encode_log_group_list(
        encode_log_group([encode_log(t, c) for t, c in g["logs"]], context_flow=g.get("contextFlow"),
                         filename=g.get("filename"), source=g.get("source"), tags=g.get("tags", ()))
        for g in groups)


def _random_groups(rng: random.Random):
    def text():
        alphabet = "abc-XYZ_019 .:/\u00e9\u4e2d\U0001f600"
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 130, 300])))

    groups = []
    for _ in range(rng.randint(1, 4)):
        g = {"logs": [(rng.choice([0, 1, 127, 128, 1418530010000, 2**62, -1, -(2**63)]),
                       [(text() or "k", text()) for _ in range(rng.randint(0, 15))])
                      for _ in range(rng.randint(1, 20))]}
        for attr in ("contextFlow", "filename", "source"):
            if rng.random() < 0.5:
                g[attr] = text()
        g["tags"] = [(text() or "t", text()) for _ in range(rng.randint(0, 3))]
        groups.append(g)
    return groups


def test_encoding_is_byte_identical_to_the_protobuf_package(pb):
    rng = random.Random(20240601)
    for _ in range(200):
        groups = _random_groups(rng)
        ours = _ours(groups)
        theirs = _theirs(pb, groups)
        assert ours == theirs.SerializeToString()
        parsed = pb["LogGroupList"]()
        parsed.ParseFromString(ours)
        assert parsed == theirs


def test_the_receivers_decoder_agrees_with_the_protobuf_package(pb):
    rng = random.Random(7)
    for _ in range(50):
        groups = _random_groups(rng)
        decoded = rx.decode_log_group_list(_theirs(pb, groups).SerializeToString())
        assert [[(log["time"], [tuple(c) for c in log["contents"]]) for log in g["logs"]] for g in decoded] == \
            [[(t, list(c)) for t, c in g["logs"]] for g in groups]
        assert [d["tags"] for d in decoded] == [dict(g["tags"]) for g in groups]
        assert [d["source"] for d in decoded] == [g.get("source") for g in groups]


def test_a_record_is_one_log_with_a_content_per_field(pb, creds):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:9")
    r = record()
    log = pb["Log"]()
    log.ParseFromString(s.encode(r))
    assert log.time == 1418530010 * 1000        # the window start, in milliseconds
    assert [(c.key, c.value) for c in log.contents] == list(zip(V2_FIELDS, (
        "2", "1251762227", "eni-lq6mkcis", "172.31.16.139", "172.31.16.21", "20641", "22", "6", "20", "4249",
        "1418530010", "1418530070", "ACCEPT", "OK")))
    nodata = Record("1251762227", "eni-lq6mkcis", start=1431280876, end=1431280934, log_status="NODATA")
    log.ParseFromString(s.encode(nodata))
    assert [c.value for c in log.contents] == ("2 1251762227 eni-lq6mkcis - - - - - - - 1431280876 1431280934 - "
                                               "NODATA").split()


def test_fields_option_picks_the_contents(pb, creds):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:9",
             fields=("srcaddr", "dstaddr", "tcp-flags", "flow-direction", "first-seen"))
    log = pb["Log"]()
    log.ParseFromString(s.encode(record(tcp_flags=18, flow_direction="egress", first_seen=(1418530011, 5))))
    assert [(c.key, c.value) for c in log.contents] == [
        ("srcaddr", "172.31.16.139"), ("dstaddr", "172.31.16.21"), ("tcp-flags", "18"),
        ("flow-direction", "egress"), ("first-seen", "1418530011.000000005")]


# --- LZ4 ---------------------------------------------------------------------------------------------

def test_lz4_block_without_size_and_the_receivers_decoder():
    import lz4.block

    rng = random.Random(3)
    samples = [b"", b"a", b"abcd" * 5000, bytes(rng.getrandbits(8) for _ in range(5000)),
               b"x" * 70000, _ours(_random_groups(rng))]
    for data in samples:
        block = lz4.block.compress(data, store_size=False)
        assert rx.lz4_block_decode(block, 1 << 24) == data
        if data:
            assert lz4.block.decompress(block, uncompressed_size=len(data)) == data
    with pytest.raises(rx.BadContent):
        rx.lz4_block_decode(b"\x1f\x00\x05\x00", 100)       # a match reaching before the start


# --- the URI and the environment ---------------------------------------------------------------------

@pytest.mark.parametrize("uri, message", [
    ("cls:ap-guangzhou/t", "expected cls://REGION/TOPIC_ID"),
    ("cls://ap-guangzhou/", "not a log topic id"),
    ("cls://ap-guangzhou", "not a log topic id"),
    ("cls://guangzhou/abc", "not a CLS region"),
    ("cls://ap-guangzhou/a/b", "not a log topic id"),
    ("cls://ap-guangzhou/t?secret_key=abc", "credentials are never given in a URI"),
    ("cls://id:pw@ap-guangzhou/t", "credentials are never given in a URI"),
    ("cls://ap-guangzhou/t?endpoint=https://u:p@example.com", "endpoint carries credentials"),
    ("cls://ap-guangzhou/t?colour=blue", "unknown URI option colour"),
    ("cls://ap-guangzhou/t?intranet=maybe", "expected 1 or 0"),
    ("cls://ap-guangzhou/t?timeout=soon", "timeout"),
    ("cls://ap-guangzhou/t?endpoint=ftp://x", "expected http://HOST"),
])
def test_bad_uris_are_one_line_config_errors(uri, message):
    with pytest.raises(ConfigError) as e:
        ClsSink(URI.parse(uri), SinkOptions())
    assert message in str(e.value) and "\n" not in str(e.value)
    for secret in ("abc", ":pw", ":p@"):
        if secret in uri:
            assert secret not in str(e.value)       # a secret in a URI is refused, never repeated


def test_hosts(creds):
    assert ClsSink(URI.parse(f"cls://ap-guangzhou/{TOPIC}"), SinkOptions()).endpoint == \
        "https://ap-guangzhou.cls.tencentcs.com"
    assert ClsSink(URI.parse(f"cls://ap-beijing/{TOPIC}?intranet=1"), SinkOptions()).endpoint == \
        "https://ap-beijing.cls.tencentyun.com"
    assert ClsSink(URI.parse(f"cls://ap-beijing/{TOPIC}?endpoint=http://10.0.0.1:8080/"),
                   SinkOptions()).endpoint == "http://10.0.0.1:8080"


def test_missing_credentials_name_the_variables(monkeypatch):
    monkeypatch.delenv("TENCENTCLOUD_SECRET_ID", raising=False)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    with pytest.raises(ConfigError) as e:
        sink(f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:9")
    assert "TENCENTCLOUD_SECRET_ID not set" in str(e.value) and SECRET_KEY not in str(e.value)


def test_missing_lz4_names_the_extra(monkeypatch, creds):
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.block", None)
    with pytest.raises(ConfigError) as e:
        sink(f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:9")
    assert str(e.value) == "cls: needs the lz4 package: pip install 'flowlog[cls]'"


# --- answers -----------------------------------------------------------------------------------------

def _r(status, code=None, message="m", headers=None):
    body = json.dumps({"errorcode": code, "errormessage": message}).encode() if code else b""
    return Response(status, {"x-cls-requestid": "rid-1", **(headers or {})}, body)


@pytest.mark.parametrize("status, code, items, verdict", [
    (200, None, 5, Verdict.OK),
    (429, "SpeedQuotaExceed", 5, Verdict.RETRY),
    (500, "InternalError", 5, Verdict.RETRY),
    (502, None, 5, Verdict.RETRY),
    (503, None, 5, Verdict.RETRY),
    (400, "Timeout", 5, Verdict.RETRY),
    (403, "LogSizeExceed", 5, Verdict.SPLIT),
    (403, "LogSizeExceed", 1, Verdict.FAIL),
    (413, None, 5, Verdict.SPLIT),
    (401, "Unauthorized", 5, Verdict.FAIL),
    (401, "AuthFailure.SignatureFailure", 5, Verdict.FAIL),
    (400, "InvalidAuthorization", 5, Verdict.FAIL),
    (403, "NotAllowed", 5, Verdict.FAIL),
    (404, "TopicNotExist", 5, Verdict.FAIL),
    (400, "TopicClosed", 5, Verdict.FAIL),
    (400, "InvalidContent", 5, Verdict.FAIL),
])
def test_answers_are_classified(status, code, items, verdict):
    a = classify(_r(status, code), items)
    assert a.verdict is verdict
    if verdict is not Verdict.OK:
        assert a.reason.startswith("cls: ") and (code or str(status)) in a.reason and "rid-1" in a.reason


def test_retry_after_and_secrets_kept_out_of_reasons():
    a = classify(_r(429, "SpeedQuotaExceed", headers={"retry-after": "2.5"}), 3)
    assert a.retry_after == 2.5
    a = classify(_r(401, "Unauthorized", message=f"bad key {SECRET_KEY}\nsecond line"), 3, secrets=(SECRET_KEY,))
    assert SECRET_KEY not in a.reason and "\n" not in a.reason and "TENCENTCLOUD_SECRET_KEY" in a.reason
    a = classify(Response(502, {}, b"<html>bad gateway</html>"), 3)
    assert a.verdict is Verdict.RETRY and "502" in a.reason


# --- the sink against the receiver ---------------------------------------------------------------------

def test_send_delivers_a_log_group(receiver):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    recs = [record(i) for i in range(3)]
    a = s.send([s.encode(r) for r in recs], meta(3))
    assert a.verdict is Verdict.OK, a.reason
    got = receiver.logs()
    assert got["errors"] == [] and len(got["groups"]) == 1
    g = got["groups"][0]
    assert g["topic"] == TOPIC and g["source"] == "127.0.0.1"
    assert g["tags"] == {"interface_id": "eni-lq6mkcis", "account_id": "1251762227"}
    lines = [" ".join(v for _, v in log["contents"]) for log in g["logs"]]
    assert lines == [" ".join("-" if v is None else str(v) for v in r.values()) for r in recs]
    assert {log["time"] for log in g["logs"]} == {1418530010000}


def test_no_account_tag_without_an_account(receiver):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}&source=10.1.2.3")
    assert s.send([s.encode(record(account_id=None))], meta(account=None)).verdict is Verdict.OK
    g = receiver.logs()["groups"][0]
    assert g["tags"] == {"interface_id": "eni-lq6mkcis"} and g["source"] == "10.1.2.3"


def test_a_wrong_key_fails_with_a_reason_and_no_secret(receiver, monkeypatch):
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "not-the-right-key-000")
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    a = s.send([s.encode(record())], meta())
    assert a.verdict is Verdict.FAIL and "AuthFailure.SignatureFailure" in a.reason
    assert "not-the-right-key" not in a.reason and SECRET_KEY not in a.reason
    assert receiver.logs()["groups"] == []


def test_an_unknown_topic_fails(receiver):
    s = sink("cls://ap-guangzhou/no-such-topic?endpoint=" + receiver.url)
    a = s.send([s.encode(record())], meta())
    assert a.verdict is Verdict.FAIL and "TopicNotExist" in a.reason


def test_session_token(creds, monkeypatch):
    with rx.ClsReceiver(topics=[TOPIC], token="sts-token-abc") as r:
        s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={r.url}")
        a = s.send([s.encode(record())], meta())
        assert a.verdict is Verdict.FAIL and "TokenFailure" in a.reason
        monkeypatch.setenv("TENCENTCLOUD_SESSION_TOKEN", "sts-token-abc")
        s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={r.url}")
        assert s.send([s.encode(record())], meta()).verdict is Verdict.OK
        assert len(r.logs()["groups"]) == 1


@pytest.mark.parametrize("fault, verdict, text", [
    ({"status": 429, "errorcode": "SpeedQuotaExceed"}, Verdict.RETRY, "SpeedQuotaExceed"),
    ({"status": 500, "errorcode": "InternalError"}, Verdict.RETRY, "InternalError"),
    ({"status": 503, "errorcode": "ServiceUnavailable"}, Verdict.RETRY, "503"),
    ({"drop": True}, Verdict.RETRY, "connection"),
    ({"status": 403, "errorcode": "LogSizeExceed"}, Verdict.SPLIT, "LogSizeExceed"),
])
def test_faults_are_classified_and_the_next_try_succeeds(receiver, fault, verdict, text):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    items = [s.encode(record(i)) for i in range(2)]
    receiver.faults(fault)
    a = s.send(items, meta(2))
    assert a.verdict is verdict and text in a.reason, a.reason
    assert s.send(items, meta(2)).verdict is Verdict.OK
    assert sum(len(g["logs"]) for g in receiver.logs()["groups"]) == 2


def test_receiver_down_is_a_retry(creds):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:{port}&timeout=2")
    a = s.send([s.encode(record())], meta())
    assert a.verdict is Verdict.RETRY and "refused" in a.reason


def test_a_large_batch_is_cut_into_log_groups_within_the_limits(receiver):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}", fields=("srcport", "dstport"))
    items = [s.encode(record(i % 60000)) for i in range(25_000)]
    assert s.send(items, meta(len(items))).verdict is Verdict.OK
    got = receiver.logs()
    assert got["requests"] == 1 and [len(g["logs"]) for g in got["groups"]] == [10_000, 10_000, 5_000]


def test_more_than_one_request_holds_is_split(receiver):
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    big = s.encode(record(srcaddr="x" * 700_000))
    a = s.send([big] * 10, meta(10))                 # 7 MB: more than one upload takes
    assert a.verdict is Verdict.SPLIT
    assert receiver.logs()["requests"] == 0
    assert s.send([big] * 5, meta(5)).verdict is Verdict.OK


def test_the_receiver_enforces_the_limits(receiver):
    # a log group of 10001 logs, built by hand and signed: CLS answers LogSizeExceed
    s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    logs = [encode_log(1, [("k", "v")])] * 10_001
    s.body = lambda items, meta: encode_log_group_list([encode_log_group(logs)])
    a = s.send([b"x", b"y"], meta(2))
    assert a.verdict is Verdict.SPLIT and "LogSizeExceed" in a.reason
    s.body = lambda items, meta: encode_log_group_list([encode_log_group([encode_log(1, [("_k", "v")])])])
    a = s.send([b"x"], meta())
    assert a.verdict is Verdict.FAIL and "InvalidParam" in a.reason



def test_the_receiver_runs_as_a_program_with_its_control_api(creds):
    import urllib.request

    proc = subprocess.Popen([sys.executable, str(RECEIVER_PATH), "--port", "0", "--topic", TOPIC],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        port = int(proc.stdout.readline().split()[-1])
        url = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(url + "/_receiver/faults", method="POST",
                                     data=json.dumps({"faults": [{"status": 429, "errorcode": "SpeedQuotaExceed"}]})
                                     .encode())
        urllib.request.urlopen(req, timeout=5).read()
        s = sink(f"cls://ap-guangzhou/{TOPIC}?endpoint={url}")
        assert s.send([s.encode(record())], meta()).verdict is Verdict.RETRY
        assert s.send([s.encode(record())], meta()).verdict is Verdict.OK
        got = json.loads(urllib.request.urlopen(url + "/_receiver/logs", timeout=5).read())
        assert got["requests"] == 2 and got["errors"] == ["SpeedQuotaExceed"] and len(got["groups"]) == 1
    finally:
        proc.terminate()
        proc.wait(5)


# --- the whole command: spool, retries, restart -------------------------------------------------------

FAST = {"FLOWLOG_RETRY_BASE": "0.05", "FLOWLOG_RETRY_MAX": "0.2"}
ROTATION = CAPTURES / "rotation.pcap"            # 30 windows: 30 batches


def flowlog_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENCENTCLOUD_")}
    env.update(TENCENTCLOUD_SECRET_ID=SECRET_ID, TENCENTCLOUD_SECRET_KEY=SECRET_KEY, **FAST)
    env.update(extra)
    return env


def flowlog(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowlog.cli", *map(str, args)], capture_output=True, text=True,
                          env=env or flowlog_env(), timeout=timeout)


def expected(capture, *options) -> list[str]:
    p = flowlog("capture", "-r", capture, *options)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def received(r) -> list[str]:
    return [" ".join(v for _, v in log["contents"]) for g in r.logs()["groups"] for log in g["logs"]]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_delivers_every_record_once_as_stdout_has_them(receiver, tmp_path):
    want = expected(ROTATION, "--account-id", "1251762227")
    p = flowlog("capture", "-r", ROTATION, "--account-id", "1251762227", "--spool", tmp_path / "spool",
                "--to", f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    assert p.returncode == 0 and p.stdout == "", p.stderr
    assert sorted(received(receiver)) == sorted(want)
    for g in receiver.logs()["groups"]:          # one log group: one window of one interface
        fields = [dict(log["contents"]) for log in g["logs"]]
        assert {f["interface-id"] for f in fields} == {g["tags"]["interface_id"]}
        assert g["tags"]["account_id"] == "1251762227" and g["source"] == "127.0.0.1"
        assert len({f["start"] for f in fields}) == 1
        assert all(log["time"] == int(dict(log["contents"])["start"]) * 1000 for log in g["logs"])


def test_cli_missing_credentials_and_secret_in_uri_are_usage_errors(tmp_path):
    env = {k: v for k, v in flowlog_env().items() if not k.startswith("TENCENTCLOUD_")}
    p = flowlog("capture", "-r", ROTATION, "--spool", tmp_path, "--to", f"cls://ap-guangzhou/{TOPIC}", env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "flowlog: error: cls: TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY not set: set TENCENTCLOUD_SECRET_ID "
        "and TENCENTCLOUD_SECRET_KEY (and TENCENTCLOUD_SESSION_TOKEN for temporary keys) in the environment"]
    p = flowlog("capture", "-r", ROTATION, "--spool", tmp_path, "--to",
                f"cls://ap-guangzhou/{TOPIC}?secret_key=hunter2")
    assert p.returncode == 2 and "hunter2" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_receiver_down_then_up(creds, tmp_path):
    port = free_port()
    want = expected(ROTATION)
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ROTATION), "--spool",
                             str(tmp_path), "--to", f"cls://ap-guangzhou/{TOPIC}?endpoint=http://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flowlog_env())
    try:
        time.sleep(1.5)                          # refused, retried, spooled
        assert proc.poll() is None
        with rx.ClsReceiver(topics=[TOPIC], port=port) as r:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "cannot deliver yet" in err and "refused" in err
            assert sorted(received(r)) == sorted(want)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_throttled_and_failing_server(receiver, tmp_path):
    receiver.faults({"status": 429, "errorcode": "SpeedQuotaExceed", "count": 3},
                    {"status": 500, "errorcode": "InternalError", "count": 2},
                    {"status": 503, "errorcode": "ServiceUnavailable"}, {"drop": True},
                    {"pass": True, "count": 4}, {"status": 400, "errorcode": "Timeout"})
    p = flowlog("capture", "-r", ROTATION, "--spool", tmp_path, "--stats",
                "--to", f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}")
    assert p.returncode == 0, p.stderr
    got = receiver.logs()
    assert got["errors"] == ["SpeedQuotaExceed"] * 3 + ["InternalError"] * 2 + ["ServiceUnavailable", "Timeout"]
    assert sorted(received(receiver)) == sorted(expected(ROTATION))
    assert SECRET_KEY not in p.stderr


def test_cli_bad_key_stops_the_sink_and_keeps_the_records(receiver, tmp_path):
    spool = tmp_path / "spool"
    p = flowlog("capture", "-r", ROTATION, "--spool", spool, "--to",
                f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}",
                env=flowlog_env(TENCENTCLOUD_SECRET_KEY="wrong-key-123456"))
    assert p.returncode == 3, p.stderr               # records wait in the spool
    assert "AuthFailure.SignatureFailure" in p.stderr and "wrong-key-123456" not in p.stderr
    assert received(receiver) == []
    p = flowlog("spool", "retry", "--spool", spool)    # the right key this time
    assert p.returncode == 0, p.stderr
    assert sorted(received(receiver)) == sorted(expected(ROTATION))


def test_cli_sigkill_mid_delivery_then_restart(receiver, tmp_path):
    spool = tmp_path / "spool"
    receiver.faults({"pass": True, "count": 5}, {"status": 503, "errorcode": "ServiceUnavailable",
                                                  "count": 10 ** 9})
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ROTATION), "--spool",
                             str(spool), "--to", f"cls://ap-guangzhou/{TOPIC}?endpoint={receiver.url}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=flowlog_env())
    try:
        deadline = time.monotonic() + 30
        while receiver.logs()["requests"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.logs()["requests"] >= 8
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(received(receiver)) == 5
    receiver.faults(clear=True)
    p = flowlog("spool", "retry", "--spool", spool)
    assert p.returncode == 0, p.stderr
    assert sorted(received(receiver)) == sorted(expected(ROTATION))      # nothing lost, nothing twice
