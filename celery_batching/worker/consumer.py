"""The worker side of one batched queue: claim, decode, batch, store, acknowledge.

Three threads per queue, so the model never waits for Redis:

* the *fetcher* claims as many messages as the batcher has room for (at most
  one batch beyond the running one: no hoarding), decodes them, and feeds
  the batcher; when the queue is empty it blocks in Redis, not in a poll loop;
* the batcher's *predictor* runs ``predict`` once per batch;
* the *writer* stores each task's result (one pipeline per batch), then
  acknowledges the messages, then sends the task events.

A message is acknowledged only after its result is stored. Tasks that never
reach the model (revoked, expired, malformed, duplicates) go straight to the
writer.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery, states
from celery.exceptions import TaskRevokedError
from celery.worker import state as worker_state
from kombu.serialization import prepare_accept_content
from kombu.transport.redis import Channel as RedisChannel

from ..engine.batcher import Batcher, BatchReport, Outcome, PredictFn, Request
from ..engine.hooks import BatchHooks, call_hooks
from ..engine.policy import FlushPolicy
from ..protocol import MessageDecoder, TaskMessage
from .claim import RedisQueue
from .events import TaskEvents
from .results import ResultWriter, TaskResult

logger = logging.getLogger(__name__)

# Longest a blocking wait on an empty queue lasts before the fetcher looks around
# (shutdown, expired claims of dead workers).
WAIT_SLICE_SECONDS = 1.0
# How often the fetcher brings back messages whose claimer died (visibility timeout).
RESTORE_EVERY_SECONDS = 10.0
# Pause between retries while Redis is unreachable.
RETRY_PAUSE_SECONDS = 0.5
# How long a warm shutdown keeps retrying to store results before leaving the
# messages to the visibility timeout.
SHUTDOWN_WRITE_DEADLINE_SECONDS = 30.0

Validator = Callable[[Any], None]


@dataclass
class QueueSpec:
    """What a worker needs to serve one batched task."""

    task_name: str
    queue: str
    policy: FlushPolicy
    predict: PredictFn
    validate: Validator | None
    ignore_result: bool
    max_sample_bytes: int | None


@dataclass
class _Done:
    """Writer work: tasks with their outcomes, from one batch or one claim."""

    messages: list[TaskMessage]
    results: list[TaskResult]
    started: float
    runtime: float


class BatchedQueueConsumer:
    """Serves one batched queue inside a worker process."""

    def __init__(
        self, app: Celery, spec: QueueSpec, hostname: str, send_events: bool, hooks: Sequence[BatchHooks] = ()
    ) -> None:
        self.app = app
        self.spec = spec
        self.hooks = list(hooks)
        self._connection = app.connection_for_read()
        channel = self._connection.default_channel
        if not isinstance(channel, RedisChannel):
            raise TypeError(f"celery-batching needs a Redis broker, not {self._connection.transport_cls!r}")
        self._kombu_channel = channel
        self._visibility_timeout = float(channel.visibility_timeout)
        self.queue = RedisQueue(channel.client, spec.queue, app.conf.broker_transport_options)
        self.decoder = MessageDecoder(
            spec.task_name, spec.queue, prepare_accept_content(app.conf.accept_content), spec.max_sample_bytes
        )
        self.writer = ResultWriter(app, spec.task_name)
        self.events = TaskEvents(app, hostname, send_events)
        self.batcher = Batcher(
            spec.task_name, spec.predict, spec.policy, self._batch_done, self.hooks, admit=self._admit
        )
        self._stopping = threading.Event()
        self._writes: queue_module.SimpleQueue[_Done | None] = queue_module.SimpleQueue()
        self._fetcher = threading.Thread(target=self._fetch_loop, name=f"fetch:{spec.queue}", daemon=True)
        self._writer_thread = threading.Thread(target=self._write_loop, name=f"write:{spec.queue}", daemon=True)
        self._next_restore = 0.0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._declare_queue()
        self._writer_thread.start()
        self.batcher.start()
        self._fetcher.start()

    def request_stop(self) -> None:
        """Stop claiming; :meth:`stop` does the rest (lets a worker stop many queues at once)."""
        self._stopping.set()

    def stop(self) -> None:
        """Warm shutdown: finish the running batch, store it, give the rest back.

        Unstarted messages go back before the running batch ends, so other
        workers can take them at once.
        """
        self.request_stop()
        self._give_back(self.batcher.stop(timeout=0))  # no batch starts from now on
        self._fetcher.join()
        self._give_back(self.batcher.stop())  # what the fetcher handed over meanwhile
        self._writes.put(None)
        self._writer_thread.join()
        self.events.close()
        self._connection.release()

    def _give_back(self, unstarted: list[Request]) -> None:
        if unstarted:
            returned = self._retry(
                lambda: self.queue.give_back([r.context.claimed for r in unstarted]), "give back unstarted messages"
            )
            logger.info("%s: gave %s unstarted message(s) back to the queue", self.spec.queue, returned)

    def _declare_queue(self) -> None:
        """Declare the queue with kombu so its routing exists for kombu's restore."""
        self.app.amqp.queues[self.spec.queue](self._kombu_channel).declare()

    # -- fetcher ---------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._fetch_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("%s: Redis unavailable (%s); retrying", self.spec.queue, exc)
                self._stopping.wait(RETRY_PAUSE_SECONDS)
            except Exception:  # keep serving whatever happens
                logger.exception("%s: unexpected error while fetching", self.spec.queue)
                self._stopping.wait(RETRY_PAUSE_SECONDS)

    def _fetch_once(self) -> None:
        self._maybe_restore_expired()
        room = self.batcher.wait_for_room(WAIT_SLICE_SECONDS)
        if room == 0 or self._stopping.is_set():
            return
        claimed = self.queue.claim(room)
        if not claimed:
            self.queue.wait(WAIT_SLICE_SECONDS)
            return
        messages = [self.decoder.decode(item) for item in claimed]
        call_hooks(self.hooks, "after_claim", self.spec.task_name, len(claimed), [m.queue_wait for m in messages])
        self._dispatch(messages)

    def _dispatch(self, messages: list[TaskMessage]) -> None:
        """Send runnable messages to the batcher and the others straight to the writer."""
        redelivered = [m.task_id for m in messages if m.redelivered and m.task_id]
        already_done = self.writer.already_final(redelivered) if redelivered else set()
        runnable: list[Request] = []
        unrun: list[TaskMessage] = []
        duplicates: list[TaskMessage] = []
        for message in messages:
            if message.task_id in already_done:
                call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "duplicate")
                duplicates.append(message)
                continue
            if message.error is None:
                self._validate(message)
            if message.error is None:
                runnable.append(Request(message.sample, context=message))
            else:
                unrun.append(message)
        if duplicates:
            # The stored outcome stands: acknowledge, store nothing, announce nothing.
            self._writes.put(_Done(duplicates, [], time.time(), 0.0))
        if unrun:
            results = [self._task_result(m, _unrun_state(m.error), m.error) for m in unrun]
            self._writes.put(_Done(unrun, results, time.time(), 0.0))
        self.batcher.put(runnable)

    def _validate(self, message: TaskMessage) -> None:
        """A sample the model refuses fails alone, before it is batched."""
        if self.spec.validate is not None:
            try:
                self.spec.validate(message.sample)
            except Exception as exc:  # noqa: BLE001 - the sample's own error, reported to its caller
                message.error = exc

    def _admit(self, request: Request) -> BaseException | None:
        """Revoked and expired tasks never reach the model (checked as the batch forms)."""
        message: TaskMessage = request.context
        if message.task_id in worker_state.revoked:
            call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "revoked")
            return TaskRevokedError("revoked")
        if message.expired(datetime.now(timezone.utc)):
            call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "expired")
            return TaskRevokedError("expired")
        return None

    def _maybe_restore_expired(self) -> None:
        """Bring back messages claimed by workers that died (kombu's visibility timeout).

        On a timer, busy or not: a worker started with ``-Q`` naming only
        batched queues has no Celery consumer to do it, and a dead worker's
        claims must not wait for the queue to drain.
        """
        now = time.monotonic()
        if now < self._next_restore:
            return
        self._next_restore = now + RESTORE_EVERY_SECONDS
        self._kombu_channel.qos.restore_visible(num=None, interval=1)

    # -- predictor hand-off ------------------------------------------------

    def _batch_done(self, report: BatchReport) -> None:
        messages = [outcome.request.context for outcome in report.outcomes]
        results = [self._outcome_result(outcome) for outcome in report.outcomes]
        self._writes.put(_Done(messages, results, report.started, report.seconds))

    def _outcome_result(self, outcome: Outcome) -> TaskResult:
        message: TaskMessage = outcome.request.context
        if outcome.error is not None:
            return self._task_result(message, _unrun_state(outcome.error), outcome.error)
        return self._task_result(message, states.SUCCESS, outcome.value)

    def _task_result(self, message: TaskMessage, state: str, value: Any) -> TaskResult:
        return TaskResult(
            task_id=message.task_id or "",
            state=state,
            value=value,
            ignore_result=message.ignore_result or self.spec.ignore_result or not message.task_id,
            store_once=message.redelivered,
            group_id=message.group_id,
            parent_id=message.parent_id,
            reply_channel=message.reply_channel,
        )

    # -- writer ----------------------------------------------------------

    def _write_loop(self) -> None:
        while (done := self._writes.get()) is not None:
            try:
                self._write(done)
            except Exception:  # messages stay unacked and come back later
                logger.exception("%s: storing a batch failed; its messages stay unacknowledged", self.spec.queue)

    def _write(self, done: _Done) -> None:
        stored = self._retry(lambda: self.writer.write(self._guard_late(done)), "store results")
        self._retry(lambda: self.queue.ack([m.claimed.tag for m in done.messages]), "acknowledge")
        for message, result in zip(done.messages, stored):
            if result.failed and not message.task_id:
                logger.error("%s: dropped a message with no task id: %s", self.spec.queue, result.value)
        self._send_events(done, stored)
        failures = [r.value for r in stored if r.failed]
        call_hooks(
            self.hooks, "after_results", self.spec.task_name, len(stored) - len(failures), len(failures), failures
        )

    def _send_events(self, done: _Done, stored: list[TaskResult]) -> None:
        """Task events are for observers: failing to send them is logged, never fatal."""
        announced = [(m, r) for m, r in zip(done.messages, stored) if m.task_id]
        if not announced:
            return
        received = [(m.received_fields, m.claimed_at) for m, _ in announced]
        results = [r for _, r in announced]
        try:
            self._retry(
                lambda: self.events.batch_done(self.spec.task_name, received, done.started, done.runtime, results),
                "send task events",
            )
        except Exception:  # results are stored and acknowledged already
            logger.exception("%s: sending the task events of a batch failed", self.spec.queue)

    def _guard_late(self, done: _Done) -> list[TaskResult]:
        """Results of messages held past the visibility timeout are stored only if none is there.

        Such a message may have been restored and run by another worker, whose
        result the client may already have seen: it must not be overwritten.
        """
        restorable_before = time.time() - self._visibility_timeout
        return [
            replace(result, store_once=True) if message.claimed_at < restorable_before else result
            for message, result in zip(done.messages, done.results)
        ]

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run ``action`` until Redis answers; during shutdown, only up to a deadline."""
        deadline = None
        while True:
            try:
                return action()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stopping.is_set():
                    deadline = deadline or time.monotonic() + SHUTDOWN_WRITE_DEADLINE_SECONDS
                    if time.monotonic() > deadline:
                        raise
                logger.warning("%s: cannot %s, Redis unavailable (%s); retrying", self.spec.queue, what, exc)
                time.sleep(RETRY_PAUSE_SECONDS)


def _unrun_state(error: BaseException | None) -> str:
    return states.REVOKED if isinstance(error, TaskRevokedError) else states.FAILURE
