"""The batching core through a real redis-server and real ``celery worker`` processes."""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery.exceptions import TaskRevokedError

from celery_batching import BatchSizeMismatch, InvalidTaskCall, ResultNotSerializable, gather, submit_many
from tests.servers import wait_until


@pytest.fixture
def basic(app_module_env):
    module = importlib.import_module("tests.apps.basic")
    yield module


def test_delay_and_get_like_any_celery_task(basic, start_worker):
    # Given a worker serving the batched task
    start_worker("tests.apps.basic")
    # When a client calls it as an ordinary task
    result = basic.double.delay(21)
    # Then it gets its own result through AsyncResult
    assert result.get(timeout=10)["value"] == 42
    assert result.state == "SUCCESS"
    assert result.ready()


def test_hundreds_of_concurrent_calls_each_get_their_own_result(basic, start_worker):
    start_worker("tests.apps.basic")
    with ThreadPoolExecutor(32) as pool:
        outputs = list(pool.map(lambda x: basic.double.delay(x).get(timeout=30), range(400)))
    assert [o["value"] for o in outputs] == [2 * x for x in range(400)]
    sizes = {o["batch_size"] for o in outputs}
    assert max(sizes) > 1, "under load, samples should ride together"
    assert max(sizes) <= 16, "never more than max_batch_size"


def test_a_full_queue_is_drained_in_full_batches(basic, start_worker):
    # Given a queue filled before any worker runs
    results = submit_many(basic.double, range(64))
    # When a worker starts
    start_worker("tests.apps.basic")
    # Then every task succeeds, in full batches of max_batch_size
    outputs = gather(results, timeout=30)
    assert [o["value"] for o in outputs] == [2 * x for x in range(64)]
    assert {o["batch_size"] for o in outputs} == {16}


def test_lone_request_does_not_wait_for_company(basic, start_worker):
    # Given a worker, and a task waiting up to 60 s for a second sample
    start_worker("tests.apps.basic")
    waiting = basic.patient.delay(1)
    # When a lone request of a default (max_wait=0) task is sent after it
    lone = basic.double.delay(5)
    # Then the lone request comes back while the patient one still waits
    assert lone.get(timeout=10)["batch_size"] == 1
    assert not waiting.ready()
    # And a second sample fills the patient batch, which then runs at once
    second = basic.patient.delay(2)
    assert waiting.get(timeout=10) == 2
    assert second.get(timeout=10) == 2


def test_two_workers_on_one_queue_share_the_load(basic, start_worker):
    start_worker("tests.apps.basic")
    start_worker("tests.apps.basic")
    results = submit_many(basic.double, range(2000))
    pids = {output["pid"] for output in gather(results, timeout=60)}
    assert len(pids) == 2


def test_poison_sample_fails_alone(basic, start_worker):
    samples = ["a", "b", "poison", "c", "d", "e", "f", "g"]
    results = submit_many(basic.poison, samples)
    start_worker("tests.apps.basic")
    wait_until(lambda: all(r.ready() for r in results), 30, "all poison-batch results")
    for sample, result in zip(samples, results):
        if sample == "poison":
            assert result.state == "FAILURE"
            with pytest.raises(ValueError, match="cannot digest 'poison'"):
                result.get(timeout=1)
        else:
            assert result.get(timeout=1) == sample.upper()


def test_wrong_number_of_results_fails_every_task_of_the_batch(basic, start_worker):
    results = submit_many(basic.short_by_one, [1, 2, 3])
    start_worker("tests.apps.basic")
    for result in results:
        with pytest.raises(BatchSizeMismatch, match=r"short_by_one: predict\(\) returned 2 results for a batch of 3"):
            result.get(timeout=30)


def test_unencodable_result_fails_that_task_with_a_clear_error(basic, start_worker):
    start_worker("tests.apps.basic")
    good, bad = basic.unencodable.delay("fine"), basic.unencodable.delay("object")
    assert good.get(timeout=10) == "fine"
    with pytest.raises(ResultNotSerializable, match="result of type object cannot be encoded with the 'json'"):
        bad.get(timeout=10)


