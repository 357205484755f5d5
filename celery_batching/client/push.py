"""The fast path's one round trip to the broker: push a call's messages at most once, within the queue's bound.

One Lua script (``lua/push.lua``) checks the queue's depth against its
``max_queue_depth``, pushes the call's messages, and writes a short-lived sent
marker named after the call's first task id, in one atomic step. A retry of the
call after a timeout (the push may have landed, its reply was lost) finds the
marker and pushes nothing, so retrying is safe: the publish retry policy of
Celery (``task_publish_retry``, ``task_publish_retry_policy``) is followed here,
never by resending through Celery's own path.

The pushes of a process share a bounded set of connections of their own
(kombu's ``max_connections``, 10 by default); a thread that finds them all busy
waits for one instead of failing with redis-py's "Too many connections". A push
is one ``EVALSHA`` written and read on such a connection directly: redis-py's
pool checks a connection for stray data at every checkout (a poll and a read
that finds nothing, about a third of a push's client CPU), which a connection
used only here never has, since redis-py drops one whose read failed.

With ``batching_wait_replicas``, the push's ``WAIT`` rides in the same round
trip (:mod:`~celery_batching.client.replication`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import redis
from celery import Celery
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.functional import retry_over_time

from ..errors import QueueFull, SendOutcomeUnknown
from .per_process import PerProcess
from .replication import replica_wait

#: Where sent markers live (after the broker's ``global_keyprefix``), one per call.
SENT_MARKER_PREFIX = "celery-batching:sent:"
# A marker outlives the retry window by this much, so a late retry still finds it.
MARKER_MARGIN_SECONDS = 10
# How long a push waits for a free connection when all of the process's are busy.
CONNECTION_WAIT_SECONDS = 10.0
# kombu's defaults for its Redis transport; overridable by broker_transport_options.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"
# Script status codes (see lua/push.lua).
_PUSHED, _ALREADY_PUSHED, _FULL = 1, 0, -1
# What a push may fail with while the broker is unreachable or slow; retried under the policy.
_RETRIED = (redis.ConnectionError, redis.TimeoutError)


def marker_seconds(retry: bool, policy: Mapping[str, Any], socket_timeout: float | None) -> int:
    """How long a call's sent marker must live: longer than every retry of the call can take."""
    retries = int(policy.get("max_retries") or 0) if retry else 0
    attempts = retries + 1
    window = attempts * (socket_timeout or 0.0) + retries * float(policy.get("interval_max", 1.0))
    return math.ceil(window) + MARKER_MARGIN_SECONDS


def queue_lists(queue: str, transport_options: Mapping[str, Any]) -> list[str]:
    """The Redis lists of a kombu queue, its own first, then its priority sub-lists, with the key prefix."""
    prefix = transport_options.get("global_keyprefix", "")
    steps = sorted(transport_options.get("priority_steps", DEFAULT_PRIORITY_STEPS))
    sep = transport_options.get("sep", PRIORITY_SEPARATOR)
    return [prefix + queue] + [f"{prefix}{queue}{sep}{step}" for step in steps if step]


