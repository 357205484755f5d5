"""Script calls and pipelined commands written to Redis as one buffer of our own packing.

redis-py packs a command with hiredis when hiredis is installed, and hiredis's
``pack_command`` costs about 2 µs per KiB of arguments: a batch of 64
384-float results (some 960 KiB with the copy its reply channel gets) took
about 2 ms to pack, while one ``bytes.join`` of the same takes 0.1 ms. A small
command costs a few µs either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hiredis
import redis

# Bytes asked of a socket per read: a batch's answers are small, a subscription's messages tens of KiB.
READ_SIZE = 1 << 18
Arg = str | bytes | int
# redis-py before 5.3 must be told which command a pooled connection is for; later ones warn when told.
CHECKOUT_ARGS: tuple[str, ...] = (
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

    The answers are parsed by a hiredis reader of our own, straight off the
    connection's socket: through redis-py, each answer costs some 2 µs of
    Python, and a batch's transaction has two per result. The first error
    answer raises once all are read, as the exception redis-py would raise
    (``OutOfMemoryError``, ``NoScriptError``...); the connection stays usable.
    """
    connection.send_packed_command([packed])
    reader = hiredis.Reader(protocolError=redis.InvalidResponse, replyError=connection._parser.parse_error)
    sock = connection._sock
    answers: list[Any] = []
    while len(answers) < commands:
        answer = reader.gets()
        if answer is not False:
            answers.append(answer)
            continue
        try:
            feed_from_socket(sock, reader, f"after {len(answers)} of {commands} answers")
        except TimeoutError as exc:
            raise redis.TimeoutError(f"Redis answered {len(answers)} of {commands} commands in time") from exc
    error = next((answer for answer in answers if isinstance(answer, redis.ResponseError)), None)
    if error is not None:
        raise error
    return answers


def feed_from_socket(sock: Any, reader: hiredis.Reader, where: str, timeout: float | None = None) -> None:
    """Give ``reader`` what one read of ``sock`` brings, waiting ``timeout`` seconds (default: the socket's).

    A read past the timeout raises the builtin :class:`TimeoutError`, for
    the caller to decide on; a lost connection raises
    :class:`redis.ConnectionError` naming ``where`` the reading was.
    """
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        data = sock.recv(READ_SIZE)
    except TimeoutError:
        raise
    except OSError as exc:
        raise redis.ConnectionError(f"reading from Redis {where}: {exc}") from exc
    if not data:
        raise redis.ConnectionError(f"Redis closed the connection {where}")
    reader.feed(data)


@contextlib.contextmanager
def pooled_connection(client: redis.Redis) -> Iterator[Any]:
    """A connection of ``client``'s pool (untyped in redis-py), given back after; one whose use raised is dropped."""
    pool = client.connection_pool
    connection: Any = pool.get_connection(*CHECKOUT_ARGS)
    try:
        yield connection
    except BaseException:
        connection.disconnect()  # whatever it was in the middle of is no reply to anything later
        raise
    finally:
        pool.release(connection)


def run_packed_on(client: redis.Redis, packed: bytes, commands: int) -> list[Any]:
    """:func:`send_packed` on a connection of ``client``'s pool."""
    with pooled_connection(client) as connection:
        return send_packed(connection, packed, commands)


class OwnConnection:
    """A connection of a pool's kind that is nobody else's: made when first needed, used under a lock.

    A pooled connection is checked for stray data at every checkout (a poll,
    and a read that finds nothing), a cost a connection only we use never
    needs: one whose use raised is dropped, since whatever it was in the middle
    of is no reply to anything later. ``settings`` override the pool's.
    """

    def __init__(self, pool: redis.ConnectionPool, **settings: Any) -> None:
        kwargs = {**pool.connection_kwargs, **settings}
        self._make: Callable[[], Any] = lambda: pool.connection_class(**kwargs)
        self._connection: Any = None
        self._lock = threading.Lock()

    def run(self, packed: bytes, commands: int) -> list[Any]:
        """The answers to the ``commands`` commands in ``packed`` (see :func:`send_packed`)."""
        answers: list[Any] = self._use(lambda connection: send_packed(connection, packed, commands))
        return answers

    def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """``script``'s answer."""
        return self._use(lambda connection: script.run(connection, keys, args))

    def _use(self, action: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self._connection is None:
                connection = self._make()
                # Connected first, as a pool does: a command on an unconnected Sentinel-managed connection
                # skips its lookup of the master in redis-py 8 (and tries localhost:6379).
                connection.connect()
                self._connection = connection
            try:
                return action(self._connection)
            except BaseException:
                self._connection.disconnect()
                self._connection = None  # the next use connects afresh (to a new master, after a failover)
                raise


# What names a Redis server in a pool's connection settings (the database is not part of it).
_SERVER_FIELDS = ("host", "port", "path", "username", "password")


def same_server(first: redis.Redis, second: redis.Redis) -> bool:
    """Whether two clients reach the same Redis server the same way, so one transaction may hold commands of both.

    Only plain pools with the same address and credentials count: a Sentinel
    pool finds its master as it goes, and may find it elsewhere than another's.
    """
    pools = (first.connection_pool, second.connection_pool)
    if any(type(pool) is not redis.ConnectionPool for pool in pools):
        return False
    kinds = [
        (
            issubclass(pool.connection_class, redis.SSLConnection),
            issubclass(pool.connection_class, redis.UnixDomainSocketConnection),
        )
        for pool in pools
    ]
    settings = [tuple(pool.connection_kwargs.get(field) for field in _SERVER_FIELDS) for pool in pools]
    return kinds[0] == kinds[1] and settings[0] == settings[1]


def database(client: redis.Redis) -> int:
    """The database number ``client``'s connections select."""
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


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
        """Its answer on a connection of ``client``'s pool."""
        with pooled_connection(client) as connection:
            return self.run(connection, keys, args)
