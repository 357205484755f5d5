"""``celery inspect`` and revoke(terminate=True) see batched tasks as they see ordinary ones."""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta

import pytest
from celery import states

from tests.fidelity import seen
from tests.servers import wait_until


@pytest.fixture
def canvas(app_module_env):
    return importlib.import_module("tests.apps.canvas")


def inspect(canvas, worker):
    return canvas.app.control.inspect(destination=[worker.name], timeout=5)


def test_active_reserved_query_and_stats_list_batched_tasks(canvas, start_worker, redis_server):
    # Given a worker (threads pool, so it answers while an ordinary task runs) with a batch running
    # (queued before it starts, so the two ride in one batch)
    running = [canvas.b_gated.delay(i) for i in (1, 2)]
    worker = start_worker("tests.apps.canvas", "--pool", "threads", "--concurrency", "2")
    client = redis_server.client(0)
    wait_until(lambda: client.llen("b_gated") == 0, 10, "the batch to be claimed")
    wait_until(
        lambda: (
            {t["id"] for t in (inspect(canvas, worker).active() or {}).get(worker.name, [])} >= {r.id for r in running}
        ),
        20,
        "the running batch in inspect active",
    )
    waiting = [canvas.b_gated.delay(i) for i in (3, 4, 5)]
    ordinary = canvas.o_gated.delay(9)
    wait_until(lambda: client.llen("b_gated") == 0, 10, "the waiting tasks to be claimed")

    # When the worker is inspected
    wait_until(
        lambda: ordinary.id in {t["id"] for t in inspect(canvas, worker).active()[worker.name]},
        20,
        "the ordinary task to run",
    )
    active = inspect(canvas, worker).active()[worker.name]
    reserved = inspect(canvas, worker).reserved()[worker.name]
    queried = inspect(canvas, worker).query_task(*[r.id for r in running + waiting])[worker.name]

    # Then the running batch is active, the claimed tasks are reserved, each in Celery's shape
    by_id = {task["id"]: task for task in active}
    assert {r.id for r in running} | {ordinary.id} == set(by_id)
    assert set(by_id[running[0].id]) == set(by_id[ordinary.id])
    assert by_id[running[0].id]["name"] == "b_gated" and by_id[running[0].id]["args"] == [1]
    assert by_id[running[0].id]["delivery_info"]["routing_key"] == "b_gated"
    assert {t["id"] for t in reserved} == {r.id for r in waiting}
    assert {task_id: state for task_id, (state, _) in queried.items()} == {
        **{r.id: "active" for r in running},
        **{r.id: "reserved" for r in waiting},
    }
    client.rpush("gate", *["go"] * 3)
    assert [r.get(timeout=30) for r in running + waiting] == [1, 2, 3, 4, 5]
    assert ordinary.get(timeout=30) == 9
    # And stats count them with the ordinary ones
    total = inspect(canvas, worker).stats()[worker.name]["total"]
    assert total == {"b_gated": 5, "o_gated": 1}


def test_revoke_terminate_of_a_running_batched_task(canvas, start_worker, redis_server):
    # Given a batch of two, running (sent before the worker starts, so they ride together)
    doomed, spared = canvas.b_gated.delay(1), canvas.b_gated.delay(2)
    worker = start_worker("tests.apps.canvas")
    client = redis_server.client(0)
    wait_until(
        lambda: (
            {t["id"] for t in (inspect(canvas, worker).active() or {}).get(worker.name, [])} == {doomed.id, spared.id}
        ),
        20,
        "the batch to run",
    )
    # When one task of the running batch is revoked with terminate=True
    canvas.app.control.revoke(doomed.id, terminate=True, reply=True, timeout=10, limit=1)
    client.rpush("gate", "go")
    # Then the terminated one ends REVOKED and says so; the other's outcome stands
    assert spared.get(timeout=30) == 2
    wait_until(lambda: doomed.state == states.REVOKED, 30, "the terminated task to be REVOKED")
    wait_until(lambda: [r for r in seen(client, "task_revoked") if r["id"] == doomed.id], 10, "task_revoked")
    (record,) = [r for r in seen(client, "task_revoked") if r["id"] == doomed.id]
    assert record["expired"] is False
    assert "task_success" not in [r["what"] for r in seen(client, "all") if r.get("id") == doomed.id]


def test_scheduled_lists_batched_tasks_waiting_for_their_eta(canvas, start_worker):
    # Given a worker, and a batched and an ordinary task sent with a countdown
    worker = start_worker("tests.apps.canvas")
    batched = canvas.b_add_one.apply_async((1,), countdown=60)
    ordinary = canvas.o_add_one.apply_async((1,), countdown=60)

    # Then inspect scheduled lists both, in Celery's shape, with the ETA the caller asked for
    def listed():
        return {e["request"]["id"]: e for e in (inspect(canvas, worker).scheduled() or {}).get(worker.name, [])}

    wait_until(lambda: {batched.id, ordinary.id} <= set(listed()), 20, "both tasks in inspect scheduled")
    entries = listed()
    mine, theirs = entries[batched.id], entries[ordinary.id]
    assert set(mine) == set(theirs) and set(mine["request"]) == set(theirs["request"])
    assert mine["request"]["name"] == "b_add_one" and mine["request"]["args"] == [1]
    assert abs(datetime.fromisoformat(mine["eta"]) - datetime.fromisoformat(theirs["eta"])) < timedelta(seconds=5)
    canvas.app.control.revoke([batched.id, ordinary.id])
