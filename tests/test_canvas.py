"""Canvas with batched tasks: chains, groups, chords, link and link_error, ids.

Each scenario runs with ordinary tasks and with batched ones in the same app
on a real worker; callers must see the same values and the same ids. Calls
are sent before the worker starts, so the batched steps run in batches
larger than one.
"""

from __future__ import annotations

import base64
import importlib
import json

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

from celery_batching import MalformedMessage
from tests.fidelity import batch_sizes, seen
from tests.servers import wait_until

RUNS = 12


@pytest.fixture
def canvas(app_module_env):
    return importlib.import_module("tests.apps.canvas")


def run_all(start_worker, signatures, timeout=60):
    """Send every signature, then start the worker, then wait for all results."""
    results = [signature.apply_async() for signature in signatures]
    start_worker("tests.apps.canvas")
    return [result.get(timeout=timeout) for result in results]


@pytest.mark.parametrize(
    ("batched_steps", "ordinary_steps"),
    [
        (("b_add_one", "b_add_one", "o_add_one"), ("o_add_one", "o_add_one", "o_add_one")),
        (("o_add_one", "b_add_one_patient"), ("o_add_one", "o_add_one")),
        (("b_add_one", "o_add_one"), ("o_add_one", "o_add_one")),
    ],
    ids=["batched-batched-ordinary", "ordinary-batched", "batched-ordinary"],
)
def test_chains_in_every_position(canvas, start_worker, redis_server, batched_steps, ordinary_steps):
    def make(names, start):
        first, *rest = names
        steps = [canvas.app.tasks[first].s(start)] + [canvas.app.tasks[name].s() for name in rest]
        return chain(*steps)

    # Given the same chains of batched and of ordinary tasks, sent before the worker runs
    batched = [make(batched_steps, i) for i in range(RUNS)]
    ordinary = [make(ordinary_steps, i) for i in range(RUNS)]
    # When the worker runs them
    values = run_all(start_worker, batched + ordinary)
    # Then every chain ends with the same value, and the batched steps ran in batches
    assert values[:RUNS] == values[RUNS:] == [i + len(batched_steps) for i in range(RUNS)]
    for name in set(batched_steps) - {"o_add_one"}:
        assert max(batch_sizes(redis_server.client(0), name)) > 1


def test_chain_ids_are_those_of_an_ordinary_chain(canvas, start_worker):
    # Given a chain ordinary -> batched -> ordinary reporting its ids
    result = (canvas.o_add_one.s(1) | canvas.b_add_one.s() | canvas.o_ids.s()).apply_async()
    start_worker("tests.apps.canvas")
    ids = result.get(timeout=30)
    # Then the last step's parent is the batched step and the root is the first step, as Celery sets them
    batched_step = result.parent
    first_step = batched_step.parent
    assert ids["value"] == 3
    assert ids["parent_id"] == batched_step.id
    assert ids["root_id"] == first_step.id
    # And the batched step's stored record names its parent, as an ordinary one does
    assert batched_step.get(timeout=5) == 3
    assert canvas.app.backend.get_task_meta(batched_step.id)["parent_id"] == first_step.id


def test_groups_of_batched_tasks(canvas, start_worker, redis_server):
    batched = group(canvas.b_add_one.s(i) for i in range(40)).apply_async()
    ordinary = group(canvas.o_add_one.s(i) for i in range(40)).apply_async()
    start_worker("tests.apps.canvas")
    assert batched.get(timeout=30) == ordinary.get(timeout=30) == [i + 1 for i in range(40)]
    assert max(batch_sizes(redis_server.client(0), "b_add_one")) > 1


@pytest.mark.parametrize("body", ["b_total", "o_total"])
def test_chords_whose_header_is_batched(canvas, start_worker, redis_server, body):
    body_task = canvas.app.tasks[body]
    batched = chord(canvas.b_add_one.s(i) for i in range(20))(body_task.s())
    ordinary = chord(canvas.o_add_one.s(i) for i in range(20))(canvas.o_total.s())
    start_worker("tests.apps.canvas")
    assert batched.get(timeout=30) == ordinary.get(timeout=30) == sum(range(1, 21))
    assert max(batch_sizes(redis_server.client(0), "b_add_one")) > 1