def test_wrong_arguments_fail_alone(basic, start_worker):
    start_worker("tests.apps.basic")
    wrong = basic.app.send_task(basic.double.name, args=(1, 2), queue=basic.double.batch_queue)
    right = basic.double.delay(3)
    with pytest.raises(InvalidTaskCall, match="takes exactly one positional sample, got 2 positional"):
        wrong.get(timeout=10)
    assert right.get(timeout=10)["value"] == 6


def test_revoked_task_is_skipped_and_marked(basic, start_worker):
    # Given a worker busy on a batch that waits for a gate
    worker_broker = basic.app.connection_for_write().default_channel.client
    start_worker("tests.apps.basic")
    first = basic.gated.delay("first")
    wait_until(lambda: basic.app.control.inspect(timeout=1).ping(), 10, "worker control")
    # When a queued task is revoked before its turn
    queued = basic.gated.delay("queued")
    assert basic.app.control.revoke(queued.id, reply=True, timeout=10, limit=1)  # the worker has it
    worker_broker.rpush("gate", "go", "go")
    # Then the first succeeds and the revoked one is REVOKED, never run
    assert first.get(timeout=10) == "first"
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=10)
    assert queued.state == "REVOKED"


def test_expired_task_is_skipped_and_marked(basic, start_worker):
    expired = basic.double.apply_async((1,), expires=0.01)
    fresh = basic.double.delay(2)
    wait_until(lambda: True, 0, "")
    start_worker("tests.apps.basic")
    assert fresh.get(timeout=10)["value"] == 4
    with pytest.raises(TaskRevokedError, match="expired"):
        expired.get(timeout=10)
    assert expired.state == "REVOKED"


def test_ignore_result_stores_nothing_but_runs(basic, start_worker):
    client = basic.app.connection_for_write().default_channel.client
    start_worker("tests.apps.basic")
    result = basic.fire_and_forget.delay("x")
    wait_until(lambda: client.lrange("seen", 0, -1) == [b"x"], 10, "the task to run")
    assert result.backend.get(result.backend.get_key_for_task(result.id)) is None


def test_ordinary_tasks_still_work_beside_batched_ones(basic, start_worker):
    start_worker("tests.apps.basic")
    assert basic.plain_add.delay(2, 3).get(timeout=10) == 5
    assert basic.double.delay(4).get(timeout=10)["value"] == 8


def test_dash_q_narrows_the_served_batched_queues(basic, start_worker):
    worker = start_worker("tests.apps.basic", "-Q", "tests.apps.basic.double,celery")
    assert basic.double.delay(1).get(timeout=10)["value"] == 2
    assert "serving tests.apps.basic.double" in worker.log()
    assert "serving tests.apps.basic.poison" not in worker.log()


def test_dash_x_excludes_a_batched_queue(basic, start_worker):
    worker = start_worker("tests.apps.basic", "-X", "tests.apps.basic.poison")
    assert basic.double.delay(1).get(timeout=10)["value"] == 2
    assert "serving tests.apps.basic.poison" not in worker.log()


def test_autoretry_alone_retries_without_handlers_or_signal_receivers(basic, start_worker, redis_server):
    # Given a batched task with autoretry_for and nothing else listening
    result = basic.retried.delay("x")
    start_worker("tests.apps.basic")
    # Then it is tried 1 + max_retries times before it fails with its own exception
    with pytest.raises(basic.Transient):
        result.get(timeout=30)
    assert redis_server.client(0).lrange("attempts", 0, -1) == [b"x"] * 3


def test_cold_shutdown_gives_unstarted_messages_back_at_once(basic, start_worker, redis_server):
    import signal

    # Given a worker running a gated batch, with three more messages claimed behind it
    worker = start_worker("tests.apps.basic")
    client, queue = redis_server.client(0), basic.gated.batch_queue
    running = basic.gated.delay("first")
    wait_until(lambda: client.llen(queue) == 0 and client.hlen("unacked") == 1, 10, "the first batch to run")
    submit_many(basic.gated, ["a", "b", "c"])
    wait_until(lambda: client.llen(queue) == 0 and client.hlen("unacked") == 4, 10, "the rest to be claimed")
    # When the worker is shut down cold (SIGQUIT), its batch still stuck
    worker.signal(signal.SIGQUIT)
    worker.wait(30)
    # Then the three unstarted messages are back in the queue, and only the running one awaits its restore
    assert client.llen(queue) == 3
    assert client.hlen("unacked") == 1
    assert not running.ready()
