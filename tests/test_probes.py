"""A real worker's ``/ready`` and ``/live`` probes, on its metrics port.

The model of ``tests.apps.gated_model`` loads only when the test opens a gate,
so the probes are seen before the model loads, while it loads, once it has
loaded (and the consumer claims), and after it failed to load.
"""

from __future__ import annotations

import importlib
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from celery_batching.worker.probes import Readiness
from tests.servers import ROOT, Worker, free_port, wait_until
from tests.test_docker_compose import healthcheck

APP = "tests.apps.gated_model"


def probe(port: int, path: str) -> tuple[int, str] | None:
    """The status and body of one probe, or ``None`` while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return None


def launch(redis_url: str, port: int, **env: str) -> Worker:
    """Start the gated worker without waiting for it to be ready (its model waits for the test)."""
    worker = Worker(APP, redis_url, env={"CELERY_BATCHING_METRICS_PORT": str(port), **env})
    log = worker.log_path.open("wb")
    worker.process = subprocess.Popen(worker.argv, stdout=log, stderr=subprocess.STDOUT, env=worker.env, cwd=ROOT)
    return worker


@pytest.fixture
def gated(app_module_env):
    return importlib.import_module(APP)


def test_ready_only_once_the_model_loaded_and_the_consumer_claims(gated, redis_url, redis_server):
    client = redis_server.client(0)
    port = free_port()
    # Given a worker started before its model may load
    worker = launch(redis_url, port)
    try:
        # Then before the model starts loading, /ready never answers 200
        while not client.llen(gated.LOADING_KEY):
            assert worker.process.poll() is None, worker.log()
            answer = probe(port, "/ready")
            assert answer is None or answer[0] == 503, answer
        # And while it loads: not ready, saying why, but alive
        status, body = probe(port, "/ready")
        assert (status, body) == (503, "not ready: loading models (0 of 1 queues started)\n")
        assert probe(port, "/live") == (200, "alive\n")
        # (so compose's healthcheck of a worker fails too)
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        assert healthcheck(compose, "worker-gpu0", port).returncode != 0

        # When the model is let to load
        client.rpush(gated.GATE_KEY, "ok")
        # Then the worker turns ready, and serves
        wait_until(lambda: probe(port, "/ready") == (200, "ready\n"), 30, f"/ready; log: {worker.log_path}")
        assert gated.double.delay(21).get(timeout=30) == 42
        assert healthcheck(compose, "worker-gpu0", port).returncode == 0
        assert probe(port, "/live") == (200, "alive\n")
        assert probe(port, "/nowhere")[0] == 404
    finally:
        worker.stop()


def test_a_model_that_fails_to_load_is_never_ready_and_the_worker_exits(gated, redis_url, redis_server):
    client = redis_server.client(0)
    port = free_port()
    # Given a worker whose model will fail to load, held at its exit so it can be probed
    worker = launch(redis_url, port, CB_HOLD_EXIT="1")
    try:
        wait_until(lambda: client.llen(gated.LOADING_KEY), 60, f"the model to start loading; log: {worker.log_path}")
        # When the model fails to load
        client.rpush(gated.GATE_KEY, "fail")
        # Then /ready says so with the reason, while the worker winds down
        wait_until(lambda: "ModelLoadError" in worker.log(), 30, f"the load failure; log: {worker.log_path}")
        status, body = probe(port, "/ready")
        assert status == 503
        assert "failed to load" in body and "the weights are corrupt" in body
        # And the worker exits with a failure, as a pod's container would, to be restarted
        client.rpush(gated.EXIT_KEY, "go")
        assert worker.wait(60) != 0
    finally:
        worker.stop()


# -- the readiness rules, without a server --------------------------------------------------


def test_readiness_waits_for_every_queue_and_its_first_claim():
    claimed = {"a": False, "b": False}
    readiness = Readiness(expected=2)
    assert readiness.state() == (False, "not ready: loading models (0 of 2 queues started)")
    readiness.add(lambda: claimed["a"])
    readiness.add(lambda: claimed["b"])
    claimed["a"] = True
    assert readiness.state() == (False, "not ready: waiting for the first claim")
    claimed["b"] = True
    assert readiness.state() == (True, "ready")


def test_readiness_after_a_failure_never_returns():
    readiness = Readiness(expected=1)
    readiness.add(lambda: True)
    readiness.fail("model X failed to load")
    readiness.fail("the worker is stopping")
    assert readiness.state() == (False, "not ready: model X failed to load")
