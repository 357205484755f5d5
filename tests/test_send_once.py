"""At most one push per call: a send whose outcome is unknown is retried without a second message.

A proxy between the client and Redis forwards the client's push and drops
Redis's answer, so the push has landed and the client times out, as on a
network hiccup. The retry (Celery's publish retry policy) finds the call's
sent marker and pushes nothing; the task runs once and its caller gets one
result. When no attempt is confirmed, the caller gets ``SendOutcomeUnknown``
with the task id, and sending that id again still pushes nothing twice.
"""

from __future__ import annotations

import importlib
from importlib import resources

import pytest

from celery_batching import SendOutcomeUnknown
from tests.reply_dropper import ReplyDropper
from tests.servers import RedisServer

APP = "tests.apps.overload"
QUEUE = "overload.record"
# A short socket timeout, so a dropped reply is a timeout within a second; two retries.
CLIENT_CONF = {
    "broker_transport_options": {"socket_timeout": 0.5},
    "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1},
}


@pytest.fixture
def overload(app_module_env):
    return importlib.import_module(APP)


@pytest.fixture
def broker(redis_url, redis_server):
    client = redis_server.client(0)
    # The push script already known to Redis: the dropped reply is that of a push that ran, not of a NOSCRIPT.
    client.script_load(resources.files("celery_batching.client").joinpath("lua", "push.lua").read_text())
    return client


@pytest.fixture
def dropper(redis_server):
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


def test_a_push_whose_reply_was_lost_is_not_pushed_again_and_runs_once(overload, broker, dropper, start_worker):
    # Given a client whose first push reaches Redis but whose answer is lost
    record, _ = overload.declare(overload.make_app(dropper.url(0), **CLIENT_CONF))
    dropper.arm(1)

    # When it sends a task
    result = record.delay("once")

    # Then the lost answer was retried, and the retry found the push done: one message on the queue
    assert dropper.dropped == 1
    assert broker.llen(QUEUE) == 1

    # And a worker runs it once; the caller gets its one result
    start_worker(APP, "-Q", QUEUE)
    assert result.get(timeout=30) == "ONCE"
    assert broker.lrange("ran", 0, -1) == [b"once"]


def test_an_unconfirmed_send_names_its_task_id_and_sending_it_again_pushes_nothing_twice(
    overload, broker, dropper, start_worker
):
    # Given a client none of whose attempts (one and two retries) gets an answer
    record, _ = overload.declare(overload.make_app(dropper.url(0), **CLIENT_CONF))
    dropper.arm(3)

    # When it sends a task with a known id
    with pytest.raises(SendOutcomeUnknown) as caught:
        record.apply_async(("maybe",), task_id="maybe-1")

    # Then the error names the id and the attempts; the first attempt's push is on the queue, once
    assert "maybe-1" in str(caught.value) and "after 3 attempt(s)" in str(caught.value)
    assert dropper.dropped == 3
    assert broker.llen(QUEUE) == 1

    # When the caller sends the same id again, the queue still holds one message
    again = record.apply_async(("maybe",), task_id="maybe-1")
    assert broker.llen(QUEUE) == 1

    # And the task runs once, with one result for the caller
    start_worker(APP, "-Q", QUEUE)
    assert again.get(timeout=30) == "MAYBE"
    assert broker.lrange("ran", 0, -1) == [b"maybe"]


def test_a_broker_gone_after_the_first_send_is_a_named_error_after_the_retry_policy(overload, redis_url):
    # Given a client that has sent through its own broker, which then stops
    own = RedisServer().start()
    try:
        record, _ = overload.declare(overload.make_app(own.url(0), **CLIENT_CONF))
        record.delay("first")
    finally:
        own.cleanup()

    # When it sends again, it gets SendOutcomeUnknown after its three attempts (no resend through Celery)
    with pytest.raises(SendOutcomeUnknown, match=r"after 3 attempt\(s\) \(ConnectionError"):
        record.delay("nowhere")
