"""One reply channel per client process: results awaited without a SUBSCRIBE per task.

Celery's Redis result consumer subscribes to a task's key when the task is
sent, reads the key again when ``get()`` starts, and unsubscribes when the
result comes: three round trips per request, which on a small machine cost
the client more CPU than the batched worker spends on the task. A batched
task sent by this process instead names the process's reply channel in a
message header. The worker publishes the result there as well as on the
task's key, so anyone else waiting on the task id still gets it, and one
listener thread per process hands each result to its :class:`BatchedResult`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import (  # type: ignore[attr-defined]  # assert_will_not_block: public in Celery, not in its stubs
    AsyncResult,
    assert_will_not_block,
)
from kombu.utils.uuid import uuid

from .. import fastjson
from ..protocol import BATCH_CHANNEL_PREFIX, CHANNEL_PREFIX
from .per_process import PerProcess
from .subscription import ChannelSubscription

logger = logging.getLogger(__name__)

#: The app setting that turns batched replies off: ``False`` names a channel without the batch
#: marker, so workers publish one result per message to it (as before; the benchmark's "before").
BATCH_REPLIES_SETTING = "batching_batch_replies"
# A wait that heard nothing for this long reads the stored result itself: a reply
# published while the listener was reconnecting is never delivered.
RECHECK_SECONDS = 1.0
# How long to wait for Redis to confirm the subscription of a new channel.
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
# Pause before the listener reconnects after losing Redis.
RECONNECT_PAUSE_SECONDS = 0.5


class ReplySlot:
    """Where the listener leaves one task's result for its waiter."""

    __slots__ = ("__weakref__", "_arrived", "_hub", "_seen", "meta")

    def __init__(self, hub: ReplyHub | None = None) -> None:
        self.meta: dict[str, Any] | None = None
        # Held until the result is in. A lock is the cheapest thing a thread can wait on: an Event
        # builds a Condition per slot and takes it twice per wake, on every request of a busy process.
        self._arrived = threading.Lock()
        self._arrived.acquire()
        self._hub = hub
        self._seen = hub.reconnects if hub is not None else 0

    def missed_replies(self) -> bool:
        """Whether the listener reconnected since this slot last asked: a reply published
        meanwhile is never delivered, so its waiter reads the stored result at once
        (a batch of waiters would otherwise each wait a recheck period in turn)."""
        if self._hub is None:
            return False
        now = self._hub.reconnects
        missed, self._seen = now != self._seen, now
        return missed

    def fulfil(self, meta: dict[str, Any]) -> None:
        """Hand over the result (called by the listener thread only, so the first call is known)."""
        first = self.meta is None
        self.meta = meta
        if first:
            self._arrived.release()

    def wait(self, timeout: float) -> bool:
        """Whether the result came within ``timeout`` seconds (> 0); once in, every wait returns at once."""
        if not self._arrived.acquire(timeout=timeout):
            return False
        self._arrived.release()
        return True


class ReplyHub:
    """This process's reply channel and the daemon thread listening on it.

    Slots are held weakly: a result nobody keeps is forgotten, so results
    never awaited cost nothing here.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        batches = backend.app.conf.get(BATCH_REPLIES_SETTING, True)  # type: ignore[attr-defined]  # Backend.app is unstubbed
        self.channel = (BATCH_CHANNEL_PREFIX if batches else CHANNEL_PREFIX) + uuid()
        # orjson for JSON replies (same decoded value as kombu's, a fraction of the time).
        self._decode = fastjson.loads if fastjson.serves_backend(backend) else backend.decode
        self._slots: weakref.WeakValueDictionary[str, ReplySlot] = weakref.WeakValueDictionary()
        #: How often the listener lost its channel and subscribed again.
        self.reconnects = 0
        self._subscription = self._subscribe()
        threading.Thread(target=self._listen, name="celery-batching-replies", daemon=True).start()

    def expect(self, task_id: str) -> ReplySlot:
        """A slot for ``task_id``'s result; call before the task is sent."""
        slot = ReplySlot(self)
        self._slots[task_id] = slot
        return slot

    def _subscribe(self) -> ChannelSubscription:
        return ChannelSubscription(self.backend.client, self.channel, SUBSCRIBE_TIMEOUT_SECONDS)

    def _listen(self) -> None:
        while True:
            try:
                data = self._subscription.next_message(RECHECK_SECONDS)
                if data is not None:
                    self._deliver(data)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("reply channel %s lost (%s); resubscribing", self.channel, exc)
                self._resubscribe()
            except Exception:  # waiters fall back to reading results; keep listening
                logger.exception("reply channel %s: cannot deliver a reply", self.channel)

    def _resubscribe(self) -> None:
        self._subscription.close()
        while True:
            time.sleep(RECONNECT_PAUSE_SECONDS)
            try:
                self._subscription = self._subscribe()
                self.reconnects += 1
                return
            except (redis.ConnectionError, redis.TimeoutError):
                continue

    def _deliver(self, data: bytes) -> None:
        """One result (a JSON object) or a batch's results for this process (a JSON array of them)."""
        decoded = self._decode(data)
        for meta in decoded if isinstance(decoded, list) else (decoded,):
            self._fulfil(meta)

    def _fulfil(self, meta: dict[str, Any]) -> None:
        slot = self._slots.get(str(meta.get("task_id")))
        if slot is not None and meta.get("status") in states.READY_STATES:
            slot.fulfil(meta)


