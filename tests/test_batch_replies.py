"""One PUBLISH per reply channel per batch, and listeners of both generations.

A listener whose channel carries the batch marker gets a batch's results for its
process as one JSON array; a channel without it (an older client) still gets one
result per message; the listener reads both shapes. Real Redis, real workers.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery.result import AsyncResult

from celery_batching.client.replies import reply_hub
from celery_batching.protocol import BATCH_CHANNEL_PREFIX, CHANNEL_PREFIX, envelope, takes_batches


@pytest.fixture
def basic(app_module_env) -> Iterator:
    yield importlib.import_module("tests.apps.basic")


def _send(basic, task_ids: list[str], channel: str) -> None:
    broker = redis.Redis.from_url(basic.app.conf.broker_url)
    for n, task_id in enumerate(task_ids):
        payload = envelope(
            basic.double, task_id, n, basic.double.batch_queue, expires=None, ignore_result=False, reply_channel=channel
        )
        broker.lpush(basic.double.batch_queue, payload)


def _messages(listener, count_ids: int) -> list[object]:
    """The decoded messages on ``listener`` until ``count_ids`` results have arrived."""
    seen, messages = 0, []
    deadline = time.monotonic() + 30
    while seen < count_ids:
        assert time.monotonic() < deadline, f"only {seen} of {count_ids} replies within 30 s"
        message = listener.get_message(timeout=1)
        if message is None or message["type"] != "message":
            continue  # the subscription's confirmation, or nothing yet
        decoded = json.loads(message["data"])
        messages.append(decoded)
        seen += len(decoded) if isinstance(decoded, list) else 1
    return messages


def test_this_process_listens_on_a_batch_channel(basic):
    # Given this process's reply hub, then its channel says it reads arrays
    channel = reply_hub(basic.app).channel
    assert takes_batches(channel)
    assert not takes_batches(CHANNEL_PREFIX + "old-client")


def test_a_batch_reaches_a_batch_channel_in_one_message(basic, start_worker):
    # Given eight tasks queued before the worker starts, naming one batch reply channel
    db = basic.app.backend.client
    channel = BATCH_CHANNEL_PREFIX + "test-batch"
    listener = db.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    ids = [f"batch-reply-{n}" for n in range(8)]
    _send(basic, ids, channel)
    # When one worker runs them (one batch: its max batch size is above 8)
    start_worker("tests.apps.basic")
    messages = _messages(listener, len(ids))
    # Then every result arrived, fewer messages than results, and each stored record equals its reply
    results = [m for msg in messages for m in (msg if isinstance(msg, list) else [msg])]
    assert sorted(r["task_id"] for r in results) == sorted(ids)
    assert len(messages) < len(ids)
    for record in results:
        assert AsyncResult(record["task_id"], app=basic.app).get(timeout=30) == record["result"]
    listener.close()


def test_an_older_client_channel_gets_one_result_per_message(basic, start_worker):
    # Given tasks naming a reply channel without the batch marker (an older client)
    db = basic.app.backend.client
    channel = CHANNEL_PREFIX + "old-client"
    listener = db.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    ids = [f"old-reply-{n}" for n in range(6)]
    _send(basic, ids, channel)
    # When a worker runs them
    start_worker("tests.apps.basic")
    messages = _messages(listener, len(ids))
    # Then each message is one result record, as before
    assert all(isinstance(m, dict) for m in messages)
    assert sorted(m["task_id"] for m in messages) == sorted(ids)
    listener.close()


def test_the_listener_reads_both_shapes(basic):
    # Given two results awaited on this process's reply channel
    hub = reply_hub(basic.app)
    one, two, three = hub.expect("shape-1"), hub.expect("shape-2"), hub.expect("shape-3")
    record = {"status": "SUCCESS", "result": 1, "traceback": None, "children": [], "date_done": None}
    db = basic.app.backend.client
    # When one arrives alone (an older worker) and two in one array (a newer one)
    db.publish(hub.channel, json.dumps({**record, "task_id": "shape-1"}))
    db.publish(hub.channel, json.dumps([{**record, "task_id": "shape-2"}, {**record, "task_id": "shape-3"}]))
    # Then each waiter gets its own
    assert one.wait(10) and two.wait(10) and three.wait(10)
    assert [s.meta["task_id"] for s in (one, two, three)] == ["shape-1", "shape-2", "shape-3"]
