"""A result that reaches Redis after its message could have been restored never overwrites a final one.

Whether a write is late is decided by Redis as the write runs (``store_results.lua``),
not by the worker when it sends it: a write sent into a cut link arrives when
the link is back. Real Redis; the writer is called directly.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from celery import Celery, states

from celery_batching.protocol import BATCH_CHANNEL_PREFIX
from celery_batching.worker.results import ResultWriter, TaskResult
from tests.fault_tools import RESULT_PREFIX
from tests.servers import RedisServer


@pytest.fixture
def results(redis_server: RedisServer, redis_url: str) -> redis.Redis:
    return redis_server.client(1)


@pytest.fixture
def writer(redis_server: RedisServer, redis_url: str) -> ResultWriter:
    app = Celery("late", broker=redis_url, backend=redis_server.url(1))
    return ResultWriter(app, "late.task")


def next_message(results: redis.Redis, pubsub: redis.client.PubSub, channel: str) -> bytes:
    """The next message on ``channel``; a marker published now comes first if nothing was published before."""
    results.publish(channel, "marker")
    message = pubsub.get_message(timeout=5)
    assert message is not None, f"nothing arrived on {channel}"
    return bytes(message["data"])


def stored(results: redis.Redis, task_id: str) -> dict:
    return json.loads(results.get(RESULT_PREFIX + task_id))


def other_workers_result(results: redis.Redis, task_id: str, status: str = states.SUCCESS) -> None:
    results.set(RESULT_PREFIX + task_id, json.dumps({"status": status, "result": "elsewhere", "task_id": task_id}))


def test_a_late_result_leaves_the_final_one_there_and_announces_nothing(writer, results):
    # Given a task whose result another worker stored after restoring its message
    task_id = uuid.uuid4().hex
    other_workers_result(results, task_id)
    pubsub = results.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(RESULT_PREFIX + task_id)
    pubsub.get_message(timeout=1)

    # When this worker's write reaches Redis after the message's visibility timeout
    writer.write([TaskResult(task_id, states.SUCCESS, "late", late_after=time.time() - 1)])

    # Then the other worker's result stands and no second announcement went out
    assert stored(results, task_id)["result"] == "elsewhere"
    assert next_message(results, pubsub, RESULT_PREFIX + task_id) == b"marker"
    pubsub.close()


def test_a_result_in_time_is_stored_over_whatever_is_there(writer, results):
    # Given a record already there (a task id sent again)
    task_id = uuid.uuid4().hex
    other_workers_result(results, task_id)

    # When the write reaches Redis before the message could have been restored
    writer.write([TaskResult(task_id, states.SUCCESS, "fresh", late_after=time.time() + 60)])

    # Then it is stored, as Celery's own worker would store it
    assert stored(results, task_id)["result"] == "fresh"


def test_a_late_result_replaces_a_state_that_is_not_final(writer, results):
    task_id = uuid.uuid4().hex
    other_workers_result(results, task_id, states.STARTED)

    writer.write([TaskResult(task_id, states.SUCCESS, "late", late_after=time.time() - 1)])

    assert stored(results, task_id)["status"] == states.SUCCESS
    assert stored(results, task_id)["result"] == "late"


def test_a_late_started_record_never_hides_a_final_result(writer, results):
    task_id = uuid.uuid4().hex
    other_workers_result(results, task_id)

    writer.write([TaskResult(task_id, states.STARTED, None, late_after=time.time() - 1)])

    assert stored(results, task_id)["status"] == states.SUCCESS


def test_a_batch_reply_carries_only_the_results_stored(writer, results):
    # Given two tasks replying to one batch channel, one of them already done elsewhere
    done_elsewhere, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    other_workers_result(results, done_elsewhere)
    channel = f"{BATCH_CHANNEL_PREFIX}{uuid.uuid4().hex}"
    pubsub = results.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)

    # When both results reach Redis late
    late = time.time() - 1
    writer.write(
        [
            TaskResult(done_elsewhere, states.SUCCESS, "late", late_after=late, reply_channel=channel),
            TaskResult(fresh, states.SUCCESS, "mine", late_after=late, reply_channel=channel),
        ]
    )

    # Then the channel gets the stored one only
    assert json.loads(next_message(results, pubsub, channel))["task_id"] == fresh
    assert next_message(results, pubsub, channel) == b"marker"
    pubsub.close()
