"""What the ES and HEC stand-ins share: a threaded HTTP(S) server for a handler class and its store."""

from __future__ import annotations

import ssl
import threading
from http.server import ThreadingHTTPServer


class Receiver:
    """A running stand-in: ``url``, ``port``, ``store``, ``close()``."""

    def __init__(self, server: ThreadingHTTPServer, store, scheme: str = "http"):
        self.server = server
        self.store = store
        host, port = server.server_address[:2]
        self.port = port
        self.url = f"{scheme}://{host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(handler: type, store, host: str, port: int, verbose: bool, tls: tuple[str, str] | None) -> Receiver:
    """Serve ``handler`` (bound to ``store``) on ``host:port`` (0: any free port) in a thread of its own;
    ``tls``: (certificate file, key file) to serve HTTPS."""
    bound = type("BoundHandler", (handler,), {"store": store, "verbose": verbose})
    server = ThreadingHTTPServer((host, port), bound)
    server.daemon_threads = True
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return Receiver(server, store, "https" if tls else "http")
