"""The cos: sink (Tencent Cloud Object Storage, through its S3-compatible API).

Unit level: the URI, the object keys, the classification of boto3's errors, the boto3
settings COS needs (virtual-host addressing, SigV4 with the COS region, no CRC checksums,
Content-MD5). Then against a real S3-compatible server the tests start (moto's server, in a
subprocess), directly and through a small fault-injecting proxy (throttling, 5xx, connections
cut before or after the server stored the object); and the whole command, with its spool,
through down/up, throttling, 5xx, and SIGKILL then restart: every record once, no object
content twice.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flowlog.core.api import BatchMeta, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.records import Record
from flowlog.core.uri import URI
from flowlog.plugins.cos import CosSink, classify_error, object_key

boto3 = pytest.importorskip("boto3", reason="boto3 (flowlog[cos], in flowlog[test]) is needed for the cos: sink")
from botocore.config import Config  # noqa: E402
from botocore import exceptions as bx  # noqa: E402

TESTS = Path(__file__).resolve().parent
CAPTURES = TESTS / "data" / "captures"
SECRET_ID = "AKIDflowlogcostestid00000000000000000"
SECRET_KEY = "flowlog-cos-test-secret-key-987654321"
REGION = "ap-guangzhou"
FAST = {"FLOWLOG_RETRY_BASE": "0.05", "FLOWLOG_RETRY_MAX": "0.2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meta(batch="b-1", start=1418530010, interface="eni-lq6mkcis", account="1251762227", records=1):
    return BatchMeta(batch_id=batch, start=start, end=start + 60, interface_id=interface, account_id=account,
                     records=records)


def record(i=0, **kw):
    values = dict(account_id="1251762227", interface_id="eni-lq6mkcis", srcaddr="172.31.16.139",
                  dstaddr="172.31.16.21", srcport=20641 + i, dstport=22, protocol=6, packets=20, bytes=4249,
                  start=1418530010, end=1418530070, action="ACCEPT", log_status="OK")
    values.update(kw)
    return Record(**values)


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    monkeypatch.delenv("TENCENTCLOUD_SESSION_TOKEN", raising=False)


def cos_sink(uri: str, fields=None) -> CosSink:
    s = CosSink(URI.parse(uri), SinkOptions(fields=fields))
    s.open()
    return s


# --- URI ------------------------------------------------------------------------------------------

def test_uri_parts():
    s = CosSink(URI.parse("cos://flowlogs-1250000000.ap-guangzhou/vpc/logs/"), SinkOptions())
    assert (s.bucket, s.region, s.prefix, s.layout) == ("flowlogs-1250000000", "ap-guangzhou", "vpc/logs", "cloud")
    assert s.endpoint == "https://cos.ap-guangzhou.myqcloud.com" and s.addressing == "virtual"
    s = CosSink(URI.parse("cos://flowlogs-1250000000.ap-beijing?endpoint=http://127.0.0.1:9000&layout=hive"),
                SinkOptions())
    assert (s.prefix, s.endpoint, s.addressing, s.layout) == ("", "http://127.0.0.1:9000", "path", "hive")
    s = CosSink(URI.parse("cos://b-1250000000.ap-beijing/?endpoint=https://cos.example&addressing=virtual"),
                SinkOptions())
    assert s.addressing == "virtual"


@pytest.mark.parametrize("uri, message", [
    ("cos:flowlogs-1250000000.ap-guangzhou/x", "expected cos://BUCKET-APPID.REGION/PREFIX/"),
    ("cos://flowlogs-1250000000/x", "expected cos://BUCKET-APPID.REGION/PREFIX/"),
    ("cos://flowlogs.ap-guangzhou/x", "BUCKET-APPID"),
    ("cos://Flowlogs-1250000000.ap-guangzhou/x", "BUCKET-APPID"),
    ("cos://flowlogs-1250000000.guangzhou/x", "not a COS region"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?layout=daily", "layout"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?addressing=dns", "addressing"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?colour=red", "unknown URI option colour"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?secret_key=hunter2", "credentials are never given in a URI"),
    ("cos://AKID:hunter2@flowlogs-1250000000.ap-guangzhou/x", "credentials are never given in a URI"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?endpoint=http://u:hunter2@h", "endpoint carries credentials"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?endpoint=s3.example", "expected http://HOST"),
    ("cos://flowlogs-1250000000.ap-guangzhou/x?timeout=-1", "timeout"),
])
def test_bad_uris_are_one_line_config_errors(uri, message):
    with pytest.raises(ConfigError) as e:
        CosSink(URI.parse(uri), SinkOptions())
    assert message in str(e.value) and "\n" not in str(e.value) and "hunter2" not in str(e.value)


def test_missing_credentials_and_missing_boto3(monkeypatch):
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", SECRET_ID)
    monkeypatch.delenv("TENCENTCLOUD_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError) as e:
        cos_sink("cos://flowlogs-1250000000.ap-guangzhou/x/")
    assert "TENCENTCLOUD_SECRET_KEY not set" in str(e.value)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError) as e:
        cos_sink("cos://flowlogs-1250000000.ap-guangzhou/x/")
    assert str(e.value) == "cos: needs the boto3 package: pip install 'flowlog[cos]'"


# --- keys -----------------------------------------------------------------------------------------

def test_keys_like_the_clouds_own_delivery():
    m = meta(batch="20141214-041650-000001", start=1418530010)        # 2014-12-14 04:06:50 UTC
    key = object_key("vpc/logs", "cloud", REGION, m)
    assert re.fullmatch(r"vpc/logs/1251762227/flowlogs/ap-guangzhou/2014/12/14/"
                        r"1251762227_flowlogs_ap-guangzhou_eni-lq6mkcis_20141214T0406Z_[0-9a-f]{16}\.log\.gz", key), key
    hive = object_key("vpc/logs", "hive", REGION, m)
    assert hive.startswith("vpc/logs/account_id=1251762227/region=ap-guangzhou/year=2014/month=12/day=14/hour=04/")
    assert hive.rsplit("/", 1)[1] == key.rsplit("/", 1)[1]


def test_keys_are_deterministic_in_the_batch_id():
    assert object_key("p", "cloud", REGION, meta("a")) == object_key("p", "cloud", REGION, meta("a"))
    assert object_key("p", "cloud", REGION, meta("a")) != object_key("p", "cloud", REGION, meta("a.0"))
    assert object_key("", "cloud", REGION, meta()).startswith("1251762227/flowlogs/")


def test_keys_without_account_and_with_odd_interface_names():
    key = object_key("p", "cloud", REGION, meta(account=None, interface="\\Device\\NPF_{5AE6}"))
    assert key.startswith("p/unknown/flowlogs/") and "_Device_NPF__5AE6__" in key
    assert object_key("p", "cloud", REGION, meta(account="-")).startswith("p/unknown/")


# --- errors ---------------------------------------------------------------------------------------

def _client_error(status, code, message="m"):
    return bx.ClientError({"Error": {"Code": code, "Message": message},
                           "ResponseMetadata": {"HTTPStatusCode": status,
                                                "HTTPHeaders": {"x-cos-request-id": "req-9"}}}, "PutObject")


@pytest.mark.parametrize("error, verdict", [
    (_client_error(503, "SlowDown"), Verdict.RETRY),
    (_client_error(500, "InternalError"), Verdict.RETRY),
    (_client_error(502, "BadGateway"), Verdict.RETRY),
    (_client_error(400, "RequestTimeout"), Verdict.RETRY),
    (_client_error(400, "BadDigest"), Verdict.RETRY),
    (_client_error(429, "TooManyRequests"), Verdict.RETRY),
    (_client_error(400, "EntityTooLarge"), Verdict.SPLIT),
    (_client_error(403, "AccessDenied"), Verdict.FAIL),
    (_client_error(403, "InvalidAccessKeyId"), Verdict.FAIL),
    (_client_error(403, "SignatureDoesNotMatch"), Verdict.FAIL),
    (_client_error(403, "RequestTimeTooSkewed"), Verdict.FAIL),
    (_client_error(404, "NoSuchBucket"), Verdict.FAIL),
    (_client_error(400, "InvalidBucketName"), Verdict.FAIL),
    (bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), Verdict.RETRY),
    (bx.ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), Verdict.RETRY),
    (bx.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), Verdict.RETRY),
    (bx.ParamValidationError(report="bad key"), Verdict.FAIL),
])
def test_errors_are_classified(error, verdict):
    a = classify_error(error, 10)
    assert a.verdict is verdict and a.reason.startswith("cos: ")
    if isinstance(error, bx.ClientError):
        assert error.response["Error"]["Code"] in a.reason and "req-9" in a.reason


def test_a_single_record_too_large_fails_and_other_exceptions_are_raised():
    assert classify_error(_client_error(400, "EntityTooLarge"), 1).verdict is Verdict.FAIL
    with pytest.raises(ZeroDivisionError):
        classify_error(ZeroDivisionError(), 1)


# --- what boto3 sends -----------------------------------------------------------------------------

def _capture_requests(sink: CosSink) -> list:
    """Short-circuit the sink's boto3 client: record each request instead of sending it."""
    from botocore.awsrequest import AWSResponse

    seen = []

    class Raw:
        def stream(self, **kw):
            yield b""

    def before_send(request, **kw):
        seen.append(request)
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, Raw())

    sink._client.meta.events.register("before-send.s3.PutObject", before_send)
    return seen


