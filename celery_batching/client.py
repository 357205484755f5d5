"""Client helpers: submit many samples in one round trip, gather their results.

``task.delay(sample)`` per sample costs a broker round trip each; a web view
with a list of 50 texts should not pay 50. :func:`submit_many` builds the
same Celery messages ``.delay()`` would, and pushes them all with one Redis
pipeline; the results are ordinary ``AsyncResult`` s.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Task
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.serialization import dumps
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

# How often gather() reads stored results again while it waits.
RECHECK_SECONDS = 1.0


def submit_many(
    task: Task,
    samples: Iterable[Any],
    *,
    expires: float | None = None,
    ignore_result: bool | None = None,
    queue: str | None = None,
) -> list[AsyncResult]:
    """Send one task per sample in a single broker round trip.

    The order of the returned results is the order of ``samples``.
    ``expires`` is seconds from now, as with ``apply_async``.
    """
    app = task.app
    queue = queue or getattr(task, "batch_queue", None) or task.queue or app.conf.task_default_queue
    ignore = task.ignore_result if ignore_result is None else ignore_result
    samples = list(samples)
    task_ids = [uuid() for _ in samples]
    payloads = [
        _envelope(task, task_id, sample, queue, expires=expires, ignore_result=ignore)
        for task_id, sample in zip(task_ids, samples)
    ]
    if not ignore:
        for task_id in task_ids:
            app.backend.on_task_call(None, task_id)  # subscribe before anything can finish
    with app.producer_or_acquire() as producer:
        client = producer.channel.client
        with client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.lpush(queue, payload)
            pipe.execute()
    return [task.AsyncResult(task_id) for task_id in task_ids]


def gather(results: Sequence[AsyncResult], timeout: float | None = None, propagate: bool = True) -> list[Any]:
    """Wait for all ``results``; their values in order. Raises the first failure if ``propagate``."""
    if not results:
        return []
    pending = results[0].app.ResultSet(list(results))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # Wait in slices: each new wait reads the stored results again, which catches a result
        # Celery's Redis client missed while it reconnected (it reads, then resubscribes).
        left = RECHECK_SECONDS if deadline is None else min(RECHECK_SECONDS, deadline - time.monotonic())
        try:
            # A short poll interval: ResultSet's default (0.5 s) would add up to half a second.
            return pending.get(timeout=max(left, 0.0), propagate=propagate, interval=0.005)
        except CeleryTimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _envelope(task: Task, task_id: str, sample: Any, queue: str, *, expires: float | None,
              ignore_result: bool) -> str:
    """The kombu Redis transport's JSON envelope of one Celery protocol 2 message."""
    app = task.app
    message = app.amqp.as_task_v2(
        task_id, task.name, (sample,), {}, expires=expires, root_id=task_id,
        ignore_result=ignore_result,
    )
    content_type, content_encoding, body = dumps(message.body, serializer=task.serializer)
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    properties = dict(message.properties)
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=uuid(),
    )
    return json_dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": properties,
    })
