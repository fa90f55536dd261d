"""An Elasticsearch / OpenSearch stand-in for tests, written from the vendors' REST documentation.

It speaks the part of the REST API a log shipper meets, with the behaviour the documentation
gives it: ``GET /`` (version, ``tagline``, the ``X-Elastic-Product: Elasticsearch`` header on
Elasticsearch and not on OpenSearch), ``_bulk`` (NDJSON that must end with a newline; answer
200 with ``errors`` and one result per action, even when items fail; ``create`` answers 409
``version_conflict_engine_exception`` for an id already stored; data streams take only
``create`` and need ``@timestamp``; indices are created on first write unless auto-create is
off, then ``index_not_found_exception``; a dynamic mapping that refuses a value of another
type than the field's first one), authentication (``Authorization: ApiKey <base64 id:key>``
or Basic; 401 ``security_exception`` otherwise), media types (``application/json`` and
``application/x-ndjson``; ``application/vnd.elasticsearch+...;compatible-with=N`` only for
N of the server's major version or the one before, and never on OpenSearch), 413 past
``http.max_content_length``, index templates with ``data_stream``, ``_search``, ``_count``,
``_refresh`` and deletes, so that tests read back what they wrote the same way on the
stand-in and on a real cluster.

Faults are injected through ``POST /_receiver/faults`` (a JSON object or list; each applies
to the next ``count`` bulk requests, or to requests whose path contains ``on``)::

    {"status": 429, "count": 3, "retry_after": 1}   whole-request error (429, 500, 503, ...)
    {"cut": true, "count": 2}                        read part of the request, then reset the connection
    {"cut_after_store": true}                        store the documents, then reset instead of answering
    {"items": {"0": 429, "2": 400}}                  per-item failures at these positions of the bulk
    {"delay": 0.5, "count": 10}                      answer late

and the stand-in is configured with ``POST /_receiver/config`` (``flavor``: es6, es7, es8, es9 or
opensearch; ``api_key``, ``user``, ``password``; ``auto_create``; ``max_content_length``;
``root_forbidden``). ``GET /_receiver/docs[?index=NAME]`` lists what is stored,
``GET /_receiver/requests`` the requests seen (headers, with the Authorization value left
out), ``POST /_receiver/reset`` starts afresh.

Run alone: ``python es_receiver.py --port 0 --print-port [--flavor es8] [--auth-from-env]``
(``--auth-from-env`` takes FLOWLOG_ES_API_KEY or FLOWLOG_ES_USER/FLOWLOG_ES_PASSWORD as the
credentials to demand). Tests import it by path and call :func:`serve`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import fnmatch
import json
import os
import re
import secrets
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stand_in import Receiver, start  # noqa: E402  (the stand-ins' shared server, next to this file)

FLAVORS = {
    "es6": ("Elasticsearch", "6.8.23", "7.7.3"),
    "es7": ("Elasticsearch", "7.17.24", "8.9.0"),
    "es8": ("Elasticsearch", "8.15.3", "9.11.1"),
    "es9": ("Elasticsearch", "9.1.2", "10.2.2"),
    "opensearch": ("OpenSearch", "2.17.1", "9.11.1"),
}
ONE_MIB = 1 << 20


class Store:
    """Everything the stand-in holds; one lock guards it."""

    def __init__(self, flavor: str = "es8", api_key: str | None = None, user: str | None = None,
                 password: str | None = None, auto_create: bool = True, max_content_length: int = 100 * ONE_MIB,
                 root_forbidden: bool = False):
        self.lock = threading.RLock()
        self.cluster_uuid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        self.configure(flavor=flavor, api_key=api_key, user=user, password=password, auto_create=auto_create,
                       max_content_length=max_content_length, root_forbidden=root_forbidden)
        self.reset()

    def configure(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                if k == "flavor" and v not in FLAVORS:
                    raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}")
                if k not in ("flavor", "api_key", "user", "password", "auto_create", "max_content_length",
                             "root_forbidden"):
                    raise ValueError(f"unknown setting {k!r}")
                setattr(self, k, v)

    def reset(self) -> None:
        with self.lock:
            self.indices: dict[str, dict] = {}        # name -> {"data_stream": bool, "backing": str, "docs": {id: src}}
            self.mappings: dict[str, dict[str, str]] = {}
            self.templates: dict[str, dict] = {}
            self.pipelines: set[str] = set()
            self.faults: list[dict] = []
            self.requests: list[dict] = []
            self.seq_no = 0

    @property
    def product(self) -> str:
        return FLAVORS[self.flavor][0]

    @property
    def version(self) -> str:
        return FLAVORS[self.flavor][1]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def take_fault(self, path: str) -> dict | None:
        with self.lock:
            for f in self.faults:
                on = f.get("on", "/_bulk")
                if on in path:
                    f["count"] = f.get("count", 1) - 1
                    if f["count"] <= 0:
                        self.faults.remove(f)
                    return dict(f)
        return None

    def docs(self, index: str | None = None) -> list[dict]:
        with self.lock:
            out = []
            for name, ix in self.indices.items():
                if index is None or fnmatch.fnmatchcase(name, index):
                    out += [{"_index": ix["backing"], "_id": i, "_source": src} for i, src in ix["docs"].items()]
            return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _es_error(etype: str, reason: str, status: int, **extra) -> dict:
    cause = {"type": etype, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def _item_error(etype: str, reason: str, **extra) -> dict:
    return {"type": etype, "reason": reason, **extra}


def _parse_error_type(store: Store) -> str:
    # Elasticsearch 8.8 renamed mapper_parsing_exception to document_parsing_exception for documents.
    return "document_parsing_exception" if store.product == "Elasticsearch" and store.major >= 8 else \
        "mapper_parsing_exception"


def _field_type(value) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "keyword"
    if isinstance(value, dict):
        return "object"
    return None         # null or a list: the elements decide


def _flatten(doc: dict, prefix: str = ""):
    for k, v in doc.items():
        path = prefix + k
        if isinstance(v, list):
            for e in v:
                yield path, e
                if isinstance(e, dict):
                    yield from _flatten(e, path + ".")
        else:
            yield path, v
            if isinstance(v, dict):
                yield from _flatten(v, path + ".")


def _mapping_problem(mapping: dict[str, str], doc: dict) -> str | None:
    """Dynamic mapping as Elasticsearch applies it: the first value of a field fixes its type; a later
    value that cannot be read as that type is refused (numbers written as text are coerced)."""
    seen: dict[str, str] = {}
    for path, value in _flatten(doc):
        t = _field_type(value)
        if t is None:
            continue
        known = mapping.get(path) or seen.get(path)
        if known is None:
            seen[path] = t
            continue
        if known == t:
            continue
        if known == "object" or t == "object":
            return (f"object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value"
                    if known == "object" else
                    f"failed to parse field [{path}] of type [{known}]: tried to parse an object")
        if known in ("long", "float") and t in ("long", "float", "keyword"):
            if t == "keyword":
                try:
                    float(value)
                except ValueError:
                    return (f"failed to parse field [{path}] of type [{known}]. Preview of field's value: "
                            f"'{value}'")
            continue
        if known == "keyword":
            continue        # numbers and booleans index as their text
        if known == "boolean" or t == "boolean":
            return f"failed to parse field [{path}] of type [{known}]. Preview of field's value: '{value}'"
    mapping.update(seen)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "es-receiver"
    sys_version = ""
    store: Store                  # set on the server class by serve()
    verbose = False

    # -- plumbing ------------------------------------------------------------------------------

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("es-receiver: " + fmt % args + "\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n if limit is None else min(n, limit)) if n else b""

    def _reset_connection(self) -> None:
        """Close the socket with a TCP reset, answering nothing: a connection cut mid-request."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, body=None, headers: dict | None = None, close: bool = False) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        if self.store.product == "Elasticsearch":
            self.send_header("X-Elastic-Product", "Elasticsearch")
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        for k, v in (headers or {}).items():
            for one in (v if isinstance(v, list) else [v]):
                self.send_header(k, one)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- the request ---------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        store = self.store
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if path.startswith("/_receiver/"):
            return self._control(method, path, query)
        with store.lock:
            store.requests.append({"method": method, "path": self.path, "headers": {
                k: (v.split(" ", 1)[0] + " ..." if k.lower() == "authorization" else v)
                for k, v in self.headers.items()}})
        fault = store.take_fault(path)
        if fault and fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault and fault.get("cut"):
            self._read_body(limit=max(0, int(self.headers.get("Content-Length") or 0) // 2))
            return self._reset_connection()
        length = int(self.headers.get("Content-Length") or 0)
        if length > store.max_content_length:
            self._read_body()
            return self._send(413, None, close=True)
        body = self._read_body()
        problem = self._authenticate(path)
        if problem:
            return self._send(401, problem, {"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"',
                                                                  "ApiKey"]})
        if fault and fault.get("status"):
            status = int(fault["status"])
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
            etype = {429: "es_rejected_execution_exception", 503: "unavailable_shards_exception",
                     500: "internal_server_error"}.get(status, "exception")
            return self._send(status, _es_error(etype, f"injected fault: status {status}", status), headers)
        media = self._media_problem(body)
        if media:
            return self._send(*media)
        parts = [p for p in path.split("/") if p]
        try:
            if method in ("GET", "HEAD") and not parts:
                return self._root()
            if parts and parts[-1] == "_bulk" and method in ("POST", "PUT") and len(parts) <= 2:
                return self._bulk(parts[0] if len(parts) == 2 else None, query, body, fault)
            if len(parts) == 2 and parts[1] in ("_search", "_count") and method in ("GET", "POST"):
                return self._search(parts[0], parts[1], query, body)
            if len(parts) == 2 and parts[1] == "_refresh" and method in ("POST", "GET"):
                return self._send(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})
            if len(parts) == 2 and parts[0] == "_index_template":
                return self._template(method, parts[1], body)
            if len(parts) == 2 and parts[0] == "_data_stream":
                return self._data_stream(method, parts[1])
            if len(parts) == 3 and parts[:2] == ["_ingest", "pipeline"] and method == "PUT":
                with store.lock:
                    store.pipelines.add(parts[2])
                return self._send(200, {"acknowledged": True})
            if len(parts) == 1 and not parts[0].startswith("_") and method in ("PUT", "DELETE", "HEAD"):
                return self._index(method, parts[0])
        except (ValueError, KeyError, TypeError) as e:
            return self._send(400, _es_error("parse_exception", f"request body is not valid: {e}", 400))
        self._send(400, {"error": f"no handler found for uri [{self.path}] and method [{method}]", "status": 400})

    def _authenticate(self, path: str) -> dict | None:
        store = self.store
        if not (store.api_key or store.user):
            return None
        given = self.headers.get("Authorization")
        if not given:
            return _es_error("security_exception", f"missing authentication credentials for REST request [{path}]",
                             401)
        scheme, _, value = given.partition(" ")
        if store.api_key and scheme == "ApiKey" and value == store.api_key:
            return None
        if store.user and scheme == "Basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if user == store.user and password == store.password:
                return None
            return _es_error("security_exception", f"unable to authenticate user [{user}] for REST request [{path}]",
                             401)
        return _es_error("security_exception", "unable to authenticate with provided credentials and anonymous "
                                               "access is not allowed for this request", 401)

    def _media_problem(self, body: bytes):
        """Media types as the server checks them: (status, body) when refused, else None."""
        store = self.store
        for header in ("Content-Type", "Accept"):
            value = self.headers.get(header)
            if not value or (header == "Accept" and value.strip() in ("*/*", "")):
                if header == "Content-Type" and body:
                    return 406, {"error": "Content-Type header is missing", "status": 406}
                continue
            mime = value.split(";")[0].strip().lower()
            if mime.startswith("application/vnd.elasticsearch+"):
                if store.product != "Elasticsearch":
                    return 406, {"error": f"{header} header [{value}] is not supported", "status": 406}
                m = re.search(r"compatible-with\s*=\s*(\d+)", value)
                if not m or int(m.group(1)) not in (store.major, store.major - 1):
                    return 400, _es_error(
                        "media_type_header_exception", "Invalid media-type value on headers [Content-Type, Accept]",
                        400, caused_by={"type": "status_exception", "reason": (
                            f"A compatible version is required on both Content-Type and Accept headers if either "
                            f"one has requested a compatible version. Accept={self.headers.get('Accept')}, "
                            f"Content-Type={self.headers.get('Content-Type')}")})
                continue
            if header == "Content-Type" and mime not in ("application/json", "application/x-ndjson"):
                return 406, {"error": f"Content-Type header [{value}] is not supported", "status": 406}
        return None

    # -- the API ------------------------------------------------------------------------------

    def _root(self) -> None:
        store = self.store
        if store.root_forbidden:
            return self._send(403, _es_error("security_exception", "action [cluster:monitor/main] is unauthorized "
                                                                    "for API key id [receiver]", 403))
        product, number, lucene = FLAVORS[store.flavor]
        version = {"number": number, "build_type": "tar", "build_hash": "0" * 40,
                   "build_date": "2024-10-01T00:00:00.000Z", "build_snapshot": False, "lucene_version": lucene,
                   "minimum_wire_compatibility_version": "7.17.0" if store.major >= 8 else "6.8.0",
                   "minimum_index_compatibility_version": "7.0.0" if store.major >= 8 else "6.0.0-beta1"}
        if product == "OpenSearch":
            version = {"distribution": "opensearch", **version, "minimum_wire_compatibility_version": "7.10.0"}
            tagline = "The OpenSearch Project: https://opensearch.org/"
        else:
            version = {**version, "build_flavor": "default"}
            tagline = "You Know, for Search"
        self._send(200, {"name": "receiver", "cluster_name": "flowlog-test", "cluster_uuid": store.cluster_uuid,
                         "version": version, "tagline": tagline})

    def _resolve(self, name: str) -> tuple[dict | None, dict | None]:
        """The index (or data stream) to write to, created on first write where allowed; else an item error."""
        store = self.store
        ix = store.indices.get(name)
        if ix is not None:
            return ix, None
        template = next((t for t in store.templates.values()
                         if any(fnmatch.fnmatchcase(name, p) for p in t.get("index_patterns", []))), None)
        if not store.auto_create:
            return None, _item_error("index_not_found_exception", f"no such index [{name}]",
                                     index=name, index_uuid="_na_", **{"resource.type": "index_or_alias",
                                                                     "resource.id": name})
        ds = bool(template and "data_stream" in template)
        day = datetime.datetime.now(datetime.UTC).strftime("%Y.%m.%d")
        ix = store.indices[name] = {"data_stream": ds, "backing": f".ds-{name}-{day}-000001" if ds else name,
                                    "docs": {}, "uuid": secrets.token_hex(11)}
        store.mappings[name] = {}
        return ix, None

    def _bulk(self, path_index: str | None, query: dict, body: bytes, fault: dict | None) -> None:
        store = self.store
        started = time.monotonic()
        if not body.endswith(b"\n"):
            return self._send(400, _es_error("illegal_argument_exception",
                                             "The bulk request must be terminated by a newline [\\n]", 400))
        lines = body.split(b"\n")[:-1]
        ops = []
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            try:
                action = json.loads(line)
                (op, meta), = action.items()
                if op not in ("create", "index", "update", "delete") or not isinstance(meta, dict):
                    raise ValueError
            except (ValueError, AttributeError):
                return self._send(400, _es_error("illegal_argument_exception",
                                                 f"Malformed action/metadata line [{i}], expected a simple value "
                                                 f"for field [{line[:40].decode(errors='replace')}]", 400))
            source = None
            if op != "delete":
                if i >= len(lines):
                    return self._send(400, _es_error("action_request_validation_exception",
                                                     "Validation Failed: 1: no requests added;", 400))
                source = lines[i]
                i += 1
            index = meta.get("_index") or path_index
            if not index:
                return self._send(400, _es_error("action_request_validation_exception",
                                                 "Validation Failed: 1: index is missing;", 400))
            ops.append((op, meta, index, source))
        if not ops:
            return self._send(400, _es_error("action_request_validation_exception",
                                             "Validation Failed: 1: no requests added;", 400))
        injected = {int(k): int(v) for k, v in (fault or {}).get("items", {}).items()}
        pipeline = query.get("pipeline")
        items = []
        with store.lock:
            for pos, (op, meta, index, source) in enumerate(ops):
                items.append({op: self._one(pos, op, meta, index, source, injected.get(pos), pipeline)})
        took = int((time.monotonic() - started) * 1000)
        answer = {"took": took, "errors": any(next(iter(it.values())).get("error") for it in items),
                  "items": items}
        if fault and fault.get("cut_after_store"):
            return self._reset_connection()
        self._send(200, answer)

    def _one(self, pos, op, meta, index, source, injected, pipeline) -> dict:
        store = self.store
        doc_id = meta.get("_id")
        if injected:
            etype, reason = {
                429: ("es_rejected_execution_exception", "rejected execution of coordinating operation "
                                                         "[coordinating_and_primary_bytes=0, max_coordinating_and_"
                                                         "primary_bytes=0]"),
                503: ("unavailable_shards_exception", f"[{index}][0] primary shard is not active Timeout: [1m]"),
                500: ("exception", "injected failure"),
                404: ("index_not_found_exception", f"no such index [{index}]"),
                403: ("security_exception", f"action [indices:data/write/bulk[s]] is unauthorized for user "
                                            f"[receiver] on indices [{index}]"),
            }.get(injected, (_parse_error_type(store), "[1:1] failed to parse: injected item failure"))
            return {"_index": index, "_id": doc_id, "status": injected, "error": _item_error(etype, reason)}
        if pipeline and pipeline not in store.pipelines:
            return {"_index": index, "_id": doc_id, "status": 400,
                    "error": _item_error("illegal_argument_exception", f"pipeline with id [{pipeline}] does not exist")}
        ix, problem = self._resolve(index)
        if problem:
            return {"_index": index, "_id": doc_id, "status": 404, "error": problem}
        base = {"_index": ix["backing"], "_id": doc_id}
        if ix["data_stream"] and op != "create":
            return {**base, "status": 400, "error": _item_error(
                "illegal_argument_exception", "only write ops with an op_type of create are allowed in data streams")}
        if op == "delete":
            found = ix["docs"].pop(doc_id, None) is not None
            return {**base, "_version": 1, "result": "deleted" if found else "not_found", "status": 200 if found else 404}
        try:
            doc = json.loads(source)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return {**base, "status": 400, "error": _item_error(_parse_error_type(store),
                                                                f"failed to parse: {e}")}
        if op == "update":
            doc = doc.get("doc", {})
        if ix["data_stream"] and "@timestamp" not in doc:
            return {**base, "status": 400, "error": _item_error(
                _parse_error_type(store), "data stream timestamp field [@timestamp] is missing")}
        if doc_id is None:
            doc_id = base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()
            base["_id"] = doc_id
        exists = doc_id in ix["docs"]
        if op == "create" and exists:
            return {**base, "status": 409, "error": _item_error(
                "version_conflict_engine_exception",
                f"[{doc_id}]: version conflict, document already exists (current version [1])",
                index_uuid=ix["uuid"], shard="0", index=ix["backing"])}
        if op == "update" and not exists:
            return {**base, "status": 404, "error": _item_error("document_missing_exception",
                                                                f"[{doc_id}]: document missing")}
        problem = _mapping_problem(store.mappings[index], doc)
        if problem:
            return {**base, "status": 400, "error": _item_error(_parse_error_type(store), problem)}
        ix["docs"][doc_id] = {**ix["docs"][doc_id], **doc} if op == "update" else doc
        store.seq_no += 1
        return {**base, "_version": 1, "result": "updated" if exists else "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": store.seq_no - 1,
                "_primary_term": 1, "status": 200 if exists else 201}

    def _search(self, index: str, what: str, query: dict, body: bytes) -> None:
        store = self.store
        with store.lock:
            names = [n for n in store.indices if any(fnmatch.fnmatchcase(n, p) for p in index.split(","))]
            if not names and "*" not in index:
                return self._send(404, _es_error("index_not_found_exception", f"no such index [{index}]", 404,
                                                 index=index))
            docs = [d for n in names for d in store.docs(n)]
        if what == "_count":
            return self._send(200, {"count": len(docs), "_shards": {"total": 1, "successful": 1, "failed": 0}})
        size = int(query.get("size") or (json.loads(body).get("size", 10) if body.strip() else 10))
        hits = [{**d, "_score": 1.0} for d in docs[:size]]
        self._send(200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "failed": 0},
                         "hits": {"total": {"value": len(docs), "relation": "eq"}, "max_score": 1.0, "hits": hits}})

    def _template(self, method: str, name: str, body: bytes) -> None:
        store = self.store
        with store.lock:
            if method == "PUT":
                spec = json.loads(body)
                store.templates[name] = spec
                return self._send(200, {"acknowledged": True})
            if method == "DELETE":
                if store.templates.pop(name, None) is None:
                    return self._send(404, _es_error("resource_not_found_exception",
                                                     f"index_template [{name}] missing", 404))
                return self._send(200, {"acknowledged": True})
        self._send(405, {"error": "Incorrect HTTP method", "status": 405})

    def _data_stream(self, method: str, name: str) -> None:
        store = self.store
        with store.lock:
            if method == "PUT":
                if not any("data_stream" in t and any(fnmatch.fnmatchcase(name, p) for p in t.get("index_patterns", []))
                           for t in store.templates.values()):
                    return self._send(400, _es_error("illegal_argument_exception",
                                                     f"no matching index template found for data stream [{name}]",
                                                     400))
                if name in store.indices:
                    return self._send(400, _es_error("resource_already_exists_exception",
                                                     f"data_stream [{name}] already exists", 400))
                auto = store.auto_create
                store.auto_create = True
                try:
                    self._resolve(name)
                finally:
                    store.auto_create = auto
                return self._send(200, {"acknowledged": True})
            if method == "DELETE":
                ix = store.indices.get(name)
                if not ix or not ix["data_stream"]:
                    return self._send(404, _es_error("resource_not_found_exception", f"data_stream [{name}] missing",
                                                     404))
                del store.indices[name]
                return self._send(200, {"acknowledged": True})
        self._send(405, {"error": "Incorrect HTTP method", "status": 405})

    def _index(self, method: str, name: str) -> None:
        store = self.store
        with store.lock:
            ix = store.indices.get(name)
            if method == "HEAD":
                return self._send(200 if ix else 404)
            if method == "PUT":
                if ix:
                    return self._send(400, _es_error("resource_already_exists_exception",
                                                     f"index [{name}/{ix['uuid']}] already exists", 400, index=name))
                store.indices[name] = {"data_stream": False, "backing": name, "docs": {}, "uuid": secrets.token_hex(11)}
                store.mappings[name] = {}
                return self._send(200, {"acknowledged": True, "shards_acknowledged": True, "index": name})
            if not ix or ix["data_stream"]:
                return self._send(404, _es_error("index_not_found_exception", f"no such index [{name}]", 404,
                                                 index=name))
            del store.indices[name]
            return self._send(200, {"acknowledged": True})

    # -- control -------------------------------------------------------------------------------

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
            if path == "/_receiver/docs" and method == "GET":
                return self._send(200, {"docs": store.docs(query.get("index"))})
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
    p = argparse.ArgumentParser(description="An Elasticsearch / OpenSearch stand-in for tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9200)
    p.add_argument("--print-port", action="store_true", help="print the port listened on, then serve")
    p.add_argument("--flavor", choices=sorted(FLAVORS), default="es8")
    p.add_argument("--auth-from-env", action="store_true",
                   help="demand the credentials in FLOWLOG_ES_API_KEY or FLOWLOG_ES_USER/FLOWLOG_ES_PASSWORD")
    p.add_argument("--no-auto-create", action="store_true", help="refuse writes to indices that do not exist")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate and key")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    auth = {}
    if a.auth_from_env:
        key = os.environ.get("FLOWLOG_ES_API_KEY")
        if key:
            auth["api_key"] = base64.b64encode(key.encode()).decode() if ":" in key else key
        else:
            auth["user"], auth["password"] = os.environ["FLOWLOG_ES_USER"], os.environ["FLOWLOG_ES_PASSWORD"]
    r = serve(a.host, a.port, verbose=a.verbose, tls=a.tls, flavor=a.flavor, auto_create=not a.no_auto_create, **auth)
    if a.print_port:
        print(r.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        r.close()


if __name__ == "__main__":
    main()
