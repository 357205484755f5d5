"""Per-task results into Celery's result backend, one round trip per batch.

Each task gets exactly the record Celery's own worker would write (same key,
same fields, same serializer) and the same pub/sub notification, so
``AsyncResult.get()``, ``.state`` and ``.ready()`` work unchanged; the
notification also goes to the sender's reply channel when it named one. With the
Redis backend the whole batch is one round trip
(:mod:`~celery_batching.worker.redis_store`, which also guards late results);
any other backend gets Celery's own per-task ``store_result``.
"""

from __future__ import annotations

import time
import traceback as tb_module
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
from celery import Celery, states
from celery.backends.redis import RedisBackend

from .. import fastjson
from ..errors import ResultNotSerializable
from .arrays import plain_value
from .redis_store import Acknowledgement, RedisResultStore


@dataclass(slots=True)
class TaskResult:
    """The final outcome of one task, before encoding (one per task in the hot path: slotted)."""

    task_id: str
    state: str
    value: Any
    ignore_result: bool = False
    #: Store only if no result is there yet (the message may have run elsewhere).
    store_once: bool = False
    #: Epoch seconds from which another worker may have restored and run the message:
    #: a write that reaches Redis later (a slow or cut link) is stored only once.
    late_after: float | None = None
    group_id: str | None = None
    parent_id: str | None = None
    #: Also published here: the sender's reply channel.
    reply_channel: str | None = None
    #: The task's Celery request, when it has one: the stored record then carries what
    #: Celery's own worker stores from it (``result_extended`` fields, children).
    request: Any = None
    #: Set by the writer: a store-once result refused because a final one was there (a duplicate run).
    refused: bool = False

    @property
    def failed(self) -> bool:
        return self.state != states.SUCCESS


def format_traceback(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))


# States whose stored exception carries its traceback, as Celery stores them.
_TRACEBACK_STATES = frozenset({states.FAILURE, states.RETRY})


class ResultWriter:
    """Writes the results of one batched task's batches."""

    def __init__(self, app: Celery, task_name: str) -> None:
        self.backend = app.backend
        self.task_name = task_name
        self.app = app
        # Backend.__init__ sets it; celery-types leaves it out of Backend.
        self.serializer: str = self.backend.serializer  # type: ignore[attr-defined]
        #: The backend when it is Redis: then a batch is one round trip.
        self._redis = self.backend if isinstance(self.backend, RedisBackend) else None
        self._redis_store = RedisResultStore(app, self._redis, task_name) if self._redis is not None else None
        # orjson for JSON records (same decoded value, a fraction of the time); else the backend's encoder,
        # which is given numpy rows as the lists their tolist() gives.
        self._fast_json = fastjson.serves_backend(self.backend)

    def takes_acks_of(self, client: redis.Redis) -> bool:
        """Whether an :class:`Acknowledgement` of messages ``client`` reads may go with the results they gave."""
        return self._redis_store is not None and self._redis_store.takes_acks_of(client)

    def write(self, results: Sequence[TaskResult], ack: Acknowledgement | None = None) -> list[TaskResult]:
        """Store every result not ignored; returns them as stored.

        A result the serializer cannot encode is stored as a FAILURE with
        :class:`~celery_batching.errors.ResultNotSerializable` instead, and
        returned that way. A store-once or late result that found a final
        result already stored comes back ``refused``: nothing of it was
        written or published. ``ack`` is run with the results when the Redis
        store can (see :meth:`RedisResultStore.write`).
        """
        date_done = self.app.now().isoformat()
        encoded: list[tuple[TaskResult, str | bytes]] = []
        final: list[TaskResult] = []
        for result in results:
            result, payload = self._encode(result, date_done)
            final.append(result)
            if not result.ignore_result:
                encoded.append((result, payload))
        if self._redis_store is not None:
            refused = self._redis_store.write(encoded, ack)
        else:
            refused = {result.task_id for result, _ in encoded if not self._write_generic(result)}
        if refused:
            final = [replace(r, refused=True) if r.task_id in refused else r for r in final]
        return final

    def already_final(self, task_ids: Sequence[str]) -> set[str]:
        """Which of ``task_ids`` already have a final result stored (one round trip on Redis)."""
        if self._redis is None:
            return {task_id for task_id in task_ids if self.backend.get_state(task_id) in states.READY_STATES}
        keys = [self._redis.get_key_for_task(task_id) for task_id in task_ids]
        stored = self._redis.client.mget(keys)
        return {
            task_id
            for task_id, raw in zip(task_ids, stored)
            if raw is not None and self.backend.decode_result(raw).get("status") in states.READY_STATES
        }

    def _encode(self, result: TaskResult, date_done: str) -> tuple[TaskResult, str | bytes]:
        # The JSON serializer gives str, binary ones bytes (celery-types says bytes).
        try:
            return result, self._encode_record(result, date_done)
        except Exception as exc:  # noqa: BLE001 - any encoder error means "not serializable"
            error = ResultNotSerializable(
                self.task_name, type(result.value).__name__, self.serializer, f"{type(exc).__name__}: {exc}"
            )
            failed = replace(result, state=states.FAILURE, value=error)
            return failed, self._encode_record(failed, date_done)

    def _encode_record(self, result: TaskResult, date_done: str) -> str | bytes:
        meta, unvouched = self._meta(result, date_done)
        return fastjson.dumps_vouched(meta, unvouched) if self._fast_json else self.backend.encode(meta)

    def _meta(self, result: TaskResult, date_done: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The record to store, and the values in it the fast codec must check (the rest is made here)."""
        value = result.value if self._fast_json else plain_value(result.value)
        traceback = None
        if isinstance(value, BaseException):
            traceback = format_traceback(value) if result.state in _TRACEBACK_STATES else None
            # Celery prepares any BaseException (a task's SystemExit too); celery-types says Exception.
            value = self.backend.prepare_exception(value, self.serializer)  # type: ignore[arg-type]
        if result.request is not None:
            # The backend's own record of a task, extended fields included (not in celery-types' stubs):
            # args, kwargs and name are the caller's, so all of it is checked.
            extended: dict[str, Any] = self.backend._get_result_meta(  # type: ignore[attr-defined]
                value, result.state, traceback, result.request
            )
            extended["task_id"] = result.task_id
            return extended, (extended,)
        # Status, traceback, children, date_done and task_id are str, None or [] made here.
        meta: dict[str, Any] = {
            "status": result.state,
            "result": value,
            "traceback": traceback,
            "children": [],
            "date_done": date_done if result.state in states.READY_STATES else None,
            "task_id": result.task_id,
        }
        if result.group_id:
            meta["group_id"] = result.group_id
        if result.parent_id:
            meta["parent_id"] = result.parent_id
        return meta, (value, result.group_id, result.parent_id)

    def _write_generic(self, result: TaskResult) -> bool:
        """Celery's own store; a store-once result is refused (``False``) when a final one is there.

        Not atomic as the Redis script is: another backend offers no such
        primitive, so the check narrows the race rather than closing it.
        """
        late = result.late_after is not None and time.time() > result.late_after
        if (result.store_once or late) and self.backend.get_state(result.task_id) in states.READY_STATES:
            return False
        traceback = format_traceback(result.value) if result.state in _TRACEBACK_STATES else None
        self.backend.store_result(
            result.task_id, plain_value(result.value), result.state, traceback=traceback, request=result.request
        )
        return True
