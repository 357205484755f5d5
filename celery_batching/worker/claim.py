"""The worker's side of a kombu Redis queue: claim many, acknowledge, give back.

Kombu's Redis transport pops one message per round trip, and records it as
unacknowledged in a second step (a message popped by a worker killed in
between is gone). Here a Lua script pops up to a whole batch and records every
message in kombu's own ``unacked`` hash and index in the same atomic step, so
kombu's visibility-timeout restore (run by every Celery worker, and by us)
brings back anything a dead worker had claimed.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import redis

from ..protocol import Claimed

# kombu's defaults for its Redis transport; overridable by broker_transport_options.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua").joinpath(name).read_text()  # one step at a time on 3.10


class RedisQueue:
    """Claim / acknowledge / give back for one kombu Redis queue."""

    def __init__(self, client: redis.Redis, queue: str, transport_options: dict[str, Any] | None = None) -> None:
        options = transport_options or {}
        prefix = options.get("global_keyprefix", "")
        steps = sorted(options.get("priority_steps", DEFAULT_PRIORITY_STEPS))
        sep = options.get("sep", PRIORITY_SEPARATOR)
        self.client = client
        self.queue = queue
        self.list_keys = [prefix + queue] + [f"{prefix}{queue}{sep}{step}" for step in steps if step]
        self.unacked_key = prefix + options.get("unacked_key", "unacked")
        self.unacked_index_key = prefix + options.get("unacked_index_key", "unacked_index")
        self._claim = client.register_script(_lua("claim.lua"))
        self._give_back = client.register_script(_lua("give_back.lua"))

    def claim(self, count: int) -> list[Claimed]:
        """Take up to ``count`` messages, highest priority first, never blocking."""
        if count <= 0:
            return []
        flat = self._claim(keys=[self.unacked_key, self.unacked_index_key, *self.list_keys], args=[count, time.time()])
        return [Claimed(tag.decode(), payload) for tag, payload in zip(flat[::2], flat[1::2])]

    def wait(self, timeout: float) -> bool:
        """Block until the queue has a message (or ``timeout`` passes); take nothing.

        ``BLMOVE q q RIGHT RIGHT`` moves the last element onto itself: Redis's
        own blocking wait, with the message left where it was.
        """
        # Redis takes fractional seconds here; redis-py's hint says int.
        moved = self.client.blmove(self.list_keys[0], self.list_keys[0], timeout, "RIGHT", "RIGHT")  # type: ignore[arg-type]
        return moved is not None

    def ack(self, tags: list[str], pipe: redis.client.Pipeline | None = None) -> None:
        """Forget ``tags`` for good: their results are stored."""
        if not tags:
            return
        target = pipe if pipe is not None else self.client.pipeline(transaction=False)
        target.zrem(self.unacked_index_key, *tags)
        target.hdel(self.unacked_key, *tags)
        if pipe is None:
            target.execute()

    def give_back(self, claimed: list[Claimed]) -> int:
        """Put unstarted messages back at the head of the queue; returns how many."""
        if not claimed:
            return 0
        args: list[Any] = []
        for item in claimed:
            args += [item.tag, item.payload]
        return int(self._give_back(keys=[self.unacked_key, self.unacked_index_key, self.list_keys[0]], args=args))
