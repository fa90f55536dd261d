"""The ``splunk+https`` and ``splunk+http`` sinks: records to a Splunk HTTP Event Collector (HEC).

``splunk+https://HOST:PORT`` posts each batch to ``/services/collector/event``: the events
of the batch as concatenated JSON objects, gzip'd, with ``Authorization: Splunk TOKEN``
(from ``FLOWLOG_SPLUNK_TOKEN``) and an ``X-Splunk-Request-Channel`` (a GUID) on every
request. Each event is the record's version-2 line, with ``sourcetype`` =
``aws:cloudwatchlogs:vpcflow`` unless told otherwise, so that the Splunk Add-on for AWS
parses it as it parses VPC flow logs; ``time`` is the window start, ``host`` this machine's
name.

With ``ack=1`` a batch counts as delivered only once HEC's indexer acknowledgement says
it is indexed (``POST /services/collector/ack``, polled for up to ``ack_timeout`` seconds);
without an acknowledgement in time the batch is sent again. HEC acknowledgement is
at-least-once: a batch indexed but not acknowledged in time is indexed twice.

HEC's answer codes are classified as Splunk documents them: busy (9), unhealthy (18-20) and
5xx are retried; token errors (1-4), an index the token may not write to (7) and a missing
acknowledgement setting (14) stop the sink with the reason; an invalid event (6, 12, 13, 15,
with ``invalid-event-number``): HEC has indexed the events before it, the invalid one goes
to the spool's rejected area with the reason, and the events after it are sent again.

Query options: ``index``, ``source``, ``sourcetype``, ``host``, ``ack=1``,
``ack_timeout=SECONDS`` (default 120), ``channel=GUID``, ``timeout=SECONDS``, ``ca=PATH`` (or
``ca_file``), ``verify=false``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import sys
import threading
import time
import uuid

from flowlog.core.api import Answer, BatchMeta, DeliverySink, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.formats import Formatter
from flowlog.core.hookspecs import hookimpl
from flowlog.core.http import CLIENT_QUERY_KEYS, HttpClient, Response, TransportError, client_options
from flowlog.core.uri import URI, redact, refuse_secrets

ENV_TOKEN = "FLOWLOG_SPLUNK_TOKEN"
DEFAULT_SOURCETYPE = "aws:cloudwatchlogs:vpcflow"
EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"

QUERY_KEYS = ("index", "source", "sourcetype", "host", "ack", "ack_timeout", "channel") + CLIENT_QUERY_KEYS

#: HEC status codes (Splunk's "Troubleshoot HTTP Event Collector" table).
TOKEN_CODES = {1: "token disabled", 2: "token is required", 3: "invalid authorization", 4: "invalid token"}
EVENT_CODES = frozenset((6, 12, 13, 15))     # one event is bad; invalid-event-number says which
RETRY_CODES = frozenset((8, 9, 18, 19, 20))  # internal error, busy, unhealthy

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@hookimpl
def register_sinks(register):
    register(SplunkHttpsSink)
    register(SplunkHttpSink)


class _SplunkSink(DeliverySink):
    """Shared by the splunk+https and splunk+http sinks."""

    https = True
    max_items = 5_000
    #: uncompressed bytes of one request: well under HEC's max_content_length on every deployment
    max_bytes = 1_000_000

    def __init__(self, uri: URI, options: SinkOptions):
        super().__init__(uri, options)
        refuse_secrets(uri, ENV_TOKEN)
        self.name = redact(uri.text)
        q = uri.query
        unknown = sorted(set(q) - set(QUERY_KEYS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown option {', '.join(unknown)}= (options: {', '.join(QUERY_KEYS)})")
        if not uri.netloc:
            raise ConfigError(f"{self.name}: expected {self.scheme}://HOST[:PORT]")
        prefix = uri.path.rstrip("/")
        for tail in (EVENT_PATH, "/services/collector"):
            if prefix.endswith(tail):
                prefix = prefix[: -len(tail)]
                break
        self.origin = f"{'https' if self.https else 'http'}://{uri.netloc}"
        self.event_path = prefix + EVENT_PATH
        self.ack_path = prefix + ACK_PATH
        self.http_options = client_options(q, self.name, https=self.https)
        HttpClient(self.origin, **self.http_options)        # checks the address and the CA file now
        token = os.environ.get(ENV_TOKEN, "").strip()
        if not token:
            raise ConfigError(f"{self.name}: set {ENV_TOKEN} to the HEC token (it is never given in the URI)")
        self._token = token
        ack = q.get("ack", "0").strip().lower()
        if ack not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{self.name}: ack={q['ack']!r}: expected 1 or 0")
        self.ack = ack in ("1", "true", "yes")
        try:
            self.ack_timeout = float(q.get("ack_timeout", "120"))
        except ValueError:
            self.ack_timeout = -1.0
        if not 0 < self.ack_timeout <= 86400:
            raise ConfigError(f"{self.name}: ack_timeout={q.get('ack_timeout')!r}: expected seconds, more than 0")
        channel = q.get("channel") or str(uuid.uuid4())
        if not _GUID.match(channel):
            raise ConfigError(f"{self.name}: channel={channel!r}: HEC channels are GUIDs "
                              f"(e.g. {uuid.uuid4()})")
        self.channel = channel
        for key in ("index", "source", "sourcetype", "host"):
            if key in q and not q[key].strip():
                raise ConfigError(f"{self.name}: {key}= is empty")
        self.index = q.get("index")
        self.source = q.get("source")
        self.sourcetype = q.get("sourcetype", DEFAULT_SOURCETYPE)
        self.host = q.get("host") or socket.gethostname()
        self._formatter = Formatter("text")
        envelope = {"host": self.host}
        if self.source:
            envelope["source"] = self.source
        envelope["sourcetype"] = self.sourcetype
        if self.index:
            envelope["index"] = self.index
        #: the constant part of every event, rendered once
        self._envelope = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
        self._local = threading.local()

    def open(self) -> None:
        if not self.http_options["verify"]:
            sys.stderr.write(f"flowlog: warning: {self.name}: TLS certificate verification is off (verify=false)\n")
            sys.stderr.flush()

    # -- records to events -----------------------------------------------------------------------

    def encode(self, record) -> bytes:
        line = self._formatter.lines([record])[0]
        time_part = b'"time":%d,' % record.start if record.start is not None else b""
        return (b"{" + time_part + self._envelope + b',"event":' +
                json.dumps(line, ensure_ascii=False).encode() + b"}\n")

    # -- sending ---------------------------------------------------------------------------------

    def _client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = HttpClient(self.origin, **self.http_options)
            self._local.cookie = None
        return client

    def _headers(self, gzipped: bool) -> dict[str, str]:
        h = {"Authorization": f"Splunk {self._token}", "X-Splunk-Request-Channel": self.channel,
             "Content-Type": "application/json", "User-Agent": "flowlog"}
        if gzipped:
            h["Content-Encoding"] = "gzip"
        cookie = getattr(self._local, "cookie", None)
        if cookie:                  # a load balancer's sticky session: acks are asked of the same indexer
            h["Cookie"] = cookie
        return h

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if len(self._token) >= 4 else text

    def send(self, items: list[bytes], meta: BatchMeta) -> Answer:
        if not items:
            return Answer(Verdict.OK)
        body = gzip.compress(b"".join(items), compresslevel=6, mtime=0)
        client = self._client()
        try:
            r = client.request("POST", self.event_path, body, self._headers(True))
        except TransportError as e:
            return Answer(Verdict.RETRY, self._scrub(str(e)))
        cookie = r.header("set-cookie")
        if cookie:
            self._local.cookie = cookie.split(";", 1)[0]
        answer, ack_id = self._classify(r, len(items))
        if not self.ack or answer.verdict is not Verdict.OK or answer.pending or answer.rejected:
            return answer           # an invalid event: HEC gives no ackId for the events before it
        if ack_id is None:
            return Answer(Verdict.FAIL, f"{self.name}: ack=1, but HEC answered without an ackId: turn on indexer "
                                        f"acknowledgement for the token, or leave out ack=1")
        acked = self._await_ack(ack_id)
        return answer if acked is None else acked

    def _classify(self, r: Response, n: int) -> tuple[Answer, int | None]:
        text, code, info = _hec_answer(r)
        text = self._scrub(text)
        what = f"HEC answered {r.status}" + (f" code {code}" if code is not None else "") + f" ({text})"
        if r.status == 200 and code in (0, None):
            ack_id = info.get("ackId")
            return Answer(Verdict.OK), ack_id if isinstance(ack_id, int) else None
        if code in TOKEN_CODES or (code is None and r.status in (401, 403)):
            return Answer(Verdict.FAIL, f"{self.name}: {what}: HEC refused the token: check {ENV_TOKEN}"), None
        if code == 7:
            return Answer(Verdict.FAIL, f"{self.name}: {what}: the token may not write to index "
                                        f"{self.index or '(the token default)'}; give ?index= one of the "
                                        f"token's allowed indexes"), None
        if code == 14:
            return Answer(Verdict.FAIL, f"{self.name}: {what}: leave out ack=1, or turn on indexer acknowledgement "
                                        f"for the token"), None
        if code in EVENT_CODES:
            bad = info.get("invalid-event-number")
            if isinstance(bad, int) and 0 <= bad < n:
                # HEC indexed the events before the bad one; the ones after it were not taken.
                return Answer(Verdict.OK, pending=list(range(bad + 1, n)), rejected={bad: f"HEC: {text}"}), None
            if n > 1:
                return Answer(Verdict.SPLIT, f"{self.name}: {what}"), None
            return Answer(Verdict.OK, rejected={0: f"HEC: {text}"}), None
        if code in RETRY_CODES or r.status == 429 or r.status >= 500:
            return Answer(Verdict.RETRY, f"{self.origin}: {what}", retry_after=_retry_after(r)), None
        if r.status == 413:
            if n > 1:
                return Answer(Verdict.SPLIT, f"{self.origin}: request too large (413)"), None
            return Answer(Verdict.OK, rejected={0: "event larger than HEC's max_content_length (413)"}), None
        if code == 5 and n == 0:
            return Answer(Verdict.OK), None
        return Answer(Verdict.FAIL, f"{self.name}: {what}"), None

    def _await_ack(self, ack_id: int) -> Answer | None:
        """Poll HEC until it acknowledges ``ack_id``: None once indexed, else the answer to give."""
        client = self._client()
        body = json.dumps({"acks": [ack_id]}).encode()
        deadline = time.monotonic() + self.ack_timeout
        delay = 0.05
        last = "no answer yet"
        while True:
            try:
                r = client.request("POST", self.ack_path, body, self._headers(False))
            except TransportError as e:
                last = self._scrub(str(e))
            else:
                text, code, info = _hec_answer(r)
                text = self._scrub(text)
                if r.status == 200:
                    acks = info.get("acks")
                    if isinstance(acks, dict) and acks.get(str(ack_id)) is True:
                        return None
                    last = "not indexed yet"
                elif code == 14:
                    return Answer(Verdict.FAIL, f"{self.name}: HEC: {text}: leave out ack=1, or turn on indexer "
                                                f"acknowledgement for the token")
                elif code in TOKEN_CODES or r.status in (401, 403):
                    return Answer(Verdict.FAIL, f"{self.name}: HEC answered {r.status} ({text}): HEC refused "
                                                f"the token: check {ENV_TOKEN}")
                else:
                    last = f"{r.status} {text}"
            if time.monotonic() + delay > deadline:
                return Answer(Verdict.RETRY, f"{self.origin}: no indexer acknowledgement for ackId {ack_id} within "
                                             f"{self.ack_timeout:g}s ({last}); the batch is sent again")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


class SplunkHttpsSink(_SplunkSink):
    """Splunk HTTP Event Collector over HTTPS."""

    scheme = "splunk+https"
    description = "Splunk HTTP Event Collector over HTTPS (splunk+https://HOST:PORT), VPC flow sourcetype"
    https = True


class SplunkHttpSink(_SplunkSink):
    """Splunk HTTP Event Collector over plain HTTP."""

    scheme = "splunk+http"
    description = "Splunk HTTP Event Collector over plain HTTP (splunk+http://HOST:PORT), VPC flow sourcetype"
    https = False


def _hec_answer(r: Response) -> tuple[str, int | None, dict]:
    """HEC's ``{"text": ..., "code": N, ...}``: the text, the code (None if absent) and the whole object."""
    try:
        info = json.loads(r.body)
        if not isinstance(info, dict):
            raise ValueError
    except ValueError:
        text = r.body[:200].decode("utf-8", "replace").strip()
        return text or f"status {r.status}", None, {}
    code = info.get("code")
    return str(info.get("text", "")) or f"status {r.status}", code if isinstance(code, int) else None, info


def _retry_after(r: Response) -> float | None:
    value = r.header("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
