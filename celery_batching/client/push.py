"""The fast path's one round trip to the broker: push a call's messages at most once, within the queue's bound.

One Lua script (``lua/push.lua``) checks the queue's depth against its
``max_queue_depth``, pushes the call's messages, and writes a short-lived sent
marker named after the call's first task id, in one atomic step. A retry of the
call after a timeout (the push may have landed, its reply was lost) finds the
marker and pushes nothing, so retrying is safe: the publish retry policy of
Celery (``task_publish_retry``, ``task_publish_retry_policy``) is followed here,
never by resending through Celery's own path.

Calls from many threads of a process share round trips, as a database's
group commit does: a call that finds no round trip in flight sends at once; one
that finds one in flight waits in line, and the next round trip carries every
call waiting, each still with its own marker, bound and outcome. Under load
(threads of a web process sending as their results come back, several at a
time) a push costs its caller a lock hand-over instead of a round trip, and
Redis one script run for several calls. A lone call waits for nobody.

A round trip is one ``EVALSHA`` written and read on a connection of the
Pusher's own: redis-py's pool checks a connection for stray data at every
checkout (a poll and a read that finds nothing, about a third of a push's
client CPU), which a connection used only here never has, since redis-py drops
one whose read failed.

With ``batching_wait_replicas``, the push's ``WAIT`` rides in the same round
trip (:mod:`~celery_batching.client.replication`).
"""

from __future__ import annotations

import collections
import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import redis
from celery import Celery
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.functional import retry_over_time

