"""A test app for overload: bounded queues, a model of known speed, and records of what ran.

Workers run it as ``celery -A tests.apps.overload worker``; tests and
``benchmarks.overload`` declare the same tasks on client apps of their own
(:func:`declare`), e.g. one whose broker is reached through a proxy.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from celery_batching import BatchedTask, batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"
# Messages that may wait on the recording task's queue.
RECORD_BOUND = 5
# The slow model: seconds per batch and samples per batch (its rate is their ratio).
SLOW_BATCH_SECONDS = float(os.environ.get("CB_SLOW_BATCH_SECONDS", "0.1"))
SLOW_BATCH_SIZE = int(os.environ.get("CB_SLOW_BATCH_SIZE", "2"))
# Messages that may wait on the slow task's queue.
SLOW_BOUND = int(os.environ.get("CB_SLOW_BOUND", "5"))


def declare(app: Celery) -> tuple[BatchedTask[str, str], BatchedTask[int, int]]:
    """The app's two batched tasks: ``overload.record`` and ``overload.slow``."""

    @batched(app, name="overload.record", max_batch_size=8, max_queue_depth=RECORD_BOUND)
    def record(batch: list[str]) -> list[str]:
        """Records each sample it runs in the Redis list 'ran'."""
        redis.Redis.from_url(BROKER).rpush("ran", *batch)
        return [sample.upper() for sample in batch]

    @batched(app, name="overload.slow", max_batch_size=SLOW_BATCH_SIZE, max_queue_depth=SLOW_BOUND)
    def slow(batch: list[int]) -> list[int]:
        """A model of known speed: SLOW_BATCH_SECONDS per batch, whatever its size."""
        time.sleep(SLOW_BATCH_SECONDS)
        return [2 * x for x in batch]

    return record, slow


def make_app(broker: str = BROKER, results: str = RESULTS, **conf: object) -> Celery:
    """An app of this module's tasks' own (declare them on it), with other broker settings than the workers'."""
    app = Celery("overload", broker=broker, backend=results)
    app.conf.update(conf)
    return app


app = make_app()
record, slow = declare(app)