def test_virtual_host_addressing_sigv4_region_and_no_crc_checksum(creds):
    s = cos_sink("cos://flowlogs-1250000000.ap-guangzhou/vpc/")
    seen = _capture_requests(s)
    assert s.send([s.encode(record())], meta()).verdict is Verdict.OK
    (req,) = seen
    assert req.url.startswith("https://flowlogs-1250000000.cos.ap-guangzhou.myqcloud.com/vpc/1251762227/flowlogs/")
    headers = {k.lower(): v for k, v in req.headers.items()}
    auth = headers["authorization"].decode() if isinstance(headers["authorization"], bytes) else headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={SECRET_ID}/")
    assert "/ap-guangzhou/s3/aws4_request" in auth and SECRET_KEY not in auth
    assert not any(k.startswith("x-amz-checksum") or k == "x-amz-sdk-checksum-algorithm" for k in headers), headers
    body = req.body if isinstance(req.body, bytes) else req.body.read()
    import base64
    assert headers["content-md5"] in (base64.b64encode(hashlib.md5(body).digest()).decode(),
                                      base64.b64encode(hashlib.md5(body).digest()))


def test_session_token_is_sent(creds, monkeypatch):
    monkeypatch.setenv("TENCENTCLOUD_SESSION_TOKEN", "sts-token-xyz")
    s = cos_sink("cos://flowlogs-1250000000.ap-guangzhou/vpc/")
    seen = _capture_requests(s)
    s.send([s.encode(record())], meta())
    headers = {k.lower(): v for k, v in seen[0].headers.items()}
    token = headers["x-amz-security-token"]
    assert (token.decode() if isinstance(token, bytes) else token) == "sts-token-xyz"


