"""soft_time_limit and time_limit of a batched task apply to one predict call."""

from __future__ import annotations

import importlib

import pytest
from celery import states
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from celery_batching import submit_many
from tests.fidelity import batch_sizes
from tests.servers import wait_until


@pytest.fixture
def canvas(app_module_env):
    return importlib.import_module("tests.apps.canvas")


def test_soft_limit_fails_the_batch_and_the_worker_serves_on(canvas, start_worker, redis_server):
    # Given a batch whose predict runs Python code far past its soft limit
    slow = [canvas.b_soft_limited.delay(i) for i in range(3)]
    start_worker("tests.apps.canvas")
    # Then every task of that batch fails with SoftTimeLimitExceeded, without bisecting the batch
    for result in slow:
        with pytest.raises(SoftTimeLimitExceeded):
            result.get(timeout=30)
    assert batch_sizes(redis_server.client(0), "b_soft_limited") == [3]
    # And the worker goes on serving
    assert canvas.b_add_one.delay(1).get(timeout=30) == 2


def test_hard_limit_fails_the_batch_once_and_stops_the_worker(canvas, start_worker, redis_server):
    # Given a worker, and a batch stuck in a C call (a hung kernel) past its hard limit
    worker = start_worker("tests.apps.canvas")
    stuck = submit_many(canvas.b_hard_limited, range(2))
    # Then its tasks fail with TimeLimitExceeded, and the worker exits for its supervisor to restart it
    for result in stuck:
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=30)
    assert worker.wait(60) != 0
    assert "ran past time_limit=1.0s" in worker.log()
    # And a fresh worker does not run them again: they were acknowledged with their failure
    start_worker("tests.apps.canvas")
    assert canvas.b_add_one.delay(1).get(timeout=30) == 2
    client = redis_server.client(0)
    assert batch_sizes(client, "b_hard_limited") == [2]
    assert client.llen("b_hard_limited") == 0
    # (b_add_one's result is stored before its message is acknowledged, so the ack may still be on its way)
    wait_until(lambda: client.hlen("unacked") == 0, 10, "every message acknowledged")
    assert {r.state for r in stuck} == {states.FAILURE}
