"""celery-batching: batched model inference behind ordinary Celery tasks.

Callers use ``task.delay(sample)`` and ``AsyncResult.get()`` as with any
Celery task; each worker drains many such tasks at once and runs them as one
``predict(batch)``.
"""

from .client import gather, submit_many
from .errors import (
    BatchingError,
    BatchSizeMismatch,
    ConfigurationError,
    InvalidSample,
    InvalidTaskCall,
    MalformedMessage,
    ModelLoadError,
    ResultNotSerializable,
    SampleTooLarge,
)
from .hooks import BatchHooks
from .local import LocalStreamer
from .model import ManagedModel
from .policy import FlushPolicy
from .task import BatchedTask, batched

__all__ = [
    "BatchHooks",
    "BatchSizeMismatch",
    "BatchedTask",
    "BatchingError",
    "ConfigurationError",
    "FlushPolicy",
    "InvalidSample",
    "InvalidTaskCall",
    "LocalStreamer",
    "MalformedMessage",
    "ManagedModel",
    "ModelLoadError",
    "ResultNotSerializable",
    "SampleTooLarge",
    "batched",
    "gather",
    "submit_many",
]
