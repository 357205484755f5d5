"""Result backends: Redis takes the fast path, a database backend goes through Celery's, rpc:// is refused.

Real redis-server (the broker) and ``celery worker``; the database is a
SQLite file through SQLAlchemy (``db+sqlite://``), shared by the worker and
the test. Each batched task is checked against its ordinary twin of the same app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from celery import Celery

from celery_batching import ConfigurationError, batched, gather, submit_many
from celery_batching.client.replies import BatchedResult
from tests.fault_tools import load_app
from tests.servers import ROOT, Worker

APP = "tests.apps.formats"
RPC_REFUSED = r"rpc:// result backend is not supported .* set result_backend to a Redis URL"


@pytest.fixture
def sqlite_backend(tmp_path) -> str:
    return f"db+sqlite:///{tmp_path / 'results.db'}"


def test_database_backend_round_trip_matches_an_ordinary_task(redis_url, sqlite_backend, start_worker):
    # Given a client whose results go to a SQLite database
    client = load_app(APP, redis_url, sqlite_backend)
    # When a batched task and its twin are sent the same sample, before any worker runs
    result, plain = client.echo.delay("hi"), client.plain_echo.delay("hi")
    # Then the call went through Celery's path (no reply channel without Redis results), and both are pending
    assert not isinstance(result, BatchedResult)
    assert result.state == plain.state == "PENDING"
    # And once a worker of the same app runs them
    start_worker(APP, env={"CB_TEST_BACKEND": sqlite_backend})
    # And both store the same result and state in the database
    assert result.get(timeout=30) == plain.get(timeout=30) == {"sample": "hi", "type": "str"}
    assert result.state == plain.state == "SUCCESS"
    assert client.app.backend.get_task_meta(result.id)["status"] == "SUCCESS"


def test_database_backend_failures_keep_their_exception(redis_url, sqlite_backend, start_worker):
    start_worker(APP, env={"CB_TEST_BACKEND": sqlite_backend})
    client = load_app(APP, redis_url, sqlite_backend)
    # When a batch with one bad sample runs, and the twin gets the bad sample too
    results = submit_many(client.picky, [1, 2, -3, 4])
    plain = client.plain_picky.delay(-3)
    # Then the bad one fails alone, with the same exception and state as the ordinary task's
    outcomes = gather(results, timeout=30, propagate=False)
    assert outcomes[:2] == [2, 4] and outcomes[3] == 8
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "negative sample -3"
    with pytest.raises(ValueError, match="negative sample -3"):
        plain.get(timeout=30)
    assert results[2].state == plain.state == "FAILURE"
    assert "ValueError: negative sample -3" in results[2].traceback
    assert [r.state for r in results] == ["SUCCESS", "SUCCESS", "FAILURE", "SUCCESS"]


def _identity(batch: list) -> list:
    return batch


@pytest.mark.parametrize("how", ["constructor", "conf"])
def test_rpc_backend_is_refused_at_declaration(how):
    # Given an app whose results go to rpc://
    if how == "constructor":
        app = Celery("rpc", broker="memory://", backend="rpc://", set_as_current=False)
    else:
        app = Celery("rpc", broker="memory://", set_as_current=False)
        app.conf.result_backend = "rpc://"
    # When a batched task is declared, Then it is refused, naming the fix
    with pytest.raises(ConfigurationError, match=r"batched\(\): the " + RPC_REFUSED):
        batched(app, name="rpc.task")(_identity)


def test_rpc_backend_is_refused_at_worker_start(redis_url):
    # Given an app that sets rpc:// only after its tasks are declared
    worker = Worker(APP, redis_url, env={"CB_LATE_BACKEND": "rpc://"})
    # When its worker starts, Then it stops with the named error instead of serving
    try:
        with pytest.raises(RuntimeError, match="exited"):
            worker.start()
    finally:
        worker.stop()
    assert "ConfigurationError" in worker.log()
    assert "rpc:// result backend is not supported" in worker.log()


def test_rpc_backend_is_refused_when_sending(redis_url):
    # Given a client of that app (configured late, so its declaration did not see rpc://)
    client = load_app(APP, redis_url)
    client.app.conf.result_backend = "rpc://"
    # When it submits samples, Then it is refused before anything is sent
    with pytest.raises(ConfigurationError, match=RPC_REFUSED):
        submit_many(client.echo, [1, 2])
    with pytest.raises(ConfigurationError, match=RPC_REFUSED):
        client.echo.delay(1)
    assert client.app.connection_for_write().default_channel.client.llen(client.echo.batch_queue) == 0


def test_a_configuration_not_loadable_at_declaration_is_checked_later():
    # Given an app whose configuration cannot be loaded yet (as Django settings before setup)
    app = Celery("later", set_as_current=False)
    app.config_from_object("tests.apps.not_there_yet")
    # When a batched task is declared, Then the declaration stands (the task is bound, and Celery reads
    # the configuration, only when first used): the backend is checked at send and at worker start
    batched(app, name="later.task")(_identity)


# The client side of the django-db test, in its own process: configuring Django here would
# configure it for every later test of the session.
_DJANGO_CLIENT = """
import json
from celery_batching import gather, submit_many
from tests.apps import django_results as m