def test_chord_inside_a_chain(canvas, start_worker):
    batched = chain(canvas.b_add_one.s(1), group(canvas.b_add_one.s(), canvas.b_add_one.s()), canvas.o_total.s())
    ordinary = chain(canvas.o_add_one.s(1), group(canvas.o_add_one.s(), canvas.o_add_one.s()), canvas.o_total.s())
    assert run_all(start_worker, [batched, ordinary]) == [6, 6]


def test_link_runs_the_callback_with_the_result(canvas, start_worker):
    batched = canvas.b_add_one.apply_async((1,), link=canvas.o_add_one.s())
    ordinary = canvas.o_add_one.apply_async((1,), link=canvas.o_add_one.s())
    start_worker("tests.apps.canvas")
    for result in (batched, ordinary):
        assert result.get(timeout=30) == 2
        wait_until(lambda r=result: r.children, 10, "the callback to be recorded as a child")
        assert [child.get(timeout=30) for child in result.children] == [3]


def test_link_error_calls_both_errback_styles(canvas, start_worker, redis_server):
    errbacks = [canvas.errback_new.s(), canvas.errback_old.s()]
    batched = canvas.b_fail_negative.apply_async((-1,), link_error=errbacks)
    ordinary = canvas.o_fail_negative.apply_async((-1,), link_error=errbacks)
    start_worker("tests.apps.canvas")
    client = redis_server.client(0)
    for result in (batched, ordinary):
        with pytest.raises(ValueError, match="negative: -1"):
            result.get(timeout=30)
        wait_until(
            lambda r=result: [e["id"] for e in seen(client, "errback_old")].count(r.id), 30, "the old-style errback"
        )
        new_style = [e for e in seen(client, "errback_new") if e["id"] == result.id]
        assert new_style == [{"what": "errback_new", "id": result.id, "exc": "ValueError", "has_traceback": True}]


def _altered(client, queue, change):
    """Take the one message off ``queue``, apply ``change`` to its decoded body, push it back."""
    message = json.loads(client.rpop(queue))
    body = json.loads(base64.b64decode(message["body"]))
    change(body)
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    client.lpush(queue, json.dumps(message))


@pytest.mark.parametrize(
    ("field", "value"),
    [("callbacks", "not a list"), ("errbacks", [1, 2]), ("chain", {"task": "x"}), ("chord", ["x"])],
)
def test_a_broken_canvas_field_fails_its_task_alone(canvas, start_worker, redis_server, field, value):
    # Given a message whose embedded canvas field was mangled, queued beside a sound one
    client = redis_server.client(0)
    broken = canvas.b_add_one.apply_async((1,), link=canvas.o_add_one.s())
    _altered(client, "b_add_one", lambda body: body[2].update({field: value}))
    sound = canvas.b_add_one.apply_async((2,), link=canvas.o_add_one.s())
    start_worker("tests.apps.canvas")
    # Then the broken one fails with a MalformedMessage naming the field and what it got, and the other runs
    with pytest.raises(MalformedMessage, match=rf"message's {field} must be .* got a {type(value).__name__}"):
        broken.get(timeout=30)
    assert sound.get(timeout=30) == 3


def test_a_chord_whose_counter_is_gone_fails_its_body(canvas, start_worker, redis_server):
    # Given a chord of batched tasks whose counter was deleted from the result backend
    # (an ordinary header's chord then never runs its body: Celery's Redis backend skips it silently)
    batched = chord(canvas.b_add_one.s(i) for i in range(4))(canvas.o_total.s())
    redis_server.client(1).delete(canvas.app.backend.get_key_for_group(batched.parent.id, ".s"))
    start_worker("tests.apps.canvas")
    # Then its body fails with a ChordError that says why, instead of never running, and the header succeeded
    with pytest.raises(ChordError, match="counter is gone"):
        batched.get(timeout=30)
    assert batched.parent.get(timeout=30) == [1, 2, 3, 4]
    # And the worker serves on
    assert canvas.b_add_one.delay(1).get(timeout=30) == 2
