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
unless the user enables it. A body may be compressed with any codec of
:mod:`kombu.compression` (the ``compression`` header).

``max_sample_bytes`` bounds the body as it travels and as it is decoded: a body
bigger than the limit on the wire is refused before anything else, and a
compressed one is decompressed only up to the limit (see :func:`decompress_body`),
so a decompression bomb costs the worker at most the limit in memory.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import json
import lzma
import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from celery import Task
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_iso8601
from kombu import compression as kombu_compression
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads
from kombu.utils.json import dumps as json_dumps, loads as json_loads

from . import fastjson
from .errors import (
    BatchingError,
    CompressionError,
    DecompressedSampleTooLarge,
    InvalidTaskCall,
    MalformedMessage,
    SampleTooLarge,
)
from .ids import new_id

#: Message header with the send time (seconds since the epoch): the worker's queue-wait metric.
SENT_AT_HEADER = "batching_sent_at"
#: Message header naming the channel the worker also publishes the result on.
REPLY_HEADER = "batching_reply_to"
#: Every reply channel starts with this; a worker publishes to no other channel.
CHANNEL_PREFIX = "celery-batching-reply-"
#: A reply channel whose listener also takes one JSON array of results per message (a batch's
#: results for that process, one PUBLISH). The marker rides in the channel's name, so a worker
#: batches only for listeners that said they read arrays, and an older worker still publishes
#: one result per message there (it sees an ordinary reply channel): safe in a rolling upgrade.
BATCH_CHANNEL_PREFIX = CHANNEL_PREFIX + "b-"
#: The remote-control command a worker answers with the batched queues it serves.
SERVING_COMMAND = "batched_queues"
# How much of an unreadable payload to quote in an error message.
_QUOTE_BYTES = 80
# The canvas fields of a protocol 2 body's embed that the worker acts on.
_EMBED_FIELDS = ("callbacks", "errbacks", "chain", "chord")


# saferepr({}): a batched call's kwargsrepr header, as Celery writes it.
NO_KWARGS_REPR = "{}"
_origins: dict[int, str] = {}


def _origin() -> str:
    """Celery's ``origin`` header for a client process (``gen<pid>@<host>``), once per process."""
    pid = os.getpid()
    origin = _origins.get(pid)
    if origin is None:
        origin = _origins[pid] = anon_nodename()
    return origin


def takes_batches(channel: str) -> bool:
    """Whether the listener on a reply channel reads one array of results per message."""
    return channel.startswith(BATCH_CHANNEL_PREFIX)


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
    serializer: str | None = None,
    compression: str | None = None,
    repr_maxlevels: int = 3,
) -> str | bytes:
    """The kombu Redis transport's JSON envelope of one Celery protocol 2 message.

    ``serializer`` defaults to the task's; ``compression`` (a name or content
    type from :mod:`kombu.compression`) is applied as kombu's producer does: to
    the serialized body, named in the ``compression`` header. With
    ``on_sent_event``, the message's ``task-sent`` event fields are handed to it.
    ``repr_maxlevels`` is the app's ``task_repr_maxlevels`` (Celery's default: 3).
    """
    amqp = task.app.amqp
    message = amqp.as_task_v2(
        task_id,
        task.name,
        (sample,),
        {},
        expires=expires,
        root_id=task_id,
        ignore_result=ignore_result,
        create_sent_event=on_sent_event is not None,
        reply_to=task.app.thread_oid,  # as Celery's apply_async sends it: the calling thread's oid
        # As Celery computes it, with the setting it would read per call passed in.
        argsrepr=saferepr((sample,), amqp.argsrepr_maxsize, maxlevels=repr_maxlevels),
        # What Celery would compute for these on every call, computed once (a call has no kwargs).
        kwargsrepr=NO_KWARGS_REPR,
        origin=_origin(),
    )
    if on_sent_event is not None and message.sent_event is not None:
        on_sent_event({**message.sent_event, "queue": queue, "exchange": "", "routing_key": queue})
    headers = message.headers
    headers[SENT_AT_HEADER] = time.time()
    if reply_channel is not None:
        headers[REPLY_HEADER] = reply_channel
    content_type, content_encoding, serialized = dumps(message.body, serializer=serializer or task.serializer)
    body: str | bytes = serialized  # binary serializers (pickle, msgpack) give bytes; kombu's stub says str
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    if compression:
        body, headers["compression"] = kombu_compression.compress(body, compression)
    properties = dict(message.properties)
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=new_id(),
    )
    return _envelope_json(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
    )


