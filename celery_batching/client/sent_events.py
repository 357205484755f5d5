"""``task-sent`` events from the fast path, many per broker message.

Celery publishes one event message per sent task (``task_send_sent_event``),
which costs the caller about as much CPU as sending the task itself. The
fast path instead hands the event to a per-process daemon thread, which
sends what has piled up as one ``task.multi`` message (Celery's receivers
and Flower unpack it) every :data:`FLUSH_EVERY_SECONDS`. Monitors see a task
as sent a few milliseconds late, and ordering is by the events' own time
stamps, as Celery's event state handles anyway.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from typing import Any

from celery import Celery

from .per_process import PerProcess

logger = logging.getLogger(__name__)

FLUSH_EVERY_SECONDS = 0.05
# Flush only when the sender thread says so.
_NO_AUTO_FLUSH = 1 << 30


class SentEvents:
    """One process's ``task-sent`` sender for one app."""

    def __init__(self, app: Celery) -> None:
        self._pending: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one flush at a time: the dispatcher is not thread-safe
        self._connection = app.connection_for_write()
        self._dispatcher = app.events.Dispatcher(self._connection, buffer_group={"task"}, buffer_limit=_NO_AUTO_FLUSH)
        threading.Thread(target=self._run, name="celery-batching-sent-events", daemon=True).start()
        atexit.register(self.flush)

    def record(self, fields: dict[str, Any]) -> None:
        """Queue one task's event (stamped now); returns at once."""
        self._pending.put({**fields, "timestamp": time.time()})

    def flush(self) -> None:
        """Send every queued event now, as one message."""
        with self._lock:
            sent = 0
            while True:
                try:
                    fields = self._pending.get_nowait()
                except queue.Empty:
                    break
                self._dispatcher.send("task-sent", **fields)
                sent += 1
            if sent:
                self._dispatcher.flush()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_SECONDS)
            try:
                self.flush()
            except Exception:  # monitoring must never break sending tasks
                logger.exception("could not send task-sent events")


#: ``sent_events.get(app)``: the ``task-sent`` sender of ``app`` in this process.
sent_events: PerProcess[SentEvents] = PerProcess(SentEvents)
