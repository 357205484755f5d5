"""The client's fast path: one LPUSH to send, one reply channel per process to await.

Real redis-server and ``celery worker`` processes. What must hold: ``.delay()``
and ``.get()`` behave as Celery's, no per-task SUBSCRIBE happens, results
still reach anyone waiting on the task id, and whatever the fast path does not
cover goes through Celery untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
from celery import signals
from celery.exceptions import TaskRevokedError, TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from celery_batching import gather, submit_many
from celery_batching.client.replies import BatchedResult, reply_hub
from celery_batching.client.send_settings import FAST_CLIENT_SETTING
from celery_batching.protocol import envelope
from tests.servers import wait_until


@pytest.fixture
def basic(app_module_env) -> Iterator:
    yield importlib.import_module("tests.apps.basic")


def _results_db(basic) -> redis.Redis:
    return basic.app.backend.client


def test_delay_subscribes_to_no_task_key(basic, start_worker):
    # Given a few tasks sent while no worker runs
    results = [basic.double.delay(x) for x in range(5)]
    # Then they wait on the process's reply channel, not on one channel per task
    assert all(isinstance(r, BatchedResult) for r in results)
    db = _results_db(basic)
    # (other tests of this session may leave Celery's own subscriptions behind: only these tasks' keys count)
    subscribed = set(db.pubsub_channels("celery-task-meta-*"))
    assert not subscribed & {basic.app.backend.get_key_for_task(r.id) for r in results}
    channel = reply_hub(basic.app).channel
    assert db.pubsub_numsub(channel) == [(channel.encode(), 1)]
    # And once a worker runs, each gets its own result
    start_worker("tests.apps.basic")
    assert [r.get(timeout=30)["value"] for r in results] == [0, 2, 4, 6, 8]


def test_a_plain_async_result_of_the_same_task_still_gets_it(basic, start_worker):
    # Given a task sent on the fast path, and a plain AsyncResult of its id (another view, another process)
    sent = basic.double.delay(7)
    plain = AsyncResult(sent.id, app=basic.app)
    assert type(plain) is AsyncResult
    # When a worker runs it, both get the result
    start_worker("tests.apps.basic")
    assert plain.get(timeout=30)["value"] == 14
    assert sent.get(timeout=30)["value"] == 14


def test_failures_and_propagate_behave_as_celery(basic, start_worker):
    start_worker("tests.apps.basic")
    failing = basic.poison.delay("poison")
    with pytest.raises(ValueError, match="cannot digest 'poison'"):
        failing.get(timeout=30)
    returned = basic.poison.delay("poison").get(timeout=30, propagate=False)
    assert isinstance(returned, ValueError)
    assert failing.state == "FAILURE"


def test_task_level_expires_holds_on_the_fast_path(basic, start_worker):
    # Given a task whose declaration says its calls expire almost at once
    basic.double.expires = 0.001
    try:
        result = basic.double.delay(1)
    finally:
        basic.double.expires = None
    assert isinstance(result, BatchedResult)
    # When a worker starts (well after that)
    start_worker("tests.apps.basic")
    # Then the call was sent with its expiry and skipped
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=30)


def test_get_times_out_like_celery(basic):
    result = basic.double.delay(1)  # no worker
    with pytest.raises(CeleryTimeoutError):
        result.get(timeout=0.3)


def test_a_reply_lost_while_the_listener_reconnects_still_arrives(basic, start_worker):
    # Given tasks waiting on the reply channel
    results = submit_many(basic.double, range(8))
    # When Redis drops the listener's connection (as on a restart) and the worker then runs them
    db = _results_db(basic)
    assert db.client_kill_filter(_type="pubsub") >= 1
    start_worker("tests.apps.basic")
    # Then every result still arrives (the listener resubscribes; waits re-read stored results)
    assert [o["value"] for o in gather(results, timeout=30)] == [2 * x for x in range(8)]


def test_a_publish_signal_receiver_sends_through_celery(basic, start_worker):
    seen: list[str] = []

    def receiver(sender=None, headers=None, **_):
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver)
    try:
        result = basic.double.delay(3)
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [result.id]
    assert not isinstance(result, BatchedResult)
    start_worker("tests.apps.basic")
    assert result.get(timeout=30)["value"] == 6


def test_options_the_fast_path_does_not_cover_go_through_celery(basic, start_worker):
    start_worker("tests.apps.basic")
    result = basic.double.apply_async((4,), countdown=0.1, priority=5)
    assert not isinstance(result, BatchedResult)
    assert result.get(timeout=30)["value"] == 8


def test_the_fast_path_can_be_turned_off(basic, start_worker):
    start_worker("tests.apps.basic")
    basic.app.conf[FAST_CLIENT_SETTING] = False
    try:
        result = basic.double.delay(5)
        many = submit_many(basic.double, [1, 2])
    finally:
        basic.app.conf[FAST_CLIENT_SETTING] = True
    assert not isinstance(result, BatchedResult)
    assert result.get(timeout=30)["value"] == 10
    assert [o["value"] for o in gather(many, timeout=30)] == [2, 4]


def test_a_worker_publishes_only_to_reply_channels(basic, start_worker):
    # Given a message whose reply header names an arbitrary channel
    db = _results_db(basic)
    listener = db.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("not-a-reply-channel")
    task_id = "reply-header-test"
    payload = envelope(
        basic.double,
        task_id,
        9,
        basic.double.batch_queue,
        expires=None,
        ignore_result=False,
        reply_channel="not-a-reply-channel",
    )
    redis.Redis.from_url(basic.app.conf.broker_url).lpush(basic.double.batch_queue, payload)
    # When a worker runs it
    start_worker("tests.apps.basic")
    assert AsyncResult(task_id, app=basic.app).get(timeout=30)["value"] == 18
    # Then nothing was published to that channel
    assert listener.get_message(timeout=0.5) is None
    listener.close()


def _child_round_trip(queue: multiprocessing.Queue) -> None:
    module = importlib.import_module("tests.apps.basic")
    result = module.double.delay(11)
    queue.put((reply_hub(module.app).channel, result.get(timeout=30)["value"]))


def test_a_forked_child_gets_its_own_reply_channel(basic, start_worker):
    # Given a parent that already uses its reply channel (as a pre-loading web server's master would)
    start_worker("tests.apps.basic")
    assert basic.double.delay(1).get(timeout=30)["value"] == 2
    parent_channel = reply_hub(basic.app).channel
    # When a forked child calls the task
    answers: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_round_trip, args=(answers,))
    child.start()
    channel, value = answers.get(timeout=60)
    child.join(30)
    # Then it got its result on a channel of its own
    assert value == 22
    assert channel != parent_channel
    assert child.exitcode == 0
    wait_until(lambda: _results_db(basic).pubsub_numsub(channel)[0][1] == 0, 10, "the child's channel closed")


def test_task_sent_events_still_reach_monitors(basic):
    # Given a monitor listening to the app's events, and task_send_sent_event on
    seen: dict[str, dict] = {}
    ready = threading.Event()

    def monitor() -> None:
        with basic.app.connection_for_read() as connection:
            receiver = basic.app.events.Receiver(
                connection,
                handlers={
                    "task-sent": lambda event: seen.setdefault(event["uuid"], event),
                },
            )
            consumer = receiver.consume(limit=None, timeout=15, wakeup=False)
            ready.set()
            with contextlib.suppress(socket.timeout, TimeoutError):
                for _ in consumer:
                    if len(seen) >= 3:
                        return

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert ready.wait(10)
    basic.app.conf.task_send_sent_event = True
    try:
        # When tasks are sent on the fast path
        results = [basic.double.delay(x) for x in range(3)]
    finally:
        basic.app.conf.task_send_sent_event = False
    assert all(isinstance(r, BatchedResult) for r in results)
    # Then the monitor sees each one's task-sent event, with its queue
    thread.join(20)
    assert set(seen) == {r.id for r in results}
    assert {e["name"] for e in seen.values()} == {basic.double.name}
    assert {e["queue"] for e in seen.values()} == {basic.double.batch_queue}
