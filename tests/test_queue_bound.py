"""Overload shedding: a bounded queue refuses at once, and a deadline passed in the queue costs no model time.

``max_queue_depth`` is checked in the same atomic step as the push: past it,
``.delay()`` and ``submit_many`` raise ``QueueFull`` and nothing is sent. A
task whose ``expires`` passes while it waits behind a running batch is
expired by the worker, never run.
"""

from __future__ import annotations

import importlib
import time

import pytest
from celery.exceptions import TaskRevokedError

from celery_batching import ConfigurationError, QueueFull, batched, submit_many
from tests.servers import wait_until

APP = "tests.apps.overload"
QUEUE = "overload.record"
PRIORITY_SUBLIST = QUEUE + "\x06\x169"


@pytest.fixture
def overload(app_module_env):
    return importlib.import_module(APP)


@pytest.fixture
def broker(redis_url, redis_server):
    return redis_server.client(0)


def fill(task, count: int) -> list:
    return [task.delay(f"s{i}") for i in range(count)]


def test_past_the_bound_delay_raises_queue_full_at_once_and_sends_nothing(overload, broker, start_worker):
    # Given a queue with a bound of 5 and no worker: 5 tasks accepted
    accepted = fill(overload.record, overload.RECORD_BOUND)

    # When a sixth is sent, then it is refused, named after the queue, its depth and its bound
    with pytest.raises(QueueFull, match=r"queue 'overload.record' holds 5 waiting message\(s\); 1 more would pass"):
        overload.record.delay("refused")
    assert broker.llen(QUEUE) == 5

    # And once a worker runs, exactly the accepted tasks ran
    start_worker(APP, "-Q", QUEUE)
    assert [result.get(timeout=30) for result in accepted] == [f"S{i}" for i in range(5)]
    assert sorted(broker.lrange("ran", 0, -1)) == sorted(f"s{i}".encode() for i in range(5))


def test_submit_many_is_refused_whole_when_it_would_pass_the_bound(overload, broker):
    # Given 3 tasks waiting under a bound of 5
    fill(overload.record, 3)

    # When a request of 3 more is submitted, then all of it is refused, none of it queued
    with pytest.raises(QueueFull) as caught:
        submit_many(overload.record, ["a", "b", "c"])
    assert caught.value.args == (QUEUE, 3, 5, 3)
    assert broker.llen(QUEUE) == 3

    # And a request that fits is accepted
    submit_many(overload.record, ["a", "b"])
    assert broker.llen(QUEUE) == 5


def test_priority_sublists_count_and_celerys_own_path_is_bounded_too(overload, broker):
    # Given 4 tasks on the queue's own list and one on a priority sub-list: 5 waiting
    fill(overload.record, 4)
    broker.lpush(PRIORITY_SUBLIST, b"{}")

    # Then the fast path refuses, and so does a call that goes through Celery's path (countdown)
    with pytest.raises(QueueFull):
        overload.record.delay("refused")
    with pytest.raises(QueueFull, match="holds 5 waiting"):
        overload.record.apply_async(("later",), countdown=60)
    assert broker.llen(QUEUE) == 4


def test_the_bound_and_the_sent_markers_honour_global_keyprefix(overload, broker):
    # Given a client whose broker keys carry a global prefix
    record, _ = overload.declare(overload.make_app(broker_transport_options={"global_keyprefix": "pfx:"}))

    # When it fills the queue, then the prefixed list holds them and the bound counts that list
    fill(record, overload.RECORD_BOUND)
    with pytest.raises(QueueFull):
        record.delay("refused")
    assert broker.llen("pfx:" + QUEUE) == 5 and broker.llen(QUEUE) == 0
    markers = broker.keys("*celery-batching:sent:*")
    assert len(markers) == 5 and all(key.startswith(b"pfx:") for key in markers)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_a_bad_max_queue_depth_is_refused_at_declaration(overload, bad):
    with pytest.raises(ConfigurationError, match="max_queue_depth must be a positive int or None"):
        batched(overload.make_app(), name="bad.bound", max_queue_depth=bad)(lambda batch: batch)


def test_a_task_whose_deadline_passes_behind_a_running_batch_is_expired_never_run(app_module_env, broker, start_worker):
    # Given a worker whose model is busy with a first batch (it blocks until the test opens the gate)
    basic = importlib.import_module("tests.apps.basic")
    start_worker("tests.apps.basic", "-Q", basic.gated.batch_queue)
    running = basic.gated.delay("running")

    def in_predict() -> bool:
        return any(client.get("cmd") == "blpop" for client in broker.client_list())

    wait_until(in_predict, 30, "the model to run the first batch (blocked on the gate)")

    # When a task with a short deadline waits behind it until the deadline has passed
    deadline = time.time() + 1.0
    late = basic.gated.apply_async(("late",), expires=1.0)
    wait_until(lambda: time.time() > deadline, 10, "the late task's deadline to pass")
    broker.rpush("gate", "open", "open")

    # Then the running batch finishes, and the late task is expired without reaching the model
    assert running.get(timeout=30) == "running"
    with pytest.raises(TaskRevokedError, match="expired"):
        late.get(timeout=30)
    assert late.state == "REVOKED"