results = submit_many(m.picky, [5, -1])
plain = [m.plain_picky.delay(5), m.plain_picky.delay(-1)]
outcomes = gather(results, timeout=30, propagate=False) + [r.get(timeout=30, propagate=False) for r in plain]
print(json.dumps({
    "values": [o if isinstance(o, int) else f"{type(o).__name__}: {o}" for o in outcomes],
    "states": [r.state for r in results + plain],
    "stored": m.app.backend.get_task_meta(results[1].id)["status"],
}))
"""


def test_django_db_backend_round_trip(redis_url, tmp_path, start_worker):
    # Given a worker and a client whose results go to django-celery-results (django-db, SQLite)
    env = {"CB_DJANGO_DB": str(tmp_path / "django.sqlite3")}
    start_worker("tests.apps.django_results", env=env)
    # When a batch with a bad sample runs, and the ordinary twin gets the same samples
    client = subprocess.run(
        [sys.executable, "-c", _DJANGO_CLIENT],
        env={**os.environ, **env, "CB_TEST_BROKER": redis_url, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert client.returncode == 0, client.stderr
    seen = json.loads(client.stdout.strip().splitlines()[-1])
    # Then results, exceptions and states are the ordinary task's, and stored in the database
    assert seen["values"] == [10, "ValueError: negative sample -1"] * 2
    assert seen["states"] == ["SUCCESS", "FAILURE"] * 2
    assert seen["stored"] == "FAILURE"


# The demo's settings file read alone (run_path), in a process with the given environment.
_READ_SETTINGS = (
    "import runpy; s = runpy.run_path('django_demo/settings.py'); "
    "print(s['CELERY_RESULT_BACKEND'], 'django_celery_results' in s['INSTALLED_APPS'])"
)


def _read_settings(choice: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_DEBUG": "1", "DEMO_RESULT_BACKEND": choice}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-c", _READ_SETTINGS], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("", "redis://127.0.0.1:6379/0"), ("redis", "redis://127.0.0.1:6379/0"), ("django-db", "django-db")],
)
def test_the_demo_uses_django_db_only_when_asked(choice, expected):
    # Given the demo's settings read with DEMO_RESULT_BACKEND unset, redis, or django-db
    out = _read_settings(choice)
    # Then Redis is the default, and django-celery-results is installed only for django-db
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [expected, str(choice == "django-db")]


def test_the_demo_refuses_an_unknown_result_backend_choice():
    out = _read_settings("rpc")
    assert out.returncode != 0 and "DEMO_RESULT_BACKEND='rpc': use redis or django-db" in out.stderr
