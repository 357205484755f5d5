"""The true depth of a batched queue, for autoscalers: read from Redis at scrape time.

A Redis list scaler counts one key. A batched queue is more: one list per
priority step (under the broker's ``global_keyprefix``), the messages workers
have claimed and not yet acknowledged, and those parked until their ETA.
:class:`DepthReader` reads all of it with two Lua script calls per queue in
one transaction, its cost independent of the depth, so a Prometheus scrape (of a worker, or of the
``celery-batching exporter`` when no worker runs) stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.transport.redis import Channel as RedisChannel

from ..protocol import SENT_AT_HEADER
from .claim import SKIPLIST_MEMBER, RedisQueue, lua_script


@dataclass(frozen=True)
class QueueDepth:
    """One queue's messages by state, and the send time of its oldest waiting one."""

    queue: str
    waiting: int
    claimed: int
    scheduled: int
    #: Epoch seconds; ``None`` when nothing waits, or the oldest messages carry no send time.
    oldest_sent_at: float | None

    def oldest_waiting_seconds(self, now: float) -> float:
        """How long the oldest waiting message has waited (0 when none waits)."""
        return max(now - self.oldest_sent_at, 0.0) if self.oldest_sent_at is not None else 0.0


class DepthReader:
    """Reads one queue's :class:`QueueDepth`: two script calls in one transaction."""

    def __init__(self, queue: RedisQueue, visibility_timeout: float) -> None:
        self.queue = queue
        self.visibility_timeout = visibility_timeout
        self._read = queue.client.register_script(lua_script("depth.lua"))
        self._keys = [queue.claimed_index_key, queue.scheduled_key, *queue.list_keys]

    def read(self, now: float | None = None) -> QueueDepth:
        # One transaction: the claims kombu restored leave the claimed count as they join the waiting one.
        with self.queue.client.pipeline(transaction=True) as pipe:
            self.queue.prune_claimed(self.visibility_timeout, now, pipe)
            self._read(keys=self._keys, args=[SKIPLIST_MEMBER], client=pipe)
            _, reply = pipe.execute()
        claimed, scheduled, lists = int(reply[0]), int(reply[1]), reply[2:]
        sent = [sent_at(tail) for tail in lists[1::2] if tail]
        known = [stamp for stamp in sent if stamp is not None]
        return QueueDepth(
            queue=self.queue.queue,
            waiting=sum(int(length) for length in lists[0::2]),
            claimed=claimed,
            scheduled=scheduled,
            oldest_sent_at=min(known) if known else None,
        )


def sent_at(payload: bytes) -> float | None:
    """The send time a kombu envelope's headers carry, if any (messages sent by plain Celery have none)."""
    try:
        envelope = json.loads(payload)
    except ValueError:
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    stamp = headers.get(SENT_AT_HEADER) if isinstance(headers, dict) else None
    return float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else None


def visibility_timeout(app: Any) -> float:
    """The broker's visibility timeout, as kombu's Redis channel reads it."""
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", RedisChannel.visibility_timeout))


def readers_for(app: Any, client: Any, queues: Sequence[str]) -> list[DepthReader]:
    """A reader per queue on ``client`` (a kombu Redis channel's client)."""
    timeout = visibility_timeout(app)
    options = app.conf.broker_transport_options
    return [DepthReader(RedisQueue(client, name, options), timeout) for name in queues]
