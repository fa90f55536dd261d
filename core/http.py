"""A small HTTP/1.1 client for network sinks: kept-alive connections, TLS verified by default.

Built on the standard library so that sinks need no extra package. Network failures
(refused, reset, timed out, TLS errors) raise :class:`TransportError`, which sinks answer
with a retry; HTTP statuses are returned, never raised, for the sink to classify.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused or cut, timeout, TLS failure)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]     # names in lower case
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


class HttpClient:
    """Requests to one ``http://`` or ``https://`` origin over one kept-alive connection.

    ``verify=False`` turns certificate checks off (only when a user asks by name);
    ``ca_file`` adds a CA bundle. Not thread-safe: one client per sending thread.
    """

    def __init__(self, base: str, *, timeout: float = 30.0, verify: bool = True, ca_file: str | None = None):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{base!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self._context = None
        if self.scheme == "https":
            try:
                ctx = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"CA file {ca_file!r}: {e.strerror or e}") from None
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._context = ctx
        self._conn: http.client.HTTPConnection | None = None

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send one request; ``path`` is appended to the base URL's path. Retries once on a stale
        kept-alive connection; every other network failure raises TransportError."""
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, self.base_path + path, body=body, headers=headers or {})
                r = conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt == 1 and reused and isinstance(e, http.client.RemoteDisconnected):
                    continue        # the server closed an idle kept-alive connection: once more, fresh
                raise TransportError(f"{self.origin}: connection lost ({_describe(e)})") from None
            except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                self.close()
                raise TransportError(f"{self.origin}: {_describe(e)}") from None
            if r.will_close:
                self.close()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _describe(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({e.verify_message}); give a CA file, or turn verification off by name"
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host ({e.strerror})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return type(e).__name__ if not str(e) else str(e)


#: Query keys of :func:`client_options`: every HTTP-based sink accepts them.
CLIENT_QUERY_KEYS = ("timeout", "verify", "ca", "ca_file")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def client_options(query: dict[str, str], what: str, *, https: bool, default_timeout: float = 30.0) -> dict:
    """HttpClient keyword arguments from a sink URI's query: ``timeout=SECONDS``, ``verify=false``
    (certificate checks off, only when asked by that name), ``ca=PATH`` (or ``ca_file=PATH``).

    ``what`` names the sink in messages. Raises ConfigError on a bad value."""
    opts: dict = {"timeout": default_timeout, "verify": True, "ca_file": None}
    if "timeout" in query:
        try:
            opts["timeout"] = float(query["timeout"])
        except ValueError:
            opts["timeout"] = -1.0
        if not 0 < opts["timeout"] <= 3600:
            raise ConfigError(f"{what}: timeout={query['timeout']!r}: expected seconds, more than 0 and at most 3600")
    if "verify" in query:
        value = query["verify"].strip().lower()
        if value not in _TRUE + _FALSE:
            raise ConfigError(f"{what}: verify={query['verify']!r}: expected true or false")
        opts["verify"] = value in _TRUE
    ca = [query[k] for k in ("ca", "ca_file") if k in query]
    if len(ca) > 1:
        raise ConfigError(f"{what}: give the CA file once, as ca= or ca_file=")
    if ca:
        if not ca[0]:
            raise ConfigError(f"{what}: ca= needs the path of a CA bundle (PEM)")
        opts["ca_file"] = ca[0]
    if not https and (opts["ca_file"] or "verify" in query):
        raise ConfigError(f"{what}: ca= and verify= apply to TLS; this URI uses plain http")
    return opts
