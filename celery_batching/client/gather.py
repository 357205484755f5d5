"""Client helpers: submit many samples in one round trip, gather their results.

``task.delay(sample)`` per sample costs a broker round trip each; a web view
with a list of 50 texts should not pay 50. :func:`submit_many` builds the
same Celery messages ``.delay()`` would, and pushes them all with one Redis
LPUSH; the results are ``AsyncResult`` s, awaited on the process's reply
channel (:mod:`~celery_batching.client.replies`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from .publish import send_many
from .replies import BatchedResult

Sample = TypeVar("Sample")
Output = TypeVar("Output")

# How often gather() reads stored results again while it waits.
RECHECK_SECONDS = 1.0


def submit_many(
    task: Task[[Sample], Output],
    samples: Iterable[Sample],
    *,
    expires: float | None = None,
    ignore_result: bool | None = None,
    queue: str | None = None,
) -> list[AsyncResult[Output]]:
    """Send one task per sample in a single broker round trip.

    The order of the returned results is the order of ``samples``.
    ``expires`` is seconds from now, as with ``apply_async``.
    """
    # A task has a ``queue`` attribute only when it was declared with one.
    queue = (
        queue or getattr(task, "batch_queue", None) or getattr(task, "queue", None) or task.app.conf.task_default_queue
    )
    return send_many(task, list(samples), queue, expires=expires, ignore_result=ignore_result)


def gather(results: Sequence[AsyncResult[Any]], timeout: float | None = None, propagate: bool = True) -> list[Any]:
    """Wait for all ``results``; their values in order. Raises the first failure if ``propagate``."""
    if not results:
        return []
    deadline = None if timeout is None else time.monotonic() + timeout
    if all(isinstance(result, BatchedResult) for result in results):
        return [
            result.get(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0), propagate=propagate)
            for result in results
        ]
    pending = results[0].app.ResultSet(list(results))
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
