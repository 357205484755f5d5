"""Celery task events for batched tasks, so Flower and ``celery events`` see every task.

The stock worker sends task-received/started/succeeded/failed one message
each; here a whole batch's events go out as one ``task.multi`` message (a
list, which Celery's event receiver and Flower unpack), stamped with the
times things really happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, states
from celery.utils.saferepr import saferepr

from .arrays import plain_value
from .results import TaskResult, format_traceback

# Flush only when we say so: one publish per batch.
_NO_AUTO_FLUSH = 1 << 30


class TaskEvents:
    """Sends per-task events for a batch in one broker message."""

    def __init__(self, app: Celery, hostname: str, enabled: bool) -> None:
        self.enabled = enabled
        self._dispatcher = None
        if enabled:
            self._connection = app.connection_for_write()
            self._dispatcher = app.events.Dispatcher(
                self._connection,
                hostname=hostname,
                buffer_group={"task"},
                buffer_limit=_NO_AUTO_FLUSH,
            )

    def batch_done(
        self,
        task_name: str,
        received: Sequence[tuple[dict[str, Any], float]],
        started: float,
        runtime: float,
        results: Sequence[TaskResult],
    ) -> None:
        """Send received, started and finished events for one batch.

        ``received`` holds each task's received-event fields and claim time,
        in the order of ``results``.
        """
        if self._dispatcher is None:
            return
        send = self._dispatcher.send
        for (fields, claimed_at), result in zip(received, results):
            send("task-received", timestamp=claimed_at, name=task_name, **fields)
            if result.state == states.REVOKED:
                send(
                    "task-revoked",
                    timestamp=started,
                    uuid=result.task_id,
                    terminated=str(result.value) == "terminated",
                    signum=None,
                    expired=str(result.value) == "expired",
                )
                continue
            # The dispatcher stamps every event with its own (this) pid.
            send("task-started", timestamp=started, uuid=result.task_id)
            finished = started + runtime
            if result.state == states.SUCCESS:
                send(
                    "task-succeeded",
                    timestamp=finished,
                    uuid=result.task_id,
                    result=saferepr(plain_value(result.value)),  # a numpy row as its list, as Celery shows it
                    runtime=runtime,
                )
            else:
                send(
                    "task-retried" if result.state == states.RETRY else "task-failed",
                    timestamp=finished,
                    uuid=result.task_id,
                    exception=saferepr(result.value),
                    traceback=format_traceback(result.value),
                )
        self._dispatcher.flush()

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.flush()
            self._dispatcher.close()
            self._connection.release()
