"""A loopback HTTP server answering fixed bodies per path: a stand-in Prometheus scrape target for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Route:
    """What one path answers: status, content type, body; optionally a delay and a bearer token it requires."""

    body: bytes
    status: int = 200
    content_type: str = TEXT_FORMAT
    delay: float = 0.0  # seconds before answering (bounded by the test)
    token: str | None = None  # answer 401 unless ``Authorization: Bearer <token>`` is sent


class ExpositionServer:
    """Serve ``routes`` on 127.0.0.1 (a free port) in a daemon thread while the ``with`` block runs."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self.requests: list[dict[str, str]] = []  # the headers of every request, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(dict(self.headers.items()))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                time.sleep(route.delay)
                status, body = route.status, route.body
                if route.token is not None and self.headers.get("Authorization") != f"Bearer {route.token}":
                    status, body = 401, b"unauthorized\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the scraper gave up (timeout): expected
                    return

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    def url(self, path: str = "/metrics") -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ExpositionServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
