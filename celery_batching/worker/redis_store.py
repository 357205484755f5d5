"""A batch of encoded results into Redis: plain commands when in time, the store script otherwise.

Each result is ``SET`` under Celery's key and published on it (as Celery's
``RedisBackend.set`` does), and the sender's reply channel gets it too. Two
ways, with the same outcome for a result in time:

* **Plain commands**: one ``MULTI`` of ``SET`` and ``PUBLISH`` per result and
  one ``PUBLISH`` per reply channel, sent as one buffer. Redis copies every
  byte a script is given into Lua (about 2 µs per KiB on our test VM: 1.9 ms
  for a batch of 64 384-float results, where the same plain commands take
  0.2 ms), so the common case stays out of Lua.
* **The store script** (``lua/store_results.lua``) when a result may be
  refused: a store-once result (a redelivered message), or a batch close
  enough to its ``late_after`` that Redis must decide, as the write runs,
  whether another worker's result is there already.

A plain write can be decided by the worker only because its connection bounds
how long a write may stay in the network: ``TCP_USER_TIMEOUT`` drops the
connection (and the write with it) when sent data stays unacknowledged past
:data:`IN_FLIGHT_LIMIT_SECONDS`. A write sent more than
:data:`LATE_MARGIN_SECONDS` before its batch's ``late_after`` therefore reaches
Redis in time, or never. Where no such bound exists (a platform without
``TCP_USER_TIMEOUT``), every batch goes through the script.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from celery import Celery
from celery.backends.redis import RedisBackend
from kombu.utils.encoding import ensure_bytes

from ..client.replication import replica_wait
from ..protocol import takes_batches
from ..resp import OwnConnection, Script, database, pack_command, same_server

# Longest a write may stay unacknowledged in the network before its connection is dropped.
IN_FLIGHT_LIMIT_SECONDS = 20.0
# A batch sent this long before its late_after is written with plain commands: it arrives in time or
# not at all (the in-flight limit, with room for clocks that disagree by tens of seconds).
LATE_MARGIN_SECONDS = 3 * IN_FLIGHT_LIMIT_SECONDS


@dataclass
class Acknowledgement:
    """Packed commands acknowledging a batch's messages, for the store to run with the batch's results.

    Only for messages on the result backend's own server (see
    :meth:`RedisResultStore.takes_acks_of`): it saves the batch a round trip,
    and no message is acknowledged unless its result is stored. ``done`` says
    whether it ran; if not, the caller acknowledges the messages itself.
    """

    database: int
    commands: list[bytes]
    done: bool = False


class RedisResultStore:
    """Writes one batched task's encoded results to a Redis result backend."""

    def __init__(self, app: Celery, backend: RedisBackend, task_name: str) -> None:
        self.backend = backend
        self.task_name = task_name
        self.expires: float | None = backend.expires  # type: ignore[attr-defined]  # set by Backend.__init__
        source = resources.files(__package__).joinpath("lua").joinpath("store_results.lua").read_text()
        # Packed by us: a batch of vectors is a megabyte of arguments, which hiredis packs slowly.
        self._script = Script(source)
        self._script_in_pipeline = backend.client.register_script(source)
        # Every result key is this prefix and the task id: Celery's get_key_for_task, without its per-call work.
        self._key_prefix: bytes = ensure_bytes(backend.get_key_for_task("-"))[:-1]
        # With batching_wait_replicas: a batch counts as stored (and is acked) once replicas have it.
        self._wait = replica_wait(app)
        # JSON records can be joined into one array per reply channel; other serializers' cannot.
        self._joinable = backend.serializer == "json"  # type: ignore[attr-defined]
        self._link = _BoundedLink(backend.client.connection_pool)
        self._database = database(backend.client)

    def takes_acks_of(self, client: redis.Redis) -> bool:
        """Whether messages ``client`` reads may be acknowledged in the transaction of their results.

        Only on the same server, and not when results wait for replicas: a
        batch is acknowledged once replicas confirmed its results, after the
        transaction.
        """
        return self._wait is None and same_server(self.backend.client, client)

    def write(self, encoded: Sequence[tuple[Any, str | bytes]], ack: Acknowledgement | None = None) -> set[str]:
        """Store ``(TaskResult, payload)`` pairs; returns the ids of results refused (a final one was there).

        ``ack`` (of messages on this server) runs in the same transaction when
        the batch is written with plain commands, and is then marked done.
        """
        if not encoded:
            return set()
        if self._link.bounded and self._in_time(encoded):
            self._write_plain(encoded, ack)
            return set()
        return self._write_scripted(encoded)

    @staticmethod
    def _in_time(encoded: Sequence[tuple[Any, str | bytes]]) -> bool:
        """No result may be refused: none is store-once, and the batch is far from late."""
        if any(result.store_once for result, _ in encoded):
            return False
        late_after = _earliest_late_after(encoded)
        return late_after is None or time.time() + LATE_MARGIN_SECONDS < late_after

    def _write_plain(self, encoded: Sequence[tuple[Any, str | bytes]], ack: Acknowledgement | None) -> None:
        """``SET`` and ``PUBLISH`` per result, the reply channels' messages, then ``ack``, in one transaction.

        One buffer, one round trip. The transaction makes the batch atomic as
        the script is, and keeps a refused write unannounced: a ``SET`` Redis
        refuses as it queues it (out of memory) aborts the whole ``EXEC``, and
        with it the acknowledgement (the messages stay claimed, to be run again).
        """
        expiry = b"$2\r\nEX\r\n" + _bulk(b"%d" % int(self.expires)) if self.expires else b""
        set_head = b"*5\r\n$3\r\nSET\r\n" if expiry else b"*3\r\n$3\r\nSET\r\n"
        packed = [_MULTI]
        replies: dict[str, list[bytes]] = {}  # reply channel -> its payloads, in order
        for result, payload in encoded:
            key = self._key_prefix + result.task_id.encode()
            data = payload if isinstance(payload, bytes) else payload.encode()
            # Its SET and its PUBLISH on the key, in parts joined once: each payload is copied once per use.
            key_and_size = b"$%d\r\n%b\r\n$%d\r\n" % (len(key), key, len(data))
            packed += (set_head, key_and_size, data, b"\r\n", expiry, _PUBLISH_HEAD, key_and_size, data, b"\r\n")
            if result.reply_channel:
                replies.setdefault(result.reply_channel, []).append(data)
        queued = 2 * len(encoded)
        for channel, payloads in replies.items():
            messages = [_joined(payloads)] if self._joinable and takes_batches(channel) else payloads
            packed += [pack_command("PUBLISH", channel, message) for message in messages]
            queued += len(messages)
        if ack is not None:
            commands = ack.commands
            if ack.database != self._database:  # SELECT runs as the transaction does: none if it is aborted
                commands = [pack_command("SELECT", ack.database), *commands, pack_command("SELECT", self._database)]
            packed += commands
            queued += len(commands)
        packed.append(_EXEC)
        if self._wait is not None:
            packed.append(pack_command(*self._wait.command()))
        answers = self._link.run(b"".join(packed), 1 + queued + 1 + (1 if self._wait is not None else 0))
        if self._wait is not None:
            self._wait.check(answers[-1], f"{self.task_name}: storing {len(encoded)} result(s)")
        if ack is not None:
            ack.done = True

    def _write_scripted(self, encoded: Sequence[tuple[Any, str | bytes]]) -> set[str]:
        """One script call for the batch (see ``lua/store_results.lua`` for its arguments)."""
        keys: list[bytes] = []
        payloads: list[str | bytes] = []
        once = []
        channel_numbers: list[str] = []
        numbers: dict[str, int] = {}  # reply channel -> its number in the script's list (from 1)
        replies: dict[str, list[str | bytes]] = {}  # reply channel -> its payloads, in order
        late_after = _earliest_late_after(encoded)
        for result, payload in encoded:
            keys.append(self._key_prefix + result.task_id.encode())
            payloads.append(payload)
            once.append("1" if result.store_once else "0")
            channel = result.reply_channel
            if channel:
                channel_numbers.append(str(numbers.setdefault(channel, len(numbers) + 1)))
                replies.setdefault(channel, []).append(payload)
            else:
                channel_numbers.append("0")
        joinable = [self._joinable and takes_batches(channel) for channel in numbers]
        args: list[str | bytes | int] = [
            int(self.expires) if self.expires else 0,
            "" if late_after is None else repr(late_after),
            "".join(once),
            ",".join(channel_numbers),
            "".join("1" if joins else "0" for joins in joinable),
            *numbers,
            *(_joined(replies[channel]) if joins else b"" for channel, joins in zip(numbers, joinable)),
            *payloads,
        ]
        client = self.backend.client
        if self._wait is None:
            stored = self._script.run_on(client, keys, args)
        else:
            with client.pipeline(transaction=False) as pipe:
                self._script_in_pipeline(keys=keys, args=args, client=pipe)
                self._wait.append_to(pipe)  # one WAIT per batch: acked only once a replica has the results
                stored, confirmed = pipe.execute()
            self._wait.check(confirmed, f"{self.task_name}: storing {len(encoded)} result(s)")
        return {result.task_id for (result, _), kept in zip(encoded, stored) if not kept}


