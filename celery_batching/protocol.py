"""The batched task message on the wire: header names, the envelope, decoding it.

Both sides import this module and nothing else to agree on the format. The
message is Celery's task protocol 2 inside kombu's Redis transport envelope,
so ordinary Celery clients and tools read and write it too; celery-batching
adds two optional headers (:data:`SENT_AT_HEADER`, :data:`REPLY_HEADER`).

Decoding accepts only protocol 2 (Celery >= 4) messages of the queue's own
batched task, with exactly one positional argument; anything else becomes a
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery import Task
from celery.utils.time import maybe_iso8601
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

from .errors import BatchingError, InvalidTaskCall, MalformedMessage, SampleTooLarge

#: Message header with the send time (seconds since the epoch): the worker's queue-wait metric.
SENT_AT_HEADER = "batching_sent_at"
#: Message header naming the channel the worker also publishes the result on.
REPLY_HEADER = "batching_reply_to"
#: Every reply channel starts with this; a worker publishes to no other channel.
CHANNEL_PREFIX = "celery-batching-reply-"
#: The remote-control command a worker answers with the batched queues it serves.
SERVING_COMMAND = "batched_queues"
# How much of an unreadable payload to quote in an error message.
_QUOTE_BYTES = 80


def is_reply_channel(value: Any) -> bool:
    """Whether a header value names a reply channel (anything else is ignored)."""
    return isinstance(value, str) and value.startswith(CHANNEL_PREFIX) and len(value) <= 100


def envelope(
    task: Task[Any, Any],
    task_id: str,
    sample: Any,
    queue: str,
    *,
    expires: Any,
    ignore_result: bool,
    reply_channel: str | None = None,
    on_sent_event: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """The kombu Redis transport's JSON envelope of one Celery protocol 2 message.

    With ``on_sent_event``, the message's ``task-sent`` event fields are handed to it.
    """
    message = task.app.amqp.as_task_v2(
        task_id,
        task.name,
        (sample,),
        {},
        expires=expires,
        root_id=task_id,
        ignore_result=ignore_result,
        create_sent_event=on_sent_event is not None,
    )
    if on_sent_event is not None and message.sent_event is not None:
        on_sent_event({**message.sent_event, "queue": queue, "exchange": "", "routing_key": queue})
    headers = message.headers
    headers[SENT_AT_HEADER] = time.time()
    if reply_channel is not None:
        headers[REPLY_HEADER] = reply_channel
    content_type, content_encoding, serialized = dumps(message.body, serializer=task.serializer)
    body: str | bytes = serialized  # binary serializers (pickle, msgpack) give bytes; kombu's stub says str
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    properties = dict(message.properties)
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=uuid(),
    )
    return json_dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
    )


@dataclass(frozen=True)
class Claimed:
    """One message taken from a queue: its delivery tag and raw payload."""

    tag: str
    payload: bytes


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
    #: The sender's reply channel (:mod:`~celery_batching.client.replies`), if it named a valid one.
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

    def __init__(self, task_name: str, queue: str, accept: set[str] | None, max_sample_bytes: int | None) -> None:
        self.task_name = task_name
        self.queue = queue
        self.accept = accept  # None: every content type (kombu's reading of it)
        self.max_sample_bytes = max_sample_bytes

    def decode(self, claimed: Claimed) -> TaskMessage:
        message = TaskMessage(claimed)
        try:
            outer = json.loads(claimed.payload)
            if not isinstance(outer, dict):
                raise ValueError(f"a JSON {type(outer).__name__}, not an object")
        except ValueError as exc:
            message.error = MalformedMessage(
                f"queue {self.queue!r}: message is not a kombu JSON envelope ({exc}): "
                f"{claimed.payload[:_QUOTE_BYTES]!r}"
            )
            return message
        headers = outer.get("headers")
        properties = outer.get("properties")
        if not isinstance(headers, dict) or not isinstance(properties, dict) or "task" not in headers:
            message.task_id = _protocol1_id(outer)
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
            message.sample = self._sample(headers, outer, properties)
        except BatchingError as exc:
            message.error = exc
        except Exception as exc:  # noqa: BLE001 - every decoding problem fails this task alone
            message.error = MalformedMessage(
                f"{self.task_name}: cannot decode the task message from queue {self.queue!r} "
                f"({type(exc).__name__}: {exc})"
            )
        return message

    def _sample(self, headers: dict[str, Any], outer: dict[str, Any], properties: dict[str, Any]) -> Any:
        name = headers["task"]
        if name != self.task_name:
            raise MalformedMessage(
                f"queue {self.queue!r} is served by the batched task {self.task_name!r}; "
                f"task {name!r} cannot run here: route it to another queue"
            )
        raw = outer.get("body", "")
        if properties.get("body_encoding") == "base64":
            try:
                raw = base64.b64decode(raw)
            except binascii.Error as exc:
                raise ValueError(f"the body is not valid base64 ({exc})") from exc
        elif isinstance(raw, str):
            raw = raw.encode()
        if self.max_sample_bytes is not None and len(raw) > self.max_sample_bytes:
            raise SampleTooLarge(self.task_name, len(raw), self.max_sample_bytes)
        content_type = outer.get("content-type")
        try:
            # kombu reads any false content type as application/data; its stub wants a str
            body = loads(raw, content_type or "", outer.get("content-encoding", "utf-8"), accept=self.accept)
        except ContentDisallowed as exc:
            raise MalformedMessage(
                f"{self.task_name}: content type {content_type!r} is refused; this worker "
                f"accepts {sorted(self.accept or ())} (accept_content)"
            ) from exc
        if not (isinstance(body, (list, tuple)) and len(body) == 3):
            raise MalformedMessage(f"{self.task_name}: body is not [args, kwargs, embed] but {type(body).__name__}")
        args, kwargs, _embed = body
        if not isinstance(args, (list, tuple)) or len(args) != 1 or kwargs:
            n_args = len(args) if isinstance(args, (list, tuple)) else 0
            raise InvalidTaskCall(self.task_name, n_args, sorted(kwargs) if isinstance(kwargs, dict) else [])
        return args[0]


def _protocol1_id(outer: dict[str, Any]) -> str | None:
    """The task id of a protocol 1 message (its body is a dict), to report the failure to."""
    try:
        raw = base64.b64decode(outer["body"])
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
    if expires is None:  # maybe_iso8601 passes None through; a true value never gives it
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return expires
