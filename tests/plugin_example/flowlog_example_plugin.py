"""An example third-party flowlog plugin (flowlog's own tests install it into a venv).

* ``tsv:/path/out.tsv``: a sink writing each record's 14 version-2 fields, tab-separated;
* ``synth:``: a source generating a few fixed Ethernet/IPv4/UDP frames (three DNS
  queries and their answers), to try a pipeline without a capture file;
* ``post+http://HOST:PORT/PATH``: a network sink POSTing each batch as JSON Lines. It only
  encodes records and classifies answers; flowlog's delivery layer gives it the spool,
  retries, splitting and draining (it has no code of its own for any of that).
"""

from __future__ import annotations

import json
import os
import struct

from flowlog.core.api import Answer, DeliverySink, Sink, Source, Verdict
from flowlog.core.errors import ConfigError, SinkError
from flowlog.core.frames import FrameBatch
from flowlog.core.hookspecs import hookimpl
from flowlog.core.http import HttpClient, TransportError
from flowlog.core.records import ALL_FIELDS
from flowlog.core.uri import refuse_secrets


@hookimpl
def register_sinks(register):
    register(TsvSink)
    register(PostSink)


@hookimpl
def register_sources(register):
    register(SynthSource)


class TsvSink(Sink):
    """Records as tab-separated lines in a file."""

    scheme = "tsv"
    description = "records as tab-separated values in a file (tsv:/path/out.tsv)"

    def __init__(self, uri, options):
        super().__init__(uri, options)
        self.path = uri.path
        if not self.path:
            raise ConfigError(f"{uri}: give a file, e.g. tsv:/var/log/flows.tsv")

    def open(self) -> None:
        try:
            self.file = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise SinkError(f"{self.path}: {e.strerror}") from None

    def write(self, records) -> None:
        for r in records:
            self.file.write("\t".join("-" if v is None else str(v) for v in r.values()) + "\n")

    def close(self) -> None:
        self.file.close()


class PostSink(DeliverySink):
    """Each batch POSTed as JSON Lines; the server's answer says what became of it.

    A 200 answer may carry ``{"pending": [i, ...], "rejected": {"i": "why"}}`` for items it did
    not take; 429 and 503 (with Retry-After) and other 5xx are retried, 413 and 422 split the
    batch, 401/403/404 stop the sink. A bearer token comes from POST_SINK_TOKEN, never the URI.
    """

    scheme = "post+http"
    description = "batches of records POSTed as JSON Lines (post+http://HOST:PORT/PATH)"
    max_items = int(os.environ.get("POST_SINK_MAX_ITEMS", "500"))
    max_bytes = 1 << 20

    def __init__(self, uri, options):
        super().__init__(uri, options)
        refuse_secrets(uri, "POST_SINK_TOKEN")
        if not uri.netloc:
            raise ConfigError(f"{uri}: expected post+http://HOST:PORT/PATH")
        self.path = uri.path or "/"
        self.token = os.environ.get("POST_SINK_TOKEN")
        self.client = None

    def open(self) -> None:
        self.client = HttpClient("http://" + self.uri.netloc, timeout=float(os.environ.get("POST_SINK_TIMEOUT", "5")))

    def encode(self, record) -> bytes:
        return json.dumps({f: record.get(f) for f in ALL_FIELDS}, default=list).encode()

    def send(self, items, meta) -> Answer:
        headers = {"Content-Type": "application/x-ndjson", "X-Batch-Id": meta.batch_id,
                   "X-Attempt": str(meta.attempt)}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = self.client.request("POST", self.path, b"\n".join(items), headers)
        except TransportError as e:
            return Answer(Verdict.RETRY, str(e))
        if r.status == 200:
            body = json.loads(r.body or b"{}")
            return Answer(Verdict.OK, pending=body.get("pending", ()),
                          rejected={int(k): v for k, v in body.get("rejected", {}).items()})
        retry_after = r.header("retry-after")
        if r.status in (429, 503) or r.status >= 500:
            return Answer(Verdict.RETRY, f"HTTP {r.status}",
                          retry_after=float(retry_after) if retry_after else None)
        if r.status in (413, 422):
            return Answer(Verdict.SPLIT, f"HTTP {r.status}")
        return Answer(Verdict.FAIL, f"HTTP {r.status}: {r.body.decode(errors='replace')[:200]}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class SynthSource(Source):
    """A few fixed Ethernet/IPv4/UDP frames."""

    scheme = "synth"
    description = "a few generated Ethernet/IPv4/UDP frames (DNS queries and answers)"

    CLIENT = (bytes([10, 0, 0, 1]), 40000)
    SERVER = (bytes([10, 0, 0, 2]), 53)
    START = 1_700_000_000

    def open(self, ctx) -> None:
        super().open(ctx)
        self.link = ctx.add_link("synth0", 1)       # link type 1: Ethernet

    def batches(self):
        frames = []
        for i in range(3):
            frames.append((self.START + i, 0, _udp_frame(self.CLIENT, self.SERVER, b"q" * 20)))
            frames.append((self.START + i, 500_000_000, _udp_frame(self.SERVER, self.CLIENT, b"a" * 60)))
        yield FrameBatch.from_frames(frames, link=self.link)


def _udp_frame(src, dst, payload: bytes) -> bytes:
    (saddr, sport), (daddr, dport) = src, dst
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ether = b"\x02\x00\x00\x00\x00" + daddr[3:] + b"\x02\x00\x00\x00\x00" + saddr[3:] + b"\x08\x00"
    return ether + ip + udp


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