def _envelope_json(outer: dict[str, Any]) -> str | bytes:
    """The envelope's JSON: orjson's when it can write every value as kombu's would, else kombu's.

    The envelope holds what Celery's ``as_task_v2`` builds from a call (text,
    numbers, None, lists and dicts of them: the body is already base64 text), and
    orjson writes those as kombu's JSON decodes them, ten times faster; it lays
    them out without spaces, which every JSON reader (and the claim script) takes.
    Anything else it would write its own way (a UUID task id, a subclass of str) is kombu's.
    """
    if type(outer["headers"]["id"]) is str:
        try:
            return orjson.dumps(outer, option=fastjson.PASSTHROUGH_OPTIONS)
        except TypeError:
            pass
    return json_dumps(outer)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One message taken from a queue: its delivery tag and raw payload."""

    tag: str
    payload: bytes


@dataclass(slots=True)
class TaskMessage:
    """One claimed message, decoded as far as it could be (one per task in the hot path: slotted)."""

    claimed: Claimed
    #: When it was claimed (seconds since the epoch): the time Redis recorded the claim under.
    claimed_at: float
    task_id: str | None = None
    sample: Any = None
    error: BaseException | None = None
    expires: datetime | None = None
    #: Not to run before this (Celery's ``eta``/``countdown``), if the sender said.
    eta: datetime | None = None
    ignore_result: bool = False
    redelivered: bool = False
    group_id: str | None = None
    parent_id: str | None = None
    #: When the sender sent it (seconds since the epoch), if it said.
    sent_at: float | None = None
    #: The sender's reply channel (:mod:`~celery_batching.client.replies`), if it named a valid one.
    reply_channel: str | None = None
    #: The message's headers and properties as sent (Celery builds its request from them).
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    #: Canvas of the call: ``callbacks``, ``errbacks``, ``chain``, ``chord`` (Celery's body "embed").
    embed: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None

    def delivery_info(self) -> dict[str, Any]:
        """Where the message came from, as Celery's worker request records it."""
        delivery = self.properties.get("delivery_info") or {}
        return {
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key"),
            "priority": self.properties.get("priority"),
            "redelivered": self.redelivered,
        }

    @property
    def received_fields(self) -> dict[str, Any]:
        """The fields of the message's ``task-received`` event, as Celery's worker sends them."""
        headers = self.headers
        return {
            "uuid": self.task_id,
            "args": headers.get("argsrepr"),
            "kwargs": headers.get("kwargsrepr"),
            "root_id": headers.get("root_id"),
            "parent_id": self.parent_id,
            "retries": headers.get("retries", 0),
            "eta": headers.get("eta"),
            "expires": headers.get("expires"),
        }

    def expired(self) -> bool:
        """Whether its ``expires`` has passed (the clock is read only for a message that has one)."""
        return self.expires is not None and datetime.now(timezone.utc) >= self.expires

    @property
    def queue_wait(self) -> float | None:
        """Seconds from send to claim, when the sender stamped its send time."""
        return None if self.sent_at is None else self.claimed_at - self.sent_at


