"""Script calls and pipelined commands written to Redis as one buffer of our own packing.

redis-py packs a command with hiredis when hiredis is installed, and hiredis's
``pack_command`` costs about 2 µs per KiB of arguments: a batch of 64
384-float results (some 960 KiB with the copy its reply channel gets) took
about 2 ms to pack, while one ``bytes.join`` of the same takes 0.1 ms. A small
command costs a few µs either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis

Arg = str | bytes | int
# redis-py before 5.3 must be told which command a pooled connection is for; later ones warn when told.
_CHECKOUT_ARGS: tuple[str, ...] = (
    () if tuple(int(part) for part in redis.__version__.split(".")[:2]) >= (5, 3) else ("EVALSHA",)
)


def pack_command(*args: Arg) -> bytes:
    """``args`` as one RESP array of bulk strings, as Redis reads a command (str as UTF-8, int in decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def send_packed(connection: Any, packed: bytes, commands: int) -> list[Any]:
    """The answers to the ``commands`` commands in ``packed``, sent as one buffer on a redis-py connection.

    An error answer raises, with the answers after it unread: the caller must
    drop the connection.
    """
    connection.send_packed_command([packed])
    return [connection.read_response() for _ in range(commands)]


class Script:
    """A Lua script run with ``EVALSHA`` on a connection in hand, loaded by ``EVAL`` when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, connection: Any, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Its answer on ``connection`` (a redis-py connection: untyped there); a restarted Redis gets the source."""
        try:
            connection.send_packed_command([pack_command("EVALSHA", self.sha, len(keys), *keys, *args)])
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            connection.send_packed_command([pack_command("EVAL", self.source, len(keys), *keys, *args)])
            return connection.read_response()

    def run_on(self, client: redis.Redis, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Its answer on a connection of ``client``'s pool; one whose use raised is dropped."""
        pool = client.connection_pool
        connection: Any = pool.get_connection(*_CHECKOUT_ARGS)  # redis-py connections are untyped there
        try:
            return self.run(connection, keys, args)
        except BaseException:
            connection.disconnect()  # whatever it was in the middle of is no reply to anything later
            raise
        finally:
            pool.release(connection)
