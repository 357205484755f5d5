"""Faults injected for real: kill -9, SIGTERM, a Redis restart, poison and OOM batches,
malformed and duplicate messages. Nothing may be lost, nothing may be announced twice.

The visibility timeout (how long a claimed message may stay unacknowledged
before another worker's restore brings it back) must be longer than the
longest time a worker holds a message: the wait to fill a batch, plus one
predict, plus storing the results. Shorter, and a slow but living worker's
messages run twice. Workers here that must not lose their claims keep the
default of one hour; the worker that recovers from a death gets a few
seconds, so the test does not wait an hour. Restoring is the restorer's
decision, made with its own visibility timeout.
"""

from __future__ import annotations

import base64
import importlib
import json
import pickle
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from celery_batching import InvalidTaskCall, MalformedMessage, SampleTooLarge, gather, submit_many
from tests.fault_tools import (
    Announcements,
    Broker,
    Conservation,
    Gate,
    Records,
    TaskEventLog,
    count_results,
    load_app,
)
from tests.scrape import scrape, value
from tests.servers import RedisServer, Worker, free_port, wait_until

APP = "tests.apps.faulty"
WORK = "faulty.work"
# Seconds a recovering worker waits before taking back a dead worker's claims (see the module docstring).
SHORT_VISIBILITY = "2"


@pytest.fixture
def prefix() -> str:
    """kombu's ``global_keyprefix`` for client and workers; tests parametrize it."""
    return ""


@pytest.fixture
def faulty(app_module_env, prefix, redis_url, monkeypatch):
    if not prefix:
        return importlib.import_module(APP)
    monkeypatch.setenv("CB_KEYPREFIX", prefix)  # for the workers started, which inherit the environment
    return load_app(APP, redis_url)


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "records")


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture
def broker(faulty, redis_server, prefix) -> Broker:
    return Broker(redis_server.client(0), WORK, prefix)


@pytest.fixture
def results_db(redis_server):
    return redis_server.client(1)


def metrics_env(port: int) -> dict[str, str]:
    return {"CELERY_BATCHING_METRICS_PORT": str(port), "CELERY_BATCHING_METRICS_ADDR": "127.0.0.1"}


def worker_env(records: Records, gate: Gate | None = None, **extra: str) -> dict[str, str]:
    env = {"CB_RECORD_DIR": str(records.path.parent), **extra}
    if gate is not None:
        env["CB_GATE_DIR"] = str(gate.directory)
    return env


# -- kill -9 ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "tenant:"], ids=["no-prefix", "global-keyprefix"])
def test_kill_9_mid_batch_loses_nothing_and_announces_each_result_once(
    faulty, start_worker, records, gate, broker, results_db, redis_server, prefix
):
    # Given a client waiting on 200 tasks, and a worker held in its 4th batch
    total = 200
    with Announcements(redis_server.client(1)) as announced, ThreadPoolExecutor(1) as client:
        waiting = client.submit(_send_and_wait, faulty.work, range(total), 120)
        wait_until(lambda: broker.snapshot()[0] == total, 10, "the tasks to be sent")
        with Conservation(broker, results_db, total) as conservation:
            first = start_worker(APP, env=worker_env(records, gate))
            gate.release(3)
            wait_until(lambda: len(records.calls("work")) == 4, 30, "the 4th batch to start")
            wait_until(lambda: count_results(results_db) == 24, 30, "the first 3 batches to be stored")
            held = records.calls("work")[-1]["batch"]

            # Then every message is exactly once in the queue, claimed (unacked) or done
            claimed = wait_until(lambda: _settled_claims(broker, 24, total), 10, "the claims beyond the batch")
            done = [s for call in records.calls("work")[:3] for s in call["batch"]]
            assert set(held) <= set(claimed), "the batch being predicted is recorded as unacknowledged"
            assert len(claimed) <= 2 * 8, "at most one batch claimed beyond the running one"
            assert sorted(broker.queued_samples() + claimed + done) == list(range(total))

            # When the worker is killed mid-batch
            first.signal(signal.SIGKILL)
            first.wait()
            # Then its claims outlive it, still recorded as unacknowledged
            assert sorted(broker.unacked_samples()) == sorted(claimed)

            # When another worker (short visibility timeout) comes up
            start_worker(APP, env=worker_env(records, CB_VISIBILITY_TIMEOUT=SHORT_VISIBILITY))
            # Then the waiting client gets every result, right
            assert waiting.result(timeout=150) == [2 * x for x in range(total)]
        wait_until(lambda: len(announced.counts) == total, 10, "every announcement")

    # And no message was ever out of sight, each result was announced once, the killed batch ran again
    assert conservation.snapshots > 10 and conservation.dips == []
    assert max(announced.counts.values()) == 1
    runs = records.runs("work")
    assert all(runs[x] >= 1 for x in range(total))
    assert all(runs[x] == 2 for x in held)
    assert broker.snapshot() == (0, 0), "nothing left queued or claimed"
    assert broker.unacked_index() == {}, "no stale bookkeeping"
    assert broker.claimed_index() == {}, "no stale claim in the queue's own index (the depth metric's)"
    assert broker.misplaced_keys() == []


