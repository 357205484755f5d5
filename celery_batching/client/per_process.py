"""Objects kept once per Celery app and per process.

The reply listener and the ``task-sent`` sender each own a connection and a
daemon thread. A forked child (a pre-loading web server's workers) shares
neither, so it builds its own on first use.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from celery import Celery

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get(app)`` builds with ``factory(app)`` once per app and per process."""

    def __init__(self, factory: Callable[[Celery], T]) -> None:
        self._factory = factory
        self._built: weakref.WeakKeyDictionary[Celery, tuple[int, T]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, app: Celery) -> T:
        with self._lock:
            pid, value = self._built.get(app, (None, None))
            if pid != os.getpid():
                value = self._factory(app)
                self._built[app] = (os.getpid(), value)
            return value  # type: ignore[return-value]