def _new_hub(app: Celery) -> ReplyHub:
    if not isinstance(app.backend, RedisBackend):
        raise TypeError(f"a reply hub needs Celery's Redis result backend, not {type(app.backend).__name__}")
    return ReplyHub(app.backend)


_hubs: PerProcess[ReplyHub] = PerProcess(_new_hub)


def reply_hub(app: Celery) -> ReplyHub | None:
    """The reply hub of ``app`` in this process, or ``None`` unless results go to Redis.

    A forked child gets its own hub (and channel) on first use.
    """
    return _hubs.get(app) if isinstance(app.backend, RedisBackend) else None


if TYPE_CHECKING:
    _AnyResult = AsyncResult[Any]
else:
    _AnyResult = AsyncResult  # Celery before 5.7 cannot subscript it at run time


class BatchedResult(_AnyResult):
    """An ``AsyncResult`` awaited on its process's reply channel.

    Everything but the wait is Celery's: once the reply is in, ``get`` hands
    over to ``AsyncResult.get``, which finds the result cached. A copy made
    elsewhere (pickled, rebuilt from the id) is a plain ``AsyncResult`` and
    waits on the task's key as usual.
    """

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: Celery | None = None,
        parent: Any = None,
        *,
        slot: ReplySlot | None = None,
    ) -> None:
        super().__init__(id, backend=backend, task_name=task_name, app=app, parent=parent)
        self._slot = slot

    if TYPE_CHECKING:  # the parts of AsyncResult used here that celery-types does not declare
        _cache: dict[str, Any] | None

        def _maybe_set_cache(self, meta: dict[str, Any]) -> dict[str, Any] | None: ...

    def get(self, timeout: float | None = None, propagate: bool = True, *args: Any, **options: Any) -> Any:
        """Celery's ``get``; positional arguments past ``propagate`` pass through to it."""
        if self._slot is not None and self._cache is None and not self.ignored:
            if options.get("disable_sync_subtasks", True):
                assert_will_not_block()
            self._maybe_set_cache(self._await_reply(timeout))
        return super().get(timeout, propagate, *args, **options)

    wait = get

    def _await_reply(self, timeout: float | None) -> dict[str, Any]:
        assert self._slot is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = RECHECK_SECONDS if deadline is None else min(RECHECK_SECONDS, deadline - time.monotonic())
            if left > 0 and not self._slot.missed_replies() and self._slot.wait(left):
                return self._slot.meta  # type: ignore[return-value]
            meta = self._read_stored()
            if meta is not None and meta["status"] in states.READY_STATES:
                return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise CeleryTimeoutError("The operation timed out.")

    def _read_stored(self) -> dict[str, Any] | None:
        """The stored result, or ``None`` while Redis is unreachable.

        A Redis restart or a Sentinel failover is not this task's failure: its
        result may well be stored once a master answers again, so the wait goes
        on to its own deadline.
        """
        try:
            meta: dict[str, Any] = self.backend.get_task_meta(self.id)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.debug("reading the result of %s: Redis unavailable (%s); waiting on", self.id, exc)
            return None
        return meta
