"""ManagedModel: the user's model, built once per worker process.

The web server only calls ``task.delay()``; it must never load weights. So a
model is a class whose constructor is cheap and whose :meth:`init_model` does
the heavy loading, called by the worker after it starts, on the device the
worker was given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

Sample = TypeVar("Sample")
Output = TypeVar("Output")


class ManagedModel(ABC, Generic[Sample, Output]):
    """A model served by a batched task.

    Subclasses implement :meth:`init_model` and :meth:`predict`. ``device`` is
    ``"cuda:0"`` style or ``"cpu"``, decided by the worker (see
    :mod:`celery_batching.deploy.devices`), and set before :meth:`init_model` runs.
    """

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.device = device
        self.options = options

    @abstractmethod
    def init_model(self) -> None:
        """Load weights onto ``self.device``. Called once per worker process."""

    @abstractmethod
    def predict(self, batch: list[Sample]) -> Sequence[Output]:
        """Return one output per sample of ``batch``, in the same order."""

    def validate(self, sample: Any) -> None:
        """Raise :class:`~celery_batching.errors.InvalidSample` for a bad sample.

        Called per sample before batching, so one bad input fails alone and
        never reaches the model. The default accepts everything.
        """

    def warmup_batch(self) -> list[Sample] | None:
        """A batch to run once before the worker reports ready, or ``None``."""
        return None
