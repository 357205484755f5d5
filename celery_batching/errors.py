"""Exceptions of celery-batching.

Every error a caller can see through ``AsyncResult`` derives from
:class:`BatchingError`, and its message names the task and what to fix.
They live in one importable module so the result backend can rebuild them
on the client side by module and class name.
"""

from __future__ import annotations


class BatchingError(Exception):
    """Base class of every celery-batching error."""


class ConfigurationError(BatchingError, ValueError):
    """A batched task or worker was declared with an invalid option."""


class BatchSizeMismatch(BatchingError):
    """``predict`` returned a different number of results than it got samples."""

    def __init__(self, task_name: str, expected: int, got: int) -> None:
        super().__init__(
            f"{task_name}: predict() returned {got} results for a batch of "
            f"{expected} samples; it must return one result per sample, in order"
        )


class ResultNotSerializable(BatchingError):
    """A result could not be encoded by the task's result serializer."""

    def __init__(self, task_name: str, result_type: str, serializer: str, reason: str) -> None:
        super().__init__(
            f"{task_name}: result of type {result_type} cannot be encoded with "
            f"the {serializer!r} serializer ({reason}); return plain lists, "
            f"dicts, strings and numbers"
        )


class InvalidSample(BatchingError, ValueError):
    """A sample was rejected before it reached the model."""


class InvalidTaskCall(BatchingError, TypeError):
    """A batched task was called with other arguments than one sample."""

    def __init__(self, task_name: str, args: object, kwargs: object) -> None:
        n_args = len(args) if isinstance(args, (list, tuple)) else type(args).__name__
        super().__init__(
            f"{task_name} takes exactly one positional sample, got "
            f"args of length {n_args} and kwargs {sorted(kwargs) if isinstance(kwargs, dict) else kwargs!r}; "
            f"call {task_name.rsplit('.', 1)[-1]}.delay(sample)"
        )


class MalformedMessage(BatchingError):
    """A message on a batched queue is not a Celery task message we can run."""


class ModelLoadError(BatchingError, RuntimeError):
    """A worker's model failed to load or warm up; the worker stops."""
