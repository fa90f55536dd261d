"""The ``es+https`` and ``es+http`` sinks: records to Elasticsearch or OpenSearch through the bulk API.

``es+https://HOST:PORT/INDEX`` posts each batch to ``/INDEX/_bulk`` as NDJSON, written
directly over HTTP rather than with the official client (which refuses servers of another
major version, and OpenSearch). Every item's result is checked: the answer is 200 even
when items fail. Each record becomes one document with Elastic Common Schema names
(``@timestamp`` = the window start, ``source.ip``, ``destination.port``, ``network.transport``,
``event.action``, ...), the version-2 line as ``message`` and the record's own fields under
``flowlog``; its ``_id`` is a hash of the record's content, sent with ``create``: the same
record sent again (a retry, a restart, the same capture read twice) is answered 409 and
never stored twice. ``create`` is also what data streams require.

Query options: ``pipeline=NAME`` (an ingest pipeline), ``timeout=SECONDS``, ``ca=PATH``
(or ``ca_file``), ``verify=false``. Credentials from the environment only:
``FLOWLOG_ES_API_KEY`` (the encoded key as Kibana shows it, or ``id:key``) or
``FLOWLOG_ES_USER`` and ``FLOWLOG_ES_PASSWORD``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import sys
import threading
from functools import lru_cache
from urllib.parse import quote, urlencode

from flowlog.core.api import Answer, BatchMeta, DeliverySink, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.formats import Formatter
from flowlog.core.hookspecs import hookimpl
from flowlog.core.http import CLIENT_QUERY_KEYS, HttpClient, Response, TransportError, client_options
from flowlog.core.uri import URI, redact, refuse_secrets

ENV_API_KEY = "FLOWLOG_ES_API_KEY"
ENV_USER = "FLOWLOG_ES_USER"
ENV_PASSWORD = "FLOWLOG_ES_PASSWORD"
ENV_HINT = f"{ENV_API_KEY} or {ENV_USER}/{ENV_PASSWORD}"

QUERY_KEYS = ("pipeline",) + CLIENT_QUERY_KEYS

#: Elastic Common Schema version the documents follow.
ECS_VERSION = "8.11.0"

#: IANA protocol keywords, lower case, as ECS ``network.transport`` writes them.
TRANSPORT = {1: "icmp", 2: "igmp", 4: "ipv4", 6: "tcp", 17: "udp", 33: "dccp", 41: "ipv6", 47: "gre",
             50: "esp", 51: "ah", 58: "ipv6-icmp", 88: "eigrp", 89: "ospfigp", 103: "pim", 112: "vrrp",
             115: "l2tp", 132: "sctp", 136: "udplite"}
#: Protocols whose srcport/dstport are ports (SPEC.md): other protocols' values are not ports in ECS's sense.
PORT_PROTOCOLS = frozenset((6, 17, 132))

_IDENTITY_FIELDS = ("account_id", "interface_id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
                    "action", "log_status", "start", "end", "packets", "bytes", "tcp_flags")


@hookimpl
def register_sinks(register):
    register(EsHttpsSink)
    register(EsHttpSink)


def document_id(r) -> str:
    """The document's ``_id``: a hash of everything that tells records apart.

    Account, interface, the 5-tuple, action, log-status, start, end, packets, bytes, TCP flags
    and the first/last packet times to the nanosecond. The same record always gets the same id
    (so a retry or a re-read never duplicates); two records differing in any of these fields
    never share one. flow-direction is left out: it depends on configuration, not on traffic.
    """
    parts = ["-" if (v := getattr(r, f)) is None else str(v) for f in _IDENTITY_FIELDS]
    for t in (r.first_seen, r.last_seen):
        parts.append("-" if t is None else f"{t[0]}.{t[1]:09d}")
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode()


@lru_cache(maxsize=4096)
def iso_time(seconds: int):
    """Unix seconds as ISO 8601 UTC; epoch milliseconds (a number) beyond the year 9999."""
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return int(seconds) * 1000


def iso_time_ns(t) -> str | int:
    base = iso_time(t[0])
    if isinstance(base, int):
        return base + t[1] // 1_000_000
    return f"{base[:-1]}.{t[1]:09d}Z"


def ecs_document(r, message: str) -> dict:
    """One record as an Elastic Common Schema document (the version-2 fields kept under ``flowlog``)."""
    doc: dict = {"@timestamp": iso_time(r.start) if r.start is not None else None, "message": message,
                 "ecs": {"version": ECS_VERSION}}
    event: dict = {"kind": "event", "category": ["network"]}
    if r.start is not None:
        event["start"] = iso_time(r.start)
    if r.end is not None:
        event["end"] = iso_time(r.end)
    network: dict = {}
    if r.log_status == "OK":
        accepted = r.action == "ACCEPT"
        event["type"] = ["connection", "allowed" if accepted else "denied"]
        if r.action:
            event["action"] = r.action.lower()
            event["outcome"] = "success" if accepted else "failure"
        source: dict = {"address": r.srcaddr, "ip": r.srcaddr}
        destination: dict = {"address": r.dstaddr, "ip": r.dstaddr}
        if r.protocol in PORT_PROTOCOLS:
            source["port"] = r.srcport
            destination["port"] = r.dstport
        if r.packets is not None:
            source["packets"] = r.packets
        if r.bytes is not None:
            source["bytes"] = r.bytes
        doc["source"] = source
        doc["destination"] = destination
        doc["related"] = {"ip": [r.srcaddr] if r.srcaddr == r.dstaddr else [r.srcaddr, r.dstaddr]}
        if r.protocol is not None:
            network["iana_number"] = str(r.protocol)
            if r.protocol in TRANSPORT:
                network["transport"] = TRANSPORT[r.protocol]
        network["type"] = (r.type or ("IPv6" if ":" in r.srcaddr else "IPv4")).lower()
        if r.flow_direction:
            network["direction"] = r.flow_direction
    else:
        event["type"] = ["info"]
    if r.packets is not None:
        network["packets"] = r.packets
    if r.bytes is not None:
        network["bytes"] = r.bytes
    doc["event"] = event
    if network:
        doc["network"] = network
    if r.account_id is not None:
        doc["cloud"] = {"account": {"id": str(r.account_id)}}
    fields = {"version": 2}
    for name, attr in (("account-id", "account_id"), ("interface-id", "interface_id"), ("srcaddr", "srcaddr"),
                       ("dstaddr", "dstaddr"), ("srcport", "srcport"), ("dstport", "dstport"),
                       ("protocol", "protocol"), ("packets", "packets"), ("bytes", "bytes"), ("start", "start"),
                       ("end", "end"), ("action", "action"), ("log-status", "log_status"),
                       ("tcp-flags", "tcp_flags"), ("flow-direction", "flow_direction"), ("type", "type")):
        v = getattr(r, attr)
        if v is not None:
            fields[name] = v
    for name, t in (("first-seen", r.first_seen), ("last-seen", r.last_seen)):
        if t is not None:
            fields[name] = iso_time_ns(t)
    doc["flowlog"] = fields
    if doc["@timestamp"] is None:
        del doc["@timestamp"]
    return doc


class _EsSink(DeliverySink):
    """Shared by the es+https and es+http sinks."""

    https = True
    max_items = 5_000
    max_bytes = 5 << 20

    def __init__(self, uri: URI, options: SinkOptions):
        super().__init__(uri, options)
        refuse_secrets(uri, ENV_HINT)
        self.name = redact(uri.text)
        unknown = sorted(set(uri.query) - set(QUERY_KEYS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown option {', '.join(unknown)}= (options: {', '.join(QUERY_KEYS)})")
        host = uri.netloc
        index = uri.path.strip("/")
        if not host:
            raise ConfigError(f"{self.name}: expected {self.scheme}://HOST[:PORT]/INDEX")
        if not index or "/" in index:
            raise ConfigError(f"{self.name}: expected one index (or data stream or alias) name after the host: "
                              f"{self.scheme}://HOST[:PORT]/INDEX")
        if index != index.lower() or index.startswith(("-", "_", "+")) or any(c in index for c in ' "*\\<|,>?#:'):
            raise ConfigError(f"{self.name}: {index!r} is not a valid index name (lower case, no spaces, "
                              f"none of \\ / * ? \" < > | , # :, not starting with -, _ or +)")
        self.index = index
        self.origin = f"{'https' if self.https else 'http'}://{host}"
        self.http_options = client_options(uri.query, self.name, https=self.https)
        HttpClient(self.origin, **self.http_options)       # checks the address and the CA file now
        self.pipeline = uri.query.get("pipeline") or None
        self._auth_header, self._secrets, self._auth_hint = _credentials()
        query = {"filter_path": "took,errors,items.*.status,items.*.error"}
        if self.pipeline:
            query["pipeline"] = self.pipeline
        self._bulk_path = f"/{quote(index, safe='')}/_bulk?{urlencode(query)}"
        self._local = threading.local()
        self._formatter = Formatter("text")
        #: what the server said it is, once checked ("Elasticsearch 8.15.0", "OpenSearch 2.17.0")
        self.server: str | None = None

    def open(self) -> None:
        if not self.http_options["verify"]:
            sys.stderr.write(f"flowlog: warning: {self.name}: TLS certificate verification is off (verify=false)\n")
            sys.stderr.flush()

    # -- records to items ------------------------------------------------------------------------

    def encode(self, record) -> bytes:
        message = self._formatter.lines([record])[0]
        action = b'{"create":{"_id":"' + document_id(record).encode() + b'"}}\n'
        return action + json.dumps(ecs_document(record, message), ensure_ascii=False,
                                   separators=(",", ":")).encode() + b"\n"

    # -- sending ---------------------------------------------------------------------------------

    def _client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = HttpClient(self.origin, **self.http_options)
        return client

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "flowlog"}
        if content_type:
            h["Content-Type"] = content_type
        if self._auth_header:
            h["Authorization"] = self._auth_header
        return h

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def send(self, items: list[bytes], meta: BatchMeta) -> Answer:
        if not items:
            return Answer(Verdict.OK)
        try:
            if self.server is None:
                answer = self._check_server()
                if answer is not None:
                    return answer
            r = self._client().request("POST", self._bulk_path, b"".join(items),
                                       self._headers("application/x-ndjson"))
        except TransportError as e:
            return Answer(Verdict.RETRY, self._scrub(str(e)))
        return self._classify(r, len(items))

    def _check_server(self) -> Answer | None:
        """``GET /``: is this Elasticsearch 7 or later, or OpenSearch? None when it is (or cannot be told)."""
        r = self._client().request("GET", "/", None, self._headers())
        if r.status == 403:             # a key allowed to write but not to see the cluster: nothing to check
            self.server = "unknown (GET / not allowed)"
            return None
        if r.status in (401, 429) or r.status >= 500:
            return self._whole_request(r, "GET /")
        if r.status != 200:
            return Answer(Verdict.FAIL, f"{self.origin} does not answer like Elasticsearch or OpenSearch "
                                        f"(GET / answered {r.status})")
        try:
            info = json.loads(r.body)
            version = info["version"]
            number = str(version["number"])
            major = int(number.split(".")[0])
        except (ValueError, KeyError, TypeError):
            return Answer(Verdict.FAIL, f"{self.origin} does not answer like Elasticsearch or OpenSearch "
                                        f"(GET / gave no version number)")
        if version.get("distribution") == "opensearch":
            self.server = f"OpenSearch {number}"
            return None
        product = r.header("x-elastic-product")
        if product is None and info.get("tagline") != "You Know, for Search":
            return Answer(Verdict.FAIL, f"{self.origin} does not answer like Elasticsearch or OpenSearch")
        if major < 7:
            return Answer(Verdict.FAIL, f"{self.origin} runs Elasticsearch {number}; flowlog needs 7 or later")
        self.server = f"Elasticsearch {number}"
        return None

    def _classify(self, r: Response, n: int) -> Answer:
        if r.status != 200:
            return self._whole_request(r, "bulk request", n)
        try:
            answer = json.loads(r.body)
            errors = answer.get("errors")
            results = answer.get("items", [])
        except (ValueError, AttributeError):
            return Answer(Verdict.RETRY, f"{self.origin}: unreadable answer to a bulk request")
        if errors is False and (not results or len(results) == n):
            return Answer(Verdict.OK)
        if len(results) != n:
            return Answer(Verdict.RETRY, f"{self.origin}: the bulk answer has {len(results)} results for {n} "
                                         f"documents")
        pending: list[int] = []
        rejected: dict[int, str] = {}
        for i, item in enumerate(results):
            try:
                (result,) = item.values()
                status = int(result["status"])
            except (ValueError, AttributeError, TypeError, KeyError):
                pending.append(i)           # a result that cannot be read: sent again (create makes that safe)
                continue
            if 200 <= status < 300 or status == 409:      # 409 on create: the same document is already there
                continue
            error = result.get("error") or {}
            etype = error.get("type", "") if isinstance(error, dict) else ""
            reason = self._scrub(_reason(error, status))
            if status == 429 or status >= 500:
                pending.append(i)
            elif status == 404 and etype == "index_not_found_exception":
                return Answer(Verdict.FAIL, f"{self.name}: {reason}: create the index, or let the cluster create "
                                            f"it (action.auto_create_index)")
            elif status in (401, 403):
                return Answer(Verdict.FAIL, f"{self.name}: not allowed to write: {reason} "
                                            f"(check the privileges of {self._auth_hint})")
            elif "pipeline with id" in reason:
                return Answer(Verdict.FAIL, f"{self.name}: {reason}")
            else:
                rejected[i] = reason
        if len(pending) == n:
            return Answer(Verdict.RETRY, f"{self.origin}: every document was refused for now "
                                         f"({self._scrub(_first_reason(results))})")
        return Answer(Verdict.OK, pending=pending, rejected=rejected)

    def _whole_request(self, r: Response, what: str, n: int = 0) -> Answer:
        reason = self._scrub(_error_text(r))
        retry_after = _retry_after(r)
        if r.status == 401:
            return Answer(Verdict.FAIL, f"{self.origin} refused the credentials (401): check {self._auth_hint}"
                          if self._auth_header else
                          f"{self.origin} asks for credentials (401): set {ENV_HINT}")
        if r.status == 403:
            return Answer(Verdict.FAIL, f"{self.name}: not allowed (403: {reason}); check the privileges of "
                                        f"{self._auth_hint}")
        if r.status == 413:
            if n > 1:
                return Answer(Verdict.SPLIT, f"{self.origin}: request too large (413)")
            return Answer(Verdict.OK, rejected={0: "document larger than the server's http.max_content_length (413)"})
        if r.status == 429 or r.status >= 500:
            return Answer(Verdict.RETRY, f"{self.origin}: {what} answered {r.status} ({reason})",
                          retry_after=retry_after)
        if r.status == 404:
            return Answer(Verdict.FAIL, f"{self.name}: {what} answered 404 ({reason})")
        return Answer(Verdict.FAIL, f"{self.name}: {what} answered {r.status} ({reason})")


class EsHttpsSink(_EsSink):
    """Elasticsearch or OpenSearch, bulk API over HTTPS."""

    scheme = "es+https"
    description = "Elasticsearch 7-9 / OpenSearch bulk API over HTTPS (es+https://HOST:PORT/INDEX)"
    https = True


class EsHttpSink(_EsSink):
    """Elasticsearch or OpenSearch, bulk API over plain HTTP."""

    scheme = "es+http"
    description = "Elasticsearch 7-9 / OpenSearch bulk API over plain HTTP (es+http://HOST:PORT/INDEX)"
    https = False


def _credentials() -> tuple[str | None, tuple[str, ...], str]:
    """The Authorization header, the secret strings to keep out of messages, and the variables' names."""
    key = os.environ.get(ENV_API_KEY, "").strip()
    user = os.environ.get(ENV_USER, "")
    password = os.environ.get(ENV_PASSWORD, "")
    if key and (user or password):
        raise ConfigError(f"set either {ENV_API_KEY} or {ENV_USER}/{ENV_PASSWORD}, not both")
    if key:
        encoded = base64.b64encode(key.encode()).decode() if ":" in key else key
        return f"ApiKey {encoded}", tuple(s for s in {key, encoded, *key.split(":")[1:]} if len(s) >= 4), ENV_API_KEY
    if user or password:
        if not (user and password):
            raise ConfigError(f"set both {ENV_USER} and {ENV_PASSWORD} (or {ENV_API_KEY})")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"Basic {basic}", tuple(s for s in (password, basic) if len(s) >= 4), f"{ENV_USER}/{ENV_PASSWORD}"
    return None, (), ENV_HINT


def _reason(error, status: int) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}".rstrip(": ")
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            text += f" (caused by {cause.get('type', 'error')}: {cause['reason']})"
        return text
    return str(error) if error else f"status {status}"


def _first_reason(results) -> str:
    for item in results:
        try:
            (result,) = item.values()
            if result.get("error"):
                return _reason(result["error"], result.get("status", 0))
        except (ValueError, AttributeError):
            continue
    return "no reason given"


def _error_text(r: Response) -> str:
    try:
        body = json.loads(r.body)
        error = body.get("error")
        if isinstance(error, dict):
            return _reason(error, r.status)
        if error:
            return str(error)
    except (ValueError, AttributeError):
        pass
    text = r.body[:200].decode("utf-8", "replace").strip()
    return text or f"status {r.status}"


def _retry_after(r: Response) -> float | None:
    value = r.header("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
