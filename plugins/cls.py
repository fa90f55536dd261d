"""The ``cls`` sink: records to a Tencent Cloud Log Service (CLS) log topic.

``cls://REGION/TOPIC_ID`` posts each batch to CLS's structured-log upload API
(``POST /structuredlog?topic_id=TOPIC_ID``): a protobuf ``LogGroupList`` (the schema CLS
publishes as ``cls.proto``, encoded here without the protobuf package), LZ4 block compressed
(``x-cls-compress-type: lz4``), signed with CLS's HMAC-SHA1 request signature. One record is
one log: its time is the window start (milliseconds, as CLS recommends), one content per
record field (the version-2 field names as keys, ``-`` where a field has no value). The log
group's ``source`` is this host's address; its tags carry the interface (and account) id.

Query options: ``intranet=1`` (the in-region host ``REGION.cls.tencentyun.com``),
``endpoint=URL`` (a private endpoint, or a test receiver), ``source=ADDR``, and those of every
HTTP sink: ``timeout=SECONDS``, ``ca=PATH``, ``verify=false``. Credentials come from ``TENCENTCLOUD_SECRET_ID`` and
``TENCENTCLOUD_SECRET_KEY`` (``TENCENTCLOUD_SESSION_TOKEN`` for temporary keys), never from
the URI. Needs the ``lz4`` package: ``pip install 'flowlog[cls]'``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from urllib.parse import quote, quote_plus, urlsplit

from flowlog.core import __version__
from flowlog.core.api import Answer, BatchMeta, DeliverySink, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.hookspecs import hookimpl
from flowlog.core.http import CLIENT_QUERY_KEYS, HttpClient, Response, TransportError, client_options
from flowlog.core.records import TIME_FIELDS, V2_FIELDS, format_time
from flowlog.core.uri import URI, refuse_secrets

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"
ENV_SESSION_TOKEN = "TENCENTCLOUD_SESSION_TOKEN"
ENV_HINT = f"{ENV_SECRET_ID} and {ENV_SECRET_KEY} (and {ENV_SESSION_TOKEN} for temporary keys)"

#: CLS's limits on one upload (its "log upload" limits): log groups per request, logs per
#: group, bytes of values per group, bytes of the request before compression.
MAX_GROUPS = 10
MAX_LOGS_PER_GROUP = 10_000
MAX_GROUP_BYTES = 5 << 20
MAX_REQUEST_BYTES = 6 << 20

#: Error codes CLS answers that are worth a retry (the vendor SDKs retry exactly these, and 5xx).
RETRY_CODES = frozenset(("SpeedQuotaExceed", "InternalError", "Timeout"))
#: Error codes meaning the request was too large: sent again in halves.
SPLIT_CODES = frozenset(("LogSizeExceed",))

QUERY_KEYS = ("intranet", "endpoint", "source", *CLIENT_QUERY_KEYS)
_REGION = re.compile(r"^[a-z]+(?:-[a-z0-9]+)+$")
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@hookimpl
def register_sinks(register):
    register(ClsSink)


# --- protobuf, the few wire types cls.proto uses --------------------------------------------------

def varint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint (negative int64 values as their 64-bit two's complement)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes, or an embedded message."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number: int, value: int) -> bytes:
    """A varint field (wire type 0): int64 and friends."""
    return varint(number << 3) + varint(value)


def encode_log(time_value: int, contents) -> bytes:
    """A ``Log`` message: ``time`` (1) and a ``Content`` (2) of ``key`` (1), ``value`` (2) per pair."""
    parts = [field_varint(1, time_value)]
    for key, value in contents:
        parts.append(field_bytes(2, field_bytes(1, key.encode()) + field_bytes(2, value.encode())))
    return b"".join(parts)


def encode_log_group(logs, *, context_flow: str | None = None, filename: str | None = None,
                     source: str | None = None, tags=()) -> bytes:
    """A ``LogGroup``: ``logs`` (1, each an encoded Log), ``contextFlow`` (2), ``filename`` (3),
    ``source`` (4) and ``logTags`` (5) of ``key`` (1), ``value`` (2); fields in number order."""
    parts = [field_bytes(1, log) for log in logs]
    for number, text in ((2, context_flow), (3, filename), (4, source)):
        if text is not None:
            parts.append(field_bytes(number, text.encode()))
    for key, value in tags:
        parts.append(field_bytes(5, field_bytes(1, key.encode()) + field_bytes(2, value.encode())))
    return b"".join(parts)


def encode_log_group_list(groups) -> bytes:
    """A ``LogGroupList``: ``logGroupList`` (1), each an encoded LogGroup."""
    return b"".join(field_bytes(1, g) for g in groups)


# --- the request signature ------------------------------------------------------------------------

def signature(secret_id: str, secret_key: str, method: str, path: str, params: dict[str, str],
              headers: dict[str, str], start: int, end: int) -> str:
    """The ``Authorization`` value of CLS's request signature (HMAC-SHA1).

    HttpRequestInfo is the method in lower case, the path, the signed query parameters and
    the signed headers (keys in lower case, sorted, values URL-encoded, ``k=v`` joined by
    ``&``), each followed by a newline; StringToSign is ``sha1``, the key time and the SHA1 of
    HttpRequestInfo, each followed by a newline; SignKey is HMAC-SHA1(SecretKey, KeyTime) in
    hex; the signature is HMAC-SHA1(SignKey, StringToSign) in hex.
    """
    def fmt(d):
        return "&".join(f"{k}={quote_plus(v)}" for k, v in sorted((k.lower(), v) for k, v in d.items()))

    key_time = f"{start};{end}"
    info = f"{method.lower()}\n{path}\n{fmt(params)}\n{fmt(headers)}\n"
    to_sign = f"sha1\n{key_time}\n{hashlib.sha1(info.encode()).hexdigest()}\n"
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    sig = hmac.new(sign_key.encode(), to_sign.encode(), hashlib.sha1).hexdigest()
    return (f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={key_time}&q-key-time={key_time}"
            f"&q-header-list={';'.join(sorted(k.lower() for k in headers))}"
            f"&q-url-param-list={';'.join(sorted(k.lower() for k in params))}&q-signature={sig}")


# --- the answers ----------------------------------------------------------------------------------

def classify(response: Response, items: int, secrets=()) -> Answer:
    """What CLS's answer to one upload means: OK, RETRY, SPLIT or FAIL (with a reason)."""
    status = response.status
    if status == 200:
        return Answer(Verdict.OK)
    code, message = "", ""
    try:
        body = json.loads(response.body.decode("utf-8", "replace") or "{}")
        if isinstance(body, dict):
            code, message = str(body.get("errorcode", "")), str(body.get("errormessage", ""))
    except ValueError:
        message = response.body[:200].decode("utf-8", "replace")
    message = _one_line(message, secrets)
    rid = response.header("x-cls-requestid")
    what = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "") + \
        (f" (request id {rid})" if rid else "")
    retry_after = _retry_after(response.header("retry-after"))
    if status == 429 or status >= 500 or code in RETRY_CODES:
        return Answer(Verdict.RETRY, f"cls: {what}", retry_after=retry_after)
    if status == 413 or code in SPLIT_CODES:
        if items > 1:
            return Answer(Verdict.SPLIT, f"cls: {what}")
        return Answer(Verdict.FAIL, f"cls: one record is larger than CLS takes ({what})")
    if status == 401 or code.startswith("AuthFailure") or code in ("Unauthorized", "InvalidAuthorization"):
        return Answer(Verdict.FAIL, f"cls: authentication failed ({what}); check {ENV_SECRET_ID}, "
                                    f"{ENV_SECRET_KEY}, {ENV_SESSION_TOKEN} and the clock")
    if status == 403:
        return Answer(Verdict.FAIL, f"cls: not allowed ({what}); the key needs permission to upload to the topic")
    if status == 404:
        return Answer(Verdict.FAIL, f"cls: no such log topic in this region ({what})")
    return Answer(Verdict.FAIL, f"cls: upload refused ({what})")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _one_line(text: str, secrets=()) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _flag(uri: URI, name: str, default: bool) -> bool:
    value = uri.query.get(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", ""):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{uri.scheme}: ?{name}={value!r}: expected 1 or 0")


