"""The Prometheus hook and exporter on their own; tests/test_metrics_worker.py scrapes a real worker."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry

from celery_batching.errors import ConfigurationError, InvalidSample
from celery_batching.worker.metrics import PORT_ENV, PrometheusHooks, QueueDepthCollector, metrics_port, start_metrics
from celery_batching.worker.probes import Readiness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_app(**conf) -> Celery:
    app = Celery("metrics_test", set_as_current=False)
    app.conf.update(conf)
    return app


def test_hook_records_batches_waits_outcomes_and_skips():
    # Given a hook on its own registry
    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry)
    value = registry.get_sample_value

    # When one batch of three is claimed, predicted and stored with one failure, and one task is revoked
    hooks.after_claim("embed", 3, [0.002, None, 0.5])
    hooks.after_predict("embed", 3, 0.03)
    hooks.after_results("embed", 2, 1, [InvalidSample("too long")])
    hooks.after_skip("embed", "abc", "revoked")

    # Then every series counts it
    assert value("celery_batching_batch_size_count", {"task": "embed"}) == 1
    assert value("celery_batching_batch_size_sum", {"task": "embed"}) == 3
    assert value("celery_batching_queue_wait_seconds_count", {"task": "embed"}) == 2  # None is not observed
    assert value("celery_batching_predict_seconds_sum", {"task": "embed"}) == pytest.approx(0.03)
    assert value("celery_batching_predict_samples_per_second", {"task": "embed"}) == pytest.approx(100.0)
    assert value("celery_batching_samples_total", {"task": "embed", "outcome": "succeeded"}) == 2
    assert value("celery_batching_samples_total", {"task": "embed", "outcome": "failed"}) == 1
    assert value("celery_batching_failures_total", {"task": "embed", "exception": "InvalidSample"}) == 1
    assert value("celery_batching_skipped_total", {"task": "embed", "reason": "revoked"}) == 1


def start(app):
    """Start an app's metrics with nothing to wait for and no queue to read."""
    return start_metrics(app, Readiness(expected=0), QueueDepthCollector())


def test_port_is_off_unless_configured(monkeypatch):
    monkeypatch.delenv(PORT_ENV, raising=False)
    assert metrics_port(make_app()) == 0
    assert start(make_app()) is None
    assert start(make_app(batching_metrics_port=0)) is None


def test_app_conf_wins_over_environment(monkeypatch):
    monkeypatch.setenv(PORT_ENV, "9101")
    assert metrics_port(make_app()) == 9101
    assert metrics_port(make_app(batching_metrics_port=9200)) == 9200


@pytest.mark.parametrize(
    ("conf", "env", "message"),
    [
        ({"batching_metrics_port": "http"}, None, "batching_metrics_port='http' is not a port number"),
        ({}, "nine", f"{PORT_ENV}='nine' is not a port number"),
        ({"batching_metrics_port": 70000}, None, "batching_metrics_port=70000 is out of range"),
        ({}, "-1", f"{PORT_ENV}=-1 is out of range"),
    ],
)
def test_bad_port_is_a_configuration_error(monkeypatch, conf, env, message):
    monkeypatch.delenv(PORT_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(PORT_ENV, env)
    with pytest.raises(ConfigurationError, match=message):
        metrics_port(make_app(**conf))


def test_exporter_serves_the_hook_registry():
    # Given metrics turned on for a free loopback port
    port = free_port()
    hooks = start(make_app(batching_metrics_port=port, batching_metrics_addr="127.0.0.1"))
    assert hooks is not None

    # When a batch is recorded and the port is scraped
    hooks.after_predict("double", 4, 0.01)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    # Then the batch and the process metrics are there
    assert 'celery_batching_batch_size_count{task="double"} 1.0' in body
    assert "process_cpu_seconds_total" in body


def test_port_in_use_is_a_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}.*{PORT_ENV}"):
            start(make_app(batching_metrics_port=port, batching_metrics_addr="127.0.0.1"))
