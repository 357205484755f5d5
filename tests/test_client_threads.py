"""Many client threads in one process: every call takes the fast path, no thread disturbs another's wait.

Real redis-server and ``celery worker``. The two causes of the replies lost
with a Celery 5.6 client (issue 12), each shown on its own: kombu's bounded
connection pool sent the calls past its bound through Celery's path (a push
now waits for a free connection instead: client/push.py), and
results fulfilled in one thread unsubscribed on the result consumer of the
thread that built the reply hub, which Celery before 5.7 does not lock
(tests/version_client.py counts those UNSUBSCRIBEs on each Celery version, and
tests/test_celery_versions.py runs the load there).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import pytest

from celery_batching.client.push import pushers
from celery_batching.client.replies import BatchedResult, reply_hub

POOL_SIZE = 2


@pytest.fixture
def versions(app_module_env: None) -> Iterator[ModuleType]:
    module = importlib.import_module("tests.apps.versions")
    # Read when this process's publisher is built: only this module's tests send with this app.
    module.app.conf.broker_transport_options = {"max_connections": POOL_SIZE}
    yield module


def test_more_threads_sending_than_the_pool_holds_all_take_the_fast_path(versions, redis_server):
    # Given a pusher whose kombu pool holds two connections
    pusher = pushers.get(versions.app)
    assert pusher.client.connection_pool.max_connections == POOL_SIZE
    # When eight threads send at once, while Redis holds every write (so each push keeps its connection)
    threads = 4 * POOL_SIZE
    barrier = threading.Barrier(threads + 1)

    def send(x: int) -> object:
        barrier.wait()
        return versions.echo.delay(x)

    redis_server.client().client_pause(500, all=False)  # writes wait half a second; PINGs and reads do not
    with ThreadPoolExecutor(threads) as pool:
        sent = [pool.submit(send, x) for x in range(threads)]
        barrier.wait()
        results = [future.result() for future in sent]
    # Then each waited for a free connection: none failed or fell back to Celery's path (kombu's
    # MaxConnectionsError is a ConnectionError)
    assert [type(r) for r in results] == [BatchedResult] * threads
    assert redis_server.client().llen(versions.echo.batch_queue) == threads


def test_each_thread_awaits_its_results_on_its_own_backend(versions, start_worker):
    # Given this process's reply hub, built by whichever thread sent first
    start_worker("tests.apps.versions")
    assert versions.echo.delay(0).get(timeout=30) == 0
    hub_backend = reply_hub(versions.app).backend

    # When another thread sends and awaits tasks on the fast path
    def other_thread() -> list[tuple[bool, bool, int]]:
        seen = []
        for x in range(5):
            result = versions.echo.delay(x)
            seen.append((result.backend is versions.app.backend, result.backend is hub_backend, result.get(timeout=30)))
        return seen

    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(other_thread).result()
    # Then each result is that thread's (Celery's app.backend is per thread), never the hub thread's: what
    # Celery does when a result is ready (an UNSUBSCRIBE on the backend's result consumer) stays in its thread
    assert seen == [(True, False, x) for x in range(5)]
