"""Opt-in synchronous replication: a write counts once replicas have it, not when the master does.

Redis replicates asynchronously: a master that dies right after answering a
write may take it along, and the replica Sentinel promotes never saw it. For
the writes that lose a task when dropped (the push of a message, a stored
result) ``batching_wait_replicas = N`` appends one ``WAIT N timeout`` to the
same pipeline: one round trip, paid per call or per batch, never per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from ..errors import ConfigurationError, NotReplicated

#: How many replicas must confirm a push or a batch's results (0: none, Redis's default).
WAIT_REPLICAS_SETTING = "batching_wait_replicas"
#: How long (seconds) to wait for them before giving up with :class:`~celery_batching.errors.NotReplicated`.
WAIT_TIMEOUT_SETTING = "batching_wait_timeout"
DEFAULT_WAIT_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class ReplicaWait:
    """One ``WAIT`` at the end of a pipeline, and the check of its answer."""

    replicas: int
    timeout_ms: int

    def command(self) -> tuple[str, int, int]:
        return ("WAIT", self.replicas, self.timeout_ms)

    def append_to(self, pipe: Any) -> None:
        pipe.execute_command(*self.command())

    def check(self, confirmed: int, what: str) -> None:
        if int(confirmed) < self.replicas:
            raise NotReplicated(what, int(confirmed), self.replicas, self.timeout_ms)


def replica_wait(app: Celery) -> ReplicaWait | None:
    """The app's replica wait, or ``None`` when writes need no replica (the default)."""
    replicas = app.conf.get(WAIT_REPLICAS_SETTING) or 0
    timeout = app.conf.get(WAIT_TIMEOUT_SETTING)
    timeout = DEFAULT_WAIT_TIMEOUT_SECONDS if timeout is None else timeout
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ConfigurationError(f"{WAIT_REPLICAS_SETTING} must be a whole number of replicas >= 0, not {replicas!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"{WAIT_TIMEOUT_SETTING} must be a number of seconds > 0, not {timeout!r}")
    return ReplicaWait(replicas, max(int(timeout * 1000), 1)) if replicas else None
