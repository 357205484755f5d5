"""Sending batched tasks: Celery's own message, pushed straight onto the queue.

``apply_async`` runs routing, publish signals and kombu's producer for every
message, and kombu's Redis transport builds a client per publish; a task
awaited through it also costs a SUBSCRIBE and an UNSUBSCRIBE. When none of
that is needed (no options beyond id, expiry, result handling, serializer and
compression, no priority, a Redis result backend, nobody listening to the
publish signals, not inside a worker's task), a batched task is sent as the same protocol 2 message with
one LPUSH, and awaited on the process's reply channel (:mod:`~celery_batching.client.replies`). ``task-sent``
events, when enabled, go out in bulk (:mod:`~celery_batching.client.sent_events`).

``batching_fast_client = False`` in the app's configuration turns this off:
every call then goes through Celery unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.uuid import uuid

from ..protocol import envelope
from .backends import check_result_backend
from .per_process import PerProcess
from .replication import replica_wait
from .replies import BatchedResult, ReplyHub, reply_hub
from .sent_events import sent_events

Sample = TypeVar("Sample")
Output = TypeVar("Output")

#: The app setting that turns the fast path off.
FAST_CLIENT_SETTING = "batching_fast_client"
# apply_async options the fast path honours; any other sends through Celery.
FAST_OPTIONS = frozenset({"task_id", "expires", "ignore_result", "queue", "serializer", "compression"})


def can_send_fast(task: Task[Any, Any], args: Any, kwargs: Any, options: Mapping[str, Any]) -> bool:
    """Whether this call may skip Celery's publish path without anyone noticing.

    Only with the Redis result backend: the reply channel and the worker's
    pipelined result writing are Redis's; other backends wait through Celery.
    """
    conf = task.app.conf
    return (
        conf.get(FAST_CLIENT_SETTING, True)
        and isinstance(args, (list, tuple))
        and len(args) == 1
        and not kwargs
        and options.keys() <= FAST_OPTIONS
        and not conf.task_always_eager
        and task.priority is None
        and conf.task_default_priority is None
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

    ``None`` means the task's own setting, as in ``apply_async`` (for
    ``compression``: the task's, else ``task_compression``).
    """
    app = task.app
    check_result_backend(app, task.name, app.backend)  # submit_many comes here without can_send_fast
    if ignore_result is None:
        ignore_result = task.ignore_result
    compression = compression or getattr(task, "compression", None) or app.conf.task_compression
    hub = reply_hub(app) if not ignore_result and app.conf.get(FAST_CLIENT_SETTING, True) else None
    task_ids = list(task_ids) if task_ids is not None else [uuid() for _ in samples]
    results = [_result(task, task_id, hub, ignore_result) for task_id in task_ids]
    if hub is None and not ignore_result:
        for task_id in task_ids:
            app.backend.on_task_call(None, task_id)  # Celery's subscription, before anything can finish
    events = sent_events.get(app) if app.conf.task_send_sent_event else None
    payloads = [
        envelope(
            task,
            task_id,
            sample,
            queue,
            expires=expires,
            ignore_result=ignore_result,
            reply_channel=hub.channel if hub else None,
            on_sent_event=events.record if events else None,
            serializer=serializer,
            compression=compression,
        )
        for task_id, sample in zip(task_ids, samples)
    ]
    _publishers.get(app).push(queue, payloads, f"{task.name}: sending task {task_ids[0]}")
    return results


class _Publisher:
    """A broker connection of this process's own, used for nothing but pushing messages.

    Not a channel of the app's producer pool: a pooled channel that once
    consumed (a broadcast collecting its replies) keeps a connection pinned to
    its BRPOP, and a command sent through that channel's client would read the
    BRPOP's answer.
    """

    def __init__(self, app: Celery) -> None:
        self._connection = app.connection_for_write()
        channel = self._connection.default_channel
        if not isinstance(channel, RedisChannel):
            raise TypeError(f"celery-batching needs a Redis broker, not {self._connection.transport_cls!r}")
        self.client = channel.client
        self._wait = replica_wait(app)

    def push(self, queue: str, payloads: list[Any], what: str) -> None:
        """One LPUSH of them all: one command, so a worker claims them in order and all at once.

        With ``batching_wait_replicas``, its ``WAIT`` rides in the same round trip.
        """
        if self._wait is None:
            self.client.lpush(queue, *payloads)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(queue, *payloads)
        self._wait.append_to(pipe)
        self._wait.check(pipe.execute()[-1], what)


_publishers: PerProcess[_Publisher] = PerProcess(_Publisher)


def _result(task: Task[Any, Output], task_id: str, hub: ReplyHub | None, ignore_result: bool) -> AsyncResult[Output]:
    """The result handle, its reply slot registered before anything is sent."""
    if hub is None:
        result = task.AsyncResult(task_id)
    else:
        result = BatchedResult(
            task_id, backend=hub.backend, task_name=task.name, app=task.app, slot=hub.expect(task_id)
        )
    result.ignored = ignore_result
    return result