def test_aws_variables_do_not_change_the_credentials(creds, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other")
    s = cos_sink("cos://flowlogs-1250000000.ap-guangzhou/vpc/")
    seen = _capture_requests(s)
    s.send([s.encode(record())], meta())
    auth = dict((k.lower(), v) for k, v in seen[0].headers.items())["authorization"]
    assert SECRET_ID in (auth.decode() if isinstance(auth, bytes) else auth)


def test_object_body_is_a_header_and_the_records_gzipped(creds):
    s = cos_sink("cos://flowlogs-1250000000.ap-guangzhou/vpc/")
    recs = [record(i) for i in range(3)] + [Record("1251762227", "eni-lq6mkcis", start=1418530010, end=1418530070,
                                                    log_status="NODATA")]
    body = s.body([s.encode(r) for r in recs])
    assert body == s.body([s.encode(r) for r in recs])          # the same bytes on every retry
    lines = gzip.decompress(body).decode().splitlines()
    assert lines[0] == ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
                        "start end action log-status")
    assert lines[1] == "2 1251762227 eni-lq6mkcis 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 " \
                       "1418530070 ACCEPT OK"
    assert lines[4] == "2 1251762227 eni-lq6mkcis - - - - - - - 1418530010 1418530070 - NODATA"


# --- a real S3-compatible server ------------------------------------------------------------------

