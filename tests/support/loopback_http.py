"""HTTP servers that tests stand up on 127.0.0.1 (a fake Kubernetes API, a proxy in front of
moto, an instance metadata service), each served from a daemon thread until closed."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps its access log off the test's output."""

    def log_message(self, *args: Any) -> None:
        pass


class LoopbackServer:
    """`handler` served on a free port of 127.0.0.1 (`url`) from a daemon thread named `name`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=name)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
