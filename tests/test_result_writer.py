"""The writer's store-once rule against real backends: a duplicate run is refused, and says so.

A message that ran twice (redelivered, or held past the visibility timeout)
must not overwrite the outcome a client may have seen; the writer reports
such results as ``refused`` so the worker keeps them quiet (no events, no
handlers, counted as duplicates).
"""

from __future__ import annotations

import pytest
from celery import Celery, states

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