class Moto:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                    raise RuntimeError(err[-1] if err else f"exit status {self.proc.returncode}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("no answer within 20 s")
                time.sleep(0.1)
        self.client = boto3.session.Session(aws_access_key_id=SECRET_ID, aws_secret_access_key=SECRET_KEY,
                                            region_name=REGION).client(
            "s3", endpoint_url=self.url, config=Config(s3={"addressing_style": "path"},
                                                       request_checksum_calculation="when_required",
                                                       response_checksum_validation="when_required"))
        self._n = 0

    def bucket(self) -> str:
        self._n += 1
        name = f"flowlogs{self._n}-1250000000"
        self.client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def moto():
    try:
        pytest.importorskip("moto.server", reason="moto[server] (in flowlog[test]) runs the S3-compatible server")
        server = Moto()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"the moto S3 server could not start: {e}")
    yield server
    server.stop()


class FaultProxy:
    """An HTTP proxy in front of the S3 server that can answer object PUTs with faults.

    ``faults`` are used in order, one per PUT: ``{"status": 503, "code": "SlowDown"}``,
    ``{"drop": True}`` (close the connection, nothing stored), ``{"store_then_drop": True}``
    (the server stores the object, the answer is lost). ``pass_first`` lets that many PUTs
    through before the faults; once they are used up, ``hold`` answers every PUT with 503
    SlowDown until cleared.
    """

    def __init__(self, target_port: int, port: int = 0):
        self.target_port = target_port
        self.faults: list[dict] = []
        self.hold = False
        self.pass_first = 0
        self.puts: list[tuple[str, str]] = []          # (path, what happened)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fault = None
                if self.command == "PUT":
                    with proxy.lock:
                        if proxy.pass_first > 0:
                            proxy.pass_first -= 1
                        elif proxy.faults:
                            fault = proxy.faults.pop(0)
                        elif proxy.hold:
                            fault = {"status": 503, "code": "SlowDown"}
                        proxy.puts.append((self.path, json.dumps(fault) if fault else "ok"))
                if fault and fault.get("drop"):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault and fault.get("status"):
                    xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{fault['code']}</Code>"
                           f"<Message>injected</Message><RequestId>proxy-1</RequestId></Error>").encode()
                    self.send_response(fault["status"])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                if fault and fault.get("store_then_drop"):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto):
    p = FaultProxy(moto.port)
    yield p
    p.stop()


def lines_of(objects: dict[str, bytes]) -> list[str]:
    out = []
    for body in objects.values():
        text = gzip.decompress(body).decode().splitlines()
        assert text[0].startswith("version account-id interface-id")
        out.extend(text[1:])
    return out


def test_send_puts_one_object_and_a_retry_overwrites_it(moto, creds):
    bucket = moto.bucket()
    s = cos_sink(f"cos://{bucket}.{REGION}/vpc/?endpoint={moto.url}")
    items = [s.encode(record(i)) for i in range(5)]
    assert s.send(items, meta("batch-7", records=5)).verdict is Verdict.OK
    assert s.send(items, meta("batch-7", records=5)).verdict is Verdict.OK      # a retry of the same batch
    objects = moto.objects(bucket)
    assert list(objects) == [s.key(meta("batch-7"))]
    assert lines_of(objects) == [i.decode() for i in items]


