"""A Tencent Cloud Log Service (CLS) upload endpoint for tests, written from CLS's documented protocol.

It answers ``POST /structuredlog?topic_id=...`` as CLS does: it checks the request signature
exactly as CLS computes it (q-sign-algorithm=sha1, HMAC-SHA1 of the key time, the SHA1 of the
method, path, signed parameters and signed headers), the session token, the content type and
compression, decompresses the LZ4 block and decodes the protobuf ``LogGroupList`` with its own
decoders (nothing shared with flowlog's encoder, nor the lz4 package), enforces CLS's upload
limits, stores the logs, and answers with CLS's status codes and error bodies
(``{"errorcode": ..., "errormessage": ...}`` and an ``X-Cls-Requestid`` header).

Credentials it expects come from the environment, as the client's do:
``TENCENTCLOUD_SECRET_ID``, ``TENCENTCLOUD_SECRET_KEY`` and, if set, ``TENCENTCLOUD_SESSION_TOKEN``.

A control API for tests (no signature):

- ``POST /_receiver/faults`` with ``{"faults": [{"status": 429, "errorcode": "SpeedQuotaExceed",
  "count": 2}, {"drop": true}, {"delay": 0.5}, {"pass": true, "count": 3}, ...]}``: the next
  uploads are answered by these, in order, each ``count`` times (default 1), before the
  request is looked at. ``drop`` closes the connection without an answer; ``pass`` takes the
  upload as usual; ``"clear": true`` beside ``faults`` forgets the faults not used yet.
- ``GET /_receiver/logs``: what was accepted, as JSON: ``{"requests": N, "errors": [codes...],
  "groups": [{"topic", "source", "filename", "tags": {...}, "logs": [{"time", "contents":
  [[key, value], ...]}]}]}``.
- ``POST /_receiver/reset``: forget the logs, errors and faults.

Run it as a program (``python cls_receiver.py --port 0 [--topic ID ...]``; it prints
``listening on PORT`` once it listens), or load it by path and use :class:`ClsReceiver`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

# CLS's documented upload limits
MAX_GROUPS = 10
MAX_LOGS = 10_000
MAX_VALUE = 1 << 20
MAX_GROUP_VALUES = 5 << 20
MAX_PACKAGE = 6 << 20


class BadContent(Exception):
    pass


# --- an LZ4 block decoder (the raw block format: sequences of literals and matches, no header) ----

def lz4_block_decode(src: bytes, limit: int) -> bytes:
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        length = token >> 4
        if length == 15:
            while True:
                if i >= n:
                    raise BadContent("lz4: literal length runs past the end")
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        if i + length > n:
            raise BadContent("lz4: literals run past the end")
        out += src[i:i + length]
        i += length
        if len(out) > limit:
            raise BadContent("lz4: decompressed data too large")
        if i == n:
            break                       # the last sequence has literals only
        if i + 2 > n:
            raise BadContent("lz4: offset cut short")
        offset = src[i] | src[i + 1] << 8
        i += 2
        if offset == 0 or offset > len(out):
            raise BadContent("lz4: bad match offset")
        mlen = token & 15
        if mlen == 15:
            while True:
                if i >= n:
                    raise BadContent("lz4: match length runs past the end")
                b = src[i]
                i += 1
                mlen += b
                if b != 255:
                    break
        mlen += 4
        start = len(out) - offset
        for k in range(mlen):           # byte by byte: a match may overlap what it copies
            out.append(out[start + k])
        if len(out) > limit:
            raise BadContent("lz4: decompressed data too large")
    return bytes(out)


# --- a protobuf decoder: field number -> list of values (ints, or bytes for wire type 2) ---------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise BadContent("protobuf: varint runs past the end")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise BadContent("protobuf: varint too long")


def pb_fields(buf: bytes) -> dict[int, list]:
    fields: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise BadContent("protobuf: field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise BadContent("protobuf: length runs past the end")
            value, i = buf[i:i + length], i + length
        else:
            raise BadContent(f"protobuf: wire type {wire} not used by cls.proto")
        if i > len(buf):
            raise BadContent("protobuf: field runs past the end")
        fields.setdefault(number, []).append(value)
    return fields


def _text(value, what: str) -> str:
    if not isinstance(value, bytes):
        raise BadContent(f"protobuf: {what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadContent(f"protobuf: {what} is not UTF-8") from None


def _one(fields, number, what, required=True):
    values = fields.get(number, [])
    if not values:
        if required:
            raise BadContent(f"protobuf: required field {what} missing")
        return None
    return values[-1]


def _pair(buf: bytes, what: str) -> tuple[str, str]:
    f = pb_fields(buf)
    return _text(_one(f, 1, f"{what}.key"), f"{what}.key"), _text(_one(f, 2, f"{what}.value"), f"{what}.value")


def decode_log_group_list(data: bytes) -> list[dict]:
    """cls.proto: LogGroupList{1: LogGroup}; LogGroup{1: Log, 2: contextFlow, 3: filename,
    4: source, 5: LogTag}; Log{1: int64 time, 2: Content}; Content and LogTag {1: key, 2: value}."""
    groups = []
    for g in pb_fields(data).get(1, []):
        if not isinstance(g, bytes):
            raise BadContent("protobuf: logGroupList is not a message")
        gf = pb_fields(g)
        logs = []
        for raw in gf.get(1, []):
            lf = pb_fields(raw)
            t = _one(lf, 1, "Log.time")
            if not isinstance(t, int):
                raise BadContent("protobuf: Log.time is not a varint")
            if t >= 1 << 63:
                t -= 1 << 64
            logs.append({"time": t, "contents": [list(_pair(c, "Content")) for c in lf.get(2, [])]})
        tags = [_pair(t, "LogTag") for t in gf.get(5, [])]
        groups.append({
            "logs": logs,
            "contextFlow": _opt_text(gf, 2, "contextFlow"),
            "filename": _opt_text(gf, 3, "filename"),
            "source": _opt_text(gf, 4, "source"),
            "tags": dict(tags),
        })
    return groups


def _opt_text(fields, number, what):
    v = _one(fields, number, what, required=False)
    return None if v is None else _text(v, what)


# --- CLS's request signature, as the server checks it -------------------------------------------

def _enc(value: str) -> str:
    # URL encoding with upper-case hex; a space as '+' (form encoding, as the vendor SDK sends)
    return quote(value, safe="-_.~").replace("%20", "+")


def expected_signature(secret_key: str, key_time: str, method: str, path: str,
                       params: list[tuple[str, str]], headers: list[tuple[str, str]]) -> str:
    def joined(pairs):
        return "&".join(f"{k}={_enc(v)}" for k, v in sorted(pairs))

    request_info = "\n".join([method.lower(), path, joined(params), joined(headers)]) + "\n"
    string_to_sign = "\n".join(["sha1", key_time, hashlib.sha1(request_info.encode()).hexdigest()]) + "\n"
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode(), string_to_sign.encode(), hashlib.sha1).hexdigest()


class ClsError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class State:
    def __init__(self, secret_id: str, secret_key: str, token: str | None, topics: set[str] | None):
        self.secret_id, self.secret_key, self.token, self.topics = secret_id, secret_key, token, topics
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.groups: list[dict] = []
        self.errors: list[str] = []
        self.faults: list[dict] = []
        self.requests = 0

    def next_fault(self) -> dict | None:
        with self.lock:
            while self.faults:
                f = self.faults[0]
                left = int(f.get("count", 1))
                if left <= 0:
                    self.faults.pop(0)
                    continue
                f["count"] = left - 1
                if f["count"] <= 0:
                    self.faults.pop(0)
                return f
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cls-receiver"
    state: State

    def log_message(self, fmt, *args):  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("X-Cls-Requestid", uuid.uuid4().hex)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, e: ClsError) -> None:
        with self.state.lock:
            self.state.errors.append(e.code)
        self._answer(e.status, json.dumps({"errorcode": e.code, "errormessage": e.message}).encode())

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self._body()
        if urlsplit(self.path).path == "/_receiver/logs":
            with self.state.lock:
                out = {"requests": self.state.requests, "errors": list(self.state.errors),
                       "groups": list(self.state.groups)}
            self._answer(200, json.dumps(out).encode())
        else:
            self._error(ClsError(404, "NotSupported", "not supported"))

    def do_POST(self):
        body = self._body()
        parts = urlsplit(self.path)
        if parts.path == "/_receiver/faults":
            spec = json.loads(body or b"{}")
            with self.state.lock:
                if spec.get("clear"):
                    self.state.faults.clear()
                self.state.faults.extend(spec.get("faults", []))
            return self._answer(200, b"{}")
        if parts.path == "/_receiver/reset":
            with self.state.lock:
                self.state.reset()
            return self._answer(200, b"{}")
        with self.state.lock:
            self.state.requests += 1
        fault = self.state.next_fault()
        if fault and not fault.get("pass"):
            if fault.get("delay"):
                time.sleep(float(fault["delay"]))
            if fault.get("drop"):
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault.get("status"):
                return self._error(ClsError(int(fault["status"]), fault.get("errorcode", "InternalError"),
                                            fault.get("errormessage", "injected fault")))
        try:
            if parts.path != "/structuredlog":
                raise ClsError(404, "NotSupported", f"no such API: {parts.path}")
            groups = self._upload(parts, body)
        except ClsError as e:
            return self._error(e)
        with self.state.lock:
            self.state.groups.extend(groups)
        self._answer(200)

    def _upload(self, parts, body: bytes) -> list[dict]:
        params = parse_qsl(parts.query, keep_blank_values=True)
        self._check_signature(parts.path, params)
        topic = dict(params).get("topic_id")
        if not topic:
            raise ClsError(400, "InvalidParam", "topic_id is missing")
        if self.state.topics is not None and topic not in self.state.topics:
            raise ClsError(404, "TopicNotExist", f"topic {topic} does not exist")
        ctype = self.headers.get("Content-Type")
        if not ctype:
            raise ClsError(400, "MissingContentType", "Content-Type is missing")
        if ctype.split(";")[0].strip().lower() != "application/x-protobuf":
            raise ClsError(400, "InvalidContentType", f"Content-Type {ctype} is not supported")
        if not body:
            raise ClsError(400, "MissingContent", "empty message body")
        compress = (self.headers.get("x-cls-compress-type") or "").strip().lower()
        try:
            if compress == "lz4":
                data = lz4_block_decode(body, MAX_PACKAGE)
            elif compress:
                raise ClsError(400, "InvalidCompressType", f"x-cls-compress-type {compress} is not supported")
            else:
                data = body
            if len(data) > MAX_PACKAGE:
                raise ClsError(403, "LogSizeExceed", "the package exceeds 6 MB before compression")
            groups = decode_log_group_list(data)
        except BadContent as e:
            raise ClsError(400, "InvalidContent", f"decompression or parse failed: {e}") from None
        if not groups or len(groups) > MAX_GROUPS:
            raise ClsError(403 if groups else 400, "LogSizeExceed" if groups else "InvalidContent",
                           f"{len(groups)} log groups in one package (1 to {MAX_GROUPS})")
        for g in groups:
            if not 1 <= len(g["logs"]) <= MAX_LOGS:
                raise ClsError(403 if g["logs"] else 400, "LogSizeExceed" if g["logs"] else "InvalidContent",
                               f"{len(g['logs'])} logs in a log group (1 to {MAX_LOGS})")
            total = 0
            for log in g["logs"]:
                for key, value in log["contents"]:
                    if key.startswith("_"):
                        raise ClsError(400, "InvalidParam", f"key {key!r} starts with '_'")
                    size = len(value.encode())
                    if size > MAX_VALUE:
                        raise ClsError(403, "LogSizeExceed", "a value exceeds 1 MB")
                    total += size
            if total > MAX_GROUP_VALUES:
                raise ClsError(403, "LogSizeExceed", "the values of a log group exceed 5 MB")
            g["topic"] = topic
        return groups

    def _check_signature(self, path: str, params: list[tuple[str, str]]) -> None:
        auth = self.headers.get("Authorization")
        if not auth:
            raise ClsError(400, "MissingAuthorization", "Authorization is missing")
        fields = {}
        for item in auth.strip().split("&"):
            k, sep, v = item.partition("=")
            if not sep:
                raise ClsError(400, "InvalidAuthorization", "invalid signature string format")
            fields[k] = v
        need = ("q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-header-list", "q-url-param-list",
                "q-signature")
        if any(k not in fields for k in need) or fields["q-sign-algorithm"] != "sha1":
            raise ClsError(400, "InvalidAuthorization", "invalid signature string format")
        st = self.state
        if fields["q-ak"] != st.secret_id:
            raise ClsError(401, "AuthFailure.SecretIdNotFound", "the SecretId does not exist")
        key_time = fields["q-key-time"]
        try:
            start, end = (int(x) for x in key_time.split(";"))
        except ValueError:
            raise ClsError(400, "InvalidAuthorization", "invalid q-key-time") from None
        if fields["q-sign-time"] != key_time:
            raise ClsError(400, "InvalidAuthorization", "q-sign-time differs from q-key-time")
        now = time.time()
        if not start <= now <= end:
            raise ClsError(401, "AuthFailure.SignatureExpire", "the signature has expired")
        header_names = [h for h in fields["q-header-list"].split(";") if h]
        param_names = [p for p in fields["q-url-param-list"].split(";") if p]
        if "host" not in header_names:
            raise ClsError(401, "AuthFailure.SignatureFailure", "the Host header must be signed")
        headers = []
        for name in header_names:
            value = self.headers.get(name)
            if value is None:
                raise ClsError(401, "AuthFailure.SignatureFailure", f"signed header {name} is missing")
            headers.append((name.lower(), value))
        query = {k.lower(): v for k, v in params}
        if "topic_id" in query and "topic_id" not in param_names:
            raise ClsError(401, "AuthFailure.SignatureFailure", "topic_id must be signed")
        signed_params = []
        for name in param_names:
            if name not in query:
                raise ClsError(401, "AuthFailure.SignatureFailure", f"signed parameter {name} is missing")
            signed_params.append((name, query[name]))
        want = expected_signature(st.secret_key, key_time, self.command, path, signed_params, headers)
        if not hmac.compare_digest(want, fields["q-signature"]):
            raise ClsError(401, "AuthFailure.SignatureFailure", "the signature does not match")
        token = self.headers.get("X-Cls-Token")
        if (st.token or token) and token != st.token:
            raise ClsError(401, "AuthFailure.TokenFailure", "the token is invalid")


class ClsReceiver:
    """The receiver in a thread of this process: ``with ClsReceiver(...) as r: r.url ...``."""

    def __init__(self, secret_id: str | None = None, secret_key: str | None = None, token: str | None = None,
                 topics=None, host: str = "127.0.0.1", port: int = 0):
        self.state = State(secret_id if secret_id is not None else os.environ.get("TENCENTCLOUD_SECRET_ID", ""),
                           secret_key if secret_key is not None else os.environ.get("TENCENTCLOUD_SECRET_KEY", ""),
                           token if token is not None else (os.environ.get("TENCENTCLOUD_SESSION_TOKEN") or None),
                           set(topics) if topics else None)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "ClsReceiver":
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def faults(self, *faults: dict, clear: bool = False) -> None:
        with self.state.lock:
            if clear:
                self.state.faults.clear()
            self.state.faults.extend(dict(f) for f in faults)

    def logs(self) -> dict:
        with self.state.lock:
            return {"requests": self.state.requests, "errors": list(self.state.errors),
                    "groups": [dict(g) for g in self.state.groups]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="A CLS structured-log upload endpoint for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--topic", action="append", help="known topic ids (default: any)")
    args = ap.parse_args(argv)
    r = ClsReceiver(topics=args.topic, host=args.host, port=args.port)
    print(f"listening on {r.port}", flush=True)
    try:
        r.server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
