"""Wake the fetcher when any of a queue's lists (one per priority) gets a message.

Redis blocks on one list without taking from it (``BLMOVE k k RIGHT RIGHT``
moves the last element onto itself), but not on several: ``BLMPOP`` pops, and a
worker killed between that pop and recording the claim would lose the message.
So each list gets a watcher thread on a connection of its own, blocked in that
no-op move; the first one to return sets an event the fetcher waits on. A
priority 9 message on an idle worker is then claimed as fast as a priority 0
one, and the fetcher's wait can end at any time of its choosing (the next ETA,
shutdown) without a Redis round trip.

Watchers only block while the fetcher is idle (its last claim found nothing):
a list that stays non-empty while the fetcher is busy would otherwise wake
them again and again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis

logger = logging.getLogger(__name__)

# Longest one blocking wait lasts in Redis before a watcher looks around again.
BLOCK_SECONDS = 1.0
# Pause before a watcher retries while Redis is unreachable.
RETRY_PAUSE_SECONDS = 0.5
# How long stopping waits for the watchers (daemon threads) before leaving them behind.
STOP_DEADLINE_SECONDS = 5.0


def own_connections(pool: redis.ConnectionPool) -> Callable[[], redis.Redis]:
    """A factory of single-connection clients with ``pool``'s settings, on a pool of their own.

    Each watcher holds its connection in a blocking wait, so it must not come
    from kombu's pools (bounded, and shared with the claims and acks).
    """
    own = redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    return lambda: redis.Redis(connection_pool=own, single_connection_client=True)


class ArrivalWatch:
    """Watcher threads over ``keys``, and the event that tells the fetcher something arrived."""

    def __init__(self, connect: Callable[[], redis.Redis], keys: Sequence[str], name: str) -> None:
        self._connect = connect
        self._keys = list(keys)
        self._idle = threading.Event()
        self._arrived = threading.Event()
        self._interrupted = False
        self._stopping = threading.Event()
        self._clients: dict[str, redis.Redis] = {}
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._watch, args=(key,), name=f"watch:{name}:{i}", daemon=True)
            for i, key in enumerate(self._keys)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self, timeout: float) -> bool:
        """Block until a watched list has a message (or ``timeout``, or :meth:`interrupt`)."""
        self._arrived.clear()
        if self._interrupted:  # read after the clear: an interrupt is never lost
            return True
        self._idle.set()
        try:
            return self._arrived.wait(max(timeout, 0.0))
        finally:
            self._idle.clear()

    def interrupt(self) -> None:
        """End the fetcher's current wait and any later one (shutdown)."""
        self._interrupted = True
        self._arrived.set()

    def stop(self) -> None:
        """End every watcher: unblock its Redis wait, join it, close its connection."""
        self._stopping.set()
        self.interrupt()
        self._idle.set()
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                self._unblock()
                thread.join(0.05)
        for client in self._clients.values():
            client.close()

    def _unblock(self) -> None:
        """``CLIENT UNBLOCK`` every watcher's connection, so a shutdown waits for no timeout."""
        with self._lock:
            ids = list(self._ids.values())
        if not ids:
            return
        try:
            unblocker = self._connect()
            try:
                for client_id in ids:
                    unblocker.client_unblock(client_id)
            finally:
                unblocker.close()
        except redis.RedisError:
            pass  # the watcher ends by its own timeout

    def _watch(self, key: str) -> None:
        client: redis.Redis | None = None
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._connect()
                    client_id = client.client_id()
                    with self._lock:
                        self._clients[key], self._ids[key] = client, client_id
                if not self._idle.wait(BLOCK_SECONDS) or self._stopping.is_set():
                    continue
                # Redis takes fractional seconds here; redis-py's hint says int.
                if client.blmove(key, key, BLOCK_SECONDS, "RIGHT", "RIGHT") is not None:  # type: ignore[arg-type]
                    self._idle.clear()  # the fetcher claims; block again once it is idle again
                    self._arrived.set()
            except Exception as exc:  # a watcher must outlive any error
                if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                    logger.warning("watching %r: Redis unavailable (%s); retrying", key, exc)
                else:
                    logger.exception("watching %r: unexpected error; retrying", key)
                if client is not None:
                    client.close()
                client = None
                self._arrived.set()  # let the fetcher find out for itself
                self._stopping.wait(RETRY_PAUSE_SECONDS)