class _BoundedLink(OwnConnection):
    """The store's own connection, of the backend pool's kind, with the in-flight limit set on it."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        settings: dict[str, Any] = {}
        over_tcp = not issubclass(pool.connection_class, redis.UnixDomainSocketConnection)
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
        #: Whether a write on it arrives within the limit or never (a local socket has no network to wait in).
        self.bounded = not over_tcp or user_timeout is not None
        if over_tcp and user_timeout is not None:
            options = pool.connection_kwargs.get("socket_keepalive_options")
            settings["socket_keepalive"] = True  # redis-py sets its TCP options only with keepalive on
            settings["socket_keepalive_options"] = {
                **(options if isinstance(options, dict) else {}),
                user_timeout: int(IN_FLIGHT_LIMIT_SECONDS * 1000),
            }
        super().__init__(pool, **settings)


_MULTI = pack_command("MULTI")
_EXEC = pack_command("EXEC")
_PUBLISH_HEAD = b"*3\r\n$7\r\nPUBLISH\r\n"


def _earliest_late_after(encoded: Sequence[tuple[Any, str | bytes]]) -> float | None:
    """The batch's late_after: its earliest result's (past it, every result may have run elsewhere)."""
    return min((r.late_after for r, _ in encoded if r.late_after is not None), default=None)


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def _joined(payloads: Sequence[str | bytes]) -> bytes:
    """A channel's replies as the one message its listener reads: a JSON array (one reply: itself)."""
    encoded = [payload if isinstance(payload, bytes) else payload.encode() for payload in payloads]
    return encoded[0] if len(encoded) == 1 else b"[" + b",".join(encoded) + b"]"