from ..errors import QueueFull, SendOutcomeUnknown
from ..resp import Script
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
        source = resources.files(__package__).joinpath("lua").joinpath("push.lua").read_text()
        self._script = Script(source)
        self._script_in_pipeline = self.client.register_script(source)
        self._retry = bool(app.conf.task_publish_retry)
        self._policy: Mapping[str, Any] = app.conf.task_publish_retry_policy or {}
        self._marker_seconds = marker_seconds(self._retry, self._policy, channel.socket_timeout)
        self._wait = replica_wait(app)
        # The calls waiting for a round trip, the one being carried first.
        self._line: collections.deque[_Call] = collections.deque()
        self._line_lock = threading.Lock()

    def push(
        self, task_name: str, queue: str, payloads: Sequence[str | bytes], task_ids: Sequence[str], bound: int
    ) -> None:
        """Push ``payloads`` onto ``queue`` once, unless that passes ``bound`` (0: no bound).

        Raises :class:`QueueFull` when refused, :class:`SendOutcomeUnknown` when no
        attempt under the publish retry policy was confirmed, and
        :class:`~celery_batching.errors.NotReplicated` when the push landed but
        too few replicas confirmed it (not retried: it is on the queue).
        """
        lists = queue_lists(queue, self._options)
        call = _Call(
            task_name,
            queue,
            task_ids,
            bound,
            len(payloads),
            keys=[self._prefix + SENT_MARKER_PREFIX + task_ids[0], *lists],
            args=[len(lists), bound, len(payloads), *payloads],
        )
        self._join_line(call)
        if call.outcome is None:  # first in line: it carries the line
            self._carry_line()
        self._settle(call)

    def _join_line(self, call: _Call) -> None:
        """Put ``call`` in line; wait until a round trip has carried it, or it is first in line.

        A thread interrupted here (KeyboardInterrupt) takes its call out of line,
        unless a round trip has taken it, and passes the lead on if it had it:
        otherwise the line would wait for it for ever.
        """
        try:
            with self._line_lock:
                self._line.append(call)
                first = len(self._line) == 1
            if not first:
                call.turn.acquire()
        except BaseException:
            self._leave_line(call)
            raise

    def _leave_line(self, call: _Call) -> None:
        """Take an interrupted thread's call out of line, if no round trip has it; pass the lead on."""
        successor = None
        with self._line_lock:
            if call in self._line and not call.taken:
                first = self._line[0] is call
                self._line.remove(call)
                successor = self._line[0] if first and self._line else None
        if successor is not None:
            successor.turn.release()  # it leads the next round trip

    def _carry_line(self) -> None:
        """Carry every call in line (this thread's first) in one round trip, then hand the line on."""
        with self._line_lock:
            group = list(self._line)
            for call in group:
                call.taken = True
        attempts = [0]
        try:
            answer, confirmed = self._round_trip(group, attempts)
            for index, call in enumerate(group):
                call.outcome = (int(answer[2 * index]), int(answer[2 * index + 1]), confirmed)
        except _RETRIED as exc:
            reason = f"{type(exc).__name__}: {exc}"
            for call in group:
                call.outcome = SendOutcomeUnknown(call.task_name, list(call.task_ids), attempts[0], reason)
                call.outcome.__cause__ = exc
        except Exception as exc:  # noqa: BLE001 - each call in the round trip raises what it raised
            for call in group:
                call.outcome = exc
        except BaseException as exc:  # noqa: BLE001 - interrupted: what the others' sends did is unknown
            group[0].outcome = exc
            for call in group[1:]:
                call.outcome = SendOutcomeUnknown(
                    call.task_name, list(call.task_ids), attempts[0], f"the sending thread was interrupted: {exc!r}"
                )
        finally:
            with self._line_lock:
                for _ in group:
                    self._line.popleft()
                successor = self._line[0] if self._line else None
            for call in group[1:]:
                call.turn.release()
            if successor is not None:
                successor.turn.release()  # it leads the next round trip

    def _round_trip(self, group: list[_Call], attempts: list[int]) -> tuple[list[Any], int]:
        """The push script for ``group`` under the publish retry policy: its answer, and how many replicas confirmed.

        ``attempts[0]`` counts the attempts made, for the error when none was confirmed.
        """
        keys = [key for call in group for key in call.keys]
        args = [self._marker_seconds, *(arg for call in group for arg in call.args)]
        confirmed = 0

        def attempt() -> list[Any]:
            nonlocal confirmed
            attempts[0] += 1
            with self._connection_slot() as connection:
                if self._wait is None:
                    return list(self._script.run(connection, keys, args))
                pipe = self.client.pipeline(transaction=False)
                self._script_in_pipeline(keys=keys, args=args, client=pipe)
                self._wait.append_to(pipe)
                answer, confirmed = pipe.execute()
                return list(answer)

        answer = retry_over_time(attempt, _RETRIED, **_retry_options(self._policy)) if self._retry else attempt()
        return answer, int(confirmed)

    def _settle(self, call: _Call) -> None:
        """Return or raise what the round trip that carried ``call`` made of it."""
        outcome = call.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        status, depth, confirmed = outcome
        if status == _FULL:
            raise QueueFull(call.queue, depth, call.bound, call.count)
        if self._wait is not None:
            self._wait.check(confirmed, f"{call.task_name}: sending task {call.task_ids[0]}")

    def depth(self, queue: str) -> int:
        """How many messages wait on ``queue``, all priorities (one pipelined read)."""
        pipe = self.client.pipeline(transaction=False)
        for key in queue_lists(queue, self._options):
            pipe.llen(key)
        with self._connection_slot():
            return sum(int(length) for length in pipe.execute())

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


class _Call:
    """One call's push, in line for the round trip that carries it."""

    __slots__ = ("args", "bound", "count", "keys", "outcome", "queue", "taken", "task_ids", "task_name", "turn")

    def __init__(
        self,
        task_name: str,
        queue: str,
        task_ids: Sequence[str],
        bound: int,
        count: int,
        keys: list[str],
        args: list[str | bytes | int],
    ) -> None:
        self.task_name = task_name
        self.queue = queue
        self.task_ids = task_ids
        self.bound = bound
        self.count = count
        # Its share of the script's KEYS and ARGV (see lua/push.lua).
        self.keys = keys
        self.args = args
        # (status, depth, replicas confirmed), or what its round trip raised; None until carried.
        self.outcome: tuple[int, int, int] | BaseException | None = None
        self.taken = False  # by a round trip: it is no longer the waiting thread's to take out of line
        # Held until its round trip is done or it is first in line: its thread waits on it.
        self.turn = threading.Lock()
        self.turn.acquire()


def _retry_options(policy: Mapping[str, Any]) -> dict[str, Any]:
    """kombu's ``retry_over_time`` keywords from Celery's ``task_publish_retry_policy``."""
    names = ("max_retries", "interval_start", "interval_step", "interval_max")
    return {name: policy[name] for name in names if name in policy}


#: ``pushers.get(app)``: this process's pusher for ``app``.
pushers: PerProcess[Pusher] = PerProcess(Pusher)
