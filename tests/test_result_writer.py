"""The writer's store-once rule against real backends: a duplicate run is refused, and says so.

A message that ran twice (redelivered, or held past the visibility timeout)
must not overwrite the outcome a client may have seen; the writer reports
such results as ``refused`` so the worker keeps them quiet (no events, no
handlers, counted as duplicates).
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import redis
import redis.sentinel
from celery import Celery, states

from celery_batching.resp import database, same_server
from celery_batching.worker.claim import RedisQueue
from celery_batching.worker.redis_store import IN_FLIGHT_LIMIT_SECONDS, LATE_MARGIN_SECONDS, Acknowledgement
from celery_batching.worker.results import ResultWriter, TaskResult


@pytest.fixture(params=["redis", "db+sqlite"])
def app(request, redis_server, tmp_path):
    backend = redis_server.url(1) if request.param == "redis" else f"db+sqlite:///{tmp_path}/results.db"
    redis_server.client(1).flushdb()
    app = Celery("writer", broker=redis_server.url(0), backend=backend)
    yield app
    app.close()


def test_store_once_result_is_refused_when_a_final_one_is_stored(app):
    # Given a task whose success is stored
    writer = ResultWriter(app, "t")
    writer.write([TaskResult("done-1", states.SUCCESS, 42)])
    # When a second run's failure is written store-once, beside a fresh task's
    stored = writer.write(
        [
            TaskResult("done-1", states.FAILURE, ValueError("second run"), store_once=True),
            TaskResult("fresh-1", states.SUCCESS, 7, store_once=True),
        ]
    )
    # Then the duplicate is refused and the stored success stands; the fresh one is stored
    assert [r.refused for r in stored] == [True, False]
    assert app.AsyncResult("done-1").get(timeout=5) == 42
    assert app.AsyncResult("fresh-1").get(timeout=5) == 7


def test_store_once_result_replaces_a_state_that_is_not_final(app):
    # Given a task recorded as STARTED by a run that died
    writer = ResultWriter(app, "t")
    writer.write([TaskResult("started-1", states.STARTED, {"pid": 1})])
    # When the rerun's success is written store-once
    [stored] = writer.write([TaskResult("started-1", states.SUCCESS, 5, store_once=True)])
    # Then it is stored, not refused
    assert not stored.refused
    assert app.AsyncResult("started-1").get(timeout=5) == 5


@pytest.fixture
def redis_app(redis_server):
    redis_server.client(1).flushdb()
    app = Celery("writer_redis", broker=redis_server.url(0), backend=redis_server.url(1))
    app.conf.result_backend_transport_options = {"global_keyprefix": "tenant:"}
    yield app
    app.close()


def listen(app, *channels):
    pubsub = app.backend.client.pubsub()
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.get_message(timeout=5)
        assert message is not None, "Redis did not confirm the subscriptions"
        confirmed += message["type"] == "subscribe"
    return pubsub


def heard(pubsub, count):
    messages = []
    while len(messages) < count:
        message = pubsub.get_message(timeout=5)
        assert message is not None, f"heard {len(messages)} of {count}"
        messages.append((message["channel"].decode(), json.loads(message["data"])))
    return messages


def test_a_batch_reaches_each_reply_channel_and_celerys_own_key(redis_app):
    # Given a batch whose tasks came from two processes reading arrays, one reading single replies, and none
    batch_a, batch_b, single = "celery-batching-reply-b-a", "celery-batching-reply-b-b", "celery-batching-reply-s"
    channels = [batch_a, single, batch_b, None, batch_a, single]
    results = [TaskResult(f"t{i}", states.SUCCESS, i, reply_channel=c) for i, c in enumerate(channels)]
    pubsub = listen(redis_app, batch_a, batch_b, single)
    celery_key = redis_app.backend.get_key_for_task("t3")
    own = listen(redis_app, celery_key.decode())

    # When it is written
    ResultWriter(redis_app, "t").write(results)

    # Then every result is stored under Celery's key (the backend's key prefix included)
    assert celery_key.startswith(b"tenant:")
    assert [redis_app.AsyncResult(r.task_id).get(timeout=5) for r in results] == list(range(6))
    # and each channel hears its own: one array per batch channel, one message per result on the other
    by_channel = {}
    for channel, data in heard(pubsub, 4):  # a batch channel's lone result comes as it is, not in an array
        by_channel.setdefault(channel, []).append(data if isinstance(data, list) or channel == single else [data])
    assert [[meta["result"] for meta in array] for array in by_channel[batch_a]] == [[0, 4]]
    assert [[meta["result"] for meta in array] for array in by_channel[batch_b]] == [[2]]
    assert [meta["result"] for meta in by_channel[single]] == [1, 5]
    # and Celery's own listeners on the task's key hear it too
    assert [data["result"] for _, data in heard(own, 1)] == [3]


def test_results_past_the_batchs_late_after_are_stored_once(redis_app):
    # Given a stored success, and a batch claimed so long ago that another worker may have run it
    writer = ResultWriter(redis_app, "t")
    writer.write([TaskResult("ran-1", states.SUCCESS, "first")])
    late = time.time() - 1

    channel = "celery-batching-reply-b-late"
    pubsub = listen(redis_app, channel)

    # When the batch is written, then the result already there stands and the fresh one is stored
    stored = writer.write(
        [
            TaskResult("ran-1", states.SUCCESS, "second", late_after=late, reply_channel=channel),
            TaskResult("new-1", states.SUCCESS, "fresh", late_after=late + 3600, reply_channel=channel),
            TaskResult("new-2", states.SUCCESS, "fresh too", late_after=late + 3600, reply_channel=channel),
        ]
    )
    assert [r.refused for r in stored] == [True, False, False]
    assert redis_app.AsyncResult("ran-1").get(timeout=5) == "first"
    assert redis_app.AsyncResult("new-1").get(timeout=5) == "fresh"
    # and the sender's channel hears the stored results only, still as one array
    [(_, replies)] = heard(pubsub, 1)
    assert [meta["result"] for meta in replies] == ["fresh", "fresh too"]


# -- plain commands or the store script ----------------------------------------


def script_calls(app) -> int:
    return int(app.backend.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def written(app, results, channels):
    """Write ``results``; returns what was stored (less ids and dates), each key's TTL and what each channel heard.

    Each channel is to hear one message: a batch channel its one array, a single-reply channel its one result.
    """
    pubsub = listen(app, *channels)
    ResultWriter(app, "t").write(results)
    keys = [app.backend.get_key_for_task(r.task_id) for r in results]
    records = [
        {k: v for k, v in json.loads(app.backend.client.get(key)).items() if k not in ("task_id", "date_done")}
        for key in keys
    ]
    ttls = [app.backend.client.ttl(key) > 0 for key in keys]
    by_position = {channel: position for position, channel in enumerate(channels)}
    messages = sorted((by_position[channel], str(data)) for channel, data in heard(pubsub, len(channels)))
    pubsub.close()
    return records, ttls, [(position, _without_ids(data)) for position, data in messages]


def _without_ids(text: str) -> str:
    return re.sub(r"'(task_id|date_done)': '[^']*'", "", text)


@pytest.mark.parametrize("expires", [3600, None])
def test_a_batch_in_time_takes_plain_commands_and_stores_and_announces_what_the_script_does(redis_server, expires):
    # Given an app whose results expire (or do not), and two like batches: one written just after its claim,
    # one close enough to its visibility timeout that Redis must check for a result stored elsewhere
    app = Celery("plain", broker=redis_server.url(0), backend=redis_server.url(1))
    app.conf.result_expires = expires

    def batch(tag: str, late_after: float) -> tuple[list[TaskResult], list[str]]:
        channels = [f"celery-batching-reply-b-{tag}", f"celery-batching-reply-s-{tag}"]
        values = [[1.5, 2], {"a": "é"}, None]  # the first and the last to the batch channel
        results = [
            TaskResult(f"{tag}-{i}", states.SUCCESS, value, late_after=late_after, reply_channel=channels[i % 2])
            for i, value in enumerate(values)
        ]
        keys = [app.backend.get_key_for_task(r.task_id).decode() for r in results]
        return results, [*channels, *keys]

    now = time.time()
    before = script_calls(app)
    in_time = written(app, *batch("in-time", now + 3600))
    plain_scripts = script_calls(app) - before
    near = written(app, *batch("near", now + LATE_MARGIN_SECONDS / 2))
    # Then the first went without the script, the second through it, and both came out the same
    assert (plain_scripts, script_calls(app) - before) == (0, 1)
    assert in_time == near
    assert in_time[1] == [expires is not None] * 3
    app.close()


def test_a_store_once_result_takes_the_script(redis_app):
    before = script_calls(redis_app)
    ResultWriter(redis_app, "t").write(
        [TaskResult("once-1", states.SUCCESS, 1), TaskResult("once-2", states.SUCCESS, 2, store_once=True)]
    )
    assert script_calls(redis_app) - before == 1
    assert redis_app.AsyncResult("once-2").get(timeout=5) == 2


def test_plain_writes_go_on_a_connection_that_drops_what_the_network_holds_too_long(redis_app):
    writer = ResultWriter(redis_app, "t")
    writer.write([TaskResult("bounded-1", states.SUCCESS, 1)])
    sock = writer._redis_store._link._connection._sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == IN_FLIGHT_LIMIT_SECONDS * 1000


def test_a_batch_redis_refuses_is_neither_stored_nor_announced_and_the_writer_recovers(redis_app, redis_server):
    # Given a Redis out of memory, and a client listening on a batch's reply channel
    writer = ResultWriter(redis_app, "t")
    channel = "celery-batching-reply-b-oom"
    pubsub = listen(redis_app, channel)
    admin = redis_server.client(0)
    admin.config_set("maxmemory", 1)
    try:
        # When a batch in time is written, Then the write raises, and nothing of it is stored or announced
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            writer.write([TaskResult(f"oom-{i}", states.SUCCESS, i, reply_channel=channel) for i in range(3)])
    finally:
        admin.config_set("maxmemory", 0)
    assert redis_app.backend.client.exists(*(redis_app.backend.get_key_for_task(f"oom-{i}") for i in range(3))) == 0
    redis_app.backend.client.publish(channel, json.dumps({"marker": True}))
    assert heard(pubsub, 1) == [(channel, {"marker": True})]
    # And once Redis has room, the same writer stores the batch
    writer.write([TaskResult(f"oom-{i}", states.SUCCESS, i, reply_channel=channel) for i in range(3)])
    assert [redis_app.AsyncResult(f"oom-{i}").get(timeout=5) for i in range(3)] == [0, 1, 2]


# -- the batch's acknowledgement with its results --------------------------------


def claimed_tags(broker, queue, count):
    """``count`` messages recorded as claimed, as the claim script records them (the values do not matter here)."""
    tags = [f"tag-{i}" for i in range(count)]
    broker.hset(queue.unacked_key, mapping={tag: "{}" for tag in tags})
    for index in (queue.unacked_index_key, queue.claimed_index_key):
        broker.zadd(index, dict.fromkeys(tags, time.time()))
    return tags


def still_claimed(broker, queue, tags):
    return [
        tag
        for tag in tags
        if broker.hexists(queue.unacked_key, tag)
        or broker.zscore(queue.unacked_index_key, tag) is not None
        or broker.zscore(queue.claimed_index_key, tag) is not None
    ]


@pytest.fixture
def queue(redis_server):
    broker = redis_server.client(0)
    queue = RedisQueue(broker, "ack.q")
    yield queue
    broker.delete(queue.unacked_key, queue.unacked_index_key, queue.claimed_index_key)


def test_an_acknowledgement_on_the_results_server_runs_in_their_transaction(redis_app, redis_server, queue):
    # Given messages claimed in the broker's database, and a writer for another database on the same server
    broker = redis_server.client(0)
    tags = claimed_tags(broker, queue, 3)
    writer = ResultWriter(redis_app, "t")
    assert writer.takes_acks_of(queue.client)
    # When a batch in time is written with their acknowledgement
    ack = Acknowledgement(database(queue.client), queue.ack_commands(tags))
    writer.write([TaskResult(f"acked-{i}", states.SUCCESS, i) for i in range(3)], ack)
    # Then the results are stored and the messages acknowledged, in one round trip of the store
    assert ack.done
    assert [redis_app.AsyncResult(f"acked-{i}").get(timeout=5) for i in range(3)] == [0, 1, 2]
    assert still_claimed(broker, queue, tags) == []
    # And the store's connection is back on the results' database: the next batch is stored there
    writer.write([TaskResult("after-1", states.SUCCESS, "here")])
    assert redis_app.AsyncResult("after-1").get(timeout=5) == "here"
    assert broker.exists(redis_app.backend.get_key_for_task("after-1")) == 0


def test_an_acknowledgement_is_not_run_when_redis_refuses_its_results(redis_app, redis_server, queue):
    broker = redis_server.client(0)
    tags = claimed_tags(broker, queue, 2)
    ack = Acknowledgement(database(queue.client), queue.ack_commands(tags))
    redis_server.client(0).config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            ResultWriter(redis_app, "t").write([TaskResult(f"refused-{i}", states.SUCCESS, i) for i in range(2)], ack)
    finally:
        redis_server.client(0).config_set("maxmemory", 0)
    # The messages stay claimed, to be run again
    assert not ack.done
    assert still_claimed(broker, queue, tags) == tags


def test_a_batch_through_the_store_script_leaves_its_acknowledgement_to_the_caller(redis_app, redis_server, queue):
    broker = redis_server.client(0)
    tags = claimed_tags(broker, queue, 1)
    ack = Acknowledgement(database(queue.client), queue.ack_commands(tags))
    ResultWriter(redis_app, "t").write([TaskResult("scripted-1", states.SUCCESS, 1, store_once=True)], ack)
    assert not ack.done
    assert still_claimed(broker, queue, tags) == tags
    queue.ack(tags)
    assert still_claimed(broker, queue, tags) == []


def test_only_clients_of_one_server_count_as_the_same_server(redis_server):
    same = redis.Redis.from_url(redis_server.url(5))
    other_port = redis.Redis(host="127.0.0.1", port=redis_server.port + 1)
    other_user = redis.Redis(host="127.0.0.1", port=redis_server.port, username="someone", password="secret")
    sentinel = redis.Redis(
        connection_pool=redis.sentinel.SentinelConnectionPool("mymaster", redis.sentinel.Sentinel([]))
    )
    base = redis_server.client(0)
    assert [same_server(base, client) for client in (same, other_port, other_user, sentinel)] == [
        True,
        False,
        False,
        False,
    ]


def test_results_that_wait_for_replicas_take_no_acknowledgement(redis_app, queue):
    # A batch is acknowledged only once replicas confirmed its results: after the transaction, never in it
    redis_app.conf.batching_wait_replicas = 1
    assert not ResultWriter(redis_app, "t").takes_acks_of(queue.client)
