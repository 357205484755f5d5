"""A test app with batched tasks whose outputs reveal how they were batched.

Workers run it as ``celery -A tests.apps.basic worker``; tests import it too,
with the same broker (``CB_TEST_BROKER``).
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"

app = Celery("basic", broker=BROKER, backend=RESULTS)
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ.get("CB_VISIBILITY_TIMEOUT", "3600"))},
    worker_send_task_events=True,
)


@batched(app, max_batch_size=16)
def double(batch: list[int]) -> list[dict]:
    """Doubles numbers; says which batch size and process did it."""
    return [{"value": 2 * x, "batch_size": len(batch), "pid": os.getpid()} for x in batch]


@batched(app, max_batch_size=2, max_wait=60.0)
def patient(batch: list[int]) -> list[int]:
    """Waits up to a minute for a second sample."""
    return [len(batch)] * len(batch)


@batched(app, max_batch_size=64)
def poison(batch: list[str]) -> list[str]:
    """Fails the whole batch if one sample is 'poison' (as a model crash would)."""
    for sample in batch:
        if sample == "poison":
            raise ValueError(f"cannot digest {sample!r}")
    return [sample.upper() for sample in batch]


@batched(app, max_batch_size=64)
def short_by_one(batch: list[int]) -> list[int]:
    """Breaks the contract: one result too few."""
    return batch[:-1]


@batched(app, max_batch_size=64)
def unencodable(batch: list[str]) -> list[object]:
    """Returns something JSON cannot encode for the sample 'object'."""
    return [object() if sample == "object" else sample for sample in batch]


@batched(app, max_batch_size=64)
def gated(batch: list[str]) -> list[str]:
    """Blocks until the test pushes to the Redis list 'gate' (one pop per batch)."""
    redis.Redis.from_url(BROKER).blpop(["gate"], timeout=30)
    return batch


@batched(app, max_batch_size=8, ignore_result=True)
def fire_and_forget(batch: list[str]) -> list[str]:
    """Records what it saw in the Redis list 'seen'; results are not stored."""
    redis.Redis.from_url(BROKER).rpush("seen", *batch)
    return batch


@app.task(name="plain_add")
def plain_add(x: int, y: int) -> int:
    """An ordinary task, served by the ordinary consumer on the default queue."""
    return x + y


class Transient(Exception):
    """What ``retried`` retries on."""


@batched(app, max_batch_size=8, autoretry_for=(Transient,), max_retries=2, default_retry_delay=0)
def retried(batch: list[str]) -> list[str]:
    """Fails every attempt with Transient; records each attempt in the Redis list 'attempts'."""
    redis.Redis.from_url(BROKER).rpush("attempts", *batch)
    raise Transient(batch[0])