def _send_and_wait(task, samples, timeout: float) -> list:
    """A client: send, then wait for the results (in one thread: Celery's result backend is per thread)."""
    return gather(submit_many(task, samples), timeout=timeout)


def _settled_claims(broker: Broker, done: int, total: int) -> list[int] | None:
    """The claimed samples, once queue + claims account for every unfinished task."""
    queued, unacked = broker.snapshot()
    if queued + unacked != total - done or unacked <= 8:
        return None
    return broker.unacked_samples()


# -- SIGTERM ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "tenant:"], ids=["no-prefix", "global-keyprefix"])
def test_sigterm_finishes_the_running_batch_and_gives_the_rest_back_at_once(
    faulty, start_worker, records, gate, broker, results_db, redis_server, prefix
):
    # Given 40 queued tasks and a worker held in its first batch, with more claimed behind it
    total = 40
    results = submit_many(faulty.work, range(total))
    worker = start_worker(APP, env=worker_env(records, gate))
    wait_until(lambda: len(records.calls("work")) == 1, 30, "the first batch to start")
    running = records.calls("work")[0]["batch"]
    wait_until(lambda: broker.snapshot() == (total - 16, 16), 10, "a claim beyond the running batch")

    # When the worker gets SIGTERM
    worker.signal(signal.SIGTERM)
    # Then the claimed but unstarted messages are back in the queue at once, while the batch still runs
    wait_until(lambda: broker.snapshot() == (total - 8, 8), 10, "the unstarted messages to be given back")
    assert sorted(broker.unacked_samples()) == sorted(running)
    assert "gave 8 unstarted message(s) back to the queue" in worker.log()

    # When the running batch is let through
    gate.release()
    # Then the worker exits after storing its results, and leaves nothing claimed
    assert worker.wait(30) == 0
    assert records.calls("work") == [records.calls("work")[0]], "no batch started after SIGTERM"
    assert broker.snapshot() == (total - 8, 0)
    assert count_results(results_db) == 8
    assert [results[x].get(timeout=1) for x in running] == [2 * x for x in running]
    assert sorted(broker.queued_samples()) == sorted(set(range(total)) - set(running))
    assert "Traceback" not in worker.log()

    # And another worker finishes the rest, leaving no bookkeeping behind
    gate.open()
    start_worker(APP, env=worker_env(records, gate))
    assert gather(results, timeout=30) == [2 * x for x in range(total)]
    wait_until(lambda: broker.snapshot() == (0, 0), 10, "every message acknowledged")
    assert broker.unacked_index() == {}
    assert broker.claimed_index() == {}
    assert broker.misplaced_keys() == []


# -- Redis restart ------------------------------------------------------------


@pytest.fixture
def durable_redis():
    server = RedisServer(port=free_port(), appendonly=True).start()
    yield server
    server.cleanup()


@pytest.mark.parametrize("crash", [False, True], ids=["shutdown", "kill-9"])
def test_redis_restart_mid_run_loses_nothing(durable_redis, records, crash):
    # Given a worker busy with 240 tasks on an append-only Redis, and a client waiting on them
    # (a killed redis-server has written every acknowledged command to its append-only file: only
    # a machine crash can lose the last second, under the default appendfsync everysec)
    app = load_app(APP, durable_redis.url(0))
    worker = Worker(APP, durable_redis.url(0), env=worker_env(records, CB_BATCH_SECONDS="0.05"))
    total = 240
    try:
        worker.start()
        with ThreadPoolExecutor(1) as client:
            waiting = client.submit(_send_and_wait, app.work, range(total), 120)
            wait_until(lambda: count_results(durable_redis.client(1)) >= 40, 30, "a fifth of the results")

            # When Redis stops (or dies), the worker notices, and Redis comes back on the same port and data
            durable_redis.stop(kill=crash)
            wait_until(
                lambda: "Redis unavailable" in worker.log() and "Cannot connect to" in worker.log(),
                30,
                "the batched consumer and Celery's own to notice the outage",
            )
            durable_redis.start()

            # Then the waiting client gets every result, and new calls work
            assert waiting.result(timeout=120) == [2 * x for x in range(total)]
        assert app.work.delay(1000).get(timeout=30) == 2000
        assert Broker(durable_redis.client(0), WORK).snapshot() == (0, 0)
        assert worker.process.poll() is None, "the worker is still running"
        assert "Traceback" not in worker.log(), "every error on the way was expected and handled"
    finally:
        worker.stop()


