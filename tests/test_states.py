"""States and stored metadata of batched tasks, as an ordinary task of the same app stores them.

``task_track_started`` gives STARTED while the batch runs; ``result_extended``
stores name, args, kwargs, worker, queue and retries; ``.info``,
``.traceback``, ``.date_done`` and ``.retries`` read as Celery gives them.
"""

from __future__ import annotations

import importlib

import pytest
from celery import states

from tests.servers import wait_until

EXTENDED = {"CB_TRACK_STARTED": "1", "CB_RESULT_EXTENDED": "1"}


@pytest.fixture
def canvas(app_module_env):
    return importlib.import_module("tests.apps.canvas")


def test_started_then_success_with_extended_fields(canvas, start_worker, redis_server):
    # Given batched tasks (sent first, so they ride in one batch) and their twin, blocked in a worker
    # with task_track_started and result_extended
    batched = [canvas.b_gated.delay(i) for i in (5, 6)]
    ordinary = canvas.o_gated.delay(5)
    worker = start_worker("tests.apps.canvas", env=EXTENDED)
    # Then while they run, both are STARTED, with the pid and hostname Celery stores
    wait_until(lambda: all(r.state == states.STARTED for r in [*batched, ordinary]), 30, "STARTED states")
    started = [r.info for r in [*batched, ordinary]]
    assert {info["hostname"] for info in started} == {worker.name}
    assert all(isinstance(info["pid"], int) for info in started)
    # When they finish
    redis_server.client(0).rpush("gate", "go", "go", "go")
    assert [r.get(timeout=30) for r in batched] == [5, 6]
    assert ordinary.get(timeout=30) == 5
    # Then the stored records carry the same extended fields as the ordinary task's
    mine, theirs = canvas.app.backend.get_task_meta(batched[0].id), canvas.app.backend.get_task_meta(ordinary.id)
    assert (mine["name"], theirs["name"]) == ("b_gated", "o_gated")
    assert (mine["queue"], theirs["queue"]) == ("b_gated", "celery")
    for field in ("status", "result", "args", "kwargs", "worker", "retries", "traceback", "children"):
        assert mine[field] == theirs[field], field
    assert set(mine) == set(theirs)
    assert batched[0].date_done is not None and batched[0].retries == ordinary.retries == 0
    assert batched[0].name == "b_gated" and batched[0].args == [5]


def test_failure_info_and_traceback(canvas, start_worker):
    start_worker("tests.apps.canvas", env=EXTENDED)
    batched, ordinary = canvas.b_fail_negative.delay(-2), canvas.o_fail_negative.delay(-2)
    for result in (batched, ordinary):
        with pytest.raises(ValueError):
            result.get(timeout=30)
        assert result.state == states.FAILURE
        assert isinstance(result.info, ValueError) and str(result.info) == "negative: -2"
        assert "ValueError: negative: -2" in result.traceback
        assert result.date_done is not None
        assert result.args == [-2] and result.retries == 0


def test_retries_are_counted_in_the_stored_record(canvas, start_worker, redis_server):
    start_worker("tests.apps.canvas", env=EXTENDED)
    batched, ordinary = canvas.b_flaky.delay("fail:1"), canvas.o_flaky.delay("fail:1")
    assert batched.get(timeout=30) == ordinary.get(timeout=30) == "FAIL:1"
    assert batched.retries == ordinary.retries == 1
