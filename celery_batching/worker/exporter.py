"""The standalone depth exporter: an app's queue depth with no worker running.

An autoscaler that scales GPU workers down to zero cannot scrape a worker for
the depth that should bring the first one back. ``celery-batching exporter``
serves the same ``celery_batching_queue_depth`` and
``celery_batching_oldest_waiting_seconds`` a worker does, for the app's
batched queues, from a process that loads no model and claims nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from typing import Any

import redis
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CollectorRegistry

from ..errors import ConfigurationError
from .bootstep import batched_tasks
from .depth import readers_for
from .metrics import QueueDepthCollector
from .probes import Readiness, serve

logger = logging.getLogger(__name__)


class DepthExporter:
    """Serves the depth of ``queues`` (all batched queues of the app when empty) on ``addr:port``."""

    def __init__(self, app: Any, queues: Sequence[str] = ()) -> None:
        app.loader.import_default_modules()  # the tasks, as a worker would find them
        self.queues = list(queues) or sorted({task.batch_queue for task in batched_tasks(app)})
        if not self.queues:
            raise ConfigurationError(f"app {app.main!r} has no batched task; name the queues with --queues")
        self._connection = app.connection_for_read()
        channel = self._connection.default_channel
        if not isinstance(channel, RedisChannel):
            raise ConfigurationError(f"the depth exporter needs a Redis broker, not {self._connection.transport_cls!r}")
        self._client = channel.client
        self.registry = CollectorRegistry()
        self.registry.register(QueueDepthCollector(readers_for(app, channel.client, self.queues)))
        # Ready while Redis answers: a depth read from a broker it cannot reach would mislead.
        self.readiness = Readiness(expected=1)
        self.readiness.add(self._redis_answers)
        self._server: ThreadingHTTPServer | None = None

    def start(self, addr: str, port: int) -> None:
        try:
            self._server = serve(self.registry, self.readiness, addr, port)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve the exporter on {addr}:{port} ({exc.strerror or exc})") from exc
        logger.info("serving the depth of %s on http://%s:%s/metrics", ", ".join(self.queues), addr, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._connection.release()

    def _redis_answers(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False