# -- poison samples and out-of-memory batches ------------------------------------


def test_poison_sample_in_a_full_batch_fails_alone_and_the_next_batch_runs(faulty, start_worker, records):
    # Given a full batch with one poison sample, and a second batch behind it
    first = [1, 2, 3, -4, 5, 6, 7, 8]
    second = list(range(10, 18))
    results = submit_many(faulty.work, first + second)
    # When a worker serves them
    start_worker(APP, env=worker_env(records))
    wait_until(lambda: all(r.ready() for r in results), 30, "all results")
    # Then the poison sample fails alone, the others of its batch succeed, and the next batch runs
    outcomes = dict(zip(first + second, results))
    with pytest.raises(ValueError, match="poison sample -4"):
        outcomes[-4].get(timeout=1)
    assert [outcomes[x].get(timeout=1) for x in first + second if x != -4] == [2 * x for x in first + second if x != -4]
    assert records.calls("work")[0]["batch"] == first, "the poison rode in a full batch"


def test_cuda_out_of_memory_splits_the_batch_before_any_sample_fails(faulty, start_worker, records):
    # Given a full batch of 16 for a model that runs out of memory above 4 samples
    results = submit_many(faulty.oom, range(16))
    # When a worker serves it
    start_worker(APP, env=worker_env(records))
    # Then every sample succeeds, after the batch was halved down to a size that fits
    assert gather(results, timeout=60) == [x + 1 for x in range(16)]
    sizes = [len(call["batch"]) for call in records.calls("oom")]
    assert sizes == [16, 8, 4, 4, 8, 4, 4]


# -- malformed messages -----------------------------------------------------------


def _template(faulty, broker: Broker) -> dict:
    """A real envelope as Celery sends it, taken off the queue to be altered."""
    faulty.work.delay(1)
    raw = broker.client.rpop(WORK)
    return json.loads(raw)


def _variant(
    template: dict,
    body: bytes | None = None,
    content_type: str | None = None,
    encoded_body: str | None = None,
    **headers,
) -> tuple[str, bytes]:
    """A copy of ``template`` with a new id and delivery tag, and the given changes."""
    message = json.loads(json.dumps(template))
    task_id = f"malformed-{uuid.uuid4().hex}"
    message["headers"].update(id=task_id, root_id=task_id, **headers)
    message["properties"]["correlation_id"] = task_id
    message["properties"]["delivery_tag"] = f"tag-{task_id}"
    if body is not None:
        message["body"] = base64.b64encode(body).decode()
    if encoded_body is not None:
        message["body"] = encoded_body
    if content_type is not None:
        message["content-type"] = content_type
    return task_id, json.dumps(message).encode()


def _protocol_1(task_id: str) -> bytes:
    body = json.dumps({"task": WORK, "id": task_id, "args": [1], "kwargs": {}}).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {
                "delivery_tag": f"tag-{task_id}",
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": WORK},
            },
        }
    ).encode()


