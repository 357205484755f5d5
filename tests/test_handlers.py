"""Signals, handlers, retries and states of batched tasks, against ordinary twins on a real worker.

What Celery does around one task (celery/app/trace.py) must happen for each
sample of a batch, in the same order and with the arguments Celery passes.
"""

from __future__ import annotations

import importlib
import json

import pytest
from celery import states

from tests.fidelity import batch_sizes, seen, story
from tests.servers import wait_until

SUCCESS_STORY = [
    "task_received",
    "task_prerun",
    "before_start",
    "on_success",
    "task_success",
    "after_return",
    "task_postrun",
]
FAILURE_STORY = [
    "task_received",
    "task_prerun",
    "before_start",
    "on_failure",
    "task_failure",
    "after_return",
    "task_postrun",
]


@pytest.fixture
def canvas(app_module_env):
    return importlib.import_module("tests.apps.canvas")


def test_signals_and_handlers_come_once_per_sample_in_celerys_order(canvas, start_worker, redis_server):
    # Given batched calls and their ordinary twins, sent before the worker runs
    batched = [canvas.b_add_one.delay(i) for i in range(10)]
    ordinary = [canvas.o_add_one.delay(i) for i in range(10)]
    batched_fail, ordinary_fail = canvas.b_fail_negative.delay(-1), canvas.o_fail_negative.delay(-1)
    ok_beside_failure = canvas.b_fail_negative.delay(7)
    start_worker("tests.apps.canvas")
    for result in batched + ordinary + [ok_beside_failure]:
        result.get(timeout=30)
    for result in (batched_fail, ordinary_fail):
        with pytest.raises(ValueError):
            result.get(timeout=30)
    client = redis_server.client(0)
    wait_until(
        lambda: all(story(client, r.id)[-1:] == ["task_postrun"] for r in batched + ordinary), 10, "every task_postrun"
    )
    # Then each task, batched or not, went through the same steps in the same order
    for result in batched + ordinary + [ok_beside_failure]:
        assert story(client, result.id) == SUCCESS_STORY, result
    for result in (batched_fail, ordinary_fail):
        assert story(client, result.id) == FAILURE_STORY, result
    # And the batched ones ran in batches
    assert max(batch_sizes(client, "b_add_one")) > 1


def test_signal_and_handler_arguments_are_celerys(canvas, start_worker, redis_server):
    batched, ordinary = canvas.b_add_one.delay(41), canvas.o_add_one.delay(41)
    failing = canvas.b_fail_negative.delay(-3), canvas.o_fail_negative.delay(-3)
    start_worker("tests.apps.canvas")
    assert batched.get(timeout=30) == ordinary.get(timeout=30) == 42
    for result in failing:
        with pytest.raises(ValueError):
            result.get(timeout=30)
    client = redis_server.client(0)
    wait_until(lambda: len(seen(client, "task_postrun")) == 4, 10, "four task_postrun")

    def by_id(what, task_id):
        (record,) = [r for r in seen(client, what) if r["id"] == task_id]
        record.pop("task", None)
        if record.pop("request_id", task_id) != task_id:
            raise AssertionError(f"{what} of {task_id} ran with another task's request")
        return record

    for what in ("task_prerun", "task_postrun", "task_success", "on_success", "before_start", "after_return"):
        assert {**by_id(what, batched.id), "id": None} == {**by_id(what, ordinary.id), "id": None}, what
    for what in ("task_failure", "on_failure"):
        assert {**by_id(what, failing[0].id), "id": None} == {**by_id(what, failing[1].id), "id": None}, what


def test_autoretry_retries_a_sample_alone_while_its_batch_succeeds(canvas, start_worker, redis_server):
    # Given a batch where one sample fails once, one fails more often than max_retries allows
    samples = ["a", "fail:1", "b", "fail:5", "c"]
    batched = [canvas.b_flaky.delay(s) for s in samples]
    ordinary = [canvas.o_flaky.delay(s) for s in samples]
    start_worker("tests.apps.canvas")
    client = redis_server.client(0)
    for results in (batched, ordinary):
        # Then the good ones succeed, the flaky one succeeds on its retry, the hopeless one fails with Flaky
        assert [r.get(timeout=30) for r in results[:3]] == ["A", "FAIL:1", "B"]
        with pytest.raises(canvas.Flaky):
            results[3].get(timeout=30)
        assert results[4].get(timeout=30) == "C"
    # And both kinds made the same attempts: 2 for fail:1, 1 + max_retries for fail:5
    assert int(client.get("attempts:b_flaky:fail:1")) == int(client.get("attempts:o_flaky:fail:1")) == 2
    assert int(client.get("attempts:b_flaky:fail:5")) == int(client.get("attempts:o_flaky:fail:5")) == 3
    # And RETRY went through the retry handler and signal once per retry
    for results in (batched, ordinary):
        retried = [r["id"] for r in seen(client, "task_retry")]
        assert retried.count(results[1].id) == 1 and retried.count(results[3].id) == 2
    # And the first batch held the whole set: the good samples did not wait for the retries
    assert batch_sizes(client, "b_flaky")[0] == len(samples)


def test_revoked_task_sends_task_revoked(canvas, start_worker, redis_server):
    # Given a worker busy with a batch, and a second task claimed behind it
    start_worker("tests.apps.canvas")
    client = redis_server.client(0)
    running = canvas.b_gated.delay(1)
    wait_until(lambda: client.llen("b_gated") == 0, 10, "the first task to be claimed")
    waiting = canvas.b_gated.delay(2)
    wait_until(lambda: client.llen("b_gated") == 0, 10, "the second task to be claimed")
    # When the second is revoked (the worker confirms) and the first batch ends
    assert canvas.app.control.revoke(waiting.id, reply=True, timeout=10, limit=1)
    client.rpush("gate", "go", "go")
    # Then it is REVOKED, task_revoked was sent for it, and it never ran
    assert running.get(timeout=30) == 1
    wait_until(lambda: waiting.state == states.REVOKED, 30, "the revoked task to be marked")
    wait_until(lambda: [r for r in seen(client, "task_revoked") if r["id"] == waiting.id], 10, "task_revoked")
    assert "task_prerun" not in story(client, waiting.id)


def test_opentelemetry_records_one_span_per_batched_task(canvas, start_worker, redis_server):
    # Given a worker instrumented by opentelemetry-instrumentation-celery, and calls queued before it starts
    batched = [canvas.b_add_one.delay(i) for i in range(16)]
    ordinary = canvas.o_add_one.delay(0)
    start_worker("tests.apps.otel")
    for result in [*batched, ordinary]:
        result.get(timeout=30)
    client = redis_server.client(0)
    # Then each batched task has exactly one run span of its own, as the ordinary task has
    wait_until(lambda: client.llen("spans") >= len(batched) + 1, 10, "the spans")
    spans = [json.loads(line) for line in client.lrange("spans", 0, -1)]
    runs = [s for s in spans if s["name"] == "run/b_add_one"]
    ids_per_span = [{v for v in s["attributes"].values() if v in {r.id for r in batched}} for s in runs]
    assert sorted(i for ids in ids_per_span for i in ids) == sorted(r.id for r in batched)
    assert all(len(ids) == 1 for ids in ids_per_span)
    assert [s["name"] for s in spans].count("run/o_add_one") == 1
    # And the spans are siblings, not nested in one another, though they ran as one batch
    assert not {s["parent_id"] for s in runs} & {s["span_id"] for s in runs}
    assert max(batch_sizes(client, "b_add_one")) > 1
