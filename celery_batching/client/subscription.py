"""One channel's messages, read straight off a subscribed connection.

A reply listener reads a single channel and needs nothing of redis-py's
``PubSub`` but the bytes of each message; yet each message through it costs
a dict, a health check, and a pass through its parser's push handling, which
in redis-py 8 formats the whole message for a debug log (``str()`` of a batch
reply of tens of KiB) whether or not anyone logs it. Here hiredis parses the
socket's bytes directly.

The connection is redis-py's, from the client's own pool, so what it takes to
reach the server (TLS, a Unix socket, ACL credentials, Sentinel) is the
pool's business; only the reading after ``SUBSCRIBE`` is ours.
"""

from __future__ import annotations

import time
from typing import Any

import hiredis
import redis

from ..resp import CHECKOUT_ARGS, feed_from_socket, pack_command


class ChannelSubscription:
    """A connection subscribed to one channel, whose messages :meth:`next_message` hands over one by one."""

    def __init__(self, client: redis.Redis, channel: str, confirm_timeout: float) -> None:
        self._pool = client.connection_pool
        connection: Any = self._pool.get_connection(*CHECKOUT_ARGS)  # untyped in redis-py
        self._connection = connection
        self._reader = hiredis.Reader()
        try:
            connection.send_packed_command([pack_command("SUBSCRIBE", channel)])
            self._await_confirmation(channel.encode(), confirm_timeout)
        except BaseException:
            self.close()
            raise

    def next_message(self, timeout: float) -> bytes | None:
        """The data of the channel's next message, or ``None`` if none came within ``timeout`` seconds.

        Raises :class:`redis.ConnectionError` once the connection is lost.
        """
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_reply(deadline)
            if reply is None:
                return None
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                return reply[2]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._connection.disconnect()
        self._pool.release(self._connection)

    def _await_confirmation(self, channel: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (reply := self._next_reply(deadline)) is not None:
            if isinstance(reply, list) and reply[:2] == [b"subscribe", channel]:
                return
        raise redis.TimeoutError(f"Redis did not confirm the subscription to {channel.decode()}")

    def _next_reply(self, deadline: float) -> Any:
        """The next whole reply, or ``None`` at the deadline (a part read so far stays in the reader)."""
        while (reply := self._reader.gets()) is False:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock = self._connection._sock
            if sock is None:
                raise redis.ConnectionError("the reply channel's connection is closed")
            try:
                feed_from_socket(sock, self._reader, "on the reply channel", left)
            except TimeoutError:
                return None
        return reply
