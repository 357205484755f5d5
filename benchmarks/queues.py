"""Hold a filled Redis queue out of the workers' reach while they start.

Workers start one after another (imports, model load), a second or more
apart, while a full queue drains in a fraction of that. So that the drain
workload measures draining and not start-up skew, the harness moves every
list of the broker db aside under :data:`HELD_PREFIX` in one atomic step,
starts the workers, waits until all are ready, and moves the lists back in
one more. Every queue compared lives in Redis lists (kombu's queues,
service-streamer's request queue), and Redis wakes a client blocked in
``BRPOP``/``BLPOP``/``BLMOVE`` when its key reappears. Nothing but lists is
moved: kombu's bindings are sets, its unacked messages a hash and a zset.
"""

from __future__ import annotations

import redis

# Where held lists wait: "bench-held:<name>".
HELD_PREFIX = "bench-held:"
# The db every system's queue lives in (the Celery apps' broker, service-streamer's default).
BROKER_DB = 0

# ARGV[1] the prefix. Renames every list of the db (KEYS inside a script is
# fine for a private server holding a few keys); returns the messages moved.
_HOLD = """
local messages = 0
for _, key in ipairs(redis.call('KEYS', '*')) do
    if string.sub(key, 1, #ARGV[1]) ~= ARGV[1] and redis.call('TYPE', key).ok == 'list' then
        messages = messages + redis.call('LLEN', key)
        redis.call('RENAME', key, ARGV[1] .. key)
    end
end
return messages
"""

# ARGV[1] the prefix. A list that was created again while held (a control
# reply) keeps its new items; the held, older ones go to its tail, where they
# are popped first. Returns the messages put back.
_RELEASE = """
local messages = 0
for _, held in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
    local key = string.sub(held, #ARGV[1] + 1)
    messages = messages + redis.call('LLEN', held)
    if redis.call('EXISTS', key) == 0 then
        redis.call('RENAME', held, key)
    else
        for _, item in ipairs(redis.call('LRANGE', held, 0, -1)) do
            redis.call('RPUSH', key, item)
        end
        redis.call('DEL', held)
    end
end
return messages
"""


class HeldQueues:
    """Moves the broker db's lists aside (:meth:`hold`) and back (:meth:`release`)."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(f"{redis_url}/{BROKER_DB}")

    def hold(self) -> int:
        """Move every list aside at once; returns the messages they hold."""
        return int(self._client.eval(_HOLD, 0, HELD_PREFIX))

    def release(self) -> int:
        """Move every held list back at once; returns the messages put back."""
        return int(self._client.eval(_RELEASE, 0, HELD_PREFIX))

    def close(self) -> None:
        self._client.close()
