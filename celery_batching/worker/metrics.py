"""Prometheus metrics of a batching worker.

A GPU worker is judged by how full its batches are, how long samples wait
before they are claimed, how long ``predict`` takes and how many samples fail.
:class:`PrometheusHooks` records those at the engine's hook points;
:class:`QueueDepthCollector` reads the served queues' true depth from Redis at
each scrape, for autoscalers. :func:`start_metrics` serves them over HTTP on
the port the worker was given, one port per worker, so Prometheus scrapes each
worker like a Triton or Ray Serve replica, with the ``/ready`` and ``/live``
probes beside them (:mod:`~celery_batching.worker.probes`). Turned on by
``app.conf.batching_metrics_port`` or the ``CELERY_BATCHING_METRICS_PORT``
environment variable; 0 or unset is off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..engine.hooks import BatchHooks
from ..errors import ConfigurationError
from .depth import DepthReader
from .probes import Readiness, serve

logger = logging.getLogger(__name__)

# Environment variables, used where app.conf leaves the option unset.
PORT_ENV = "CELERY_BATCHING_METRICS_PORT"
ADDR_ENV = "CELERY_BATCHING_METRICS_ADDR"
# Every interface, so a Prometheus in another container can scrape it.
DEFAULT_ADDR = "0.0.0.0"

# Powers of two up to the largest batch a GPU worker is likely to run.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From a millisecond (idle worker) to half a minute (a backlog).
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From a no-op model to a large transformer batch.
PREDICT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusHooks(BatchHooks):
    """Records batch sizes, queue waits, predict times, outcomes and skips per task."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["task"]
        self.batch_size = Histogram(
            "celery_batching_batch_size",
            "Samples per predict() call.",
            labels,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "celery_batching_queue_wait_seconds",
            "Time from send to claim by the worker, per sample.",
            labels,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.predict_time = Histogram(
            "celery_batching_predict_seconds",
            "Wall time of one predict() call.",
            labels,
            buckets=PREDICT_BUCKETS,
            registry=self.registry,
        )
        self.predict_throughput = Gauge(
            "celery_batching_predict_samples_per_second",
            "Batch size over predict time of the last batch.",
            labels,
            registry=self.registry,
        )
        self.samples = Counter(
            "celery_batching_samples",
            "Samples whose result was stored, by outcome.",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "celery_batching_failures",
            "Failed samples, by exception class.",
            ["task", "exception"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "celery_batching_skipped",
            "Tasks not run: revoked, expired or duplicate.",
            ["task", "reason"],
            registry=self.registry,
        )

    def after_claim(self, task_name: str, count: int, queue_waits: Sequence[float | None]) -> None:
        histogram = self.queue_wait.labels(task_name)
        for wait in queue_waits:
            if wait is not None:
                histogram.observe(max(wait, 0.0))  # clocks of sender and worker may disagree a little

    def after_predict(self, task_name: str, batch_size: int, seconds: float) -> None:
        self.batch_size.labels(task_name).observe(batch_size)
        self.predict_time.labels(task_name).observe(seconds)
        if seconds > 0:
            self.predict_throughput.labels(task_name).set(batch_size / seconds)

    def after_results(self, task_name: str, succeeded: int, failed: int, errors: Sequence[BaseException]) -> None:
        self.samples.labels(task_name, "succeeded").inc(succeeded)
        self.samples.labels(task_name, "failed").inc(failed)
        for error in errors:
            self.failures.labels(task_name, type(error).__name__).inc()

    def after_skip(self, task_name: str, task_id: str, reason: str) -> None:
        self.skipped.labels(task_name, reason).inc()


class QueueDepthCollector(Collector):
    """The true depth of some queues, read from Redis when Prometheus scrapes (one script call per queue)."""

    def __init__(self, readers: Iterable[DepthReader] = ()) -> None:
        self.readers = list(readers)

    def add(self, reader: DepthReader) -> None:
        self.readers.append(reader)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "celery_batching_queue_depth",
            "Messages of a batched queue: waiting (every priority), claimed and not acknowledged, scheduled (ETA).",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "celery_batching_oldest_waiting_seconds",
            "Age of the oldest waiting message of a queue (0 when none waits).",
            labels=["queue"],
        )
        for reader in list(self.readers):
            try:
                now = time.time()
                read = reader.read(now)
            except redis.RedisError as exc:  # a scrape without this queue beats a failed scrape
                logger.warning("celery-batching: cannot read the depth of %r: %s", reader.queue.queue, exc)
                continue
            depth.add_metric([read.queue, "waiting"], read.waiting)
            depth.add_metric([read.queue, "claimed"], read.claimed)
            depth.add_metric([read.queue, "scheduled"], read.scheduled)
            oldest.add_metric([read.queue], read.oldest_waiting_seconds(now))
        return [depth, oldest]


def metrics_port(app: Any) -> int:
    """The configured exporter port: app.conf first, then the environment; 0 is off."""
    raw = app.conf.get("batching_metrics_port")
    source = "batching_metrics_port"
    if raw in (None, ""):
        raw, source = os.environ.get(PORT_ENV, ""), PORT_ENV
    if raw in (None, ""):
        return 0
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{source}={raw!r} is not a port number; use 1-65535, or 0 to turn metrics off"
        ) from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{source}={port} is out of range; use 1-65535, or 0 to turn metrics off")
    return port


def metrics_addr(app: Any) -> str:
    """The configured address to serve on: app.conf, then the environment, then every interface."""
    return str(app.conf.get("batching_metrics_addr") or os.environ.get(ADDR_ENV) or DEFAULT_ADDR)


def start_metrics(app: Any, readiness: Readiness, depth: QueueDepthCollector) -> PrometheusHooks | None:
    """Serve this worker's metrics and probes if a port is configured; return the hook to register.

    Returns ``None`` when metrics are off (and with them the probes). The
    server runs in a daemon thread, so it never delays the worker's shutdown.
    """
    port = metrics_port(app)
    if port == 0:
        return None
    addr = metrics_addr(app)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(depth)
    hooks = PrometheusHooks(registry)
    try:
        serve(registry, readiness, addr, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); give each worker "
            f"on a host its own {PORT_ENV}"
        ) from exc
    return hooks
