"""Writer backpressure: a worker holds at most one batch beyond the running one, stored or not.

Batches whose results wait to be written are still claimed: if the fetcher
ignored them, a worker with a slow result store would claim the whole queue
(starving the other workers, and holding messages past the visibility
timeout, so they run twice). Here the result backend sits behind a relay
that delays each round trip by a fixed latency, as a distant or overloaded Redis.
"""

from __future__ import annotations

import importlib

import pytest

from celery_batching import gather, submit_many
from tests.fault_tools import Broker, PeakClaims, Records
from tests.lag_proxy import LagProxy
from tests.servers import wait_until

APP = "tests.apps.faulty"
WORK = "faulty.work"
BATCH = 8  # faulty.work's max_batch_size
# Added to every round trip the worker makes to the result backend: storing a batch takes at least this long.
WRITE_LATENCY = 0.2
# One batch running plus one beyond it, whether waiting for the model or for the writer.
MOST_HELD = 2 * BATCH


@pytest.fixture
def faulty(app_module_env):
    return importlib.import_module(APP)


@pytest.fixture
def broker(faulty, redis_server) -> Broker:
    return Broker(redis_server.client(0), WORK)


@pytest.fixture
def slow_backend(redis_server):
    proxy = LagProxy(redis_server.port, WRITE_LATENCY / 2).start()  # half each way
    yield proxy.url(1)
    proxy.close()


@pytest.fixture
def records(tmp_path) -> Records:
    return Records(tmp_path / "records")


def env(records: Records, backend: str) -> dict[str, str]:
    return {"CB_RECORD_DIR": str(records.path.parent), "CB_TEST_BACKEND": backend}


def test_slow_result_store_slows_claiming(faulty, start_worker, records, broker, slow_backend):
    # Given 400 tasks and a worker whose result store is slower than its model
    total = 400
    results = submit_many(faulty.work, range(total))
    with PeakClaims(broker) as claims:
        # When it serves them all
        start_worker(APP, env=env(records, slow_backend))
        assert gather(results, timeout=120) == [2 * x for x in range(total)]
        # Then it never held more than the running batch and one beyond it, counting those waiting to be stored
        wait_until(lambda: broker.snapshot() == (0, 0), 10, "the last batch to be acknowledged")
    assert 0 < claims.peak <= MOST_HELD


def test_second_worker_gets_its_share_and_nothing_runs_twice(faulty, start_worker, records, broker, slow_backend):
    # Given a worker with a slow result store working through a long queue
    total = 800
    results = submit_many(faulty.work, range(total))
    first = start_worker(APP, env=env(records, slow_backend))
    wait_until(lambda: records.calls("work"), 30, "the first worker's first batch")
    # When a second worker comes up while the first is busy
    second = start_worker(APP, env=env(records, slow_backend))
    left_for_second = broker.snapshot()[0]
    assert gather(results, timeout=180) == [2 * x for x in range(total)]
    # Then the first had not hoarded the queue: the second worker took its share of what was left
    served = {first.process.pid: 0, second.process.pid: 0}
    for call in records.calls("work"):
        served[call["pid"]] += len(call["batch"])
    assert left_for_second > MOST_HELD
    assert served[second.process.pid] >= (left_for_second - MOST_HELD) / 3, served
    # And every sample ran exactly once
    assert set(records.runs("work").values()) == {1}
    assert sum(served.values()) == total
