"""The HTTP side port: /health (live), /ready and /metrics, never behind the token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def start_http(
    host: str,
    port: int,
    live: Callable[[], tuple[bool, str]],
    ready: Callable[[], bool],
    snapshot: Callable[[], dict],
    supervisor: Callable[[], dict],
) -> ThreadingHTTPServer:
    """Serve /health (live), /ready and /metrics on a daemon thread; never behind the token.

    It runs on its own thread so that it still answers, truthfully, when the event loop is wedged."""
    from serving.exposition import render

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/health":
                ok, reason = live()
                self._reply(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
            elif path == "/ready":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            elif path == "/metrics":
                self._reply(200, render(snapshot(), supervisor()), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes and probes stay out of the log
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="http-side-port", daemon=True).start()
    return httpd


def start_worker_http(worker, host: str, port: int) -> ThreadingHTTPServer:
    return start_http(host, port, worker.health, worker.is_ready, worker.stats.snapshot, worker.supervisor_view)
