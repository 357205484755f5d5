"""Shared fixtures: one private redis-server per session, workers per test.

In CI (``CI=true``) a missing redis-server is an error, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, Worker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean broker database for this test (db 0; results go to db 1)."""
    client = redis_server.client(0)
    client.flushall()
    return redis_server.url(0)


@pytest.fixture
def start_worker(redis_url: str) -> Iterator:
    """Start ``celery -A module worker`` subprocesses; all are stopped after the test."""
    started: list[Worker] = []

    def start(
        app_module: str, *args: str, env: dict[str, str] | None = None, name: str | None = None, timeout: float = 60
    ) -> Worker:
        worker = Worker(app_module, redis_url, *args, env=env, name=name)
        started.append(worker)
        return worker.start(timeout)

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def app_module_env(redis_url: str) -> Iterator[None]:
    """Point test app modules imported in this process at the test's Redis."""
    previous = os.environ.get("CB_TEST_BROKER")
    os.environ["CB_TEST_BROKER"] = redis_url
    yield
    if previous is None:
        os.environ.pop("CB_TEST_BROKER", None)
    else:
        os.environ["CB_TEST_BROKER"] = previous
