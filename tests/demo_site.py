"""The Django demo in tests: its settings in this process, and its workers as subprocesses.

The site runs in the test process (Django's test client, real views, real
Celery client) against the session's private Redis; workers are real
``celery -A django_demo worker`` processes. Test modules import the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, Worker

# Fast worker polling, so a stopped worker is noticed within seconds.
SITE_ENV = {
    "DJANGO_SECRET_KEY": "test-only-secret-key",
    "DEMO_WORKER_POLL_INTERVAL": "0.3",
    "DEMO_WORKER_REPLY_TIMEOUT": "0.5",
    "DEMO_WORKER_GRACE": "3",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT masked-LM, so fill-mask runs without a model hub."""
    from celery_batching.models.tiny_bert import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def site_env(redis_server: RedisServer, checkpoint: str) -> dict[str, str]:
    return {**SITE_ENV, "REDIS_URL": redis_server.url(0), "FILL_MASK_CHECKPOINT": checkpoint}


@pytest.fixture(scope="session")
def demo_site(redis_server: RedisServer, tiny_checkpoint: str) -> dict[str, str]:
    """Django set up in this process for the demo; returns the environment it was given."""
    import django
    from django.test.utils import setup_test_environment

    env = site_env(redis_server, tiny_checkpoint)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_demo.settings"
    django.setup()
    setup_test_environment()
    return env


def start_demo_worker(redis_server: RedisServer, checkpoint: str, *queues: str, events: bool = False) -> Worker:
    """A ``celery -A django_demo worker -Q queues`` subprocess, ready."""
    args = ["-Q", ",".join(queues)] + (["-E"] if events else [])
    return Worker("django_demo", redis_server.url(0), *args, env=site_env(redis_server, checkpoint)).start(120)


@pytest.fixture(scope="module")
def embed_worker(redis_server: RedisServer, tiny_checkpoint: str, demo_site: dict[str, str]) -> Iterator[Worker]:
    """One worker serving the ``embed`` queue for a whole test module."""
    worker = start_demo_worker(redis_server, tiny_checkpoint, "embed")
    yield worker
    worker.stop()