def test_hive_layout_against_the_server(moto, creds):
    bucket = moto.bucket()
    s = cos_sink(f"cos://{bucket}.{REGION}/tables/flowlogs?endpoint={moto.url}&layout=hive")
    assert s.send([s.encode(record())], meta()).verdict is Verdict.OK
    (key,) = moto.objects(bucket)
    assert key.startswith("tables/flowlogs/account_id=1251762227/region=ap-guangzhou/year=2014/month=12/day=14/"
                          "hour=04/")


def test_no_such_bucket_fails_with_a_reason(moto, creds):
    s = cos_sink(f"cos://nosuchbucket-1250000000.{REGION}/x/?endpoint={moto.url}")
    a = s.send([s.encode(record())], meta())
    assert a.verdict is Verdict.FAIL and "NoSuchBucket" in a.reason and SECRET_KEY not in a.reason


def test_server_down_is_a_retry(creds):
    s = cos_sink(f"cos://flowlogs-1250000000.{REGION}/x/?endpoint=http://127.0.0.1:{free_port()}&timeout=2")
    a = s.send([s.encode(record())], meta())
    assert a.verdict is Verdict.RETRY and "127.0.0.1" in a.reason


@pytest.mark.parametrize("fault, text", [
    ({"status": 503, "code": "SlowDown"}, "SlowDown"),
    ({"status": 500, "code": "InternalError"}, "InternalError"),
    ({"drop": True}, "cos: "),
    ({"store_then_drop": True}, "cos: "),
])
def test_faults_are_retried_and_never_duplicate(moto, proxy, creds, fault, text):
    bucket = moto.bucket()
    s = cos_sink(f"cos://{bucket}.{REGION}/x/?endpoint={proxy.url}")
    items = [s.encode(record(i)) for i in range(3)]
    proxy.faults.append(fault)
    a = s.send(items, meta("b-9", records=3))
    assert a.verdict is Verdict.RETRY and text in a.reason, a.reason
    assert s.send(items, meta("b-9", records=3)).verdict is Verdict.OK
    objects = moto.objects(bucket)
    assert len(objects) == 1 and lines_of(objects) == [i.decode() for i in items]


# --- the whole command: spool, retries, restart -------------------------------------------------------

ROTATION = CAPTURES / "rotation.pcap"                        # 30 windows: 30 batches
MULTI = CAPTURES / "pcapng-multi-interface.pcapng"           # interfaces named like \Device\NPF_{...}


def flowlog_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENCENTCLOUD_", "AWS_"))}
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


def check_objects(objects: dict[str, bytes], want: list[str], prefix: str) -> None:
    """Every record exactly once; each object one window of one interface, under its key."""
    assert Counter(lines_of(objects)) == Counter(want)
    contents = [gzip.decompress(b) for b in objects.values()]
    assert len(set(contents)) == len(contents)                   # no object content twice
    for key, body in objects.items():
        records = [line.split() for line in gzip.decompress(body).decode().splitlines()[1:]]
        assert records and len({(r[2], r[10]) for r in records}) == 1, key
        iface, start, account = records[0][2], int(records[0][10]), records[0][1]
        t = time.gmtime(start - start % 60)
        acct = "unknown" if account == "-" else account
        assert key.startswith(f"{prefix}/{acct}/flowlogs/{REGION}/{t.tm_year:04d}/{t.tm_mon:02d}/{t.tm_mday:02d}/"
                              f"{acct}_flowlogs_{REGION}_{re.sub(r'[^A-Za-z0-9._-]', '_', iface)}_"
                              f"{time.strftime('%Y%m%dT%H%MZ', t)}_"), key


