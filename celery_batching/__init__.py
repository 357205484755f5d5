"""celery-batching: batched model inference behind ordinary Celery tasks.

Callers use ``task.delay(sample)`` and ``AsyncResult.get()`` as with any
Celery task; each worker drains many such tasks at once and runs them as one
``predict(batch)``.

The names below load lazily: ``import celery_batching.engine.local`` (the
in-process streamer) loads no Celery, kombu or Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "BatchHooks": "celery_batching.engine.hooks",
    "FlushPolicy": "celery_batching.engine.policy",
    "LocalStreamer": "celery_batching.engine.local",
    "ManagedModel": "celery_batching.models.base",
    "BatchedTask": "celery_batching.client.task",
    "batched": "celery_batching.client.task",
    "gather": "celery_batching.client.gather",
    "submit_many": "celery_batching.client.gather",
    **{
        name: "celery_batching.errors"
        for name in (
            "BatchSizeMismatch",
            "BatchingError",
            "CompressionError",
            "ConfigurationError",
            "DecompressedSampleTooLarge",
            "InvalidSample",
            "InvalidTaskCall",
            "MalformedMessage",
            "ModelLoadError",
            "NotReplicated",
            "QueueFull",
            "ResultNotSerializable",
            "SampleTooLarge",
            "SendOutcomeUnknown",
        )
    },
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # `X as X`: explicit re-exports, for type checkers
    from .client.gather import gather as gather, submit_many as submit_many
    from .client.task import BatchedTask as BatchedTask, batched as batched
    from .engine.hooks import BatchHooks as BatchHooks
    from .engine.local import LocalStreamer as LocalStreamer
    from .engine.policy import FlushPolicy as FlushPolicy
    from .errors import (
        BatchingError as BatchingError,
        BatchSizeMismatch as BatchSizeMismatch,
        CompressionError as CompressionError,
        ConfigurationError as ConfigurationError,
        DecompressedSampleTooLarge as DecompressedSampleTooLarge,
        InvalidSample as InvalidSample,
        InvalidTaskCall as InvalidTaskCall,
        MalformedMessage as MalformedMessage,
        ModelLoadError as ModelLoadError,
        NotReplicated as NotReplicated,
        QueueFull as QueueFull,
        ResultNotSerializable as ResultNotSerializable,
        SampleTooLarge as SampleTooLarge,
        SendOutcomeUnknown as SendOutcomeUnknown,
    )
    from .models.base import ManagedModel as ManagedModel


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_batching' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
