"""Decoding Celery task messages taken from a batched queue.

Only protocol 2 (Celery >= 4) messages of the queue's own batched task, with
exactly one positional argument, become samples; anything else becomes a
:class:`TaskMessage` carrying the error that fails it (or, with no task id to
report to, is just acknowledged and logged). The content type must be one the
worker accepts (``accept_content``; JSON by default), so pickle stays refused
unless the user enables it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.utils.time import maybe_iso8601
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads

from .broker import Claimed
from .errors import BatchingError, InvalidTaskCall, MalformedMessage, SampleTooLarge
from .publish import SENT_AT_HEADER
from .replies import REPLY_HEADER, is_reply_channel

# How much of an unreadable payload to quote in an error message.
_QUOTE_BYTES = 80


@dataclass
class TaskMessage:
    """One claimed message, decoded as far as it could be."""

    claimed: Claimed
    claimed_at: float = field(default_factory=time.time)
    task_id: str | None = None
    sample: Any = None
    error: BaseException | None = None
    expires: datetime | None = None
    ignore_result: bool = False
    redelivered: bool = False
    group_id: str | None = None
    parent_id: str | None = None
    #: When the sender sent it (seconds since the epoch), if it said.
    sent_at: float | None = None
    #: The sender's reply channel (:mod:`~celery_batching.replies`), if it named a valid one.
    reply_channel: str | None = None
    received_fields: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    @property
    def queue_wait(self) -> float | None:
        """Seconds from send to claim, when the sender stamped its send time."""
        return None if self.sent_at is None else self.claimed_at - self.sent_at


class MessageDecoder:
    """Turns raw payloads of one batched queue into :class:`TaskMessage` s."""

    def __init__(self, task_name: str, queue: str, accept: set[str], max_sample_bytes: int | None) -> None:
        self.task_name = task_name
        self.queue = queue
        self.accept = accept
        self.max_sample_bytes = max_sample_bytes

    def decode(self, claimed: Claimed) -> TaskMessage:
        message = TaskMessage(claimed)
        try:
            envelope = json.loads(claimed.payload)
            if not isinstance(envelope, dict):
                raise ValueError(f"a JSON {type(envelope).__name__}, not an object")
        except ValueError as exc:
            message.error = MalformedMessage(
                f"queue {self.queue!r}: message is not a kombu JSON envelope ({exc}): "
                f"{claimed.payload[:_QUOTE_BYTES]!r}"
            )
            return message
        headers = envelope.get("headers")
        properties = envelope.get("properties")
        if not isinstance(headers, dict) or not isinstance(properties, dict) or "task" not in headers:
            message.task_id = _protocol1_id(envelope)
            message.error = MalformedMessage(
                f"queue {self.queue!r}: not a Celery task protocol 2 message "
                f"(headers: {sorted(headers) if isinstance(headers, dict) else type(headers).__name__}); "
                f"send it with Celery >= 4"
            )
            return message
        message.task_id = str(headers.get("id")) if headers.get("id") else None
        message.redelivered = bool(headers.get("redelivered"))
        message.group_id = headers.get("group")
        message.parent_id = headers.get("parent_id")
        message.ignore_result = bool(headers.get("ignore_result"))
        message.sent_at = _seconds(headers.get(SENT_AT_HEADER))
        reply_channel = headers.get(REPLY_HEADER)
        message.reply_channel = reply_channel if is_reply_channel(reply_channel) else None
        message.received_fields = {
            "uuid": message.task_id,
            "args": headers.get("argsrepr"),
            "kwargs": headers.get("kwargsrepr"),
            "root_id": headers.get("root_id"),
            "parent_id": message.parent_id,
            "retries": headers.get("retries", 0),
            "eta": headers.get("eta"),
            "expires": headers.get("expires"),
        }
        try:
            message.expires = _parse_expires(headers.get("expires"))
            message.sample = self._sample(headers, envelope, properties)
        except BatchingError as exc:
            message.error = exc
        except Exception as exc:  # noqa: BLE001 - every decoding problem fails this task alone
            message.error = MalformedMessage(
                f"{self.task_name}: cannot decode the task message from queue {self.queue!r} "
                f"({type(exc).__name__}: {exc})"
            )
        return message

    def _sample(self, headers: dict[str, Any], envelope: dict[str, Any], properties: dict[str, Any]) -> Any:
        name = headers["task"]
        if name != self.task_name:
            raise MalformedMessage(
                f"queue {self.queue!r} is served by the batched task {self.task_name!r}; "
                f"task {name!r} cannot run here: route it to another queue"
            )
        raw = envelope.get("body", "")
        if properties.get("body_encoding") == "base64":
            try:
                raw = base64.b64decode(raw)
            except binascii.Error as exc:
                raise ValueError(f"the body is not valid base64 ({exc})") from exc
        elif isinstance(raw, str):
            raw = raw.encode()
        if self.max_sample_bytes is not None and len(raw) > self.max_sample_bytes:
            raise SampleTooLarge(self.task_name, len(raw), self.max_sample_bytes)
        content_type = envelope.get("content-type")
        try:
            body = loads(raw, content_type, envelope.get("content-encoding", "utf-8"), accept=self.accept)
        except ContentDisallowed as exc:
            raise MalformedMessage(
                f"{self.task_name}: content type {content_type!r} is refused; this worker "
                f"accepts {sorted(self.accept)} (accept_content)"
            ) from exc
        if not (isinstance(body, (list, tuple)) and len(body) == 3):
            raise MalformedMessage(f"{self.task_name}: body is not [args, kwargs, embed] but {type(body).__name__}")
        args, kwargs, _embed = body
        if not isinstance(args, (list, tuple)) or len(args) != 1 or kwargs:
            n_args = len(args) if isinstance(args, (list, tuple)) else 0
            raise InvalidTaskCall(self.task_name, n_args, sorted(kwargs) if isinstance(kwargs, dict) else [])
        return args[0]


def _protocol1_id(envelope: dict[str, Any]) -> str | None:
    """The task id of a protocol 1 message (its body is a dict), to report the failure to."""
    try:
        raw = base64.b64decode(envelope["body"])
        body = json.loads(raw)
        return str(body["id"]) if isinstance(body, dict) and body.get("id") else None
    except Exception:  # noqa: BLE001 - best effort: no id means nobody to tell
        return None


def _seconds(value: Any) -> float | None:
    """A time stamp header's value, or ``None`` if it is not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _parse_expires(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        expires = maybe_iso8601(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the expires header {value!r} is not an ISO 8601 date") from exc
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return expires
