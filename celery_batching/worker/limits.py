"""``soft_time_limit`` and ``time_limit`` of a batched task, applied to one ``predict`` call.

Celery's prefork pool enforces them with signals and by killing the child
process; a batch runs on a thread of the worker itself, so here a watchdog
thread does it:

* past the **soft** limit it raises :class:`~celery.exceptions.SoftTimeLimitExceeded`
  inside ``predict`` (as an asynchronous exception of the predictor thread). Python
  delivers it at the next bytecode, so ``predict`` sees it while it runs Python
  code; one stuck inside a single C call (a CUDA kernel, a blocking read) sees it
  only when that call returns. Uncaught, it fails every task of that batch.
* past the **hard** limit it hands the batch to ``on_hard_limit`` (the consumer
  fails those tasks with ``TimeLimitExceeded`` and stops the worker for its
  supervisor to restart: a thread that never returns cannot be killed).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

Result = TypeVar("Result")


def _raise_in(thread_id: int, exception: type[BaseException] | None) -> None:
    """Make ``exception`` pending in thread ``thread_id`` (``None`` clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else ctypes.c_void_p(0)
    )


class PredictLimits:
    """Watches one predict call at a time."""

    def __init__(
        self,
        task_name: str,
        soft: float | None,
        hard: float | None,
        on_hard_limit: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task_name = task_name
        self.soft = soft
        self.hard = hard
        self._on_hard_limit = on_hard_limit
        self._clock = clock
        self._changed = threading.Condition()
        self._started: float | None = None
        self._thread_id = 0
        self._soft_sent = False
        threading.Thread(target=self._watch, name=f"limits:{task_name}", daemon=True).start()

    def call(self, predict: Callable[[list[Any]], Result], samples: list[Any]) -> Result:
        """``predict(samples)`` under the limits."""
        with self._changed:
            self._started, self._thread_id, self._soft_sent = self._clock(), threading.get_ident(), False
            self._changed.notify_all()
        try:
            return predict(samples)
        finally:
            with self._changed:
                self._started = None
                if self._soft_sent:
                    _raise_in(self._thread_id, None)  # it came too late to matter: the call returned
                self._changed.notify_all()

    def _watch(self) -> None:
        with self._changed:
            while True:
                if self._started is None:
                    self._changed.wait()
                    continue
                now = self._clock()
                soft_at = None if self.soft is None or self._soft_sent else self._started + self.soft
                hard_at = None if self.hard is None else self._started + self.hard
                if soft_at is not None and now >= soft_at:
                    self._soft_sent = True
                    _raise_in(self._thread_id, SoftTimeLimitExceeded)
                    continue
                if hard_at is not None and now >= hard_at:
                    self._started = None
                    break
                deadlines = [d for d in (soft_at, hard_at) if d is not None]
                self._changed.wait(min(deadlines) - now if deadlines else None)
        self._on_hard_limit(float(self.hard or 0))


def time_limits(task: Any, app: Any) -> tuple[float | None, float | None]:
    """(soft, hard) seconds of ``task``: its own options, else the app's ``task_*_time_limit``."""
    soft = task.soft_time_limit or app.conf.task_soft_time_limit
    hard = task.time_limit or app.conf.task_time_limit
    return (float(soft) if soft else None, float(hard) if hard else None)
