"""A Splunk HTTP Event Collector (HEC) stand-in for tests, written from Splunk's documentation.

What it does, as HEC does it:

- ``POST /services/collector``, ``/services/collector/event`` (and ``/event/1.0``): events as
  JSON objects one after another (white space between them or none), optionally
  ``Content-Encoding: gzip``; token in ``Authorization: Splunk TOKEN`` (Basic with the token
  as password also works; the token in the query string is refused, code 16).
- The answer codes of Splunk's table: 0 Success; 1 Token disabled (403); 2 Token is
  required (401); 3 Invalid authorization (401); 4 Invalid token (403); 5 No data (400);
  6 Invalid data format (400); 7 Incorrect index (400); 8 Internal server error (500);
  9 Server is busy (503); 10 Data channel is missing (400); 11 Invalid data channel (400);
  12 Event field is required (400); 13 Event field cannot be blank (400); 14 ACK is disabled
  (400); 15 Error in handling indexed fields (400); 16 Query string authorization is not
  enabled (400); 17 HEC is healthy (200); 18 HEC is unhealthy, queues are full (503). The
  per-event codes (6, 7, 12, 13, 15) carry ``invalid-event-number``, the zero-based position
  of the first bad event; the events before it are indexed, the rest of the request is not.
- Channels: a token with indexer acknowledgement needs ``X-Splunk-Request-Channel`` (or
  ``?channel=``), a GUID. Acknowledgement: a successful request gets ``ackId`` (counting from
  0 per channel); ``POST /services/collector/ack`` with ``{"acks": [ids]}`` answers
  ``{"acks": {"id": true|false}}``: true once the events are indexed (``ack_delay`` seconds
  after the request); an id reported true is forgotten afterwards.
- ``GET /services/collector/health``: 17 or, when busy, 18.

Configuration (``POST /_receiver/config``, or keyword arguments to :func:`serve`): ``token``,
``token_disabled``, ``ack`` (the token's indexer acknowledgement), ``ack_delay``,
``indexes`` (the token's allowed indexes; empty: any), ``max_content_length`` (bytes, after
decompression as HEC counts them; 413 beyond). Faults (``POST /_receiver/faults``, object or
list, each for the next ``count`` event requests)::

    {"status": 503, "code": 9, "count": 3}    an answer from the code table (busy, 500, ...)
    {"cut": true, "count": 2}                  read part of the request, then reset the connection
    {"lose": true}                             answer Success with an ackId that never turns true
    {"delay": 0.5, "count": 10}                answer late

``GET /_receiver/events`` lists indexed events (with the channel and ackId of their request),
``GET /_receiver/requests`` the requests seen (Authorization value left out),
``POST /_receiver/reset`` starts afresh.

Run alone: ``python hec_receiver.py --port 0 --print-port [--ack]`` (the token is read from
FLOWLOG_SPLUNK_TOKEN). Tests import it by path and call :func:`serve`.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stand_in import Receiver, start  # noqa: E402  (the stand-ins' shared server, next to this file)

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: code -> (HTTP status, text), Splunk's "Troubleshoot HTTP Event Collector" table.
CODES = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
}
EVENT_ENDPOINTS = ("/services/collector", "/services/collector/event", "/services/collector/event/1.0")
SETTINGS = ("token", "token_disabled", "ack", "ack_delay", "indexes", "max_content_length")


class Store:
    def __init__(self, token: str = "00000000-0000-0000-0000-000000000000", token_disabled: bool = False,
                 ack: bool = False, ack_delay: float = 0.05, indexes=(), max_content_length: int = 838860800):
        self.lock = threading.RLock()
        self.configure(token=token, token_disabled=token_disabled, ack=ack, ack_delay=ack_delay, indexes=indexes,
                       max_content_length=max_content_length)
        self.reset()

    def configure(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                if k not in SETTINGS:
                    raise ValueError(f"unknown setting {k!r}")
                setattr(self, k, list(v) if k == "indexes" else v)

    def reset(self) -> None:
        with self.lock:
            self.events: list[dict] = []
            self.faults: list[dict] = []
            self.requests: list[dict] = []
            self.channels: dict[str, dict] = {}     # channel -> {"next": int, "pending": {ackId: (due, lost)}}

    def take_fault(self) -> dict | None:
        with self.lock:
            if self.faults:
                f = self.faults[0]
                f["count"] = f.get("count", 1) - 1
                if f["count"] <= 0:
                    self.faults.pop(0)
                return dict(f)
        return None


def _answer(code: int, **extra) -> tuple[int, dict]:
    status, text = CODES[code]
    return status, {"text": text, "code": code, **extra}


def _events(data: str):
    """The JSON values of a request body, in order; a value that is not JSON ends the list with None."""
    decoder = json.JSONDecoder()
    pos, n = 0, len(data)
    while True:
        while pos < n and data[pos].isspace():
            pos += 1
        if pos >= n:
            return
        try:
            value, pos = decoder.raw_decode(data, pos)
        except ValueError:
            yield None
            return
        yield value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hec-receiver"
    sys_version = ""
    store: Store
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("hec-receiver: " + fmt % args + "\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _read_body(self, limit: int | None = None) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n if limit is None else min(n, limit)) if n else b""

    def _reset_connection(self) -> None:
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if path.startswith("/_receiver/"):
            return self._control(method, path, query)
        store = self.store
        with store.lock:
            store.requests.append({"method": method, "path": self.path, "headers": {
                k: (v.split(" ", 1)[0] + " ..." if k.lower() == "authorization" else v)
                for k, v in self.headers.items()}})
        if path == "/services/collector/health" and method == "GET":
            busy = any(f.get("code") in (9, 18) for f in store.faults)
            return self._send(*_answer(18 if busy else 17))
        if method != "POST" or path not in EVENT_ENDPOINTS + ("/services/collector/ack",):
            self._read_body()
            return self._send(404, {"text": "The requested URL was not found on this server.", "code": 404})
        fault = store.take_fault() if path != "/services/collector/ack" else None
        if fault and fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault and fault.get("cut"):
            self._read_body(limit=int(self.headers.get("Content-Length") or 0) // 2)
            return self._reset_connection()
        body = self._read_body()
        problem = self._authenticate(query)
        if problem is not None:
            return self._send(*_answer(problem))
        if fault and fault.get("code") is not None:
            status, answer = _answer(int(fault["code"]))
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
            return self._send(int(fault.get("status", status)), answer, headers)
        channel = self.headers.get("X-Splunk-Request-Channel") or query.get("channel")
        if store.ack or path == "/services/collector/ack":
            if path == "/services/collector/ack" and not store.ack:
                return self._send(*_answer(14))
            if not channel:
                return self._send(*_answer(10))
            if not GUID.match(channel):
                return self._send(*_answer(11))
        elif channel and not GUID.match(channel):
            return self._send(*_answer(11))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return self._send(*_answer(6, **{"invalid-event-number": 0}))
        if len(body) > store.max_content_length:
            return self._send(413, {"text": "Content-Length of %d too large (maximum is %d)"
                                            % (len(body), store.max_content_length), "code": 413})
        if path == "/services/collector/ack":
            return self._acks(channel, body)
        return self._collect(channel, body, lost=bool(fault and fault.get("lose")))

    def _authenticate(self, query: dict) -> int | None:
        store = self.store
        given = self.headers.get("Authorization")
        if not given:
            return 16 if "token" in query else 2
        scheme, _, value = given.strip().partition(" ")
        if scheme.lower() == "splunk":
            token = value.strip()
        elif scheme.lower() == "basic":
            try:
                token = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return 3
        else:
            return 3
        if token != store.token:
            return 4
        if store.token_disabled:
            return 1
        return None

    def _collect(self, channel: str | None, body: bytes, lost: bool) -> None:
        store = self.store
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._send(*_answer(6, **{"invalid-event-number": 0}))
        if not text.strip():
            return self._send(*_answer(5))
        accepted, problem = [], None
        for i, event in enumerate(_events(text)):
            if not isinstance(event, dict):
                problem = _answer(6, **{"invalid-event-number": i})
            elif "event" not in event:
                problem = _answer(12, **{"invalid-event-number": i})
            elif event["event"] is None or (isinstance(event["event"], str) and not event["event"].strip()) \
                    or event["event"] in ({}, []):
                problem = _answer(13, **{"invalid-event-number": i})
            elif store.indexes and event.get("index", "main") not in store.indexes:
                problem = _answer(7, **{"invalid-event-number": i})
            elif "fields" in event and (not isinstance(event["fields"], dict) or
                                        any(isinstance(v, dict) for v in event["fields"].values())):
                problem = _answer(15, **{"invalid-event-number": i})
            if problem:
                break
            accepted.append(event)
        with store.lock:
            ack_id = None
            if store.ack and problem is None:
                ch = store.channels.setdefault(channel, {"next": 0, "pending": {}})
                ack_id = ch["next"]
                ch["next"] += 1
                ch["pending"][ack_id] = (time.monotonic() + float(store.ack_delay), lost)
            if not lost:
                # the events before an invalid one are indexed; those after it are not read
                store.events += [{"channel": channel, "ackId": ack_id, **e} for e in accepted]
        if problem:
            return self._send(*problem)
        extra = {"ackId": ack_id} if ack_id is not None else {}
        self._send(*_answer(0, **extra))

    def _acks(self, channel: str, body: bytes) -> None:
        store = self.store
        try:
            ids = json.loads(body)["acks"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._send(*_answer(6))
        now = time.monotonic()
        out = {}
        with store.lock:
            pending = store.channels.get(channel, {"pending": {}})["pending"]
            for i in ids:
                due, lost = pending.get(i, (None, False))
                done = due is not None and not lost and now >= due
                if done:
                    del pending[i]
                out[str(i)] = done
        self._send(200, {"acks": out})

    def _control(self, method: str, path: str, query: dict) -> None:
        store = self.store
        body = self._read_body()
        try:
            if path == "/_receiver/faults" and method == "POST":
                spec = json.loads(body)
                with store.lock:
                    store.faults += spec if isinstance(spec, list) else [spec]
                return self._send(200, {"faults": len(store.faults)})
            if path == "/_receiver/config" and method == "POST":
                store.configure(**json.loads(body))
                return self._send(200, {"ok": True})
            if path == "/_receiver/reset" and method == "POST":
                store.reset()
                return self._send(200, {"ok": True})
            if path == "/_receiver/events" and method == "GET":
                with store.lock:
                    return self._send(200, {"events": list(store.events)})
            if path == "/_receiver/requests" and method == "GET":
                with store.lock:
                    return self._send(200, {"requests": list(store.requests)})
        except (ValueError, TypeError) as e:
            return self._send(400, {"error": str(e)})
        self._send(404, {"error": f"no control endpoint {method} {path}"})


def serve(host: str = "127.0.0.1", port: int = 0, verbose: bool = False, tls: tuple[str, str] | None = None,
          **settings) -> Receiver:
    """Start a stand-in on ``host:port`` (0: any free port) in a thread of its own; ``tls``: (certificate
    file, key file) to serve HTTPS."""
    return start(Handler, Store(**settings), host, port, verbose, tls)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="A Splunk HTTP Event Collector stand-in for tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--print-port", action="store_true", help="print the port listened on, then serve")
    p.add_argument("--ack", action="store_true", help="the token uses indexer acknowledgement")
    p.add_argument("--ack-delay", type=float, default=0.05)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate and key")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    token = os.environ.get("FLOWLOG_SPLUNK_TOKEN")
    if not token:
        p.error("set FLOWLOG_SPLUNK_TOKEN to the token to demand")
    r = serve(a.host, a.port, verbose=a.verbose, tls=a.tls, token=token, ack=a.ack, ack_delay=a.ack_delay)
    if a.print_port:
        print(r.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        r.close()


if __name__ == "__main__":
    main()
