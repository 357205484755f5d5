"""Many client threads in one process: every call takes the fast path, no thread disturbs another's wait.

Calls sent while a push is in flight wait in line and share the next round trip
(client/push.py), each with its own bound and outcome; Redis holding every write
(``CLIENT PAUSE WRITE``) keeps a push in flight for as long as a test needs.

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

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from types import ModuleType

import pytest

from celery_batching import QueueFull
from celery_batching.client.push import Pusher, pushers
from celery_batching.client.replies import BatchedResult, reply_hub
from tests.servers import RedisServer, wait_until

POOL_SIZE = 2
PUSH_SCRIPT = resources.files("celery_batching.client").joinpath("lua", "push.lua").read_text()


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
    # Then none failed or fell back to Celery's path (kombu's MaxConnectionsError is a ConnectionError)
    assert [type(r) for r in results] == [BatchedResult] * threads
    assert redis_server.client().llen(versions.echo.batch_queue) == threads


@contextlib.contextmanager
def writes_held(redis_server: RedisServer) -> Iterator[None]:
    """Redis holds every write (a push's script among them) until the block ends; reads still answer."""
    client = redis_server.client()
    client.client_pause(60_000, all=False)
    try:
        yield
    finally:
        client.client_unpause()


def push_in_flight(pusher: Pusher) -> bool:
    """Whether a round trip has taken the first call in line (it is sent, or about to be)."""
    line = list(pusher._line)
    return bool(line) and line[0].taken


def evalsha_calls(redis_server: RedisServer) -> int:
    return int(redis_server.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_calls_sent_while_a_push_is_in_flight_share_the_next_round_trip(versions, redis_server):
    # Given a push in flight, held by Redis, and seven threads sending behind it
    redis_server.client().script_load(PUSH_SCRIPT)
    redis_server.client().config_resetstat()
    pusher = pushers.get(versions.app)
    with ThreadPoolExecutor(8) as pool, writes_held(redis_server):
        first = pool.submit(versions.echo.delay, 0)
        wait_until(lambda: push_in_flight(pusher), 10, "the first push in flight")
        behind = [pool.submit(versions.echo.delay, x) for x in range(1, 8)]
        wait_until(lambda: len(pusher._line) == 8, 10, "seven calls in line behind it")
    results = [first.result(timeout=30)] + [future.result(timeout=30) for future in behind]

    # Then the seven went in one round trip after the first: two script runs for eight calls
    assert evalsha_calls(redis_server) == 2
    # And each call is on the queue once, with its own task id and result handle
    assert [type(r) for r in results] == [BatchedResult] * 8
    assert len({r.id for r in results}) == 8
    assert redis_server.client().llen(versions.echo.batch_queue) == 8


def test_calls_sharing_a_round_trip_are_bounded_one_after_another(app_module_env, redis_server):
    # Given a queue bound at 5, a push onto it in flight, and seven threads sending behind it
    overload = importlib.import_module("tests.apps.overload")
    record = overload.record
    pusher = pushers.get(overload.app)
    with ThreadPoolExecutor(8) as pool, writes_held(redis_server):
        first = pool.submit(record.delay, "first")
        wait_until(lambda: push_in_flight(pusher), 10, "the first push in flight")
        behind = [pool.submit(record.delay, f"s{x}") for x in range(7)]
        wait_until(lambda: len(pusher._line) == 8, 10, "seven calls in line behind it")
    first.result(timeout=30)
    outcomes = [future.exception(timeout=30) for future in behind]

    # Then, in the shared round trip, each call saw the calls before it: four more fit, three are refused
    refused = [outcome for outcome in outcomes if outcome is not None]
    assert [type(outcome) for outcome in refused] == [QueueFull] * 3
    assert [outcome.args[1] for outcome in refused] == [5] * 3  # the depth each saw
    assert redis_server.client().llen(record.batch_queue) == 5


def test_a_caller_interrupted_in_line_leaves_it_and_the_line_goes_on(versions, redis_server):
    # Given a push in flight, held by Redis, and this (the main) thread in line behind it
    pusher = pushers.get(versions.app)
    queue = versions.echo.batch_queue

    def interrupt_when_in_line() -> None:
        wait_until(lambda: len(pusher._line) == 2, 10, "the main thread in line")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with ThreadPoolExecutor(2) as pool:
        with writes_held(redis_server):
            first = pool.submit(versions.echo.delay, 0)
            wait_until(lambda: push_in_flight(pusher), 10, "the first push in flight")
            interrupter = pool.submit(interrupt_when_in_line)
            # When it is interrupted while it waits
            with pytest.raises(KeyboardInterrupt):
                versions.echo.delay(1)
            interrupter.result(timeout=10)
            # Then its call left the line; the one in flight is still there
            assert len(pusher._line) == 1
        assert type(first.result(timeout=30)) is BatchedResult

        # And the line goes on: the next call is sent (were the interrupted call left first in line, it would
        # wait for ever), and only the calls not interrupted are on the queue
        assert type(pool.submit(versions.echo.delay, 2).result(timeout=30)) is BatchedResult
    assert redis_server.client().llen(queue) == 2


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
