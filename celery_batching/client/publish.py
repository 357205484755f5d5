"""Sending batched tasks: Celery's own message, pushed straight onto the queue.

``apply_async`` runs routing, publish signals and kombu's producer for every
message, and kombu's Redis transport builds a client per publish; a task
awaited through it also costs a SUBSCRIBE and an UNSUBSCRIBE. When none of
that is needed (no options beyond id, expiry, result handling, serializer and
compression, no priority, a Redis result backend, nobody listening to the
publish signals, not inside a worker's task), a batched task is sent as the same protocol 2 message
with one push (:mod:`~celery_batching.client.push`: at most once, within the queue's
``max_queue_depth``), and awaited on the process's reply channel (:mod:`~celery_batching.client.replies`).
``task-sent`` events, when enabled, go out in bulk (:mod:`~celery_batching.client.sent_events`), for
pushed tasks only.

``batching_fast_client = False`` in the app's configuration turns this off:
every call then goes through Celery unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from celery import Task, signals
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult

from ..ids import new_id
from ..protocol import envelope
from .backends import check_result_backend
from .push import pushers
from .replies import BatchedResult, ReplyHub, reply_hub
from .send_settings import send_settings
from .sent_events import sent_events

Sample = TypeVar("Sample")
Output = TypeVar("Output")

# apply_async options the fast path honours; any other sends through Celery.
FAST_OPTIONS = frozenset({"task_id", "expires", "ignore_result", "queue", "serializer", "compression"})


def can_send_fast(task: Task[Any, Any], args: Any, kwargs: Any, options: Mapping[str, Any]) -> bool:
    """Whether this call may skip Celery's publish path without anyone noticing.

    Only with the Redis result backend: the reply channel and the worker's
    pipelined result writing are Redis's; other backends wait through Celery.
    """
    settings = send_settings(task.app)
    return (
        settings.fast_client
        and isinstance(args, (list, tuple))
        and len(args) == 1
        and not kwargs
        and options.keys() <= FAST_OPTIONS
        and not task.app.conf.task_always_eager
        and task.priority is None
        and settings.default_priority is None
        and isinstance(task.app.backend, RedisBackend)
        and not signals.before_task_publish.receivers
        and not signals.after_task_publish.receivers
        and task.app.current_worker_task is None
    )


def send_many(
    task: Task[[Sample], Output],
    samples: Sequence[Sample],
    queue: str,
    *,
    task_ids: Sequence[str] | None = None,
    expires: Any = None,
    ignore_result: bool | None = None,
    serializer: str | None = None,
    compression: str | None = None,
) -> list[AsyncResult[Output]]:
    """Push one message per sample in one round trip; their results in order.

    Raises :class:`~celery_batching.errors.QueueFull` at once when the task's
    ``max_queue_depth`` refuses them (none is sent), and
    :class:`~celery_batching.errors.SendOutcomeUnknown` when the push was never
    confirmed. ``None`` means the task's own setting, as in ``apply_async`` (for
    ``compression``: the task's, else ``task_compression``).
    """
    if not samples:
        return []
    app = task.app
    check_result_backend(app, task.name, app.backend)  # submit_many comes here without can_send_fast
    if ignore_result is None:
        ignore_result = task.ignore_result
    settings = send_settings(app)
    compression = compression or getattr(task, "compression", None) or settings.compression
    hub = reply_hub(app) if not ignore_result and settings.fast_client else None
    task_ids = list(task_ids) if task_ids is not None else [new_id() for _ in samples]
    results = [_result(task, task_id, hub, ignore_result) for task_id in task_ids]
    if hub is None and not ignore_result:
        for task_id in task_ids:
            app.backend.on_task_call(None, task_id)  # Celery's subscription, before anything can finish
    events: list[dict[str, Any]] = []
    payloads = [
        envelope(
            task,
            task_id,
            sample,
            queue,
            expires=expires,
            ignore_result=ignore_result,
            reply_channel=hub.channel if hub else None,
            on_sent_event=events.append if settings.send_sent_event else None,
            serializer=serializer,
            compression=compression,
            repr_maxlevels=settings.repr_maxlevels,
        )
        for task_id, sample in zip(task_ids, samples)
    ]
    # One push of them all: one command, so a worker claims them in order and all at once.
    try:
        pushers.get(app).push(task.name, queue, payloads, task_ids, getattr(task, "max_queue_depth", None) or 0)
    except Exception:
        if hub is None and not ignore_result:
            consumer = app.backend.result_consumer  # type: ignore[attr-defined]  # a RedisBackend here
            for task_id in task_ids:
                consumer.cancel_for(task_id)  # nothing of theirs will come
        raise
    if events:
        recorder = sent_events.get(app)
        for fields in events:
            recorder.record(fields)  # only for tasks that are on the queue
    return results


def _result(task: Task[Any, Output], task_id: str, hub: ReplyHub | None, ignore_result: bool) -> AsyncResult[Output]:
    """The result handle, its reply slot registered before anything is sent."""
    if hub is None:
        result = task.AsyncResult(task_id)
    else:
        # The calling thread's backend, as Celery's own results get (app.backend is per thread): whatever
        # Celery does with the result (on_ready, __del__) then touches only this thread's result consumer.
        # Celery before 5.7 does not lock its consumer's pub/sub, and the hub's backend belongs to the thread
        # that built the hub: an UNSUBSCRIBE sent from here could make that thread miss a reply it waits for.
        result = BatchedResult(
            task_id, backend=task.app.backend, task_name=task.name, app=task.app, slot=hub.expect(task_id)
        )
    result.ignored = ignore_result
    return result