def test_malformed_messages_fail_alone_with_clear_errors(faulty, start_worker, records, broker):
    template = _template(faulty, broker)
    bad_ids = {}
    bad_ids["unknown task"], unknown = _variant(template, task="faulty.nope")
    bad_ids["two args"], two_args = _variant(template, body=json.dumps([[1, 2], {}, {}]).encode())
    bad_ids["kwargs"], kwargs = _variant(template, body=json.dumps([[1], {"x": 1}, {}]).encode())
    bad_ids["oversized"], oversized = _variant(template, body=json.dumps([[10**2000], {}, {}]).encode())
    bad_ids["pickle"], pickled = _variant(
        template, body=pickle.dumps(((1,), {}, {})), content_type="application/x-python-serialize"
    )
    bad_ids["bad base64"], bad_base64 = _variant(template, encoded_body="!!!not base64===")
    bad_ids["body not JSON"], not_json = _variant(template, body=b"{not json")
    bad_ids["bad expires"], bad_expires = _variant(template, expires="not a date")
    bad_ids["protocol 1"] = "protocol-1-task"
    anonymous = [b"\x00\xffnot json at all", b"[1, 2, 3]", b'{"hello": "world"}', b"A" * (4 << 20)]
    # Given good and bad messages interleaved on the batched queue (LPUSH: first pushed, first claimed),
    # so that each claim of 8 holds both
    good = submit_many(faulty.work, [100])
    broker.client.lpush(WORK, unknown, anonymous[0], two_args, anonymous[1], _protocol_1("protocol-1-task"))
    good += submit_many(faulty.work, [101])
    broker.client.lpush(WORK, kwargs, anonymous[2], oversized, pickled, anonymous[3])
    good += submit_many(faulty.work, [102])
    broker.client.lpush(WORK, bad_base64, not_json, bad_expires)

    # When a worker serves the queue
    worker = start_worker(APP, env=worker_env(records))

    # Then the good tasks succeed, and each bad one fails with an error naming the problem
    assert gather(good, timeout=30) == [200, 202, 204]
    expected = {
        "unknown task": (MalformedMessage, "task 'faulty.nope' cannot run here"),
        "two args": (InvalidTaskCall, "takes exactly one positional sample, got 2 positional"),
        "kwargs": (InvalidTaskCall, r"keyword\(s\) \['x'\]"),
        "oversized": (SampleTooLarge, "exceeds max_sample_bytes=1024"),
        "pickle": (MalformedMessage, "content type 'application/x-python-serialize' is refused"),
        "protocol 1": (MalformedMessage, "not a Celery task protocol 2 message"),
        "bad base64": (MalformedMessage, "faulty.work: cannot decode .* the body is not valid base64"),
        "body not JSON": (MalformedMessage, "faulty.work: cannot decode the task message .*DecodeError"),
        "bad expires": (MalformedMessage, "the expires header 'not a date' is not an ISO 8601 date"),
    }
    for what, (error, message) in expected.items():
        with pytest.raises(error, match=message):
            faulty.app.AsyncResult(bad_ids[what]).get(timeout=30)
    # And messages with no task id to report to are dropped with a log line, never stuck
    wait_until(lambda: broker.snapshot() == (0, 0), 10, "every message acknowledged")
    assert worker.log().count("dropped a message with no task id") == len(anonymous)
    assert "message is not a kombu JSON envelope" in worker.log()
    # And the good ones were batched as claimed, beside the bad ones, and the worker goes on serving
    assert [call["batch"] for call in records.calls("work")] == [[100, 101], [102]]
    assert faulty.work.delay(7).get(timeout=10) == 14
    assert worker.process.poll() is None


# -- duplicates ----------------------------------------------------------------------


def _copy(raw: bytes, sample: int | None = None, **headers) -> bytes:
    message = json.loads(raw)
    message["headers"].update(headers)
    if sample is not None:
        message["body"] = base64.b64encode(json.dumps([[sample], {}, {}]).encode()).decode()
    return json.dumps(message).encode()


def test_redelivered_copy_of_a_finished_task_is_not_run_and_changes_nothing(
    faulty, start_worker, records, broker, redis_server
):
    # Given a task that succeeded, its message as it was sent
    result = faulty.work.delay(21)
    raw = broker.client.lindex(WORK, 0)
    start_worker(APP, env=worker_env(records))
    assert result.get(timeout=10) == 42
    stored = redis_server.client(1).get(f"celery-task-meta-{result.id}")
    with Announcements(redis_server.client(1)) as announced:
        # When the same message is delivered again, as kombu's restore would
        broker.client.lpush(WORK, _copy(raw, redelivered=True))
        wait_until(lambda: broker.client.llen(WORK) == 0 and broker.snapshot()[1] == 0, 10, "the copy to be acked")
        assert faulty.work.delay(1).get(timeout=10) == 2  # the worker went past the copy
    # Then the model never saw it again, and the stored result is untouched and not announced again
    assert records.runs("work")[21] == 1
    assert redis_server.client(1).get(f"celery-task-meta-{result.id}") == stored
    assert announced.counts[result.id] == 0


