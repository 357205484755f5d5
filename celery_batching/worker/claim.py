"""The worker's side of a kombu Redis queue: claim many, acknowledge, give back, schedule.

Kombu's Redis transport pops one message per round trip, and records it as
unacknowledged in a second step (a message popped by a worker killed in
between is gone). Here a Lua script pops up to a whole batch and records every
message in kombu's own ``unacked`` hash and index in the same atomic step, so
kombu's visibility-timeout restore (run by every Celery worker, and by us)
brings back anything a dead worker had claimed.

A message with a future ETA is parked in the queue's scheduled set (a zset of
delivery tags scored by ETA, beside a hash of their payloads), moved there out
of the unacked bookkeeping in one atomic step; the claim script takes it back
once due. It is never out of Redis's sight, and never held past the visibility
timeout (which would make kombu restore it and run it twice).

Each queue also keeps its own index of claimed tags beside kombu's shared
one, so its claimed count is one ZCARD (:mod:`~celery_batching.worker.depth`).
Both hold one more member, :data:`SKIPLIST_MEMBER`, scored +inf so that no
restore takes it, which keeps them fast to insert into.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from ..protocol import Claimed
from ..resp import OwnConnection, Script, pack_command, run_packed_on

# kombu's defaults for its Redis transport; overridable by broker_transport_options.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"
# Suffixes (after the priority separator) of a queue's scheduled index and messages.
SCHEDULED_SUFFIX = "scheduled"
SCHEDULED_MESSAGES_SUFFIX = "scheduled_messages"
# Suffix of a queue's own index of claimed tags (kombu's unacked index holds every queue's).
CLAIMED_SUFFIX = "claimed"
# Kept at +inf in kombu's unacked index and the queue's claimed index: longer than Redis's
# zset-max-listpack-value (64), it keeps them skiplists, where a listpack inserts a batch in quadratic time.
SKIPLIST_MEMBER = "celery-batching: a member too long for a listpack keeps this index a skiplist"
# Overdue claims (older than the visibility timeout) checked against kombu's
# unacked hash per prune; bounds its cost when many are overdue at once.
PRUNE_CHECKS = 1000
#: How many commands acknowledging a batch takes (see RedisQueue.ack_commands).
ACK_COMMANDS = 3


def lua_script(name: str) -> str:
    """The text of one of the package's Lua scripts (``lua/<name>``)."""
    return resources.files(__package__).joinpath("lua").joinpath(name).read_text()  # one step at a time on 3.10


@dataclass(frozen=True)
class Claim:
    """What one claim took, and when the next scheduled message falls due (epoch seconds)."""

    messages: list[Claimed]
    next_eta: float | None


@dataclass(frozen=True)
class Scheduled:
    """A parked message: its delivery tag, ETA (epoch seconds) and raw payload."""

    tag: str
    eta: float
    payload: bytes


