"""Await Celery results on an event loop, without a thread per wait.

``AsyncResult.get()`` blocks its thread until the result comes. An ASGI view
instead subscribes to the result keys' pub/sub channels (the Redis result
backend publishes every stored result on its key), reads the results already
there, and awaits the rest: thousands of waiting requests cost one event
loop. Results are decoded by the app's own backend, so values and rebuilt
exceptions are exactly what ``AsyncResult.get()`` would give.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.exceptions import TimeoutError as ResultTimeout
from kombu.utils.encoding import ensure_bytes


async def gather_async(app: Celery, task_ids: list[str], timeout: float) -> list[Any]:
    """The results of ``task_ids`` in order; raises the first failed task's exception.

    Raises :class:`celery.exceptions.TimeoutError` (as ``gather`` does) when
    not all results are in after ``timeout`` seconds.
    """
    backend = app.backend
    if not isinstance(backend, RedisBackend):
        raise TypeError(f"gather_async needs Celery's Redis result backend, not {type(backend).__name__}")
    # Keys are bytes, as pub/sub messages name their channels (celery-types says str; Celery builds bytes).
    keys = [ensure_bytes(backend.get_key_for_task(task_id)) for task_id in task_ids]
    metas: dict[bytes, dict[str, Any]] = {}
    client = redis.asyncio.Redis.from_url(app.conf.result_backend)
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(*keys)  # before reading, so no result slips between the two
            for key, raw in zip(keys, await client.mget(keys)):
                _keep_if_ready(backend, metas, key, raw)
            await _await_rest(backend, pubsub, metas, set(keys), timeout)
    finally:
        await client.aclose()
    values = []
    for key in keys:
        meta = metas[key]
        if meta["status"] != states.SUCCESS:
            raise meta["result"]
        values.append(meta["result"])
    return values


async def _await_rest(
    backend: RedisBackend, pubsub: Any, metas: dict[bytes, dict[str, Any]], keys: set[bytes], timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not keys <= metas.keys():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ResultTimeout(f"{len(keys - metas.keys())} of {len(keys)} results not ready after {timeout}s")
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None and message["type"] == "message":
            _keep_if_ready(backend, metas, message["channel"], message["data"])


def _keep_if_ready(
    backend: RedisBackend, metas: dict[bytes, dict[str, Any]], key: bytes, raw: bytes | str | None
) -> None:
    if raw is None:
        return
    meta = backend.decode_result(ensure_bytes(raw))
    if meta["status"] in states.READY_STATES:
        metas[key] = meta