class Pusher:
    """A broker connection of this process's own, used for nothing but pushing messages.

    Not a channel of the app's producer pool: a pooled channel that once
    consumed (a broadcast collecting its replies) keeps a connection pinned to
    its BRPOP, and a command sent through that channel's client would read the
    BRPOP's answer.
    """

    def __init__(self, app: Celery) -> None:
        self._connection = app.connection_for_write()
        channel = self._connection.default_channel
        if not isinstance(channel, RedisChannel):
            raise TypeError(f"celery-batching needs a Redis broker, not {self._connection.transport_cls!r}")
        self._options: Mapping[str, Any] = app.conf.broker_transport_options or {}
        self._prefix = self._options.get("global_keyprefix", "")
        # A plain client on the channel's connections: kombu's prefixing client (global_keyprefix)
        # prefixes only a script's first key; the keys are prefixed here instead.
        self.client = redis.Redis(connection_pool=channel.client.connection_pool)
        # One token per connection the process may open: a C queue, a tenth of a semaphore's cost.
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(int(channel.max_connections or 10)):
            self._slots.put(None)
        # redis-py connections (untyped there), LIFO: the warmest first (append and pop are atomic).
        self._idle: list[Any] = []
        pool = channel.client.connection_pool
        self._new_connection: Callable[[], Any] = lambda: pool.connection_class(**pool.connection_kwargs)
        self._source = resources.files(__package__).joinpath("lua").joinpath("push.lua").read_text()
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self._script = self.client.register_script(self._source)
        self._retry = bool(app.conf.task_publish_retry)
        self._policy: Mapping[str, Any] = app.conf.task_publish_retry_policy or {}
        self._marker_seconds = marker_seconds(self._retry, self._policy, channel.socket_timeout)
        self._wait = replica_wait(app)

    def push(
        self, task_name: str, queue: str, payloads: Sequence[str | bytes], task_ids: Sequence[str], bound: int
    ) -> None:
        """Push ``payloads`` onto ``queue`` once, unless that passes ``bound`` (0: no bound).

        Raises :class:`QueueFull` when refused, :class:`SendOutcomeUnknown` when no
        attempt under the publish retry policy was confirmed, and
        :class:`~celery_batching.errors.NotReplicated` when the push landed but
        too few replicas confirmed it (not retried: it is on the queue).
        """
        keys = [self._prefix + SENT_MARKER_PREFIX + task_ids[0], *queue_lists(queue, self._options)]
        args: list[str | bytes | int] = [bound, self._marker_seconds, *payloads]
        attempts = [0]
        confirmed = [0]

        def attempt() -> list[int]:
            attempts[0] += 1
            with self._connection_slot() as connection:
                if self._wait is None:
                    return [int(value) for value in self._evalsha(connection, keys, args)]
                pipe = self.client.pipeline(transaction=False)
                self._script(keys=keys, args=args, client=pipe)
                self._wait.append_to(pipe)
                answer, confirmed[0] = pipe.execute()
                return [int(value) for value in answer]

        try:
            if self._retry:
                status, depth = retry_over_time(attempt, _RETRIED, **_retry_options(self._policy))
            else:
                status, depth = attempt()
        except _RETRIED as exc:
            raise SendOutcomeUnknown(task_name, list(task_ids), attempts[0], f"{type(exc).__name__}: {exc}") from exc
        if status == _FULL:
            raise QueueFull(queue, depth, bound, len(payloads))
        if self._wait is not None:
            self._wait.check(confirmed[0], f"{task_name}: sending task {task_ids[0]}")

    def depth(self, queue: str) -> int:
        """How many messages wait on ``queue``, all priorities (one pipelined read)."""
        pipe = self.client.pipeline(transaction=False)
        for key in queue_lists(queue, self._options):
            pipe.llen(key)
        with self._connection_slot():
            return sum(int(length) for length in pipe.execute())

    def _evalsha(self, connection: Any, keys: list[str], args: list[Any]) -> Any:
        """The push script on ``connection``; loaded first if Redis does not know it (a restart, a new master)."""
        try:
            connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            connection.send_command("EVAL", self._source, len(keys), *keys, *args)
            return connection.read_response()

    @contextlib.contextmanager
    def _connection_slot(self) -> Iterator[Any]:
        """Hold one of the process's push connections, waiting for one to be free."""
        try:
            self._slots.get(timeout=CONNECTION_WAIT_SECONDS)
        except queue.Empty:
            # Nothing was sent: the policy may retry.
            raise redis.ConnectionError(f"no free broker connection within {CONNECTION_WAIT_SECONDS}s") from None
        connection = None
        try:
            connection = self._take_idle() or self._new_connection()
            yield connection
        except BaseException:
            if connection is not None:
                connection.disconnect()  # whatever it was in the middle of is no reply to anything later
            raise
        finally:
            if connection is not None:
                self._idle.append(connection)
            self._slots.put(None)

    def _take_idle(self) -> Any:
        """The warmest idle connection, or None (another thread may take the last one first)."""
        try:
            return self._idle.pop()
        except IndexError:
            return None


def _retry_options(policy: Mapping[str, Any]) -> dict[str, Any]:
    """kombu's ``retry_over_time`` keywords from Celery's ``task_publish_retry_policy``."""
    names = ("max_retries", "interval_start", "interval_step", "interval_max")
    return {name: policy[name] for name in names if name in policy}


#: ``pushers.get(app)``: this process's pusher for ``app``.
pushers: PerProcess[Pusher] = PerProcess(Pusher)
