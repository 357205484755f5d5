"""Send a request's texts as batched tasks and wait for them, blocking or awaiting.

Both server flavours share one path: :mod:`.jobs` checks a request and says
which task runs on which samples (a :class:`Job`); :func:`run` (WSGI) or
:func:`run_async` (ASGI) sends them in one round trip and waits; every way a
wait can end badly becomes an :class:`ApiError` with its HTTP status, so
nothing becomes a 500.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from celery import Task
from celery.exceptions import TaskRevokedError, TimeoutError as ResultTimeout
from django.conf import settings
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from celery_batching import InvalidSample, QueueFull, SendOutcomeUnknown, gather, submit_many
from celery_batching.client.aio import gather_async
from celery_batching.client.directory import WorkerDirectory
from django_demo.celery import app

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status, message, and extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class Job:
    """One request's work: a task, its samples, and how to shape the answer from their results."""

    task: Task
    samples: list[Any]
    respond: Callable[[list[Any]], dict[str, Any]]


def run(job: Job) -> dict[str, Any]:
    """Send ``job`` and block until its results are in (WSGI views)."""
    started = time.perf_counter()
    require_worker(job.task.batch_queue)
    results = _submit(job)
    try:
        values = gather(results, timeout=settings.DEMO_RESULT_TIMEOUT)
    except Exception as exc:  # every failure is mapped to an answer
        raise _failure(job, [r.id for r in results], exc) from exc
    return _answer(job, values, started)


async def run_async(job: Job) -> dict[str, Any]:
    """Send ``job`` and await its results on the event loop (ASGI views)."""
    started = time.perf_counter()
    await sync_to_async(require_worker, thread_sensitive=False)(job.task.batch_queue)
    task_ids = await sync_to_async(_submit_ids, thread_sensitive=False)(job)
    try:
        values = await gather_async(app, task_ids, timeout=settings.DEMO_RESULT_TIMEOUT)
    except Exception as exc:  # every failure is mapped to an answer
        raise _failure(job, task_ids, exc) from exc
    return _answer(job, values, started)


_directory: WorkerDirectory | None = None
_directory_lock = threading.Lock()


def directory() -> WorkerDirectory:
    """This process's directory of live workers, configured from the ``DEMO_WORKER_*`` settings."""
    global _directory
    with _directory_lock:
        if _directory is None:
            _directory = WorkerDirectory(
                app,
                interval=settings.DEMO_WORKER_POLL_INTERVAL,
                reply_timeout=settings.DEMO_WORKER_REPLY_TIMEOUT,
                grace=settings.DEMO_WORKER_GRACE,
            )
        return _directory


def require_worker(queue: str) -> None:
    """503 at once when no live worker serves ``queue``: a task sent there would only time out."""
    if not directory().workers().get(queue):
        raise ApiError(
            503,
            f"no live worker serves the {queue!r} queue; start one with: "
            f"celery -A django_demo worker -E --pool solo -Q {queue}",
            queue=queue,
        )


def _submit(job: Job) -> list[Any]:
    # Unclaimed tasks expire with the wait, so a task this request gave up on never runs later.
    try:
        return submit_many(job.task, job.samples, expires=settings.DEMO_RESULT_TIMEOUT)
    except QueueFull as exc:
        raise ApiError(503, f"too busy: {exc}", queue=exc.args[0]) from exc
    except SendOutcomeUnknown as exc:
        raise ApiError(503, f"cannot reach Redis to send the task: {exc}", task_ids=exc.args[1]) from exc
    except (OperationalError, RedisError, OSError) as exc:
        raise ApiError(503, f"cannot reach Redis to send the task: {exc}") from exc


def _submit_ids(job: Job) -> list[str]:
    # Only the ids: the AsyncResults are dropped here, which ends their
    # subscription in this thread's result consumer; the event loop awaits them instead.
    return [result.id for result in _submit(job)]


def _answer(job: Job, values: list[Any], started: float) -> dict[str, Any]:
    body = job.respond(values)
    body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return body


def _failure(job: Job, task_ids: list[str], exc: BaseException) -> ApiError:
    """The answer for a wait that did not end with every result."""
    name = job.task.name
    if isinstance(exc, ResultTimeout):
        app.control.revoke(task_ids)
        return ApiError(
            504,
            f"{name} did not answer within {settings.DEMO_RESULT_TIMEOUT}s; the request's tasks were revoked",
            task_ids=task_ids,
        )
    if isinstance(exc, InvalidSample):
        return ApiError(400, str(exc))
    if isinstance(exc, TaskRevokedError):
        return ApiError(504, f"{name} was revoked or expired before a worker ran it", task_ids=task_ids)
    if isinstance(exc, (OperationalError, RedisError, OSError)):
        return ApiError(503, f"lost Redis while waiting for {name}: {exc}", task_ids=task_ids)
    logger.error("%s failed: %s: %s", name, type(exc).__name__, exc)
    return ApiError(502, f"the worker failed to run {name}: {type(exc).__name__}: {exc}", task_ids=task_ids)
