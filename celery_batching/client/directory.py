"""Which queues have a live worker, as this web process last heard.

A task sent to a queue that no worker serves waits silently until the view
times out. Asking the workers (:func:`serving_workers`, a broadcast of the
``batched_queues`` command) takes a whole reply timeout, too slow for a request, so a daemon
thread asks every few seconds and requests read its last answer: "no worker"
costs a request nothing. A worker counts as live for a grace period after its
last answer, so one late reply (a worker busy starting a batch, a slow broker)
does not turn requests away; a stopped worker is noticed within that period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from celery import Celery

from ..protocol import SERVING_COMMAND

logger = logging.getLogger(__name__)


def serving_workers(app: Celery, timeout: float = 1.0) -> dict[str, list[str]]:
    """Queue name -> names of the workers that answered within ``timeout`` seconds serving it.

    Blocks for the whole ``timeout`` (replies are collected until then), so
    call it off the request path. Broker errors propagate.
    """
    replies = app.control.broadcast(SERVING_COMMAND, reply=True, timeout=timeout) or []
    served: dict[str, set[str]] = {}
    for reply in replies:
        for hostname, queues in reply.items():
            if isinstance(queues, list):  # a worker without the command answers {"error": ...}
                for queue in queues:
                    served.setdefault(queue, set()).add(hostname)
    return {queue: sorted(hosts) for queue, hosts in sorted(served.items())}


def live_workers(sightings: Mapping[tuple[str, str], float], now: float, grace: float) -> dict[str, list[str]]:
    """Queue -> workers seen serving it within ``grace`` seconds of ``now``.

    ``sightings`` maps (queue, worker) to when that worker last said it serves the queue.
    """
    live: dict[str, list[str]] = {}
    for (queue, worker), at in sorted(sightings.items()):
        if now - at <= grace:
            live.setdefault(queue, []).append(worker)
    return live


class WorkerDirectory:
    """Polls the workers in the background; answers from memory."""

    def __init__(
        self,
        app: Celery,
        interval: float,
        reply_timeout: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.interval = interval
        self.reply_timeout = reply_timeout
        self.grace = grace
        self.clock = clock
        self.last_error: str | None = None
        self._sightings: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._polled = threading.Event()
        self._owner_pid: int | None = None

    def workers(self) -> dict[str, list[str]]:
        """Queue -> live workers. Waits for the first poll of this process, later ones never."""
        self._ensure_polling()
        self._polled.wait(self.reply_timeout + 5.0)
        with self._lock:
            return live_workers(self._sightings, self.clock(), self.grace)

    def poll(self) -> None:
        """Ask the workers once and record who serves what."""
        error = None
        try:
            served = serving_workers(self.app, timeout=self.reply_timeout)
        except Exception as exc:  # noqa: BLE001 - the broker is down; /healthz reports it
            served, error = {}, f"{type(exc).__name__}: {exc}"
            logger.warning("cannot ask the workers which queues they serve: %s", error)
        now = self.clock()
        with self._lock:
            self.last_error = error
            for queue, names in served.items():
                for name in names:
                    self._sightings[(queue, name)] = now
        self._polled.set()

    def _ensure_polling(self) -> None:
        # One thread per process: a server that forks after import (gunicorn --preload) gets its own.
        if self._owner_pid == os.getpid():
            return
        with self._lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
            self._polled.clear()
        threading.Thread(target=self._run, name="worker-directory", daemon=True).start()

    def _run(self) -> None:
        # A full interval between polls: kombu's Redis transport leaves the previous
        # poll's blocking read (up to 1 s) pending, and a poll sent sooner misses its replies.
        while True:
            self.poll()
            time.sleep(self.interval)
