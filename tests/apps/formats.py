"""A test app for wire formats and result backends: each batched task has an ordinary twin.

The twins (``plain_*``) are ordinary ``@app.task`` s run by Celery's own
consumer, so a test can send the same sample to both with the same options
and compare what comes back (the differential check).

Environment: ``CB_TEST_BROKER`` (required), ``CB_TEST_BACKEND`` (default: db 1
of the broker), ``CB_ACCEPT_CONTENT`` (comma list, default json,msgpack,yaml),
``CB_LATE_BACKEND`` (a result backend set *after* the tasks are declared, as a
project configuring its app late would).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
BACKEND = os.environ.get("CB_TEST_BACKEND") or BROKER.rsplit("/", 1)[0] + "/1"
# Largest serialized sample 'echo' accepts, on the wire and once decompressed.
MAX_SAMPLE_BYTES = 64 * 1024

app = Celery("formats", broker=BROKER, backend=BACKEND)
app.conf.update(
    accept_content=os.environ.get("CB_ACCEPT_CONTENT", "json,msgpack,yaml").split(","),
    broker_connection_retry_on_startup=True,
)


def describe(sample: Any) -> dict[str, Any]:
    """What the task saw: the sample back, and its type as decoded."""
    return {"sample": sample, "type": type(sample).__name__}


def check(sample: Any) -> Any:
    """Fails on a negative number, as a model rejecting a bad input would."""
    if isinstance(sample, int) and sample < 0:
        raise ValueError(f"negative sample {sample}")
    return sample * 2


@batched(app, name="formats.echo", max_batch_size=16, max_sample_bytes=MAX_SAMPLE_BYTES)
def echo(batch: list[Any]) -> list[dict[str, Any]]:
    return [describe(sample) for sample in batch]


@app.task(name="formats.plain_echo")
def plain_echo(sample: Any) -> dict[str, Any]:
    return describe(sample)


@batched(app, name="formats.picky", max_batch_size=16)
def picky(batch: list[Any]) -> list[Any]:
    """One negative sample fails the whole batch; bisection isolates it."""
    return [check(sample) for sample in batch]


@app.task(name="formats.plain_picky")
def plain_picky(sample: Any) -> Any:
    return check(sample)


if os.environ.get("CB_LATE_BACKEND"):
    app.conf.result_backend = os.environ["CB_LATE_BACKEND"]
