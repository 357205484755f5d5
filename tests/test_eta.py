"""ETA and countdown on batched tasks, through a real redis-server and real ``celery worker`` processes.

A batched task given ``countdown=`` or ``eta=`` runs no earlier than its time,
soon after it, once (even past the visibility timeout, and across a kill -9),
and expires still apply when its time comes: as an ordinary task of the same
app given the same options.
"""

from __future__ import annotations

import importlib
import json
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from celery.exceptions import TaskRevokedError

from celery_batching import MalformedMessage, gather
from celery_batching.worker.claim import RedisQueue
from tests.fault_tools import Broker, Conservation, index_entries, load_app
from tests.servers import wait_until
from tests.wire import decode_message

APP = "tests.apps.timed"
STAMP = "timed.stamp"
# The queue's scheduled set, as Redis holds it (read from outside the code under test).
SCHEDULED = STAMP + "\x06\x16scheduled"
# A wait slice far longer than any deadline below: a fetcher that waits a whole slice fails the test.
LONG_SLICE = {"CB_WAIT_SLICE": "60"}


@pytest.fixture
def timed(app_module_env):
    return importlib.import_module(APP)


@pytest.fixture
def broker(timed, redis_server):
    return redis_server.client(0)


def runs(broker, task: str) -> Counter:
    prefix = f"{task}:"
    return Counter(
        int(entry.decode()[len(prefix) :])
        for entry in broker.lrange("timed-runs", 0, -1)
        if entry.decode().startswith(prefix)
    )


# -- decoding (no server needed) ------------------------------------------------------------


def _decode(**headers: object):
    return decode_message(STAMP, STAMP, 1, **headers)


def test_an_eta_header_is_decoded_as_an_aware_date():
    assert _decode(eta="2030-01-02T03:04:05.250000+00:00").eta == datetime(2030, 1, 2, 3, 4, 5, 250000, timezone.utc)
    assert _decode(eta="2030-01-02T03:04:05").eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert _decode(eta=None).eta is None and _decode().eta is None


@pytest.mark.parametrize("value", ["not a date", 12, ["2030-01-01"], "2030-13-01T00:00:00"])
def test_an_eta_header_that_is_not_a_date_fails_that_task_naming_the_task_and_the_value(value):
    message = _decode(eta=value)
    assert isinstance(message.error, MalformedMessage)
    assert STAMP in str(message.error) and f"the eta header {value!r} is not an ISO 8601 date" in str(message.error)


# -- not before its time, soon after it -------------------------------------------------------


def test_countdown_and_eta_run_no_earlier_than_their_time_like_an_ordinary_task(timed, start_worker):
    # Given an idle worker whose fetcher would wait a minute if nothing woke it
    start_worker(APP, env=LONG_SLICE)
    assert timed.stamp.delay(0).get(timeout=10)["sample"] == 0
    # When a batched task and an ordinary one are each sent with a countdown, and with an eta
    sent = time.time()
    countdown = {name: task.apply_async((1,), countdown=1.5) for name, task in _both(timed).items()}
    eta = datetime.now(timezone.utc) + timedelta(seconds=2)
    at_eta = {name: task.apply_async((2,), eta=eta) for name, task in _both(timed).items()}
    # Then each runs, well within the slice (woken by its ETA), and none before its time
    for name in countdown:
        assert countdown[name].get(timeout=30)["ran_at"] >= sent + 1.5, name
        assert at_eta[name].get(timeout=30)["ran_at"] >= eta.timestamp(), name


def _both(timed) -> dict:
    return {"batched": timed.stamp, "ordinary": timed.plain_stamp}


def test_expires_still_applies_when_the_eta_comes_like_an_ordinary_task(timed, start_worker, broker):
    start_worker(APP)
    # Given tasks that expire before their countdown ends
    doomed = {name: task.apply_async((3,), countdown=1.5, expires=0.5) for name, task in _both(timed).items()}
    # Then, when their time comes, they are skipped and marked as expired, never run
    for name, result in doomed.items():
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=30)
        assert result.state == "REVOKED", name
    assert runs(broker, "stamp")[3] == 0


# -- batching goes on meanwhile -----------------------------------------------------------------


def test_other_messages_keep_being_batched_while_eta_messages_wait(timed, start_worker, broker):
    # Given a worker, and 20 tasks sent for one moment a little ahead
    start_worker(APP)
    eta = datetime.now(timezone.utc) + timedelta(seconds=3)
    later = [timed.stamp.apply_async((1000 + i,), eta=eta) for i in range(20)]
    # When 400 tasks are sent concurrently meanwhile
    with ThreadPoolExecutor(32) as pool:
        now = list(pool.map(lambda x: timed.stamp.delay(x).get(timeout=60), range(400)))
    # Then those ride together in batches, some before the ETA came
    assert [o["sample"] for o in now] == list(range(400))
    assert max(o["batch_size"] for o in now) > 1, "under load, samples should ride together"
    assert min(o["ran_at"] for o in now) < eta.timestamp(), "the waiting ETA messages held nothing up"
    # And the 20 run no earlier than their ETA, together
    outputs = gather(later, timeout=60)
    assert all(o["ran_at"] >= eta.timestamp() for o in outputs)
    assert max(o["batch_size"] for o in outputs) > 1, "messages due together are claimed together"
    assert broker.zcard(SCHEDULED) == 0


# -- faults -------------------------------------------------------------------------------------


