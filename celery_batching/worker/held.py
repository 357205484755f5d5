"""The batched tasks a worker holds right now, for ``celery inspect``.

Celery's ``inspect active``/``reserved``/``query_task`` read the worker's own
request registry, which batched tasks never enter. Each batched queue's
consumer records here what it has claimed (reserved) and what its running
batch holds (active), and :mod:`~celery_batching.worker.control` adds them to
Celery's answers in the shape of ``celery.worker.request.Request.info()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..protocol import TaskMessage

#: States of a held task, as ``inspect query_task`` names them.
RESERVED, ACTIVE = "reserved", "active"


class HeldTasks:
    """Thread-safe: the fetcher reserves, the predictor activates, the writer releases."""

    def __init__(self, task_name: str, hostname: str) -> None:
        self.task_name = task_name
        self.hostname = hostname
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, TaskMessage, float | None]] = {}
        #: Ids asked to be terminated while their batch ran (``revoke(terminate=True)``).
        self._terminated: set[str] = set()

    def reserve(self, messages: Iterable[TaskMessage]) -> None:
        with self._lock:
            for message in messages:
                if message.task_id:
                    self._held[message.task_id] = (RESERVED, message, None)

    def activate(self, messages: Iterable[TaskMessage]) -> None:
        now = time.time()
        with self._lock:
            for message in messages:
                if message.task_id:
                    self._held[message.task_id] = (ACTIVE, message, now)

    def release(self, messages: Iterable[TaskMessage]) -> set[str]:
        """Forget ``messages``; returns those of their ids that were terminated meanwhile."""
        with self._lock:
            ids = {m.task_id for m in messages if m.task_id}
            for task_id in ids:
                self._held.pop(task_id, None)
            terminated = ids & self._terminated
            self._terminated -= terminated
            return terminated

    def running(self, task_ids: Iterable[str]) -> list[str]:
        """Those of ``task_ids`` that are in the running batch."""
        with self._lock:
            return [t for t in task_ids if t in self._held and self._held[t][0] == ACTIVE]

    def terminate(self, task_ids: Iterable[str]) -> None:
        """Their outcome is to be REVOKED (terminated) when the batch returns."""
        with self._lock:
            self._terminated.update(t for t in task_ids if t in self._held and self._held[t][0] == ACTIVE)

    def infos(self, state: str, safe: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            held = [(message, started) for kind, message, started in self._held.values() if kind == state]
        return [self._info(message, started, safe) for message, started in held]

    def query(self, task_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        with self._lock:
            found = {t: self._held[t] for t in task_ids if t in self._held}
        return {t: (kind, self._info(message, started)) for t, (kind, message, started) in found.items()}

    def info(self, message: TaskMessage) -> dict[str, Any]:
        """``Request.info()`` of a task this worker does not hold yet (one waiting for its ETA)."""
        return self._info(message, None)

    def _info(self, message: TaskMessage, started: float | None, safe: bool = False) -> dict[str, Any]:
        """What ``Request.info()`` says of an ordinary task."""
        headers = message.headers
        return {
            "id": message.task_id,
            "name": self.task_name,
            "args": headers.get("argsrepr") if safe else [message.sample],
            "kwargs": headers.get("kwargsrepr") if safe else {},
            "type": self.task_name,
            "hostname": self.hostname,
            "time_start": started,
            "acknowledged": False,
            "delivery_info": message.delivery_info(),
            "worker_pid": os.getpid() if started is not None else None,
        }
