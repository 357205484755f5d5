"""The Django demo in tests: its settings in this process, and its workers as subprocesses.

The site runs in the test process (Django's test client, real views, real
Celery client) against the session's private Redis; workers are real
``celery -A django_demo worker`` processes. Test modules import the fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, RedisServer, Worker, free_port, stop_process, wait_until

# Fast worker polling, so a stopped worker is noticed within seconds.
SITE_ENV = {
    "DJANGO_SECRET_KEY": "test-only-secret-key",
    "DEMO_WORKER_POLL_INTERVAL": "1.0",
    "DEMO_WORKER_REPLY_TIMEOUT": "0.5",
    "DEMO_WORKER_GRACE": "3",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


# Session fixtures imported into several modules run once per module; these caches make them once per session.
_checkpoint: list[str] = []
_site_env: list[dict[str, str]] = []


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT masked-LM, so fill-mask runs without a model hub."""
    from celery_batching.models.tiny_bert import build_tiny_bert

    if not _checkpoint:
        _checkpoint.append(str(build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))))
    return _checkpoint[0]


def site_env(redis_server: RedisServer, checkpoint: str) -> dict[str, str]:
    return {**SITE_ENV, "REDIS_URL": redis_server.url(0), "FILL_MASK_CHECKPOINT": checkpoint}


@pytest.fixture(scope="session")
def demo_site(redis_server: RedisServer, tiny_checkpoint: str) -> dict[str, str]:
    """Django set up in this process for the demo; returns the environment it was given."""
    import django
    from django.test.utils import setup_test_environment

    if not _site_env:
        env = site_env(redis_server, tiny_checkpoint)
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "django_demo.settings"
        django.setup()
        setup_test_environment()
        _site_env.append(env)
    return _site_env[0]


def start_demo_worker(redis_server: RedisServer, checkpoint: str, *queues: str, events: bool = False) -> Worker:
    """A ``celery -A django_demo worker -Q queues`` subprocess, ready."""
    args = ["-Q", ",".join(queues)] + (["-E"] if events else [])
    return Worker("django_demo", redis_server.url(0), *args, env=site_env(redis_server, checkpoint)).start(120)


@pytest.fixture(scope="module")
def embed_worker(redis_server: RedisServer, tiny_checkpoint: str, demo_site: dict[str, str]) -> Iterator[Worker]:
    """One worker serving the ``embed`` queue for a whole test module, once this process's site sees it."""
    from django_demo.inference.service import directory

    worker = start_demo_worker(redis_server, tiny_checkpoint, "embed")
    wait_until(lambda: worker.name in directory().workers().get("embed", []), 30, "the site to see the embed worker")
    yield worker
    worker.stop()


class WebServer:
    """The demo site under gunicorn (as deployed), on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: str, threads: int = 4) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "django_demo.wsgi",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "1",
            "--threads",
            str(threads),
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}
            )

    def start(self) -> WebServer:
        wait_until(self._answers, 30, f"gunicorn on port {self.port}; log: {self.log_path}")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}: {Path(self.log_path).read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)


@pytest.fixture
def client(demo_site: dict[str, str]):
    """Django's test client for the demo site."""
    from django.test import Client

    return Client()


def post(client, path: str, payload: object = None, raw: str | bytes | None = None):
    """POST ``payload`` as JSON (or ``raw`` as the body, for malformed ones)."""
    body = raw if raw is not None else json.dumps(payload)
    return client.post(path, data=body, content_type="application/json")