def test_kill_9_of_a_worker_holding_eta_messages_loses_none(timed, start_worker, broker, redis_server):
    # Given a worker that has taken 10 tasks due a few seconds from now
    total = 10
    first = start_worker(APP)
    eta = datetime.now(timezone.utc) + timedelta(seconds=4)
    results = [timed.stamp.apply_async((i,), eta=eta) for i in range(total)]
    with Conservation(ScheduledBroker(broker, STAMP), redis_server.client(1), total) as conservation:
        wait_until(lambda: broker.zcard(SCHEDULED) == total, 20, "the ETA messages to be parked")
        assert broker.llen(STAMP) == 0 and broker.hlen("unacked") == 0
        # When it is killed
        first.signal(signal.SIGKILL)
        first.wait()
        # Then its ETA messages are all still in Redis, and another worker runs each once, at its time
        assert broker.zcard(SCHEDULED) == total
        start_worker(APP)
        outputs = gather(results, timeout=60)
    assert all(o["ran_at"] >= eta.timestamp() for o in outputs)
    assert runs(broker, "stamp") == Counter(range(total))
    assert broker.zcard(SCHEDULED) == 0
    wait_until(lambda: broker.hlen("unacked") == 0, 10, "every message acknowledged")
    # And no message was ever out of sight: queued, claimed, parked, or with its result stored
    assert conservation.snapshots > 10 and conservation.dips == []


class ScheduledBroker(Broker):
    """Counts a queue's parked messages with its claimed ones, in the same atomic snapshot."""

    def snapshot(self) -> tuple[int, int]:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self.queue)
            pipe.hlen("unacked")
            pipe.zcard(self.queue + "\x06\x16scheduled")
            queued, unacked, scheduled = pipe.execute()
        return queued, unacked + scheduled


def test_an_eta_beyond_the_visibility_timeout_does_not_run_twice(timed, start_worker, broker):
    # Given two workers that restore unacknowledged messages older than one second, five times a second
    short = {"CB_VISIBILITY_TIMEOUT": "1", "CB_RESTORE_EVERY": "0.2"}
    start_worker(APP, env=short)
    start_worker(APP, env=short)
    # When tasks are sent with a countdown four times the visibility timeout
    sent = time.time()
    results = [timed.stamp.apply_async((i,), countdown=4) for i in range(6)]
    # Then each runs once, when its time has come
    outputs = gather(results, timeout=60)
    assert [o["sample"] for o in outputs] == list(range(6))
    assert all(o["ran_at"] >= sent + 4 for o in outputs)
    wait_until(lambda: broker.hlen("unacked") == 0, 10, "every message acknowledged")
    assert runs(broker, "stamp") == Counter(range(6)), "no ETA message was restored and run again"


def test_an_eta_header_that_is_not_a_date_fails_that_task_and_the_worker_serves_on(timed, start_worker, broker):
    # Given a message whose eta header is no date, between good ones
    timed.stamp.delay(5)
    message = json.loads(broker.rpop(STAMP))
    message["headers"].update(id="bad-eta", root_id="bad-eta", eta="not a date")
    message["properties"].update(correlation_id="bad-eta", delivery_tag="tag-bad-eta")
    before = timed.stamp.delay(6)
    broker.lpush(STAMP, json.dumps(message))
    after = timed.stamp.delay(7)
    # When a worker serves the queue
    worker = start_worker(APP)
    # Then that task fails with an error naming the task and the value, and the others run
    with pytest.raises(MalformedMessage, match=r"timed.stamp: .*the eta header 'not a date' is not an ISO 8601 date"):
        timed.app.AsyncResult("bad-eta").get(timeout=30)
    assert [before.get(timeout=10)["sample"], after.get(timeout=10)["sample"]] == [6, 7]
    assert timed.stamp.delay(8).get(timeout=10)["sample"] == 8
    assert worker.process.poll() is None


# -- listing what waits ------------------------------------------------------------------------------


def test_the_scheduled_messages_of_a_queue_can_be_listed(timed, start_worker, broker):
    # Given three tasks parked for a minute, sent in reverse order of their ETA
    start_worker(APP)
    base = datetime.now(timezone.utc) + timedelta(seconds=60)
    results = [timed.stamp.apply_async((i,), eta=base + timedelta(seconds=10 * (3 - i))) for i in range(3)]
    wait_until(lambda: broker.zcard(SCHEDULED) == 3, 20, "the ETA messages to be parked")
    # When the queue's scheduled messages are listed
    listed = RedisQueue(broker, STAMP).scheduled()
    # Then they come earliest first, with their ETA and their message
    assert [json.loads(item.payload)["headers"]["id"] for item in listed] == [r.id for r in reversed(results)]
    assert [item.eta for item in listed] == [(base + timedelta(seconds=10 * k)).timestamp() for k in (1, 2, 3)]
    assert all(not r.ready() for r in results)


def test_a_global_key_prefix_holds_for_claims_and_parked_messages(start_worker, redis_url, broker, monkeypatch):
    # Given a client and a worker whose kombu transport prefixes every key
    monkeypatch.setenv("CB_KEYPREFIX", "tenant:")
    prefixed = load_app(APP, redis_url)
    start_worker(APP, env={"CB_KEYPREFIX": "tenant:"})
    # When a task is sent at once, and another with a countdown
    assert prefixed.stamp.delay(1).get(timeout=10)["sample"] == 1
    later = prefixed.stamp.apply_async((2,), countdown=3)
    # Then the waiting one is parked under the prefix, and both run, with nothing left behind
    wait_until(lambda: broker.zcard("tenant:" + SCHEDULED) == 1, 20, "the ETA message to be parked")
    assert later.get(timeout=30)["sample"] == 2
    wait_until(lambda: broker.hlen("tenant:unacked") == 0, 10, "every message acknowledged")
    assert index_entries(broker, "tenant:unacked_index") == {}
    assert not [key for key in broker.keys("*") if key.startswith(b"tenant:tenant:")], "no key prefixed twice"
