"""A test app for ETA, countdown and priorities: tasks that say when they ran and with whom.

Each execution is also recorded in the broker's Redis list ``timed-runs``
(``"<task>:<sample>"``), so a test counts runs across worker deaths.
Task names are explicit; queues are the task names.

Environment (read by the worker): ``CB_TEST_BROKER`` (required),
``CB_VISIBILITY_TIMEOUT`` (seconds, default 3600), ``CB_KEYPREFIX`` (kombu's
``global_keyprefix``, default none), and, to make a mechanism
visible in a test, ``CB_WAIT_SLICE`` and ``CB_RESTORE_EVERY`` (seconds),
which replace the batched consumer's idle wait slice and restore interval.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from celery_batching import batched
from celery_batching.worker import consumer

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"
# The Redis list every execution is recorded in.
RUNS_KEY = "timed-runs"

if "CB_WAIT_SLICE" in os.environ:
    consumer.WAIT_SLICE_SECONDS = float(os.environ["CB_WAIT_SLICE"])
if "CB_RESTORE_EVERY" in os.environ:
    consumer.RESTORE_EVERY_SECONDS = float(os.environ["CB_RESTORE_EVERY"])

app = Celery("timed", broker=BROKER, backend=RESULTS)
app.conf.update(
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("CB_VISIBILITY_TIMEOUT", "3600")),
        **({"global_keyprefix": os.environ["CB_KEYPREFIX"]} if os.environ.get("CB_KEYPREFIX") else {}),
    },
    broker_connection_retry_on_startup=True,
)


def record(task: str, samples: list) -> None:
    redis.Redis.from_url(BROKER).rpush(RUNS_KEY, *[f"{task}:{sample}" for sample in samples])


@batched(app, name="timed.stamp", max_batch_size=16)
def stamp(batch: list[int]) -> list[dict]:
    """Says when each sample ran, and in how big a batch."""
    record("stamp", batch)
    now = time.time()
    return [{"sample": x, "ran_at": now, "batch_size": len(batch)} for x in batch]


@batched(app, name="timed.order", max_batch_size=4)
def order(batch: list[str]) -> list[str]:
    """Records the order samples reach the model in (one batch after another)."""
    record("order", batch)
    return batch


@app.task(name="timed.plain_stamp")
def plain_stamp(x: int) -> dict:
    """An ordinary task of the same app, for differential tests."""
    record("plain_stamp", [x])
    return {"sample": x, "ran_at": time.time(), "batch_size": 1}