class MessageDecoder:
    """Turns raw payloads of one batched queue into :class:`TaskMessage` s."""

    def __init__(
        self, task_name: str, queue: str, accept: set[str] | None, max_sample_bytes: int | None, fast_json: bool = False
    ) -> None:
        self.task_name = task_name
        # The envelope as kombu's Redis transport reads it (kombu's JSON: a UUID task id stays one);
        # orjson for it and for JSON bodies (same decoded values as kombu's), when asked.
        self._loads_envelope = fastjson.loads if fast_json else json_loads
        self._fast_body = fast_json and (accept is None or fastjson.JSON_CONTENT_TYPE in accept)
        self.queue = queue
        self.accept = accept  # None: every content type (kombu's reading of it)
        self.max_sample_bytes = max_sample_bytes

    def decode(self, claimed: Claimed, claimed_at: float | None = None) -> TaskMessage:
        """``claimed`` as a message; ``claimed_at`` is when it was claimed (default: now)."""
        message = TaskMessage(claimed, time.time() if claimed_at is None else claimed_at)
        try:
            outer = self._loads_envelope(claimed.payload)
            if not isinstance(outer, dict):
                raise ValueError(f"a JSON {type(outer).__name__}, not an object")
        except Exception as exc:  # noqa: BLE001 - kombu's type hooks raise whatever their decoders raise
            message.error = MalformedMessage(
                f"queue {self.queue!r}: message is not a kombu JSON envelope ({type(exc).__name__}: {exc}): "
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
        message.headers, message.properties = headers, properties
        message.content_type, message.content_encoding = outer.get("content-type"), outer.get("content-encoding")
        message.task_id = str(headers.get("id")) if headers.get("id") else None
        message.redelivered = bool(headers.get("redelivered"))
        message.group_id = headers.get("group")
        message.parent_id = headers.get("parent_id")
        message.ignore_result = bool(headers.get("ignore_result"))
        message.sent_at = _seconds(headers.get(SENT_AT_HEADER))
        reply_channel = headers.get(REPLY_HEADER)
        message.reply_channel = reply_channel if is_reply_channel(reply_channel) else None
        try:
            message.expires = _parse_date("expires", headers.get("expires"))
            message.eta = _parse_date("eta", headers.get("eta"))
            message.sample, message.embed = self._sample(headers, outer, properties)
        except BatchingError as exc:
            message.error = exc
        except Exception as exc:  # noqa: BLE001 - every decoding problem fails this task alone
            message.error = MalformedMessage(
                f"{self.task_name}: cannot decode the task message from queue {self.queue!r} "
                f"({type(exc).__name__}: {exc})"
            )
        return message

    def _sample(
        self, headers: dict[str, Any], outer: dict[str, Any], properties: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The one sample and the canvas embed of the body."""
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
        codec = headers.get("compression")
        if codec:
            raw = decompress_body(self.task_name, raw, codec, self.max_sample_bytes)
        content_type = outer.get("content-type")
        try:
            encoding = outer.get("content-encoding", "utf-8")
            if self._fast_body and content_type == fastjson.JSON_CONTENT_TYPE and encoding == "utf-8":
                body = fastjson.loads(raw)
            else:
                # kombu reads any false content type as application/data; its stub wants a str
                body = loads(raw, content_type or "", encoding, accept=self.accept)
        except ContentDisallowed as exc:
            raise MalformedMessage(
                f"{self.task_name}: content type {content_type!r} is refused; this worker "
                f"accepts {sorted(self.accept or ())} (accept_content)"
            ) from exc
        if not (isinstance(body, (list, tuple)) and len(body) == 3):
            raise MalformedMessage(f"{self.task_name}: body is not [args, kwargs, embed] but {type(body).__name__}")
        args, kwargs, embed = body
        if not isinstance(args, (list, tuple)) or len(args) != 1 or kwargs:
            n_args = len(args) if isinstance(args, (list, tuple)) else 0
            raise InvalidTaskCall(self.task_name, n_args, sorted(kwargs) if isinstance(kwargs, dict) else [])
        return args[0], self._embed(embed)

    def _embed(self, embed: Any) -> dict[str, Any]:
        """The canvas fields, checked now so a broken one fails its task before it reaches the model."""
        if embed is None:
            return {}
        if not isinstance(embed, dict):
            raise MalformedMessage(f"{self.task_name}: the body's embed is a {type(embed).__name__}, not an object")
        for name in ("callbacks", "errbacks", "chain"):
            value = embed.get(name)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
                raise MalformedMessage(
                    f"{self.task_name}: the message's {name} must be a list of signatures, got {_shape(value)}"
                )
        chord = embed.get("chord")
        if chord is not None and not isinstance(chord, dict):
            raise MalformedMessage(f"{self.task_name}: the message's chord must be a signature, got {_shape(chord)}")
        return {name: embed[name] for name in _EMBED_FIELDS if embed.get(name) is not None}


def _shape(value: Any) -> str:
    """A short description of a bad value for an error message: its type, and its size when it has one."""
    size = f" of {len(value)}" if isinstance(value, (list, tuple, dict, str)) else ""
    return f"a {type(value).__name__}{size}: {repr(value)[:_QUOTE_BYTES]}"


def decompress_body(task_name: str, body: bytes, codec: Any, limit: int | None) -> bytes:
    """``body`` decompressed as its ``compression`` header says, never to more than ``limit`` bytes.

    kombu's registry decides what a codec name means (aliases, optional
    libraries, codecs the user registered). Its decoders decompress in one go,
    so a small bomb could fill the worker's memory; under a limit the body goes
    through the streaming twin of the decoder kombu would call, which stops as
    soon as the output passes the limit. A codec without such a twin is refused
    under a limit rather than decompressed blind.
    """
    if not isinstance(codec, str):
        raise CompressionError(task_name, repr(codec), "the compression header is not a string")
    try:
        decoder = kombu_compression.get_decoder(codec)
    except KeyError:
        raise CompressionError(
            task_name, codec, f"kombu knows no such codec; registered: {sorted(kombu_compression.encoders())}"
        ) from None
    try:
        if limit is None:
            return kombu_compression.decompress(body, codec)
        bounded = _BOUNDED_DECODERS.get(decoder)
        if bounded is None:
            raise CompressionError(
                task_name,
                codec,
                "it cannot be decompressed with a size bound; set max_sample_bytes=None on the task to accept it",
            )
        output = bounded(body, limit + 1)
    except BatchingError:
        raise
    except _TruncatedStream as exc:
        raise CompressionError(task_name, codec, str(exc)) from exc
    except Exception as exc:  # each codec library raises its own error types
        raise CompressionError(task_name, codec, f"{type(exc).__name__}: {exc}") from exc
    if len(output) > limit:
        raise DecompressedSampleTooLarge(task_name, len(body), limit)
    return output


class _TruncatedStream(ValueError):
    """The compressed stream ended before its end marker."""


def _streaming(new_decompressor: Callable[[], Any]) -> Callable[[bytes, int], bytes]:
    """A bounded decoder over a ``decompress(data, max_length)`` / ``eof`` decompressor (zlib, bz2, lzma, zstd)."""

    def decode(body: bytes, max_length: int) -> bytes:
        decompressor = new_decompressor()
        output: bytes = decompressor.decompress(body, max_length)
        if len(output) < max_length and not decompressor.eof:
            raise _TruncatedStream("the compressed data is truncated")
        return output

    return decode


def _bounded_decoders() -> dict[Callable[..., Any], Callable[[bytes, int], bytes]]:
    """kombu's one-shot decoder functions mapped to a bounded decoder of the same format."""
    decoders: dict[Callable[..., Any], Callable[[bytes, int], bytes]] = {
        # kombu's 'gzip' and 'zlib' both mean the zlib format (zlib.compress / zlib.decompress).
        zlib.decompress: _streaming(zlib.decompressobj),
        bz2.decompress: _streaming(bz2.BZ2Decompressor),
        lzma.decompress: _streaming(lzma.LZMADecompressor),
    }
    try:
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
        decoders[zstd.decompress] = _streaming(zstd.ZstdDecompressor)
    except ImportError:
        pass
    try:
        import brotli  # type: ignore[import-untyped]  # ships no types
    except ImportError:
        brotli = None
    if brotli is not None and hasattr(brotli.Decompressor, "is_finished"):  # brotli >= 1.2 can bound its output

        def brotli_decode(body: bytes, max_length: int) -> bytes:
            decompressor = brotli.Decompressor()
            output: bytes = decompressor.process(body, output_buffer_limit=max_length)
            if len(output) < max_length and not decompressor.is_finished():
                raise _TruncatedStream("the compressed data is truncated")
            return output

        decoders[brotli.decompress] = brotli_decode
    return decoders


_BOUNDED_DECODERS = _bounded_decoders()


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


def _parse_date(header: str, value: Any) -> datetime | None:
    """A date header (``expires``, ``eta``) as an aware datetime; naive ones are UTC, as Celery sends them."""
    if not value:
        return None
    try:
        when = maybe_iso8601(value)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"the {header} header {value!r} is not an ISO 8601 date") from exc
    if when is None:  # maybe_iso8601 passes None through; a true value never gives it
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when