class RedisQueue:
    """Claim / acknowledge / give back / schedule for one kombu Redis queue."""

    def __init__(self, client: redis.Redis, queue: str, transport_options: dict[str, Any] | None = None) -> None:
        options = transport_options or {}
        prefix = options.get("global_keyprefix", "")
        steps = sorted(options.get("priority_steps", DEFAULT_PRIORITY_STEPS))
        sep = options.get("sep", PRIORITY_SEPARATOR)
        # A plain client on the same connections: kombu's prefixing client (global_keyprefix)
        # would prefix some of the keys below a second time.
        self.client = redis.Redis(connection_pool=client.connection_pool)
        self.queue = queue
        self.list_keys = [prefix + queue] + [f"{prefix}{queue}{sep}{step}" for step in steps if step]
        self.unacked_key = prefix + options.get("unacked_key", "unacked")
        self.unacked_index_key = prefix + options.get("unacked_index_key", "unacked_index")
        self.scheduled_key = f"{prefix}{queue}{sep}{SCHEDULED_SUFFIX}"
        self.scheduled_messages_key = f"{prefix}{queue}{sep}{SCHEDULED_MESSAGES_SUFFIX}"
        self.claimed_index_key = f"{prefix}{queue}{sep}{CLAIMED_SUFFIX}"
        self._bookkeeping = [
            self.unacked_key,
            self.unacked_index_key,
            self.scheduled_key,
            self.scheduled_messages_key,
            self.claimed_index_key,
        ]
        # Claimed on a connection of its own: the fetcher claims after every batch, and a pooled checkout
        # plus redis-py's command path cost more Python than the claim's reply takes to parse.
        self._claim = Script(lua_script("claim.lua"))
        self._claim_connection = OwnConnection(self.client.connection_pool)
        self._give_back = self.client.register_script(lua_script("give_back.lua"))
        self._schedule = self.client.register_script(lua_script("schedule.lua"))
        self._prune_claimed = self.client.register_script(lua_script("prune_claimed.lua"))

    def claim(self, count: int, now: float | None = None) -> Claim:
        """Take up to ``count`` messages, due scheduled ones first, then highest priority first; never blocks."""
        now = time.time() if now is None else now
        args: list[str | int] = [max(count, 0), repr(now), SKIPLIST_MEMBER]
        flat = self._claim_connection.run_script(self._claim, [*self._bookkeeping, *self.list_keys], args)
        messages = [Claimed(tag.decode(), payload) for tag, payload in zip(flat[1::2], flat[2::2])]
        return Claim(messages, _score(flat[0]))

    def schedule(self, parked: Sequence[tuple[Claimed, float]]) -> float | None:
        """Park claimed messages until their ETA (epoch seconds); returns the earliest ETA scheduled."""
        args: list[Any] = []
        for item, eta in parked:
            args += [item.tag, repr(eta), item.payload]
        return _score(self._schedule(keys=self._bookkeeping, args=args))

    def scheduled(self, limit: int = 1000) -> list[Scheduled]:
        """The parked messages, earliest first (for remote control: cheap, read-only).

        The set belongs to the queue, not to one worker: every worker of the
        queue sees the same list, and whichever has room when one falls due runs it.
        """
        index: list[tuple[bytes, float]] = self.client.zrange(self.scheduled_key, 0, limit - 1, withscores=True)  # type: ignore[assignment]  # redis-py's hint misses withscores
        if not index:
            return []
        payloads: list[bytes | None] = self.client.hmget(self.scheduled_messages_key, [tag for tag, _ in index])  # type: ignore[assignment]
        # A message claimed back between the two reads is simply no longer listed.
        return [
            Scheduled(tag.decode(), eta, payload) for (tag, eta), payload in zip(index, payloads) if payload is not None
        ]

    def ack(self, tags: list[str]) -> None:
        """Forget ``tags`` for good: their results are stored."""
        if tags:
            run_packed_on(self.client, b"".join(self.ack_commands(tags)), ACK_COMMANDS)

    def ack_commands(self, tags: list[str]) -> list[bytes]:
        """The :data:`ACK_COMMANDS` commands of :meth:`ack`, packed, for a transaction on this queue's database."""
        return [
            pack_command("ZREM", self.unacked_index_key, *tags),
            pack_command("ZREM", self.claimed_index_key, *tags),
            pack_command("HDEL", self.unacked_key, *tags),
        ]

    def prune_claimed(self, visibility_timeout: float, now: float | None = None, pipe: Any = None) -> Any:
        """Forget claims kombu's restore took back (after a worker died); returns how many, or queues it on ``pipe``.

        Run after each restore, and before each depth read, so the queue's
        claimed index neither grows with restored claims nor counts them.
        """
        now = time.time() if now is None else now
        keys = [self.unacked_key, self.claimed_index_key]
        return self._prune_claimed(keys=keys, args=[repr(now - visibility_timeout), PRUNE_CHECKS], client=pipe)

    def give_back(self, claimed: list[Claimed]) -> int:
        """Put unstarted messages back at the head of the queue; returns how many."""
        if not claimed:
            return 0
        args: list[Any] = []
        for item in claimed:
            args += [item.tag, item.payload]
        keys = [self.unacked_key, self.unacked_index_key, self.list_keys[0], self.claimed_index_key]
        return int(self._give_back(keys=keys, args=args))


def _score(value: bytes | str | None) -> float | None:
    """A zset score as the scripts return it ('' for none)."""
    return float(value) if value else None