def test_cli_writes_one_object_per_window_and_interface(moto, tmp_path):
    bucket = moto.bucket()
    for capture in (ROTATION, MULTI):
        p = flowlog("capture", "-r", capture, "--spool", tmp_path / "spool",
                    "--to", f"cos://{bucket}.{REGION}/vpc/{capture.stem}/?endpoint={moto.url}")
        assert p.returncode == 0 and p.stdout == "", p.stderr
    objects = moto.objects(bucket)
    for capture in (ROTATION, MULTI):
        mine = {k: v for k, v in objects.items() if k.startswith(f"vpc/{capture.stem}/")}
        want = expected(capture)
        check_objects(mine, want, f"vpc/{capture.stem}")
        assert len(mine) == len({(r.split()[2], int(r.split()[10]) // 60) for r in want})


def test_cli_hive_layout_and_account(moto, tmp_path):
    bucket = moto.bucket()
    p = flowlog("capture", "-r", MULTI, "--account-id", "1251762227", "--spool", tmp_path,
                "--to", f"cos://{bucket}.{REGION}/t?endpoint={moto.url}&layout=hive")
    assert p.returncode == 0, p.stderr
    objects = moto.objects(bucket)
    assert objects and all(re.match(r"t/account_id=1251762227/region=ap-guangzhou/year=\d{4}/month=\d\d/day=\d\d/"
                                    r"hour=\d\d/1251762227_flowlogs_", k) for k in objects)
    assert Counter(lines_of(objects)) == Counter(expected(MULTI, "--account-id", "1251762227"))


def test_cli_server_down_then_up(moto, tmp_path):
    bucket = moto.bucket()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ROTATION), "--spool",
                             str(tmp_path), "--to", f"cos://{bucket}.{REGION}/vpc/?endpoint=http://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flowlog_env())
    p = None
    try:
        time.sleep(1.5)                           # refused, retried, spooled
        assert proc.poll() is None
        p = FaultProxy(moto.port, port=port)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "cannot deliver yet" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        if p:
            p.stop()
    check_objects(moto.objects(bucket), expected(ROTATION), "vpc")


def test_cli_throttled_failing_and_cut_connections(moto, proxy, tmp_path):
    bucket = moto.bucket()
    proxy.faults.extend([{"status": 503, "code": "SlowDown"}, {"status": 503, "code": "SlowDown"},
                         {"status": 500, "code": "InternalError"}, {"drop": True}, {"store_then_drop": True},
                         {"status": 503, "code": "ServiceUnavailable"}, {"store_then_drop": True}])
    p = flowlog("capture", "-r", ROTATION, "--spool", tmp_path, "--to", f"cos://{bucket}.{REGION}/vpc/?endpoint={proxy.url}")
    assert p.returncode == 0, p.stderr
    assert not proxy.faults and SECRET_KEY not in p.stderr
    objects = moto.objects(bucket)
    check_objects(objects, expected(ROTATION), "vpc")
    assert len(objects) == 30                    # the two batches whose answer was lost: overwritten, not doubled


def test_cli_sigkill_mid_delivery_then_restart(moto, proxy, tmp_path):
    bucket = moto.bucket()
    spool = tmp_path / "spool"
    uri = f"cos://{bucket}.{REGION}/vpc/?endpoint={proxy.url}"
    proxy.pass_first = 4
    # the fifth batch: refused once, then stored on its second try without the sender hearing so
    proxy.faults.extend([{"status": 503, "code": "SlowDown"}, {"store_then_drop": True}])
    proxy.hold = True
    proc = subprocess.Popen([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ROTATION), "--spool",
                             str(spool), "--to", uri], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=flowlog_env())
    try:
        deadline = time.monotonic() + 30
        while len(proxy.puts) < 9 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(proxy.puts) >= 9
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(moto.objects(bucket)) == 5
    proxy.hold = False
    # the restart: a new run with the same spool sends what waits first
    p = flowlog("capture", "-r", CAPTURES / "empty.pcap", "--spool", spool, "--to", uri)
    assert p.returncode == 0, p.stderr
    objects = moto.objects(bucket)
    check_objects(objects, expected(ROTATION), "vpc")
    assert len(objects) == 30