def test_redelivered_copy_with_another_outcome_does_not_overwrite_success(
    faulty, start_worker, records, gate, broker, redis_server
):
    # Given a task, and a redelivered copy of it that would fail, both claimed by a held worker
    result = faulty.work.delay(21)
    raw = broker.client.lindex(WORK, 0)
    fillers = submit_many(faulty.work, range(30, 37))  # the rest of the first batch
    broker.client.lpush(WORK, _copy(raw, sample=-1, redelivered=True))
    with Announcements(redis_server.client(1)) as announced:
        start_worker(APP, env=worker_env(records, gate))
        wait_until(lambda: len(records.calls("work")) == 1, 30, "the first batch to start")
        # When both run: the original first, then the copy, which fails
        gate.open()
        wait_until(lambda: len(records.calls("work")) >= 2, 30, "the copy to run")
        wait_until(lambda: broker.snapshot() == (0, 0), 10, "every message acknowledged")
        wait_until(lambda: announced.counts[result.id] >= 1, 10, "the announcement")
    # Then the client sees the success only, once
    assert result.get(timeout=1) == 42
    assert gather(fillers, timeout=1) == [2 * x for x in range(30, 37)]
    assert result.state == "SUCCESS"
    assert announced.counts[result.id] == 1


def test_worker_frozen_past_the_visibility_timeout_does_not_overwrite_the_redelivered_result(
    faulty, start_worker, records, gate, broker, redis_server
):
    # Given a worker frozen (SIGSTOP) in the middle of a batch, exporting metrics
    results = submit_many(faulty.work, range(8))
    port = free_port()
    frozen_env = {"CB_VISIBILITY_TIMEOUT": SHORT_VISIBILITY, **metrics_env(port)}
    frozen = start_worker(APP, env=worker_env(records, gate, **frozen_env))
    wait_until(lambda: len(records.calls("work")) == 1, 30, "the batch to start")
    frozen.signal(signal.SIGSTOP)
    try:
        gate.open()
        with Announcements(redis_server.client(1)) as announced, TaskEventLog(redis_server.client(0)) as events:
            # When, past the visibility timeout, another worker takes the batch back and finishes it
            rescuer = start_worker(APP, env=worker_env(records, CB_VISIBILITY_TIMEOUT=SHORT_VISIBILITY))
            assert gather(results, timeout=60) == [2 * x for x in range(8)]
            rescuer.stop()
            stored = {r.id: redis_server.client(1).get(f"celery-task-meta-{r.id}") for r in results}
            # And the frozen worker wakes up and finishes its own copy of the batch
            frozen.signal(signal.SIGCONT)
            assert faulty.work.delay(100).get(timeout=30) == 200  # it has written the batch before this one
            wait_until(lambda: broker.snapshot() == (0, 0), 10, "every message acknowledged")
        # Then the late copy neither overwrote nor re-announced any result, nor sent a second task-succeeded
        assert records.runs("work")[0] == 2, "both copies ran"
        assert {r.id: redis_server.client(1).get(f"celery-task-meta-{r.id}") for r in results} == stored
        assert [announced.counts[r.id] for r in results] == [1] * 8
        assert [events.count("task-succeeded", r.id) for r in results] == [1] * 8
        # And the frozen worker counts its copies as duplicates, not as served samples
        samples = scrape(port)
        assert value(samples, "celery_batching_skipped_total", task=WORK, reason="duplicate") == 8
        assert value(samples, "celery_batching_samples_total", task=WORK, outcome="succeeded") == 1
    finally:
        frozen.signal(signal.SIGCONT)


def test_dead_workers_claims_come_back_while_the_queue_is_still_busy(faulty, start_worker, records, gate, broker):
    # Given a worker killed while holding claims, and a long queue behind them
    total = 2000
    results = submit_many(faulty.work, range(total))
    first = start_worker(APP, env=worker_env(records, gate))
    wait_until(lambda: len(records.calls("work")) == 1, 30, "the first batch to start")
    held = records.calls("work")[0]["batch"]
    first.signal(signal.SIGKILL)
    first.wait()
    # When a slow worker serving only the batched queue (so Celery's own consumer restores nothing) works
    # through the queue, with a short visibility timeout
    start_worker(
        APP, "-Q", WORK, env=worker_env(records, CB_VISIBILITY_TIMEOUT=SHORT_VISIBILITY, CB_BATCH_SECONDS="0.2")
    )
    # Then the dead worker's claims are taken back and run before the queue has drained
    wait_until(lambda: all(results[x].ready() for x in held), 60, "the dead worker's tasks to finish")
    assert broker.snapshot()[0] > 0, "restored while the queue was still busy, not only once it emptied"
    assert [results[x].get(timeout=1) for x in held] == [2 * x for x in held]
