"""Priorities on batched queues, through a real redis-server and real ``celery worker`` processes.

kombu's Redis transport keeps one list per priority step (the queue itself for
0, then ``queue\\x06\\x163``, ``\\x06\\x166``, ``\\x06\\x169``) and serves 0 first.
A prioritized message on an idle worker must be claimed as soon as a
priority 0 one: the fetcher is woken by a watcher on every list.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from celery_batching.worker.watch import ArrivalWatch
from tests.servers import wait_until

APP = "tests.apps.timed"
# A wait slice far longer than any deadline below: a fetcher that waits a whole slice fails the test.
LONG_SLICE = {"CB_WAIT_SLICE": "60"}


@pytest.fixture
def timed(app_module_env):
    return importlib.import_module(APP)


def test_a_prioritized_message_on_an_idle_worker_is_claimed_at_once(timed, start_worker):
    # Given an idle worker whose fetcher would wait a minute if nothing woke it
    start_worker(APP, env=LONG_SLICE)
    assert timed.stamp.delay(0).get(timeout=10)["sample"] == 0
    # When messages of each priority are sent, one after another
    for priority in (3, 6, 9, 0, 9):
        result = timed.stamp.apply_async((priority,), priority=priority)
        # Then each is claimed and run well within the slice
        assert result.get(timeout=20)["sample"] == priority, f"priority {priority}"


def test_under_load_priorities_are_served_in_kombus_order(timed, start_worker, redis_server):
    # Given a queue filled before any worker runs, lowest priority sent first
    results = []
    for priority in (9, 6, 3, 0):
        results += [timed.order.apply_async((f"{priority}-{i}",), priority=priority) for i in range(6)]
    # When a worker drains it, four samples per batch
    start_worker(APP)
    wait_until(lambda: all(r.ready() for r in results), 30, "every task")
    # Then the samples reached the model in kombu's order: priority 0 first, then 3, 6, 9
    seen = [entry.decode().split(":", 1)[1] for entry in redis_server.client(0).lrange("timed-runs", 0, -1)]
    priorities = [int(sample.split("-")[0]) for sample in seen]
    assert priorities == sorted(priorities) and len(seen) == 24


def test_the_watch_wakes_its_waiter_for_any_list_and_stops_at_once(redis_server):
    # Given a watch over three lists, and a waiter that would wait a minute
    client = redis_server.client(0)
    client.flushall()
    keys = ["q", "q\x06\x163", "q\x06\x169"]
    watch = ArrivalWatch(lambda: redis.Redis.from_url(redis_server.url(0), single_connection_client=True), keys, "q")
    watch.start()
    try:
        with ThreadPoolExecutor(1) as waiter:
            for key in reversed(keys):
                waiting = waiter.submit(watch.wait, 60)
                # When a message arrives on one of the lists
                client.lpush(key, b"message")
                # Then the waiter wakes, and the message is still there, untaken
                assert waiting.result(timeout=10) is True, key
                assert client.llen(key) == 1
                client.delete(key)
    finally:
        # And stopping ends every watcher, blocked in Redis or not
        watch.stop()
    assert not any(thread.is_alive() for thread in watch._threads)
    assert watch.wait(60) is True, "a stopped watch never blocks its waiter"
