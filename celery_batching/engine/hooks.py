"""Observation points of the batching engine.

Metrics, logging and Celery events plug in by subclassing :class:`BatchHooks`
and overriding the methods they care about; the engine calls every
registered hook at each point and knows nothing of what they do. All methods
are no-ops here, so a hook overrides only what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


class BatchHooks:
    """No-op base: override the points you need.

    ``queue_waits`` are seconds each sample spent between being sent and being
    claimed by the worker (``None`` where the sender did not stamp a time).
    """

    def after_claim(self, task_name: str, count: int, queue_waits: Sequence[float | None]) -> None:
        """``count`` samples were claimed from the broker."""

    def before_predict(self, task_name: str, batch_size: int) -> None:
        """A batch is about to run."""

    def after_predict(self, task_name: str, batch_size: int, seconds: float) -> None:
        """A batch ran (successfully or not) in ``seconds`` of wall time."""

    def after_results(self, task_name: str, succeeded: int, failed: int, errors: Sequence[BaseException]) -> None:
        """Results of one batch were stored and its messages acknowledged."""

    def after_skip(self, task_name: str, task_id: str, reason: str) -> None:
        """A task was not run: ``reason`` is ``"revoked"``, ``"expired"`` or ``"duplicate"``."""


def call_hooks(hooks: Sequence[BatchHooks], method: str, *args: Any) -> None:
    """Call ``method`` on every hook; a failing hook is logged, never fatal."""
    for hook in hooks:
        try:
            getattr(hook, method)(*args)
        except Exception:  # observation must not break serving
            logger.exception("hook %r failed in %s", hook, method)
