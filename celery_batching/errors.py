"""Exceptions of celery-batching.

Every error a caller can see through ``AsyncResult`` derives from
:class:`BatchingError`, and its message names the task and what to fix.
Each keeps its constructor arguments in ``args`` and formats its message in
``__str__``, so Celery's result backend rebuilds the same exception, with the
same message, on the client side (it calls ``cls(*args)``).
"""

from __future__ import annotations


class BatchingError(Exception):
    """Base class of every celery-batching error."""


class ConfigurationError(BatchingError, ValueError):
    """A batched task or worker was declared with an invalid option."""


class InvalidSample(BatchingError, ValueError):
    """A sample was rejected before it reached the model."""


class ModelLoadError(BatchingError, RuntimeError):
    """A worker's model failed to load or warm up; the worker stops."""


class MalformedMessage(BatchingError):
    """A message on a batched queue is not a Celery task message this worker can run."""


class BatchSizeMismatch(BatchingError):
    """``predict`` returned something else than one result per sample."""

    def __init__(self, task_name: str, expected: int, got: int | str) -> None:
        super().__init__(task_name, expected, got)

    def __str__(self) -> str:
        task_name, expected, got = self.args
        return (
            f"{task_name}: predict() returned {got} results for a batch of {expected} "
            f"samples; it must return a list with one result per sample, in order"
        )


class ResultNotSerializable(BatchingError):
    """A result could not be encoded by the task's result serializer."""

    def __init__(self, task_name: str, result_type: str, serializer: str, reason: str) -> None:
        super().__init__(task_name, result_type, serializer, reason)

    def __str__(self) -> str:
        task_name, result_type, serializer, reason = self.args
        return (
            f"{task_name}: a result of type {result_type} cannot be encoded with the "
            f"{serializer!r} serializer ({reason}); return plain lists, dicts, strings and numbers"
        )


class InvalidTaskCall(BatchingError, TypeError):
    """A batched task was called with other arguments than exactly one sample."""

    def __init__(self, task_name: str, n_args: int, kwarg_names: list[str]) -> None:
        super().__init__(task_name, n_args, kwarg_names)

    def __str__(self) -> str:
        task_name, n_args, kwarg_names = self.args
        short = task_name.rsplit(".", 1)[-1]
        return (
            f"{task_name} takes exactly one positional sample, got {n_args} positional "
            f"argument(s) and keyword(s) {kwarg_names}; call {short}.delay(sample)"
        )


class SampleTooLarge(InvalidSample):
    """An encoded sample exceeds the task's ``max_sample_bytes``."""

    def __init__(self, task_name: str, size: int, limit: int) -> None:
        super().__init__(task_name, size, limit)

    def __str__(self) -> str:
        task_name, size, limit = self.args
        return f"{task_name}: sample of {size} bytes exceeds max_sample_bytes={limit}"


class CompressionError(MalformedMessage):
    """A message body cannot be decompressed: its ``compression`` header names a codec kombu
    does not know, or another one than the body was compressed with."""

    def __init__(self, task_name: str, codec: str, reason: str) -> None:
        super().__init__(task_name, codec, reason)

    def __str__(self) -> str:
        task_name, codec, reason = self.args
        return f"{task_name}: cannot decompress the message body with compression {codec!r}: {reason}"


class DecompressedSampleTooLarge(SampleTooLarge):
    """A compressed sample grows past ``max_sample_bytes`` when decompressed (a decompression bomb
    is cut off there, never decompressed in full)."""

    def __init__(self, task_name: str, compressed_size: int, limit: int) -> None:
        InvalidSample.__init__(self, task_name, compressed_size, limit)

    def __str__(self) -> str:
        task_name, compressed_size, limit = self.args
        return (
            f"{task_name}: sample of {compressed_size} compressed bytes decompresses to more than "
            f"max_sample_bytes={limit} bytes"
        )


class QueueFull(BatchingError):
    """A batched queue is at its ``max_queue_depth``: the call is refused at once, nothing is sent."""

    def __init__(self, queue: str, depth: int, bound: int, incoming: int = 1) -> None:
        super().__init__(queue, depth, bound, incoming)

    def __str__(self) -> str:
        queue, depth, bound, incoming = self.args
        return (
            f"queue {queue!r} holds {depth} waiting message(s); {incoming} more would pass its "
            f"max_queue_depth={bound}; try again later, or add workers"
        )


class SendOutcomeUnknown(BatchingError):
    """The push of a call's messages was not confirmed, even after the publish retry policy.

    The messages may or may not be on the queue. Their task ids are fixed, so
    ``AsyncResult(task_id).get()`` still works if they are; a send of the same
    first task id again within the sent marker's life pushes nothing twice.
    """

    def __init__(self, task_name: str, task_ids: list[str], attempts: int, reason: str) -> None:
        super().__init__(task_name, task_ids, attempts, reason)

    def __str__(self) -> str:
        task_name, task_ids, attempts, reason = self.args
        shown = ", ".join(task_ids[:3]) + (f" and {len(task_ids) - 3} more" if len(task_ids) > 3 else "")
        return (
            f"{task_name}: sending task id(s) {shown} was not confirmed after {attempts} attempt(s) ({reason}); "
            f"they may be queued: get() their results, or send again with the same task_id (never pushed twice)"
        )


class NotReplicated(BatchingError):
    """Fewer replicas than ``batching_wait_replicas`` confirmed a write within its timeout.

    The write is on the master; a failover before a replica has it would drop it.
    """

    def __init__(self, what: str, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(what, confirmed, wanted, timeout_ms)

    def __str__(self) -> str:
        what, confirmed, wanted, timeout_ms = self.args
        return (
            f"{what}: {confirmed} of batching_wait_replicas={wanted} replica(s) confirmed the write within "
            f"{timeout_ms} ms; it is on the master but a failover now could lose it (check the replicas' "
            f"link, or raise batching_wait_timeout)"
        )