def local_address(host: str, port: int) -> str:
    """This host's address on the route to ``host`` (no packet is sent), as CLS's ``source``."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


class ClsSink(DeliverySink):
    """Records to a Tencent Cloud Log Service (CLS) log topic."""

    scheme = "cls"
    description = "Tencent Cloud Log Service: cls://REGION/TOPIC_ID (needs flowlog[cls])"
    #: one batch is one log group: at most CLS's logs per group, and its bytes of values
    max_items = MAX_LOGS_PER_GROUP
    max_bytes = MAX_GROUP_BYTES

    def __init__(self, uri: URI, options: SinkOptions):
        super().__init__(uri, options)
        refuse_secrets(uri, ENV_HINT)
        if not uri.rest.startswith("//"):
            raise ConfigError(f"{uri.text!r}: expected cls://REGION/TOPIC_ID, e.g. cls://ap-guangzhou/"
                              "0c2f6a4e-2d71-4a3b-9a0e-6d3f0c8b7a11")
        unknown = sorted(set(uri.query) - set(QUERY_KEYS))
        if unknown:
            raise ConfigError(f"cls: unknown URI option {', '.join(unknown)}; options are: {', '.join(QUERY_KEYS)}")
        self.region = uri.netloc
        self.topic = uri.path.strip("/")
        if not _REGION.match(self.region):
            raise ConfigError(f"cls: {self.region!r} is not a CLS region (e.g. ap-guangzhou); "
                              "expected cls://REGION/TOPIC_ID")
        if not _TOPIC.match(self.topic):
            raise ConfigError(f"cls: {self.topic!r} is not a log topic id; expected cls://REGION/TOPIC_ID")
        intranet = _flag(uri, "intranet", False)
        endpoint = uri.query.get("endpoint")
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.username or parts.password:
                raise ConfigError(f"cls: the endpoint carries credentials; set {ENV_HINT} in the environment")
            self.endpoint = endpoint.rstrip("/")
        else:
            domain = "cls.tencentyun.com" if intranet else "cls.tencentcs.com"
            self.endpoint = f"https://{self.region}.{domain}"
        self.client_options = client_options(uri.query, "cls", https=self.endpoint.lower().startswith("https:"))
        HttpClient(self.endpoint, **self.client_options)    # checks the endpoint and the CA file now
        self.source = uri.query.get("source") or None
        self.fields = tuple(options.fields or V2_FIELDS)
        self._keys = [f.encode() for f in self.fields]
        self._local = threading.local()
        self._clients: list[HttpClient] = []    # every thread's client, to close at the end
        self._compress = None

    def open(self) -> None:
        try:
            import lz4.block
        except ImportError:
            raise ConfigError("cls: needs the lz4 package: pip install 'flowlog[cls]'") from None
        self._compress = lz4.block.compress
        self.secret_id = os.environ.get(ENV_SECRET_ID, "").strip()
        self.secret_key = os.environ.get(ENV_SECRET_KEY, "").strip()
        self.token = os.environ.get(ENV_SESSION_TOKEN, "").strip()
        if not self.secret_id or not self.secret_key:
            missing = " and ".join(n for n, v in ((ENV_SECRET_ID, self.secret_id), (ENV_SECRET_KEY, self.secret_key))
                                   if not v)
            raise ConfigError(f"cls: {missing} not set: set {ENV_HINT} in the environment")
        if self.source is None:
            probe = HttpClient(self.endpoint)
            self.source = local_address(probe.host, probe.port)

    # one record -> one encoded Log message
    def encode(self, record) -> bytes:
        start = record.start if record.start is not None else int(time.time())
        parts = [field_varint(1, int(start) * 1000)]
        for name, key in zip(self.fields, self._keys):
            v = record.get(name)
            value = b"-" if v is None else (format_time(v) if name in TIME_FIELDS else str(v)).encode()
            content = varint(10) + varint(len(key)) + key + b"\x12" + varint(len(value)) + value
            parts.append(b"\x12" + varint(len(content)) + content)
        return b"".join(parts)

    def groups(self, items: list[bytes]) -> list[list[bytes]] | None:
        """The items as log groups within CLS's limits, or None when they need more than one request."""
        groups: list[list[bytes]] = [[]]
        size = 0
        for item in items:
            if groups[-1] and (len(groups[-1]) >= MAX_LOGS_PER_GROUP or size + len(item) > MAX_GROUP_BYTES):
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += len(item)
        return groups if len(groups) <= MAX_GROUPS else None

    def body(self, items: list[bytes], meta: BatchMeta) -> bytes | None:
        """The uncompressed LogGroupList for a batch, or None when it exceeds one request."""
        groups = self.groups(items)
        if groups is None:
            return None
        tags = [("interface_id", meta.interface_id)]
        if meta.account_id and meta.account_id != "-":
            tags.append(("account_id", meta.account_id))
        data = encode_log_group_list(encode_log_group(g, source=self.source, tags=tags) for g in groups)
        return data if len(data) <= MAX_REQUEST_BYTES else None

    def _client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = HttpClient(self.endpoint, **self.client_options)
            self._clients.append(client)
        return client

    def send(self, items: list[bytes], meta: BatchMeta) -> Answer:
        data = self.body(items, meta)
        if data is None:
            if len(items) > 1:
                return Answer(Verdict.SPLIT, "cls: batch exceeds one upload's limits")
            return Answer(Verdict.FAIL, "cls: one record exceeds CLS's upload limits")
        payload = self._compress(data, store_size=False)
        client = self._client()
        default_port = 443 if client.scheme == "https" else 80
        host = f"[{client.host}]" if ":" in client.host else client.host
        if client.port != default_port:
            host = f"{host}:{client.port}"
        path = client.base_path + "/structuredlog"
        signed = {"Content-Type": "application/x-protobuf", "Host": host}
        now = int(time.time())
        headers = dict(signed)
        headers["x-cls-compress-type"] = "lz4"
        headers["User-Agent"] = f"flowlog/{__version__}"
        if self.token:
            headers["X-Cls-Token"] = self.token
        headers["Authorization"] = signature(self.secret_id, self.secret_key, "POST", path,
                                             {"topic_id": self.topic}, signed, now - 60, now + 300)
        try:
            response = client.request("POST", f"/structuredlog?topic_id={quote(self.topic, safe='')}",
                                      body=payload, headers=headers)
        except TransportError as e:
            return Answer(Verdict.RETRY, f"cls: {e}")
        return classify(response, len(items), secrets=(self.secret_key, self.token))

    def close(self) -> None:
        for client in self._clients:
            client.close()
