"""Health probes beside the metrics: ``/live`` and ``/ready`` on the metrics port.

An orchestrator must not count a GPU worker as serving while its model is
still loading (minutes, for a large one), nor after the model failed to load.
:class:`Readiness` answers "ready" only once every served queue's model has
loaded and its consumer has run a claim round; :func:`serve` puts it, a
liveness answer and the Prometheus page on one small HTTP server, so a pod
needs one port for all three.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# The paths served; anything else is a 404.
METRICS_PATH = "/metrics"
READY_PATH = "/ready"
LIVE_PATH = "/live"


class Readiness:
    """Ready once ``expected`` checks are added and all pass; never again after :meth:`fail`."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self._checks: list[Callable[[], bool]] = []
        self._failure: str | None = None
        self._lock = threading.Lock()

    def add(self, check: Callable[[], bool]) -> None:
        """One served queue is up: its model loaded; ``check`` says whether its consumer claims."""
        with self._lock:
            self._checks.append(check)

    def fail(self, reason: str) -> None:
        """Not ready from now on (the model failed to load, or the worker is stopping)."""
        with self._lock:
            if self._failure is None:
                self._failure = reason

    def state(self) -> tuple[bool, str]:
        """Whether ready, and a line that says why not."""
        with self._lock:
            failure, checks = self._failure, list(self._checks)
        if failure is not None:
            return False, f"not ready: {failure}"
        if len(checks) < self.expected:
            return False, f"not ready: loading models ({len(checks)} of {self.expected} queues started)"
        if not all(check() for check in checks):
            return False, "not ready: waiting for the first claim"
        return True, "ready"


def serve(registry: CollectorRegistry, readiness: Readiness, addr: str, port: int) -> ThreadingHTTPServer:
    """Serve metrics and probes on ``addr:port`` from a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == METRICS_PATH:
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == READY_PATH:
                ready, why = readiness.state()
                self._reply(200 if ready else 503, why.encode() + b"\n")
            elif path == LIVE_PATH:
                self._reply(200, b"alive\n")
            else:
                self._reply(404, f"not found; try {METRICS_PATH}, {READY_PATH} or {LIVE_PATH}\n".encode())

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes come every few seconds: no access log."""

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"metrics:{port}", daemon=True).start()
    return server
